"""The Gradio web app. The only package that imports gradio.

``from promptonce.ui import launch; launch()`` serves the app (see :mod:`promptonce.ui.app`);
the logic is in :mod:`promptonce.ui.handlers` and the per-session store in :mod:`promptonce.ui.session`.
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
