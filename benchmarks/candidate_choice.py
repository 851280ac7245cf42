"""Which of the prior-guided candidates a transferred X-ray should keep: rules compared on the same candidates.

For each seed image and each other image of a range of Shenzhen X-rays, the seed's lung masks are
warped onto the image by registration (the dataset transfer's first pass, ``DatasetTransfer.priors``),
and the candidates of :func:`promptonce.engine.prior_mask.prior_guided_mask` are made by the product's
own ``prior_candidates`` (box around the prior's core with margins 0, 5 and 10% of its size, each
refined once from its own mask). Each candidate's Dice with the image's reference lung is recorded, and the
selection rules are scored on the same candidates:

* ``agreement`` - the rule before this change: highest ``check_against_prior`` confidence
  (0.75 x Dice with the prior + 0.25 x model score, minus leak/missed penalties);
* ``score`` - the model's own score;
* ``boundary`` - :func:`promptonce.engine.quality.boundary_evidence` (boundary on image edges);
* ``score+boundary, prior veto`` - the product's rule now: among the candidates the prior raises
  no flag on, the highest score + boundary evidence;
* ``oracle`` - the best candidate by reference Dice (the ceiling of any rule over these candidates).

Numbers are per lung (object), first pass only (no exemplar pass, no soft-side extension).

    .venv/bin/python benchmarks/candidate_choice.py --start 0 --count 100 --seeds 0,30,60,90   # tuning, ~10 min
    .venv/bin/python benchmarks/candidate_choice.py --start 100 --count 100 --seeds 0,50 \
        --out benchmarks/results/candidate_choice_report.json                                   # held out
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, load_range  # noqa: E402


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


RULES = {
    "agreement": lambda c: c["confidence"],
    "score": lambda c: c["score"],
    "boundary": lambda c: c["boundary"],
    "oracle": lambda c: c["dice"],
}
# (the product's rule, PRODUCT below, is run through promptonce's own choose_candidate)


PRODUCT = "score+boundary, prior veto (choose_candidate)"


def candidates(eng, volume, prior: np.ndarray, ref: np.ndarray, gray: np.ndarray) -> list[dict]:
    """The product's candidates for one object (``prior_mask.prior_candidates``), with what each rule reads."""
    from promptonce.engine.quality import boundary_evidence, check_against_prior
    from promptonce.engine.prior_mask import choose_candidate, prior_candidates

    emb = eng.embedding(eng.backend, volume, 0)
    out, kept = [], []
    for frac, (mask, score) in zip(eng.config.prior_margins, prior_candidates(eng, eng.backend, emb, prior >= 0.5, None, 1)):
        check = check_against_prior(mask, prior, score, "lung")
        out.append({"margin": frac, "dice": _dice(mask, ref), "score": score, "confidence": check.confidence,
                    "boundary": boundary_evidence(gray, mask), "prior_flags": bool(check.flags)})
        kept.append((mask, score, check))
    # the product's rule, by the product's own function
    chosen = choose_candidate(gray, kept)[0]
    out.append({**next(c for c, k in zip(out, kept) if k[0] is chosen), "product": True})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    ap.add_argument("--seeds", default="0,30,60,90", help="seed images, relative to --start")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "candidate_choice.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    from promptonce.engine import make_engine
    from promptonce.engine.transfer import DatasetTransfer
    from promptonce.evaluate import reference_prompt
    from scipy import ndimage

    eng = make_engine(None, "litemedsam", None, cache_size=len(vols) + 2)
    t0 = time.time()
    per_seed: dict[str, dict] = {}
    for s in (int(x) for x in args.seeds.split(",")):
        prompt = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
        seed_res = next(iter(eng.segment_volume(vols[s], prompt, volume_index=s)))
        transfer = DatasetTransfer(eng, vols[s], prompt, seed_labels=seed_res.labels)
        objects = []
        for c, vol in enumerate(vols):
            if c == s:
                continue
            gray = eng.frames(vol, None).gray(0)
            priors, _ = transfer.priors(gray, [transfer.seed])
            lab, n = ndimage.label(refs[c])
            for prior in priors.values():
                if prior is None or not (prior >= 0.5).any() or n == 0:
                    continue
                # the object's reference: the reference lung the prior overlaps most
                overlap = ndimage.sum(prior >= 0.5, lab, index=np.arange(1, n + 1))
                ref = lab == int(np.argmax(overlap)) + 1
                objects.append(candidates(eng, vol, prior, ref, gray))
        row = {rule: round(float(np.mean([max(cs[:-1], key=key)["dice"] for cs in objects])), 4)
               for rule, key in RULES.items()}
        row[PRODUCT] = round(float(np.mean([cs[-1]["dice"] for cs in objects])), 4)
        per_seed[paths[s].stem] = row | {"objects": len(objects)}
        print(paths[s].stem, json.dumps(per_seed[paths[s].stem]), flush=True)
    means = {rule: round(float(np.mean([v[rule] for v in per_seed.values()])), 4) for rule in [*RULES, PRODUCT]}
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "loadavg": os.getloadavg(),
           "images": f"cxr_shenzhen {args.start}-{args.start + len(vols) - 1}", "margins": list(eng.config.prior_margins),
           "per_seed": per_seed, "mean_over_seeds": means, "seconds": round(time.time() - t0, 1)}
    print("mean", json.dumps(means))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
