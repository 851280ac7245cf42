"""Simulated-user evaluation: build the prompt a person would give, segment, score everything.

Protocols
---------
* ``oneclick`` (default; the CLI's ``evaluate``): the prompt is built from the reference mask of the
  seed image ONLY - one box and one interior point per connected component of the chosen labels, as
  a person would draw or click - and the engine never sees any other reference while segmenting.
  ``scope="image"`` prompts every image/slice that holds the object (the per-image upper bound),
  ``"volume"`` one slice per volume, ``"dataset"`` one slice in total.
* ``nmt``: the "No More Training" protocol, per slice: positive points at each component's centroid
  (moved inside), one negative point at the centre of the components' box, plus that box.

Masks and metrics are streamed: only the case in progress is held in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .engine import Engine, PropagationConfig, make_engine, segment
from .errors import InputError, check_cancel
from .metrics import MetricAccumulator
from .prompts import nmt_prompt, prompt_from_reference, seed_slice
from .types import Dataset, ObjectPrompt, Scope, SlicePrompt, SliceResult, Volume

__all__ = ["EvalConfig", "evaluate", "reference_prompt"]

log = logging.getLogger(__name__)

Protocol = Literal["oneclick", "box", "click", "nmt"]


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        model: backend name (``auto``, ``litemedsam``, ``mobilesam``, ``sam_vit_l``, ``sam2.1_hiera_t``...).
        scope: ``image`` | ``volume`` | ``dataset``.
        labels: reference labels that form the foreground (None = every non-zero label, merged).
        seed: how the seed slice is chosen inside a volume: ``largest`` | ``centre`` | ``first``.
        protocol: ``oneclick`` = one box + one interior point per component; ``box`` = boxes only;
            ``click`` = interior points only; ``nmt`` = the "No More Training" prompt set.
        strategy: dataset-scope strategy, ``transfer`` | ``chain``.
        window: display window for model frames.
        seed_case: index of the case the user prompts in dataset scope.
        jitter_px: simulated-user imprecision, pixels (0 = exact); uses ``rng_seed``.
        write_masks: write predicted masks to ``out/masks``.
    """

    model: str = "auto"
    scope: Scope = "volume"
    labels: Sequence[int] | None = None
    seed: str = "largest"
    protocol: Protocol = "oneclick"
    strategy: str = "transfer"
    window: Any = None
    seed_case: int = 0
    jitter_px: float = 0.0
    rng_seed: int = 0
    write_masks: bool = True
    config: PropagationConfig | None = None


