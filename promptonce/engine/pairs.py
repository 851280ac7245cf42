"""Two objects side by side on one image (the lungs of a chest X-ray): their lower ends should be level.

A seed whose two objects end at different heights (on a chest X-ray: a lung base raised by the heart
or by a high hemidiaphragm) passes that asymmetry to every case through its warped masks, and each
case then agrees with its prior and looks confident while one lung is cut short. On the tuning
X-rays (Shenzhen 0-99) the reference masks' lung bases differ by more than 15% of the lungs' height
in 5% of the images and by more than 20% in 4%; from one such seed (image 90, bases 35% apart) the
transferred cases inherited a median gap of 16%.

:func:`level_bases` tries both ways of closing a gap larger than ``config.pair_base_gap``: the
shorter object reaching down to the other's lower end, and the longer one ending at the shorter one's
(a seed whose lungs reach low carries a lung base down into the abdomen: on the tuning X-rays, of the
transferred pairs left more than 15% apart, the longer lung's base was the misplaced one in 18 and
the shorter one's in 7, both in 19). A new mask is kept when its boundary follows image edges at
least as well as the mask it replaces (:func:`.quality.boundary_evidence`), the larger gain of the
two winning. A gap that remains is logged, and flagged only where ``FLAG_UNEVEN_BASES`` says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .core import Engine

from ..prompts import box_from_mask
from ..types import ObjectPrompt
from .predict import predict
from .quality import boundary_evidence, extent

__all__ = ["FLAG_UNEVEN_BASES", "base_gap", "is_pair", "level_bases", "shorter", "uneven_bases_flag"]

#: Side by side: the column ranges overlap by less than this fraction of the narrower object ...
MAX_COLUMN_OVERLAP = 0.2
#: ... and the row ranges overlap by more than this fraction of the shorter one.
MIN_ROW_OVERLAP = 0.5
#: Ending the longer object higher must raise its outline's edge evidence by at least this much
#: (:func:`.quality.boundary_evidence`); reaching down needs no margin. Chosen on the tuning X-rays
#: (``benchmarks/level_tries.py``: the 24 levellings that seeds 0 and 11 of images 0-99 triggered):
#: raising at any gain helped 8 lungs and hurt 1 (a lung cut at its neighbour's too-high base, lung
#: Dice 0.92 -> 0.80, at a gain of 0.002); at 0.01 it helped 7 and hurt none.
RAISE_MIN_GAIN = 0.01
#: Whether a gap the levelling leaves is a flag (:func:`uneven_bases_flag`). It is not: where the model,
#: asked both ways, keeps the lower ends apart, the image mostly has them apart (a high hemidiaphragm).
#: On the tuning X-rays (Shenzhen 0-99, ten seeds, 990 cases; ``benchmarks/flag_features.py``) the flag
#: fired on 62 cases, 26 of them at Dice >= 0.94 and 14 below 0.90, and it was the only flag of 1 of the
#: 35 failures (Dice < 0.85) once the set check (:mod:`.set_check`, which sees a lung cut short in its
#: area beside the other) runs. The flags' recall/precision without it: 0.89/0.35 -> 0.86/0.46
#: (benchmarks/README.md, "Seventeenth round").
FLAG_UNEVEN_BASES = False
#: A pair's heights differ by at most this factor on the seed (the lungs of the tuning X-rays'
#: references: median 1.04, at most 1.46; a liver beside a spleen is no pair).
MAX_HEIGHT_RATIO = 1.6


def base_gap(a: np.ndarray, b: np.ndarray) -> float | None:
    """How far apart the lower ends of two side-by-side masks are, over their mean height.

    Returns:
        ``|bottom(a) - bottom(b)| / mean height`` (rows), or None when either mask is empty or the
        two are not side by side (their columns overlap by more than ``MAX_COLUMN_OVERLAP`` of the
        narrower, or their rows by less than ``MIN_ROW_OVERLAP`` of the shorter).
    """
    ya, xa = np.nonzero(a)
    yb, xb = np.nonzero(b)
    if len(ya) == 0 or len(yb) == 0:
        return None
    cols = min(xa.max(), xb.max()) - max(xa.min(), xb.min()) + 1
    if cols > MAX_COLUMN_OVERLAP * min(np.ptp(xa) + 1, np.ptp(xb) + 1):
        return None
    rows = min(ya.max(), yb.max()) - max(ya.min(), yb.min()) + 1
    if rows < MIN_ROW_OVERLAP * min(np.ptp(ya) + 1, np.ptp(yb) + 1):
        return None
    height = 0.5 * (np.ptp(ya) + np.ptp(yb)) + 1.0
    return float(abs(int(ya.max()) - int(yb.max())) / height)


def is_pair(masks: dict[int, np.ndarray]) -> bool:
    """True for exactly two non-empty masks side by side (:func:`base_gap`) of similar height (``MAX_HEIGHT_RATIO``).

    Asked of the seed: only objects the user prompted as such a pair (the two lungs) are levelled.
    """
    if len(masks) != 2:
        return False
    a, b = masks.values()
    if base_gap(a, b) is None:
        return False
    ha, hb = np.ptp(np.nonzero(a)[0]) + 1, np.ptp(np.nonzero(b)[0]) + 1
    return max(ha, hb) <= MAX_HEIGHT_RATIO * min(ha, hb)


def shorter(masks: dict[int, np.ndarray]) -> tuple[int, int]:
    """``(id of the object whose lower end is higher, id of the other)`` of two non-empty masks."""
    (ia, a), (ib, b) = masks.items()
    return (ia, ib) if np.nonzero(a)[0].max() < np.nonzero(b)[0].max() else (ib, ia)


def uneven_bases_flag(name: str, other: str, gap: float) -> str:
    """The flag of a pair whose lower ends stay ``gap`` (fraction of their height) apart."""
    return (f"{name}: ends {gap:.0%} of its height above {other} (side-by-side objects such as the two "
            "lungs usually end level): check its lower end")


def level_bases(
    eng: Engine,
    emb,
    gray: np.ndarray,
    masks: dict[int, np.ndarray],
    point_of,
) -> tuple[int, np.ndarray, float] | None:
    """Brings the lower ends of two side-by-side masks level, one way or the other, where the image agrees.

    Two tries when the gap exceeds ``config.pair_base_gap``: the shorter mask's box reaching down to
    the other's lower end, and the longer mask's box ending at the shorter one's lower end (each box
    with a 2% margin). A try counts when the model's new mask is not empty and its boundary follows
    image edges at least as well as the mask it would replace (by ``RAISE_MIN_GAIN`` more for the
    raise); of the tries that count, the one that gains most evidence is kept (ties: reaching down,
    the older rule).

    Args:
        eng: the engine (its backend and ``config.pair_base_gap``).
        emb: the image's embedding.
        gray: the image (float).
        masks: exactly two objects' masks (object id -> bool ``(rows, cols)``).
        point_of: object id -> interior point for point-capable models (or None).

    Returns:
        ``(object id, new mask, model score)`` for the object changed, or None (no gap, or no try the
        image agrees with).
    """
    cfg = eng.config
    if cfg.pair_base_gap <= 0 or len(masks) != 2:
        return None
    gap = base_gap(*masks.values())
    if gap is None or gap <= cfg.pair_base_gap:
        return None
    short_id, long_id = shorter(masks)
    short_end = float(np.nonzero(masks[short_id])[0].max())
    long_end = float(np.nonzero(masks[long_id])[0].max())
    best: tuple[float, int, np.ndarray, float] | None = None
    for oid, end in ((short_id, long_end), (long_id, short_end)):  # reach down; end higher
        old = masks[oid]
        pad = 0.02 * extent(old)
        box = replace(box_from_mask(old, margin=pad, shape=old.shape), y1=min(end + pad, old.shape[0] - 1.0))
        point = point_of(oid)
        if point is not None and point.y > box.y1:  # an interior point below the raised end would undo it
            point = None
        pred = predict(eng, eng.backend, emb,
                       ObjectPrompt(points=(point,) if point is not None else (), box=box, object_id=oid))
        new = pred.best
        if not new.any():
            continue
        gain = boundary_evidence(gray, new) - boundary_evidence(gray, old)
        if gain >= (0.0 if oid == short_id else RAISE_MIN_GAIN) and (best is None or gain > best[0]):
            best = (gain, oid, new, float(np.max(pred.scores)))
    return None if best is None else best[1:]
