"""How the seeds of an X-ray seed sweep differ, case by case (no model run: it reads recorded sweeps).

Reads ``cxr_seed_sweep.py`` JSON files (each with one or more seeds' runs over the same images) and,
on the images every run holds, reports: each seed's mean Dice; the mean of each image's best and
worst Dice over the seeds (what a perfect choice among the seeds' results would give, and the worst);
the mean when each image takes the result of the seed whose confidence is highest (can the engine's
confidence choose among atlases?); and for each seed, how much of its gap to the other seeds' median
comes from the cases more than 0.05 below it (is a seed's loss concentrated or spread?).

    .venv/bin/python benchmarks/seed_agreement.py benchmarks/results/cxr_seed_sweep_report466_{0108,0264_0540,0401,0662}_keep2.json \
        --out benchmarks/results/seed_agreement_report466.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _xrays import write_json  # noqa: E402


def agreement(runs: list[dict]) -> dict:
    """The figures above from ``runs`` (``cxr_seed_sweep`` run records with their ``cases``)."""
    seeds = [r["seed"] for r in runs]
    by = [{c["image"]: c for c in r["cases"]} for r in runs]
    images = sorted(set.intersection(*(set(b) for b in by)))
    dice = np.array([[b[i]["dice"] for b in by] for i in images])
    conf = np.array([[b[i]["confidence"] if b[i]["confidence"] is not None else -1.0 for b in by] for i in images])
    out: dict = {"images": len(images), "seeds": seeds,
                 "dice_per_seed": dict(zip(seeds, np.round(dice.mean(0), 4).tolist())),
                 "mean_of_best_seed_per_image": round(float(dice.max(1).mean()), 4),
                 "mean_of_worst_seed_per_image": round(float(dice.min(1).mean()), 4),
                 "mean_of_most_confident_seed_per_image": round(float(dice[np.arange(len(images)), conf.argmax(1)].mean()), 4),
                 "per_seed": {}}
    for j, s in enumerate(seeds):
        gap = dice[:, j] - np.median(np.delete(dice, j, axis=1), axis=1)
        big = gap < -0.05
        out["per_seed"][s] = {"gap_to_others_median": round(float(gap.mean()), 4),
                              "cases_more_than_0.05_below": int(big.sum()),
                              "gap_from_those_cases": round(float(gap[big].sum() / len(images)), 4),
                              "below_0.85": int((dice[:, j] < 0.85).sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="cxr_seed_sweep.py JSON files over the same images")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "seed_agreement.json")
    args = ap.parse_args(argv)
    runs = [r for f in args.sweeps for r in json.loads(f.read_text())["runs"]]
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "sweeps": [f.name for f in args.sweeps], **agreement(runs)}
    write_json(args.out, doc)
    print(json.dumps({k: v for k, v in doc.items() if k != "command"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
