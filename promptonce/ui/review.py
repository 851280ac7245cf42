"""Review mode: where a result most likely went wrong, and views that show it at a glance.

After a run every stored slice carries the engine's confidence (0..1) and readable flags
(:mod:`promptonce.engine.quality`). :func:`review_items` ranks the slices to look at (flagged, or
confidence below :data:`REVIEW_BELOW`) lowest confidence first; :func:`next_to_review` steps through
them. :func:`reformat` draws a coronal or sagittal cut through the volume with the result mask, in
the volume's physical aspect (voxel spacing), so that a propagation that broke off or leaked on some
slices is visible at once. :func:`measures_markdown` gives each object's volume (mL) and its area
on the shown slice (mm²).

Nothing here imports Gradio: the page wires these functions in :mod:`promptonce.ui.events`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..engine.quality import SEED_FLAG_WORDS
from ..types import unit_name
from .session import Session
from .view import clamp_slice, display_options, reference_colors
from .workspace import Workspace

__all__ = [
    "REVIEW_BELOW",
    "REFORMAT_WIDTH",
    "ReviewItem",
    "review_items",
    "review_choices",
    "review_heading",
    "next_to_review",
    "parse_choice",
    "reformat",
    "reformat_position",
    "save_reformat",
    "measures_markdown",
    "reference_legend",
    "auto_window_numbers",
    "window_choices",
    "is_image_set",
    "case_ranking",
    "thumbnails_key",
    "thumbnails",
]

#: Slices whose confidence is below this are listed for review even without a flag.
REVIEW_BELOW = 0.5
#: Width in display pixels of the coronal / sagittal reformats.
REFORMAT_WIDTH = 300
#: Most items the review list shows.
MAX_ITEMS = 200

Plane = Literal["coronal", "sagittal"]


@dataclass(frozen=True)
class ReviewItem:
    """One slice (or image) to review.

    Attributes:
        case: case index.
        slice_index: 0-based slice index (the first of a run).
        confidence: the engine's confidence 0..1 (a run's lowest), or None when unknown.
        flags: the readable flags of that slice.
        last_slice: the last slice of a run of consecutive slices with the same flags (e.g. every
            slice walked from a flagged seed), None for a single slice.
    """

    case: int
    slice_index: int
    confidence: float | None
    flags: tuple[str, ...]
    last_slice: int | None = None

    @property
    def last(self) -> int:
        """The item's last slice (its only one unless it is a run)."""
        return self.slice_index if self.last_slice is None else self.last_slice

    def covers(self, case: int, slice_index: int) -> bool:
        """Whether ``(case, slice_index)`` is this item's slice or in its run."""
        return case == self.case and self.slice_index <= slice_index <= self.last

    @property
    def key(self) -> str:
        """The item's value in the page's list: ``"case:slice"``."""
        return f"{self.case}:{self.slice_index}"


def _as_confidence(value: Any) -> float | None:
    """A slice's confidence as one number: a float as is, ``{object id: confidence}`` as its lowest value
    (the slice is as doubtful as its worst object), None when unknown."""
    if isinstance(value, dict):
        vals = [float(c) for c in value.values() if c is not None and math.isfinite(float(c))]
        return min(vals) if vals else None
    if value is None:
        return None
    try:
        c = float(value)
    except (TypeError, ValueError):
        return None
    return c if math.isfinite(c) else None


def _confidences(ws: Workspace) -> dict[tuple[int, int], float | None]:
    """``{(case, slice): confidence}`` from the session's per-slice confidence (one number per slice, or
    ``{object id: confidence}`` per slice)."""
    return {key: _as_confidence(c) for key, c in (getattr(ws, "confidence", {}) or {}).items()}


