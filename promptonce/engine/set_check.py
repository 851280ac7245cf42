"""Checks of a whole run's results against each other: cases out of proportion, and the set's own edges.

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

:func:`evidence_scales` is the yardstick for "weak edges" (:func:`.quality.with_stability`): a set
whose confident cases' outlines are all weaker than the tuning set's (another hospital's softer
intensity curve) lowers the threshold for its exemplar pass, so a right outline is not flagged for
the curve of its hospital.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from itertools import combinations

import numpy as np

__all__ = [
    "EVIDENCE_MIN_CASES",
    "EVIDENCE_REFERENCE",
    "EVIDENCE_SCALE_FLOOR",
    "PROPORTION_FACTOR",
    "PROPORTION_MIN_CASES",
    "evidence_scales",
    "object_areas",
    "proportion_flags",
    "total_areas",
]

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


#: The outline evidence (:func:`.quality.outline_evidence`) typical of the confident cases of the
#: tuning X-rays: the median over a run's exemplar set (its 24 most confident cases) was 0.157-0.184
#: (mean 0.173) for ten seeds on Shenzhen images 0-99 (held out, images 100-565: 0.20-0.28). Chosen
#: among 0.16-0.19 by replaying the recorded checks of those ten runs with the scale: up to 0.175 the
#: flags caught every failure they caught before, from 0.18 one fewer (benchmarks/README.md,
#: "Twenty-first round").
EVIDENCE_REFERENCE = 0.17
#: The threshold is never lowered below this share of :data:`.quality.EVIDENCE_FULL`: a gamma of 0.6
#: over a whole set scaled the evidence by 0.78 (benchmarks/README.md, "Twentieth round"); a set
#: weaker than this is not explained by its intensity curve alone and keeps its flags.
EVIDENCE_SCALE_FLOOR = 0.6
#: Fewer confident cases holding an object than this: no median, the threshold stays.
EVIDENCE_MIN_CASES = 8


def evidence_scales(
    evidence: Iterable[Mapping[int, float | None]],
    *,
    reference: float = EVIDENCE_REFERENCE,
    floor: float = EVIDENCE_SCALE_FLOOR,
    min_cases: int = EVIDENCE_MIN_CASES,
) -> dict[int, float]:
    """How much weaker than the tuning set's the outlines of a set's confident cases are, per object.

    The outline evidence is measured on the image's own intensity range, so a hospital whose films
    are processed with a softer curve weakens every outline of the set at once: at the tuning
    threshold, cases that are right get "weak edges" flags (on the tuning X-rays under a gamma of
    0.6 for the whole set, 49 of 99 cases fell under it instead of 7). The yardstick is the set's own
    confident cases (the exemplars: chosen by confidence with an order-free tie-break, so the scale
    does not depend on the order of the cases): the median of their evidence against
    :data:`EVIDENCE_REFERENCE`, the tuning set's. The scale only lowers the threshold (a set with
    sharper outlines keeps it) and never below ``floor``.

    Args:
        evidence: one mapping per confident case, object id -> its evidence (None: not measured).
        reference: the tuning set's median evidence of confident cases.
        floor: the lowest scale.
        min_cases: the fewest cases with a measured evidence for an object to get a scale.

    Returns:
        object id -> scale in ``[floor, 1]`` for :func:`.quality.with_stability`'s ``evidence_scale``
        (objects with too few cases are left out: scale 1).
    """
    if reference <= 0 or not 0 < floor <= 1:
        raise ValueError(f"reference must be above 0 and floor in (0, 1], got {reference} and {floor}")
    values: dict[int, list[float]] = {}
    for case in evidence:
        for oid, v in case.items():
            if v is not None and math.isfinite(v):
                values.setdefault(int(oid), []).append(float(v))
    return {oid: float(np.clip(np.median(v) / reference, floor, 1.0))
            for oid, v in sorted(values.items()) if len(v) >= min_cases}
