"""Image-to-image alignment used to carry a prompt from one case to another.

Dataset-wide "seed transfer" puts the user's prompt on every other image. Mapping it by relative
position alone ignores that patients sit differently in the field of view; a quick similarity
registration (isotropic scale + translation, no rotation) of the two images first puts the prompt
where the same anatomy is. Pure numpy/scipy, a few milliseconds per pair at the working size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Similarity", "estimate_similarity"]


@dataclass(frozen=True)
class Similarity:
    """Maps pixel ``(x, y)`` of the source image to ``(x', y')`` of the target image.

    ``x' = sx * x + tx``, ``y' = sy * y + ty`` (per-axis scale includes the two images' size ratio).
    ``score`` is the normalised correlation of the aligned images (-1..1); higher is more trustworthy.
    """

    sx: float
    sy: float
    tx: float
    ty: float
    score: float = 0.0

    def apply(self, x: float, y: float) -> tuple[float, float]:
        return self.sx * x + self.tx, self.sy * y + self.ty

    @staticmethod
    def relative(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> Similarity:
        """The plain relative-position mapping (pixel centres aligned), used as the fallback."""
        (h0, w0), (h1, w1) = src_shape, dst_shape
        sx, sy = w1 / w0, h1 / h0
        return Similarity(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5, 0.0)


def _prep(img: np.ndarray, size: int) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    zoom = (size / img.shape[0], size / img.shape[1])
    small = ndimage.zoom(img, zoom, order=1, prefilter=False)[:size, :size]
    if small.shape != (size, size):
        small = np.pad(small, ((0, size - small.shape[0]), (0, size - small.shape[1])), mode="edge")
    small = ndimage.gaussian_filter(small, 1.0)
    lo, hi = np.percentile(small, [1, 99])
    return np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1)


def estimate_similarity(
    src: np.ndarray,
    dst: np.ndarray,
    *,
    size: int = 96,
    scales: np.ndarray | None = None,
    max_shift: float = 0.25,
) -> Similarity:
    """Estimates the scale + translation that best overlays ``src`` onto ``dst``.

    Both images are resampled to ``size x size`` (so differing sizes/aspects are handled by the
    per-axis factors), then for each candidate scale the best translation is found by FFT
    cross-correlation; the pair with the highest normalised correlation wins.

    Args:
        src: 2D image ``(rows, cols)`` the prompt was placed on.
        dst: 2D image ``(rows, cols)`` to carry it to.
        size: working resolution in pixels.
        scales: candidate isotropic scales of ``src`` content in ``dst`` (default 0.8..1.25).
        max_shift: largest translation searched, as a fraction of the image size.

    Returns:
        A :class:`Similarity` from ``src`` pixels to ``dst`` pixels.
    """
    if scales is None:
        scales = np.geomspace(0.8, 1.25, 9)
    a = _prep(src, size)
    b = _prep(dst, size)
    b0 = b - b.mean()
    fb = np.fft.rfft2(b0)
    c = (size - 1) / 2.0
    lim = int(round(max_shift * size))
    best = (-np.inf, 1.0, 0.0, 0.0)
    for s in scales:
        # a_s(p) = a((p - c) / s + c): src content scaled by s about the centre.
        a_s = ndimage.affine_transform(a, [1 / s, 1 / s], offset=c - c / s, order=1, mode="nearest")
        a0 = a_s - a_s.mean()
        corr = np.fft.irfft2(np.conj(np.fft.rfft2(a0)) * fb, s=(size, size))
        corr = np.fft.fftshift(corr)
        mid = size // 2
        win = corr[mid - lim : mid + lim + 1, mid - lim : mid + lim + 1]
        iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
        dy, dx = iy - lim, ix - lim
        shifted = np.roll(a0, (dy, dx), axis=(0, 1))
        denom = float(np.linalg.norm(shifted) * np.linalg.norm(b0)) or 1.0
        score = float((shifted * b0).sum() / denom)
        if score > best[0]:
            best = (score, float(s), float(dx), float(dy))
    score, s, dx, dy = best
    # Working-grid mapping: q = s * (p - c) + c + d ; then grid <-> pixel scaling per axis.
    (h0, w0), (h1, w1) = src.shape[:2], dst.shape[:2]
    fx0, fy0 = size / w0, size / h0  # src pixel -> grid
    fx1, fy1 = w1 / size, h1 / size  # grid -> dst pixel
    # x' = fx1 * (s * (fx0 * x - c) + c + dx)
    sx = fx1 * s * fx0
    sy = fy1 * s * fy0
    tx = fx1 * (c - s * c + dx)
    ty = fy1 * (c - s * c + dy)
    return Similarity(sx, sy, tx, ty, score)


def _ncc_map(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of ``template`` at every valid position of ``image`` (FFT + box sums)."""
    th, tw = template.shape
    ih, iw = image.shape
    t = template - template.mean()
    tnorm = float(np.sqrt((t * t).sum())) or 1.0
    shape = (ih + th - 1, iw + tw - 1)
    num = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(t[::-1, ::-1], shape), shape)
    num = num[th - 1 : ih, tw - 1 : iw]
    c1 = np.pad(np.cumsum(np.cumsum(image, 0), 1), ((1, 0), (1, 0)))
    c2 = np.pad(np.cumsum(np.cumsum(image * image, 0), 1), ((1, 0), (1, 0)))

    def box_sum(c: np.ndarray) -> np.ndarray:
        return c[th:, tw:] - c[:-th, tw:] - c[th:, :-tw] + c[:-th, :-tw]

    n = th * tw
    s1, s2 = box_sum(c1), box_sum(c2)
    var = np.maximum(s2 - s1 * s1 / n, 1e-6)
    return num / (np.sqrt(var) * tnorm)


