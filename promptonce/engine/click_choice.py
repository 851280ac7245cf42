"""Which box-model mask a click meant on a cross-section: candidates, how each is scored, and a box grown from the click.

A click on a box-only model (LiteMedSAM) has to become a box. On a CT or MR slice each guess of
the object's extent (the click model's candidates, the intensity region grown from the click, and
boxes grown outwards from the click by the box model itself, :func:`grown_box`, and on a crop
around one structure boxes of fixed fractions of the slice, :func:`crop_boxes`) is boxed for the
box model; what comes back is a :class:`ClickCandidate`. One of them is kept by :func:`choose`:

* it must hold the positive clicks (when any candidate does);
* then the highest sum of four terms, each in [0, 1], equally weighted: the box model's own score;
  its **stability** (Dice between the mask and the box model's answer to the mask's own box: an
  object is a fixed point of "box it and ask again", a fragment or a mask that took a neighbour
  changes); its agreement (Dice) with the click's intensity region; and its **boundary evidence**
  (how sharply its outline follows image edges, :func:`.quality.boundary_evidence`). On a crop
  around one structure (:func:`is_crop`) stability is left out (:data:`CROP_STABILITY_WEIGHT`).

On a crop a single click is answered by :func:`vote` instead: the pixels that a share
(:data:`CROP_VOTE`) of the better-ranked click-holding candidates (:data:`CROP_VOTERS`) hold.

Projection images (X-rays) do not come here: there ribs and overlapping organs cut the region short
and put edges inside the lung, and these candidates lowered click Dice (see
:func:`.predict.click_to_box_model`). Measured with ``benchmarks/clicks.py``; the collection that
set the equal weights and the grow starts, and the held-out slices, cases and organs, are in
``benchmarks/README.md`` ("Sixth round"); the crop boxes in its "Twenty-sixth round", the crop's
weights in its "Twenty-seventh round", the vote in its "Twenty-eighth round"
(``benchmarks/click_candidates.py`` records every candidate with its Dice).

All arrays are ``(rows, cols)``; points are ``(x, y)`` = (column, row) pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..types import Box, Point

__all__ = [
    "CROP_BOXES",
    "CROP_FOV_MM",
    "CROP_STABILITY_WEIGHT",
    "CROP_VOTE",
    "CROP_VOTERS",
    "GROW_STARTS",
    "GROW_STEPS",
    "ClickCandidate",
    "centred_box",
    "choose",
    "click_component",
    "crop_boxes",
    "grown_box",
    "is_crop",
    "start_box",
    "vote",
]

#: half-sizes of the boxes grown from a single click, as fractions of the slice's shorter side
GROW_STARTS = (0.04, 0.08)
#: a slice whose field of view is at most this many mm on its shorter side is a crop around one
#: structure (no cross-section of a whole body part is that small; e.g. the Medical Segmentation
#: Decathlon's hippocampus volumes, 31-59 mm a side): there the object spans a sizeable fraction
#: of the slice, and :data:`CROP_BOXES` are tried as well. Whole cross-sections, even at low
#: resolution, are larger (the CIP chest CT: 64 px of 4.2 mm, 267 mm; ACDC: 154-288 mm).
CROP_FOV_MM = 100.0
#: half-sizes (x, y) of the boxes centred on the click that are tried on a cropped slice, as
#: fractions of the slice's shorter side: four squares and four boxes twice as long one way
CROP_BOXES = (
    (0.10, 0.10), (0.15, 0.15), (0.20, 0.20), (0.25, 0.25), (0.10, 0.20), (0.20, 0.10), (0.15, 0.30), (0.30, 0.15),
    (0.35, 0.35), (0.40, 0.40), (0.20, 0.40), (0.40, 0.20),
)
#: on a crop, the click's mask is made of the pixels that at least this share of the voters hold
#: (:func:`vote`; the voters: :data:`CROP_VOTERS`). There the candidates are the box model's answers
#: to a family of box sizes around the click, most of them only a part of the object on the slice
#: where ``--scope volume`` prompts (its largest), and no ranking of them found the object: on the
#: largest slices of the 50 tuning hippocampus volumes the vote gave Dice 0.600 against 0.570 for
#: the best-ranked candidate (``benchmarks/README.md``, twenty-eighth round, has the held-out figures)
CROP_VOTE = 0.3
#: the better half of the click-holding candidates, by :func:`choose`'s crop ranking, vote: a
#: neighbour that only lower-ranked candidates take (a large box over two touching structures) is
#: left out, and on the tuning slices the vote of all of them (at 0.2) did only 1.6 points better
CROP_VOTERS = 0.5
#: the weight of the stability term in :func:`choose` on a crop (:func:`is_crop`; 1 elsewhere). On a
#: crop around a small low-contrast structure the box model answers nearly every box with a stable
#: mask, fragments and overreaches alike: on 287 slices (six a volume) of the 50 tuning hippocampus
#: volumes the rank of a candidate's stability within its slice did not follow its Dice (median
#: Spearman -0.04; region agreement 0.68), and leaving it out raised the chosen Dice from 0.596 to
#: 0.609 (held out, 210 largest slices: 0.527 -> 0.535; ``benchmarks/README.md``, twenty-seventh round)
CROP_STABILITY_WEIGHT = 0.0
#: at most this many box-model calls while one box grows
GROW_STEPS = 8
#: a side the mask comes within this fraction of the box's size (at least 2 px) of is "touched"
TOUCH = 0.1
#: a touched side moves out by this factor of the box's size minus one (1.5: half the size)
GROWTH = 1.5


@dataclass(frozen=True)
class ClickCandidate:
    """One box-model mask for a click, with what :func:`choose` ranks it by.

    Attributes:
        mask: bool ``(rows, cols)``.
        score: the box model's predicted IoU.
        stability: Dice with the box model's answer to this mask's own box (None: not measured, on a
            crop, where :func:`choose` leaves it out).
        contains: the mask holds every positive click.
        region_agreement: Dice with the click's intensity region (None: no region).
        edge: :func:`.quality.boundary_evidence` of the mask.
        source: where the guess came from ("click model 0", "region", "grown 0.04"), for the log.
    """

    mask: np.ndarray
    score: float
    stability: float | None
    contains: bool
    region_agreement: float | None
    edge: float
    source: str = ""

    def merit(self, stability_weight: float = 1.0) -> float:
        """The sum :func:`choose` maximises (see the module text); a missing region or stability counts 0."""
        return self.score + stability_weight * (self.stability or 0.0) + (self.region_agreement or 0.0) + self.edge


def choose(candidates: Sequence[ClickCandidate], crop: bool = False) -> ClickCandidate:
    """The candidate kept: one that holds the clicks, then the highest :meth:`ClickCandidate.merit`;
    ties keep the earlier one. ``candidates`` must not be empty.

    ``crop``: the slice is a crop around one structure (:func:`is_crop`); there the stability term
    is left out (:data:`CROP_STABILITY_WEIGHT`)."""
    if not candidates:
        raise ValueError("choose() needs at least one candidate")
    weight = CROP_STABILITY_WEIGHT if crop else 1.0
    best = candidates[0]
    for c in candidates[1:]:
        if (c.contains, c.merit(weight)) > (best.contains, best.merit(weight)):
            best = c
    return best


def vote(
    candidates: Sequence[ClickCandidate], point: Point, share: float = CROP_VOTE, voters: float = CROP_VOTERS
) -> tuple[np.ndarray, float] | None:
    """The pixels that at least ``share`` of the voters hold, their part under the click
    (:func:`click_component`), and the mean of the voters' scores; None when there are no candidates
    or no pixel reaches ``share``.

    The voters are the better ``voters`` share (rounded up) of the candidates holding the clicks (of
    all candidates when none does), ranked as :func:`choose` ranks them on a crop. When some
    candidates hold the click and no other object's click (``contains``), only they vote, so the
    result holds the click and leaves the other objects' clicks out as they do; a neighbour that only
    the lower-ranked candidates reach gets no vote.
    """
    pool = [c for c in candidates if c.contains] or list(candidates)
    if not pool:
        return None
    ranked = sorted(pool, key=lambda c: -c.merit(CROP_STABILITY_WEIGHT))  # stable: ties keep their order
    ranked = ranked[: max(1, math.ceil(voters * len(ranked) - 1e-9))]
    mask = click_component(np.mean([c.mask for c in ranked], axis=0) >= share - 1e-9, point)
    if mask is None:
        return None
    return mask, float(np.mean([c.score for c in ranked]))


def is_crop(shape: tuple[int, int], pixel_mm: tuple[float, float] = (1.0, 1.0)) -> bool:
    """True for a slice whose shorter side spans at most :data:`CROP_FOV_MM` mm (a crop around one
    structure). ``shape``: ``(rows, cols)``; ``pixel_mm``: ``(col, row)`` size."""
    h, w = shape
    return min(h * pixel_mm[1], w * pixel_mm[0]) <= CROP_FOV_MM


def centred_box(point: Point, half_x: float, half_y: float, shape: tuple[int, int]) -> Box:
    """A box of half-sizes ``half_x`` x ``half_y`` pixels around the click, clipped to the slice."""
    h, w = shape
    return Box(max(point.x - half_x, 0.0), max(point.y - half_y, 0.0), min(point.x + half_x, w - 1.0),
               min(point.y + half_y, h - 1.0))


def start_box(point: Point, half: float, shape: tuple[int, int]) -> Box:
    """A square box of half-size ``half`` pixels around the click, clipped to the slice."""
    return centred_box(point, half, half, shape)


def crop_boxes(point: Point, shape: tuple[int, int], pixel_mm: tuple[float, float] = (1.0, 1.0)) -> list[Box]:
    """The :data:`CROP_BOXES` around the click (clipped to the slice) on a slice whose shorter side
    spans at most :data:`CROP_FOV_MM` mm; none on a larger one. ``pixel_mm``: ``(col, row)`` size.

    On a crop around a small structure the boxes grown from the click start at the 3-pixel floor
    and stop at the first side the model's mask keeps away from, often a part of the object: on
    the largest slice of 30 tuning hippocampus volumes (Decathlon) the click gave Dice 0.449
    against 0.645 for the reference box, and 0.524 with these boxes among the candidates. On whole
    cross-sections the same fractions of the slice are far larger than a small organ and were
    chosen over it (TotalSegmentator CT, 101 x 122 px of 3 mm: aorta 0.901 -> 0.833, stomach
    0.903 -> 0.817), so they are not tried there (``benchmarks/README.md``, twenty-sixth round).
    """
    if not is_crop(shape, pixel_mm):
        return []
    side = min(shape)
    return [centred_box(point, max(2.0, fx * side), max(2.0, fy * side), shape) for fx, fy in CROP_BOXES]


def click_component(mask: np.ndarray, point: Point) -> np.ndarray | None:
    """The connected part of ``mask`` under the click, else the part nearest to it; None when empty."""
    if not mask.any():
        return None
    lab, _ = ndimage.label(mask)
    h, w = mask.shape
    r, c = min(max(round(point.y), 0), h - 1), min(max(round(point.x), 0), w - 1)
    v = int(lab[r, c])
    if v == 0:
        _, (ri, ci) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
        v = int(lab[ri[r, c], ci[r, c]])
    return lab == v


def grown_box(box: Box, mask: np.ndarray) -> Box | None:
    """The next box while growing from a click, or None when ``mask`` no longer touches ``box``.

    Each side of ``box`` that the mask comes within ``TOUCH`` of the box's size of (and that is
    not at the slice's border) moves out by ``GROWTH - 1`` of that size: the object goes on past it.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    bw, bh = box.x1 - box.x0, box.y1 - box.y0
    tx, ty = max(2.0, TOUCH * bw), max(2.0, TOUCH * bh)
    gx, gy = (GROWTH - 1.0) * bw, (GROWTH - 1.0) * bh
    x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    if xs.min() - box.x0 < tx and box.x0 > 0:
        x0 = max(box.x0 - gx, 0.0)
    if box.x1 - xs.max() < tx and box.x1 < w - 1:
        x1 = min(box.x1 + gx, w - 1.0)
    if ys.min() - box.y0 < ty and box.y0 > 0:
        y0 = max(box.y0 - gy, 0.0)
    if box.y1 - ys.max() < ty and box.y1 < h - 1:
        y1 = min(box.y1 + gy, h - 1.0)
    new = Box(x0, y0, x1, y1)
    return None if new == box else new
