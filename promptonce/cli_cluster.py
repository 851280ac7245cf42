"""The ``--executor ray`` path of ``promptonce segment`` and ``promptonce evaluate``.

Kept apart from :mod:`promptonce.cli` so that the default (local) commands stay as they are: the CLI
hands over here only when ``--executor ray`` is given. A run is resumable: the same command again
skips the cases already written (see :mod:`promptonce.runstore`). Exit code 1 when any case was
skipped (the summary names them and their reasons).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["add_executor_options", "wants_cluster", "segment_distributed", "evaluate_distributed", "score_written"]

log = logging.getLogger(__name__)


def add_executor_options(sp: argparse.ArgumentParser) -> None:
    """Adds ``--executor``, ``--address``, ``--workers``, ``--threads-per-worker``, ``--gpus-per-worker``."""
    g = sp.add_argument_group("cluster (dataset scope; resumable: rerun the same command to resume)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a Ray cluster (pip install 'promptonce[ray]')")
    g.add_argument("--address", default=None,
                   help="Ray cluster: auto (a `ray start` cluster on this node) or ray://HOST:10001; default: a new local Ray")
    g.add_argument("--workers", type=int, default=None, help="Ray workers, one model each (default: CPUs / threads)")
    g.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads of each Ray worker's model")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (GPU models)")
    g.add_argument("--retries", type=int, default=2, help="tries again for a failed case before it is skipped")


def wants_cluster(args: argparse.Namespace) -> bool:
    """True for ``--executor ray``; refuses the cluster options without it (they would be ignored)."""
    if args.executor == "local" and (args.address or args.workers or args.gpus_per_worker):
        raise InputError("--address, --workers and --gpus-per-worker need --executor ray.")
    return args.executor != "local"


def _check(args: argparse.Namespace) -> None:
    if args.scope != "dataset":
        raise InputError(f"--executor ray runs dataset scope only; add --scope dataset (got --scope {args.scope}).")
    if args.strategy != "transfer":
        raise InputError("--executor ray needs --strategy transfer: 'chain' seeds each case from the one before, "
                         "so its cases cannot run in parallel.")


def _bar(quiet: bool, total: int, desc: str):
    """A tqdm bar on a terminal (count and rate), like the local commands'; None otherwise."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="case", file=sys.stderr)


def _run(args: argparse.Namespace, dataset, prompt, inputs: Sequence[str], desc: str, options: dict[str, Any]):
    from .distributed import run_dataset

    bar = _bar(args.quiet, len(dataset), desc)
    last = [0]

    def progress(done: int, total: int, name: str) -> None:
        if bar is not None:
            if bar.total != total:
                bar.reset(total=total)
                last[0] = 0
            bar.update(done - last[0])
            last[0] = done
            bar.set_postfix_str(name[-24:], refresh=False)

    try:
        return run_dataset(
            dataset, prompt, args.out, model=args.model, window=args.window, executor=args.executor,
            address=args.address, workers=args.workers, threads=args.threads_per_worker,
            num_gpus=args.gpus_per_worker, retries=args.retries, inputs=inputs, options=options, progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()


def _report(args: argparse.Namespace, summary) -> int:
    if not args.quiet:
        for line in summary.lines():
            print(line, file=sys.stderr)
    return 0 if summary.ok else 1


def segment_distributed(args: argparse.Namespace, dataset, prompt, refs: list[Path] | None) -> int:
    """``promptonce segment ... --scope dataset --executor ray``."""
    _check(args)
    summary = _run(args, dataset, prompt, list(args.inputs), "segment", {"images_as": args.images_as,
                                                                        "time_index": args.time_index})
    if refs is not None:
        result = score_written(dataset, refs, Path(args.out), labels=None, model=args.model,
                               seconds=summary.seconds, images=summary.images, prompts=1)
        if not args.quiet and result["summary"]["dice_mean"] is not None:
            s = result["summary"]
            print(f"dice_mean={s['dice_mean']:.4f} jaccard_mean={s['jaccard_mean']:.4f}", file=sys.stderr)
    return _report(args, summary)


def evaluate_distributed(args: argparse.Namespace, images, ref_paths: list[Path | tuple[Path, ...]],
                         labels: list[int] | None) -> int:
    """``promptonce evaluate ... --scope dataset --executor ray``: the simulated user's prompt on the
    seed case's reference, the run on the cluster, then every case scored from the written masks."""
    from .evaluate import reference_prompt
    from .io.readers import load_reference, reference_paths_json
    from .io.writers import write_json
    from .prompts import seed_slice

    _check(args)
    if args.protocol == "nmt" and args.scope != "dataset":
        raise InputError("--protocol nmt prompts every slice; it does not run with --executor ray.")
    if getattr(args, "no_masks", False):
        log.warning("--no-masks is ignored with --executor ray: the written masks are the run's record (resume)")
    if getattr(args, "seed_sweep", None):
        raise InputError("--seed-sweep runs several evaluations; it does not run with --executor ray yet "
                         "(run each --seed-case with --executor ray instead).")
    s = int(getattr(args, "seed_case", 0) or 0)
    if not 0 <= s < len(images):
        raise InputError(f"seed case {s} does not exist; the dataset has {len(images)} cases.")
    vol = images[s]
    ref = load_reference(ref_paths[s], vol)
    fg = ref.array != 0 if labels is None else np.isin(ref.array, labels)
    if not fg.any():
        raise InputError(f"{vol.name}: its reference holds no foreground; choose another seed case.")
    k = seed_slice(fg.astype(np.uint8), how=args.seed)
    prompt = reference_prompt(ref.array[k], labels=labels, protocol=args.protocol, slice_index=k, volume_index=s,
                              rng=np.random.default_rng(args.rng_seed), jitter_px=args.jitter)
    if prompt is None:
        raise InputError(f"{vol.name}: no prompt could be made from its reference; choose another seed case.")
    del vol, ref, fg
    options = {"images_as": args.images_as, "time_index": args.time_index, "protocol": args.protocol,
               "seed": args.seed, "labels": labels, "jitter": args.jitter, "rng_seed": args.rng_seed,
               "limit": args.limit}
    summary = _run(args, images, prompt, list(args.images) + list(args.references), "evaluate", options)
    result = score_written(images, ref_paths, Path(args.out), labels=labels, model=args.model,
                           seconds=summary.seconds, images=summary.images, prompts=1, seed_case=s)
    write_json(
        {"command": "evaluate", "executor": summary.executor, "images": [str(p) for p in args.images],
         "references": [str(p) for p in args.references],
         "reference_paths": reference_paths_json(images.names, ref_paths),
         "config": {k: v for k, v in vars(args).items() if k != "func" and _jsonable(v)}},
        Path(args.out) / "run.json",
    )
    if not args.quiet and result["summary"]["dice_mean"] is not None:
        s_ = result["summary"]
        print(f"{s_['model']} scope=dataset prompts=1 images={s_['images']} dice_mean={s_['dice_mean']:.4f} "
              f"jaccard_mean={s_['jaccard_mean']:.4f}", file=sys.stderr)
    return _report(args, summary)


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list))