def review_items(ws: Workspace) -> list[ReviewItem]:
    """The slices to review, lowest confidence first.

    A slice is listed when it has a flag or its confidence is below :data:`REVIEW_BELOW`.
    Consecutive slices of a case with the same flags are one item (a run, at its lowest
    confidence): a walk from a flagged seed or past a lost object flags every slice it covers. Order:
    confidence ascending (unknown confidence counts as :data:`REVIEW_BELOW`), then a flagged prompted
    slice (its walked slices, at the same capped confidence, say "check that slice first"), then more
    flags first, then case and slice order. At most :data:`MAX_ITEMS` items.
    """
    conf = _confidences(ws)
    keys = {key for key, f in ws.flags.items() if f}
    keys |= {key for key, c in conf.items() if c is not None and c < REVIEW_BELOW}
    items: list[ReviewItem] = []
    for v, k in sorted(keys):
        if v in ws.done and not ws.done[v][k]:
            continue
        flags, c = tuple(ws.flags.get((v, k), ())), conf.get((v, k))
        prev = items[-1] if items else None
        if prev is not None and flags and prev.flags == flags and prev.case == v and prev.last == k - 1:
            low = c if prev.confidence is None else prev.confidence if c is None else min(c, prev.confidence)
            items[-1] = ReviewItem(v, prev.slice_index, low, flags, k)
            continue
        items.append(ReviewItem(v, k, c, flags))

    def rank(it: ReviewItem) -> tuple[float, bool, int, int, int]:
        c = (
            REVIEW_BELOW
            if it.confidence is None or not math.isfinite(it.confidence)
            else float(it.confidence)
        )
        seed = any(w in f for f in it.flags for w in SEED_FLAG_WORDS)
        return (c, not seed, -len(it.flags), it.case, it.slice_index)

    return sorted(items, key=rank)[:MAX_ITEMS]


def is_image_set(ws: Workspace) -> bool:
    """True when the cases are single images (an X-ray set), not volumes."""
    return ws.n_cases > 1 and unit_name([m.n_slices for m in ws.metas]) == "images"


_is_image_set = is_image_set


def review_choices(
    ws: Workspace, items: list[ReviewItem] | None = None
) -> list[tuple[str, str]]:
    """``(label, "case:slice")`` for the page's review list, in review order."""
    items = review_items(ws) if items is None else items
    image_set = _is_image_set(ws)
    out = []
    for i, it in enumerate(items, 1):
        name = ws.metas[it.case].name
        where = (
            name
            if image_set or ws.metas[it.case].n_slices == 1
            else f"{name} · slice {it.slice_index + 1}"
            if it.last_slice is None
            else f"{name} · slices {it.slice_index + 1}-{it.last_slice + 1}"
        )
        conf = "?" if it.confidence is None else f"{it.confidence:.2f}"
        text = "; ".join(it.flags) if it.flags else "low confidence"
        label = f"{i}. {where} · confidence {conf} · {text}"
        out.append((label if len(label) <= 220 else label[:219] + "…", it.key))
    return out


def case_ranking(ws: Workspace) -> list[tuple[int, float | None, int]]:
    """``(case, confidence, flagged slices)`` of every case with a result, "review these first"
    (:func:`promptonce.flagscore.review_order`: lowest confidence first; the case confidence is
    :func:`~promptonce.engine.quality.case_confidence` of its slices)."""
    from ..engine.quality import case_confidence
    from ..flagscore import review_order

    conf = _confidences(ws)
    rows = []
    for v, done in sorted(ws.done.items()):
        if not done.any():
            continue
        c = case_confidence(conf.get((v, int(k))) for k in np.flatnonzero(done))
        n_flags = sum(1 for (vv, _k), f in ws.flags.items() if vv == v and f)
        rows.append((v, c, n_flags))
    order = review_order([{"confidence": c, "flags": [None] * n} for _, c, n in rows])
    return [rows[i] for i in order]


def review_heading(ws: Workspace, items: list[ReviewItem] | None = None) -> str:
    """The review list's label: how many slices (images) in how many cases, or that nothing is flagged."""
    items = review_items(ws) if items is None else items
    if not ws.has_results():
        return "Review (after a run: the slices to check, lowest confidence first)"
    n = sum(it.last - it.slice_index + 1 for it in items)
    unit = unit_name([m.n_slices for m in ws.metas], n)
    if not items:
        return "Review: nothing flagged, every result has confidence ≥ 0.5"
    cases = len({it.case for it in items})
    tail = "" if _is_image_set(ws) else f" in {cases} case(s)"
    runs = f" ({len(items)} items)" if len(items) != n else ""
    text = f"Review: {n} {unit}{tail}{runs}, lowest confidence first (key r: next)"
    ranked = case_ranking(ws) if ws.n_cases > 1 and not _is_image_set(ws) else []
    if len(ranked) > 1:
        worst = [f"{ws.metas[v].name} {'?' if c is None else f'{c:.2f}'}" for v, c, _n in ranked[:4]]
        text += " · cases first to check: " + ", ".join(worst)
    return text


