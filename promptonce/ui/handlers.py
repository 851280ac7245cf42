"""What the page's events do, as plain Python over a :class:`~promptonce.ui.workspace.Workspace`.

The interaction itself (objects, prompts, undo, previews, runs, corrections, scores, exports) is the
library's :class:`~promptonce.annotation.AnnotationSession`; these functions adapt it to the page:
display pixels to image pixels, the reference-label text box, the session folder's downloads, the
process-wide "a model is busy" count that keeps warm-ups out of the way, and the warm-up itself.
They do not import gradio, so they are tested directly (no browser); :mod:`promptonce.ui.app`
wires them to the page.

This module also re-exports the names of :mod:`.uploads`, :mod:`.view`, :mod:`.workspace` and
:mod:`.messages` that the page's code and tests use (``H.load_inputs``, ``H.render``, ...).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..annotation import MODES, SCOPES, STRATEGIES, Action, Draft, ObjectInfo, RunInfo, RunProgress
from ..errors import InputError
from .messages import hide_paths, progress_text, summary_markdown, user_message, write_json_text
from .uploads import ASSETS, EXAMPLES, MAX_ZIP_DEPTH, MAX_ZIPS, load_example, load_inputs, load_time_point
from .view import render, save_view, slice_info, to_image_xy
from .workspace import APP_MAX_VOXELS, VolumeMeta, Workspace, app_max_voxels, workspace

__all__ = [
    "MODES",
    "SCOPES",
    "STRATEGIES",
    "EXAMPLES",
    "ASSETS",
    "Draft",
    "ObjectInfo",
    "VolumeMeta",
    "RunProgress",
    "RunInfo",
    "Workspace",
    "workspace",
    "model_choices",
    "load_inputs",
    "APP_MAX_VOXELS",
    "MAX_ZIP_DEPTH",
    "MAX_ZIPS",
    "app_max_voxels",
    "load_example",
    "render",
    "save_view",
    "to_image_xy",
    "click",
    "add_object",
    "drag_box",
    "set_active",
    "undo",
    "undo_action",
    "undo_message",
    "load_time_point",
    "unit_of",
    "reset_prompts",
    "run",
    "apply_corrections",
    "results_summary",
    "write_downloads",
    "set_reference_labels",
    "summary_markdown",
    "progress_text",
    "write_json_text",
    "user_message",
    "hide_paths",
    "slice_info",
    "models_idle",
    "warm_enabled",
    "warm_view",
]

log = logging.getLogger(__name__)

#: How often a running segmentation reports progress to the page (seconds).
PROGRESS_EVERY_S = 0.4


# ---------------------------------------------------------------------------------------------- models
def model_choices(show_fake: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The models the page offers, and those unavailable here with the reason.

    Args:
        show_fake: also offer the ``fake`` test backend.

    Returns:
        ``(choices as (label, value), [(title, why not)])``; the first choice is ``auto`` when the
        LiteMedSAM box model is available. Reasons have server paths reduced to file names.
    """
    from ..backends.registry import available_backends

    choices: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    names = set()
    for info, ok, why in available_backends():
        if info.name == "fake" and not show_fake:
            continue
        if ok:
            kinds = " + ".join(k for k, on in (("clicks", info.points), ("boxes", info.boxes)) if on)
            choices.append((f"{info.title} ({kinds})", info.name))
            names.add(info.name)
        else:
            missing.append((info.title, hide_paths(why)))
    if "litemedsam" in names:
        label = "Auto: LiteMedSAM" + (" (clicks through MobileSAM)" if "mobilesam" in names else " (boxes)")
        choices.insert(0, (label, "auto"))
    return choices, missing


_BUSY_LOCK = threading.Lock()
_BUSY = [0]  # model requests (clicks, runs, corrections) in progress in this process


@contextmanager
def model_busy() -> Iterator[None]:
    """Counts a model request (click, run, correction) of this process while the block runs."""
    with _BUSY_LOCK:
        _BUSY[0] += 1
    try:
        yield
    finally:
        with _BUSY_LOCK:
            _BUSY[0] -= 1


def models_idle() -> bool:
    """True when no click, run or correction is using a model in this process."""
    with _BUSY_LOCK:
        return _BUSY[0] == 0


