"""What numpy's BLAS threads cost the CPU models' prompt decoder, and that one thread changes no mask.

Each ``predict`` runs the ONNX decoder graph, then upsamples the low-resolution logits to the frame with
two matrix products (numpy, OpenBLAS). Those products are big enough for OpenBLAS to wake its worker
threads, which then busy-wait and take cores from the next decoder call. The product now runs them on
one BLAS thread (:func:`promptonce.backends._onnx.one_blas_thread`); this times ``predict`` both ways,
alternating rounds on the same embeddings and boxes, and checks the masks are identical. Writes JSON.

    .venv/bin/python benchmarks/blas_threads.py --out benchmarks/results/blas_threads.json

Frames: the first ``--images`` Shenzhen X-rays from ``../shared/data`` when present, else synthetic
frames (the timing does not depend on the content).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHENZHEN = ROOT.parent / "shared" / "data" / "cxr_shenzhen" / "images"


def frames(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` uint8 RGB frames and where they came from."""
    from PIL import Image

    if SHENZHEN.is_dir():
        names = sorted(os.listdir(SHENZHEN))[:n]
        return [np.asarray(Image.open(SHENZHEN / f).convert("RGB")) for f in names], f"cxr_shenzhen 0-{n - 1}"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(n)], "synthetic 512x512"


def boxes(size: tuple[int, int], k: int) -> list[np.ndarray]:
    """``k`` boxes of different sizes around each lung's usual place."""
    h, w = size
    out = []
    for i in range(k):
        m = 0.02 * i
        left = [0.10 - m, 0.15 - m, 0.48 + m, 0.90 + m]
        right = [0.52 - m, 0.15 - m, 0.90 + m, 0.90 + m]
        for b in (left, right):
            out.append(np.clip(np.array([b[0] * w, b[1] * h, b[2] * w, b[3] * h], np.float32), 0, max(h, w) - 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="litemedsam,mobilesam")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=4, help="box sizes a lung (two lungs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "blas_threads.json")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_info

    from promptonce.backends import _onnx
    from promptonce.backends.registry import get_backend

    imgs, source = frames(args.images)
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    result: dict = {
        "command": "python benchmarks/blas_threads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "frames": source,
        "cpu_count": os.cpu_count(),
        "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in blas],
        "backends": {},
    }
    original = _onnx.one_blas_thread
    for name in [b for b in args.backends.split(",") if b]:
        try:
            backend = get_backend(name)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            result["backends"][name] = {"skipped": str(exc)}
            continue
        if getattr(backend, "_onnx_decoder", None) is None:
            result["backends"][name] = {"skipped": "not on ONNX Runtime (the numpy upsampling is not used)"}
            continue
        embs = [backend.embed(f) for f in imgs]
        calls = [(e, b) for e in embs for b in boxes(e.frame_size, args.boxes)]
        times: dict[str, list[float]] = {"default": [], "one_thread": []}
        masks: dict[str, list[np.ndarray]] = {"default": [], "one_thread": []}
        for _ in range(args.rounds):
            for mode in ("default", "one_thread"):
                _onnx.one_blas_thread = original if mode == "one_thread" else contextlib.nullcontext
                keep = not masks[mode]
                t0 = time.perf_counter()
                for e, b in calls:
                    p = backend.predict(e, box=b)
                    if keep:
                        masks[mode].append(p.masks)
                times[mode].append((time.perf_counter() - t0) / len(calls) * 1000.0)
        _onnx.one_blas_thread = original
        same = all(np.array_equal(a, b) for a, b in zip(masks["default"], masks["one_thread"], strict=True))
        entry = {
            "calls_per_round": len(calls),
            "ms_per_predict_default": [round(t, 1) for t in times["default"]],
            "ms_per_predict_one_thread": [round(t, 1) for t in times["one_thread"]],
            "median_ms_default": round(float(np.median(times["default"])), 1),
            "median_ms_one_thread": round(float(np.median(times["one_thread"])), 1),
            "masks_identical": bool(same),
        }
        result["backends"][name] = entry
        print(name, json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
