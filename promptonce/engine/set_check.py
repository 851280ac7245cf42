"""A check of a whole run's results against each other: cases whose objects are out of proportion.

The checks of :mod:`.quality` judge one case at a time, against its prior, its neighbouring slices and
its image. Some failures only show against the rest of the set: a lung base stopped halfway up, or a
lung that took the heart, leave the mask smooth, confident and close to a prior that was itself
off, but change how large that object is beside the other objects of the same case. Within one set
(one hospital, one protocol) that proportion varies little: on the Shenzhen X-rays the right lung is
typically about 1.2 times the left.

:func:`proportion_flags` compares, for every pair of objects, each case's area ratio with the median
ratio over the set and flags a case whose ratio is off by more than :data:`PROPORTION_FACTOR`. The
median, not the seed, is the yardstick, so a seed with unusual anatomy (a child's film) does not flag
the whole set, and the flags depend on the set's results only, not on their order.

Measured with ``benchmarks/flag_features.py`` (``--analyse``; benchmarks/README.md, "Fourteenth round"):
on the tuning X-rays (Shenzhen images 0-99, ten seeds, 990 cases) this check alone flags 53 cases, 51%
of them below Dice 0.90, and finds 17 of the 33 cases below 0.85; held out (images 100-565, three
seeds, 1395 cases) it flags 136, 42% below 0.90, and finds 20 of the 59 below 0.85. With the other
flags (and instability alone no longer a flag, :data:`.quality.FLAG_INSTABILITY_ALONE`): recall 0.76
-> 0.83, precision 0.24 -> 0.36 held out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from itertools import combinations

import numpy as np

__all__ = ["PROPORTION_FACTOR", "PROPORTION_MIN_CASES", "object_areas", "proportion_flags", "total_areas"]

#: A case whose area ratio of two objects differs from the set's median ratio by more than this
#: factor (either way) is flagged. Chosen on the tuning X-rays among 1.16-1.49 (log 0.15-0.4): 1.35
#: (log 0.3) is where the flag's precision passes 0.5 (recall 0.52); 1.28 flags 83 cases at 0.37.
PROPORTION_FACTOR = 1.35
#: Fewer cases holding both objects than this: no median to compare with, no flag.
PROPORTION_MIN_CASES = 8


def object_areas(labels: np.ndarray) -> dict[int, int]:
    """Pixels (voxels) of each object id in a label map (or a case's label volume); 0 is background."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))
    return {int(i): int(c) for i, c in enumerate(counts) if i and c}


def total_areas(per_slice: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """A case's object areas summed over its slices (each slice's from :func:`object_areas`)."""
    total: dict[int, int] = {}
    for areas in per_slice:
        for oid, n in areas.items():
            total[oid] = total.get(oid, 0) + n
    return total


def proportion_flags(
    areas: Mapping[Hashable, Mapping[int, int]],
    names: Mapping[int, str] | None = None,
    *,
    factor: float = PROPORTION_FACTOR,
    min_cases: int = PROPORTION_MIN_CASES,
) -> dict[Hashable, list[str]]:
    """Flags of the cases whose objects are out of proportion with the rest of the set.

    Args:
        areas: case key -> {object id: area} (pixels of a 2D case, voxels of a volume;
            :func:`object_areas`). Objects of area 0 count as absent.
        names: object id -> name for the flag text ("object N" when missing).
        factor: how far (a ratio, > 1) a case's area ratio may be from the set's median ratio.
        min_cases: the fewest cases holding both objects of a pair for that pair to be checked.

    Returns:
        case key -> flags, only for flagged cases: one flag per case, for the pair furthest off,
        e.g. ``"right lung is 1.71x left lung here, 1.20x across the set (median of 99 cases): one of
        them is likely cut short or spilled over; check this case"``.
    """
    if factor <= 1:
        raise ValueError(f"factor must be above 1, got {factor}")
    names = names or {}
    limit = math.log(factor)
    ids = sorted({int(o) for a in areas.values() for o, n in a.items() if n > 0})
    worst: dict[Hashable, tuple[float, str]] = {}
    for a, b in combinations(ids, 2):
        logs = {key: math.log(ar[a] / ar[b]) for key, ar in areas.items() if ar.get(a, 0) > 0 and ar.get(b, 0) > 0}
        if len(logs) < min_cases:
            continue
        med = float(np.median(list(logs.values())))
        for key, r in logs.items():
            off = abs(r - med)
            if off > limit and off > worst.get(key, (0.0, ""))[0]:
                na, nb = names.get(a) or f"object {a}", names.get(b) or f"object {b}"
                text = (f"{na} is {math.exp(r):.2f}x {nb} here, {math.exp(med):.2f}x across the set "
                        f"(median of {len(logs)} cases): one of them is likely cut short or spilled over; "
                        "check this case")
                worst[key] = (off, text)
    return {key: [text] for key, (_, text) in worst.items()}
