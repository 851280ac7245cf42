"""What a click means on the image itself: the intensity-connected region around it, and background clicks.

A click says "this thing here", not how big the thing is. The click model (MobileSAM) offers up to
three candidates (part, object, whole) and the box model (LiteMedSAM) grows whatever box it is given:
on CT one click on the liver came back with the spleen and the back muscles. The region grown from
the click on the slice's own intensities (:func:`click_region`) is a size prior that needs no model:
the candidates are ranked by their agreement with it (:func:`agreement`).

A background click must change the result where it lands, whatever the models did
(:func:`remove_negative`): the part of the mask around it (split from the positive clicks' part
along image edges by a geodesic distance) is removed.

All arrays are ``(rows, cols)``; points are ``(x, y)`` = (column, row) pixels of the slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..types import Point

__all__ = ["click_region", "agreement", "remove_negative", "contains_any", "contains_points", "leaks"]

log = logging.getLogger(__name__)

#: a grown region covering more than this fraction of the slice says nothing about the object's size
MAX_REGION_FRACTION = 0.35
#: the intensity band around the click's neighbourhood median: k robust sigmas, clipped (grey levels 0..255)
BAND_SIGMAS = 2.5
BAND_MIN, BAND_MAX = 8.0, 32.0
#: the band is widened by these factors while the region grows by at most JUMP per step (a jump = a leak)
BAND_STEPS = (1.0, 1.5, 2.0)
JUMP = 2.0
#: a box-model mask whose part outside the (dilated) click mask exceeds this fraction of that mask leaked
LEAK_FRACTION = 0.6


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _pixel(p: Point, shape: tuple[int, int]) -> tuple[int, int]:
    h, w = shape
    return min(max(int(round(p.y)), 0), h - 1), min(max(int(round(p.x)), 0), w - 1)


def contains_points(mask: np.ndarray, points: Sequence[Point]) -> bool:
    """True when every point lies on the mask (bool ``(rows, cols)``)."""
    return all(mask[_pixel(p, mask.shape)] for p in points)


def contains_any(mask: np.ndarray, points: Sequence[Point]) -> bool:
    """True when at least one point lies on the mask (e.g. another object's click)."""
    return any(mask[_pixel(p, mask.shape)] for p in points)


def _scale(shape: tuple[int, int]) -> float:
    return min(shape) / 128.0


def click_region(gray: np.ndarray, points: Sequence[Point]) -> np.ndarray | None:
    """The intensity-connected region around the positive clicks, or None when it tells nothing.

    Per click: the slice is lightly smoothed; the median and robust spread (MAD) of a small disk
    around the click define a band of grey values (``BAND_SIGMAS`` robust sigmas, clipped to
    ``BAND_MIN..BAND_MAX`` grey levels); the pixels within the band, opened to cut thin bridges to
    neighbours, that are connected to the click form the region, which is closed and hole-filled.
    The band is then widened (``BAND_STEPS``) as long as the region grows by at most ``JUMP`` per
    step: an organ crossed by ribs or of uneven grey fills in, and the step where the region jumps
    (it reached a neighbour) is not taken. The result is grown by one pixel (the smoothing pulls
    the band in from the object's edges).
    The regions of several clicks are united.

    Args:
        gray: uint8 ``(rows, cols)`` model frame of the slice (the windowed slice).
        points: the positive clicks.

    Returns:
        bool ``(rows, cols)``, or None when there is no positive click or the region covers more than
        ``MAX_REGION_FRACTION`` of the slice or is a speck (a click on texture or on everything).
    """
    pos = [p for p in points if p.label == 1]
    if not pos:
        return None
    shape = gray.shape
    s = _scale(shape)
    img = ndimage.gaussian_filter(gray.astype(np.float32), max(0.8, s * 0.4))
    rn = max(2, int(round(2 * s)))
    ro = max(1, int(round(s)))
    out = np.zeros(shape, bool)
    for p in pos:
        r, c = _pixel(p, shape)
        r0, r1, c0, c1 = max(r - rn, 0), min(r + rn + 1, shape[0]), max(c - rn, 0), min(c + rn + 1, shape[1])
        disk = _disk(rn)[rn - (r - r0) : rn + (r1 - r), rn - (c - c0) : rn + (c1 - c)]
        vals = img[r0:r1, c0:c1][disk]
        med = float(np.median(vals))
        sig = 1.4826 * float(np.median(np.abs(vals - med)))
        tol = float(np.clip(BAND_SIGMAS * sig, BAND_MIN, BAND_MAX))
        reg = None
        for f in BAND_STEPS:  # widen the band while the region grows steadily; stop before it jumps
            grown = _band_region(img, med, tol * f, (r, c), disk, (r0, r1, c0, c1), ro)
            if grown is None:
                break
            if reg is not None and (
                grown.sum() > JUMP * reg.sum() or grown.sum() > MAX_REGION_FRACTION * grown.size
            ):
                break
            reg = grown
        if reg is not None:
            out |= reg
    out = ndimage.binary_dilation(out, _disk(1))  # smoothing pulled the band in from the edges
    area = int(out.sum())
    if area > MAX_REGION_FRACTION * out.size or area < max(9, 2 * int(_disk(rn).sum())):
        log.debug("click region of %d px out of %d: not used as a size prior", area, out.size)
        return None
    return out


def _band_region(
    img: np.ndarray, med: float, tol: float, rc: tuple[int, int], disk: np.ndarray, win: tuple[int, int, int, int],
    ro: int,
) -> np.ndarray | None:
    """The opened band ``|img - med| <= tol`` component holding pixel ``rc``, closed and hole-filled."""
    r, c = rc
    r0, r1, c0, c1 = win
    band = np.abs(img - med) <= tol
    opened = ndimage.binary_opening(band, _disk(ro))
    lab, _ = ndimage.label(opened)
    v = lab[r, c]
    if v == 0:  # the click sits on a thin part: the nearest opened component within the disk
        near = lab[r0:r1, c0:c1][disk]
        near = near[near > 0]
        if near.size:
            v = int(np.bincount(near).argmax())
    if v == 0:
        lab, _ = ndimage.label(band)
        v = lab[r, c]
    if v == 0:
        return None
    reg = lab == v
    reg = ndimage.binary_closing(reg, _disk(ro), border_value=0) | reg
    return ndimage.binary_fill_holes(reg)


def agreement(mask: np.ndarray, region: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    s = int(mask.sum()) + int(region.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(mask, region).sum()) / s


def leaks(mask: np.ndarray, guide: np.ndarray) -> bool:
    """True when ``mask`` reaches far beyond ``guide`` (both bool ``(rows, cols)``).

    The guide is dilated by a few per cent of its size; the mask leaked when its part outside that
    exceeds ``LEAK_FRACTION`` of the guide's area (the box model took a neighbour).
    """
    if not guide.any():
        return False
    ys, xs = np.nonzero(guide)
    d = max(2, int(round(0.08 * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))))
    grown = ndimage.binary_dilation(guide, _disk(min(d, 12)), iterations=max(1, d // 12))
    return int((mask & ~grown).sum()) > LEAK_FRACTION * int(guide.sum())


def remove_negative(mask: np.ndarray, gray: np.ndarray, points: Sequence[Point]) -> np.ndarray:
    """Removes from ``mask`` the part around each background click that lies on it.

    The mask's pixels are split between the clicks by a geodesic distance inside the mask whose
    steps cost more across intensity edges (an edge-aware Voronoi split): the pixels nearer to a
    background click than to every positive click go, and always the clicked pixel's neighbourhood
    (a small disk) - but never the core (a small disk) around a positive click. Without positive
    clicks (a box), the mask's deepest pixel away from the background clicks stands in for one.
    Components left without a positive click that were connected to one before are dropped too.

    Args:
        mask: bool ``(rows, cols)``.
        gray: uint8 ``(rows, cols)`` model frame of the slice.
        points: all clicks of the object (background clicks are ``label == 0``).

    Returns:
        The new bool mask (a copy); ``mask`` itself when no background click lies on it.
    """
    shape = mask.shape
    neg = [p for p in points if p.label == 0 and mask[_pixel(p, shape)]]
    if not neg:
        return mask
    pos = [p for p in points if p.label == 1]
    s = _scale(shape)
    r_neg = max(1, int(round(2 * s)))
    r_core = max(1, int(round(s)))
    img = ndimage.gaussian_filter(gray.astype(np.float32), max(0.8, s * 0.4))
    remove = np.zeros(shape, bool)
    seeds = [_pixel(p, shape) for p in pos]
    if not seeds:  # a box and background clicks: the mask's deepest pixel away from them stands in
        away = mask.copy()
        for p in neg:
            away &= ~_disk_at(shape, _pixel(p, shape), 3 * r_neg)
        if away.any():
            depth = ndimage.distance_transform_edt(np.pad(away, 1))[1:-1, 1:-1]
            seeds = [tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), shape))]
    if seeds:
        owner = _geodesic_owner(mask, img, seeds, [_pixel(p, shape) for p in neg])
        remove |= owner == 1
    else:  # the mask is all near the background clicks: it goes
        remove |= mask
    for p in neg:
        remove |= _disk_at(shape, _pixel(p, shape), r_neg)
    core = np.zeros(shape, bool)
    for p in pos:
        core |= _disk_at(shape, _pixel(p, shape), r_core)
    new = mask & ~(remove & ~core)
    if pos:  # pieces cut off from every positive click by the removal go with it
        lab, _ = ndimage.label(new)
        keep = {int(lab[_pixel(p, shape)]) for p in pos} - {0}
        before, _ = ndimage.label(mask)
        keep_before = {int(before[_pixel(p, shape)]) for p in pos} - {0}
        cut = np.isin(before, list(keep_before)) & ~np.isin(lab, list(keep))
        new &= ~cut
    log.debug("background click(s) removed %d of %d mask pixels", int(mask.sum() - new.sum()), int(mask.sum()))
    return new


