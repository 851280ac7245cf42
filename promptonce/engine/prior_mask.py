"""One object's mask on a case from its registration prior: candidates, the choice among them, and sides placed on image edges.

Used by :class:`.transfer.DatasetTransfer` for every object of every case at dataset scope:
:func:`prior_guided_mask` asks the model for candidates around the prior (:func:`prior_candidates`),
keeps one (:func:`choose_candidate`), lets a side cut short by its box continue to the object's edge
(:func:`extend_soft_sides`) and, on single images, moves the sides a seed misplaces most to the
image's edges (:func:`search_sides`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import PropagationConfig
    from .core import Engine

from ..backends.base import Backend
from ..preprocess import WindowSpec
from ..prompts import box_from_mask, interior_point
from ..types import Box, ObjectPrompt, Volume
from .predict import predict
from .quality import (
    LEAK_FRACTION,
    SIDES,
    ObjectCheck,
    boundary_evidence,
    check_against_prior,
    dice,
    extent,
    outline_evidence,
    side_band,
    side_contrast,
    with_stability,
)

__all__ = [
    "SOFT_SIDE_STEPS",
    "choose_candidate",
    "extend_soft_sides",
    "prior_candidates",
    "prior_guided_mask",
    "search_sides",
]

log = logging.getLogger(__name__)

#: How many extension steps are tried past a soft side of a mask (see :func:`extend_soft_sides`).
SOFT_SIDE_STEPS = 3


def prior_guided_mask(
    eng: Engine,
    volume: Volume,
    k: int,
    prior: np.ndarray | None,
    fallback: ObjectPrompt,
    name: str,
    window: WindowSpec = None,
    reach: tuple[float, float, float, float] | None = None,
    evidence_scale: float = 1.0,
    config: PropagationConfig | None = None,
) -> tuple[np.ndarray, float, ObjectCheck]:
    """One object's mask on slice ``k`` from its registration prior.

    Boxes are derived from the prior's core (``prior >= 0.5``), each side first pushed out by ``reach``
    (``(left, top, right, bottom)`` in fractions of the core's size: how far the user's box reached past the
    seed's own mask, :attr:`.transfer.Exemplar.reach`; where the model cut the seed's mask short, a box from the
    mask alone cut every case short the same way), then with the margins of ``config.prior_margins`` (0, 5 and
    10% of the core's size), plus its interior point for point-capable models.
    Each candidate is refined once from its own mask; :func:`choose_candidate` keeps one (the image decides, the
    prior only vetoes); a side cut by the box is extended (:func:`extend_soft_sides`) and, on single images
    (``volume.n_slices == 1``: X-ray sets), the sides in ``config.side_search`` are placed on the image's edges
    (:func:`search_sides`). The kept mask's confidence still comes from its agreement with the prior. Without a
    usable prior, ``fallback`` (the prompt mapped by relative position) goes through
    :func:`.predict.predict_object`. ``evidence_scale``: the weak-edge threshold's scale for this object
    (:func:`.quality.with_stability`); it changes the confidence and flags, never the mask. ``config``: the
    knobs to use instead of ``eng.config`` (the exemplar pass's,
    :meth:`.config.PropagationConfig.for_exemplar_pass`).

    Returns:
        ``(mask bool (rows, cols), model score, ObjectCheck)``.
    """
    backend = eng.backend
    core = prior >= 0.5 if prior is not None else None
    if core is None or not core.any() or not isinstance(backend, Backend) or not backend.info.boxes:
        mask, score = eng.predict_object(volume, k, fallback, window, refine=True)
        return mask, score, check_against_prior(mask, prior, score, name)
    emb = eng.embedding(backend, volume, k, window)
    point = interior_point(core) if backend.info.points else None
    cfg = config or eng.config
    gray = eng.frames(volume, window).gray(k)
    candidates = [(mask, score, check_against_prior(mask, prior, score, name))
                  for mask, score in prior_candidates(eng, backend, emb, core, point, fallback.object_id, reach, cfg)]
    if not candidates:
        mask, score = eng.predict_object(volume, k, fallback, window, refine=True)
        return mask, score, check_against_prior(mask, prior, score, name)
    mask, score, check = choose_candidate(gray, candidates)
    if cfg.soft_side_contrast > 0:
        longer, longer_score = extend_soft_sides(eng, backend, emb, gray, mask, point, fallback.object_id, cfg)
        if longer is not mask:
            log.debug("%s: extended past a soft side of its box (%d -> %d pixels)", name, int(mask.sum()), int(longer.sum()))
            mask, score = longer, longer_score
            check = check_against_prior(mask, prior, score, name)
    if cfg.side_search and cfg.side_search_offsets and volume.n_slices == 1:
        placed, placed_score = search_sides(eng, backend, emb, gray, mask, point, fallback.object_id, cfg.side_search,
                                            cfg)
        if placed is not mask:
            mask, score = placed, placed_score
            check = check_against_prior(mask, prior, score, name)
    check = with_stability(check, [dice(mask, c) for c, _, _ in candidates if c is not mask], name,
                           evidence=outline_evidence(gray, mask), evidence_scale=evidence_scale)
    return mask, score, check


def prior_candidates(
    eng: Engine,
    backend: Backend,
    emb,
    core: np.ndarray,
    point,
    object_id: int,
    reach: tuple[float, float, float, float] | None = None,
    config: PropagationConfig | None = None,
) -> list[tuple[np.ndarray, float]]:
    """The model's candidates for an object from its prior's core (bool ``(rows, cols)``, not empty).

    One per margin of ``config.prior_margins`` (fractions of the core's size) around the core's box,
    pushed out first by ``reach`` (see :func:`prior_guided_mask`); a negative margin is a box inside
    the core's, for priors that overreach. Each candidate is refined once from its own mask (box with
    ``config.transfer_margin_frac``), unless that grows it past ``config.max_growth``. ``config``:
    instead of ``eng.config``.

    Returns:
        ``[(mask bool (rows, cols), model score)]`` in margin order.
    """
    cfg = config or eng.config
    shape = core.shape
    size = extent(core)
    base = box_from_mask(core, shape=shape)
    if base is None:
        return []
    if reach is not None:
        base = _grown(base, *(r * size for r in reach), shape=shape)
    out = []
    for frac in cfg.prior_margins:
        d = frac * size
        if frac < 0 and (base.x1 - base.x0 <= -4 * d or base.y1 - base.y0 <= -4 * d):
            continue  # too small to shrink
        box = _grown(base, d, d, d, d, shape=shape)
        obj = ObjectPrompt(points=(point,) if point is not None else (), box=box, object_id=object_id)
        pred = predict(eng, backend, emb, obj)
        mask, score = pred.best, float(np.max(pred.scores))
        if mask.any():
            m = float(max(cfg.transfer_margin_frac * extent(mask), cfg.margin_px))
            rbox = box_from_mask(mask, margin=m, shape=shape)
            if rbox is not None:
                again = predict(eng, backend, emb, replace(obj, box=rbox))
                if again.best.any() and again.best.sum() <= cfg.max_growth * mask.sum():
                    mask, score = again.best, float(np.max(again.scores))
        out.append((mask, score))
    return out


def _grown(box: Box, left: float, top: float, right: float, bottom: float, shape: tuple[int, int]) -> Box:
    """``box`` with each side moved out by its amount (in when negative), clipped to the image."""
    h, w = shape
    return Box(max(box.x0 - left, 0.0), max(box.y0 - top, 0.0), min(box.x1 + right, w - 1.0), min(box.y1 + bottom, h - 1.0))


def choose_candidate(
    gray: np.ndarray, candidates: Sequence[tuple[np.ndarray, float, ObjectCheck]]
) -> tuple[np.ndarray, float, ObjectCheck]:
    """The candidate a transferred object keeps: the image decides, the prior only vetoes.

    Among the candidates whose check against the prior raised no flag and found no leak beyond it
    (more than ``LEAK_FRACTION`` of the mask outside it, flagged or not; no missed part, agreement
    with it at least ``MIN_PRIOR_AGREEMENT``, a model score above ``MIN_SCORE``), or among all when
    every one was flagged, the highest model score plus
    :func:`.quality.boundary_evidence` (how sharply the mask's boundary follows image edges) wins;
    ties keep the earlier candidate. A prior warped from one seed carries that seed's shape, and
    choosing by agreement with it pulled every case towards the seed (``benchmarks/candidate_choice.py``).

    Args:
        gray: the slice's float image.
        candidates: ``(mask, model score, check_against_prior result)`` per candidate (at least one).
    """
    return max(candidates, key=lambda c: (not (c[2].flags or c[2].leak > LEAK_FRACTION),
                                          c[1] + boundary_evidence(gray, c[0])))


def search_sides(eng: Engine, backend: Backend, emb, gray: np.ndarray, mask: np.ndarray, point,
                 object_id: int, sides: Sequence[str],
                 config: PropagationConfig | None = None) -> tuple[np.ndarray, float]:
    """Places the given sides of a transferred mask where the image has its edge.

    A prior warped from another case puts each side of the box where that case's object ended, and
    the model mostly ends the mask where the box ends; a side whose position varies from case to case
    more than registration follows stays where the seed had it. On chest X-rays that is the lung
    base: the diaphragm's height varies with inspiration, and on the tuning images the masks' lower
    ends were off by 4.9-13.5% of the lung's size on average (other sides 1-2%; one seed put the
    bases 12.8% too high on average; ``benchmarks/side_errors.py`` measures it). For each side in
    ``sides`` (one after the other), that side of the mask's box is moved to each of
    ``config.side_search_offsets`` (fractions of the mask's size, out when positive; the other sides
    keep a 2% margin) and the model asked again; of these masks and the current one, the one whose
    boundary follows image edges best (:func:`.quality.boundary_evidence`) is kept. Searching the
    other sides the same way lowered Dice (the apex and the heart border have weak edges that the
    rule mistakes). ``config``: instead of ``eng.config``.

    Returns:
        ``(mask, score)``: ``mask`` itself (same object) when no other placement was better.
    """
    cfg = config or eng.config
    shape = mask.shape
    out, out_score = mask, 0.0
    for side in sides:
        best = boundary_evidence(gray, out)
        size = extent(out)
        tight = box_from_mask(out, margin=0, shape=shape)
        if tight is None:
            break
        pad = 0.02 * size
        dy, dx = SIDES[side]
        for frac in cfg.side_search_offsets:
            d = frac * size
            moved = {"left": -dx * d if dx < 0 else pad, "right": dx * d if dx > 0 else pad,
                     "top": -dy * d if dy < 0 else pad, "bottom": dy * d if dy > 0 else pad}
            box = _grown(tight, moved["left"], moved["top"], moved["right"], moved["bottom"], shape=shape)
            if box.x1 - box.x0 < 2 or box.y1 - box.y0 < 2:
                continue
            obj = ObjectPrompt(points=(point,) if point is not None else (), box=box, object_id=object_id)
            pred = predict(eng, backend, emb, obj)
            if not pred.best.any():
                continue
            ev = boundary_evidence(gray, pred.best)
            if ev > best:
                best, out, out_score = ev, pred.best, float(np.max(pred.scores))
    return out, out_score


def extend_soft_sides(eng: Engine, backend: Backend, emb, gray: np.ndarray, mask: np.ndarray, point,
                      object_id: int, config: PropagationConfig | None = None) -> tuple[np.ndarray, float]:
    """Lets a mask cut short by its box continue past it, up to the object's own edge.

    A side is soft when the image does not change across it (:func:`.quality.side_contrast` below
    ``config.soft_side_contrast``): the same tissue continues beyond, so the box, not an edge of
    the object, ended the mask. There the box is extended in steps of ``soft_side_extend`` of the
    mask's size (at most ``SOFT_SIDE_STEPS``) and the model asked again each time. A new mask is
    kept when it still holds 90% of the old one, grew by at least 3%, ends inside the extension (a
    quarter of a step short of the new box edge: it found an edge; while it runs to the box edge the
    next step is tried) and its boundary on that side is sharper by ``soft_side_gain``. On X-rays
    this lets a lung reach a diaphragm that a seed with shallow inspiration put too high; without
    the "ends inside" rule, extensions ran up the trachea and down into the gastric bubble.
    ``config``: instead of ``eng.config``.

    Returns:
        ``(mask, score)``: ``mask`` itself (same object) when nothing was extended.
    """
    cfg = config or eng.config
    shape = mask.shape
    h, w = shape
    size = extent(mask)
    band = side_band(size)
    contrast = side_contrast(gray, mask, band)
    soft = sorted((c, side) for side, c in contrast.items() if c is not None and c < cfg.soft_side_contrast)
    out, out_score = mask, 0.0
    step = cfg.soft_side_extend * size
    for _, side in soft:
        base = box_from_mask(out, margin=max(cfg.transfer_margin_frac * size, cfg.margin_px), shape=shape)
        if base is None:
            break
        dy, dx = SIDES[side]
        for n in range(1, SOFT_SIDE_STEPS + 1):
            d = n * step
            box = Box(max(0.0, base.x0 + min(dx, 0) * d), max(0.0, base.y0 + min(dy, 0) * d),
                      min(float(w), base.x1 + max(dx, 0) * d), min(float(h), base.y1 + max(dy, 0) * d))
            obj = ObjectPrompt(points=(point,) if point is not None else (), box=box, object_id=object_id)
            pred = predict(eng, backend, emb, obj)
            new = pred.best
            if not new.any() or np.count_nonzero(new & out) < 0.9 * np.count_nonzero(out):
                break  # the model answered with something else: no extension on this side
            ys, xs = np.nonzero(new)
            reach = {"bottom": ys.max() + 1 - box.y1, "top": box.y0 - ys.min(),
                     "right": xs.max() + 1 - box.x1, "left": box.x0 - xs.min()}[side]
            if reach > -0.25 * step:  # still running into the box edge: the object goes on
                continue
            after = side_contrast(gray, new, band).get(side)
            if np.count_nonzero(new) >= 1.03 * np.count_nonzero(out) and after is not None \
                    and after >= (contrast[side] or 0.0) + cfg.soft_side_gain:
                out, out_score = new, float(np.max(pred.scores))
            break
    return out, out_score
