"""Propagation engine: one prompt on one slice -> masks for a slice, a volume or a whole dataset.

The engine is a generator of :class:`~promptonce.types.SliceResult`, one slice at a time (the sam2
video predictor's idiom): the caller collects, streams to disk, reports progress or stops early.
Nothing here imports torch; models are reached through the backend protocol
(:mod:`promptonce.backends.base`).

How one prompt travels
----------------------
* Inside a volume (image models): the prompted slice is segmented from the user's prompt; each
  next slice is prompted with a box derived from the previous slice's mask (plus an interior point
  for models that take points). The box is then *refined from the slice's own mask*: the box of the
  new mask (with a margin) is fed back once more, so an organ that grows between slices is not
  clipped by the previous slice's box (clipping made stock chaining shrink and collapse on CT liver).
  An object ends in a direction when its mask vanishes or the model's confidence drops; slices whose
  area or confidence jump are flagged, never hidden.
* Across a dataset: ``strategy="transfer"`` (default) seeds every volume/image from the user's
  original prompt mapped to its own geometry (the Prompt Once paper's "fake seed" idea for image
  models), then refines that prompt from the case's own first mask. Cases are independent, so the
  order does not matter and errors cannot accumulate. ``strategy="chain"`` seeds each case from the
  previous case's result instead.
* Memory models (SAM 2, :class:`~promptonce.backends.base.SequenceBackend`) propagate with their own
  memory; the engine hands them frames lazily.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .backends.base import Backend, Embedding, Prediction, SequenceBackend
from .errors import InputError, PromptError, check_cancel
from .preprocess import FrameMaker
from .prompts import box_from_mask, interior_point, map_prompt
from .types import Box, Dataset, ObjectPrompt, Point, Scope, SlicePrompt, SliceResult, Volume

__all__ = ["PropagationConfig", "Engine", "segment", "make_engine", "background_pool"]

log = logging.getLogger(__name__)

Strategy = Literal["transfer", "chain"]

_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def background_pool(name: str) -> ThreadPoolExecutor:
    """One background thread per purpose, shared by every engine of the process.

    ``prefetch``: the slice a propagation needs next. ``warm``: the slice the app shows (see
    :meth:`Engine.warm`); kept apart so that a shown slice never delays a running propagation's queue.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"promptonce-{name}")
        return pool


@dataclass(frozen=True)
class PropagationConfig:
    """Knobs of image-model propagation. Defaults were chosen by measurement (see benchmarks/README.md).

    Attributes:
        margin_frac: box margin as a fraction of the mask's box size (each side).
        margin_px: minimum box margin in pixels.
        refine: how many times a side of a slice's box that the mask reaches is pushed out by the
            margin and the slice predicted again (lets an object grow without inflating every box:
            boxes with generous margins made masks leak and snowball slice after slice).
        use_points: add the previous mask's interior point as a positive click (point-capable models).
        stop_on_vanish: end an object's propagation in a direction once it vanishes.
        min_area_frac: an object "vanishes" when its area falls below this fraction of its seed area.
        min_area_px: ... or below this many pixels.
        min_score: ... or when the model's confidence falls below this.
        jump_ratio: flag a slice whose area changes by more than this factor from the previous slice.
        min_consistency: an object "vanishes" when its Dice with the neighbouring slice's mask falls
            below this (the model jumped to another structure).
        max_intensity_z: ... or when the median voxel value under its mask moves more than this many
            robust standard deviations away from the seed mask's (an organ keeps its intensity; past
            its end the box lands on a neighbour: on CT liver the last true slices stayed within
            z 1.3 and the first slices beyond it jumped to z 2.4-2.8).
        regrow_ratio, regrow_trough: ... or when, after its area has shrunk below ``regrow_trough``
            of its peak (a tip), the area grows again by ``regrow_ratio`` (a new structure).
        max_growth: a propagated mask larger than this factor of the previous one is treated as a leak
            and the unrefined prediction is kept instead.
        align: dataset scope: register each case's seed slice to the prompted slice (scale +
            translation, :mod:`promptonce.align`) before carrying the prompt over; else map it by
            relative position only.
        track: dataset scope: after the global alignment, refine each transferred box by matching
            the prompted box's surroundings (template tracking, :func:`promptonce.align.track_box`).
        transfer_scales: a transferred box is tried at these sizes (relative, about its centre) and
            the masks vote (pixel majority); box models are sensitive to box size, and a vote over
            sizes is steadier than any single guess. Centred above 1 because box models were trained
            with boxes somewhat larger than the object (MedSAM adds 0-20 px).
        transfer_refine: how many times a transferred prompt is re-derived from the case's own mask.
        transfer_margin_frac: box margin (fraction of the mask size) used in that refinement.
    """

    margin_frac: float = 0.02
    margin_px: float = 3.0
    refine: int = 1
    use_points: bool = False
    stop_on_vanish: bool = True
    min_area_frac: float = 0.02
    min_area_px: int = 12
    min_score: float = 0.35
    jump_ratio: float = 2.0
    max_growth: float = 3.0
    min_consistency: float = 0.2
    max_intensity_z: float = 2.0
    regrow_ratio: float = 1.5
    regrow_trough: float = 0.3
    align: bool = True
    track: bool = True
    transfer_scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3)
    transfer_refine: int = 2
    transfer_margin_frac: float = 0.05