def _disk_at(shape: tuple[int, int], rc: tuple[int, int], r: int) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - rc[0]) ** 2 + (xx - rc[1]) ** 2 <= r * r


def _geodesic_owner(
    mask: np.ndarray, img: np.ndarray, pos: list[tuple[int, int]], neg: list[tuple[int, int]]
) -> np.ndarray:
    """For each mask pixel: 0 nearest to a positive seed, 1 nearest to a negative one, -1 unreachable.

    Distance: 8-connected paths inside the mask (seeds included even when off it); a step costs its
    length plus its absolute grey-level change divided by 8 (so a split falls on intensity edges).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    region = mask.copy()
    for rc in pos + neg:
        region[rc] = True
    ys, xs = np.nonzero(region)
    y0, x0 = ys.min(), xs.min()
    sub = region[y0 : ys.max() + 1, x0 : xs.max() + 1]
    val = img[y0 : ys.max() + 1, x0 : xs.max() + 1]
    idx = -np.ones(sub.shape, np.int64)
    n = int(sub.sum())
    idx[sub] = np.arange(n)
    rows, cols, wts = [], [], []
    hh, ww = sub.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        src = (slice(max(0, -dy), hh - max(0, dy)), slice(max(0, -dx), ww - max(0, dx)))
        dst = (slice(max(0, dy), hh - max(0, -dy)), slice(max(0, dx), ww - max(0, -dx)))
        a, b = idx[src], idx[dst]
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
        wts.append(float(np.hypot(dy, dx)) + np.abs(val[src][ok] - val[dst][ok]) / 8.0 + 1e-6)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    w = np.concatenate(wts)
    graph = coo_matrix((w, (r, c)), shape=(n, n)).tocsr()
    seeds = [int(idx[y - y0, x - x0]) for y, x in pos + neg]
    _, _, nearest = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    neg_ids = [sd for sd in seeds[len(pos) :] if sd not in seeds[: len(pos)]]  # a shared pixel stays positive
    owner_flat = np.where(nearest < 0, -1, np.where(np.isin(nearest, neg_ids), 1, 0))
    owner = -np.ones(mask.shape, np.int8)
    full = np.zeros(sub.shape, np.int8) - 1
    full[sub] = owner_flat
    owner[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = full
    return owner
