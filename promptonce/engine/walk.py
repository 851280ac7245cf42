"""Inside a volume: the prompted slice, then slice by slice both ways, with the rules that end an object."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import PropagationConfig
    from .core import Engine

import numpy as np

from ..backends.base import Backend, Embedding
from ..errors import PromptError, check_cancel
from ..preprocess import WindowSpec
from ..prompts import box_from_mask, interior_point
from ..registration import register, warp
from ..types import Box, ObjectPrompt, Point, SlicePrompt, SliceResult, Volume
from .predict import check_prompt_inside, margin, other_clicks, predict, predict_object
from .walls import ready_cavity, wall_depth, wall_flag, wall_within_depth
from .quality import (
    INSIDE_BOX_CONFIDENCE,
    MIN_NEIGHBOUR_AGREEMENT,
    UNCERTAIN_END_CONFIDENCE,
    SequenceMonitor,
    carried_doubt_flag,
    inside_box_flag,
    lost_flag,
    neighbour_agreement,
    slice_confidence,
    uncertain_end_flag,
    unsure_seed_flag,
)

__all__ = ["ObjectState", "ends_uncertainly", "segment_volume", "step", "vanished", "walk", "walk_both_ways", "paint"]

log = logging.getLogger(__name__)

#: :func:`vanished`'s reasons where the model still answered with a region like the object's, only
#: darker/brighter or elsewhere (the others: no mask, a tiny or unsure one, a leak, regrowth after a tip).
INTENSITY_CHANGED, NO_OVERLAP = "intensity changed", "no overlap with the neighbouring slice"


@dataclass
class ObjectState:
    """What the engine remembers of one object between slices."""

    object_id: int
    mask: np.ndarray | None
    seed_area: int
    score: float = 1.0
    alive: bool = True
    name: str = ""
    last_box: Box | None = None
    peak: int = 0
    trough: int | None = None
    values: tuple[float, float] | None = None  # (median, robust scale) of the seed mask's voxels
    last_median: float | None = None  # median under the previous slice's mask (kept for max_intensity_step_z)
    lost_at: int | None = None  # slice where the object was lost mid-volume (flagged), if it was
    seed_doubted: bool = False  # the prompted slice's mask of this object was flagged
    seed_cap: float = 1.0  # the most confidence a slice carried from a flagged seed may have
    doubt_source: int | None = None  # the flagged seed's slice, named in the carried flag of a carried case
    cavity: np.ndarray | None = None  # a wall's cavity on the slice before (:mod:`.walls`), else None
    wall_depth: float = 0.0  # how deep the prompted slice's wall reaches from its cavity (pixels)

    def copy(self) -> ObjectState:
        return replace(self)

    def update_area(self, area: int) -> None:
        """Tracks the area profile along the propagation direction (peak, then the lowest since)."""
        if area >= self.peak:
            self.peak, self.trough = area, None
        elif self.trough is None or area < self.trough:
            self.trough = area


def propagated_prompt(eng: Engine, prev: np.ndarray, obj_id: int, backend: Backend) -> ObjectPrompt | None:
    box = box_from_mask(prev, margin=margin(eng, prev), shape=prev.shape)
    if box is None:
        return None
    points: tuple[Point, ...] = ()
    if backend.info.points and (eng.config.use_points or not backend.info.boxes):
        p = interior_point(prev)
        if p is not None:
            points = (p,)
    return ObjectPrompt(points=points, box=box if backend.info.boxes else None, object_id=obj_id)


def step(
    eng: Engine, volume: Volume, k: int, state: ObjectState, window: WindowSpec = None, from_slice: int | None = None
) -> tuple[np.ndarray | None, float, list[str]]:
    """Segments ``state``'s object on slice ``k`` from its mask on the neighbouring slice.

    The box is the previous mask's box plus a small margin; where the new mask reaches a side of
    that box, the side is pushed out and the slice predicted again (``config.refine`` times). With
    ``config.walk_registration`` (and ``from_slice``, the neighbour's index), the neighbour's mask is
    first carried onto slice ``k`` by 2D registration (:mod:`promptonce.registration`), so the box
    follows anatomy that moves between slices.
    """
    backend = eng.backend
    assert isinstance(backend, Backend)  # noqa: S101 - internal invariant
    cfg = eng.config
    prev = state.mask
    if prev is None or not prev.any():
        return None, 0.0, []
    carried = prev
    if cfg.walk_registration and from_slice is not None:
        fm = eng.frames(volume, window)
        reg = register(fm.gray(k), fm.gray(from_slice), size=cfg.walk_registration_size)
        if reg.trusted:
            warped = warp(prev.astype(np.float32), reg) >= 0.5
            if warped.any():
                carried = warped
    prompt = propagated_prompt(eng, carried, state.object_id, backend)
    if prompt is None:
        return None, 0.0, []
    emb = eng.embedding(backend, volume, k, window)
    if state.cavity is not None:
        found = _wall_step(eng, volume, k, window, state, prompt, emb)
        if found is not None:
            return found
    pred = predict(eng, backend, emb, prompt)
    mask, score = pred.best, float(np.max(pred.scores))
    state.last_box = prompt.box
    prev_area = int(prev.sum())
    shape = volume.shape[1:]
    for _ in range(cfg.refine if backend.info.boxes else 0):
        if not mask.any() or prompt.box is None:
            break
        grown = _push_touching_sides(mask, prompt.box, margin(eng, mask), shape)
        if grown is None:
            break
        trial = predict(eng, backend, emb, replace(prompt, box=grown))
        new = trial.best
        if not new.any() or new.sum() > cfg.jump_ratio * max(prev_area, 1):
            break
        mask, score, prompt = new, float(np.max(trial.scores)), replace(prompt, box=grown)
        state.last_box = grown
    return mask, score, _step_flags(cfg, state, prev_area, mask, score)


def _step_flags(
    cfg: PropagationConfig, state: ObjectState, prev_area: int, mask: np.ndarray, score: float
) -> list[str]:
    """A walked slice's own flags: an area jump from the slice before, a low model score."""
    flags: list[str] = []
    area = int(mask.sum())
    if prev_area and area and (area > cfg.jump_ratio * prev_area or area * cfg.jump_ratio < prev_area):
        flags.append(f"{state.name or f'object {state.object_id}'}: area jump x{area / prev_area:.2f}")
    if area and score < cfg.min_score:
        flags.append(f"{state.name or f'object {state.object_id}'}: low confidence {score:.2f}")
    return flags


def _wall_step(
    eng: Engine, volume: Volume, k: int, window: WindowSpec, state: ObjectState, prompt: ObjectPrompt,
    emb: Embedding,
) -> tuple[np.ndarray, float, list[str]] | None:
    """A wall's next slice (:mod:`.walls`): its cavity is walked as an object of its own (the box
    model, from the cavity on the slice before), then the wall around it is asked for inside the
    wall's walked box. None when either is not found there: the wall has closed (the apex of a
    ventricle) or ended, the slice is answered as any other and the walk goes on without a cavity.
    A wall thinner here than on the prompted slice is taken when it borders its cavity all round
    (:data:`.walls.WALL_FOLLOWED_SURROUND`).
    """
    backend = eng.backend
    assert isinstance(backend, Backend)  # noqa: S101 - internal invariant
    cavity_prompt = propagated_prompt(eng, state.cavity, state.object_id, backend)
    found = None
    if cavity_prompt is not None:
        cavity = predict(eng, backend, emb, cavity_prompt).best
        # the wall's box: around this slice's cavity by the wall's thickness and the walk's margin
        # (from the wall on the slice before, a spill there would widen every box after it)
        found = wall_within_depth(eng, volume, k, window, cavity, state.wall_depth, margin(eng, cavity),
                                  followed=True)
    if found is None:
        state.cavity = None
        return None
    mask, score, state.last_box = found
    state.cavity = cavity
    prev_area = int(state.mask.sum()) if state.mask is not None else 0
    return mask, score, _step_flags(eng.config, state, prev_area, mask, score)


def vanished(
    eng: Engine, mask: np.ndarray | None, score: float, state: ObjectState, values: np.ndarray | None = None
) -> str | None:
    """Why the object is taken to have ended on this slice, or None when it goes on.

    A box prompt always gets *some* mask, so an object that ends shows up as a mask that is
    tiny, unsure, unrelated to the previous slice's mask (the model segmented a neighbour or
    background inside the box) or suddenly much larger (a leak).
    """
    cfg = eng.config
    if mask is None:
        return "no mask"
    area = int(mask.sum())
    if area < max(cfg.min_area_px, cfg.min_area_frac * state.seed_area):
        return "too small"
    if score < cfg.min_score * 0.5:
        return f"confidence {score:.2f}"
    prev = state.mask
    if prev is not None and prev.any():
        prev_area = int(prev.sum())
        if area > cfg.max_growth * prev_area:
            return f"area x{area / prev_area:.1f}"
        if area > cfg.jump_ratio * prev_area and _fills_box(mask, state.last_box):
            return "the mask fills its prompt box (background, not the object)"
    if state.trough is not None and state.trough < cfg.regrow_trough * state.peak:
        if area > cfg.regrow_ratio * state.trough and area - state.trough > cfg.min_area_px:
            return f"area grows again after a tip ({state.trough} -> {area} px)"
    if state.values is not None and values is not None and values.size:
        med0, scale0 = state.values
        med = float(np.median(values))
        z = abs(med - med0) / scale0
        # a gradual drift (each slice close to the one before) is the object changing along the axis
        last = state.last_median
        drift = (cfg.max_intensity_step_z is not None and last is not None
                 and abs(med - last) / scale0 <= cfg.max_intensity_step_z)
        inter = int(np.count_nonzero(mask & prev))
        overlap = 2.0 * inter / (area + prev_area)
        # An organ whose contents drift along the axis (lungs: denser towards the bases) keeps its
        # shape; a box that slid onto a neighbour does not. Intensity alone never ends a large,
        # shape-consistent object (on the CIP chest CT it cut a lung at 84-88% of its peak area).
        steady = area >= cfg.steady_area_frac * max(state.peak, 1) and overlap >= cfg.steady_overlap
        if z > cfg.max_intensity_z and not steady and not drift:
            return f"{INTENSITY_CHANGED} (z {z:.1f})"
        if overlap < cfg.min_consistency:
            return NO_OVERLAP
    return None


def ends_uncertainly(why: str) -> bool:
    """Whether :func:`vanished`'s reason leaves the object possibly going on (:func:`walk` flags it).

    True when the model's answer was still a region of about the object's size, only of another
    intensity or away from the previous mask: the walk cannot tell a changed object from a
    neighbour. False for the ends where the object is gone from the model's view: no mask, a tiny
    or unsure one, a mask that jumped in size or filled its box (the model took the background),
    regrowth after a tip (a new structure).
    """
    return why.startswith((INTENSITY_CHANGED, NO_OVERLAP))


# ------------------------------------------------------------------ a volume
def segment_volume(
    eng: Engine,
    volume: Volume,
    prompt: SlicePrompt,
    *,
    volume_index: int = 0,
    window: WindowSpec = None,
    scope_slices: tuple[int, int] | None = None,
    cancel: threading.Event | None = None,
    seed_masks: dict[int, np.ndarray | tuple[np.ndarray, float]] | None = None,
    refine_seed: bool = False,
    seed_cavities: dict[int, np.ndarray] | None = None,
    seed_doubts: Mapping[int, float] | None = None,
) -> Iterator[SliceResult]:
    """Propagates one prompt through one volume, yielding the seed slice first, then forward, then backward.

    Args:
        volume: the volume.
        prompt: the objects prompted on ``prompt.slice_index``.
        volume_index: index reported in results.
        window: display window used for model frames.
        scope_slices: inclusive ``(lo, hi)`` range to cover (default: the whole volume); used to
            re-propagate only the range a correction affects.
        cancel: set it to stop; raises :class:`CancelledError` between slices.
        seed_masks: optional ready masks for the seed slice per object id (skips its prediction):
            a bool mask, or ``(mask, model score)``.
        refine_seed: refine the seed prompt from its own mask (for prompts transferred from another case).
        seed_cavities: for ready seed masks that are walls, their cavities per object id, when known (a wall
            carried to another case, :mod:`.wall_prior`; not flagged as a guess, its seed case was);
            without one, a ready mask is asked whether it is a wall (:func:`.walls.ready_cavity`).
        seed_doubts: for ready seed masks flagged at their source (a carried case where no wall was found,
            :func:`.quality.wall_missing_flag`), the most confidence per object id that the seed and each
            slice walked from it may have; those slices get :func:`.quality.carried_doubt_flag`.

    Yields:
        One :class:`SliceResult` per covered slice (slices where every object ended get empty labels).
    """
    k0 = prompt.slice_index
    n = volume.n_slices
    if not 0 <= k0 < n:
        raise PromptError(f"{volume.name}: slice {k0} does not exist; it has {n} slices (0..{n - 1}).")
    lo, hi = scope_slices if scope_slices is not None else (0, n - 1)
    shape = volume.shape[1:]
    check_cancel(cancel)
    if eng.is_sequence:
        yield from segment_volume_sequence(eng, volume, prompt, volume_index, window, lo, hi, cancel)
        return
    states: list[ObjectState] = []
    scores: dict[int, float] = {}
    flags: list[str] = []
    backend = eng.backend
    if lo < hi and isinstance(backend, Backend):
        # the seed slice first (the single worker keeps order), then the first slice after it
        if not (seed_masks and all(o.object_id in seed_masks for o in prompt.objects)):
            eng.prefetch(backend, volume, k0, window)
        eng.prefetch(backend, volume, k0 + 1 if k0 + 1 <= hi else k0 - 1, window)
    for obj in prompt.objects:
        name = obj.name or f"object {obj.object_id}"
        check_prompt_inside(obj, shape, volume.name)
        given_seed = seed_masks is not None and obj.object_id in seed_masks
        cavities: dict[int, np.ndarray] = {}
        if given_seed:
            given = seed_masks[obj.object_id]
            mask, score = (given[0], float(given[1])) if isinstance(given, tuple) else (given, 1.0)
            mask = np.asarray(mask, bool)
        else:
            refine = eng.config.transfer_refine if refine_seed else False
            mask, score = predict_object(eng, volume, k0, obj, window, refine=refine, avoid=other_clicks(prompt, obj),
                                         cavities=cavities)
        if not mask.any():
            flags.append(f"{name}: empty mask on the prompted slice")
        st = ObjectState(obj.object_id, mask, int(mask.sum()), score, bool(mask.any()), obj.name)
        handed = given_seed and seed_cavities is not None and obj.object_id in seed_cavities
        if handed:  # a wall carried from another case, whose own seed said so: no guess here
            st.cavity = np.asarray(seed_cavities[obj.object_id], bool)
        elif given_seed:  # a preview shown in the app, a corrected slice: is it a wall?
            if eng.config.box_walls and lo < hi and obj.box is not None and mask.any():
                st.cavity = ready_cavity(eng, volume, k0, window, obj.box, mask)
        else:
            st.cavity = cavities.get(obj.object_id)
        if st.cavity is not None:
            st.wall_depth = wall_depth(mask, st.cavity)
            if not handed:
                flags.append(wall_flag(name))
        # a box drawn by the user (a transferred one is refined; the engine's own seeds come with the
        # mask's tight box) whose mask keeps away from all its sides: the seed and every slice walked
        # from it are doubtful
        inside = None if refine_seed else inside_box_flag(name, mask, obj.box)
        if inside is not None:
            flags.append(inside)
            st.seed_doubted, st.seed_cap = True, min(score, INSIDE_BOX_CONFIDENCE)
        elif mask.any() and not refine_seed and not given_seed:
            # the model's own score on the user's prompted slice (a given seed mask has its own checks)
            unsure = unsure_seed_flag(name, score)
            if unsure is not None:
                flags.append(unsure)
                st.seed_doubted, st.seed_cap = True, score
        if given_seed and seed_doubts is not None and obj.object_id in seed_doubts:
            st.seed_doubted, st.seed_cap = True, min(score, float(seed_doubts[obj.object_id]))
            st.doubt_source = k0
        st.peak = st.seed_area
        st.values = _robust_stats(volume.array[k0][mask], volume) if mask.any() else None
        st.last_median = st.values[0] if st.values is not None else None
        states.append(st)
        scores[obj.object_id] = score
    seed_conf = [float(np.clip(min(st.score, st.seed_cap), 0, 1))
                 for st in states if st.mask is not None and st.mask.any()]
    yield SliceResult(
        volume_index=volume_index, slice_index=k0, labels=paint(states, shape), scores=scores, flags=flags,
        prompted=True, volume_name=volume.name, n_slices=n,
        confidence=min(seed_conf) if seed_conf else None,
    )
    walker = functools.partial(walk, eng, volume, states, k0, lo, hi, window, cancel, volume_index)
    parallel = (
        isinstance(backend, Backend)
        and eng.cache.background
        and int(getattr(backend, "parallel_encodes", 1)) > 1
        and lo < k0 < hi
    )
    if parallel:
        yield from walk_both_ways(walker)
    else:
        yield from walker(1)
        yield from walker(-1)


def walk(
    eng: Engine,
    volume: Volume,
    states: list[ObjectState],
    k0: int,
    lo: int,
    hi: int,
    window: WindowSpec,
    cancel: threading.Event | None,
    volume_index: int,
    direction: int,
    others_running: Callable[[], bool] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[SliceResult]:
    """Propagates the seed states from ``k0`` one way, slice by slice.

    ``others_running`` (walking both ways at once): while it says the other direction is still
    encoding, nothing is prefetched (both cores are busy already); ``stop`` ends the walk early.
    """
    backend = eng.backend
    shape = volume.shape[1:]
    n = volume.n_slices
    cur = [st.copy() for st in states]
    k = k0 + direction
    while lo <= k <= hi:
        check_cancel(cancel)
        if stop is not None and stop.is_set():
            return
        scores, flags = {}, []
        if isinstance(backend, Backend) and (others_running is None or not others_running()):
            nxt = k + direction
            if not any(st.alive for st in cur) or not lo <= nxt <= hi:
                # walking one way after the other: the backward pass comes next
                nxt = k0 - 1 if direction == 1 and others_running is None else -1
            if lo <= nxt <= hi:
                eng.prefetch(backend, volume, nxt, window)
        confidences: list[float] = []
        for st in cur:
            if not st.alive:
                st.mask = None
                if st.lost_at is not None:
                    # lost while still large, so nothing tells where it ends: every slice past the
                    # loss may hold it (one review item for the run, :func:`flag_lines` one line)
                    flags.append(f"{st.name or f'object {st.object_id}'}: may continue here "
                                 f"(lost mid-volume at slice {st.lost_at + 1})")
                    confidences.append(0.3)
                continue
            name = st.name or f"object {st.object_id}"
            prev_mask = st.mask
            mask, score, f = step(eng, volume, k, st, window, from_slice=k - direction)
            values = volume.array[k][mask] if mask is not None and mask.any() else None
            why = vanished(eng, mask, score, st, values)
            if why is not None and eng.config.stop_on_vanish:
                log.debug("%s slice %d: object %d ends (%s)", volume.name, k, st.object_id, why)
                before = int(prev_mask.sum()) if prev_mask is not None else 0
                lost = lost_flag(name, before, st.peak, why)
                if lost is not None:
                    flags.append(lost)
                    confidences.append(0.3)
                    st.lost_at = k
                elif ends_uncertainly(why):
                    uncertain = uncertain_end_flag(name, before, st.peak, why)
                    if uncertain is not None:
                        flags.append(uncertain)
                        confidences.append(UNCERTAIN_END_CONFIDENCE)
                st.alive = False
                st.mask = None
                continue
            flags.extend(f)
            if mask is not None:
                agree = neighbour_agreement(mask, prev_mask)
                if agree is not None and agree < MIN_NEIGHBOUR_AGREEMENT:
                    flags.append(f"{name}: disagrees with its neighbours (Dice {agree:.2f} with the slice before)")
                conf = slice_confidence(score, agree)
                if st.seed_doubted and mask.any():
                    flags.append(carried_doubt_flag(name, st.doubt_source))
                    conf = min(conf, st.seed_cap)
                confidences.append(conf)
            st.mask, st.score = mask, score
            if mask is not None:
                st.update_area(int(mask.sum()))
            if values is not None and eng.config.max_intensity_step_z is not None:  # only the drift rule reads it
                st.last_median = float(np.median(values))
            scores[st.object_id] = score
        yield SliceResult(
            volume_index=volume_index, slice_index=k, labels=paint(cur, shape), scores=scores, flags=flags,
            prompted=False, volume_name=volume.name, n_slices=n,
            confidence=min(confidences) if confidences else None,
        )
        k += direction


def walk_both_ways(walk: Callable[..., Iterator[SliceResult]]) -> Iterator[SliceResult]:
    """Walks forward here and backward in a second thread at once; yields forward, then backward.

    For backends that encode two slices at once faster than one after the other (OpenVINO's
    throughput streams: ~20% on 2 cores). Each direction depends only on the seed, so the masks
    are those of walking one way after the other; the backward results wait in a queue
    (labels only) until the forward ones are out. Stopping the generator stops the other thread
    after its current slice; its errors (a cancel included) are raised here.
    """
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    lock = threading.Lock()
    running = [2]

    def others() -> bool:
        with lock:
            return running[0] > 1

    def done() -> None:
        with lock:
            running[0] -= 1

    def backward() -> None:
        try:
            for res in walk(-1, others, stop):
                results.put(("result", res))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            results.put(("error", exc))
        finally:
            done()
            results.put(("end", None))

    worker = threading.Thread(target=backward, name="promptonce-backward", daemon=True)
    worker.start()
    try:
        try:
            yield from walk(1, others, stop)
        finally:
            done()
        while True:
            kind, item = results.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


def segment_volume_sequence(
    eng: Engine,
    volume: Volume,
    prompt: SlicePrompt,
    volume_index: int,
    window: WindowSpec,
    lo: int,
    hi: int,
    cancel: threading.Event | None,
) -> Iterator[SliceResult]:
    backend = eng.backend
    fm = eng.frames(volume, window)
    n = volume.n_slices
    shape = volume.shape[1:]
    k0 = prompt.slice_index
    seeds = {k0: list(prompt.objects)}
    names = {o.object_id: o.name or f"object {o.object_id}" for o in prompt.objects}
    monitor = SequenceMonitor(names)
    doubted: dict[int, float] = {}  # objects whose mask on the prompted slice was flagged -> their confidence cap
    for reverse, end in ((False, hi), (True, lo)):
        monitor.reset()
        for k, masks, scores in backend.propagate(n, fm.frame, seeds, k0, reverse=reverse, end=end):  # type: ignore[union-attr]
            check_cancel(cancel)
            if reverse and k == k0:
                continue
            labels = np.zeros(shape, np.uint8)
            for oid, m in masks.items():
                labels[m.astype(bool) & (labels == 0)] = oid
            conf, flags = monitor.observe(masks, scores)
            for o in prompt.objects:
                m = masks.get(o.object_id)
                if m is None or not np.any(m):
                    continue
                cap = INSIDE_BOX_CONFIDENCE
                if k == k0:
                    doubt = inside_box_flag(names[o.object_id], m, o.box)
                    score = scores.get(o.object_id)
                    if doubt is None and score is not None:
                        doubt, cap = unsure_seed_flag(names[o.object_id], float(score)), float(score)
                    if doubt is not None:
                        doubted[o.object_id] = cap
                else:
                    doubt = carried_doubt_flag(names[o.object_id]) if o.object_id in doubted else None
                    cap = doubted.get(o.object_id, cap)
                if doubt is not None:
                    flags.append(doubt)
                    conf = cap if conf is None else min(conf, cap)
            yield SliceResult(volume_index=volume_index, slice_index=k, labels=labels, scores=dict(scores), flags=flags,
                              prompted=k == k0, volume_name=volume.name, n_slices=n, confidence=conf)


def _robust_stats(values: np.ndarray, volume: Volume) -> tuple[float, float]:
    """Median and a robust spread of an object's voxel values, floored at 2% of the volume's range."""
    v = values.astype(np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    lo, hi = np.percentile(volume.array[:: max(1, volume.n_slices // 16)], [1, 99])
    scale = max((q3 - q1) / 1.35, 0.02 * float(hi - lo), 1e-6)
    return float(med), float(scale)


def _push_touching_sides(mask: np.ndarray, box: Box, step: float, shape: tuple[int, int]) -> Box | None:
    """The box with each side that the mask reaches pushed out by ``step``; None when none is reached."""
    ys, xs = np.nonzero(mask)
    h, w = shape
    x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    if xs.min() <= x0 + 1 and x0 > 0:
        x0 = max(x0 - step, 0)
    if ys.min() <= y0 + 1 and y0 > 0:
        y0 = max(y0 - step, 0)
    if xs.max() >= x1 - 1 and x1 < w - 1:
        x1 = min(x1 + step, w - 1)
    if ys.max() >= y1 - 1 and y1 < h - 1:
        y1 = min(y1 + step, h - 1)
    if (x0, y0, x1, y1) == (box.x0, box.y0, box.x1, box.y1):
        return None
    return Box(x0, y0, x1, y1)


def _fills_box(mask: np.ndarray, box: Box | None, tol: float = 1.5) -> bool:
    """True when the mask reaches at least three sides of the box it was prompted with."""
    if box is None or not mask.any():
        return False
    ys, xs = np.nonzero(mask)
    touches = (
        int(xs.min() <= box.x0 + tol)
        + int(xs.max() >= box.x1 - tol)
        + int(ys.min() <= box.y0 + tol)
        + int(ys.max() >= box.y1 - tol)
    )
    return touches >= 3


def paint(states: Sequence[ObjectState], shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for st in states:
        if st.mask is not None:
            labels[st.mask & (labels == 0)] = st.object_id
    return labels
