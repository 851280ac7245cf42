"""One slice: a prompt through a backend, the click path, and box refinement from the slice's own mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Engine

import logging

import numpy as np

from ..backends.base import Backend, Embedding, Prediction
from ..errors import PromptError
from ..preprocess import WindowSpec
from ..prompts import box_from_mask
from ..types import Box, ObjectPrompt, Point, SlicePrompt, Volume
from .click_choice import (
    GROW_STARTS,
    GROW_STEPS,
    ClickCandidate,
    choose,
    click_component,
    crop_boxes,
    grown_box,
    is_crop,
    start_box,
    vote,
)
from .clicks import agreement, click_region, contains_any, contains_points, leaks, remove_negative
from .quality import boundary_evidence, dice
from .walls import wall_around

__all__ = [
    "predict",
    "predict_object",
    "transferred_mask",
    "margin",
    "refine_mask",
    "has_negative",
    "best_containing",
    "click_to_box_model",
    "check_prompt_inside",
    "other_clicks",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ one slice
def predict(eng: Engine, backend: Backend, emb: Embedding, obj: ObjectPrompt, multimask: bool = False) -> Prediction:
    coords, labels = obj.point_arrays()
    box = obj.box.as_array() if obj.box is not None else None
    if len(coords) and not backend.info.points:
        if box is None:
            raise PromptError(f"{backend.info.title} takes boxes only; draw a box, or pick a model that takes clicks.")
        coords, labels = np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
    if box is not None and not backend.info.boxes:
        raise PromptError(f"{backend.info.title} takes clicks only; click on the object instead of a box.")
    return backend.predict(
        emb,
        points=coords if len(coords) else None,
        point_labels=labels if len(coords) else None,
        box=box,
        multimask=multimask,
    )


def predict_object(
    eng: Engine, volume: Volume, k: int, obj: ObjectPrompt, window: WindowSpec = None, refine: bool | int = False,
    avoid: Sequence[Point] = (), cavities: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """Segments one object on slice ``k`` from a prompt placed there.

    ``avoid``: the positive clicks of the other objects prompted on this slice; a click-only prompt
    on a box-only model does not take a mask that holds one of them (:func:`click_to_box_model`).

    A box the user drew whose answer keeps away from every side of it may have been drawn around a
    wall whose cavity the model took: :func:`.walls.wall_around` (``config.box_walls``). When the
    wall is taken, its cavity is put in ``cavities`` under the object's id (if given), so the walk
    carries both.

    A click-only prompt on a box-only model goes through ``click_backend`` first: click -> its
    mask -> a box -> the box model (the box model is trained on medical images, the click model
    resolves what was meant); that derived box is always refined once from its own mask. A box
    drawn by the user is taken as is unless ``refine`` (set for prompts transferred from another
    case, which are only approximately placed: those boxes go through the vote over box sizes,
    ``config.transfer_scales``). A click's own box is not voted on: on 35 slices (Shenzhen
    X-rays, CT liver/spleen/kidney, ACDC LV) the vote gave Dice 0.856 and the single refinement
    0.857, with 12 decoder calls instead of 3.

    Returns:
        ``(mask bool (rows, cols), score)``.
    """
    backend = eng.backend
    assert isinstance(backend, Backend)  # noqa: S101 - internal invariant, SequenceBackends never get here
    shape = volume.shape[1:]
    transferred = bool(refine)
    clicks = obj.points
    if obj.box is None and not backend.info.points:
        clicker = eng.click_backend
        if clicker is None:
            raise PromptError(
                f"{backend.info.title} takes boxes only and no click model is available here; draw a box."
            )
        if not (transferred and eng.config.transfer_scales):
            mask, score = click_to_box_model(eng, clicker, backend, volume, k, obj, window, avoid)
            return _apply_background_clicks(eng, volume, k, window, mask, clicks), score
        # a click carried over from another case: its mask's box goes through the vote over box sizes
        emb = eng.embedding(clicker, volume, k, window)
        pred = predict(eng, clicker, emb, obj, multimask=not has_negative(obj) and len(obj.points) == 1)
        mask = best_containing(pred, obj)
        box = box_from_mask(mask, margin=margin(eng, mask), shape=shape)
        if box is None:
            return mask, float(np.max(pred.scores))
        obj = replace(obj, box=box, points=())
    emb = eng.embedding(backend, volume, k, window)
    if transferred and obj.box is not None and backend.info.boxes and eng.config.transfer_scales:
        return transferred_mask(eng, backend, emb, obj, shape)
    multimask = obj.box is None and len(obj.points) == 1
    pred = predict(eng, backend, emb, obj, multimask=multimask)
    if multimask:
        use = obj.points[0].label == 1 and _cross_section(volume)
        region = click_region(eng.frames(volume, window).gray(k), obj.points) if use else None
        mask = best_containing(pred, obj, region=region, avoid=avoid)
    else:
        mask = pred.best
    score = float(np.max(pred.scores))
    if obj.box is not None and not transferred and eng.config.box_walls and mask.any():
        found = wall_around(eng, volume, k, window, obj.box, mask, clicks)
        if found is not None:  # the box was drawn around a wall and the model took its cavity
            if cavities is not None:
                cavities[obj.object_id] = mask
            mask, score = found
    if refine and obj.box is not None and backend.info.boxes and mask.any():
        times = refine if isinstance(refine, int) and not isinstance(refine, bool) else eng.config.refine
        mask, score = refine_mask(eng, backend, emb, mask, score, obj, shape, times=times)
    return _apply_background_clicks(eng, volume, k, window, mask, clicks), score


def click_to_box_model(
    eng: Engine, clicker: Backend, backend: Backend, volume: Volume, k: int, obj: ObjectPrompt, window: WindowSpec = None,
    avoid: Sequence[Point] = (),
) -> tuple[np.ndarray, float]:
    """Clicks on a box-only model: the click's guesses of the object, boxed for the box model.

    On a projection image (an X-ray) the click model's own choice (:func:`best_containing`) is
    boxed. On a cross-section (CT, MR) every guess of the object's extent is: the click model's
    candidates (all three multimask outputs for a single click) that hold the positive clicks and
    are not the whole frame, the intensity region grown from the click
    (:func:`.clicks.click_region`) and, for a single positive click, boxes grown outwards from the
    click by the box model itself (:data:`.click_choice.GROW_STARTS`) and, on a slice of at most
    100 mm a side (a crop around one structure), the box model's masks for boxes of fixed fractions
    of the slice around the click (:func:`.click_choice.crop_boxes`). Each guess's box (with the
    usual margin) goes to the box model and is refined once from its own mask (:func:`_boxed`; a
    result that leaks far beyond its guess is dropped), and the box model is asked once more on
    that mask's box to measure its stability (not on a crop, where the choice leaves it out:
    :data:`.click_choice.CROP_STABILITY_WEIGHT`); :func:`.click_choice.choose` keeps one, except for
    a single click on a crop, which gets the pixels that a share of the better-ranked click-holding
    candidates hold (:func:`.click_choice.vote`). This replaced "the click model's candidate that agrees best
    with the region, or the region's own box": ``benchmarks/README.md`` ("Sixth round", and the
    twenty-sixth to twenty-eighth rounds for crops) has the tuning and held-out figures.

    A mask that holds another object's click (``avoid``) is passed over: on 21 held-out Shenzhen
    X-rays (11-32), 4 of the 42 lungs took both lungs this way (Dice 0.37-0.66).

    Returns:
        ``(mask bool (rows, cols), score)``.
    """
    shape = volume.shape[1:]
    pos = [p for p in obj.points if p.label == 1]
    emb_c = eng.embedding(clicker, volume, k, window)
    single = not has_negative(obj) and len(obj.points) == 1
    pred = predict(eng, clicker, emb_c, obj, multimask=single)
    first = best_containing(pred, obj)
    if pos and has_negative(obj) and not contains_points(first, pos):
        # the background clicks took the object away: the positive clicks alone, the background
        # clicks are applied to the final mask (_apply_background_clicks)
        only = replace(obj, points=tuple(pos))
        pred = predict(eng, clicker, emb_c, only, multimask=len(pos) == 1)
        first = best_containing(pred, only)
    emb = eng.embedding(backend, volume, k, window)
    if not _cross_section(volume):
        # a projection image (an X-ray): the click model's own choice, boxed. The candidates below
        # lowered click Dice on 20 held-out Shenzhen X-rays from 0.861 to 0.749 (grown boxes and
        # stable half-lungs won; the intensity region and edges do not follow a lung there)
        mask, score = _boxed(eng, backend, emb, first, obj.object_id, shape)
        if avoid and (contains_any(first, avoid) or (mask is not None and contains_any(mask, avoid))):
            for j in (int(j) for j in np.argsort(-pred.scores)):  # the next candidate that keeps to its own object
                m = pred.masks[j]
                if not contains_points(m, pos) or _whole_frame(m) or contains_any(m, avoid):
                    continue
                alt, alt_score = _boxed(eng, backend, emb, m, obj.object_id, shape)
                if alt is not None and contains_points(alt, pos) and not contains_any(alt, avoid):
                    return alt, alt_score
        return (first, float(np.max(pred.scores))) if mask is None else (mask, score)
    gray = eng.frames(volume, window).gray(k)
    region = click_region(gray, obj.points) if pos else None
    ok = [j for j in range(len(pred.scores)) if contains_points(pred.masks[j], pos) and not _whole_frame(pred.masks[j])]
    guides = [(f"click model {j}", pred.masks[j]) for j in ok] or [("click model", first)]
    if region is not None:
        guides.append(("region", region))
    memo: dict[tuple[int, int, int, int], tuple[np.ndarray, float]] = {}
    if single:  # one positive click
        for frac in GROW_STARTS:
            grown = _grow_from_click(eng, backend, emb, pos[0], frac * min(shape), shape, obj.object_id)
            if grown is not None:
                guides.append((f"grown {frac}", grown))
        for j, box in enumerate(crop_boxes(pos[0], shape, volume.spacing[:2])):
            found = predict(eng, backend, emb, ObjectPrompt(box=box, object_id=obj.object_id)).best
            part = click_component(found, pos[0])
            if part is not None:
                guides.append((f"crop box {j}", part))
    crop = is_crop(shape, volume.spacing[:2])
    candidates: list[ClickCandidate] = []
    seen: list[np.ndarray] = []
    for source, guide in guides:
        mask, score = _boxed(eng, backend, emb, guide, obj.object_id, shape, memo)
        if mask is None or any(np.array_equal(mask, m) for m in seen):
            continue
        seen.append(mask)
        stability = None
        if not crop:  # on a crop the ranking leaves stability out: its model call is saved
            again, _ = _boxed(eng, backend, emb, mask, obj.object_id, shape, memo)
            stability = dice(mask, again) if again is not None else 0.0
        candidates.append(ClickCandidate(
            mask=mask, score=score, stability=stability,
            contains=contains_points(mask, pos) and not contains_any(mask, avoid),
            region_agreement=dice(mask, region) if region is not None else None,
            edge=boundary_evidence(gray, mask), source=source,
        ))
    if not candidates:
        return first, float(np.max(pred.scores))
    if crop and single:
        voted = vote(candidates, pos[0])
        if voted is not None:
            log.debug("slice %d: click -> the vote of %d candidates", k, len(candidates))
            return voted
    best = choose(candidates, crop=crop)
    log.debug("slice %d: click -> %s (of %d candidates)", k, best.source, len(candidates))
    return best.mask, best.score


def _grow_from_click(
    eng: Engine, backend: Backend, emb: Embedding, point, half: float, shape: tuple[int, int], object_id: int
) -> np.ndarray | None:
    """The box model's mask from a square box around the click, grown while the mask touches its sides
    (:func:`.click_choice.grown_box`, at most ``GROW_STEPS`` calls); the part under the click."""
    box: Box | None = start_box(point, max(3.0, half), shape)
    mask = None
    for _ in range(GROW_STEPS):
        if box is None:
            break
        part = click_component(predict(eng, backend, emb, ObjectPrompt(box=box, object_id=object_id)).best, point)
        if part is None:
            break
        mask = part
        box = grown_box(box, mask)
    return mask


def _box_key(box: Box) -> tuple[int, int, int, int]:
    return (round(box.x0), round(box.y0), round(box.x1), round(box.y1))


def _cross_section(volume: Volume) -> bool:
    """True for cross-sectional images (CT, MR, or any stack of slices), where a region grown on
    intensities follows one organ; not for a single projection image (an X-ray), where ribs and
    overlapping organs cut it short."""
    return volume.modality in ("CT", "MR") or volume.n_slices > 1


def _boxed(
    eng: Engine, backend: Backend, emb: Embedding, guide: np.ndarray, object_id: int, shape: tuple[int, int],
    memo: dict | None = None,
) -> tuple[np.ndarray | None, float]:
    """The box model on ``guide``'s box, refined once; None when it is empty or leaks beyond ``guide``.

    ``memo`` (box rounded to whole pixels -> refined result) saves the model calls when several guides
    have the same box.
    """
    box = box_from_mask(guide, margin=margin(eng, guide), shape=shape)
    if box is None:
        return None, 0.0
    key = _box_key(box)
    if memo is not None and key in memo:
        mask, score = memo[key]
    else:
        boxed = ObjectPrompt(box=box, object_id=object_id)
        pred_b = predict(eng, backend, emb, boxed)
        mask, score = pred_b.best, float(np.max(pred_b.scores))
        if mask.any():
            mask, score = refine_mask(eng, backend, emb, mask, score, boxed, shape)
        if memo is not None:
            memo[key] = (mask, score)
    if not mask.any() or leaks(mask, guide):
        return None, 0.0
    return mask, score


def _apply_background_clicks(
    eng: Engine, volume: Volume, k: int, window, mask: np.ndarray, clicks: tuple
) -> np.ndarray:
    """A background click that lies on the final mask removes the part around it (:func:`.clicks.remove_negative`)."""
    if not any(p.label == 0 for p in clicks) or not mask.any():
        return mask
    return remove_negative(mask, eng.frames(volume, window).gray(k), clicks)


def transferred_mask(
    eng: Engine, backend: Backend, emb: Embedding, obj: ObjectPrompt, shape: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """Mask for a box carried over from another case: a vote over box sizes, then eng-refinement."""
    cfg = eng.config
    b = obj.box.as_array()  # type: ignore[union-attr]
    c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2
    h, w = shape
    votes = np.zeros(shape, np.float32)
    scores = []
    for s in cfg.transfer_scales:
        lo, hi = c - half * s, c + half * s
        box = Box(max(lo[0], 0), max(lo[1], 0), min(hi[0], w - 1), min(hi[1], h - 1))
        pred = predict(eng, backend, emb, ObjectPrompt(points=obj.points, box=box, object_id=obj.object_id))
        votes += pred.best
        scores.append(float(np.max(pred.scores)))
    mask = votes >= 0.5 * len(cfg.transfer_scales)
    score = float(np.mean(scores))
    for _ in range(cfg.transfer_refine):
        if not mask.any():
            break
        ys, xs = np.nonzero(mask)
        size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        box = box_from_mask(mask, margin=cfg.transfer_margin_frac * size, shape=shape)
        pred = predict(eng, backend, emb, ObjectPrompt(points=obj.points, box=box, object_id=obj.object_id))
        if not pred.best.any():
            break
        mask, score = pred.best, float(np.max(pred.scores))
    return mask, score


def margin(eng: Engine, mask: np.ndarray) -> float:
    """The box margin around ``mask`` (a whole slice's mask): ``margin_frac`` of its size, at least the floor
    (:func:`margin_floor`)."""
    floor = margin_floor(eng, mask.shape)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return floor
    size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return max(floor, eng.config.margin_frac * size)


def margin_floor(eng: Engine, shape: tuple[int, ...]) -> float:
    """``config.margin_px`` pixels, capped at ``config.margin_model_px`` pixels of the box model's input."""
    cfg = eng.config
    size = eng.backend.info.input_size
    if cfg.margin_model_px is None or not size:
        return cfg.margin_px
    return min(cfg.margin_px, cfg.margin_model_px * max(shape[-2:]) / size)


def refine_mask(
    eng: Engine,
    backend: Backend,
    emb: Embedding,
    mask: np.ndarray,
    score: float,
    obj: ObjectPrompt,
    shape: tuple[int, int],
    prev_area: int | None = None,
    times: int | None = None,
) -> tuple[np.ndarray, float]:
    """Re-derives the box from the slice's own mask and predicts again (``config.refine`` times)."""
    for _ in range(eng.config.refine if times is None else times):
        box = box_from_mask(mask, margin=margin(eng, mask), shape=shape)
        if box is None:
            break
        pts = obj.points if backend.info.points else ()
        pred = predict(eng, backend, emb, ObjectPrompt(points=pts, box=box, object_id=obj.object_id))
        new = pred.best
        area = int(new.sum())
        ref_area = prev_area if prev_area else int(mask.sum())
        if area == 0 or (ref_area and area > eng.config.max_growth * ref_area):
            break  # a leak or a collapse: keep what we had
        mask, score = new, float(np.max(pred.scores))
    return mask, score


def has_negative(obj: ObjectPrompt) -> bool:
    return any(p.label == 0 for p in obj.points)


def _whole_frame(m: np.ndarray, max_fraction: float = 0.5) -> bool:
    if m.mean() > max_fraction:
        return True
    return bool(m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any())


def best_containing(
    pred: Prediction, obj: ObjectPrompt, max_fraction: float = 0.5, region: np.ndarray | None = None,
    avoid: Sequence[Point] = (),
) -> np.ndarray:
    """Best candidate that contains the positive clicks (SAM's multimask ambiguity resolved).

    Candidates that cover more than ``max_fraction`` of the frame or reach all four borders are
    passed over while another candidate contains the clicks: for one click on a lung, MobileSAM's
    top-scored candidate was the whole radiograph (score 1.0 on ~92% of the frame), which says
    nothing about the object the user pointed at. With ``region`` (bool ``(rows, cols)``, the
    intensity region grown from the click, :func:`.clicks.click_region`), the candidates that
    contain the clicks are ranked by their Dice with it first, then by score. Candidates that hold one
    of the ``avoid`` points (other objects' clicks) are passed over while another one qualifies.
    """
    pos = [p for p in obj.points if p.label == 1]
    order = [int(j) for j in np.argsort(-pred.scores)]
    if avoid:
        free = [j for j in order if not contains_any(pred.masks[j], avoid)]
        order = free + [j for j in order if j not in free]
    if region is not None:
        ok = [j for j in order if contains_points(pred.masks[j], pos) and not _whole_frame(pred.masks[j], max_fraction)]
        if avoid:
            ok = [j for j in ok if j in free] or ok
        if ok:
            return pred.masks[max(ok, key=lambda j: (round(agreement(pred.masks[j], region), 3), pred.scores[j]))]

    def contains(m: np.ndarray) -> bool:
        return contains_points(m, pos)

    def whole_frame(m: np.ndarray) -> bool:
        return _whole_frame(m, max_fraction)

    for wanted in (lambda m: contains(m) and not whole_frame(m), contains, lambda m: not whole_frame(m)):
        for j in order:
            if wanted(pred.masks[j]):
                return pred.masks[j]
    return pred.masks[order[0]]


def check_prompt_inside(obj: ObjectPrompt, shape: tuple[int, int], name: str) -> None:
    h, w = shape
    for p in obj.points:
        if not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
            raise PromptError(f"{name}: click ({p.x:.0f}, {p.y:.0f}) is outside the {w}x{h} image; click on the image.")
    if obj.box is not None:
        b = obj.box
        if b.x1 < 0 or b.y1 < 0 or b.x0 > w - 1 or b.y0 > h - 1:
            raise PromptError(
                f"{name}: box ({b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f}) lies outside the {w}x{h} image."
            )


def other_clicks(prompt: SlicePrompt, obj: ObjectPrompt) -> tuple[Point, ...]:
    """The positive clicks of the prompt's other objects: ``obj``'s mask should not hold them."""
    return tuple(p for o in prompt.objects if o is not obj for p in o.points if p.label == 1)
