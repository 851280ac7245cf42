"""Fewer decoder calls at dataset scope: Dice and cost of smaller candidate sets on the same embeddings.

A dataset-scope X-ray run asks LiteMedSAM's decoder about 25 times an image: 3 prior margins, each
refined once, per lung, the lower side searched at 3 offsets, and the exemplar pass again on weak
cases. This runs the product's dataset scope (``promptonce.engine.segment(..., scope="dataset")``)
under ``PropagationConfig`` variants, each from the same seed images on the same cached embeddings:
Dice per seed (mean over the non-seed images), decoder calls per image, seconds, and the cost ratio
(encoding + the seed's run, over a cold per-image run: encoding + one reference box per image).

    .venv/bin/python benchmarks/transfer_budget.py --start 0 --count 100 --seeds 3 \
        --variants '{"default": {}, "lean": {"prior_margins": [0.0, 0.05], "side_search_offsets": [-0.05, 0.15]}}' \
        --out benchmarks/results/transfer_budget_tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptonce.engine import segment  # noqa: E402
from promptonce.engine import pairs, predict, prior_mask, walk  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.metrics import dice  # noqa: E402
from promptonce.types import Dataset  # noqa: E402

from _xrays import add_range_args, add_seed_args, encoded_engine, load_range, seed_indices, with_overrides  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=3)
    ap.add_argument("--variants", default='{"default": {}}', help="name -> PropagationConfig overrides (JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_budget.json")
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    ds = Dataset(vols)
    eng, t_encode = encoded_engine(vols)
    t0 = time.perf_counter()
    for i in range(len(vols)):  # the per-image run: a reference box on every image
        sp = reference_prompt(refs[i].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=i)
        next(iter(segment(ds, sp, scope="image", engine=eng)))
    t_image = t_encode + time.perf_counter() - t0
    calls = [0]
    real = predict.predict

    def counted(*a, **k):  # measurement only: every decoder request of the engine
        calls[0] += 1
        return real(*a, **k)

    for module in (predict, prior_mask, pairs, walk):
        module.predict = counted
    base = eng.config
    seeds = seed_indices(len(vols), args.seeds, args.seed_images)
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "start": args.start, "count": len(vols),
                 "encode_seconds": t_encode, "per_image_cold_seconds": t_image, "variants": {}}
    for name, over in variants.items():
        eng.config = with_overrides(base, over)
        runs = []
        for s in seeds:
            sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
            calls[0] = 0
            t = time.perf_counter()
            d = [float(dice(r.labels > 0, refs[r.volume_index]))
                 for r in segment(ds, sp, scope="dataset", engine=eng) if r.volume_index != s]
            secs = time.perf_counter() - t
            runs.append({"seed": paths[s].name, "dice": float(np.mean(d)), "worst_image": float(min(d)),
                         "below_0.85": int(sum(x < 0.85 for x in d)), "seconds": secs,
                         "decoder_calls_per_image": calls[0] / (len(vols) - 1), "cost_ratio": (secs + t_encode) / t_image})
            print(name, runs[-1], flush=True)
        out["variants"][name] = {"overrides": over, "dice_mean": float(np.mean([r["dice"] for r in runs])),
                                 "dice_worst_seed": float(min(r["dice"] for r in runs)),
                                 "decoder_calls_per_image": float(np.mean([r["decoder_calls_per_image"] for r in runs])),
                                 "cost_ratio_mean": float(np.mean([r["cost_ratio"] for r in runs])), "runs": runs}
    for module in (predict, prior_mask, pairs, walk):
        module.predict = real
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in out["variants"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
