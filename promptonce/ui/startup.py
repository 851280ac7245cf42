"""Start-up as the hosts do it: on a Hugging Face Space the models are made ready once, at start.

On a Space (``SPACE_ID`` set, or ``SYSTEM=spaces``; or ``PROMPTONCE_WARMUP=1`` anywhere) :func:`prepare`,
called by :func:`promptonce.ui.app.launch` before the page is built:

* puts PromptOnce's cache (checkpoints, ONNX exports) on the Space's persistent volume ``/data`` when
  it exists and is writable (``PROMPTONCE_CACHE=/data/promptonce``, unless already set), so the ONNX
  export (~1.5 min on a 2-vCPU Space) happens once per Space, not once per restart; without
  ``/data`` it stays in ``~/.cache/promptonce``;
* registers the ZeroGPU function (:func:`promptonce.ui.zerogpu.prepare`);
* starts a background thread that loads the CPU models (exporting them to ONNX first when the cache
  lacks them, in a child process); the page shows its progress (:func:`banner`) instead of a first
  click that waits for it. A click before it is done waits for the same load (it is never done twice).

Elsewhere (a laptop, Docker, the tests) nothing happens unless ``PROMPTONCE_WARMUP=1``; with
``PROMPTONCE_WARMUP=0`` a Space skips the warm-up too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["on_space", "warmup_wanted", "persistent_cache", "prepare", "state", "banner", "WARM_MODELS"]

log = logging.getLogger(__name__)

WARM_MODELS: tuple[str, ...] = ("litemedsam", "mobilesam")
"""What the warm-up loads: the CPU models every Space offers (ONNX export, then the sessions)."""


def on_space() -> bool:
    """True on a Hugging Face Space (``SPACE_ID`` set, or ``SYSTEM=spaces``)."""
    return bool(os.environ.get("SPACE_ID", "").strip()) or os.environ.get("SYSTEM", "").strip() == "spaces"


def warmup_wanted() -> bool:
    """``PROMPTONCE_WARMUP`` when set (1/0), else True on a Space."""
    env = os.environ.get("PROMPTONCE_WARMUP", "").strip().lower()
    if env:
        return env in ("1", "true", "yes", "on")
    return on_space()


def persistent_cache(data: Path = Path("/data")) -> Path | None:
    """``data/promptonce`` when ``data`` (a Space's persistent storage) exists and is writable, else None."""
    if not data.is_dir() or not os.access(data, os.W_OK | os.X_OK):
        return None
    return data / "promptonce"


@dataclass
class _State:
    phase: str = "off"  # off | warming | ready | failed
    detail: str = ""
    started: float = 0.0
    seconds: float = 0.0


state = _State()
_LOCK = threading.Lock()


def _set(phase: str, detail: str) -> None:
    with _LOCK:
        state.phase, state.detail = phase, detail
        if phase in ("ready", "failed"):
            state.seconds = time.monotonic() - state.started


def _warm(models: Sequence[str]) -> None:
    from ..backends.registry import available_backends, get_backend

    usable = {info.name for info, ok, _why in available_backends() if ok}
    ready: list[str] = []
    try:
        for name in models:
            if name not in usable:
                log.info("warm-up: %s is not available here; skipped", name)
                continue
            _set("warming", f"Preparing {name} (first start: exporting it for the CPU, about a minute)...")
            t0 = time.monotonic()
            backend: Any = get_backend(name)
            log.info("warm-up: %s ready in %.1f s (%s)", name, time.monotonic() - t0,
                     getattr(backend, "encoder_runtime", "torch"))
            ready.append(name)
    except Exception as exc:  # noqa: BLE001 - a failed warm-up must not stop the app: clicks retry the load
        log.exception("warm-up failed")
        _set("failed", f"Preparing the models failed ({type(exc).__name__}); the first click will try again.")
        return
    _set("ready", f"Models ready: {', '.join(ready) or 'none'}.")
    log.info("warm-up done in %.1f s: %s", state.seconds, state.detail)


def prepare(models: Sequence[str] = WARM_MODELS, background: bool = True) -> bool:
    """Readies the process for serving on a Space (module doc); returns True when a warm-up started.

    Args:
        models: what to load.
        background: load in a daemon thread (the page serves meanwhile); False waits for it.
    """
    from . import zerogpu

    if on_space() and not os.environ.get("PROMPTONCE_CACHE", "").strip():
        cache = persistent_cache()
        if cache is not None:
            os.environ["PROMPTONCE_CACHE"] = str(cache)
            log.info("persistent storage found: caching models in %s", cache)
    zerogpu.prepare()
    if not warmup_wanted():
        return False
    with _LOCK:
        if state.phase in ("warming", "ready"):
            return False
        state.phase, state.detail, state.started = "warming", "Preparing the models...", time.monotonic()
    if background:
        threading.Thread(target=_warm, args=(tuple(models),), name="promptonce-warmup", daemon=True).start()
    else:
        _warm(tuple(models))
    return True


def _text() -> str:
    with _LOCK:
        phase, detail = state.phase, state.detail
        waited = time.monotonic() - state.started if state.started else 0.0
    if phase == "warming":
        return f"⏳ **Warming up** ({waited:.0f} s): {detail} You can load images meanwhile."
    if phase == "failed":
        return f"⚠️ {detail}"
    return ""


def banner() -> None:
    """Adds the warm-up notice to the page being built (call inside ``gr.Blocks``); nothing when off.

    The notice refreshes every 2 s while the models are being prepared and disappears when they are.
    """
    if state.phase == "off":
        return
    import gradio as gr

    notice = gr.Markdown(_text(), elem_id="po-warmup")
    timer = gr.Timer(2.0, active=state.phase == "warming")

    def tick() -> tuple[str, Any]:
        return _text(), gr.Timer(active=state.phase == "warming")

    timer.tick(tick, None, [notice, timer], show_progress="hidden", api_visibility="private",
               concurrency_limit=None, concurrency_id="warmup")
