"""Registration accuracy as an atlas: a case's reference mask warped onto another case, scored against that case.

This is what the dataset transfer's prior is made of (``promptonce.registration``: SimpleITK affine on
Mattes mutual information + demons), measured apart from the model: for pairs of cases (i, j), the
reference mask of i is warped onto j by ``register(j, thumbnail(i))`` and compared with j's reference
(Dice, per object). Configurations compared in one run: the defaults before and after the working grid
was reduced to 64 pixels (``before``: grid 128, 40 demons iterations, field smoothing 2 px).

Sets (``../shared/data``): Shenzhen X-rays 0-39 (the tuning images; pairs from 4 atlases, every second
one) and 300-339 (held out), ACDC (largest-label slice of the first 10 volumes, labels 1-3, all pairs),
hippocampus (largest-label slice of the first 12 volumes, labels 1-2, all pairs).

    .venv/bin/python benchmarks/registration_accuracy.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptonce import registration as reg  # noqa: E402

DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CONFIGS = {
    "before (grid 128, 40 demons iterations, smoothing 2)": {"size": 128, "demons_iterations": 40, "demons_sigma": 2.0},
    "now (defaults: grid 64, 80 iterations, smoothing 1.5)": {},
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def xray_set(start: int, n: int = 40):
    from PIL import Image

    paths = sorted((DATA / "cxr_shenzhen" / "images").glob("*.png"))[start:start + n]
    imgs = [np.asarray(Image.open(p).convert("L")) for p in paths]
    labels = [(np.asarray(Image.open(DATA / "cxr_shenzhen" / "masks" / p.name).convert("L")) > 127).astype(np.uint8)
              for p in paths]
    atlases = [0, 7, 20, 33]
    pairs = [(i, j) for i in atlases for j in range(len(imgs)) if j != i][::2]
    return imgs, labels, pairs, (1,)


def volume_set(name: str, n: int, objects: tuple[int, ...]):
    import nibabel as nib

    paths = sorted((DATA / name / "images").glob("*.nii.gz"))[:n]
    imgs, labels = [], []
    for p in paths:
        a = np.asarray(nib.load(str(p)).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(str(DATA / name / "labels" / p.name)).dataobj).astype(np.uint8)
        k = int(np.argmax((lab > 0).sum(axis=(0, 1))))
        imgs.append(a[:, :, k])
        labels.append(lab[:, :, k])
    pairs = [(i, j) for i in range(len(imgs)) for j in range(len(imgs)) if i != j]
    return imgs, labels, pairs, objects


def measure(imgs, labels, pairs, objects, config: dict) -> dict:
    from scipy import ndimage

    thumbs = [reg.thumbnail(x, 256) for x in imgs]
    scores, seconds = [], 0.0
    for i, j in pairs:
        t = time.perf_counter()
        r = reg.register(imgs[j], thumbs[i], **config)
        seconds += time.perf_counter() - t
        th = thumbs[i]
        for o in objects:
            if not (labels[j] == o).any() or not (labels[i] == o).any():
                continue
            m = (labels[i] == o).astype(np.float32)
            z = ndimage.zoom(m, (th.shape[0] / m.shape[0], th.shape[1] / m.shape[1]), order=1)[: th.shape[0], : th.shape[1]]
            scores.append(_dice(reg.warp(z, r, shape=labels[j].shape) >= 0.5, labels[j] == o))
    d = np.asarray(scores)
    return {"pairs": len(pairs), "scores": len(d), "dice_mean": round(float(d.mean()), 4),
            "dice_p10": round(float(np.percentile(d, 10)), 4), "dice_min": round(float(d.min()), 4),
            "ms_per_pair": round(1000 * seconds / len(pairs), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "registration_accuracy.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found", file=sys.stderr)
        return 0
    sets = {
        "shenzhen 0-39 (tuning)": lambda: xray_set(0),
        "shenzhen 300-339 (held out)": lambda: xray_set(300),
        "acdc, first 10 volumes": lambda: volume_set("mri_acdc", 10, (1, 2, 3)),
        "hippocampus, first 12 volumes": lambda: volume_set("mri_hippocampus", 12, (1, 2)),
    }
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "loadavg": os.getloadavg(),
           "itk_threads": reg.ITK_THREADS, "results": {}}
    for name, make in sets.items():
        data = make()
        out["results"][name] = {c: measure(*data, cfg) for c, cfg in CONFIGS.items()}
        print(name, json.dumps(out["results"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