def parse_choice(choice: Any) -> tuple[int, int] | None:
    """``"case:slice"`` (a review or flagged list value) as ``(case, slice index)``; None when not one."""
    try:
        v, k = (int(x) for x in str(choice).split(":"))
    except (TypeError, ValueError):
        return None
    return (v, k) if v >= 0 and k >= 0 else None


def next_to_review(
    ws: Workspace, case: int, slice_index: int
) -> tuple[int, int] | None:
    """The item after ``(case, slice_index)`` in review order (the first when that slice is not listed,
    wrapping round after the last); None when nothing is to review."""
    items = review_items(ws)
    if not items:
        return None
    keys = [(it.case, it.slice_index) for it in items]
    at = [i for i, it in enumerate(items) if it.covers(case, slice_index)]
    if not at:
        return keys[0]
    return keys[(at[0] + 1) % len(keys)]


# ---------------------------------------------------------------------------------------------- reformats
def reformat_position(ws: Workspace, v: int, k: int) -> tuple[int, int]:
    """``(row, col)`` the coronal and sagittal cuts go through: the centre of the result on slice ``k``,
    else of the case's whole result, else the image centre."""
    _, rows, cols = ws.metas[v].shape
    res = ws.results.get(v)
    if res is not None:
        for mask in (np.asarray(res[k]) > 0, None):
            if mask is None:
                done = ws.done.get(v)
                if done is None or not done.any():
                    break
                mask = (np.asarray(res) > 0).any(axis=0)
            if mask.any():
                ys, xs = np.nonzero(mask)
                return int(round(float(ys.mean()))), int(round(float(xs.mean())))
    return rows // 2, cols // 2


def reformat(
    ws: Workspace,
    v: int,
    k: int,
    plane: Plane,
    window: Any = "auto",
    position: tuple[int, int] | None = None,
) -> np.ndarray:
    """A coronal or sagittal cut of case ``v`` with its result mask, in physical aspect.

    The cut is a row (coronal) or column (sagittal) of every slice, shown with the last slice at
    the top (head up for the usual slice order), :data:`REFORMAT_WIDTH` pixels wide and as tall as
    the voxel spacing makes it (at most twice as wide). The shown slice ``k`` is marked by yellow
    ticks at both sides.

    Args:
        ws: the workspace.
        v: case index.
        k: the slice shown in the axial view (0-based).
        plane: ``coronal`` (rows fixed) or ``sagittal`` (columns fixed).
        window: the display window.
        position: ``(row, col)`` of the cut (default :func:`reformat_position`).

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    from PIL import Image

    from ..preprocess import draw_outline, overlay, to_gray

    meta = ws.metas[v]
    n, rows, cols = meta.shape
    k = clamp_slice(ws, v, k)
    row, col = position if position is not None else reformat_position(ws, v, k)
    vol = ws.volume(v).array
    fm = ws.frames(v, window)
    cs, rs, ss = (
        float(x) if x and math.isfinite(float(x)) and float(x) > 0 else 1.0
        for x in meta.spacing
    )
    if plane == "coronal":
        plane_img = np.asarray(vol[:, min(max(row, 0), rows - 1), :], dtype=np.float32)
        across_mm = cs
    else:
        plane_img = np.asarray(vol[:, :, min(max(col, 0), cols - 1)], dtype=np.float32)
        across_mm = rs
    res = ws.results.get(v)
    if res is None:
        labels = np.zeros(plane_img.shape, np.uint8)
    elif plane == "coronal":
        labels = np.asarray(res[:, min(max(row, 0), rows - 1), :])
    else:
        labels = np.asarray(res[:, :, min(max(col, 0), cols - 1)])
    gray = to_gray(plane_img, fm.window)[::-1]
    labels = np.ascontiguousarray(labels[::-1])
    width = REFORMAT_WIDTH
    sx = width / gray.shape[1]
    height = int(round(min(2 * width, max(16.0, gray.shape[0] * sx * ss / across_mm))))
    size = (width, height)
    gray_d = np.asarray(
        Image.fromarray(np.ascontiguousarray(gray)).resize(size, Image.BILINEAR)
    )
    lab_d = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    opts = display_options(getattr(ws, "session", None))
    rgb = overlay(gray_d, lab_d, alpha=opts.alpha, outline=False)
    if lab_d.any():
        rgb = draw_outline(rgb, lab_d, thickness=1 if opts.fill else 2)
    # the shown slice: ticks at both sides (slice 0 is at the bottom)
    y0 = int(math.floor((n - 1 - k) * height / n))
    y1 = max(y0 + 1, int(math.floor((n - k) * height / n)))
    tick = max(6, width // 14)
    rgb = rgb.copy()
    rgb[y0:y1, :tick] = (255, 214, 10)
    rgb[y0:y1, -tick:] = (255, 214, 10)
    return rgb


def save_reformat(session: Session, rgb: np.ndarray, plane: str, keep: int = 6) -> Path:
    """Writes a reformat PNG beside the session's views (served with them) and keeps the last ``keep``
    of that plane."""
    from PIL import Image

    folder = session.subdir("view")
    ws = session.workspace
    n = 0
    if ws is not None:
        ws.view_counter += 1
        n = ws.view_counter
    path = folder / f"reformat_{plane}_{n:06d}.png"
    Image.fromarray(rgb).save(path, compress_level=1)
    for p in sorted(folder.glob(f"reformat_{plane}_*.png"))[:-keep]:
        p.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- measures
def _pixel_known(ws: Workspace, v: int) -> bool:
    """True when the pixel size is known (not a plain PNG/JPG image, whose spacing is a placeholder)."""
    return ws.metas[v].source_format not in ("image",)


_VOLUMES: Any = (
    None  # WeakKeyDictionary: workspace -> (result key, {case: {object id: mL}})
)


def _result_key(ws: Workspace, v: int) -> tuple[Any, ...]:
    """What case ``v``'s result depends on: its finished slices, the run and the corrections."""
    done = ws.done.get(v)
    return (
        v,
        int(done.sum()) if done is not None else 0,
        id(ws.run_info),
        round(float(ws.correction_seconds), 4),
    )


