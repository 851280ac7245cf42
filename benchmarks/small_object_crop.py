"""Small structures: does cropping around the object before encoding help? (hippocampus, LiteMedSAM)

The issue asked to try it for small structures. Here each volume is cropped in-plane around the
prompted slice's object (a square of ``factor`` x the object's larger side, centred on it, the same
crop for every slice), the cropped volume is what the model sees (so the object fills more of the
encoder's 256x256 input), and the predictions are pasted back into the full volume and scored
against the full reference (reference voxels outside the crop count as missed). Two figures per
configuration, both with LiteMedSAM and the reference box protocol:

* per slice: a reference box on every slice that holds the object (the upper bound);
* per volume: one reference box on the largest slice, propagated (``scope="volume"``).

Volumes: the first ``--count`` of the hippocampus tuning split (natural order), labels 1 and 2 as one
object. Slices are the last NIfTI axis, as everywhere in ``seed_robustness.py``.

    .venv/bin/python benchmarks/small_object_crop.py --count 4     # ~5 minutes on 2 cores
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

DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data"))
FACTORS = (None, 2.0, 1.5)  # None: the whole slice (what the product does)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def crop_window(mask: np.ndarray, factor: float | None) -> tuple[slice, slice]:
    """Rows and columns of a square of ``factor`` x the mask's larger side around its centre (whole slice for None)."""
    if factor is None:
        return slice(None), slice(None)
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = factor * max(np.ptp(ys) + 1, np.ptp(xs) + 1) / 2
    h, w = mask.shape
    return (slice(int(max(0, cy - half)), int(min(h, cy + half + 1))),
            slice(int(max(0, cx - half)), int(min(w, cx + half + 1))))


def measure(path: Path, factor: float | None, eng) -> dict:
    from promptonce.engine import segment
    from promptonce.evaluate import reference_prompt
    from promptonce.io.readers import load
    from promptonce.types import Volume

    vol = load(path)
    ref = load(DATA / "mri_hippocampus" / "labels" / path.name).array > 0
    k0 = int(np.argmax(ref.sum(axis=(1, 2))))
    rows, cols = crop_window(ref[k0], factor)
    sub = Volume(np.ascontiguousarray(vol.array[:, rows, cols]), name=vol.name, modality=vol.modality)
    sref = ref[:, rows, cols]
    prompt = reference_prompt(sref[k0].astype(np.uint8), labels=None, protocol="box", slice_index=k0)
    per_volume = np.zeros_like(ref)
    for r in segment(sub, prompt, scope="volume", engine=eng):
        per_volume[r.slice_index][rows, cols] = r.labels > 0
    per_slice = np.zeros_like(ref)
    for k in range(sub.n_slices):
        if sref[k].any():
            p = reference_prompt(sref[k].astype(np.uint8), labels=None, protocol="box", slice_index=k)
            per_slice[k][rows, cols] = next(iter(eng.segment_volume(sub, p, scope_slices=(k, k)))).labels > 0
    return {"volume": vol.name, "crop": list(sub.shape), "per_volume": round(_dice(per_volume, ref), 4),
            "per_slice": round(_dice(per_slice, ref), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "small_object_crop.json")
    args = ap.parse_args(argv)
    if not (DATA / "mri_hippocampus").is_dir():
        print(f"skipped: {DATA / 'mri_hippocampus'} not found", file=sys.stderr)
        return 0
    from promptonce.engine import make_engine

    paths = sorted((DATA / "mri_hippocampus" / "images").glob("*.nii.gz"),
                   key=lambda p: int("".join(c for c in p.name if c.isdigit()) or 0))[: args.count]
    eng = make_engine(None, "litemedsam", None)
    t0 = time.time()
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "configs": {}}
    for factor in FACTORS:
        name = "whole slice" if factor is None else f"crop {factor}x the object"
        rows = [measure(p, factor, eng) for p in paths]
        pv = float(np.nanmean([r["per_volume"] for r in rows]))
        ps = float(np.nanmean([r["per_slice"] for r in rows]))
        out["configs"][name] = {"per_volume": round(pv, 4), "per_slice": round(ps, 4),
                                "per_volume_over_per_slice": round(pv / ps, 3), "volumes": rows}
        print(name, json.dumps(out["configs"][name]), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