def warm_enabled() -> bool:
    """Whether shown slices are encoded ahead of a click (``PROMPTONCE_WARM_VIEW``, default on)."""
    return os.environ.get("PROMPTONCE_WARM_VIEW", "1").strip().lower() not in ("0", "false", "no", "off")


def warm_view(ws: Workspace, v: int, k: int, window: Any = "auto") -> None:
    """Starts encoding the shown slice for the session's model in the background (returns at once).

    A click on a slice whose embeddings exist costs only decoding; encoding a slice costs 1-2.5 s on
    a 2-core CPU (MobileSAM for the click, then LiteMedSAM for the box), which the user spends
    looking at the slice anyway. Only the latest shown slice is encoded (see
    :meth:`promptonce.engine.Engine.warm`), and only while no model request runs in the process (the
    warm-up is idle-time work: it never takes a core from someone's run; a request that starts while
    it encodes shares the CPU with that one encoding). Nothing happens before the session's first
    click or run (browsing alone never loads a model).
    """
    model = ws.last_model
    if model is None or not warm_enabled() or not 0 <= v < ws.n_volumes:
        return
    from ..engine import background_pool

    vol = ws.volume(v)  # in the page's thread: the workspace's volume cache is not shared with the task
    k = min(max(int(k), 0), vol.n_slices - 1)

    def task() -> None:
        try:
            ws.engine(model).warm(vol, k, window, idle=models_idle)
        except Exception as exc:  # noqa: BLE001 - a warm-up is an optimisation; the click reports errors
            log.debug("warming slice %d of case %d failed: %s", k, v, exc)

    background_pool("warm").submit(task)


def _busy_run(gen: Iterator[RunProgress]) -> Iterator[RunProgress]:
    """``gen``'s reports, with the process's model-busy count held while it runs."""
    with model_busy():
        yield from gen


# ---------------------------------------------------------------------------------------------- prompts
def click(
    ws: Workspace,
    v: int,
    k: int,
    x_disp: float,
    y_disp: float,
    mode: str = "positive",
    model: str = "auto",
    window: Any = "auto",
) -> str:
    """Adds a click (or a box corner) of the active object at a display pixel of slice ``k`` of case ``v``.

    Args:
        ws: the workspace.
        v, k: the case and slice shown.
        x_disp, y_disp: the click in display pixels (Gradio's ``SelectData.index``).
        mode: ``positive`` / ``negative`` click, or ``box`` (two clicks: opposite corners).
        model: the model choice (``auto`` or a backend name).
        window: the display window (also what the model sees).

    Returns:
        A short message for the page (what happened, or what to do next).
    """
    if mode not in MODES:
        raise InputError(f"Unknown click mode {mode!r}; use {', '.join(MODES)}.")
    if not 0 <= v < ws.n_volumes:
        raise InputError(f"Case {v + 1} does not exist; pick a case from the list.")
    x, y = to_image_xy(ws, v, x_disp, y_disp)
    with model_busy():
        return ws.click(v, k, x, y, mode, model=model or "auto", window=window).message  # type: ignore[arg-type]


def drag_box(
    ws: Workspace, v: int, k: int, corners: Any, model: str = "auto", window: Any = "auto"
) -> str:
    """A box drawn by dragging on the image: ``corners`` is ``"x0,y0,x1,y1"`` in display pixels.

    Raises:
        InputError: the text is not four numbers, or the case does not exist.
    """
    from ..types import Box

    try:
        x0, y0, x1, y1 = (float(t) for t in str(corners or "").split(","))
    except ValueError:
        raise InputError(f"A dragged box is four numbers x0,y0,x1,y1; got {corners!r}.") from None
    if not 0 <= v < ws.n_volumes:
        raise InputError(f"Case {v + 1} does not exist; pick a case from the list.")
    (a, b), (c, d) = to_image_xy(ws, v, x0, y0), to_image_xy(ws, v, x1, y1)
    with model_busy():
        box = Box(min(a, c), min(b, d), max(a, c), max(b, d))
        return ws.drag_box(v, k, box, model=model or "auto", window=window).message


def add_object(ws: Workspace, name: str = "") -> int:
    """Adds an object (next free label id), makes it active and returns its id."""
    return ws.add_object(name)


def set_active(ws: Workspace, oid: int) -> None:
    """Makes object ``oid`` the one new clicks belong to."""
    ws.set_active(int(oid))


