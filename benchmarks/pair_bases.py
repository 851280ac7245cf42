"""Lung bases levelled or flagged (``PropagationConfig.pair_base_gap``): dataset-scope X-rays with and without.

A seed whose two lungs end at different heights passes that to every case. This benchmark runs the
full dataset scope (``promptonce.engine.segment(..., scope="dataset")``: first pass, exemplar pass,
flags) over a range of Shenzhen X-rays from a few seeds, once with ``pair_base_gap=0`` (off) and once
with the default, on one engine (every image encoded once). Seeds: ``--seeds`` spread evenly over the
range, plus (``--uneven-seed``, on by default) the image whose reference lung bases are furthest apart
(:func:`promptonce.engine.pairs.base_gap`), the seed that would mislead most; the reference masks'
gap distribution over the range is reported too.

Per seed and configuration: mean and worst Dice (both lungs as one mask, as ``promptonce evaluate``),
cases below 0.85, case flag recall/precision (:mod:`promptonce.flagscore`), cases whose lower ends
stay more than the default ``pair_base_gap`` apart on the result (``uneven_flagged``; with levelling on,
the cases that carried the "ends ... above" flag before ``engine.pairs.FLAG_UNEVEN_BASES`` turned it
off; result files written before counted that flag, and 0 with levelling off), decoder calls an image.

    .venv/bin/python benchmarks/pair_bases.py --start 100 --count 40 --seeds 2 \\
        --out benchmarks/results/pair_bases_report.json        # ~19 minutes on 2 cores
    .venv/bin/python benchmarks/pair_bases.py --start 0 --count 100 --seed-images 90,0,30,60 \
        --no-uneven-seed --out benchmarks/results/pair_bases_tune.json   # the tuning seeds, ~55 minutes

Tuning was done on images 0-99; report on images >= 100.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, load_range, lungs, write_result  # noqa: E402

from promptonce.engine import make_engine, segment  # noqa: E402
from promptonce.engine.pairs import base_gap  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.flagscore import flag_score  # noqa: E402
from promptonce.metrics import dice  # noqa: E402
from promptonce.types import Dataset  # noqa: E402


def reference_gap(ref: np.ndarray) -> float | None:
    """The reference's two lungs' :func:`base_gap` (None with fewer than two components)."""
    parts = lungs(ref)
    return base_gap(parts[0], parts[1]) if len(parts) == 2 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=40)
    ap.add_argument("--seeds", type=int, default=2, help="seed images spread evenly over the range")
    ap.add_argument("--seed-images", default=None,
                    help="comma-separated seed images (indices within the range) instead of --seeds")
    ap.add_argument("--no-uneven-seed", dest="uneven_seed", action="store_false",
                    help="do not add the image with the most uneven reference lung bases as a seed")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pair_bases.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    gaps = [reference_gap(r) for r in refs]
    if args.seed_images:
        seeds = sorted({int(x) for x in args.seed_images.split(",")})
        if not all(0 <= x < len(vols) for x in seeds):
            ap.error(f"--seed-images must lie in 0..{len(vols) - 1}")
    else:
        seeds = sorted({int(round(x)) for x in np.linspace(0, len(vols) - 1, args.seeds)})
    if args.uneven_seed:
        seeds = sorted({*seeds, int(np.argmax([g if g is not None else -1.0 for g in gaps]))})
    eng = make_engine(None, "litemedsam", None)
    eng.cache_size = len(vols) + 4
    calls = [0]
    real = eng.backend.predict

    def counted(*a, **k):  # decoder calls (measurement only)
        calls[0] += 1
        return real(*a, **k)

    eng.backend.predict = counted
    default = eng.config
    configs = {"off": replace(default, pair_base_gap=0.0), f"on ({default.pair_base_gap}, default)": default}
    t0 = time.perf_counter()
    runs = []
    for s in seeds:
        sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
        for label, cfg in configs.items():
            eng.config = cfg
            calls[0] = 0
            t = time.perf_counter()
            rows = []
            for r in segment(Dataset(list(vols)), sp, scope="dataset", engine=eng):
                if r.volume_index == s:
                    continue
                gap = base_gap(r.labels == 1, r.labels == 2)  # None when a lung is empty
                rows.append({"image": paths[r.volume_index].name, "dice": float(dice(r.labels > 0, refs[r.volume_index])),
                             "flags": list(r.flags), "base_gap": gap,
                             "uneven_flag": gap is not None and gap > default.pair_base_gap})
            d = np.array([x["dice"] for x in rows])
            fs = flag_score([x["dice"] for x in rows], [bool(x["flags"]) for x in rows])
            run = {"seed": paths[s].name, "seed_reference_gap": gaps[s], "config": label,
                   "dice_mean": float(d.mean()), "dice_worst": float(d.min()), "below_0.85": int((d < 0.85).sum()),
                   "flag_recall": fs.recall, "flag_precision": fs.precision, "flagged": fs.flagged,
                   "uneven_flagged": int(sum(x["uneven_flag"] for x in rows)),
                   "decoder_calls_per_image": calls[0] / max(len(rows), 1), "seconds": time.perf_counter() - t,
                   "rows": rows}
            runs.append(run)
            print(f"seed {paths[s].name} (reference gap {gaps[s] or 0:.2f}), {label}: Dice {run['dice_mean']:.4f} "
                  f"worst {run['dice_worst']:.3f}, <0.85: {run['below_0.85']}, flags {fs.flagged} "
                  f"(recall {fs.recall}, precision {fs.precision}), uneven {run['uneven_flagged']}", flush=True)
    eng.config = default
    g = np.array([x for x in gaps if x is not None])
    write_result(args.out, argv, args.start, len(paths), seconds=time.perf_counter() - t0,
                 reference_gap={"p50": float(np.median(g)), "p90": float(np.percentile(g, 90)),
                                "share_above_0.15": float(np.mean(g > 0.15)),
                                "share_above_0.20": float(np.mean(g > 0.2))},
                 runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
