"""Where a dataset-scope X-ray run spends its time: decoder calls, encoder, registration, against image scope.

One process, LiteMedSAM on ONNX Runtime, a slice of the Shenzhen X-rays (default: 12 held-out images
from 100). First every image at image scope (its reference box, one engine, as ``promptonce evaluate
--scope image`` runs them), then the same images at dataset scope from the first image's reference box
on a fresh engine (a cold run: every image encoded once). The decoder and the registration are timed
inside the run by wrapping the backend's decoder session and ``promptonce.registration.register``.

    .venv/bin/python benchmarks/transfer_cost.py                       # ~1 minute on 2 cores
    .venv/bin/python benchmarks/transfer_cost.py --decoder-threads 1 \
        --out benchmarks/results/transfer_cost_1thread.json             # the decoder on one thread
    .venv/bin/python benchmarks/transfer_cost.py --blas-default ...     # masks upsampled on OpenBLAS's
                                                                        # default threads (before one_blas_thread)
    .venv/bin/python benchmarks/transfer_cost.py --whole-decoder ...    # the decoder as one graph (before
                                                                        # promptonce.backends._decoder_split)
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

from _xrays import add_range_args, load_range  # noqa: E402


class _Timed:
    """Wraps a callable and adds up its calls and seconds."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=12)
    ap.add_argument("--decoder-threads", type=int, default=None, help="default: the backend's (every core)")
    ap.add_argument("--from-files", action="store_true",
                    help="read the images as the CLI reads a folder (promptonce.io.load_dataset: each access reads the file)")
    ap.add_argument("--blas-default", action="store_true",
                    help="upsample the decoder's masks on numpy's default BLAS threads, as before "
                         "promptonce.backends._onnx.one_blas_thread (the masks are the same)")
    ap.add_argument("--whole-decoder", action="store_true",
                    help="decode with the whole decoder graph, as before promptonce.backends._decoder_split "
                         "(the masks are the same)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_cost.json")
    args = ap.parse_args(argv)
    if args.blas_default:
        import contextlib

        from promptonce.backends import _onnx

        _onnx.one_blas_thread = contextlib.nullcontext
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded

    import promptonce.engine.transfer as transfer_module
    from promptonce.backends.litemedsam import LiteMedSAMBackend
    from promptonce.engine import Engine, segment
    from promptonce.evaluate import reference_prompt
    from promptonce.types import Dataset

    backend = LiteMedSAMBackend(decoder_threads=args.decoder_threads)
    if backend.runtime != "onnx":
        print(f"skipped: LiteMedSAM runs on {backend.runtime}, not ONNX Runtime", file=sys.stderr)
        return 0
    from promptonce.backends._decoder_split import SplitDecoder

    split = isinstance(backend._onnx_decoder, SplitDecoder)
    if args.whole_decoder and split:
        backend._onnx_decoder = backend._onnx_decoder.whole
    decoder = _Timed(backend._onnx_decoder)
    backend._onnx_decoder = decoder

    def prompt(i: int):
        return reference_prompt(refs[i].astype(np.uint8), labels=None, protocol="box", slice_index=0,
                                volume_index=0)

    data = Dataset(vols)
    if args.from_files:
        from promptonce.io.readers import load_dataset

        data = load_dataset([str(p) for p in paths])
    t = time.perf_counter()
    eng = Engine(backend)
    for i in range(len(data)):
        list(segment(Dataset([data[i]]), prompt(i), scope="image", engine=eng))
    image_s = time.perf_counter() - t
    image_calls = decoder.calls
    decoder.calls, decoder.seconds = 0, 0.0

    register = _Timed(transfer_module.register)
    transfer_module.register = register
    try:
        encoded = backend.encoded_frames
        t = time.perf_counter()
        results = list(segment(data, prompt(0), scope="dataset", engine=Engine(backend)))
        dataset_s = time.perf_counter() - t
        encoded = backend.encoded_frames - encoded
    finally:
        transfer_module.register = register.fn
    n = len(vols)
    dice = [2 * int(((r.labels > 0) & refs[r.volume_index]).sum())
            / max(int((r.labels > 0).sum()) + int(refs[r.volume_index].sum()), 1) for r in results if r.volume_index]
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "loadavg": os.getloadavg(),
        "images": f"cxr_shenzhen {args.start}-{args.start + n - 1}", "decoder_threads": backend._decoder_threads,
        "blas_default": bool(args.blas_default),
        "decoder": "whole graph" if args.whole_decoder or not split else "split (image side once an embedding)",
        "image_scope_s_per_image": round(image_s / n, 3),
        "image_scope_decoder_calls_per_image": round(image_calls / n, 1),
        "from_files": bool(args.from_files),
        "dataset_scope_s_per_image": round(dataset_s / n, 3),
        "dataset_scope_encodings": encoded,
        "cost_ratio": round(dataset_s / image_s, 2),
        "decoder_calls_per_image": round(decoder.calls / n, 1),
        "decoder_ms_per_call": round(1000 * decoder.seconds / max(decoder.calls, 1), 1),
        "decoder_s_per_image": round(decoder.seconds / n, 3),
        "registrations_per_image": round(register.calls / n, 1),
        "registration_s_per_image": round(register.seconds / n, 3),
        "dataset_dice_mean": round(float(np.mean(dice)), 4),
    }
    print(json.dumps(out, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