def track_box(
    src: np.ndarray,
    dst: np.ndarray,
    box_src: tuple[float, float, float, float],
    box_dst: tuple[float, float, float, float],
    *,
    context: float = 0.2,
    search: float = 0.25,
    scales: np.ndarray | None = None,
    work: int = 64,
) -> tuple[tuple[float, float, float, float], float]:
    """Refines where a box drawn on ``src`` lies on ``dst`` by matching its surroundings.

    The box plus ``context`` (fraction of its size on each side) is the template; it is searched
    around the initial guess ``box_dst`` over ``scales`` (relative to the guess's size) and shifts
    up to ``search`` of the box size, by normalised cross-correlation at a working size of ``work``
    pixels for the template's long side.

    Args:
        src, dst: 2D images ``(rows, cols)``.
        box_src: ``(x0, y0, x1, y1)`` on ``src``.
        box_dst: initial guess ``(x0, y0, x1, y1)`` on ``dst`` (e.g. from :func:`estimate_similarity`).

    Returns:
        ``(box on dst, correlation score -1..1)``.
    """
    if scales is None:
        scales = np.geomspace(0.85, 1.18, 7)
    src = np.asarray(src, np.float32)
    dst = np.asarray(dst, np.float32)

    def expand(b, frac):
        x0, y0, x1, y1 = b
        w, h = x1 - x0 + 1, y1 - y0 + 1
        return x0 - frac * w, y0 - frac * h, x1 + frac * w, y1 + frac * h

    def crop(img, b, out_hw):
        x0, y0, x1, y1 = b
        h, w = out_hw
        zy, zx = (y1 - y0) / max(h - 1, 1), (x1 - x0) / max(w - 1, 1)
        return ndimage.affine_transform(img, [zy, zx], offset=[y0, x0], output_shape=(h, w), order=1, mode="nearest")

    tb = expand(box_src, context)
    tw_, th_ = tb[2] - tb[0], tb[3] - tb[1]
    f = work / max(tw_, th_)
    t_hw = (max(int(round(th_ * f)), 8), max(int(round(tw_ * f)), 8))
    template = crop(src, tb, t_hw)
    gx0, gy0, gx1, gy1 = box_dst
    gw, gh = gx1 - gx0 + 1, gy1 - gy0 + 1
    best = (-np.inf, box_dst)
    for s in scales:
        # dst region for the template at this scale: the guess's size * s, with the same context.
        w, h = gw * s, gh * s
        cx, cy = (gx0 + gx1) / 2, (gy0 + gy1) / 2
        cand = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        cb = expand(cand, context)
        # search window: candidate + search margin on each side, sampled at the template's scale
        sw = expand(cb, search / (1 + 2 * context))
        px = t_hw[1] / (cb[2] - cb[0])  # working pixels per dst pixel
        py = t_hw[0] / (cb[3] - cb[1])
        s_hw = (int(round((sw[3] - sw[1]) * py)), int(round((sw[2] - sw[0]) * px)))
        if s_hw[0] <= t_hw[0] or s_hw[1] <= t_hw[1]:
            continue
        window = crop(dst, sw, s_hw)
        ncc = _ncc_map(window, template)
        iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        score = float(ncc[iy, ix])
        if score > best[0]:
            # top-left of matched template region in dst pixels
            mx0, my0 = sw[0] + ix / px, sw[1] + iy / py
            bx0 = mx0 + context * w
            by0 = my0 + context * h
            best = (score, (bx0, by0, bx0 + w - 1, by0 + h - 1))
    return best[1], best[0]
