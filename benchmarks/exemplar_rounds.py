"""Does a second round of exemplar memory help a seed unlike the set? (issue 12, the worst seed)

The exemplar pass (``DatasetTransfer.second_pass``) redoes an X-ray whose first-pass confidence is
below 0.90 from the fused priors of the seed and the case's 3 most similar exemplars, the exemplars
being the confident cases of the *first* pass. With a seed unlike the set (Shenzhen 0074, a child's
film) the first pass is wrong the same way on many cases, so the exemplars it yields are fewer and
themselves coloured by the seed. This runs the product's two passes for each seed (LiteMedSAM, the
seed's reference box, the product's own ``DatasetTransfer``: ``"product"`` in the JSON), then chooses
a second exemplar set from every case's latest result (the same order-free rule) and redoes every case
still below 0.90 once more (a second exemplar round):

* ``seed``: from the seed and its 3 most similar exemplars of the new set (``second_pass`` again);
* ``noseed``: from its 4 most similar exemplars of the new set, without the seed.

Per seed: the Dice after the product's passes and after each variant, the redo kept (as a single
image's exemplar pass is; ``*_if_more_confident``: kept only when its confidence beats the first
round's, which is scored the same way), cases below 0.85, the cases redone, the exemplar sets' sizes, and
how the seed registers onto the set against the exemplars (median similarity: a seed unlike the set
registers worse; a candidate rule for when a second round is worth its time).

    .venv/bin/python benchmarks/exemplar_rounds.py --start 0 --count 100 --seed-images 0,11,66 \\
        --out benchmarks/results/exemplar_rounds_tune.json         # tuning, ~20 min on 2 cores
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

VARIANTS = ("seed", "noseed")


def run_seed(eng, vols, refs, s: int, variants: tuple[str, ...] = VARIANTS) -> dict:
    """The product's two passes from seed ``s``, then a second exemplar round (a third pass) of every case
    still below 0.90."""
    from promptonce.engine import transfer as T
    from promptonce.metrics import dice
    from promptonce.registration import register, thumbnail

    t0 = time.perf_counter()
    tr, first, ex1 = first_passes(eng, vols, refs, s)
    idx = list(first)
    final = {i: tr.second_pass(vols[i], i, ex1, o) if ex1 and tr.needs_second_pass(o) else o for i, o in first.items()}
    t2 = time.perf_counter() - t0
    ex2 = T.DatasetTransfer.select_exemplars(o.exemplar for o in final.values())
    cases = []
    seed_sims, ex_sims = [], []
    for i in idx:
        o = final[i]
        gray = eng.frames(vols[i], None).gray(0)
        thumb = thumbnail(gray, T.EXEMPLAR_SIZE)
        seed_sims.append(register(thumb, tr.seed.image).similarity)
        pool = T.rank_by_similarity(gray, (e for e in ex2 if e.name != o.name))
        if pool:
            ex_sims.append(register(thumb, pool[0].image).similarity)
        row = {"image": o.name, "dice1": float(dice(first[i].results[0].labels > 0, refs[i])),
               "conf1": first[i].confidence, "dice2": float(dice(o.results[0].labels > 0, refs[i])),
               "conf2": o.confidence, "passes": o.passes}
        for name in variants if ex2 and tr.needs_second_pass(o) else ():
            if name == "seed":
                out = tr.second_pass(vols[i], i, ex2, o)
            elif pool:
                out = tr.segment_case(vols[i], i, pool[:T.EXEMPLARS_PER_CASE + 1], None, passes=2)
            else:
                continue
            row[name] = {"dice": float(dice(out.results[0].labels > 0, refs[i])), "conf": out.confidence}
        cases.append(row)
    return {"seed_index": s, "exemplars_first": len(ex1), "exemplars_second": len(ex2),
            "seconds_two_passes": t2, "seconds": time.perf_counter() - t0,
            "seed_similarity_median": float(np.median(seed_sims)),
            "exemplar_similarity_median": float(np.median(ex_sims)) if ex_sims else None, "cases": cases}


def summarise(run: dict, variants: tuple[str, ...] = VARIANTS) -> dict:
    """Mean Dice and cases below 0.85: first pass, the product (two passes), each third-pass variant."""
    cases = run["cases"]

    def stats(values: list[float]) -> list:
        return [round(float(np.mean(values)), 4), int(sum(v < 0.85 for v in values))]

    out = {"first_pass": stats([c["dice1"] for c in cases]), "product": stats([c["dice2"] for c in cases])}
    for name in variants:
        out[f"third_{name}"] = stats([c[name]["dice"] if name in c else c["dice2"] for c in cases])
        out[f"third_{name}_if_more_confident"] = stats([
            c[name]["dice"] if name in c and (c[name]["conf"] or 0.0) > (c["conf2"] or 0.0) else c["dice2"]
            for c in cases])
    out["redone_third"] = sum(variants[0] in c for c in cases)
    out["similarity_seed_vs_exemplar"] = [round(run["seed_similarity_median"], 3),
                                          round(run["exemplar_similarity_median"] or 0.0, 3)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="second-round variants (seed, noseed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exemplar_rounds.json")
    args = ap.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    if not variants or set(variants) - set(VARIANTS):
        ap.error(f"--variants: a comma-separated subset of {', '.join(VARIANTS)}")

    def run_one(eng, vols, refs, s):  # noqa: ANN001
        run = run_seed(eng, vols, refs, s, variants)
        return {**run, "summary": summarise(run, variants)}

    return sweep_seeds(args, argv, run_one)


if __name__ == "__main__":
    raise SystemExit(main())
