"""SAM 2 propagation: speed and peak memory against the number of frames, ours vs stock.

"ours" is :meth:`promptonce.backends.sam2.Sam2Backend.propagate` (lazy frames, pruned memory,
streamed outputs); "stock" is ``SAM2VideoPredictor.init_state`` + ``propagate_in_video`` on the same
frames (all frames preprocessed into one tensor on the device, as stock does from a JPEG folder, and
every frame's outputs kept in its state). Both consume every frame's masks as numpy arrays.

WEIGHTS ARE RANDOMLY INITIALISED (no checkpoint is downloaded): the model has the real architecture
and input size of the chosen config, so speed and memory are representative, masks are not. With
``--model tiny-random`` the model is the shrunken plumbing-test model (for CPU runs).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` during the run minus what was allocated before
it; on the CPU the peak RSS (sampled at every frame) minus the RSS before the run.

Usage::

    python benchmarks/sam2_memory.py --model tiny-random --frames 20,50,100 --stock-frames 20,50,100 \
        --out benchmarks/results/sam2_memory_cpu.json
    python benchmarks/sam2_memory.py --model sam2.1_hiera_t --frames 100,1000,10000 \
        --stock-frames 100,1000 --out sam2_memory_gpu_tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # stock propagate_in_video draws a tqdm bar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_frames(size: int, n_distinct: int = 64) -> list[np.ndarray]:
    """``n_distinct`` uint8 RGB frames ``(size, size, 3)``: a bright disc drifting over a texture."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = ((xx * 3 + yy * 5) % 50).astype(np.uint8)
    frames = []
    for i in range(n_distinct):
        cx = size * (0.3 + 0.4 * i / n_distinct)
        disc = (xx - cx) ** 2 + (yy - size / 2) ** 2 < (size / 6) ** 2
        f = np.where(disc, 200, base).astype(np.uint8)
        frames.append(np.repeat(f[:, :, None], 3, axis=2))
    return frames


