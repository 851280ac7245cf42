"""Can the atlases' own agreement choose a weak X-ray's result? (issue 12, the worst seed)

The exemplar pass redoes a weak case (first-pass confidence below 0.90) from the *fused* priors of the
seed and its 3 most similar exemplars. Here each weak case is also segmented from each of those 4
atlases alone (``DatasetTransfer.segment_case`` with one source), and among the 5 results (fused + 4
single) the medoid is taken: the result with the highest mean Dice with the other four. No reference is
used to choose. Per seed: Dice of the product (the fused result), of the medoid, of the most confident
of the 5, and of the best of the 5 (an oracle, with the reference), cases below 0.85 for each, and the
decoder-call cost (4 more case runs per weak case).

    .venv/bin/python benchmarks/atlas_vote.py --start 0 --count 100 --seed-images 66,0 \\
        --out benchmarks/results/atlas_vote_tune.json         # tuning, ~25 min on 2 cores

Each run's ``gated`` table replays the product's option (``PropagationConfig.atlas_choice_below`` and
``atlas_choice_singles``) from the recorded results: a redone case whose fused result is below the
threshold takes the most confident of the fused result and its ``k`` most similar exemplars alone.
``--replay FILE`` adds that table to an earlier result file (no model run).
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

from _xrays import add_range_args, add_seed_args, first_passes, sweep_seeds  # noqa: E402


def medoid(masks: list[np.ndarray]) -> int:
    """Index of the mask whose mean Dice with the others is highest (the first such on ties)."""
    from promptonce.metrics import dice

    n = len(masks)
    if n < 3:
        return 0
    agree = [np.mean([dice(masks[i], masks[j]) for j in range(n) if j != i]) for i in range(n)]
    return int(np.argmax(agree))


GATES = (0.85, 0.90, 1.01)


def gated(cases: list[dict], gates=GATES, singles=(1, 2, 3)) -> list[dict]:
    """Mean Dice (cases below 0.85, extra case runs) if each redone case below a gate took the most confident
    of its fused result (``dice_all[0]``) and its ``k`` most similar exemplars alone (``dice_all[2:2 + k]``;
    ``[1]`` is the seed alone), the fused result on ties: the product's ``atlas_choice_*`` option replayed."""
    rows = []
    for below in gates:
        for k in singles:
            d, extra = [], 0
            for c in cases:
                if c["redone"] and c["conf_all"][0] < below:
                    pick = [0, *range(2, 2 + k)]
                    extra += k
                    d.append(c["dice_all"][max(pick, key=lambda j: (c["conf_all"][j], -j))])
                else:
                    d.append(c["product"])
            rows.append({"below": below, "singles": k, "dice": round(float(np.mean(d)), 4),
                         "below_0.85": int(sum(x < 0.85 for x in d)), "extra_case_runs": extra})
    return rows


def run_seed(eng, vols, refs, s: int) -> dict:
    """The product's two passes from seed ``s``; for each redone case, the single-atlas results and their medoid."""
    from promptonce.engine import transfer as T
    from promptonce.metrics import dice

    t0 = time.perf_counter()
    tr, first, exemplars = first_passes(eng, vols, refs, s)
    cases = []
    for i, o in first.items():
        row = {"image": o.name, "redone": False}
        if exemplars and tr.needs_second_pass(o):
            fused = tr.second_pass(vols[i], i, exemplars, o)
            gray = eng.frames(vols[i], None).gray(0)
            pool = T.rank_by_similarity(gray, [e for e in exemplars if e.name != vols[i].name])
            outs = [fused] + [tr.segment_case(vols[i], i, [src], None, passes=2)
                              for src in [tr.seed, *pool[:T.EXEMPLARS_PER_CASE]]]
            masks = [x.results[0].labels > 0 for x in outs]
            d = [float(dice(m, refs[i])) for m in masks]
            conf = [x.confidence if x.confidence is not None else -1.0 for x in outs]
            row.update(redone=True, product=d[0], medoid=d[medoid(masks)], most_confident=d[int(np.argmax(conf))],
                       best=max(d), dice_all=d, conf_all=conf)
        else:
            d0 = float(dice(o.results[0].labels > 0, refs[i]))
            row.update(product=d0, medoid=d0, most_confident=d0, best=d0)
        cases.append(row)
    summary = {k: [round(float(np.mean([c[k] for c in cases])), 4), int(sum(c[k] < 0.85 for c in cases))]
               for k in ("product", "medoid", "most_confident", "best")}
    summary["redone"] = sum(c["redone"] for c in cases)
    return {"seed_index": s, "exemplars": len(exemplars), "seconds": time.perf_counter() - t0,
            "summary": summary, "gated": gated(cases), "cases": cases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "atlas_vote.json")
    ap.add_argument("--replay", type=Path, default=None, help="add the gated table to this result file (no model run)")
    args = ap.parse_args(argv)
    if args.replay is not None:
        doc = json.loads(args.replay.read_text())
        for run in doc["runs"]:
            run["gated"] = gated(run["cases"])
            print(run["seed"], *run["gated"], sep="\n  ")
        args.replay.write_text(json.dumps(doc, indent=1))
        return 0
    return sweep_seeds(args, argv, run_seed)


if __name__ == "__main__":
    raise SystemExit(main())
