"""A wall carried to another case of a dataset: the seed case's box was taken for a box around a wall.

The box model answers a box around a wall with the cavity inside it on every case, not only on the
prompted one (ACDC tuning volumes 1-10, myocardium, one box for all: the nine other cases Dice
0.01-0.05), and a box derived from the warped ring cuts into the wall wherever the registration is a
few pixels off (seven of those nine: the answer touched its box, so no cavity was seen). So the
cavity is found first, as an object of its own: the ring prior's hole is a prior like any other
(:func:`.prior_mask.prior_guided_mask`: boxes of several sizes, the image choosing). The wall is then
asked for around it as on a walked slice (:func:`.walls.wall_within_depth`): inside a box the seed
wall's depth beyond the cavity, and kept within that depth. Where no wall is found so, the hole grown by
that depth is tried as the cavity's prior (a ring warped off by its own thickness leaves the cavity half
outside its hole).
Measured in benchmarks/README.md ("Thirty-third round").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .core import Engine

from ..preprocess import WindowSpec
from ..prompts import box_from_mask
from ..types import ObjectPrompt, Volume
from .predict import margin
from .prior_mask import prior_guided_mask
from .walls import wall_within_depth

__all__ = ["RING_CLOSING", "ring_hole", "wall_from_prior"]

#: The warped ring is closed by this many pixels before its hole is taken: a ring a few pixels thick,
#: shrunk to the registration's thumbnail and warped back, can break.
RING_CLOSING = 3


def ring_hole(prior: np.ndarray) -> np.ndarray:
    """The hole of a ring prior's core (``prior >= 0.5``, closed by :data:`RING_CLOSING` px); empty when
    the core encloses nothing."""
    core = np.asarray(prior) >= 0.5
    closed = ndimage.binary_closing(core, iterations=RING_CLOSING, border_value=0)
    return ndimage.binary_fill_holes(closed) & ~closed


def wall_from_prior(
    eng: Engine, volume: Volume, k: int, window: WindowSpec, prior: np.ndarray, depth: float, object_id: int = 1,
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """One case's wall on slice ``k`` from its ring ``prior`` (float ``(rows, cols)``).

    The wall found is taken whatever its agreement with the prior: across patients the ring is often
    warped a few pixels off, onto the cavity (ACDC tuning, seed patient001: on 4 of 9 cases the cavity
    overlapped the ring's core more, Dice 0.37-0.46, than the wall did, 0.12-0.36, while those walls' Dice
    with the reference was 0.68-0.88 against the cavities' 0.01-0.05).

    Args:
        depth: the seed wall's depth beyond its cavity in pixels (:func:`.walls.wall_depth`).

    Returns:
        ``(wall, score, cavity)``, or None when the prior has no hole or no wall is found around a cavity;
        the walk through the case carries both (``seed_cavities`` of :func:`.walk.segment_volume`).
    """
    hole = ring_hole(prior)
    if not hole.any():
        return None
    # the hole as it is; where no wall is found around what the box model gives there, the hole grown by
    # the seed wall's depth (a prior that tolerates a ring warped off by its own thickness)
    for cavity_prior in (hole, ndimage.binary_dilation(hole, iterations=max(int(round(depth)), 1))):
        fallback = ObjectPrompt(box=box_from_mask(cavity_prior, shape=hole.shape), object_id=object_id)
        cavity, _, _ = prior_guided_mask(eng, volume, k, cavity_prior.astype(np.float32), fallback, "cavity", window)
        found = wall_within_depth(eng, volume, k, window, cavity, depth, margin(eng, cavity))
        if found is not None:
            return found[0], found[1], cavity
    return None
