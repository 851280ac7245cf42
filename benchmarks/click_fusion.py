"""Agreement among a click's candidates, and votes over them, against the product's choice (issue 12, clicks).

On a crop around one structure (``click_choice.is_crop``) the click path's candidates come from a family
of box sizes around the click. ``click_candidates.py`` records their features; this benchmark also keeps
their masks (``click_candidates.record(masks=True)``) and scores, on each slice with one object, what
could be made of the family instead of a single choice (``ranking``: ``choose(crop=True)``, the product's
until the twenty-eighth round; since then the product, ``product``, is ``click_choice.vote``: pixels held
by 30% of the better-ranked half):

* ``consensus``: the product's crop ranking plus each candidate's mean Dice with the other candidates
  that hold the click (the rule this benchmark was written to check; tried in the twenty-ninth session);
* ``medoid``: the candidate with the highest summed Dice with the others;
* ``vote F``: pixels that at least a fraction F of the click-holding candidates share (0.1 to 0.7);
* ``weighted vote``: the same at 0.5, each candidate weighted by its crop merit (shifted to be positive);
* ``oracle``: the best candidate; ``oneclick``: the reference box.

    .venv/bin/python benchmarks/click_fusion.py --cases 50 --slices 6 \\
        --out benchmarks/results/click_fusion_hippocampus_tune50x6.json       # tuning, ~13 min
    .venv/bin/python benchmarks/click_fusion.py --first-case 50 --cases 210 \\
        --out benchmarks/results/click_fusion_hippocampus_held210_largest.json  # held out, ~14 min

Hippocampus only (the one set of ``../shared`` whose slices are crops). Skips with a message when the data
folder is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from click_candidates import record, recording_args  # noqa: E402
from clicks import dice  # noqa: E402


def rules(row: dict) -> dict[str, float]:
    """The Dice of each way of making one mask from a slice's candidates (see the module text)."""
    from promptonce.engine.click_choice import CROP_STABILITY_WEIGHT, ClickCandidate

    ref = row["reference"]
    pool = [c for c in row["candidates"] if c["contains"]] or row["candidates"]
    masks = [c["mask"] for c in pool]
    merit = np.array([ClickCandidate(c["mask"], c["score"], c["stability"], c["contains"], c["region"],
                                     c["edge"]).merit(CROP_STABILITY_WEIGHT) for c in pool])
    n = len(masks)
    agree = np.array([[dice(a, b) for b in masks] for a in masks])
    others = (agree.sum(axis=1) - 1.0) / (n - 1) if n > 1 else np.zeros(n)
    stack = np.array(masks, float)
    weights = merit - merit.min() + 1e-3
    out = {
        "oneclick": row["oneclick"],
        "product": row["click"],
        "ranking": dice(masks[int(np.argmax(merit))], ref),
        "consensus": dice(masks[int(np.argmax(merit + others))], ref),
        "medoid": dice(masks[int(np.argmax(agree.sum(axis=1)))], ref),
        "weighted vote": dice(np.tensordot(weights / weights.sum(), stack, 1) >= 0.5, ref),
        "oracle": max(c["dice"] for c in pool),
    }
    for frac in (0.1, 0.2, 0.3, 0.5, 0.7):
        out[f"vote {frac}"] = dice(stack.mean(axis=0) >= frac, ref)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recording_args(ap, "click_fusion.json")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: real data not found at {data}")
        return 0
    t0 = time.perf_counter()
    slices = []
    for row in record(data, ["hippocampus"], args.first_case, args.cases, args.slices, args.min_frac, masks=True):
        if row["objects"] == 1 and row["candidates"]:
            scores = {k: round(v, 4) for k, v in rules(row).items()}
            slices.append({"case": row["case"], "slice": row["slice"], **scores})
    names = [k for k in slices[0] if k not in ("case", "slice")] if slices else []
    summary = {k: round(float(np.mean([s[k] for s in slices])), 4) for k in names}
    result = {"benchmark": "benchmarks/click_fusion.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "args": vars(args), "seconds": round(time.perf_counter() - t0, 1), "slices_scored": len(slices),
              "summary": summary, "slices": slices}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print("| " + " | ".join(["slices", *names]) + " |")
    print("|" + "---|" * (len(names) + 1))
    print("| " + " | ".join([str(len(slices)), *(str(summary[k]) for k in names)]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