def _volumes_ml(
    ws: Workspace, v: int, spacing_zyx: tuple[float, float, float]
) -> dict[int, float]:
    """Each object's volume of case ``v`` in mL, cached until the result changes (a whole-volume count per
    slice step would cost about 0.1 s on a 512 x 512 x 300 result)."""
    import weakref

    from ..metrics import mask_volumes_ml

    global _VOLUMES
    if _VOLUMES is None:
        _VOLUMES = weakref.WeakKeyDictionary()
    key = _result_key(ws, v)
    cached = _VOLUMES.get(ws)
    if cached is not None and cached[0] == key:
        return cached[1]
    res = ws.results.get(v)
    vols = mask_volumes_ml(np.asarray(res), spacing_zyx) if res is not None else {}
    _VOLUMES[ws] = (key, vols)
    return vols


def measures_markdown(ws: Workspace, v: int, k: int) -> str:
    """Each object's volume in mL (volumes) and its area on slice ``k`` (mm², or px when the pixel size
    is unknown), as a markdown line per object; empty before a result."""
    from ..preprocess import color_hex, label_color

    res = ws.results.get(v)
    if res is None or v not in ws.done or not ws.done[v].any():
        return ""
    meta = ws.metas[v]
    k = clamp_slice(ws, v, k)
    cs, rs, ss = meta.spacing
    known = _pixel_known(ws, v)
    volumes = _volumes_ml(ws, v, (ss, rs, cs)) if meta.n_slices > 1 and known else {}
    ids, counts = np.unique(np.asarray(res[k]), return_counts=True)
    areas = {int(i): int(c) for i, c in zip(ids, counts) if i}
    here = "this image" if meta.n_slices == 1 else f"slice {k + 1}"
    lines = []
    for o in ws.objects:
        oid = o.object_id
        if oid not in volumes and oid not in areas:
            continue
        swatch = f'<span style="color:{color_hex(label_color(oid))}">■</span>'
        parts = [f"{swatch} **{html.escape(o.name)}**"]
        if oid in volumes:
            parts.append(f"{volumes[oid]:.1f} mL")
        px = areas.get(oid, 0)
        parts.append(f"{here}: {px * rs * cs:.0f} mm²" if known else f"{here}: {px} px")
        lines.append(" · ".join(parts))
    return "  \n".join(lines)


