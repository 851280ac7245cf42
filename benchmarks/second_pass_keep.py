"""Which result the exemplar pass should keep on an X-ray, and how its atlases should be weighted.

The exemplar pass (``DatasetTransfer.second_pass``) segments a weak case again from the fused priors
of the user's seed and the case's ``EXEMPLARS_PER_CASE`` most similar exemplars. Until the sixteenth
round it kept that result only when its confidence beat the first pass's; but a single image's
first-pass confidence is its agreement with the seed's warped mask, the prior it was drawn from, so
where the seed is unlike the case both are wrong the same way and the first pass looks confident.

This runs the first pass of each seed's dataset-scope run (LiteMedSAM, the seed's reference box, the
product's own ``DatasetTransfer``), then, for every case with a first-pass confidence below 0.90,
the second pass from the product's sources (seed + 3 most similar exemplars) once for each fusion
power ``p`` (``transfer.FUSION_POWER``: each atlas weighted by its registration similarity ** p; the
product: p = 1). Per seed, offline from those records: the mean Dice for each redo threshold T
(0.80, 0.85, 0.90) and keep rule

* ``conf``: the second pass when its confidence beats the first's (the product until now);
* ``mX``: the second pass unless its confidence is more than X below the first's;
* ``always``: the second pass (the product now, on single images, with T = 0.90);

and how many cases each T redoes.

    .venv/bin/python benchmarks/second_pass_keep.py --start 0 --count 100 --seed-images 0,11,66 \\
        --out benchmarks/results/second_pass_keep_tune.json        # tuning, about 30 minutes
    .venv/bin/python benchmarks/second_pass_keep.py --start 366 --count 200 --seed-images 199,0 \\
        --powers 1,12 --out benchmarks/results/second_pass_keep_report.json   # held out, about 35 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, add_seed_args, first_passes, sweep_seeds  # noqa: E402

THRESHOLDS = (0.80, 0.85, 0.90)
REDO_BELOW = max(THRESHOLDS)
MARGINS = (0.05, 0.1, 0.2)


def run_seed(eng, vols, refs, s: int, powers: tuple[int, ...]) -> dict:
    """First pass of every case from seed ``s``; the second pass of its weak cases for each power."""
    from promptonce.engine import transfer as T
    from promptonce.metrics import dice

    original = T.FUSION_POWER
    try:
        t0 = time.perf_counter()
        tr, outs, ex = first_passes(eng, vols, refs, s)
        cases = []
        for i, o in outs.items():
            row = {"image": o.name, "dice1": float(dice(o.results[0].labels > 0, refs[i])), "conf1": o.confidence}
            if ex and (o.confidence or 0.0) < REDO_BELOW:
                gray = eng.frames(vols[i], None).gray(0)
                pool = T.rank_by_similarity(gray, (e for e in ex if e.name != o.name))
                sources = [tr.seed, *pool[:T.EXEMPLARS_PER_CASE]]
                for p in powers:
                    T.FUSION_POWER = p
                    out = tr.segment_case(vols[i], i, sources, None, passes=2)
                    row[f"p{p}"] = {"dice": float(dice(out.results[0].labels > 0, refs[i])), "conf": out.confidence}
            cases.append(row)
    finally:
        T.FUSION_POWER = original
    return {"seed_index": s, "exemplars": len(ex), "seconds": time.perf_counter() - t0, "cases": cases}


def kept(c: dict, second: dict | None, threshold: float, rule: str) -> float:
    """The Dice a case ends with under a redo threshold and a keep rule (``conf``, ``always``, ``m<margin>``)."""
    c1 = c["conf1"] or 0.0
    if second is None or c1 >= threshold:
        return c["dice1"]
    c2 = second["conf"] or 0.0
    take = {"conf": c2 > c1, "always": True}.get(rule)
    if take is None:
        take = c2 > c1 - float(rule[1:])
    return second["dice"] if take else c["dice1"]


def summarise(run: dict, powers: tuple[int, ...]) -> dict:
    """Mean Dice of the first pass alone and of each power x threshold x keep rule; cases redone per threshold."""
    cases = run["cases"]
    out: dict = {"first_pass_only": round(float(np.mean([c["dice1"] for c in cases])), 4)}
    rules = ("conf", *(f"m{m}" for m in MARGINS), "always")
    for p in powers:
        for t in THRESHOLDS:
            for rule in rules:
                out[f"p{p}@{t:.2f}/{rule}"] = round(float(np.mean([kept(c, c.get(f"p{p}"), t, rule) for c in cases])), 4)
    for t in THRESHOLDS:
        out[f"redone_below_{t:.2f}"] = sum((c["conf1"] or 0.0) < t for c in cases)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=3)
    ap.add_argument("--powers", default="1,4,12", help="fusion powers to try (1 = the product)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "second_pass_keep.json")
    args = ap.parse_args(argv)
    powers = tuple(int(x) for x in args.powers.split(","))

    def run_one(eng, vols, refs, s):  # noqa: ANN001
        run = run_seed(eng, vols, refs, s, powers)
        return {**run, "summary": summarise(run, powers)}

    return sweep_seeds(args, argv, run_one)


if __name__ == "__main__":
    raise SystemExit(main())
