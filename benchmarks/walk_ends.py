"""Inside a volume: where the slice walk ends each object, why, and whether the reference goes on there.

One prompt per volume (``promptonce evaluate --scope volume --protocol oneclick``, run in-process),
LiteMedSAM. Every end the walk makes is recorded with :func:`promptonce.engine.walk.vanished`'s
reason and the object's area on the slice before, as a fraction of its largest area so far
(``>= 0.4``: flagged "object lost mid-volume"; ``0.2-0.4``: flagged "ended here without fading out"
when the reason leaves the object possibly going on; below: a tip). For each end the reference
volume tells whether the object really goes on past the slice where the walk stopped, and for how
many slices. Also per set: mean Dice, and the flags' recall and precision per case and per slice
(:mod:`promptonce.flagscore`). Writes JSON.

Tuning / report split (the walk's end rules were set on the tuning part): ACDC files 1-10 / 11-20
(``--acdc-count``), hippocampus 1-20 / 51-70, CT liver, spleen and kidneys / stomach and aorta, and
the CIP chest CT (both lungs) on the report side.

    .venv/bin/python benchmarks/walk_ends.py --split tune --out benchmarks/results/walk_ends_tune.json
    .venv/bin/python benchmarks/walk_ends.py --split report --out benchmarks/results/walk_ends_report.json
    .venv/bin/python benchmarks/walk_ends.py --split tune --config '{"max_intensity_z": 3.0}' --out ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import promptonce.engine.walk as walk_module  # noqa: E402
from promptonce.engine import PropagationConfig  # noqa: E402
from promptonce.engine.quality import LOST_FRACTION, UNCERTAIN_END_FRACTION  # noqa: E402
from promptonce.evaluate import EvalConfig, evaluate  # noqa: E402
from promptonce.io.readers import load_dataset, load_reference  # noqa: E402

DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def sets_for(split: str, acdc_count: int, hippo_count: int) -> list[tuple[str, list[Path], list[Path], list[int]]]:
    """``(tag, images, references, labels)`` per evaluated set of the split."""
    out = []
    acdc = sorted((DATA / "mri_acdc" / "images").glob("*.nii.gz"))
    part = acdc[:acdc_count] if split == "tune" else acdc[acdc_count : 2 * acdc_count]
    for label, name in ((1, "rv"), (2, "myo"), (3, "lv")):
        out.append((f"acdc_{name}", part, [DATA / "mri_acdc" / "labels" / p.name for p in part], [label]))
    ct = DATA / "ct_totalseg_example"
    organs = ((5, "liver"), (1, "spleen"), (2, "kidney_r"), (3, "kidney_l")) if split == "tune" else ((6, "stomach"), (52, "aorta"))
    for label, name in organs:
        out.append((f"ct_{name}", [ct / "image.nii.gz"], [ct / "labels.nii.gz"], [label]))
    if split == "report":
        out.append(("cip_lungs", [DATA / "ct_lung_cip" / "image.nii.gz"], [DATA / "ct_lung_cip" / "lung_mask.nii.gz"], [1]))
    hip = sorted((DATA / "mri_hippocampus" / "images").glob("*.nii.gz"))
    part = hip[:hippo_count] if split == "tune" else hip[50 : 50 + hippo_count]
    out.append(("hippocampus", part, [DATA / "mri_hippocampus" / "labels" / p.name for p in part], [1, 2]))
    return out


class WalkTap:
    """Wraps the walk's ``step`` (to know the volume, slice and direction) and ``vanished`` while in a ``with``.

    Subclasses override :meth:`vanished` to record what they need; ``self._cur`` says where the walk is.
    """

    def __init__(self) -> None:
        self._cur: dict = {}
        self._step, self._vanished = walk_module.step, walk_module.vanished

    def step(self, eng, volume, k, state, window=None, from_slice=None):  # noqa: ANN001
        self._cur = {"volume": volume.name, "slice": k, "direction": 0 if from_slice is None else k - from_slice}
        return self._step(eng, volume, k, state, window, from_slice)

    def vanished(self, eng, mask, score, state, values=None):  # noqa: ANN001
        return self._vanished(eng, mask, score, state, values)

    def __enter__(self):  # noqa: ANN204
        walk_module.step, walk_module.vanished = self.step, self.vanished
        return self

    def __exit__(self, *exc) -> None:
        walk_module.step, walk_module.vanished = self._step, self._vanished


class EndRecorder(WalkTap):
    """Records every end of the walk: volume, slice, direction, reason, areas."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[dict] = []

    def vanished(self, eng, mask, score, state, values=None):  # noqa: ANN001
        why = self._vanished(eng, mask, score, state, values)
        if why is not None:
            before = int(state.mask.sum()) if state.mask is not None else 0
            self.ends.append(dict(self._cur, why=why, reason=why.split(" (")[0].split(" x")[0].split(" 0")[0],
                                  area_before=before, peak=int(state.peak), fraction=before / max(state.peak, 1),
                                  uncertain=walk_module.ends_uncertainly(why)))
        return why


