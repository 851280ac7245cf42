"""Evaluate PromptOnce on the real data sets beside the repo (../shared/data) and write JSON.

Each configuration runs ``promptonce evaluate`` in a subprocess (one at a time, so timings are not
disturbed by each other) and its ``metrics.json`` summary is collected into
``benchmarks/results/shared_eval.json``; a Markdown table is printed.

    .venv/bin/python benchmarks/evaluate_shared.py --limit 50            # the figures in benchmarks/README.md
    .venv/bin/python benchmarks/evaluate_shared.py --only cxr --limit 0  # every Shenzhen X-ray (slow on CPU)

``--limit N`` evaluates the first N cases of each set (0 = all). Skips with a message when the data
folder is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# name, images, references, extra args, scopes (scope, strategy)
CONFIGS = [
    ("cxr", "cxr_shenzhen/images", "cxr_shenzhen/masks", [],
     [("image", None), ("dataset", "transfer"), ("dataset", "chain")]),
    ("ct_liver", "ct_totalseg_example/image.nii.gz", "ct_totalseg_example/labels.nii.gz", ["--labels", "5"],
     [("image", None), ("volume", None)]),
    ("ct_lung_slices", "ct_covid_lung_slices/images", "ct_covid_lung_slices/masks", [],
     [("image", None), ("dataset", "transfer")]),
    ("ct_infection", "ct_covid_infection_slices/test/images", "ct_covid_infection_slices/test/masks", [],
     [("image", None), ("dataset", "transfer")]),
    ("acdc_lv", "mri_acdc/images", "mri_acdc/labels", ["--labels", "3"], [("image", None), ("volume", None)]),
    ("hippocampus", "mri_hippocampus/images", "mri_hippocampus/labels", ["--labels", "1,2"],
     [("image", None), ("volume", None)]),
]


def run(name: str, images: str, refs: str, extra: list[str], scope: str, strategy: str | None, limit: int,
        model: str, out_root: Path) -> dict:
    out = out_root / f"{name}_{scope}{'_' + strategy if strategy else ''}_{model}"
    cmd = [sys.executable, "-m", "promptonce", "evaluate", "--images", str(DATA / images), "--references",
           str(DATA / refs), "--out", str(out), "--scope", scope, "--model", model, "--quiet", "--no-masks", *extra]
    if strategy:
        cmd += ["--strategy", strategy]
    if limit:
        cmd += ["--limit", str(limit)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": name, "scope": scope, "strategy": strategy, "error": proc.stderr.strip()[-2000:]}
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    return {"name": name, "wall_seconds": round(wall, 1), "out": str(out), **summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=50, help="first N cases per set (0 = all)")
    ap.add_argument("--only", nargs="*", default=None, help="set names to run: " + ", ".join(c[0] for c in CONFIGS))
    ap.add_argument("--model", default="auto")
    ap.add_argument("--out-root", default="/tmp/promptonce_eval")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "shared_eval.json"))
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: real data not found at {DATA}")
        return 0
    rows = []
    for name, images, refs, extra, scopes in CONFIGS:
        if args.only and name not in args.only:
            continue
        for scope, strategy in scopes:
            row = run(name, images, refs, extra, scope, strategy, args.limit, args.model, Path(args.out_root))
            row["limit"] = args.limit
            rows.append(row)
            print(json.dumps(row), flush=True)
    import torch  # noqa: PLC0415 - versions for the record only

    path = Path(args.json)
    if path.exists():  # keep earlier runs of other sets/scopes (e.g. when --only is used)
        done = {(r["name"], r["scope"], r.get("strategy")) for r in rows}
        old = json.loads(path.read_text()).get("runs", [])
        rows = [r for r in old if (r["name"], r["scope"], r.get("strategy")) not in done] + rows
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    print("\n| set | scope | strategy | cases | images | prompts | Dice | Jaccard | s/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | {r['scope']} | {r.get('strategy') or ''} | error: {r['error'][:80]} |")
            continue
        spi = r["seconds"] / max(r["images"], 1)
        print(f"| {r['name']} | {r['scope']} | {r.get('strategy') or ''} | {r['cases']} | {r['images']} | "
              f"{r['prompts']} | {r['dice_mean']:.4f} | {r['jaccard_mean']:.4f} | {spi:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