def reference_legend(ws: Workspace, v: int) -> str:
    """The reference labels of case ``v`` with their colours and names (when the file names them); empty
    without a reference."""
    from ..preprocess import color_hex

    ref = ws.reference(v)
    if ref is None:
        return ""
    ids = [int(i) for i in np.unique(ref) if i]
    names = _label_names(ws, v, ids)
    chosen = set(ws.ref_labels) if ws.ref_labels else set(ids)
    items = []
    for i, c in reference_colors(ids).items():
        light = tuple(int(x + (255 - x) * 0.45) for x in c)
        name = f" {html.escape(names[i])}" if names.get(i) else ""
        mark = "" if i in chosen else " (not scored)"
        items.append(f'<span style="color:{color_hex(light)}">□</span> {i}{name}{mark}')
    return "Reference: " + " · ".join(items[:20])


_NAMES: dict[tuple[str, tuple[int, ...]], dict[int, str]] = {}


def _label_names(ws: Workspace, v: int, ids: list[int]) -> dict[int, str]:
    src = ws.references[v] if 0 <= v < len(ws.references) else None
    names = getattr(src, "label_names", None)
    if names:
        return {int(a): str(b) for a, b in names.items()}
    if isinstance(src, str | Path):
        key = (str(src), tuple(ids))
        if key not in _NAMES:
            try:
                from ..io import read_label_names

                _NAMES[key] = dict(read_label_names(src, ids))
            except Exception:  # noqa: BLE001 - names are optional: a reference without them shows numbers
                _NAMES[key] = {}
            if len(_NAMES) > 64:
                _NAMES.pop(next(iter(_NAMES)))
        return _NAMES[key]
    return {}


# ---------------------------------------------------------------------------------------------- window
def auto_window_numbers(ws: Workspace, v: int) -> tuple[float, float]:
    """``(width, level)`` of the automatic window of case ``v`` (the start of a custom window)."""
    w, level = ws.frames(v, "auto").window
    return round(float(w), 1), round(float(level), 1)


def window_choices(ws: Workspace, ct_choices: list[str]) -> list[str]:
    """The window menu: every CT preset when a case is CT; otherwise automatic (percentiles) or custom."""
    if any(m.modality == "CT" for m in ws.metas):
        return list(ct_choices)
    return ["auto", "custom"]


# ---------------------------------------------------------------------------------------------- thumbnails
#: Cases the thumbnails strip shows (the first ones; the case menu reaches all).
MAX_THUMBNAILS = 48
#: Size in pixels of the longer side of a thumbnail.
THUMBNAIL_SIZE = 112


def thumbnails_key(ws: Workspace) -> tuple[Any, ...]:
    """What the thumbnails depend on (they are redrawn when it changes): the results and their flags."""
    done = tuple(int(d.sum()) for _, d in sorted(ws.done.items()))
    return (id(ws), done, id(ws.run_info), round(float(ws.correction_seconds), 3), len(ws.flags),
            tuple(sorted(ws.flags)) if len(ws.flags) < 200 else len(ws.flags))  # fmt: skip


def thumbnails(
    ws: Workspace, session: Session, window: Any = "auto"
) -> list[tuple[str, str]]:
    """Small pictures of the first :data:`MAX_THUMBNAILS` images of an image set with their masks, as
    ``(png path, caption)``; the caption names the image and, after a run, its confidence and a ⚠ when flagged."""
    from PIL import Image

    from ..preprocess import overlay

    folder = session.subdir("view")
    for old in folder.glob("thumb_*.png"):
        old.unlink(missing_ok=True)
    ws.view_counter += 1
    stamp = ws.view_counter
    conf = _confidences(ws)
    out = []
    for v in range(min(ws.n_cases, MAX_THUMBNAILS)):
        gray = ws.frames(v, window).gray(0)
        res = ws.results.get(v)
        labels = (
            np.asarray(res[0]) if res is not None else np.zeros(gray.shape, np.uint8)
        )
        rgb = overlay(gray, labels, alpha=0.5, outline=True)
        im = Image.fromarray(rgb)
        im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BILINEAR)
        path = folder / f"thumb_{stamp:06d}_{v:04d}.png"
        im.save(path, compress_level=1)
        caption = ws.metas[v].name
        if (v, 0) in conf and conf[(v, 0)] is not None:
            caption += f" · {conf[(v, 0)]:.2f}"
        if ws.flags.get((v, 0)):
            caption = "⚠ " + caption
        out.append((str(path), caption))
    return out