def size_class(fraction: float) -> str:
    if fraction >= LOST_FRACTION:
        return "large"
    return "narrowing" if fraction >= UNCERTAIN_END_FRACTION else "tip"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["tune", "report"], default="report")
    ap.add_argument("--acdc-count", type=int, default=10)
    ap.add_argument("--hippo-count", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="set tags to run (default: all of the split)")
    ap.add_argument("--config", default="{}", help="PropagationConfig overrides as JSON, e.g. '{\"max_intensity_z\": 3}'")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "walk_ends.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: no data folder at {DATA}", file=sys.stderr)
        return 0
    overrides = json.loads(args.config)
    config = PropagationConfig(**overrides)
    sets, ends, pooled = {}, [], {"case": defaultdict(int), "slice": defaultdict(int)}
    for tag, images, refs, labels in sets_for(args.split, args.acdc_count, args.hippo_count):
        if args.only and tag not in args.only:
            continue
        ds = load_dataset([str(p) for p in images])
        loaders = [(lambda p=p, i=i: load_reference(str(p), ds[i])) for i, p in enumerate(refs)]
        with EndRecorder() as rec:
            result = evaluate(ds, loaders, None, EvalConfig(model="litemedsam", scope="volume", protocol="oneclick",
                                                             labels=labels, write_masks=False, config=config))
        by_name = {ds[i].name: i for i in range(len(ds))}
        ref_of: dict[int, np.ndarray] = {}  # each case's reference foreground, read once
        for e in rec.ends:
            i = by_name[e["volume"]]
            if i not in ref_of:
                ref_of[i] = np.isin(load_reference(str(refs[i]), ds[i]).array, labels)
            ref = ref_of[i]
            k, d, beyond = e["slice"], e["direction"] or 1, 0
            while 0 <= k < ref.shape[0] and ref[k].any():
                beyond, k = beyond + 1, k + d
            e.update(set=tag, reference_goes_on=beyond > 0, reference_slices_beyond=beyond,
                     reference_area_there=int(ref[e["slice"]].sum()), size=size_class(e["fraction"]))
            ends.append(e)
        fq = result["flag_quality"]
        for level in ("case", "slice"):
            for key in ("failures", "failures_flagged", "flagged", "flagged_bad"):
                pooled[level][key] += fq[level][key]
        dice = [c["dice"] for c in result["cases"]]
        sets[tag] = {"cases": len(dice), "mean_dice": round(float(np.mean(dice)), 4),
                     "dice_per_case": [round(float(x), 4) for x in dice],
                     "flags_case": fq["case"], "flags_slice": fq["slice"],
                     "ends": len(rec.ends), "ends_reference_goes_on": sum(e["reference_goes_on"] for e in rec.ends)}
        print(tag, {k: v for k, v in sets[tag].items() if not k.startswith("flags")},
              "slice flags", fq["slice"]["failures_flagged"], "/", fq["slice"]["failures"], "failures,",
              fq["slice"]["flagged_bad"], "/", fq["slice"]["flagged"], "flagged", flush=True)
    groups: dict[str, dict[str, int]] = defaultdict(lambda: {"ends": 0, "reference_goes_on": 0})
    for e in ends:
        g = groups[f"{e['reason']} | {e['size']}"]
        g["ends"] += 1
        g["reference_goes_on"] += int(e["reference_goes_on"])
    scores = {}
    for level, c in pooled.items():
        scores[level] = {**c, "recall": round(c["failures_flagged"] / c["failures"], 4) if c["failures"] else None,
                         "precision": round(c["flagged_bad"] / c["flagged"], 4) if c["flagged"] else None}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "promptonce"], cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip())
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": datetime.date.today().isoformat(),
           "machine": {"cpu": platform.machine(), "cores": os.cpu_count()}, "loadavg": os.getloadavg(),
           "git_commit": commit + (" + uncommitted changes in promptonce/" if dirty else ""),
           "split": args.split, "config": overrides,
           "sets": sets, "flags_pooled": scores, "ends_by_reason_and_size": dict(sorted(groups.items())), "ends": ends}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({"flags_pooled": scores, "ends_by_reason_and_size": out["ends_by_reason_and_size"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
