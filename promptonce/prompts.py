"""Prompts derived from masks: boxes, interior points, simulated users, prompt mapping and seed slices.

Used by the propagation engine (the next slice's prompt comes from the previous slice's mask) and by
the evaluation (a simulated user who draws from the reference mask of the seed image only).

Coordinates follow :mod:`promptonce.types`: masks are ``(rows, cols)`` = ``(H, W)`` arrays, points
are ``(x, y)`` = ``(col, row)`` pixels, boxes ``(x0, y0, x1, y1)`` inclusive pixels. Points and box
corners produced here from masks lie on integer pixels; :func:`jitter` and :func:`map_prompt` may
produce fractional coordinates, always inside ``[0, W-1] x [0, H-1]``.

Specks
------
A reference mask often holds a few stray pixels (interpolated edges, annotation slips) that no
person would click. :func:`components` always keeps the largest component (a tiny object alone on
its slice is still the object), and any other one only when it has at least ``min_size`` pixels
(default :data:`MIN_SIZE` = 5) AND at least ``min_fraction`` (default :data:`MIN_FRACTION` = 5%) of
the largest component's area. For two lungs (the smaller one is about 60-90% of the larger) both are
kept; a 3-pixel speck beside a 2000-pixel liver is dropped. On the 566 Shenzhen chest X-ray masks
this gives exactly two objects on 565 (66 masks hold specks) and three real lung parts on one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from .errors import DimensionError, InputError, PromptError
from .types import Box, ObjectPrompt, Point, SlicePrompt

__all__ = [
    "MIN_SIZE",
    "MIN_FRACTION",
    "mask_stats",
    "box_from_mask",
    "interior_point",
    "components",
    "foreground",
    "prompt_from_mask",
    "prompt_from_reference",
    "prompt_label",
    "nmt_prompt",
    "jitter",
    "map_point",
    "map_box",
    "map_prompt",
    "map_slice_prompt",
    "check_prompt",
    "seed_slice",
]

logger = logging.getLogger(__name__)

#: Components smaller than this many pixels are specks (ignored by the simulated user).
MIN_SIZE = 5
#: Components smaller than this fraction of the largest component are specks.
MIN_FRACTION = 0.05

_EIGHT = np.ones((3, 3), dtype=bool)


def _mask2d(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DimensionError(f"{what} must be 2D (rows, cols), got shape {m.shape}.")
    return m if m.dtype == bool else m != 0


def _mask2d_any(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise DimensionError(f"reference slice must be 2D (rows, cols), got shape {a.shape}.")
    return a


def mask_stats(mask: np.ndarray) -> tuple[int, tuple[float, float] | None, Box | None]:
    """Area, centroid and bounding box of a 2D mask.

    Args:
        mask: ``(H, W)`` bool (or non-zero = foreground).

    Returns:
        ``(area in pixels, centroid (x, y) as floats or None, tight Box or None)``; None when empty.
    """
    m = _mask2d(mask)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return 0, None, None
    box = Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    return int(ys.size), (float(xs.mean()), float(ys.mean())), box


def box_from_mask(
    mask: np.ndarray, margin: float = 0.0, shape: tuple[int, int] | None = None
) -> Box | None:
    """The bounding box of a mask, grown by ``margin`` pixels on every side and clipped to the image.

    Args:
        mask: ``(H, W)`` bool (or non-zero = foreground).
        margin: pixels added on each side (>= 0).
        shape: ``(H, W)`` of the image to clip to; default the mask's shape.

    Returns:
        The box, or None for an empty mask.
    """
    if margin < 0:
        raise InputError(f"margin must be >= 0 pixels, got {margin}.")
    m = _mask2d(mask)
    h, w = shape if shape is not None else m.shape
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return Box(
        float(max(cols[0] - margin, 0)),
        float(max(rows[0] - margin, 0)),
        float(min(cols[-1] + margin, w - 1)),
        float(min(rows[-1] + margin, h - 1)),
    )


def interior_point(mask: np.ndarray, label: int = 1) -> Point | None:
    """The pixel deepest inside a mask: always inside it, even for C-shaped or ring masks.

    The depth is the Euclidean distance to the nearest background pixel, the image edge counting as
    background. Ties go to the deepest pixel nearest the mask's centroid, then to the first in
    row-major order, so the choice is deterministic.

    Args:
        mask: ``(H, W)`` bool (or non-zero = foreground).
        label: the point's label (1 object, 0 background).

    Returns:
        ``Point(x=col, y=row)`` on an integer pixel, or None for an empty mask.
    """
    m = _mask2d(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    crop = m[r0 : rows[-1] + 1, c0 : cols[-1] + 1]
    depth = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    best = depth.max()
    ys, xs = np.nonzero(depth >= best - 1e-9)
    if ys.size > 1:
        cy, cx = (float(v.mean()) for v in np.nonzero(crop))
        d2 = (ys - cy) ** 2 + (xs - cx) ** 2
        i = int(np.argmin(d2))  # argmin takes the first (row-major) among equal distances
    else:
        i = 0
    return Point(float(xs[i] + c0), float(ys[i] + r0), label)


def components(
    mask: np.ndarray, min_size: int = MIN_SIZE, min_fraction: float = MIN_FRACTION
) -> list[np.ndarray]:
    """The 8-connected components of a mask, largest first, specks dropped (module docstring).

    Args:
        mask: ``(H, W)`` bool (or non-zero = foreground).
        min_size: smallest component kept besides the largest, in pixels (1 keeps everything).
        min_fraction: smallest component kept besides the largest, as a fraction of the largest
            (0 keeps everything).

    Returns:
        Full-size bool ``(H, W)`` masks, sorted by area descending (ties: first in row-major order);
        empty only for an empty mask.
    """
    m = _mask2d(mask)
    lab, n = ndimage.label(m, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    keep_min = max(int(min_size), float(min_fraction) * float(sizes.max()))
    order = np.argsort(-sizes, kind="stable")  # labels are numbered in row-major order of first pixel
    return [lab == (i + 1) for rank, i in enumerate(order) if rank == 0 or sizes[i] >= keep_min]


def foreground(ref_labels: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
    """bool mask of the chosen reference labels (None: every non-zero value)."""
    arr = np.asarray(ref_labels)
    if labels is None:
        return arr != 0
    return np.isin(arr, [int(v) for v in labels])


def prompt_from_mask(
    mask: np.ndarray,
    *,
    object_id: int = 1,
    margin: float = 0.0,
    with_box: bool = True,
    with_point: bool = True,
    name: str = "",
) -> ObjectPrompt | None:
    """A box (with ``margin``) and one interior positive point from a mask; None when it is empty.

    This is how the engine turns one slice's mask into the next slice's prompt.
    """
    if not (with_box or with_point):
        raise InputError("prompt_from_mask needs with_box or with_point (or both).")
    m = _mask2d(mask)
    box = box_from_mask(m, margin) if with_box else None
    point = interior_point(m) if with_point else None
    if box is None and point is None:
        return None
    return ObjectPrompt(points=(point,) if point is not None else (), box=box, object_id=object_id, name=name)


_LABEL_NAME = re.compile(r"^label (-?\d+)(?: part \d+)?$")


def prompt_label(prompt: ObjectPrompt) -> int | None:
    """The reference label a prompt from :func:`prompt_from_reference` (``merge=False``) was drawn on."""
    match = _LABEL_NAME.match(prompt.name)
    return int(match.group(1)) if match else None


def prompt_from_reference(
    ref_labels_2d: np.ndarray,
    *,
    labels: Sequence[int] | None = None,
    merge: bool = True,
    per_component: bool = True,
    max_components: int | None = None,
    min_size: int = MIN_SIZE,
    min_fraction: float = MIN_FRACTION,
    margin: float = 0.0,
    with_box: bool = True,
    with_point: bool = True,
) -> tuple[ObjectPrompt, ...]:
    """The simulated user: one box and one interior positive click per object seen in a reference slice.

    Args:
        ref_labels_2d: ``(H, W)`` reference label map of the seed image (the only reference used).
        labels: label values to prompt; None = every non-zero label.
        merge: True: the chosen labels form one foreground (two lungs labelled 1 and 2 are still two
            components). False: every label is prompted separately (for per-label scores); the
            prompts' names are ``"label L"`` / ``"label L part j"`` (read back with :func:`prompt_label`).
        per_component: one object per connected component (8-connectivity, largest first, specks
            dropped as in :func:`components`); False: one object per foreground (box around all of it,
            click at its deepest pixel).
        max_components: keep at most this many components per foreground (None: all non-speck ones).
        min_size, min_fraction: speck thresholds (module docstring).
        margin: pixels added around each box.
        with_box, with_point: what the user gives.

    Returns:
        ObjectPrompts with ``object_id`` 1, 2, ... in order (labels ascending, then components by
        size). Empty when nothing of the chosen labels is on this slice (a vanished object).
    """
    ref = np.asarray(ref_labels_2d)
    if ref.ndim != 2:
        raise DimensionError(f"reference slice must be 2D (rows, cols), got shape {ref.shape}.")
    if not (with_box or with_point):
        raise InputError("prompt_from_reference needs with_box or with_point (or both).")
    if merge:
        groups: list[tuple[int | None, np.ndarray]] = [(None, foreground(ref, labels))]
    else:
        values = sorted(int(v) for v in np.unique(ref) if v != 0) if labels is None else [int(v) for v in labels]
        groups = [(v, ref == v) for v in values]
    objects: list[ObjectPrompt] = []
    for value, fg in groups:
        parts = components(fg, min_size, min_fraction) if per_component else ([fg] if fg.any() else [])
        if max_components is not None:
            parts = parts[: max(int(max_components), 0)]
        for j, part in enumerate(parts, start=1):
            object_id = len(objects) + 1
            if object_id > 255:
                logger.warning("More than 255 objects on the seed slice; the rest are not prompted.")
                return tuple(objects)
            if value is None:
                name = f"object {object_id}"
            else:
                name = f"label {value}" if len(parts) == 1 else f"label {value} part {j}"
            prompt = prompt_from_mask(
                part, object_id=object_id, margin=margin, with_box=with_box, with_point=with_point, name=name
            )
            if prompt is not None:
                objects.append(prompt)
    return tuple(objects)


def _nearest_inside(mask: np.ndarray, x: int, y: int) -> tuple[int, int]:
    """The mask pixel nearest to pixel ``(x, y)`` (itself when inside)."""
    if mask[y, x]:
        return x, y
    _, (iy, ix) = ndimage.distance_transform_edt(~mask, return_indices=True)
    return int(ix[y, x]), int(iy[y, x])


def nmt_prompt(
    ref_labels_2d: np.ndarray,
    labels: Sequence[int] | None = None,
    *,
    min_size: int = MIN_SIZE,
    min_fraction: float = MIN_FRACTION,
    object_id: int = 1,
) -> ObjectPrompt | None:
    """The "No More Training" prompt set for one slice: centroid clicks, one negative click, one box.

    * one positive point at each component's centroid (rounded to a pixel), moved to the nearest
      pixel inside that component when the centroid falls outside it (rings, crescents);
    * one negative point at the centre of the components' union bounding box, SKIPPED when that
      pixel lies inside the foreground: there it would tell the model that a pixel of the object is
      background, contradicting the positive clicks (the paper places it between the two lungs,
      which is background; for a single convex object the centre is usually inside);
    * the union bounding box of the components.

    Args:
        ref_labels_2d: ``(H, W)`` reference label map.
        labels: label values merged into the foreground; None = every non-zero value.
        min_size, min_fraction: speck thresholds (module docstring).
        object_id: id of the returned object.

    Returns:
        One ObjectPrompt, or None when the slice has no foreground.
    """
    fg = foreground(_mask2d_any(ref_labels_2d), labels)
    parts = components(fg, min_size, min_fraction)
    if not parts:
        return None
    union = np.logical_or.reduce(parts)
    points: list[Point] = []
    for part in parts:
        ys, xs = np.nonzero(part)
        cx, cy = int(round(float(xs.mean()))), int(round(float(ys.mean())))
        px, py = _nearest_inside(part, cx, cy)
        points.append(Point(float(px), float(py), 1))
    box = box_from_mask(union)
    if box is None:  # cannot happen: the parts are non-empty
        return None
    nx, ny = int(round((box.x0 + box.x1) / 2)), int(round((box.y0 + box.y1) / 2))
    if not fg[ny, nx]:
        points.append(Point(float(nx), float(ny), 0))
    return ObjectPrompt(points=tuple(points), box=box, object_id=object_id, name="nmt")


def _clip_xy(x: float, y: float, shape: tuple[int, int]) -> tuple[float, float]:
    h, w = shape
    return float(min(max(x, 0.0), w - 1)), float(min(max(y, 0.0), h - 1))


def jitter(
    prompt: ObjectPrompt,
    rng: np.random.Generator,
    pixels: float,
    shape: tuple[int, int],
    kind: Literal["uniform", "normal"] = "uniform",
) -> ObjectPrompt:
    """Perturbs a prompt to test robustness: every point and box corner moves independently.

    Args:
        prompt: the prompt.
        rng: the random generator (seed it for reproducible runs).
        pixels: noise size: ``"uniform"`` shifts each coordinate by U(-pixels, +pixels),
            ``"normal"`` by N(0, pixels) (standard deviation).
        shape: ``(H, W)`` of the image; results are clipped to ``[0, W-1] x [0, H-1]``.
        kind: the noise distribution.

    Returns:
        A new ObjectPrompt with the same id, name and point labels; box corners are re-ordered when
        the noise swaps them, so the box stays valid.
    """
    if pixels < 0:
        raise InputError(f"jitter pixels must be >= 0, got {pixels}.")
    if kind not in ("uniform", "normal"):
        raise InputError(f"jitter kind must be 'uniform' or 'normal', got {kind!r}.")

    def noise(n: int) -> np.ndarray:
        if kind == "uniform":
            return rng.uniform(-pixels, pixels, size=n)
        return rng.normal(0.0, pixels, size=n)

    points = []
    for p in prompt.points:
        dx, dy = noise(2)
        x, y = _clip_xy(p.x + dx, p.y + dy, shape)
        points.append(Point(x, y, p.label))
    box = None
    if prompt.box is not None:
        b = prompt.box
        d = noise(4)
        x0, y0 = _clip_xy(b.x0 + d[0], b.y0 + d[1], shape)
        x1, y1 = _clip_xy(b.x1 + d[2], b.y1 + d[3], shape)
        box = Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    return ObjectPrompt(points=tuple(points), box=box, object_id=prompt.object_id, name=prompt.name)


def _scales(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> tuple[float, float]:
    (sh, sw), (dh, dw) = src_shape, dst_shape
    if min(sh, sw, dh, dw) < 1:
        raise InputError(f"image shapes must be positive, got {src_shape} -> {dst_shape}.")
    return dw / sw, dh / sh


def map_point(point: Point, src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> Point:
    """Maps a point to another image by relative position (pixel centres: ``x' = (x + .5) * W'/W - .5``)."""
    sx, sy = _scales(src_shape, dst_shape)
    x, y = _clip_xy((point.x + 0.5) * sx - 0.5, (point.y + 0.5) * sy - 0.5, dst_shape)
    return Point(x, y, point.label)


def map_box(box: Box, src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> Box:
    """Maps a box to another image by relative position, keeping the pixel extent it covers.

    The inclusive box covers ``[x0, x1 + 1)`` in continuous pixel units, mapped to
    ``[x0 * s, (x1 + 1) * s)``; a box thinner than one target pixel keeps at least that pixel.
    """
    sx, sy = _scales(src_shape, dst_shape)
    x0, y0 = _clip_xy(box.x0 * sx, box.y0 * sy, dst_shape)
    x1, y1 = _clip_xy((box.x1 + 1) * sx - 1, (box.y1 + 1) * sy - 1, dst_shape)
    return Box(x0, y0, max(x1, x0), max(y1, y0))


def map_prompt(prompt: ObjectPrompt, src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> ObjectPrompt:
    """Maps an object's prompt from an image of ``src_shape`` ``(H, W)`` to one of ``dst_shape``.

    Used for dataset-wide seed transfer between images of different sizes: each coordinate keeps its
    relative position. Mapping there and back returns the original coordinates (up to clipping and
    float rounding).
    """
    return ObjectPrompt(
        points=tuple(map_point(p, src_shape, dst_shape) for p in prompt.points),
        box=None if prompt.box is None else map_box(prompt.box, src_shape, dst_shape),
        object_id=prompt.object_id,
        name=prompt.name,
    )


def map_slice_prompt(
    prompt: SlicePrompt,
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
    *,
    slice_index: int | None = None,
    volume_index: int | None = None,
) -> SlicePrompt:
    """:func:`map_prompt` for every object of a SlicePrompt, optionally moving it to another slice/volume."""
    return SlicePrompt(
        objects=tuple(map_prompt(o, src_shape, dst_shape) for o in prompt.objects),
        slice_index=prompt.slice_index if slice_index is None else slice_index,
        volume_index=prompt.volume_index if volume_index is None else volume_index,
    )


def check_prompt(prompt: ObjectPrompt | SlicePrompt, shape: tuple[int, int]) -> None:
    """Raises PromptError when a point or box corner lies outside an ``(H, W)`` image.

    Coordinates are allowed up to half a pixel beyond the first and last pixel centres.
    """
    h, w = shape
    objects = prompt.objects if isinstance(prompt, SlicePrompt) else (prompt,)
    for obj in objects:
        coords = [(p.x, p.y, "point") for p in obj.points]
        if obj.box is not None:
            coords += [(obj.box.x0, obj.box.y0, "box corner"), (obj.box.x1, obj.box.y1, "box corner")]
        for x, y, what in coords:
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                raise PromptError(
                    f"Object {obj.object_id}: {what} ({x:g}, {y:g}) is outside the image of {w}x{h} pixels "
                    f"(x in 0..{w - 1}, y in 0..{h - 1}); place it on the image."
                )


def seed_slice(
    ref_labels_3d: np.ndarray,
    how: Literal["largest", "centre", "center", "first"] = "largest",
    labels: Sequence[int] | None = None,
) -> int:
    """The slice a simulated user would prompt, from a reference ``(S, H, W)`` label map.

    Args:
        ref_labels_3d: ``(slices, rows, cols)`` reference labels.
        how: ``"largest"``: the slice with the largest foreground area (first on ties);
            ``"centre"`` (``"center"``): the middle of the object's slice extent,
            ``(first + last) // 2`` (the "Prompt Once" paper's seed), or the nearest slice with
            foreground when that one has none (lower index on ties); ``"first"``: the first slice
            with foreground.
        labels: reference labels forming the foreground; None = every non-zero value.

    Returns:
        The slice index.

    Raises:
        PromptError: when no slice holds the chosen labels. InputError: for an unknown ``how``.
    """
    ref = np.asarray(ref_labels_3d)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3:
        raise DimensionError(f"reference must be (slices, rows, cols), got shape {ref.shape}.")
    area = np.count_nonzero(foreground(ref, labels).reshape(ref.shape[0], -1), axis=1)
    present = np.flatnonzero(area)
    if present.size == 0:
        which = "any label" if labels is None else f"labels {list(labels)}"
        raise PromptError(f"The reference has no foreground for {which} on any slice; there is nothing to prompt.")
    if how == "largest":
        return int(np.argmax(area))
    if how == "first":
        return int(present[0])
    if how in ("centre", "center"):
        mid = (int(present[0]) + int(present[-1])) // 2
        return int(present[np.argmin(np.abs(present - mid))])
    raise InputError(f"Unknown seed {how!r}; use 'largest', 'centre' or 'first'.")
