"""Seed robustness, one prompt vs a prompt per image, clicks vs boxes, and flag quality (issue 12), as JSON.

For each set in ``../shared/data`` it runs ``promptonce evaluate`` in a subprocess (one at a time, so
timings do not disturb each other) and writes ``benchmarks/results/seed_robustness.json``:

* X-ray set (Shenzhen): ``--scope image`` (a reference box on every image: the upper bound of the same
  model) vs ``--scope dataset --seed-sweep K`` (one prompt for the whole set, for each of K seed
  cases: mean, worst, spread), and ``--protocol click`` vs ``oneclick`` at dataset scope (first seed).
* Volume sets (ACDC LV/RV/myocardium, TotalSegmentator CT liver/spleen/kidneys/stomach/aorta,
  ``ct_lung_cip`` lungs, hippocampus): ``--scope image`` (one prompt per slice) vs ``--scope volume``
  (one prompt per volume), and ``--protocol click`` vs ``oneclick`` at volume scope; ACDC also
  ``--scope dataset --seed-sweep K`` (one prompt for all volumes) unless ``--quick``.
* Flags: recall (of cases/slices with Dice < 0.85, the share flagged) and precision (of the flagged,
  the share below 0.90), per run and pooled over every one-prompt run (volume and dataset scope).

Tune/report split: the first ``TUNE`` cases of each set (natural file order; Shenzhen: 100 of 566) are
for development, the rest for reporting. ``--split report`` (default) evaluates the rest, ``tune`` the
first part, ``all`` both; ``--limit N`` then keeps the first N cases of the split. Sets made of one
volume (the CT examples) have no split.

    .venv/bin/python benchmarks/seed_robustness.py --quick                      # plumbing, a few minutes
    .venv/bin/python benchmarks/seed_robustness.py --only cxr_shenzhen --limit 60 --seeds 5
    .venv/bin/python benchmarks/seed_robustness.py --limit 10 --seeds 5         # every set, 10 cases each

Skips with a message when the data folder is absent. ``--model fake`` with ``--data`` pointing at a
synthetic tree of the same layout is the plumbing test (tests/test_seed_robustness_plumbing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "seed_robustness.json"

# name: (kind, images, references, labels, tune cases, extra evaluate args)
#   kind "xray": image vs dataset-scope seed sweep; "volume": image vs volume scope (+ "sweep": dataset sweep too)
SETS: dict[str, dict[str, Any]] = {
    "cxr_shenzhen": {"kind": "xray", "images": "cxr_shenzhen/images", "refs": "cxr_shenzhen/masks", "labels": None,
                     "tune": 100},
    "acdc_lv": {"kind": "volume", "images": "mri_acdc/images", "refs": "mri_acdc/labels", "labels": "3", "tune": 10,
                "sweep": True},
    "acdc_rv": {"kind": "volume", "images": "mri_acdc/images", "refs": "mri_acdc/labels", "labels": "1", "tune": 10,
                "sweep": True},
    "acdc_myo": {"kind": "volume", "images": "mri_acdc/images", "refs": "mri_acdc/labels", "labels": "2", "tune": 10,
                 "sweep": True},
    "ct_liver": {"kind": "volume", "images": "ct_totalseg_example/image.nii.gz",
                 "refs": "ct_totalseg_example/labels.nii.gz", "labels": "5", "tune": 0},
    "ct_spleen": {"kind": "volume", "images": "ct_totalseg_example/image.nii.gz",
                  "refs": "ct_totalseg_example/labels.nii.gz", "labels": "1", "tune": 0},
    "ct_kidneys": {"kind": "volume", "images": "ct_totalseg_example/image.nii.gz",
                   "refs": "ct_totalseg_example/labels.nii.gz", "labels": "2,3", "tune": 0},
    "ct_stomach": {"kind": "volume", "images": "ct_totalseg_example/image.nii.gz",
                   "refs": "ct_totalseg_example/labels.nii.gz", "labels": "6", "tune": 0},
    "ct_aorta": {"kind": "volume", "images": "ct_totalseg_example/image.nii.gz",
                 "refs": "ct_totalseg_example/labels.nii.gz", "labels": "52", "tune": 0},
    "ct_lung_cip": {"kind": "volume", "images": "ct_lung_cip/image.nii.gz", "refs": "ct_lung_cip/lung_mask.nii.gz",
                    "labels": None, "tune": 0},
    "hippocampus": {"kind": "volume", "images": "mri_hippocampus/images", "refs": "mri_hippocampus/labels",
                    "labels": "1,2", "tune": 50},
}
QUICK_SETS = ("cxr_shenzhen", "acdc_lv")
QUICK_LIMIT = {"cxr_shenzhen": 6, "acdc_lv": 2}
QUICK_SEEDS = 2

FAIL_BELOW, BAD_BELOW = 0.85, 0.90


def natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def case_files(data: Path, spec: dict[str, Any], split: str, limit: int) -> list[Path]:
    """The image files of a set for the split (natural order), first ``limit`` of them (0 = all)."""
    src = data / spec["images"]
    if src.is_file():
        return [src]  # one volume: no split
    files = sorted((p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key)
    tune = int(spec["tune"])
    if split == "tune":
        files = files[:tune]
    elif split == "report":
        files = files[tune:]
    return files[:limit] if limit else files


def run_eval(name: str, spec: dict[str, Any], files: list[Path], data: Path, *, scope: str, protocol: str,
             sweep: int, model: str, out_root: Path) -> dict[str, Any]:
    """One ``promptonce evaluate`` in a subprocess; returns its summary plus flag counts and timings."""
    tag = f"{name}_{scope}_{protocol}" + (f"_sweep{sweep}" if sweep else "")
    out = out_root / tag
    cmd = [sys.executable, "-m", "promptonce", "evaluate", "--images", *map(str, files), "--references",
           str(data / spec["refs"]), "--out", str(out), "--scope", scope, "--protocol", protocol, "--model", model,
           "--quiet", "--no-masks"]
    if spec.get("labels"):
        cmd += ["--labels", spec["labels"]]
    if spec.get("window"):
        cmd += ["--window", spec["window"]]
    if sweep:
        cmd += ["--seed-sweep", str(sweep)]
    row: dict[str, Any] = {"set": name, "scope": scope, "protocol": protocol, "seed_sweep": sweep or None,
                           "cases": len(files)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        return row
    m = json.loads((out / "metrics.json").read_text())
    s = m["summary"]
    keys = ("model", "images", "prompts", "dice_mean", "jaccard_mean", "dice_pooled", "seconds",
            "model_load_seconds", "flag_recall_case", "flag_precision_case", "flag_recall_slice",
            "flag_precision_slice", "flagged_cases", "failed_cases", "confidence_auc_case")
    row.update({k: s.get(k) for k in keys})
    if sweep:
        row["dice_pooled"] = s.get("dice_pooled_mean")  # a sweep reports the mean over seeds
    row["cases"] = s.get("cases", row["cases"])
    row["seconds_per_image"] = round(s["seconds"] / max(s["images"] * max(sweep, 1), 1), 3)
    row["flag_counts"] = {"case": m["flag_quality"]["case"], "slice": m["flag_quality"]["slice"]}
    if sweep:
        row.update({k: s.get(k) for k in ("seed_cases", "dice_worst", "dice_best", "dice_spread", "worst_seed_case",
                                          "seconds_first_seed", "seconds_other_seeds_mean")})
        row["per_seed"] = [{k: r.get(k) for k in ("seed_case", "seed_name", "dice_mean", "seconds",
                                                   "flag_recall_case", "flag_precision_case")} for r in m["seeds"]]
    else:
        row["seed_case"] = s.get("seed_case")
    row["out"] = str(out)
    return row


def pool(rows: list[dict[str, Any]], level: str) -> dict[str, Any]:
    """Flag recall/precision over the rows' summed counts (module docstring)."""
    keys = ("scored", "failures", "failures_flagged", "flagged", "flagged_bad")
    tot = {k: sum(int(r["flag_counts"][level][k]) for r in rows) for k in keys}
    tot["recall"] = round(tot["failures_flagged"] / tot["failures"], 4) if tot["failures"] else None
    tot["precision"] = round(tot["flagged_bad"] / tot["flagged"], 4) if tot["flagged"] else None
    return tot


