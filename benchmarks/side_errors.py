"""Where a transferred X-ray mask goes wrong: the error of each side of its box, with and without the side search.

For seeds spread over a range of Shenzhen X-rays, the dataset transfer's first pass
(``DatasetTransfer.first_pass``: registration prior, candidates, soft-side extension) segments every
other image, once with ``PropagationConfig.side_search`` off and once with the default (the lung
base searched, :func:`promptonce.engine.prior_mask.search_sides`). For each lung (reference component,
matched to the object that overlaps it most) it records Dice and the offset of each side of the
mask's box from the reference's box, as a fraction of the reference lung's size (positive: further
right / lower). Both configurations share one engine, so every image is encoded once.

    .venv/bin/python benchmarks/side_errors.py --start 100 --count 40 --seeds 2 \\
        --out benchmarks/results/side_errors_report.json

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
from promptonce.engine.transfer import DatasetTransfer  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.metrics import dice  # noqa: E402

SIDES = ("left", "top", "right", "bottom")


def side_offsets(mask: np.ndarray, ref: np.ndarray) -> list[float]:
    """(left, top, right, bottom) of ``mask``'s box minus ``ref``'s, over ``ref``'s size."""
    ys, xs = np.nonzero(ref)
    my, mx = np.nonzero(mask)
    size = float(max(np.ptp(ys), np.ptp(xs)))
    return [(mx.min() - xs.min()) / size, (my.min() - ys.min()) / size,
            (mx.max() - xs.max()) / size, (my.max() - ys.max()) / size]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=40)
    ap.add_argument("--seeds", type=int, default=2, help="seed images spread evenly over the range")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "side_errors.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    eng = make_engine(None, "litemedsam", None)
    eng.cache_size = len(vols) + 4
    default = eng.config
    configs = {"side search off": replace(default, side_search=()), "side search on (default)": default}
    seeds = sorted({int(round(x)) for x in np.linspace(0, len(vols) - 1, args.seeds)})
    t0 = time.perf_counter()
    runs = []
    for s in seeds:
        sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
        seed_labels = next(iter(segment(vols[s], replace(sp, volume_index=0), scope="image", engine=eng))).labels
        for label, cfg in configs.items():
            eng.config = cfg
            transfer = DatasetTransfer(eng, vols[s], sp, seed_labels=seed_labels)
            rows = []
            for i, v in enumerate(vols):
                if i == s:
                    continue
                labels = transfer.first_pass(v, i).results[0].labels
                for ref in lungs(refs[i]):
                    oid = max(transfer.names, key=lambda o: int(np.count_nonzero(ref & (labels == o))))
                    m = labels == oid
                    rows.append({"image": paths[i].name, "dice": float(dice(m, ref)),
                                 "sides": side_offsets(m, ref) if m.any() else None})
            off = np.array([r["sides"] for r in rows if r["sides"] is not None])
            run = {"seed": paths[s].name, "config": label, "lungs": len(rows),
                   "dice_per_lung": float(np.mean([r["dice"] for r in rows])),
                   "side_mean": dict(zip(SIDES, np.round(off.mean(0), 4).tolist())),
                   "side_abs_mean": dict(zip(SIDES, np.round(np.abs(off).mean(0), 4).tolist())), "rows": rows}
            runs.append(run)
            print(f"seed {paths[s].name}, {label}: Dice per lung {run['dice_per_lung']:.4f}, "
                  f"|side offset| {run['side_abs_mean']}", flush=True)
    eng.config = default
    write_result(args.out, argv, args.start, len(paths), seconds=time.perf_counter() - t0, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
