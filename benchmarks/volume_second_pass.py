"""Which exemplar-pass rule suits volumes at dataset scope: the volume rule, or the X-ray rule.

On a single image (an X-ray) a case below ``transfer.SECOND_PASS_BELOW_IMAGE`` (0.90) is redone from
the fused priors of the seed and its most similar exemplars and the fused result is kept; on a volume
a case below ``transfer.SECOND_PASS_BELOW`` (0.80) is redone and the more confident of the two runs
kept. This runs ``promptonce evaluate --scope dataset --protocol oneclick`` on ACDC volumes (LV 3,
RV 1, myocardium 2) once per rule, in a child process each that sets the rule:

* ``now``: the volume rule (below 0.80, the more confident);
* ``b90``: below 0.90, the more confident;
* ``f80`` / ``f90``: below 0.80 / 0.90, the fused result kept (the X-ray rule).

A run whose ``metrics.json`` is already in ``--out-root`` is read, not run again. Writes JSON.

    .venv/bin/python benchmarks/volume_second_pass.py --first 0 --count 10 \\
        --out benchmarks/results/volume_second_pass_acdc_tune.json      # tuning volumes, ~20 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _xrays import write_json

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "mri_acdc"
VARIANTS = ("now", "b90", "f80", "f90")
LABELS = {"3": "lv", "1": "rv", "2": "myocardium"}


def child(variant: str, argv: list[str]) -> int:
    """Sets the rule in this process, then runs ``promptonce evaluate`` with ``argv``."""
    from promptonce import cli
    from promptonce.engine import transfer as t

    if variant == "b90":
        t.SECOND_PASS_BELOW = 0.90
    elif variant in ("f80", "f90"):
        t.SECOND_PASS_BELOW_IMAGE = 0.80 if variant == "f80" else 0.90
        t._single_image = lambda outcome: True  # every case takes the single-image rule
    elif variant != "now":
        raise SystemExit(f"unknown variant {variant}")
    return cli.main(["evaluate", *argv])


def summary(path: Path) -> dict:
    doc = json.loads(path.read_text())
    s, cases = doc["summary"], doc["cases"]
    return {"dice_mean": s["dice_mean"], "worst_case": min(c["dice"] for c in cases),
            "below_0.85": sum(c["dice"] < 0.85 for c in cases), "cases": len(cases),
            "flagged_cases": s["flagged_cases"], "seconds": s["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=0, help="first ACDC volume (sorted names; 0-9 are the tuning split)")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out-root", type=Path, default=None, help="evaluate outputs (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume_second_pass.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.child:
        return child(args.child, rest)
    if not ACDC.is_dir():
        print(f"skipped: {ACDC} is absent", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out_root or Path(tmp)
        names = sorted(os.listdir(ACDC / "images"))[args.first : args.first + args.count]
        images, refs = root / "images", root / "labels"
        for d, src in ((images, ACDC / "images"), (refs, ACDC / "labels")):
            d.mkdir(parents=True, exist_ok=True)
            for n in names:
                if not (d / n).exists():
                    (d / n).symlink_to(src / n)
        given = argv if argv is not None else sys.argv[1:]
        result: dict = {"command": "python benchmarks/volume_second_pass.py " + " ".join(given),
                        "volumes": names, "runs": {}}
        for variant in [v for v in args.variants.split(",") if v]:
            for label, name in LABELS.items():
                out = root / f"vr_{variant}_{label}"
                if not (out / "metrics.json").exists():
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--images", str(images),
                           "--references", str(refs), "--labels", label, "--scope", "dataset", "--protocol",
                           "oneclick", "--out", str(out), "--quiet", "--no-masks"]
                    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                result["runs"].setdefault(variant, {})[name] = summary(out / "metrics.json")
                print(variant, name, json.dumps(result["runs"][variant][name]))
    write_json(args.out, result)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
