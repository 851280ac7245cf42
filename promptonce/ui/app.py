"""The Gradio app: the page (:mod:`.layout`) with its events (:mod:`.events`), the store, and launching.

The interaction itself is the library's :class:`~promptonce.annotation.AnnotationSession`, adapted to
the page by :mod:`promptonce.ui.handlers`; uploads are unpacked by :mod:`promptonce.ui.uploads` and
the image drawn by :mod:`promptonce.ui.view`.

Serving model
-------------
* Each browser tab is a session (``request.session_hash``) with a private folder and workspace in a
  :class:`~promptonce.ui.session.SessionStore`; ``gr.State`` is not used at all: the page sends the
  case, slice and window it shows with every event, and the server keeps the data.
* Model work (click previews, runs, corrections, undo) waits in the process's model line
  (:mod:`.modelqueue`, ``PROMPTONCE_MODEL_CONCURRENCY`` at a time, default 1), which tells a waiting
  page its place and an estimate, and lets Stop leave the line; display events (slider, window,
  case) run beside it. Models are loaded once per process by the backend registry.
* Uploads are limited by ``max_file_size`` (``PROMPTONCE_MAX_FILE_MB``, default 512) and by a
  per-session quota (``PROMPTONCE_SESSION_MB``, default 2048) that also bounds what zips expand to;
  every image read is limited to ``PROMPTONCE_MAX_VOXELS`` voxels (default 512 x 512 x 1000);
  sessions end on page unload or after ``PROMPTONCE_SESSION_TTL_S`` idle seconds (default 3600), and
  their folder is deleted. The store's sweeper also removes the empty temp files Gradio's ``File``
  component leaves in the upload folder (one per upload).
* Errors the user can act on are shown with their message (server paths reduced to file names);
  anything else shows a generic message and is logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr

from . import handlers as H
from . import fileguard, startup
from .events import Events
from .layout import FILE_TYPES, WINDOW_CHOICES, build_page, upload_file
from .session import SessionStore, default_roots

__all__ = ["build_app", "launch", "launch_kwargs", "default_store", "upload_file", "FILE_TYPES", "WINDOW_CHOICES"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("ignoring %s=%r (not a number)", name, os.environ.get(name))
        return default


def default_store() -> SessionStore:
    """The session store for this process: private folders outside Gradio's upload folder (never served),
    results folders inside it (served from there, no copy in Gradio's cache); see :func:`default_roots`."""
    from gradio.utils import get_upload_folder

    root, results = default_roots(get_upload_folder(), os.environ.get("PROMPTONCE_SESSION_ROOT"))
    return SessionStore(
        root,
        results_root=results,
        ttl_s=_env_float("PROMPTONCE_SESSION_TTL_S", 3600.0),
        max_session_bytes=int(_env_float("PROMPTONCE_SESSION_MB", 2048.0) * 2**20),
        max_sessions=int(_env_float("PROMPTONCE_MAX_SESSIONS", 64)),
        upload_folder=get_upload_folder(),
    )


def build_app(store: SessionStore | None = None, show_fake: bool | None = None) -> gr.Blocks:
    """Builds the page.

    Args:
        store: the session store (default: :func:`default_store`, swept in the background).
        show_fake: offer the ``fake`` test model (default: env ``PROMPTONCE_SHOW_FAKE=1``).

    Returns:
        The Blocks, not launched; ``demo.promptonce_store`` holds the store.
    """
    store = default_store() if store is None else store
    if store.upload_folder is None:
        from gradio.utils import get_upload_folder

        store.upload_folder = Path(get_upload_folder())  # where gr.File leaves its empty temp files
    store.start_sweeper()
    fileguard.register(store)  # its uploads and private folders are never served, its results are
    if show_fake is None:
        show_fake = os.environ.get("PROMPTONCE_SHOW_FAKE", "") == "1"
    choices, missing = H.model_choices(show_fake=show_fake)
    analytics = os.environ.get("GRADIO_ANALYTICS_ENABLED", "False").lower() in ("1", "true", "yes")
    # Gradio's own copies (uploads never loaded, cached files) go after the session TTL, and all at shutdown
    ttl = int(store.ttl_s)
    cache_policy = (max(60, min(900, ttl // 2)), max(60, ttl))
    with gr.Blocks(
        title="PromptOnce", fill_width=True, analytics_enabled=analytics, delete_cache=cache_policy
    ) as demo:
        page = build_page(choices, missing)
        Events(page, store, model_limit=int(_env_float("PROMPTONCE_MODEL_CONCURRENCY", 1))).wire(demo)
    demo.promptonce_store = store  # type: ignore[attr-defined]
    return demo


def launch_kwargs() -> dict[str, Any]:
    """The ``demo.launch`` arguments: host/port from the environment, upload limit, theme, CSS and keys."""
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        "server_port": int(port),
        "max_file_size": f"{int(_env_float('PROMPTONCE_MAX_FILE_MB', 512))}mb",
        "show_error": False,
        # system fonts: the page makes no request outside this server (no web fonts, no analytics)
        "theme": gr.themes.Soft(
            primary_hue="indigo", neutral_hue="slate",
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"],
        ),
        "css_paths": [HERE / "style.css"],
        "head": "<script>" + (HERE / "keys.js").read_text(encoding="utf-8") + "</script>",
        "footer_links": ["api", "gradio"],
        "run_history": False,
        "app_kwargs": {"middleware": [fileguard.middleware()]},  # only results are served (ui/fileguard.py)
    }


def launch(**overrides: Any) -> None:
    """Builds and serves the app (blocks): ``0.0.0.0:7860`` unless ``GRADIO_SERVER_NAME`` / ``PORT`` say otherwise."""
    logging.basicConfig(level=os.environ.get("PROMPTONCE_LOG_LEVEL", "INFO"))
    # a web request must never start a multi-GB weight download: offer only models whose weights are
    # here (the embedded LiteMedSAM/MobileSAM, or checkpoints baked into the image); opt out with 0
    os.environ.setdefault("PROMPTONCE_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    startup.prepare()  # on a Space: persistent cache, ZeroGPU, models loaded at start (promptonce.ui.startup)
    demo = build_app()
    demo.queue(default_concurrency_limit=1, max_size=int(_env_float("PROMPTONCE_QUEUE_SIZE", 64)))
    kwargs = launch_kwargs()
    kwargs.update(overrides)
    try:
        demo.launch(**kwargs)
    finally:
        demo.promptonce_store.close_all()  # type: ignore[attr-defined]
