"""Inside a volume: the slice walk with and without 2D registration of each slice's mask to the next.

One reference box on the largest slice of each object (volume scope), the same engine for both
settings (embeddings reused), Dice per case and object, seconds. Writes JSON.

    .venv/bin/python benchmarks/walk_registration.py --acdc 3 --out benchmarks/results/walk_registration.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptonce.engine import Engine, PropagationConfig, make_engine, segment  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.io.readers import load, load_reference  # noqa: E402
from promptonce.metrics import dice  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def cases(n_acdc: int, first: int) -> list[tuple[str, Path, Path, list[int]]]:
    out = []
    imgs = sorted((DATA / "mri_acdc" / "images").glob("*.nii.gz"))[first : first + n_acdc]
    for p in imgs:
        out.append((f"acdc/{p.name}", p, DATA / "mri_acdc" / "labels" / p.name, [1, 2, 3]))
    return out


def run_case(eng: Engine, vol, ref, label: int) -> tuple[float, float]:
    fg = ref.array == label
    areas = fg.reshape(fg.shape[0], -1).sum(1)
    k = int(np.argmax(areas))
    sp = reference_prompt(fg[k].astype(np.uint8), labels=None, protocol="box", slice_index=k)
    # one object per component merged into one id: the walk compares the union
    sp = type(sp)(tuple(type(o)(box=o.box, object_id=1) for o in sp.objects[:1]), slice_index=k)
    t = time.perf_counter()
    pred = np.zeros(fg.shape, bool)
    for r in segment(vol, sp, scope="volume", engine=eng):
        pred[r.slice_index] = r.labels > 0
    return float(dice(pred, fg)), time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--acdc", type=int, default=3)
    ap.add_argument("--first", type=int, default=20, help="first ACDC volume (sorted); 0-19 were tuning")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "walk_registration.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print("skipped: no ../shared/data", file=sys.stderr)
        return 0
    base = make_engine(None, "litemedsam", None)
    rows = []
    for name, img, lab, labels in cases(args.acdc, args.first):
        vol = load(img)
        ref = load_reference(lab, vol)
        for label in labels:
            row = {"case": name, "label": label}
            for flag in (False, True):
                eng = Engine(base.backend, config=PropagationConfig(walk_registration=flag))
                eng.cache = base.cache  # same embeddings for both settings
                d, s = run_case(eng, vol, ref, label)
                row["registration" if flag else "box"] = {"dice": d, "seconds": s}
            rows.append(row)
            print(name, label, {k: round(v["dice"], 4) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    summ = {k: float(np.mean([r[k]["dice"] for r in rows])) for k in ("box", "registration")}
    secs = {k: float(np.sum([r[k]["seconds"] for r in rows])) for k in ("box", "registration")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"mean_dice": summ, "seconds": secs, "rows": rows}, indent=1))
    print("mean Dice", summ, "seconds", secs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
