"""Across a dataset: the user's prompt carried to every other case (transfer) or case to case (chain)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Engine

import numpy as np

from ..errors import InputError, check_cancel
from ..prompts import box_from_mask, map_prompt
from ..types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, SliceResult, Volume
from .config import Strategy

__all__ = ["transfer_prompt", "segment_dataset", "dataset_sequence"]

log = logging.getLogger(__name__)


def transfer_prompt(eng: Engine, prompt: SlicePrompt, src: Volume, dst: Volume, window=None) -> SlicePrompt:
    """Carries the user's prompt from its case to another case (dataset-wide seed transfer).

    The slice keeps its relative position along the volume; in-plane, the prompt follows a
    scale + translation registration of the two slices (when ``config.align``), falling back to
    relative position when the registration is not trustworthy.
    """
    base = _transfer_prompt(prompt, src, dst)
    if not eng.config.align:
        return base
    from ..align import estimate_similarity

    a = eng.frames(src, window).gray(prompt.slice_index)
    b = eng.frames(dst, window).gray(base.slice_index)
    sim = estimate_similarity(a, b)
    if sim.score < 0.3:
        log.info("%s: alignment score %.2f too low; prompt mapped by relative position", dst.name, sim.score)
        return base
    objs = tuple(_apply_similarity(o, sim, dst.shape[1:]) for o in prompt.objects)
    if eng.config.track:
        from ..align import track_box

        tracked = []
        for o_src, o in zip(prompt.objects, objs):
            if o_src.box is not None and o.box is not None:
                bt, score = track_box(a, b, tuple(o_src.box.as_array()), tuple(o.box.as_array()))
                if score >= 0.5:
                    h, w = dst.shape[1:]
                    x0, y0 = min(max(bt[0], 0), w - 1), min(max(bt[1], 0), h - 1)
                    x1, y1 = min(max(bt[2], x0), w - 1), min(max(bt[3], y0), h - 1)
                    dx, dy = (x0 + x1 - o.box.x0 - o.box.x1) / 2, (y0 + y1 - o.box.y0 - o.box.y1) / 2
                    pts = tuple(
                        Point(min(max(p.x + dx, 0), w - 1), min(max(p.y + dy, 0), h - 1), p.label) for p in o.points
                    )
                    o = replace(o, box=Box(x0, y0, x1, y1), points=pts)
            tracked.append(o)
        objs = tuple(tracked)
    return SlicePrompt(objs, slice_index=base.slice_index, volume_index=0)


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


def segment_dataset(
    engine: Engine,
    dataset: Dataset,
    prompt: SlicePrompt,
    seed_results: list[SliceResult],
    window=None,
    strategy: Strategy = "transfer",
    cancel: threading.Event | None = None,
) -> Iterator[SliceResult]:
    """Every case of ``dataset`` except the prompted one (``prompt.volume_index``), from one prompt.

    ``seed_results``: the prompted case's results on its prompted slice (for ``chain``).
    """
    v0 = prompt.volume_index
    seed_volume = dataset[v0]
    if engine.is_sequence:
        yield from dataset_sequence(engine, dataset, prompt, v0, window, strategy, cancel)
        return
    order = [i for i in range(len(dataset)) if i != v0]
    # Chain walks outwards from the prompted case so neighbours seed neighbours.
    if strategy == "chain":
        order = [i for i in range(v0 + 1, len(dataset))] + [i for i in range(v0 - 1, -1, -1)]
    prev_by_dir: dict[int, tuple[Volume, SliceResult]] = {}
    for i in order:
        check_cancel(cancel)
        vol = dataset[i]
        if strategy == "chain":
            direction = 1 if i > v0 else -1
            src_vol, src_res = prev_by_dir.get(direction, (seed_volume, seed_results[0] if seed_results else None))
            case_prompt = _prompt_from_result(src_vol, src_res, vol, prompt) if src_res is not None else None
            if case_prompt is None:
                case_prompt = transfer_prompt(engine, prompt, seed_volume, vol, window)
        else:
            case_prompt = transfer_prompt(engine, prompt, seed_volume, vol, window)
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


def dataset_sequence(
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
        check_cancel(cancel)
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
            check_cancel(cancel)
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
