"""Whether LiteMedSAM's prompt decoder gets cheaper per box when several boxes go in one call.

A dataset-scope run asks the decoder about 25 times an image (candidate boxes, their refinement,
the side search), one box a call. This exports the product's decoder graph
(:func:`promptonce.backends._onnx.decoder_module`) with a variable number of boxes per call, checks
that a batch gives the masks of single calls, and times 1, 2, 3, 6 and 12 boxes a call on ONNX
Runtime with the decoder's settings (2 intra-op threads, no spinning). Writes JSON.

    .venv/bin/python benchmarks/decoder_batch.py --out benchmarks/results/decoder_batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]


def feeds(emb: np.ndarray, b: int) -> dict[str, np.ndarray]:
    """``b`` different boxes (model-input pixels) on one embedding, no mask input."""
    coords = np.stack([np.array([[30.0 + 3 * i, 50.0], [200.0, 220.0 - 3 * i]], np.float32) for i in range(b)])
    return {"image_embeddings": emb, "point_coords": coords,
            "point_labels": np.tile(np.array([[2.0, 3.0]], np.float32), (b, 1)),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder_batch.json")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from promptonce.backends import _onnx
    from promptonce.backends.litemedsam import LiteMedSAMBackend, check_available

    why = check_available()
    if why is not None:
        print(f"skipped: {why}", file=sys.stderr)
        return 0
    model = LiteMedSAMBackend(runtime="torch").model
    module = _onnx.decoder_module(model.prompt_encoder, model.mask_decoder, 256)
    g = torch.Generator().manual_seed(0)
    example = (torch.randn(1, 256, 64, 64, generator=g) * 0.1, torch.tensor([[[40.0, 50.0], [200.0, 220.0]]]).repeat(3, 1, 1),
               torch.tensor([[2.0, 3.0]]).repeat(3, 1), torch.zeros(1, 1, 256, 256), torch.zeros(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decoder_batch.onnx"
        torch.onnx.export(module, example, str(path), input_names=NAMES, output_names=["low_res_masks", "iou_predictions"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"point_coords": {0: "boxes", 1: "points"}, "point_labels": {0: "boxes", 1: "points"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    emb = np.random.default_rng(0).normal(0, 0.1, (1, 256, 64, 64)).astype(np.float32)
    six = feeds(emb, 6)
    single = [sess.run(None, {**six, "point_coords": six["point_coords"][i:i + 1],
                              "point_labels": six["point_labels"][i:i + 1]})[0][0] for i in range(6)]
    batched = sess.run(None, six)[0]
    max_diff = float(max(np.abs(single[i] - batched[i]).max() for i in range(6)))
    rows = []
    for b in (1, 2, 3, 6, 12):
        f = feeds(emb, b)
        sess.run(None, f)  # warm-up
        t = time.perf_counter()
        for _ in range(args.repeats):
            sess.run(None, f)
        ms = (time.perf_counter() - t) / args.repeats * 1000
        rows.append({"boxes_per_call": b, "ms_per_call": round(ms, 1), "ms_per_box": round(ms / b, 1)})
        print(rows[-1], flush=True)
    out = {"command": " ".join(["python", *sys.argv]), "threads": args.threads, "cpu_count": os.cpu_count(),
           "loadavg": os.getloadavg(), "max_logit_difference_batched_vs_single": max_diff, "timings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