def undo(ws: Workspace, model: str = "auto", window: Any = "auto") -> tuple[int, int] | None:
    """Undoes the last click, box corner, box or added object; returns the ``(case, slice)`` it was on
    (``(-1, -1)`` for an object), or None when nothing is left."""
    act = undo_action(ws, model, window)
    return None if act is None else act.key


def undo_action(ws: Workspace, model: str = "auto", window: Any = "auto") -> Action | None:
    """Undoes the last action (see :meth:`~promptonce.annotation.AnnotationSession.undo`) and returns it."""
    with model_busy():
        return ws.undo(model=model or "auto", window=window)


def undo_message(ws: Workspace, act: Action | None) -> str:
    """What the page says after an undo."""
    if act is None:
        return "Nothing to undo."
    if act.kind == "object":
        return f"Removed the object added last; **{ws.object(ws.active).name}** is active."
    where = f"{ws.metas[act.case].name}" + (f", slice {act.slice_index + 1}" if ws.metas[act.case].n_slices > 1 else "")
    d = ws.drafts.get(act.key, {}).get(act.object_id)
    what = {"point": "the last click", "corner": "the box's first corner", "box": "the box",
            "same_corner": "the dropped box"}.get(act.kind, "the last step")  # fmt: skip
    msg = f"Undone {what} on {where}."
    if d is not None and d.corner is not None:
        msg += (f" The box's first corner ({d.corner[0]:.0f}, {d.corner[1]:.0f}) is set again: click the opposite"
                " corner in box mode, or Undo once more to remove it.")  # fmt: skip
    return msg


def reset_prompts(ws: Workspace) -> None:
    """Removes every prompt, preview and result (the loaded images and objects stay), and the downloads."""
    ws.reset()
    ws.session.clear("out")


# ---------------------------------------------------------------------------------------------- running
def run(
    ws: Workspace,
    scope: str = "volume",
    strategy: str = "transfer",
    model: str = "auto",
    window: Any = "auto",
    v_current: int = 0,
    cancel: threading.Event | None = None,
) -> Iterator[RunProgress]:
    """Segments from the prompts (see :meth:`~promptonce.annotation.AnnotationSession.run`), reporting every
    :data:`PROGRESS_EVERY_S` seconds at most.

    Yields:
        :class:`RunProgress` reports, the last with ``finished=True``.
    """
    gen = ws.run(
        scope, strategy, v_current, model=model or "auto", window=window, cancel=cancel,  # type: ignore[arg-type]
        progress_every_s=PROGRESS_EVERY_S,
    )  # fmt: skip
    return _busy_run(gen)


def apply_corrections(
    ws: Workspace, model: str = "auto", window: Any = "auto", cancel: threading.Event | None = None
) -> Iterator[RunProgress]:
    """Re-propagates from every slice prompted since the last run (only the affected ranges).

    Raises:
        PromptError: when nothing was run yet, or no prompt changed since.
    """
    return _busy_run(ws.correct(model=model or "auto", window=window, cancel=cancel))


def unit_of(ws: Workspace | None, n: int = 2) -> str:
    """What one item of the workspace is called: ``images`` for an image set (X-rays), else ``slices``."""
    from ..types import unit_name

    if ws is None:
        return "slices" if n != 1 else "slice"
    return unit_name([m.n_slices for m in ws.metas], n)


# ---------------------------------------------------------------------------------------------- results
def results_summary(ws: Workspace) -> dict[str, Any]:
    """The current result's figures (see :meth:`~promptonce.annotation.AnnotationSession.score`)."""
    return ws.score()


def set_reference_labels(ws: Workspace, text: str | None) -> tuple[int, ...] | None:
    """Chooses which reference labels the metrics compare with: numbers or the reference's label names
    (``"1,2"``, ``"liver, spleen"``; empty = every non-zero label).

    Raises:
        InputError: a part is neither a number from 1 to 65535 nor a (unique) label name.
    """
    return ws.set_reference_selection(text if isinstance(text, str) else None)


def write_downloads(ws: Workspace, summary: dict[str, Any] | None = None, window: Any = "auto") -> list[Path]:
    """Writes the result files into the session's ``out/`` folder and returns their paths
    (see :meth:`~promptonce.annotation.AnnotationSession.export`)."""
    return ws.export(ws.session.subdir("out", fresh=True), summary, window)
