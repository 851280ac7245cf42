"""Which atlases the exemplar pass should fuse: the seed and exemplars, the exemplars alone, or the most similar.

The product's second pass (``DatasetTransfer.second_pass``) segments a weak case again from the
fused priors of the user's seed plus the case's ``EXEMPLARS_PER_CASE`` most similar exemplars, and
keeps it when its confidence beats the first pass. A seed unlike the rest of the set (the child's
film CHNCXR_0074 among adult films) then still pulls every second pass its way. This runs the first
pass of each seed's dataset-scope run (LiteMedSAM, the seed's reference box, the product's own
``DatasetTransfer``), then, for every case with a first-pass confidence below 0.90, three second
passes on the same embeddings:

* ``seed_and_exemplars``: the product's sources (the seed + the 3 most similar exemplars);
* ``exemplars_only``: the 3 most similar exemplars, without the seed;
* ``ranked``: the 3 most similar of the exemplars and the seed together (the seed only where it is
  among the most similar).

For each variant, the confidence threshold T below which a case is redone (0.80, 0.85, 0.90) and the
rule that keeps the result (``by_confidence``: the better-confidence pass; ``always``: the second
pass), the mean Dice per seed. (When this ran, the product redid X-rays below 0.80 and kept the more
confident pass; since the sixteenth round it redoes them below 0.90 and keeps the second pass.)

    .venv/bin/python benchmarks/exemplar_sources.py --start 0 --count 100 --seed-images 0,11,66 \\
        --out benchmarks/results/exemplar_sources_tune.json      # tuning images, about 35 minutes
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

VARIANTS = ("seed_and_exemplars", "exemplars_only", "ranked")
THRESHOLDS = (0.80, 0.85, 0.90)
REDO_BELOW = max(THRESHOLDS)


def sources_for(variant: str, seed, pool: list, ranked: list, k: int = 3) -> list:
    """The atlases of one variant. ``pool``: the exemplars, most similar first; ``ranked``: the
    exemplars and the seed together, most similar first (the case itself left out of both)."""
    if variant == "seed_and_exemplars":
        return [seed, *pool[:k]]
    if variant == "exemplars_only":
        return pool[:k]
    if variant == "ranked":
        return ranked[:k]
    raise ValueError(variant)


def run_seed(eng, vols, refs, s: int) -> dict:
    """First pass of every case from seed ``s``; the variants' second passes of its weak cases."""
    from promptonce.engine.transfer import EXEMPLARS_PER_CASE, rank_by_similarity
    from promptonce.metrics import dice

    t0 = time.perf_counter()
    tr, outs, ex = first_passes(eng, vols, refs, s)
    cases = []
    for i, o in outs.items():
        row = {"image": o.name, "dice1": float(dice(o.results[0].labels > 0, refs[i])), "conf1": o.confidence}
        if ex and (o.confidence or 0.0) < REDO_BELOW:
            gray = eng.frames(vols[i], None).gray(0)

            def by_similarity(atlases):
                return rank_by_similarity(gray, (e for e in atlases if e.name != o.name))

            pool = by_similarity(ex)
            ranked = by_similarity([tr.seed, *ex])
            row["seed_among_ranked"] = any(e is tr.seed for e in ranked[:EXEMPLARS_PER_CASE])
            for v in VARIANTS:
                src = sources_for(v, tr.seed, pool, ranked, EXEMPLARS_PER_CASE)
                out = tr.segment_case(vols[i], i, src, None, passes=2)
                row[v] = {"dice": float(dice(out.results[0].labels > 0, refs[i])), "conf": out.confidence}
        cases.append(row)
    return {"seed_index": s, "exemplars": len(ex), "seconds": time.perf_counter() - t0, "cases": cases}


def summarise(run: dict) -> dict:
    """Mean Dice of the first pass alone and of each variant x threshold x keep rule."""
    cases = run["cases"]
    out = {"first_pass_only": round(float(np.mean([c["dice1"] for c in cases])), 4)}
    for v in VARIANTS:
        for t in THRESHOLDS:
            for rule in ("by_confidence", "always"):
                d = []
                for c in cases:
                    second = c.get(v)
                    redo = second is not None and (c["conf1"] or 0.0) < t
                    take = redo and (rule == "always" or (second["conf"] or 0.0) > (c["conf1"] or 0.0))
                    d.append(second["dice"] if take else c["dice1"])
                out[f"{v}@{t:.2f}/{rule}"] = round(float(np.mean(d)), 4)
    out["redone_below_0.80"] = sum((c["conf1"] or 0.0) < 0.80 for c in cases)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exemplar_sources.json")
    args = ap.parse_args(argv)

    def run_one(eng, vols, refs, s):  # noqa: ANN001
        run = run_seed(eng, vols, refs, s)
        return {**run, "summary": summarise(run)}

    return sweep_seeds(args, argv, run_one)


if __name__ == "__main__":
    raise SystemExit(main())