def _foreground(ref: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    if labels is None:
        return ref != 0
    return np.isin(ref, list(labels))


def reference_prompt(
    ref_slice: np.ndarray,
    *,
    labels: Sequence[int] | None,
    protocol: Protocol,
    slice_index: int,
    volume_index: int = 0,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0.0,
) -> SlicePrompt | None:
    """The prompt a simulated user gives on one reference slice, or None when it holds no object.

    Args:
        ref_slice: integer label map ``(rows, cols)``.
        labels: foreground labels (None = all non-zero).
        protocol: see :class:`EvalConfig`.
    """
    from .prompts import jitter

    fg = _foreground(ref_slice, labels).astype(np.uint8)
    if not fg.any():
        return None
    if protocol == "nmt":
        objs: tuple[ObjectPrompt, ...] = (nmt_prompt(fg),)
    else:
        objs = tuple(prompt_from_reference(fg))
        if protocol == "box":
            objs = tuple(ObjectPrompt(box=o.box, object_id=o.object_id) for o in objs if o.box is not None)
        elif protocol == "click":
            objs = tuple(ObjectPrompt(points=o.points, object_id=o.object_id) for o in objs if o.points)
    if not objs:
        return None
    if rng is not None and jitter_px > 0:
        objs = tuple(jitter(o, rng, jitter_px, fg.shape) for o in objs)
    return SlicePrompt(objs, slice_index=slice_index, volume_index=volume_index)


def evaluate(
    images: Dataset,
    references: Sequence[Volume | Callable[[], Volume]],
    out_dir: str | Path | None,
    cfg: EvalConfig,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Runs the simulated user over a dataset and scores every case.

    Args:
        images: the cases.
        references: one reference label volume per case (same order), or loaders of them.
        out_dir: where ``metrics.json``, ``metrics.csv`` and ``masks/`` go (None: nothing written).
        cfg: what to evaluate.
        progress: called as ``progress(slices_done, slices_total, case_name)``.
        cancel: an Event to stop early.
        engine: reuse an engine (its models and embedding cache).

    Returns:
        The ``metrics.json`` content: ``{"summary": {...}, "cases": [...]}``.
    """
    if len(images) != len(references):
        raise InputError(f"{len(images)} images but {len(references)} references; give one reference per image.")
    if len(images) == 0:
        raise InputError("No images to evaluate.")

    def ref_of(i: int) -> Volume:
        r = references[i]
        return r if isinstance(r, Volume) else r()

    rng = np.random.default_rng(cfg.rng_seed)
    out = Path(out_dir) if out_dir is not None else None
    writer = None
    if out is not None and cfg.write_masks:
        from .io.writers import ResultWriter

        writer = ResultWriter(out)
    acc = MetricAccumulator()
    case_rows: list[dict[str, Any]] = []
    prompts_total = 0
    slices_total = 0
    t0 = time.perf_counter()
    merged_labels = None if cfg.labels is None else list(cfg.labels)

    # Which prompt(s) for which case, by scope.
    def case_seed_prompt(i: int, vol: Volume, ref: Volume) -> SlicePrompt | None:
        fg = _foreground(ref.array, merged_labels)
        if not fg.any():
            return None
        k = seed_slice(fg.astype(np.uint8), how=cfg.seed)
        return reference_prompt(
            ref.array[k], labels=merged_labels, protocol=cfg.protocol, slice_index=k, volume_index=i,
            rng=rng, jitter_px=cfg.jitter_px,
        )

    eng = engine
    load_s = 0.0

    def build(sp: SlicePrompt) -> Engine:
        nonlocal load_s
        t = time.perf_counter()
        e = make_engine(sp, cfg.model, "auto", cfg.config)
        load_s += time.perf_counter() - t
        return e

    def run_case(i: int, vol: Volume, ref: Volume, results) -> None:
        nonlocal slices_total
        pred = np.zeros(vol.shape, np.uint8)
        flags: list[str] = []
        for res in results:
            pred[res.slice_index] = res.labels
            flags.extend(f"slice {res.slice_index}: {f}" for f in res.flags)
            slices_total += 1
            if writer is not None:
                writer.add(res, vol)
            if progress is not None:
                progress(slices_total, -1, vol.name)
        finish_case(i, vol, ref, pred, flags)

    def finish_case(i: int, vol: Volume, ref: Volume, pred: np.ndarray, flags: list[str], prompts: int = 0) -> None:
        fg = _foreground(ref.array, merged_labels)
        row = acc.add(vol.name, pred != 0, fg, spacing=_array_spacing(vol))
        row = dict(row)
        from .metrics import per_slice

        if vol.n_slices > 1:
            row["slice_dice"] = [round(float(d), 4) for d in per_slice(pred != 0, fg)]
        if "hd95" in row:
            row["hd95_mm"] = row.pop("hd95")
        if vol.source is not None and vol.source.extra.get("path"):
            row["image_path"] = str(vol.source.extra["path"])
        row.update({
            "images": int(vol.n_slices),
            "prompts": prompts,
            "flags": flags,
            "slices_with_object": int(fg.reshape(fg.shape[0], -1).any(axis=1).sum()),
        })
        case_rows.append(row)

    if cfg.scope == "image":
        for i in range(len(images)):
            vol, ref = images[i], ref_of(i)
            _check_pair(vol, ref)
            pred = np.zeros(vol.shape, np.uint8)
            n_prompts = 0
            for k in range(vol.n_slices):
                check_cancel(cancel)
                sp = reference_prompt(
                    ref.array[k], labels=merged_labels, protocol=cfg.protocol, slice_index=k, volume_index=0,
                    rng=rng, jitter_px=cfg.jitter_px,
                )
                if sp is not None:
                    if eng is None:
                        eng = build(sp)
                    for res in segment(Dataset([vol]), sp, scope="image", engine=eng, window=cfg.window):
                        pred[k] = res.labels
                        res.volume_index = i
                        if writer is not None:
                            writer.add(res, vol)
                    n_prompts += 1
                elif writer is not None:
                    writer.add(SliceResult(i, k, pred[k], {}, [], False, vol.name, vol.n_slices), vol)
                slices_total += 1
                if progress is not None:
                    progress(slices_total, -1, vol.name)
            prompts_total += n_prompts
            finish_case(i, vol, ref, pred, [], n_prompts)
    elif cfg.scope == "volume":
        for i in range(len(images)):
            vol, ref = images[i], ref_of(i)
            _check_pair(vol, ref)
            sp = case_seed_prompt(i, vol, ref)
            if sp is None:
                log.warning("%s: the reference holds no foreground; predicted empty", vol.name)
                finish_case(i, vol, ref, np.zeros(vol.shape, np.uint8), ["no foreground in reference"], 0)
                continue
            sp = replace(sp, volume_index=0)
            if eng is None:
                eng = build(sp)
            prompts_total += 1
            results = segment(Dataset([vol]), sp, scope="volume", engine=eng, window=cfg.window, cancel=cancel)
            run_case(i, vol, ref, (_renumber(r, i) for r in results))
            case_rows[-1]["prompts"] = 1
    elif cfg.scope == "dataset":
        s = cfg.seed_case
        if not 0 <= s < len(images):
            raise InputError(f"seed case {s} does not exist; the dataset has {len(images)} cases.")
        sp = case_seed_prompt(s, images[s], ref_of(s))
        if sp is None:
            raise InputError(f"{images[s].name}: its reference holds no foreground; choose another seed case.")
        if eng is None:
            eng = build(sp)
        prompts_total = 1
        current: dict[str, Any] = {}
        for res in segment(
            images, sp, scope="dataset", engine=eng, window=cfg.window, strategy=cfg.strategy,  # type: ignore[arg-type]
            cancel=cancel,
        ):
            if current.get("i") != res.volume_index:
                if current:
                    finish_case(current["i"], current["vol"], current["ref"], current["pred"], current["flags"],
                                1 if current["i"] == s else 0)
                vol = images[res.volume_index]
                ref = ref_of(res.volume_index)
                _check_pair(vol, ref)
                current = {"i": res.volume_index, "vol": vol, "ref": ref,
                           "pred": np.zeros(vol.shape, np.uint8), "flags": []}
            current["pred"][res.slice_index] = res.labels
            current["flags"].extend(f"slice {res.slice_index}: {f}" for f in res.flags)
            slices_total += 1
            if writer is not None:
                writer.add(res, current["vol"])
            if progress is not None:
                progress(slices_total, -1, current["vol"].name)
        if current:
            finish_case(current["i"], current["vol"], current["ref"], current["pred"], current["flags"],
                        1 if current["i"] == s else 0)
    else:
        raise InputError(f"Unknown scope {cfg.scope!r}; use image, volume or dataset.")

    seconds = time.perf_counter() - t0 - load_s
    if writer is not None:
        writer.close()
    summ = acc.summary()
    model_name = eng.backend.info.name if eng is not None else cfg.model
    summary = {
        "model": model_name,
        "scope": cfg.scope,
        "strategy": cfg.strategy if cfg.scope == "dataset" else None,
        "protocol": cfg.protocol,
        "prompts": prompts_total,
        "images": slices_total,
        "cases": len(case_rows),
        "dice_mean": summ.get("dice_mean"),
        "jaccard_mean": summ.get("jaccard_mean"),
        "dice_pooled": summ.get("dice_pooled"),
        "jaccard_pooled": summ.get("jaccard_pooled"),
        "dice_slice_mean": summ.get("dice_slice_mean"),
        "hd95_mean_mm": summ.get("hd95_mean"),
        "seconds": round(seconds, 3),
        "model_load_seconds": round(load_s, 3),
        "images_per_second": round(slices_total / seconds, 4) if seconds > 0 else None,
        "prompts_per_slice_workflow": _per_slice_prompts(case_rows),
    }
    if summary["prompts_per_slice_workflow"]:
        summary["prompts_saved_pct"] = round(100.0 * (1 - prompts_total / summary["prompts_per_slice_workflow"]), 3)
    result = {"summary": summary, "cases": [_case_json(r) for r in case_rows]}
    if out is not None:
        from .io.writers import write_json, write_metrics_csv

        write_json(result, out / "metrics.json")
        write_metrics_csv([_case_csv(r) for r in case_rows], out / "metrics.csv")
    return result


def _per_slice_prompts(rows: list[dict[str, Any]]) -> int:
    return int(sum(r.get("slices_with_object", r.get("images", 0)) for r in rows))


def _case_json(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "name", "dice", "jaccard", "hd95_mm", "images", "prompts", "flags", "slices_with_object", "slice_dice",
        "image_path", "reference_path",
    )
    return {k: r[k] for k in keys if k in r}


def _case_csv(r: dict[str, Any]) -> dict[str, Any]:
    d = _case_json(r)
    d["flags"] = len(d.get("flags", []))
    d.pop("slice_dice", None)
    return d


def _renumber(res: SliceResult, i: int) -> SliceResult:
    res.volume_index = i
    return res


def _array_spacing(vol: Volume) -> tuple[float, float, float]:
    c, r, s = vol.spacing
    return (s, r, c)


def _check_pair(vol: Volume, ref: Volume) -> None:
    if vol.shape != ref.shape:
        from .errors import ReferenceMismatchError

        raise ReferenceMismatchError(
            f"{vol.name}: reference shape {ref.shape} differs from the image's {vol.shape} (slices, rows, cols); "
            "give the reference mask made for this image."
        )


def write_summary_line(result: dict[str, Any]) -> str:
    """A one-line human summary of an evaluation result."""
    s = result["summary"]
    return (
        f"{s['model']} scope={s['scope']} prompts={s['prompts']} images={s['images']} "
        f"dice_mean={s['dice_mean']:.4f} jaccard_mean={s['jaccard_mean']:.4f} ({s['seconds']:.1f} s)"
    )

