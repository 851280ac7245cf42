"""Inside a volume: what the walk segments on the slices that a gradual intensity drift lets it walk on.

``PropagationConfig.max_intensity_step_z`` (off by default) keeps the intensity rule from ending an
object whose median moved little from the previous slice's, even when it moved far from the seed's.
This runs ``promptonce evaluate --scope volume --protocol oneclick`` in-process with that setting and
records every slice where the seed-referenced rule alone would have ended the object (its z from the
seed above ``max_intensity_z``, not a large steady object) but the drift rule let it on: the z from
the seed, the step from the previous slice, the Dice with the previous slice's mask, the area as a
fraction of the peak, and the slice's Dice with the reference. Sets as ``walk_ends.py``'s split.

    .venv/bin/python benchmarks/walk_drift.py --split tune --only acdc_rv hippocampus --step-z 1.0 \\
        --out benchmarks/results/walk_drift_tune.json        # ~6 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptonce.engine import PropagationConfig  # noqa: E402
from promptonce.evaluate import EvalConfig, evaluate  # noqa: E402
from promptonce.io.readers import load_dataset, load_reference  # noqa: E402

from _xrays import write_json  # noqa: E402
from walk_ends import DATA, WalkTap, sets_for  # noqa: E402


class DriftRecorder(WalkTap):
    """Keeps each slice that the drift rule alone let the walk on."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[dict] = []

    def vanished(self, eng, mask, score, state, values=None):  # noqa: ANN001
        why = self._vanished(eng, mask, score, state, values)
        if why is not None or state.values is None or values is None or not values.size or state.mask is None:
            return why
        cfg, (med0, scale0) = eng.config, state.values
        med = float(np.median(values))
        area, prev_area = int(mask.sum()), int(state.mask.sum())
        overlap = 2.0 * int(np.count_nonzero(mask & state.mask)) / (area + prev_area)
        steady = area >= cfg.steady_area_frac * max(state.peak, 1) and overlap >= cfg.steady_overlap
        if abs(med - med0) / scale0 > cfg.max_intensity_z and not steady:
            self.kept.append(dict(self._cur, z_from_seed=round(abs(med - med0) / scale0, 2),
                                  z_step=round(abs(med - state.last_median) / scale0, 2),
                                  overlap_with_previous=round(overlap, 3),
                                  fraction_of_peak=round(area / max(state.peak, 1), 3), mask=mask.copy()))
        return why


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["tune", "report"], default="tune")
    ap.add_argument("--only", nargs="*", help="set tags to run (default: all of the split)")
    ap.add_argument("--step-z", type=float, default=1.0, help="max_intensity_step_z")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "walk_drift.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: no data folder at {DATA}", file=sys.stderr)
        return 0
    config = PropagationConfig(max_intensity_step_z=args.step_z)
    sets = {}
    for tag, images, refs, labels in sets_for(args.split, 10, 20):
        if args.only and tag not in args.only:
            continue
        ds = load_dataset([str(p) for p in images])
        loaders = [(lambda p=p, i=i: load_reference(str(p), ds[i])) for i, p in enumerate(refs)]
        with DriftRecorder() as rec:
            result = evaluate(ds, loaders, None, EvalConfig(model="litemedsam", scope="volume", protocol="oneclick",
                                                             labels=labels, write_masks=False, config=config))
        index = {ds[i].name: i for i in range(len(ds))}
        for r in rec.kept:
            i = index[r["volume"]]
            ref = np.isin(load_reference(str(refs[i]), ds[i]).array[r["slice"]], labels)
            m = r.pop("mask")
            r["dice_with_reference"] = round(2.0 * float(np.count_nonzero(m & ref)) / max(int(m.sum() + ref.sum()), 1), 3)
        d = [r["dice_with_reference"] for r in rec.kept]
        sets[tag] = {"case_dice": [round(float(c["dice"]), 4) for c in result["cases"]],
                     "slices_let_on": len(d), "their_dice_median": float(np.median(d)) if d else None,
                     "below_0.1": sum(x < 0.1 for x in d), "slices": rec.kept}
        print(tag, {k: v for k, v in sets[tag].items() if k != "slices"}, flush=True)
    write_json(args.out, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "split": args.split,
                          "max_intensity_step_z": args.step_z, "sets": sets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