@dataclass
class _ObjectState:
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

    def copy(self) -> _ObjectState:
        return replace(self)

    def update_area(self, area: int) -> None:
        """Tracks the area profile along the propagation direction (peak, then the lowest since)."""
        if area >= self.peak:
            self.peak, self.trough = area, None
        elif self.trough is None or area < self.trough:
            self.trough = area


class Engine:
    """Runs prompts through a backend with an embedding cache ("embed once, prompt many").

    Args:
        backend: the image model used for propagation (e.g. LiteMedSAM).
        click_backend: model used to turn a click-only prompt into a first mask when ``backend`` takes
            only boxes (e.g. MobileSAM); None -> clicks are given to ``backend`` directly.
        config: propagation knobs.
        cache_size: how many slice embeddings to keep (LRU).
        prefetch: encode the slice that propagation needs next in a background thread while the
            current slice is decoded (image models only). Encoding is prompt-free, so the next
            slice's embedding is known to be needed before the current mask exists; at most one
            slice per direction is encoded in vain, where the object ends. Off: no background
            encoding at all (no prefetch, no :meth:`warm`, one direction after the other).
    """

    def __init__(
        self,
        backend: Backend | SequenceBackend,
        *,
        click_backend: Backend | None = None,
        config: PropagationConfig | None = None,
        cache_size: int = 32,
        prefetch: bool = True,
    ) -> None:
        self.backend = backend
        self.click_backend = click_backend
        self.config = config or PropagationConfig()
        self._cache: OrderedDict[tuple, Embedding] = OrderedDict()
        self._cache_size = cache_size
        self._prefetch = bool(prefetch)
        self._pending: dict[tuple, Future] = {}
        self._warm_ticket: object | None = None
        self._lock = threading.Lock()
        self._frames_lock = threading.Lock()
        # FrameMaker holds its volume, so this cache is keyed by uid and kept small (LRU).
        self._frames: OrderedDict[int, FrameMaker] = OrderedDict()
        self._uids: weakref.WeakKeyDictionary[Volume, int] = weakref.WeakKeyDictionary()
        self._next_uid = itertools.count()

    @property
    def cache_size(self) -> int:
        """How many slice embeddings the engine keeps (LRU); settable to bound a session's memory."""
        return self._cache_size

    @cache_size.setter
    def cache_size(self, n: int) -> None:
        with self._lock:
            self._cache_size = max(1, int(n))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _uid(self, volume: Volume) -> int:
        """A key for a volume that is never reused while this engine lives (``id()`` can be)."""
        with self._lock:
            uid = self._uids.get(volume)
            if uid is None:
                uid = self._uids[volume] = next(self._next_uid)
            return uid

    @property
    def is_sequence(self) -> bool:
        """True when the backend propagates with its own memory (SAM 2's video predictor)."""
        return bool(getattr(self.backend.info, "sequence", False)) and hasattr(self.backend, "propagate")

    # ------------------------------------------------------------------ frames and embeddings
    def frames(self, volume: Volume, window=None) -> FrameMaker:
        """The frame maker of a volume (one window for the whole volume), cached per volume object."""
        key = self._uid(volume)
        with self._frames_lock:
            fm = self._frames.get(key)
            if fm is None or getattr(fm, "requested", None) != window:
                fm = FrameMaker(volume, window)
                fm.requested = window  # type: ignore[attr-defined]
                self._frames[key] = fm
            self._frames.move_to_end(key)
            while len(self._frames) > 4:
                self._frames.popitem(last=False)
            return fm

    def embedding(self, backend: Backend, volume: Volume, k: int, window=None) -> Embedding:
        """The embedding of slice ``k`` of ``volume`` by ``backend``, from the cache when possible.

        A slice being encoded by :meth:`prefetch` is waited for, not encoded twice.
        """
        fm = self.frames(volume, window)
        key = (backend.info.name, self._uid(volume), k, tuple(fm.window))
        with self._lock:
            emb = self._cache.get(key)
            if emb is not None:
                self._cache.move_to_end(key)
                return emb
            pending = self._pending.get(key)
        if pending is not None:
            try:
                got = pending.result()
                if got is not None:  # None: a warm-up that was superseded before it ran
                    return got
            except Exception as exc:  # noqa: BLE001 - encode again in this thread, where errors surface
                log.debug("background encoding of slice %d failed (%s); encoding it now", k, exc)
        emb = backend.embed(fm.frame(k))
        self._store(key, emb)
        return emb

    def _store(self, key: tuple, emb: Embedding) -> None:
        with self._lock:
            self._cache[key] = emb
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def prefetch(self, backend: Backend, volume: Volume, k: int, window=None) -> None:
        """Starts encoding slice ``k`` in the background (no-op when cached, pending, off or out of range)."""
        self._submit("prefetch", backend, volume, k, window)

    def _submit(
        self, pool: str, backend: Backend, volume: Volume, k: int, window=None, still_wanted=None
    ) -> Future | None:
        if not self._prefetch or not 0 <= k < volume.n_slices or not hasattr(backend, "embed"):
            return None
        fm = self.frames(volume, window)
        key = (backend.info.name, self._uid(volume), k, tuple(fm.window))
        with self._lock:
            if key in self._cache or key in self._pending:
                return self._pending.get(key)

            def work() -> Embedding | None:
                try:
                    if still_wanted is not None and not still_wanted():
                        return None
                    emb = backend.embed(fm.frame(k))
                    self._store(key, emb)
                    return emb
                finally:
                    with self._lock:
                        self._pending.pop(key, None)

            fut = self._pending[key] = background_pool(pool).submit(work)
        return fut

    def warm(self, volume: Volume, k: int, window=None, idle: Callable[[], bool] | None = None) -> list[Future]:
        """Encodes slice ``k`` in the background for the click model and the propagation model.

        The app calls this when it shows a slice: the user looks before clicking, so a click then
        costs only decoding (~0.1 s) instead of encoding first (~1-2.5 s on a 2-core CPU). Only the
        latest slice asked for is encoded: requests still queued when another slice is shown are
        dropped (scrolling through a volume does not queue work). A click that arrives while its
        slice is being encoded waits for that encoding instead of starting another. ``idle``: when
        given, an encoding starts only while it says True (the app: no model request running).
        """
        ticket = object()
        self._warm_ticket = ticket

        def wanted() -> bool:
            return self._warm_ticket is ticket and (idle is None or idle())

        futures = []
        for b in (self.click_backend, self.backend):
            if isinstance(b, Backend):
                fut = self._submit("warm", b, volume, k, window, still_wanted=wanted)
                if fut is not None:
                    futures.append(fut)
        return futures

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
        with self._frames_lock:
            self._frames.clear()

    # ------------------------------------------------------------------ one slice
    def _predict(self, backend: Backend, emb: Embedding, obj: ObjectPrompt, multimask: bool = False) -> Prediction:
        coords, labels = obj.point_arrays()
        box = obj.box.as_array() if obj.box is not None else None
        if len(coords) and not backend.info.points:
            if box is None:
                raise PromptError(
                    f"{backend.info.title} takes boxes only; draw a box, or pick a model that takes clicks."
                )
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
        self, volume: Volume, k: int, obj: ObjectPrompt, window=None, refine: bool | int = False
    ) -> tuple[np.ndarray, float]:
        """Segments one object on slice ``k`` from a prompt placed there.

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
        backend = self.backend
        assert isinstance(backend, Backend)  # noqa: S101 - internal invariant, SequenceBackends never get here
        shape = volume.shape[1:]
        transferred = bool(refine)
        if obj.box is None and not backend.info.points:
            clicker = self.click_backend
            if clicker is None:
                raise PromptError(
                    f"{backend.info.title} takes boxes only and no click model is available here; draw a box."
                )
            emb = self.embedding(clicker, volume, k, window)
            pred = self._predict(clicker, emb, obj, multimask=not _has_negative(obj) and len(obj.points) == 1)
            mask = _best_containing(pred, obj)
            box = box_from_mask(mask, margin=self._margin(mask), shape=shape)
            if box is None:
                return mask, float(np.max(pred.scores))
            obj = replace(obj, box=box, points=())
            refine = True
        emb = self.embedding(backend, volume, k, window)
        if transferred and obj.box is not None and backend.info.boxes and self.config.transfer_scales:
            return self._transferred_mask(backend, emb, obj, shape)
        multimask = obj.box is None and len(obj.points) == 1
        pred = self._predict(backend, emb, obj, multimask=multimask)
        mask = _best_containing(pred, obj) if multimask else pred.best
        score = float(np.max(pred.scores))
        if refine and obj.box is not None and backend.info.boxes and mask.any():
            times = refine if isinstance(refine, int) and not isinstance(refine, bool) else self.config.refine
            mask, score = self._refine(backend, emb, mask, score, obj, shape, times=times)
        return mask, score

    def _transferred_mask(
        self, backend: Backend, emb: Embedding, obj: ObjectPrompt, shape: tuple[int, int]
    ) -> tuple[np.ndarray, float]:
        """Mask for a box carried over from another case: a vote over box sizes, then self-refinement."""
        cfg = self.config
        b = obj.box.as_array()  # type: ignore[union-attr]
        c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2
        h, w = shape
        votes = np.zeros(shape, np.float32)
        scores = []
        for s in cfg.transfer_scales:
            lo, hi = c - half * s, c + half * s
            box = Box(max(lo[0], 0), max(lo[1], 0), min(hi[0], w - 1), min(hi[1], h - 1))
            pred = self._predict(backend, emb, ObjectPrompt(points=obj.points, box=box, object_id=obj.object_id))
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
            pred = self._predict(backend, emb, ObjectPrompt(points=obj.points, box=box, object_id=obj.object_id))
            if not pred.best.any():
                break
            mask, score = pred.best, float(np.max(pred.scores))
        return mask, score

    def _margin(self, mask: np.ndarray) -> float:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return self.config.margin_px
        size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        return max(self.config.margin_px, self.config.margin_frac * size)

    def _refine(
        self,
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
        for _ in range(self.config.refine if times is None else times):
            box = box_from_mask(mask, margin=self._margin(mask), shape=shape)
            if box is None:
                break
            pts = obj.points if backend.info.points else ()
            pred = self._predict(backend, emb, ObjectPrompt(points=pts, box=box, object_id=obj.object_id))
            new = pred.best
            area = int(new.sum())
            ref_area = prev_area if prev_area else int(mask.sum())
            if area == 0 or (ref_area and area > self.config.max_growth * ref_area):
                break  # a leak or a collapse: keep what we had
            mask, score = new, float(np.max(pred.scores))
        return mask, score

    def _propagated_prompt(self, prev: np.ndarray, obj_id: int, backend: Backend) -> ObjectPrompt | None:
        box = box_from_mask(prev, margin=self._margin(prev), shape=prev.shape)
        if box is None:
            return None
        points: tuple[Point, ...] = ()
        if backend.info.points and (self.config.use_points or not backend.info.boxes):
            p = interior_point(prev)
            if p is not None:
                points = (p,)
        return ObjectPrompt(points=points, box=box if backend.info.boxes else None, object_id=obj_id)

    def step(self, volume: Volume, k: int, state: _ObjectState, window=None) -> tuple[np.ndarray | None, float, list[str]]:
        """Segments ``state``'s object on slice ``k`` from its mask on the neighbouring slice.

        The box is the previous mask's box plus a small margin; where the new mask reaches a side of
        that box, the side is pushed out and the slice predicted again (``config.refine`` times).
        """
        backend = self.backend
        assert isinstance(backend, Backend)  # noqa: S101 - internal invariant
        cfg = self.config
        prev = state.mask
        if prev is None or not prev.any():
            return None, 0.0, []
        prompt = self._propagated_prompt(prev, state.object_id, backend)
        if prompt is None:
            return None, 0.0, []
        emb = self.embedding(backend, volume, k, window)
        pred = self._predict(backend, emb, prompt)
        mask, score = pred.best, float(np.max(pred.scores))
        state.last_box = prompt.box
        prev_area = int(prev.sum())
        shape = volume.shape[1:]
        for _ in range(cfg.refine if backend.info.boxes else 0):
            if not mask.any() or prompt.box is None:
                break
            grown = _push_touching_sides(mask, prompt.box, self._margin(mask), shape)
            if grown is None:
                break
            trial = self._predict(backend, emb, replace(prompt, box=grown))
            new = trial.best
            if not new.any() or new.sum() > cfg.jump_ratio * max(prev_area, 1):
                break
            mask, score, prompt = new, float(np.max(trial.scores)), replace(prompt, box=grown)
            state.last_box = grown
        flags: list[str] = []
        area = int(mask.sum())
        if prev_area and area and (area > cfg.jump_ratio * prev_area or area * cfg.jump_ratio < prev_area):
            flags.append(f"{state.name or f'object {state.object_id}'}: area jump x{area / prev_area:.2f}")
        if area and score < cfg.min_score:
            flags.append(f"{state.name or f'object {state.object_id}'}: low confidence {score:.2f}")
        return mask, score, flags

    def _vanished(
        self, mask: np.ndarray | None, score: float, state: _ObjectState, values: np.ndarray | None = None
    ) -> str | None:
        """Why the object is taken to have ended on this slice, or None when it goes on.

        A box prompt always gets *some* mask, so an object that ends shows up as a mask that is
        tiny, unsure, unrelated to the previous slice's mask (the model segmented a neighbour or
        background inside the box) or suddenly much larger (a leak).
        """
        cfg = self.config
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
            z = abs(float(np.median(values)) - med0) / scale0
            if z > cfg.max_intensity_z:
                return f"intensity changed (z {z:.1f})"
            inter = int(np.count_nonzero(mask & prev))
            if 2.0 * inter / (area + prev_area) < cfg.min_consistency:
                return "no overlap with the neighbouring slice"
        return None

    def transfer_prompt(self, prompt: SlicePrompt, src: Volume, dst: Volume, window=None) -> SlicePrompt:
        """Carries the user's prompt from its case to another case (dataset-wide seed transfer).

        The slice keeps its relative position along the volume; in-plane, the prompt follows a
        scale + translation registration of the two slices (when ``config.align``), falling back to
        relative position when the registration is not trustworthy.
        """
        base = _transfer_prompt(prompt, src, dst)
        if not self.config.align:
            return base
        from .align import Similarity, estimate_similarity

        a = self.frames(src, window).gray(prompt.slice_index)
        b = self.frames(dst, window).gray(base.slice_index)
        sim = estimate_similarity(a, b)
        if sim.score < 0.3:
            log.info("%s: alignment score %.2f too low; prompt mapped by relative position", dst.name, sim.score)
            return base
        objs = tuple(_apply_similarity(o, sim, dst.shape[1:]) for o in prompt.objects)
        if self.config.track:
            from .align import track_box

            tracked = []
            for o_src, o in zip(prompt.objects, objs):
                if o_src.box is not None and o.box is not None:
                    bt, score = track_box(a, b, tuple(o_src.box.as_array()), tuple(o.box.as_array()))
                    if score >= 0.5:
                        h, w = dst.shape[1:]
                        x0, y0 = min(max(bt[0], 0), w - 1), min(max(bt[1], 0), h - 1)
                        x1, y1 = min(max(bt[2], x0), w - 1), min(max(bt[3], y0), h - 1)
                        dx, dy = (x0 + x1 - o.box.x0 - o.box.x1) / 2, (y0 + y1 - o.box.y0 - o.box.y1) / 2
                        pts = tuple(Point(min(max(p.x + dx, 0), w - 1), min(max(p.y + dy, 0), h - 1), p.label)
                                    for p in o.points)
                        o = replace(o, box=Box(x0, y0, x1, y1), points=pts)
                tracked.append(o)
            objs = tuple(tracked)
        return SlicePrompt(objs, slice_index=base.slice_index, volume_index=0)

    # ------------------------------------------------------------------ a volume
    def segment_volume(
        self,
        volume: Volume,
        prompt: SlicePrompt,
        *,
        volume_index: int = 0,
        window=None,
        scope_slices: tuple[int, int] | None = None,
        cancel: threading.Event | None = None,
        seed_masks: dict[int, np.ndarray] | None = None,
        refine_seed: bool = False,
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
            seed_masks: optional ready masks for the seed slice per object id (skips its prediction).
            refine_seed: refine the seed prompt from its own mask (for prompts transferred from another case).

        Yields:
            One :class:`SliceResult` per covered slice (slices where every object ended get empty labels).
        """
        k0 = prompt.slice_index
        n = volume.n_slices
        if not 0 <= k0 < n:
            raise PromptError(f"{volume.name}: slice {k0} does not exist; it has {n} slices (0..{n - 1}).")
        lo, hi = scope_slices if scope_slices is not None else (0, n - 1)
        shape = volume.shape[1:]
        _check_cancel(cancel)
        if self.is_sequence:
            yield from self._segment_volume_sequence(volume, prompt, volume_index, window, lo, hi, cancel)
            return
        states: list[_ObjectState] = []
        scores: dict[int, float] = {}
        flags: list[str] = []
        backend = self.backend
        if lo < hi and isinstance(backend, Backend):
            # the seed slice first (the single worker keeps order), then the first slice after it
            if not (seed_masks and all(o.object_id in seed_masks for o in prompt.objects)):
                self.prefetch(backend, volume, k0, window)
            self.prefetch(backend, volume, k0 + 1 if k0 + 1 <= hi else k0 - 1, window)
        for obj in prompt.objects:
            _check_prompt_inside(obj, shape, volume.name)
            if seed_masks is not None and obj.object_id in seed_masks:
                mask, score = seed_masks[obj.object_id].astype(bool), 1.0
            else:
                refine = self.config.transfer_refine if refine_seed else False
                mask, score = self.predict_object(volume, k0, obj, window, refine=refine)
            if not mask.any():
                flags.append(f"{obj.name or f'object {obj.object_id}'}: empty mask on the prompted slice")
            st = _ObjectState(obj.object_id, mask, int(mask.sum()), score, bool(mask.any()), obj.name)
            st.peak = st.seed_area
            st.values = _robust_stats(volume.array[k0][mask], volume) if mask.any() else None
            states.append(st)
            scores[obj.object_id] = score
        yield SliceResult(
            volume_index, k0, _paint(states, shape), scores, flags, True, volume.name, n
        )
        walk = functools.partial(self._walk, volume, states, k0, lo, hi, window, cancel, volume_index)
        parallel = (
            isinstance(backend, Backend)
            and self._prefetch
            and int(getattr(backend, "parallel_encodes", 1)) > 1
            and lo < k0 < hi
        )
        if parallel:
            yield from self._walk_both_ways(walk)
        else:
            yield from walk(1)
            yield from walk(-1)

    def _walk(
        self,
        volume: Volume,
        states: list[_ObjectState],
        k0: int,
        lo: int,
        hi: int,
        window,
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
        backend = self.backend
        shape = volume.shape[1:]
        n = volume.n_slices
        cur = [st.copy() for st in states]
        k = k0 + direction
        while lo <= k <= hi:
            _check_cancel(cancel)
            if stop is not None and stop.is_set():
                return
            scores, flags = {}, []
            if isinstance(backend, Backend) and (others_running is None or not others_running()):
                nxt = k + direction
                if not any(st.alive for st in cur) or not lo <= nxt <= hi:
                    # walking one way after the other: the backward pass comes next
                    nxt = k0 - 1 if direction == 1 and others_running is None else -1
                if lo <= nxt <= hi:
                    self.prefetch(backend, volume, nxt, window)
            for st in cur:
                if not st.alive:
                    st.mask = None
                    continue
                mask, score, f = self.step(volume, k, st, window)
                values = volume.array[k][mask] if mask is not None and mask.any() else None
                why = self._vanished(mask, score, st, values)
                if why is not None and self.config.stop_on_vanish:
                    log.debug("%s slice %d: object %d ends (%s)", volume.name, k, st.object_id, why)
                    st.alive = False
                    st.mask = None
                    continue
                flags.extend(f)
                st.mask, st.score = mask, score
                if mask is not None:
                    st.update_area(int(mask.sum()))
                scores[st.object_id] = score
            yield SliceResult(volume_index, k, _paint(cur, shape), scores, flags, False, volume.name, n)
            k += direction

    def _walk_both_ways(self, walk: Callable[..., Iterator[SliceResult]]) -> Iterator[SliceResult]:
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

    def _segment_volume_sequence(
        self,
        volume: Volume,
        prompt: SlicePrompt,
        volume_index: int,
        window,
        lo: int,
        hi: int,
        cancel: threading.Event | None,
    ) -> Iterator[SliceResult]:
        backend = self.backend
        fm = self.frames(volume, window)
        n = volume.n_slices
        shape = volume.shape[1:]
        k0 = prompt.slice_index
        seeds = {k0: list(prompt.objects)}
        for reverse, end in ((False, hi), (True, lo)):
            for k, masks, scores in backend.propagate(n, fm.frame, seeds, k0, reverse=reverse, end=end):  # type: ignore[union-attr]
                _check_cancel(cancel)
                if reverse and k == k0:
                    continue
                labels = np.zeros(shape, np.uint8)
                for oid, m in masks.items():
                    labels[m.astype(bool) & (labels == 0)] = oid
                yield SliceResult(volume_index, k, labels, dict(scores), [], k == k0, volume.name, n)


def segment(
    dataset: Dataset | Volume | Sequence[Volume],
    prompt: SlicePrompt,
    *,
    scope: Scope = "volume",
    backend: Backend | SequenceBackend | str = "auto",
    click_backend: Backend | str | None = "auto",
    window=None,
    strategy: Strategy = "transfer",
    config: PropagationConfig | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> Iterator[SliceResult]:
    """Segments from one prompt: a slice, a volume, or every volume of a dataset.

    Args:
        dataset: the images (a single Volume is a one-volume dataset).
        prompt: the user's prompt, on ``prompt.volume_index`` / ``prompt.slice_index``.
        scope: ``"image"`` (the prompted slice only), ``"volume"`` (the prompted volume) or
            ``"dataset"`` (every volume, one prompt for all).
        backend: a backend or a registry name (``"auto"`` picks by prompt: see
            :func:`promptonce.backends.registry.get_backend`).
        click_backend: model that turns clicks into a first mask for box-only backends.
        window: display window for model frames (preset name, ``(W, L)``, or None/"auto").
        strategy: dataset scope only: ``"transfer"`` (each case seeded from the original prompt
            mapped to it, then refined on its own mask) or ``"chain"`` (each case seeded from the
            previous case's result).
        config: propagation knobs.
        cancel: an Event; when set, the generator raises :class:`CancelledError` between slices
            (results already yielded stay valid).
        engine: reuse an Engine (and its embedding cache) instead of building one.

    Yields:
        :class:`SliceResult` for every slice covered, volume by volume.
    """
    if isinstance(dataset, Volume):
        dataset = Dataset([dataset])
    elif not isinstance(dataset, Dataset):
        dataset = Dataset(list(dataset))
    if len(dataset) == 0:
        raise InputError("The dataset is empty; load at least one image or volume.")
    if scope not in ("image", "volume", "dataset"):
        raise InputError(f"Unknown scope {scope!r}; use image, volume or dataset.")
    if strategy not in ("transfer", "chain"):
        raise InputError(f"Unknown dataset strategy {strategy!r}; use transfer or chain.")
    v0 = prompt.volume_index
    if not 0 <= v0 < len(dataset):
        raise PromptError(f"Volume {v0} does not exist; the dataset has {len(dataset)} (0..{len(dataset) - 1}).")
    if engine is None:
        engine = make_engine(prompt, backend, click_backend, config)
    seed_volume = dataset[v0]
    if scope == "image":
        lo = hi = prompt.slice_index
        yield from engine.segment_volume(
            seed_volume, prompt, volume_index=v0, window=window, scope_slices=(lo, hi), cancel=cancel
        )
        return
    seed_results: list[SliceResult] = []
    for res in engine.segment_volume(seed_volume, prompt, volume_index=v0, window=window, cancel=cancel):
        if res.prompted:
            seed_results.append(res)
        yield res
    if scope == "volume":
        return
    if engine.is_sequence:
        yield from _dataset_sequence(engine, dataset, prompt, v0, window, strategy, cancel)
        return
    order = [i for i in range(len(dataset)) if i != v0]
    # Chain walks outwards from the prompted case so neighbours seed neighbours.
    if strategy == "chain":
        order = [i for i in range(v0 + 1, len(dataset))] + [i for i in range(v0 - 1, -1, -1)]
    prev_by_dir: dict[int, tuple[Volume, SliceResult]] = {}
    for i in order:
        _check_cancel(cancel)
        vol = dataset[i]
        if strategy == "chain":
            direction = 1 if i > v0 else -1
            src_vol, src_res = prev_by_dir.get(direction, (seed_volume, seed_results[0] if seed_results else None))
            case_prompt = _prompt_from_result(src_vol, src_res, vol, prompt) if src_res is not None else None
            if case_prompt is None:
                case_prompt = engine.transfer_prompt(prompt, seed_volume, vol, window)
        else:
            case_prompt = engine.transfer_prompt(prompt, seed_volume, vol, window)
        last_prompted: SliceResult | None = None
        for res in engine.segment_volume(
            vol, case_prompt, volume_index=i, window=window, cancel=cancel, refine_seed=True
        ):
            res.prompted = False  # only the user's own slice counts as prompted
            if res.slice_index == case_prompt.slice_index:
                last_prompted = res
            yield res
        if strategy == "chain" and last_prompted is not None:
            prev_by_dir[1 if i > v0 else -1] = (vol, last_prompted)


def _dataset_sequence(
    engine: Engine,
    dataset: Dataset,
    prompt: SlicePrompt,
    v0: int,
    window,
    strategy: Strategy,
    cancel: threading.Event | None,
) -> Iterator[SliceResult]:
    """Dataset scope for memory models, after the seed volume itself was segmented.

    ``transfer``: the Prompt Once paper's "fake seed" - the prompted frame, with its prompt, is put
    before each other volume's frames and dropped from the output, so volumes are independent.
    ``chain``: every other volume is one continuation of the sequence, seeded by the last frame of
    the volume before it (its mask), so memory carries across volume boundaries.
    """
    backend = engine.backend
    seed_frame = engine.frames(dataset[v0], window).frame(prompt.slice_index)
    prev: tuple[np.ndarray, SliceResult] | None = None
    for i in [j for j in range(len(dataset)) if j != v0]:
        _check_cancel(cancel)
        vol = dataset[i]
        fm = engine.frames(vol, window)
        shape = vol.shape[1:]
        if strategy == "chain" and prev is not None and prev[1].labels.any():
            frame, res = prev
            seeds = [(oid, res.labels == oid) for oid in np.unique(res.labels) if oid]
            it = backend.propagate_with_seed_frame(frame, seeds, vol.n_slices, fm.frame)  # type: ignore[union-attr]
        else:
            it = backend.propagate_with_seed_frame(  # type: ignore[union-attr]
                seed_frame, list(prompt.objects), vol.n_slices, fm.frame
            )
        last: SliceResult | None = None
        for k, masks, scores in it:
            _check_cancel(cancel)
            labels = np.zeros(shape, np.uint8)
            for oid, m in masks.items():
                m = np.asarray(m, bool)
                if m.shape != shape:
                    raise InputError(f"{vol.name}: the model returned masks of shape {m.shape}, expected {shape}.")
                labels[m & (labels == 0)] = oid
            last = SliceResult(i, k, labels, dict(scores), [], False, vol.name, vol.n_slices)
            yield last
        if last is not None:
            prev = (fm.frame(last.slice_index), last)


def make_engine(
    prompt: SlicePrompt | None,
    backend: Backend | SequenceBackend | str = "auto",
    click_backend: Backend | str | None = "auto",
    config: PropagationConfig | None = None,
    cache_size: int = 32,
) -> Engine:
    """Builds an Engine, resolving backend names through the registry (lazy: loads models on first use)."""
    from .backends.registry import get_backend

    has_box = prompt is not None and any(o.box is not None for o in prompt.objects)
    if isinstance(backend, str):
        name = backend
        if name == "auto":
            name = "litemedsam"
        backend = get_backend(name)
    clicker: Backend | None = None
    if isinstance(click_backend, str):
        needs_clicker = isinstance(backend, Backend) and not backend.info.points
        if needs_clicker and (prompt is None or not has_box or any(o.box is None for o in prompt.objects)):
            clicker = get_backend("mobilesam" if click_backend == "auto" else click_backend)  # type: ignore[assignment]
    elif click_backend is not None:
        clicker = click_backend
    return Engine(backend, click_backend=clicker, config=config, cache_size=cache_size)


# ---------------------------------------------------------------------- helpers
_check_cancel = check_cancel


def _has_negative(obj: ObjectPrompt) -> bool:
    return any(p.label == 0 for p in obj.points)


def _best_containing(pred: Prediction, obj: ObjectPrompt, max_fraction: float = 0.5) -> np.ndarray:
    """Best-scored candidate that contains the positive clicks (SAM's multimask ambiguity resolved).

    Candidates that cover more than ``max_fraction`` of the frame or reach all four borders are
    passed over while another candidate contains the clicks: for one click on a lung, MobileSAM's
    top-scored candidate was the whole radiograph (score 1.0 on ~92% of the frame), which says
    nothing about the object the user pointed at.
    """
    pos = [p for p in obj.points if p.label == 1]
    order = [int(j) for j in np.argsort(-pred.scores)]

    def contains(m: np.ndarray) -> bool:
        h, w = m.shape
        return all(m[min(max(int(round(p.y)), 0), h - 1), min(max(int(round(p.x)), 0), w - 1)] for p in pos)

    def whole_frame(m: np.ndarray) -> bool:
        if m.mean() > max_fraction:
            return True
        return bool(m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any())

    for wanted in (lambda m: contains(m) and not whole_frame(m), contains, lambda m: not whole_frame(m)):
        for j in order:
            if wanted(pred.masks[j]):
                return pred.masks[j]
    return pred.masks[order[0]]


def _check_prompt_inside(obj: ObjectPrompt, shape: tuple[int, int], name: str) -> None:
    h, w = shape
    for p in obj.points:
        if not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
            raise PromptError(f"{name}: click ({p.x:.0f}, {p.y:.0f}) is outside the {w}x{h} image; click on the image.")
    if obj.box is not None:
        b = obj.box
        if b.x1 < 0 or b.y1 < 0 or b.x0 > w - 1 or b.y0 > h - 1:
            raise PromptError(f"{name}: box ({b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f}) lies outside the {w}x{h} image.")


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
        int(xs.min() <= box.x0 + tol) + int(xs.max() >= box.x1 - tol)
        + int(ys.min() <= box.y0 + tol) + int(ys.max() >= box.y1 - tol)
    )
    return touches >= 3


def _paint(states: Sequence[_ObjectState], shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for st in states:
        if st.mask is not None:
            labels[st.mask & (labels == 0)] = st.object_id
    return labels


def _transfer_prompt(prompt: SlicePrompt, src: Volume, dst: Volume) -> SlicePrompt:
    """Maps the user's prompt to another case: same relative slice position and in-plane position."""
    n_src, n_dst = src.n_slices, dst.n_slices
    k = int(round(prompt.slice_index * (n_dst - 1) / (n_src - 1))) if n_src > 1 else n_dst // 2
    k = min(max(k, 0), n_dst - 1)
    objs = tuple(map_prompt(o, src.shape[1:], dst.shape[1:]) for o in prompt.objects)
    return SlicePrompt(objs, slice_index=k, volume_index=0)


def _apply_similarity(obj: ObjectPrompt, sim, shape: tuple[int, int]) -> ObjectPrompt:
    h, w = shape

    def clip(x: float, y: float) -> tuple[float, float]:
        return min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)

    pts = tuple(Point(*clip(*sim.apply(p.x, p.y)), p.label) for p in obj.points)
    box = None
    if obj.box is not None:
        x0, y0 = clip(*sim.apply(obj.box.x0, obj.box.y0))
        x1, y1 = clip(*sim.apply(obj.box.x1, obj.box.y1))
        box = Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    return ObjectPrompt(points=pts, box=box, object_id=obj.object_id, name=obj.name)


def _prompt_from_result(src: Volume, res: SliceResult, dst: Volume, prompt: SlicePrompt) -> SlicePrompt | None:
    """Chain: the previous case's mask on its prompted slice, as boxes, mapped to the next case."""
    objs = []
    for o in prompt.objects:
        m = res.labels == o.object_id
        box = box_from_mask(m, margin=0, shape=m.shape)
        if box is None:
            continue
        objs.append(map_prompt(ObjectPrompt(box=box, object_id=o.object_id, name=o.name), src.shape[1:], dst.shape[1:]))
    if not objs:
        return None
    base = _transfer_prompt(prompt, src, dst)
    return SlicePrompt(tuple(objs), slice_index=base.slice_index, volume_index=0)
