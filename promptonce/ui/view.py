"""The view: what the page shows of a workspace, and display <-> image coordinates.

The page shows slice ``k`` of case ``v`` scaled by ``(sx, sy)`` display pixels per image pixel
(:func:`~promptonce.ui.workspace.display_scale`): small images are enlarged, large ones shrunk, and
anisotropic pixels stretched so that the image keeps its physical aspect. A click at display pixel
``(X, Y)`` is image pixel ``((X + 0.5) / sx - 0.5, (Y + 0.5) / sy - 0.5)`` (:func:`to_image_xy`).

The page sends what it shows (case, slice, window, reference outline) with every event; it travels
as one :class:`ViewState`.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .session import Session
from .workspace import Workspace

__all__ = [
    "ViewState", "DisplayOptions", "display_options", "to_image_xy", "render", "save_view", "slice_info",
    "clamp_slice", "reference_colors",
]  # fmt: skip


@dataclass
class DisplayOptions:
    """How masks are drawn for one browser session (the page's opacity slider and fill/outline toggle).

    Attributes:
        opacity: fill opacity of the result masks, 0..1 (0: outline only).
        fill: draw the masks filled (True) or as outlines only (False).
    """

    opacity: float = 0.45
    fill: bool = True

    @property
    def alpha(self) -> float:
        """The fill opacity actually used: 0 when only outlines are drawn."""
        return min(max(float(self.opacity), 0.0), 1.0) if self.fill else 0.0


_OPTIONS: weakref.WeakKeyDictionary[Any, DisplayOptions] = weakref.WeakKeyDictionary()


def display_options(session: Any) -> DisplayOptions:
    """The :class:`DisplayOptions` of a browser session (made with the defaults on first use; kept
    while the session object lives)."""
    if session is None:
        return DisplayOptions()
    opts = _OPTIONS.get(session)
    if opts is None:
        opts = DisplayOptions()
        _OPTIONS[session] = opts
    return opts


def reference_colors(ids: Any) -> dict[int, tuple[int, int, int]]:
    """``{reference label: (r, g, b)}``: each reference label in its own colour
    (:func:`promptonce.preprocess.label_colors`)."""
    from ..preprocess import label_colors

    return label_colors(int(i) for i in ids if int(i) != 0)


@dataclass
class ViewState:
    """What the page shows: the case, the slice (1-based, as the slider), the window and the reference outline.

    Attributes:
        case: case index (None before anything is shown).
        slice1: slice number, 1-based (None: the first).
        window: preset name, ``(width, level)`` or ``auto``.
        show_reference: draw the reference outline.
    """

    case: int | None = 0
    slice1: int | None = 1
    window: Any = "auto"
    show_reference: bool = False

    @property
    def v(self) -> int:
        return 0 if self.case is None else int(self.case)

    @property
    def k(self) -> int:
        """The 0-based slice index."""
        return int(self.slice1 or 1) - 1

    def at(self, case: int | None, slice1: int | None) -> ViewState:
        """The same view at another case / slice."""
        return ViewState(case, slice1, self.window, self.show_reference)


def clamp_slice(ws: Workspace, v: int, k: int | float | None) -> int:
    """``k`` as a slice index of case ``v`` (0 when None)."""
    n = ws.metas[v].n_slices
    k = 0 if k is None else int(k)
    return min(max(k, 0), n - 1)


def to_image_xy(ws: Workspace, v: int, x_disp: float, y_disp: float) -> tuple[float, float]:
    """Maps a display pixel of case ``v``'s view to an image pixel ``(x, y)`` (clamped into the image)."""
    sx, sy = ws.display_scale(v)
    _, rows, cols = ws.metas[v].shape
    x = (float(x_disp) + 0.5) / sx - 0.5
    y = (float(y_disp) + 0.5) / sy - 0.5
    return min(max(round(x, 1), 0.0), cols - 1.0), min(max(round(y, 1), 0.0), rows - 1.0)


def render(ws: Workspace, v: int, k: int, window: Any = "auto", show_reference: bool = False) -> np.ndarray:
    """The picture of slice ``k`` of case ``v`` as the page shows it.

    Returns:
        uint8 RGB ``(H, W, 3)`` at display size: the windowed slice, the result (or preview) labels
        in their objects' colours (filled with the session's :class:`DisplayOptions` opacity, or as
        outlines), the reference outline when asked (each reference label in its own colour), and
        the slice's clicks (green = object, red = background), boxes and a pending box corner.
    """
    from PIL import Image

    from ..preprocess import draw_outline, outline_edges, overlay

    k = clamp_slice(ws, v, k)
    gray = ws.frames(v, window).gray(k)
    sx, sy = ws.display_scale(v)
    rows, cols = gray.shape
    size = (max(1, round(cols * sx)), max(1, round(rows * sy)))
    up = sx >= 1 and sy >= 1
    gray_d = np.asarray(Image.fromarray(gray).resize(size, Image.NEAREST if up and sx == int(sx) else Image.BILINEAR))
    lab_d = np.asarray(Image.fromarray(ws.slice_labels(v, k)).resize(size, Image.NEAREST))
    opts = display_options(getattr(ws, "session", None))
    rgb = overlay(gray_d, lab_d, alpha=opts.alpha, outline=False)
    if lab_d.any():
        # an opaque contour of about 1/3 image pixel (at least 1 display pixel), drawn inwards; thicker
        # when the masks are shown as outlines only
        thick = max(1, int(round(min(sx, sy) / 3)))
        rgb = draw_outline(rgb, lab_d, thickness=thick if opts.fill else max(2, 2 * thick))
    if show_reference:
        ref_all = ws.reference(v)
        chosen = ws.reference_mask(v)
        if ref_all is not None and chosen is not None:
            ref_k = np.where(chosen[k], ref_all[k], 0).astype(np.uint8)
            ref_d = np.asarray(Image.fromarray(ref_k).resize(size, Image.NEAREST))
            edges = outline_edges(ref_d, thickness=max(1, int(round(min(sx, sy) / 4))))
            for i, color in reference_colors(np.unique(ref_d[edges])).items():
                # the reference in its label's colour, lightened so that it stands apart from the result fill
                rgb[edges & (ref_d == i)] = tuple(int(c + (255 - c) * 0.45) for c in color)
    return _draw_prompts(ws, v, k, rgb, (sx, sy))


def _draw_prompts(ws: Workspace, v: int, k: int, rgb: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Draws the slice's boxes, clicks and pending box corners over ``rgb`` (display pixels)."""
    from PIL import Image, ImageDraw

    from ..preprocess import label_color

    sx, sy = scale
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    r = max(4, round(min(im.size) * 0.009))
    for oid, d in ws.drafts.get((v, k), {}).items():
        color = tuple(label_color(oid))
        if d.box is not None:
            b = d.box
            draw.rectangle(
                [b.x0 * sx, b.y0 * sy, (b.x1 + 1) * sx - 1, (b.y1 + 1) * sy - 1], outline=color, width=max(2, r // 2)
            )
        for p in d.points:
            cx, cy = (p.x + 0.5) * sx, (p.y + 0.5) * sy
            fill = (40, 220, 80) if p.label == 1 else (240, 50, 50)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=(255, 255, 255), width=2)
            if p.label == 0:
                draw.line([cx - r * 0.6, cy, cx + r * 0.6, cy], fill=(255, 255, 255), width=2)
        if d.corner is not None:
            cx, cy = (d.corner[0] + 0.5) * sx, (d.corner[1] + 0.5) * sy
            draw.line([cx - 2 * r, cy, cx + 2 * r, cy], fill=color, width=2)
            draw.line([cx, cy - 2 * r, cx, cy + 2 * r], fill=color, width=2)
    return np.asarray(im)


def save_view(session: Session, rgb: np.ndarray, keep: int = 4) -> Path:
    """Writes a rendered view as a PNG in the session folder (keeping the last ``keep``) and returns it.

    Views are files of the session (not of Gradio's shared cache), so they go when the session ends.
    """
    from PIL import Image

    folder = session.subdir("view")
    ws = session.workspace
    if ws is not None:
        ws.view_counter += 1
        n = ws.view_counter
    else:
        n = int(time.time() * 1000)
    path = folder / f"view_{n:06d}.png"
    Image.fromarray(rgb).save(path, compress_level=1)
    for p in sorted(folder.glob("view_*.png"))[:-keep]:
        p.unlink(missing_ok=True)
    return path


def slice_info(ws: Workspace, v: int, k: int) -> str:
    """One line of markdown describing slice ``k`` of case ``v``: position, prompts, result, flags."""
    meta = ws.metas[v]
    k = clamp_slice(ws, v, k)
    parts = [f"**{meta.name}**", f"slice {k + 1} / {meta.n_slices}" if meta.n_slices > 1 else "2D image"]
    parts.append(f"{meta.shape[2]}×{meta.shape[1]} px, {meta.modality}")
    drafts = ws.drafts.get((v, k), {})
    if drafts:
        n_pts = sum(len(d.points) for d in drafts.values())
        n_box = sum(d.box is not None for d in drafts.values())
        parts.append(f"prompted here ({n_pts} click(s), {n_box} box(es))")
    if v in ws.done and ws.done[v][k]:
        ids = [int(i) for i in np.unique(ws.results[v][k]) if i]
        names = (ws.object(i).name if ws.has_object(i) else str(i) for i in ids)
        parts.append("result: " + (", ".join(names) or "empty"))
    flags = ws.flags.get((v, k))
    if flags:
        parts.append("⚠ " + "; ".join(flags))
    return " · ".join(parts)
