"""A click against a box: ``--protocol click`` vs ``--protocol oneclick`` on every set in ../shared/data.

For each set, a few cases and a few slices per case (evenly spread over the slices whose object is
at least ``--min-frac`` of its largest area) are segmented in image scope - the code path of
``promptonce evaluate --scope image`` (``segment(..., scope="image")`` on the prompted slice) - once
with the simulated user's ``click`` prompt (one interior positive click per connected component)
and once with ``oneclick`` (one box and that click per component; the box-only LiteMedSAM uses the
box). One engine serves both, so a slice is encoded once per model. Per-slice Dice is averaged per
set. Writes ``benchmarks/results/clicks.json`` and prints a Markdown table.

    PROMPTONCE_THREADS=1 .venv/bin/python benchmarks/clicks.py --cxr 10 --cases 1 --slices 3   # results/clicks.json
    .venv/bin/python benchmarks/clicks.py --only ct_liver --slices 8
    .venv/bin/python benchmarks/clicks.py --protocols click   # only clicks (oneclick does not depend on the click path)

``results/clicks.json`` as committed holds a before/after comparison: the run above on the code
before the click rework (main at 3c80f48, both protocols) and ``--protocols click`` after it.

Skips with a message when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

CT = ("ct_totalseg_example/image.nii.gz", "ct_totalseg_example/labels.nii.gz")
# name, images, references, labels, cases
SETS = [
    ("cxr_shenzhen", "cxr_shenzhen/images", "cxr_shenzhen/masks", None, 30),
    ("ct_liver", *CT, [5], 1),
    ("ct_spleen", *CT, [1], 1),
    ("ct_kidney_right", *CT, [2], 1),
    ("ct_kidney_left", *CT, [3], 1),
    ("ct_stomach", *CT, [6], 1),
    ("ct_aorta", *CT, [52], 1),
    ("ct_lung_cip", "ct_lung_cip/image.nii.gz", "ct_lung_cip/lung_mask.nii.gz", None, 1),
    ("acdc_lv", "mri_acdc/images", "mri_acdc/labels", [3], 3),
    ("acdc_rv", "mri_acdc/images", "mri_acdc/labels", [1], 3),
    ("acdc_myo", "mri_acdc/images", "mri_acdc/labels", [2], 3),
    ("hippocampus", "mri_hippocampus/images", "mri_hippocampus/labels", [1, 2], 3),
]
PROTOCOLS = ("oneclick", "click")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def chosen_slices(fg: np.ndarray, n: int, min_frac: float) -> list[int]:
    areas = fg.reshape(fg.shape[0], -1).sum(axis=1)
    ok = np.flatnonzero(areas >= max(min_frac * areas.max(), 20))
    if len(ok) <= n:
        return [int(k) for k in ok]
    return [int(ok[int(round(j))]) for j in np.linspace(0, len(ok) - 1, n)]


def iter_volumes(data: Path, images: str, refs: str, labels, first: int, count: int):  # noqa: ANN001, ANN201
    """``(volume, reference, foreground)`` for cases ``first .. first + count - 1`` of a set (``labels`` None:
    any label is foreground)."""
    from promptonce.io.readers import load_dataset, load_reference, pair_references

    ds = load_dataset(str(data / images))[first : first + count]
    rp = data / refs
    ref_paths = [rp] * len(ds) if rp.is_file() else pair_references(ds, [str(rp)])
    for i in range(len(ds)):
        vol = ds[i]
        ref = load_reference(ref_paths[i], vol).array
        yield vol, ref, (np.isin(ref, labels) if labels is not None else ref != 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="set names: " + ", ".join(s[0] for s in SETS))
    ap.add_argument("--slices", type=int, default=4, help="slices per volume (volume sets)")
    ap.add_argument("--cxr", type=int, default=None, help="override the number of X-rays (first N)")
    ap.add_argument("--cases", type=int, default=None,
                    help="volumes per volume set (default: 3 for ACDC and hippocampus; the CT sets have one)")
    ap.add_argument("--first-case", type=int, default=0,
                    help="skip this many cases of every set (held-out cases: the first ones tuned the click path)")
    ap.add_argument("--protocols", nargs="*", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--min-frac", type=float, default=0.25, help="slices whose object is >= this of its max area")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "clicks.json"))
    ap.add_argument("--label", default="", help="a note stored with the run (e.g. before/after)")
    ap.add_argument("--data", default=str(DATA), help="the shared data folder")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: real data not found at {data}")
        return 0
    sys.path.insert(0, str(REPO))
    from promptonce.engine import make_engine, segment
    from promptonce.evaluate import reference_prompt
    from promptonce.types import Dataset

    eng = None
    rows = []
    t_all = time.perf_counter()
    for name, images, refs, labels, n_cases in SETS:
        if args.only and name not in args.only:
            continue
        if name == "cxr_shenzhen" and args.cxr:
            n_cases = args.cxr
        elif name != "cxr_shenzhen" and args.cases:
            n_cases = args.cases
        dices: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
        where: list[str] = []
        cases = 0
        t0 = time.perf_counter()
        for vol, ref, fg in iter_volumes(data, images, refs, labels, args.first_case, n_cases):
            cases += 1
            for k in chosen_slices(fg, args.slices, args.min_frac):
                for proto in args.protocols:
                    sp = reference_prompt(ref[k], labels=labels, protocol=proto, slice_index=k)
                    if sp is None:
                        continue
                    if eng is None:
                        click_sp = reference_prompt(ref[k], labels=labels, protocol="click", slice_index=k)
                        eng = make_engine(click_sp, "auto", "auto")
                        eng.cache_size = 16
                    (res,) = list(segment(Dataset([vol]), sp, scope="image", engine=eng))
                    dices[proto].append(dice(res.labels != 0, fg[k]))
                    print(f"  {name} {vol.name}:{k} {proto} {dices[proto][-1]:.4f}", file=sys.stderr, flush=True)
                where.append(f"{vol.name}:{k}")
        row = {"name": name, "labels": labels, "cases": cases, "slices": len(where),
               "seconds": round(time.perf_counter() - t0, 1), "where": where}
        for p in PROTOCOLS:
            row[f"dice_{p}"] = round(float(np.mean(dices[p])), 4) if dices[p] else None
            row[f"dice_{p}_min"] = round(float(np.min(dices[p])), 4) if dices[p] else None
            row[f"slice_dice_{p}"] = [round(d, 4) for d in dices[p]]
        if dices["click"] and dices["oneclick"]:
            row["click_minus_oneclick"] = round(row["dice_click"] - row["dice_oneclick"], 4)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("slice_") and k != "where"}), flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    path = Path(args.json)
    old = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    done = {r["name"] for r in rows}
    rows_all = [r for r in old if r["name"] not in done] + rows
    result = {
        "benchmark": "benchmarks/clicks.py: click vs oneclick, image scope on a subset of slices",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": commit.stdout.strip(),
        "note": args.label,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "args": vars(args),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "runs": rows_all,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    print("\n| set | labels | cases | slices | oneclick Dice | click Dice | click - oneclick | worst click |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_all:
        print(f"| {r['name']} | {r['labels']} | {r['cases']} | {r['slices']} | {r.get('dice_oneclick')} | "
              f"{r.get('dice_click')} | {r.get('click_minus_oneclick')} | {r.get('dice_click_min')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