def score_written(
    dataset,
    ref_paths: Sequence[Path | tuple[Path, ...]],
    out: Path,
    *,
    labels: list[int] | None,
    model: str,
    seconds: float,
    images: int,
    prompts: int,
    seed_case: int = 0,
) -> dict[str, Any]:
    """Scores every written case of a run against its reference, reading the masks back from disk
    (one case in memory at a time); writes ``metrics.json`` and ``metrics.csv`` into ``out``.

    Args:
        dataset: the run's cases.
        ref_paths: one reference mask file per case (same order).
        out: the run's output folder (its ``run/`` log says which files each case wrote).
        labels: reference labels forming the foreground (None = every non-zero label).
        model, seconds, images, prompts: copied into the summary.
        seed_case: the case the simulated user prompted (its row gets ``prompts=1``).

    Returns:
        ``{"summary": {...}, "cases": [...]}``; cases without written masks (skipped) are left out and
        named in ``summary["missing"]``.
    """
    from .engine.set_check import object_areas
    from .evaluate import add_set_flags
    from .io.readers import load_reference
    from .io.writers import write_json, write_metrics_csv
    from .metrics import MetricAccumulator
    from .runstore import RunStore

    store = RunStore(out)
    store.open_existing()
    acc = MetricAccumulator()
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for i in range(len(dataset)):
        rec = store.records.get(i)
        if rec is None or rec.status == "failed":
            missing.append(dataset.names[i])
            continue
        vol = dataset[i]
        ref = load_reference(ref_paths[i], vol)
        pred = _read_mask([out / f["path"] for f in rec.files], vol)
        fg = ref.array != 0 if labels is None else np.isin(ref.array, labels)
        c, r, s = vol.spacing
        row = dict(acc.add(vol.name, pred != 0, fg, spacing=(s, r, c)))
        if "hd95" in row:
            row["hd95_mm"] = row.pop("hd95")
        row.update({"images": int(vol.n_slices), "prompts": 1 if i == seed_case else 0, "flags": list(rec.flags),
                    "slices_with_object": int(fg.reshape(fg.shape[0], -1).any(axis=1).sum()),
                    "_areas": object_areas(pred)})
        rows.append(row)
    add_set_flags(rows)  # one prompt for the whole set: object ids mean the same object in every case
    summ = acc.summary()
    summary = {
        "model": model, "scope": "dataset", "strategy": "transfer", "prompts": prompts, "images": images,
        "cases": len(rows), "dice_mean": summ.get("dice_mean"), "jaccard_mean": summ.get("jaccard_mean"),
        "dice_pooled": summ.get("dice_pooled"), "jaccard_pooled": summ.get("jaccard_pooled"),
        "dice_slice_mean": summ.get("dice_slice_mean"), "hd95_mean_mm": summ.get("hd95_mean"),
        "seconds": seconds, "images_per_second": round(images / seconds, 4) if seconds and images else None,
        "missing": missing,
    }
    keys = ("name", "dice", "jaccard", "hd95_mm", "images", "prompts", "flags", "slices_with_object")
    cases = [{k: r[k] for k in keys if k in r} for r in rows]
    result = {"summary": summary, "cases": cases}
    write_json(result, out / "metrics.json")
    write_metrics_csv([{**c, "flags": len(c.get("flags", []))} for c in cases], out / "metrics.csv")
    return result


def _read_mask(files: Sequence[Path], vol) -> np.ndarray:
    """A written case's label map ``(slices, rows, cols)`` uint8, from its NIfTI or its PNGs (slice order)."""
    from PIL import Image

    from .io.readers import load_reference

    if len(files) == 1 and not str(files[0]).lower().endswith(".png"):
        return np.asarray(load_reference(files[0], vol).array, np.uint8)
    slices = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im)
        slices.append(np.where(a == 255, 1, a).astype(np.uint8) if a.max(initial=0) == 255 else a.astype(np.uint8))
    return np.stack(slices)
