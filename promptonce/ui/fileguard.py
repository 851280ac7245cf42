"""Only results are served: an ASGI middleware in front of Gradio's file route.

Gradio serves every file in its upload folder through ``/gradio_api/file=<path>`` to anyone who
knows the path: that includes an upload as Gradio received it, from the moment it arrives until the
app has copied it into the session's private folder and removed it. :class:`ResultsOnlyFiles`
answers 404 to any request of that route for a path inside a guarded folder (Gradio's upload
folder, the private session root) unless the path lies in a results folder
(:attr:`~promptonce.ui.session.SessionStore.results_root`). Other paths go on to Gradio's own checks.

The guarded and allowed folders come from the session stores registered with :func:`register`
(the app registers its store when it builds the page), read at each request. This module imports
neither gradio nor starlette.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from .session import SessionStore, is_inside

__all__ = ["ResultsOnlyFiles", "middleware", "register", "is_served", "guarded_roots"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Gradio's file routes: ``/gradio_api/file=<path>`` and the older ``/gradio_api/file/<path>``.
_FILE_ROUTE = re.compile(r"/gradio_api/file[=/](?P<path>.*)$", re.S)

_stores: weakref.WeakSet[SessionStore] = weakref.WeakSet()
_lock = threading.Lock()


def register(store: SessionStore) -> None:
    """Guards ``store``'s folders: its private root and upload folder are never served, its results root is."""
    with _lock:
        _stores.add(store)


def guarded_roots() -> tuple[list[Path], list[Path]]:
    """``(allowed, denied)`` folders of the registered stores (results roots; private roots and upload folders)."""
    with _lock:
        stores = list(_stores)
    allowed = [s.results_root for s in stores]
    denied = [s.root for s in stores] + [s.upload_folder for s in stores if s.upload_folder is not None]
    return allowed, denied


def is_served(path: str) -> bool:
    """Whether the file route may go on to serve ``path`` (Gradio still applies its own checks).

    False when ``path`` (made absolute, links followed) lies in a guarded folder and not in a results folder.
    """
    try:
        p = Path(os.path.realpath(os.path.abspath(path)))
    except (OSError, ValueError):
        return False
    allowed, denied = guarded_roots()
    if any(is_inside(p, a) for a in allowed):
        return True
    return not any(is_inside(p, d) for d in denied)


class ResultsOnlyFiles:
    """ASGI middleware: 404 for Gradio file requests of anything but results in the guarded folders.

    Args:
        app: the wrapped ASGI application (Gradio's FastAPI app).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http":
            m = _FILE_ROUTE.search(str(scope.get("path", "")))
            if m and not is_served(m.group("path")):
                log.info("refused a file request outside the results folders")
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
                await send({"type": "http.response.body", "body": b"Not found"})
                return
        await self.app(scope, receive, send)


def middleware() -> Any:
    """:class:`ResultsOnlyFiles` as a Starlette ``Middleware`` entry, for ``launch(app_kwargs={"middleware": [...]})``."""
    from starlette.middleware import Middleware

    return Middleware(ResultsOnlyFiles)
