"""What the exemplar pass buys at dataset scope on X-rays, and where its confidence threshold should sit.

One dataset-scope run per seed (LiteMedSAM, the seed's reference box) in which EVERY case is also
segmented again from its most similar exemplars (both ``SECOND_PASS_BELOW`` thresholds raised above 1), with
each case's first- and second-pass confidence, Dice (both lungs against the reference), flags and
decoder calls recorded. The exemplars come from the first pass of every case whatever the threshold,
and the run answers exactly what each threshold T and keep rule would give: a case with first-pass
confidence below T takes the better-confidence outcome (``keep: confidence``, the product on volumes)
or the second pass (``keep: always``, the product on single images), the others keep their first
pass. Reported per T and rule: mean and worst Dice, cases below 0.85, decoder calls an image, second
passes, flagged cases, flag recall (Dice < 0.85) and precision (< 0.90).

    .venv/bin/python benchmarks/second_pass.py --start 0 --count 100 --seeds 0 90 \\
        --out benchmarks/results/second_pass_tune.json      # tuning images, ~6 minutes a seed
    .venv/bin/python benchmarks/second_pass.py --start 100 --count 60 --seeds 0 \\
        --out benchmarks/results/second_pass_report.json    # held out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, load_range, write_result  # noqa: E402

THRESHOLDS = (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.01)


def record_run(vols, refs, seed: int) -> dict[str, dict]:
    """Per case: conf1/dice1/flags1/calls1 of the first pass and conf2/dice2/flags2/calls2 of the second."""
    import promptonce.engine.transfer as tr
    from promptonce.backends.litemedsam import LiteMedSAMBackend
    from promptonce.engine import Engine, segment
    from promptonce.evaluate import reference_prompt
    from promptonce.types import Dataset

    ref_by = {v.name: r for v, r in zip(vols, refs)}
    backend = LiteMedSAMBackend()
    predict, calls = backend.predict, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return predict(*args, **kwargs)

    backend.predict = counted
    recs: dict[str, dict] = {}

    def dice(outcome) -> float:
        lab, ref = outcome.results[0].labels > 0, ref_by[outcome.name]
        s = int(lab.sum()) + int(ref.sum())
        return 2 * int((lab & ref).sum()) / s if s else 1.0

    def flagged(outcome) -> bool:
        return bool(outcome.flags) or any(r.flags for r in outcome.results)

    first_pass, segment_case = tr.DatasetTransfer.first_pass, tr.DatasetTransfer.segment_case

    def first(self, volume, volume_index, cancel=None):
        c0 = calls[0]
        out = first_pass(self, volume, volume_index, cancel)
        recs[out.name] = {"conf1": out.confidence, "dice1": dice(out), "flags1": flagged(out), "calls1": calls[0] - c0}
        return out

    def case(self, volume, volume_index, sources, cancel=None, passes=1, evidence_scale=None):
        c0 = calls[0]
        out = segment_case(self, volume, volume_index, sources, cancel, passes=passes, evidence_scale=evidence_scale)
        if passes == 2:
            recs[out.name].update(conf2=out.confidence, dice2=dice(out), flags2=flagged(out), calls2=calls[0] - c0)
        return out

    saved = tr.SECOND_PASS_BELOW, tr.SECOND_PASS_BELOW_IMAGE
    tr.DatasetTransfer.first_pass, tr.DatasetTransfer.segment_case = first, case
    tr.SECOND_PASS_BELOW = tr.SECOND_PASS_BELOW_IMAGE = 1.01
    try:
        prompt = reference_prompt(refs[seed].astype(np.uint8), labels=None, protocol="box", slice_index=0,
                                  volume_index=seed)
        list(segment(Dataset(vols), prompt, scope="dataset", engine=Engine(backend)))
    finally:
        tr.DatasetTransfer.first_pass, tr.DatasetTransfer.segment_case = first_pass, segment_case
        tr.SECOND_PASS_BELOW, tr.SECOND_PASS_BELOW_IMAGE = saved
    return recs


def at_threshold(recs: dict[str, dict], t: float, keep: str = "confidence") -> dict:
    """What threshold ``t`` gives, from a run where every case had both passes.

    ``keep``: ``"confidence"`` takes the second pass when it is more confident (the product on
    volumes); ``"always"`` takes it whenever the case was redone (the product on single images since
    the sixteenth round)."""
    dice, flags, calls, passes = [], [], 0, 0
    for c in recs.values():
        second = c["conf1"] is None or c["conf1"] < t
        passes += second
        calls += c["calls1"] + (c.get("calls2", 0) if second else 0)
        take = second and "conf2" in c and (keep == "always" or (c["conf2"] or 0.0) > (c["conf1"] or 0.0))
        dice.append(c["dice2"] if take else c["dice1"])
        flags.append(c["flags2"] if take else c["flags1"])
    d, f = np.asarray(dice), np.asarray(flags, bool)
    fail = d < 0.85
    return {"threshold": t, "keep": keep, "dice_mean": round(float(d.mean()), 4), "dice_min": round(float(d.min()), 4),
            "below_0.85": int(fail.sum()), "decoder_calls_per_image": round(calls / len(d), 1),
            "second_passes": int(passes), "flagged": int(f.sum()),
            "flag_recall": round(float((f & fail).sum() / fail.sum()), 2) if fail.any() else None,
            "flag_precision": round(float((f & (d < 0.9)).sum() / f.sum()), 2) if f.any() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seed images (indices in the range)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "second_pass.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    runs = []
    for seed in args.seeds:
        recs = record_run(vols, refs, seed)
        rows = [at_threshold(recs, t, keep) for keep in ("confidence", "always") for t in THRESHOLDS]
        runs.append({"seed": paths[seed].stem, "cases": len(recs), "by_threshold": rows})
        print(f"seed {paths[seed].stem}: {len(recs)} cases")
        for r in rows:
            print("  " + "  ".join(f"{k} {v}" for k, v in r.items()))
    write_result(args.out, argv, args.start, len(paths), runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
