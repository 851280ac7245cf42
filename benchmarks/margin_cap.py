"""Issue 12 (volumes): one prompt per volume under several caps of the box margin in model-input pixels.

``PropagationConfig.margin_model_px`` caps the box margin's 3-pixel floor (``margin_px``) at that many
pixels of the box model's input. It binds only on small slices (below 77 pixels a side for LiteMedSAM's
256): in ``../shared`` the hippocampus crops (40-59 px) and the CIP chest CT (64 px). Each run is
``promptonce evaluate --scope volume`` in-process, on one engine (each slice encoded once for all runs),
with the protocol, seed slice and cap of the run. Writes JSON: each run's summary, flag quality and
per-case Dice.

    .venv/bin/python benchmarks/margin_cap.py --set hippocampus --first 100 --count 50 \\
        --caps none 10 --out benchmarks/results/margin_cap_hippocampus_held101_150.json   # ~25 min
    .venv/bin/python benchmarks/margin_cap.py --set cip --caps none 10 --out benchmarks/results/margin_cap_cip.json
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
from promptonce.evaluate import (  # noqa: E402
    EvalConfig,
    evaluate,
    flag_quality,
    foreground_mask,
    reference_prompt,
    seed_prompt,
)
from promptonce.io.readers import load_dataset, load_reference  # noqa: E402
from promptonce.types import Dataset  # noqa: E402

DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# the cases' rows keep their per-slice fields, so that the runs' flags are scored over all cases at once
evaluate_module._case_json = lambda r: r


def cases(name: str, first: int, count: int | None) -> tuple[list[Path], list[Path], list[int] | None]:
    """``(images, references, labels)`` of a set: hippocampus files ``first..first+count`` sorted, or the CIP CT."""
    if name == "cip":
        d = DATA / "ct_lung_cip"
        return [d / "image.nii.gz"], [d / "lung_mask.nii.gz"], None
    d = DATA / "mri_hippocampus"
    files = sorted((d / "images").glob("*.nii.gz"))
    files = files[first : None if count is None else first + count]
    return files, [d / "labels" / f.name for f in files], [1, 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["hippocampus", "cip"], default="hippocampus")
    ap.add_argument("--first", type=int, default=0, help="hippocampus: index of the first file (sorted)")
    ap.add_argument("--count", type=int, default=None, help="hippocampus: how many files")
    ap.add_argument("--caps", nargs="+", default=["none", "10"], help="margin_model_px values; 'none' = no cap")
    ap.add_argument("--protocols", nargs="+", default=["oneclick", "click"])
    ap.add_argument("--seeds", nargs="+", default=["largest", "centre"], help="seed slice of each volume")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"no shared data at {DATA}; set PROMPTONCE_SHARED_DATA", file=sys.stderr)
        return 2
    files, ref_files, labels = cases(args.set, args.first, args.count)
    images = load_dataset([str(f) for f in files])
    # volume by volume, every run on it one after the other: its slices stay in the engine's cache
    specs = [(seed, protocol, cap) for seed in args.seeds for protocol in args.protocols for cap in args.caps]
    rows: dict[tuple[str, str, str], list[dict]] = {sp: [] for sp in specs}
    seconds = dict.fromkeys(specs, 0.0)
    eng = None
    for i in range(len(images)):
        vol = images[i]  # read once: a lazy dataset gives a new Volume (and new cache keys) on each access
        ref = load_reference(ref_files[i], vol)
        if eng is None:  # one engine for every run, with the click model too (built from a click on this case)
            fg = foreground_mask(ref.array, labels)
            k = int(np.argmax(fg.reshape(fg.shape[0], -1).sum(1)))
            click = reference_prompt(fg[k].astype(np.uint8), labels=None, protocol="click", slice_index=k)
            eng = make_engine(click, "auto", "auto", PropagationConfig(), cache_size=128)  # a crop has ~35 slices
        for seed, protocol, cap in specs:
            config = PropagationConfig(margin_model_px=None if cap == "none" else float(cap))
            eng.config = config
            cfg = EvalConfig(scope="volume", labels=labels, seed=seed, protocol=protocol, write_masks=False,
                             config=config)
            t = time.perf_counter()
            m = evaluate(Dataset([vol]), [ref], None, cfg, engine=eng)
            seconds[(seed, protocol, cap)] += time.perf_counter() - t
            row = m["cases"][0]
            sp = seed_prompt(ref, 0, cfg)
            row["seed_slice"] = sp.slice_index if sp is not None else None
            rows[(seed, protocol, cap)].append(row)
        print(f"{i + 1}/{len(images)} {files[i].name}: "
              + " ".join(f"{'/'.join(sp)} {rows[sp][-1]['dice']:.3f}" for sp in specs), flush=True)
    runs = []
    for (seed, protocol, cap), rs in rows.items():
        seed_dice = [float(r["_slice_dice"][r["seed_slice"]]) for r in rs if r.get("seed_slice") is not None]
        quality = flag_quality(rs)
        runs.append({
            "seed": seed, "protocol": protocol, "cap": cap, "seconds": round(seconds[(seed, protocol, cap)], 1),
            "dice_mean": float(np.mean([r["dice"] for r in rs])),
            "seed_slice_dice_mean": float(np.mean(seed_dice)) if seed_dice else None,
            "flag_recall_precision": {"case": [quality["case"]["recall"], quality["case"]["precision"]],
                                      "slice": [quality["slice"]["recall"], quality["slice"]["precision"]]},
            "case_dice": {r["name"]: r["dice"] for r in rs},
        })
    table: dict[str, dict[str, float]] = {}
    for r in runs:
        table.setdefault(f"{r['seed']}/{r['protocol']}", {})[r["cap"]] = round(float(r["dice_mean"]), 4)
    pooled = {cap: round(float(np.mean([r["dice_mean"] for r in runs if r["cap"] == cap])), 4) for cap in args.caps}
    out = {
        "command": "python benchmarks/margin_cap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": platform.platform(),
        "set": args.set, "cases": [f.name for f in files],
        "dice_mean": table, "pooled_over_seeds_and_protocols": pooled, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"dice_mean": table, "pooled": pooled}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