class MemoryMeter:
    """Peak device memory (CUDA) or peak RSS (CPU) above the level at :meth:`start`."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch = torch
        self.cuda = device.startswith("cuda")
        if not self.cuda:
            import psutil

            self.proc = psutil.Process(os.getpid())
        self.base = 0
        self.peak = 0

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.base = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self.base = self.proc.memory_info().rss
        self.peak = self.base

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> dict[str, int]:
        if self.cuda:
            self.torch.cuda.synchronize()
            peak = self.torch.cuda.max_memory_allocated()
            return {"peak_gpu_bytes_above_start": int(peak - self.base), "peak_gpu_bytes": int(peak)}
        self.sample()
        return {"peak_rss_bytes_above_start": int(self.peak - self.base), "peak_rss_bytes": int(self.peak)}


def run_ours(backend: Any, frames: list[np.ndarray], n: int, prompt: Any, meter: MemoryMeter,
             keep: bool) -> tuple[dict[str, Any], list[np.ndarray]]:
    kept: list[np.ndarray] = []
    meter.start()
    t0 = time.perf_counter()
    for _t, masks, _scores in backend.propagate(n, lambda i: frames[i % len(frames)], {0: [prompt]}, start=0):
        meter.sample()
        if keep:
            kept.append(masks[prompt.object_id])
    seconds = time.perf_counter() - t0
    res = {"impl": "ours", "frames": n, "seconds": round(seconds, 3), "frames_per_second": round(n / seconds, 2),
           **meter.stop(), "state_entries_at_end": dict(backend.last_stats)}
    return res, kept


def run_stock(model: Any, frames: list[np.ndarray], n: int, prompt: Any, meter: MemoryMeter, device: str,
              keep: bool) -> tuple[dict[str, Any], list[np.ndarray]]:
    import sam2.sam2_video_predictor as svp
    import torch

    from promptonce.backends.sam2 import _LazyFrames

    kept: list[np.ndarray] = []
    h, w = frames[0].shape[:2]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    meter.start()
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast:
        # What stock's load_video_frames does from a JPEG folder, minus the JPEG: every frame resized,
        # normalised and stacked into one (N, 3, S, S) float32 tensor on the device.
        lazy = _LazyFrames(len(frames), lambda i: frames[i], model.image_size, device, keep=0)
        distinct = [lazy[i].clone() for i in range(len(frames))]
        images = torch.empty((n, 3, model.image_size, model.image_size), dtype=torch.float32, device=device)
        for i in range(n):
            images[i] = distinct[i % len(frames)]
        del distinct
        orig = svp.load_video_frames
        svp.load_video_frames = lambda _images=images, **kw: (_images, h, w)
        try:
            state = model.init_state("in-memory")
        finally:
            svp.load_video_frames = orig
        init_seconds = time.perf_counter() - t0
        pts, lbl = prompt.point_arrays()
        model.add_new_points_or_box(state, 0, prompt.object_id, points=pts if len(pts) else None,
                                    labels=lbl if len(lbl) else None,
                                    box=None if prompt.box is None else prompt.box.as_array())
        for _t, _ids, masks in model.propagate_in_video(state, start_frame_idx=0):
            m = (masks[0, 0] > 0).cpu().numpy()
            meter.sample()
            if keep:
                kept.append(m)
    seconds = time.perf_counter() - t0
    stored = sum(len(od["non_cond_frame_outputs"]) + len(od["cond_frame_outputs"])
                 for od in state["output_dict_per_obj"].values())
    res = {"impl": "stock", "frames": n, "seconds": round(seconds, 3), "init_seconds": round(init_seconds, 3),
           "frames_per_second": round(n / seconds, 2), **meter.stop(), "state_entries_at_end": {"outputs": stored}}
    del state, images
    return res, kept


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    same = sum(np.array_equal(x, y) for x, y in zip(a, b))
    ious = [((x & y).sum() / max(1, (x | y).sum())) for x, y in zip(a, b)]
    return {"frames_compared": len(a), "identical_frames": int(same), "mean_iou": round(float(np.mean(ious)), 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-random", help="tiny-random or a SAM 2 name, e.g. sam2.1_hiera_t")
    ap.add_argument("--frames", default="20,50,100")
    ap.add_argument("--stock-frames", default="20,50,100", help="frame counts to run stock on ('' for none)")
    ap.add_argument("--frame-size", type=int, default=512, help="side of the square uint8 input frames")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--isolate", action="store_true",
                    help="run every measurement in a fresh process (clean RSS baseline on the CPU)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # "ours:N" / "stock:N" (used by --isolate)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    from promptonce.backends.sam2 import Sam2Backend, build_sam2_model, tiny_random_model
    from promptonce.backends.sam import resolve_device
    from promptonce.types import Box, ObjectPrompt

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.model == "tiny-random":
        model = tiny_random_model(128, seed=0, device=device)
        weights = "random init, shrunken plumbing-test model (tiny_random_model, 128 px)"
    else:
        model = build_sam2_model(args.model, None, device=device, seed=0)
        weights = f"random init at the real {args.model} architecture (no checkpoint): speed/memory only"
    backend = Sam2Backend(model, name=args.model, device=device)
    frames = make_frames(args.frame_size)
    s = args.frame_size
    prompt = ObjectPrompt(box=Box(s * 0.15, s * 0.3, s * 0.5, s * 0.7), object_id=1)
    meter = MemoryMeter(torch, device)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "sam2_memory",
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "weights": weights,
        "model_image_size": int(model.image_size),
        "frame_size": [s, s],
        "objects": 1,
        "precision": "bf16 autocast + TF32" if device.startswith("cuda") else "float32",
        "memory_metric": "torch.cuda.max_memory_allocated above start" if device.startswith("cuda")
        else "peak RSS (sampled per frame) above start",
        "runs": [],
        "agreement": None,
        "date": time.strftime("%Y-%m-%d"),
    }

    def save() -> None:
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out_path)

    counts = [int(x) for x in args.frames.split(",") if x]
    stock_counts = [int(x) for x in args.stock_frames.split(",") if x]
    if args.only:
        impl, n_str = args.only.split(":")
        counts, stock_counts = ([int(n_str)], []) if impl == "ours" else ([], [int(n_str)])
    elif args.isolate:
        report_runs: list[dict[str, Any]] = []
        import subprocess
        import tempfile

        base = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--frame-size", str(s)]
        if args.device:
            base += ["--device", args.device]
        if args.threads:
            base += ["--threads", str(args.threads)]
        jobs = [(impl, n) for n in sorted(set(counts) | set(stock_counts))
                for impl, lst in (("ours", counts), ("stock", stock_counts)) if n in lst]
        with tempfile.TemporaryDirectory() as tmp:
            for impl, n in jobs:
                part = Path(tmp) / f"{impl}_{n}.json"
                subprocess.run(base + ["--only", f"{impl}:{n}", "--out", str(part)], check=True)
                report["runs"] += json.loads(part.read_text())["runs"]
                save()
        report["isolated"] = "each run in a fresh process"
        # Agreement at the smallest common count, in this process.
        counts = stock_counts = [min(set(counts) & set(stock_counts))] if set(counts) & set(stock_counts) else []
        report_runs = list(report["runs"])
    # Warm-up (CUDA context, kernels, allocator) so the first timed run is not penalised.
    list(backend.propagate(8, lambda i: frames[i % len(frames)], {0: [prompt]}, start=0))
    compare_at = min(set(counts) & set(stock_counts), default=None)
    kept: dict[str, list[np.ndarray]] = {}
    for n in sorted(set(counts) | set(stock_counts)):
        if n in counts:
            res, masks = run_ours(backend, frames, n, prompt, meter, keep=n == compare_at)
            report["runs"].append(res)
            kept["ours"] = masks or kept.get("ours", [])
            print(json.dumps(res), flush=True)
            save()
        if n in stock_counts:
            try:
                res, masks = run_stock(model, frames, n, prompt, meter, device, keep=n == compare_at)
            except torch.cuda.OutOfMemoryError as e:  # stock holds every frame on the device
                res, masks = {"impl": "stock", "frames": n, "error": f"CUDA out of memory: {str(e)[:200]}"}, []
                torch.cuda.empty_cache()
            report["runs"].append(res)
            kept["stock"] = masks or kept.get("stock", [])
            print(json.dumps(res), flush=True)
            save()
        if compare_at is not None and n == compare_at and kept.get("ours") and kept.get("stock"):
            report["agreement"] = {"frames": n, **agreement(kept["ours"], kept["stock"])}
            save()
    if args.isolate and not args.only:
        report["runs"] = report_runs
        save()
    print(json.dumps({"agreement": report["agreement"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