def set_figures(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparisons the issue's targets are stated in, from the set's rows (None where a row failed)."""
    ok = {(r["scope"], r["protocol"], bool(r.get("seed_sweep"))): r for r in rows if "error" not in r}
    per_image = ok.get(("image", "oneclick", False))
    f: dict[str, Any] = {"per_image_dice": per_image and per_image["dice_mean"]}
    if kind == "xray":
        sw = ok.get(("dataset", "oneclick", True))
        click = ok.get(("dataset", "click", False))
        if sw:
            f.update({"one_prompt_dice_mean": sw["dice_mean"], "one_prompt_dice_worst": sw["dice_worst"],
                      "one_prompt_dice_spread": sw["dice_spread"]})
            if per_image:
                f["worst_seed_gap_points"] = round(100 * (per_image["dice_mean"] - sw["dice_worst"]), 2)
            first = sw["per_seed"][0] if sw.get("per_seed") else None
            if click and first:
                f.update({"click_dice": click["dice_mean"], "oneclick_dice_same_seed": first["dice_mean"],
                          "click_gap_points": round(100 * (first["dice_mean"] - click["dice_mean"]), 2)})
            if per_image and sw.get("seconds_first_seed") is not None:
                # a user's single run is the first seed's (later seeds reuse its embeddings)
                first_spi = sw["seconds_first_seed"] / max(sw["images"], 1)
                f["cost_ratio_dataset_vs_image"] = round(first_spi / per_image["seconds_per_image"], 3)
    else:
        vol = ok.get(("volume", "oneclick", False))
        click = ok.get(("volume", "click", False))
        sw = ok.get(("dataset", "oneclick", True))
        if vol:
            f["one_prompt_per_volume_dice"] = vol["dice_mean"]
            if per_image and per_image["dice_mean"]:
                f["volume_vs_per_slice_pct"] = round(100 * vol["dice_mean"] / per_image["dice_mean"], 2)
            if click:
                f.update({"click_dice": click["dice_mean"], "oneclick_dice": vol["dice_mean"],
                          "click_gap_points": round(100 * (vol["dice_mean"] - click["dice_mean"]), 2)})
        if sw:
            f.update({"dataset_scope_dice_mean": sw["dice_mean"], "dataset_scope_dice_worst": sw["dice_worst"],
                      "dataset_scope_dice_spread": sw["dice_spread"]})
            if vol and vol["dice_mean"]:
                f["dataset_vs_volume_pct"] = round(100 * sw["dice_mean"] / vol["dice_mean"], 2)
    return f


def targets(sets: dict[str, dict[str, Any]], pooled: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's targets, each computed from the measured figures (None values: not measured)."""
    t: dict[str, Any] = {}
    for name, s in sets.items():
        f = s["figures"]
        if "worst_seed_gap_points" in f:
            t[f"{name}: worst seed within 1.0 point of per-image"] = {
                "value": f["worst_seed_gap_points"], "met": f["worst_seed_gap_points"] <= 1.0}
        if "volume_vs_per_slice_pct" in f and not name.startswith(("hippocampus", "ct_lung")):
            t[f"{name}: one prompt per volume >= 97% of per slice"] = {
                "value": f["volume_vs_per_slice_pct"], "met": f["volume_vs_per_slice_pct"] >= 97.0}
        if "dataset_vs_volume_pct" in f:
            t[f"{name}: dataset scope >= 95% of per volume"] = {
                "value": f["dataset_vs_volume_pct"], "met": f["dataset_vs_volume_pct"] >= 95.0}
        if "click_gap_points" in f:
            t[f"{name}: click within 2 points of oneclick"] = {
                "value": f["click_gap_points"], "met": f["click_gap_points"] <= 2.0}
        if "cost_ratio_dataset_vs_image" in f:
            t[f"{name}: dataset scope <= 2x the per-image time"] = {
                "value": f["cost_ratio_dataset_vs_image"], "met": f["cost_ratio_dataset_vs_image"] <= 2.0}
    for level in ("case", "slice"):
        p = pooled[level]
        # an undefined ratio (no failure / nothing flagged) does not fail the target; it is said so
        met = (p["recall"] is None or p["recall"] >= 0.8) and (p["precision"] is None or p["precision"] >= 0.5)
        entry: dict[str, Any] = {"value": {"recall": p["recall"], "precision": p["precision"]}, "met": met}
        if p["recall"] is None or p["precision"] is None:
            entry["note"] = "no failure" if p["recall"] is None else "nothing flagged"
        t[f"flags ({level}s): recall >= 0.8 at precision >= 0.5"] = entry
    t["all_met"] = all(v["met"] for v in t.values())
    return t


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "SimpleITK"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                         check=False).stdout.strip() or None
    except OSError:
        v["git_commit"] = None
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="sets to run: " + ", ".join(SETS))
    ap.add_argument("--split", choices=["report", "tune", "all"], default="report")
    ap.add_argument("--limit", type=int, default=0, help="first N cases of the split per set (0 = all)")
    ap.add_argument("--seeds", type=int, default=5, help="K seed cases for the dataset-scope sweeps")
    ap.add_argument("--no-click", action="store_true", help="skip the --protocol click runs")
    ap.add_argument("--no-volume-sweep", action="store_true", help="skip the dataset-scope sweeps over volumes")
    ap.add_argument("--quick", action="store_true",
                    help=f"plumbing: {', '.join(QUICK_SETS)} only, {QUICK_LIMIT} cases, {QUICK_SEEDS} seeds")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--data", default=str(DATA), help="the shared data folder")
    ap.add_argument("--out-root", default="/tmp/promptonce_seed_robustness")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: data not found at {data}")
        return 0
    names = list(args.only) if args.only else list(QUICK_SETS if args.quick else SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        ap.error(f"unknown set(s) {unknown}; choose from {list(SETS)}")
    seeds = QUICK_SEEDS if args.quick else args.seeds
    t_start = time.time()
    load_start = os.getloadavg()
    sets: dict[str, dict[str, Any]] = {}
    one_prompt_rows: list[dict[str, Any]] = []
    for name in names:
        spec = SETS[name]
        if not (data / spec["images"]).exists():
            sets[name] = {"skipped": f"{data / spec['images']} not found"}
            continue
        limit = QUICK_LIMIT.get(name, 2) if args.quick and not args.limit else args.limit
        files = case_files(data, spec, args.split, limit)
        if not files:
            sets[name] = {"skipped": f"no case in split {args.split!r}"}
            continue
        plan: list[tuple[str, str, int]] = [("image", "oneclick", 0)]
        if spec["kind"] == "xray":
            plan.append(("dataset", "oneclick", min(seeds, len(files))))
            if not args.no_click:
                plan.append(("dataset", "click", 0))
        else:
            plan.append(("volume", "oneclick", 0))
            if not args.no_click:
                plan.append(("volume", "click", 0))
            if spec.get("sweep") and not args.quick and not args.no_volume_sweep and len(files) > 1:
                plan.append(("dataset", "oneclick", min(seeds, len(files))))
        rows = []
        for scope, protocol, sweep in plan:
            row = run_eval(name, spec, files, data, scope=scope, protocol=protocol, sweep=sweep, model=args.model,
                           out_root=Path(args.out_root))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_seed", "flag_counts")}),
                  file=sys.stderr, flush=True)
            if "error" not in row and scope != "image":
                one_prompt_rows.append(row)
        sets[name] = {"kind": spec["kind"], "labels": spec["labels"], "split": args.split if spec["tune"] else "all",
                      "cases": [f.name for f in files] if len(files) <= 12 else
                      [files[0].name, "...", files[-1].name], "n_cases": len(files),
                      "runs": rows, "figures": set_figures(spec["kind"], rows)}
    pooled = {"over": "every one-prompt run (volume and dataset scope, both protocols; sweeps: every seed)",
              "thresholds": {"fail_below": FAIL_BELOW, "bad_below": BAD_BELOW},
              "runs": len(one_prompt_rows),
              "case": pool(one_prompt_rows, "case"), "slice": pool(one_prompt_rows, "slice")}
    doc = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/seed_robustness.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_start)) + " UTC",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
        "model": args.model, "split": args.split, "limit": args.limit, "seeds": seeds, "quick": args.quick,
        "total_seconds": round(time.time() - t_start, 1),
        "sets": sets,
        "flags_pooled": pooled,
    }
    doc["targets"] = targets({k: v for k, v in sets.items() if "figures" in v}, pooled)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
