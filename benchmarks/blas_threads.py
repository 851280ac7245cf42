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

from _xrays import write_json  # noqa: E402
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


def time_modes(backend, calls: list, modes: tuple[str, ...], switch, rounds: int) -> tuple[dict, dict]:
    """Rounds of ``backend.predict`` over ``calls`` (``(embedding, keyword arguments)``), the modes alternating.

    ``switch(mode)`` sets a mode up before its turn. Returns the milliseconds a ``predict`` per mode and
    round, and each mode's predictions of its first round.
    """
    times: dict[str, list[float]] = {m: [] for m in modes}
    preds: dict[str, list] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            switch(mode)
            keep = not preds[mode]
            t0 = time.perf_counter()
            for e, kwargs in calls:
                p = backend.predict(e, **kwargs)
                if keep:
                    preds[mode].append(p)
            times[mode].append((time.perf_counter() - t0) / len(calls) * 1000.0)
    return times, preds


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
        calls = [(e, {"box": b}) for e in embs for b in boxes(e.frame_size, args.boxes)]

        def switch(mode: str) -> None:
            _onnx.one_blas_thread = original if mode == "one_thread" else contextlib.nullcontext

        try:
            times, preds = time_modes(backend, calls, ("default", "one_thread"), switch, args.rounds)
        finally:
            _onnx.one_blas_thread = original
        same = all(np.array_equal(a.masks, b.masks) for a, b in zip(preds["default"], preds["one_thread"], strict=True))
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
    write_json(args.out, result)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
