"""The Gradio web app. The only package that imports gradio.

``from promptonce.ui import launch; launch()`` serves the app (see :mod:`promptonce.ui.app`). The
interaction is the library's :class:`promptonce.annotation.AnnotationSession`; this package adapts it
to the page: :mod:`.uploads` (copying and unpacking uploads within the session's quota),
:mod:`.workspace` (a browser session's annotation session), :mod:`.view` (rendering, display <->
image coordinates, :class:`~.view.ViewState`), :mod:`.handlers` (the events' actions, gradio-free),
:mod:`.layout` / :mod:`.events` / :mod:`.updates` (the page, its handlers and wiring), and
:mod:`.session` (the per-session store).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "launch"]


def build_app(*args: Any, **kwargs: Any) -> Any:
    """Builds the Gradio Blocks (see :func:`promptonce.ui.app.build_app`)."""
    from .app import build_app as _build

    return _build(*args, **kwargs)


def launch(**kwargs: Any) -> None:
    """Serves the app (see :func:`promptonce.ui.app.launch`)."""
    from .app import launch as _launch

    _launch(**kwargs)
