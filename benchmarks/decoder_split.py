"""The split decoder (image side once per embedding, prompt side per call) against the whole decoder graph.

Runs each CPU model's ``predict`` on the same embeddings and boxes (MobileSAM: also clicks) with the
decoder as one graph and split in two (``promptonce.backends._decoder_split``), rounds alternating,
and writes the milliseconds a call (median of the rounds), the image-graph runs, and how far the
masks and logits of the two are apart.

    .venv/bin/python benchmarks/decoder_split.py --out benchmarks/results/decoder_split.json   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import write_json  # noqa: E402
from blas_threads import boxes, frames, time_modes  # noqa: E402


def _calls(name: str, size: tuple[int, int], k: int) -> list[dict]:
    out: list[dict] = [{"box": b} for b in boxes(size, k)]
    if name == "mobilesam":
        h, w = size
        out += [{"points": np.array([[0.3 * w, 0.5 * h]], np.float32), "point_labels": np.array([1])},
                {"points": np.array([[0.7 * w, 0.5 * h], [0.5 * w, 0.5 * h]], np.float32),
                 "point_labels": np.array([1, 0])}]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="litemedsam,mobilesam")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=4, help="box sizes a lung (two lungs)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of both first")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder_split.json")
    args = ap.parse_args(argv)

    from promptonce.backends._decoder_split import SplitDecoder
    from promptonce.backends.registry import get_backend

    imgs, source = frames(args.images)
    result: dict = {
        "command": "python benchmarks/decoder_split.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "frames": source,
        "cpu_count": os.cpu_count(),
        "backends": {},
    }
    for name in [b for b in args.backends.split(",") if b]:
        try:
            backend = get_backend(name)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            result["backends"][name] = {"skipped": str(exc)}
            continue
        split = getattr(backend, "_onnx_decoder", None)
        if not isinstance(split, SplitDecoder):
            result["backends"][name] = {"skipped": f"no split decoder (decoder: {type(split).__name__})"}
            continue
        embs = [backend.embed(f) for f in imgs]
        calls = [(e, c) for e in embs for c in _calls(name, e.frame_size, args.boxes)]

        def switch(mode: str, split=split, backend=backend) -> None:  # noqa: ANN001 - bound per backend
            backend._onnx_decoder = split if mode == "split" else split.whole

        try:
            time_modes(backend, calls, ("whole", "split"), switch, args.warmup)  # untimed
            runs_before = split.image_runs
            times, preds = time_modes(backend, calls, ("whole", "split"), switch, args.rounds)
        finally:
            backend._onnx_decoder = split
        pairs = list(zip(preds["whole"], preds["split"], strict=True))
        entry = {
            "calls_per_round": len(calls),
            "embeddings": len(embs),
            "ms_per_predict_whole": [round(t, 1) for t in times["whole"]],
            "ms_per_predict_split": [round(t, 1) for t in times["split"]],
            "median_ms_whole": round(float(np.median(times["whole"])), 1),
            "median_ms_split": round(float(np.median(times["split"])), 1),
            "image_graph_runs_timed": split.image_runs - runs_before,
            "masks_identical": sum(bool(np.array_equal(a.masks, b.masks)) for a, b in pairs),
            "mask_pixels_differing": int(sum(int((a.masks != b.masks).sum()) for a, b in pairs)),
            "max_abs_logit_diff": float(max(float(np.max(np.abs(a.logits - b.logits))) for a, b in pairs)),
            "max_abs_score_diff": float(max(float(np.max(np.abs(a.scores - b.scores))) for a, b in pairs)),
        }
        result["backends"][name] = entry
        print(name, json.dumps(entry))
    write_json(args.out, result)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
