"""Issue 12: a box drawn around a wall (the ACDC myocardium), with and without ``PropagationConfig.box_walls``.

LiteMedSAM answers a box around the LV myocardium with the blood pool inside it (Dice ~0.03). With
``box_walls`` (:mod:`promptonce.engine.walls`), a box whose answer keeps inside it, in a region of other
intensity, is asked again of MobileSAM with a background click in that region, the wall is kept, and
the walk follows the cavity and the wall around it. Each run is ``promptonce evaluate`` in-process on
one engine (each slice encoded once for all runs), per volume, for every scope x protocol x setting.
Writes JSON: each run's Dice, flag quality, seconds and per-case Dice.

    .venv/bin/python benchmarks/box_walls.py --set acdc --labels 2 --first 0 --count 10 \\
        --out benchmarks/results/box_walls_acdc_myo_tune10.json                     # ~15 min
    .venv/bin/python benchmarks/box_walls.py --set ct --out benchmarks/results/box_walls_ct.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import promptonce.evaluate as evaluate_module  # noqa: E402
from promptonce.engine import PropagationConfig, make_engine  # noqa: E402
from promptonce.evaluate import EvalConfig, evaluate, flag_quality  # noqa: E402
from promptonce.io.readers import load_dataset, load_reference  # noqa: E402
from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt  # noqa: E402

DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT_LABELS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "aorta": 52}

# the cases' rows keep their per-slice fields, so that the runs' flags are scored over all cases at once
evaluate_module._case_json = lambda r: r


def cases(name: str, first: int, count: int | None) -> tuple[list[Path], list[Path]]:
    """``(images, references)``: ACDC or hippocampus files ``first..first+count`` sorted, or the CT example."""
    if name == "ct":
        d = DATA / "ct_totalseg_example"
        return [d / "image.nii.gz"], [d / "labels.nii.gz"]
    d = DATA / ("mri_acdc" if name == "acdc" else "mri_hippocampus")
    files = sorted((d / "images").glob("*.nii.gz"))
    files = files[first : None if count is None else first + count]
    return files, [d / "labels" / f.name for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["acdc", "hippocampus", "ct"], default="acdc")
    ap.add_argument("--labels", default=None,
                    help="foreground labels of one run, e.g. 2 (ACDC myocardium) or 1,2; CT: each organ alone")
    ap.add_argument("--first", type=int, default=0, help="index of the first file (sorted)")
    ap.add_argument("--count", type=int, default=None, help="how many files")
    ap.add_argument("--scopes", nargs="+", default=["image", "volume"])
    ap.add_argument("--protocols", nargs="+", default=["box", "oneclick"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"no shared data at {DATA}; set PROMPTONCE_SHARED_DATA", file=sys.stderr)
        return 2
    files, ref_files = cases(args.set, args.first, args.count)
    if args.set == "ct":
        label_sets = {name: [v] for name, v in CT_LABELS.items()}
    else:
        labels = [int(v) for v in (args.labels or ("2" if args.set == "acdc" else "1,2")).split(",")]
        label_sets = {",".join(map(str, labels)): labels}
    images = load_dataset([str(f) for f in files])
    specs = [(lab, scope, protocol, walls) for lab in label_sets for scope in args.scopes
             for protocol in args.protocols for walls in (False, True)]
    rows: dict[tuple, list[dict]] = {sp: [] for sp in specs}
    seconds = dict.fromkeys(specs, 0.0)
    box = SlicePrompt((ObjectPrompt(box=Box(0, 0, 1, 1)),), slice_index=0)
    eng = make_engine(box, "auto", "auto", PropagationConfig(), cache_size=64)  # the box model and the wall model
    for i in range(len(images)):
        vol = images[i]  # read once: a lazy dataset gives a new Volume (and new cache keys) on each access
        ref = load_reference(ref_files[i], vol)
        for sp in specs:
            lab, scope, protocol, walls = sp
            config = PropagationConfig(box_walls=walls)
            eng.config = config
            cfg = EvalConfig(scope=scope, labels=label_sets[lab], protocol=protocol, write_masks=False, config=config)
            t = time.perf_counter()
            m = evaluate(Dataset([vol]), [ref], None, cfg, engine=eng)
            seconds[sp] += time.perf_counter() - t
            rows[sp].extend(m["cases"])
        done = " ".join(f"{'/'.join(map(str, sp))} {rows[sp][-1]['dice']:.3f}" for sp in specs if rows[sp])
        print(f"{i + 1}/{len(images)} {files[i].name}: {done}", flush=True)
    runs = []
    for (lab, scope, protocol, walls), rs in rows.items():
        quality = flag_quality(rs)
        runs.append({
            "labels": lab, "scope": scope, "protocol": protocol, "box_walls": walls,
            "seconds": round(seconds[(lab, scope, protocol, walls)], 1),
            "dice_mean": float(np.mean([r["dice"] for r in rs])) if rs else None,
            "flag_recall_precision": {"case": [quality["case"]["recall"], quality["case"]["precision"]],
                                      "slice": [quality["slice"]["recall"], quality["slice"]["precision"]]},
            "case_dice": {r["name"]: r["dice"] for r in rs},
        })
    table: dict[str, dict[str, float | None]] = {}
    for r in runs:
        key = f"{r['labels']}/{r['scope']}/{r['protocol']}"
        table.setdefault(key, {})["walls" if r["box_walls"] else "off"] = (
            round(r["dice_mean"], 4) if r["dice_mean"] is not None else None)
    out = {
        "command": "python benchmarks/box_walls.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": platform.platform(),
        "set": args.set, "cases": [f.name for f in files], "dice_mean": table, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"dice_mean": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
