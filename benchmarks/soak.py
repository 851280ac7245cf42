"""Soak: repeated segmentation runs through the app's handlers, watching memory, file descriptors and temp files.

Every iteration goes through :mod:`promptonce.ui.handlers` exactly as the page does: a session is
opened in a :class:`~promptonce.ui.session.SessionStore`, a synthetic input is uploaded (a NIfTI CT
volume, a zip of two volumes for dataset scope, or a set of PNG X-rays, in turn), the object is
clicked, the run goes over the volume / dataset, the result is summarised, the downloads are written
and a few slices are rendered; then the session is closed (as when the page is left). One more
session stays open the whole time and reloads and reruns on every iteration (a long-lived tab).

Every ``--every`` seconds the process's RSS, its open file descriptors, its threads and the files
under the store's root and the private temp folder are sampled. After a warm-up (the first
``--warmup`` fraction of the time: imports, caches, allocator pools), the baseline is the median of
the first three samples and the end the median of the last three. The run fails (exit 1) when RSS
grows by more than ``--rss-mb`` MB (default 50) or its slope over the second half exceeds
``--slope-mb-min`` MB/min, when file descriptors or threads end higher than they started, or when
temp files are left once the sessions are closed.

Usage::

    .venv/bin/python benchmarks/soak.py [--minutes 60] [--every 5] [--real] [--out benchmarks/results/soak.json]

``--real`` uses LiteMedSAM (box prompts) on a tiny volume instead of the fake backend. Not part of CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _ct(path: Path, seed: int, size: int = 64, n_slices: int = 8) -> Path:
    """A small CT-like NIfTI with a bright disc whose radius follows the slice (display == stored grid)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    vol = rng.integers(-1000, -950, size=(n_slices, size, size)).astype(np.int16)
    for k in range(n_slices):
        r = 6 + min(k, n_slices - 1 - k)
        vol[k][(yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= r * r] = 300
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    img = nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    nib.save(img, str(path))
    return path


def _xrays(folder: Path, n: int = 3, size: int = 96) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        img = np.full((size, size), 40, np.uint8)
        img[(yy - size // 2) ** 2 + ((xx - size // 2) / 1.3) ** 2 <= (size // 4 + i) ** 2] = 200
        p = folder / f"xr_{i:02d}.png"
        Image.fromarray(img).save(p)
        out.append(p)
    return out


def _inputs(work: Path) -> list[tuple[str, list[Path], str]]:
    """``(kind, files, scope)`` inputs the iterations take in turn."""
    work.mkdir(parents=True, exist_ok=True)
    ct = _ct(work / "ct.nii.gz", 0)
    a, b = _ct(work / "case_a.nii.gz", 1), _ct(work / "case_b.nii.gz", 2)
    z = work / "two_cases.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(a, arcname="case_a.nii.gz")  # files at the root: the app does not descend into a
        zf.write(b, arcname="case_b.nii.gz")  # single top folder of an uploaded zip (see the hardening report)
    xr = _xrays(work / "xr")
    return [("ct", [ct], "volume"), ("zip", [z], "dataset"), ("xray", xr, "dataset")]


def one_flow(H: Any, sess: Any, files: list[Path], scope: str, model: str, box: bool) -> int:
    """Load, click (or draw a box), run, summarise, download and render: what one user does. Returns slices done."""
    ws = H.load_inputs(sess, files)
    _, rows, cols = ws.metas[0].shape
    k = ws.metas[0].n_slices // 2
    sx, sy = ws.display_scale(0)

    def disp(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5

    with sess.lock:
        if box:
            H.click(ws, 0, k, *disp(cols * 0.3, rows * 0.3), "box", model)
            H.click(ws, 0, k, *disp(cols * 0.7, rows * 0.7), "box", model)
        else:
            H.click(ws, 0, k, *disp(cols / 2, rows / 2), "positive", model)
    sess.cancel.clear()
    sess.running.set()
    try:
        last = None
        for p in H.run(ws, scope, "transfer", model, "auto", 0, sess.cancel):
            last = p
    finally:
        sess.running.clear()
    summary = H.results_summary(ws)
    H.write_downloads(ws, summary)
    for kk in range(0, ws.metas[0].n_slices, max(1, ws.metas[0].n_slices // 3)):
        H.save_view(sess, H.render(ws, 0, kk))
    return int(last.done) if last is not None else 0


def _count_files(*roots: Path) -> int:
    return sum(len(fs) for r in roots if r.exists() for _, _, fs in os.walk(r))


def soak(minutes: float, every: float, real: bool, warmup: float = 0.15) -> dict[str, Any]:
    import psutil

    work = Path(tempfile.mkdtemp(prefix="promptonce-soak-"))
    private_tmp = work / "tmp"
    private_tmp.mkdir()
    tempfile.tempdir = str(private_tmp)  # zip extraction temps land here, so they can be counted
    os.environ["TMPDIR"] = str(private_tmp)
    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    model = "litemedsam" if real else "fake"
    inputs = _inputs(work / "inputs")
    store = SessionStore(work / "sessions", ttl_s=3600)
    proc = psutil.Process()
    samples: list[dict[str, float]] = []
    stop = threading.Event()
    counters = {"iterations": 0, "slices": 0, "errors": 0}
    errors: list[str] = []
    t0 = time.time()

    def sample() -> None:
        gc.collect()
        samples.append({
            "t": round(time.time() - t0, 1),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            "fds": proc.num_fds(),
            "threads": proc.num_threads(),
            "temp_files": _count_files(work / "sessions", private_tmp),
            "sessions": len(store),
            "iterations": counters["iterations"],
        })  # fmt: skip

    def sampler() -> None:
        while not stop.wait(every):
            sample()

    long_lived = store.get("soak-long-lived")
    sample()
    thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
    thread.start()
    deadline = t0 + minutes * 60
    i = 0
    try:
        while time.time() < deadline:
            kind, files, scope = inputs[i % len(inputs)]
            sid = f"soak-{i}"
            try:
                sess = store.get(sid)
                counters["slices"] += one_flow(H, sess, files, scope, model, box=real)
                counters["slices"] += one_flow(H, long_lived, files, scope, model, box=real)
            except Exception as exc:  # noqa: BLE001 - counted; a soak must keep going
                counters["errors"] += 1
                errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
            finally:
                store.close(sid)
            counters["iterations"] += 1
            i += 1
    finally:
        stop.set()
        thread.join(timeout=every + 5)
    store.close("soak-long-lived")
    gc.collect()
    time.sleep(0.2)
    sample()
    store.close_all()
    leftover = _count_files(work / "sessions", private_tmp)
    shutil.rmtree(work, ignore_errors=True)
    return _verdict(samples, counters, errors, leftover, minutes, every, model, warmup)


def _verdict(
    samples: list[dict[str, float]], counters: dict[str, int], errors: list[str], leftover: int, minutes: float,
    every: float, model: str, warmup: float, rss_mb: float = 50.0, slope_mb_min: float = 2.0,
) -> dict[str, Any]:  # fmt: skip
    t_end = samples[-1]["t"]
    steady = [s for s in samples[:-1] if s["t"] >= warmup * t_end] or samples[:-1] or samples
    first, last = steady[:3], steady[-3:]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    half = [s for s in steady if s["t"] >= steady[0]["t"] + (steady[-1]["t"] - steady[0]["t"]) / 2]
    slope = 0.0
    if len(half) >= 3 and half[-1]["t"] > half[0]["t"]:
        slope = float(np.polyfit([s["t"] / 60 for s in half], [s["rss_mb"] for s in half], 1)[0])
    result: dict[str, Any] = {
        "model": model,
        "minutes": minutes,
        "sample_every_s": every,
        "iterations": counters["iterations"],
        "slices_segmented": counters["slices"],
        "errors": counters["errors"],
        "error_samples": errors[:5],
        "rss_mb": {
            "first_sample": samples[0]["rss_mb"],
            "start": med(first, "rss_mb"),
            "end": med(last, "rss_mb"),
            "max": max(s["rss_mb"] for s in samples),
            "slope_mb_per_min_second_half": round(slope, 3),
        },
        "fds": {"first_sample": samples[0]["fds"], "start": med(first, "fds"), "end": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples)},  # fmt: skip
        "threads": {"start": med(first, "threads"), "end": samples[-1]["threads"]},
        "temp_files": {"start": samples[0]["temp_files"], "end": samples[-1]["temp_files"], "after_close_all": leftover,
                       "max": max(s["temp_files"] for s in samples)},  # fmt: skip
        "thresholds": {"rss_growth_mb": rss_mb, "rss_slope_mb_per_min": slope_mb_min},
        "samples": samples,
    }
    problems = []
    growth = result["rss_mb"]["end"] - result["rss_mb"]["start"]
    if growth > rss_mb:
        problems.append(f"RSS grew {growth:.1f} MB after warm-up (limit {rss_mb} MB)")
    if slope > slope_mb_min and growth > rss_mb / 5:
        problems.append(f"RSS still growing {slope:.2f} MB/min in the second half (limit {slope_mb_min})")
    if result["fds"]["end"] > result["fds"]["start"]:
        problems.append(f"open file descriptors {result['fds']['start']} -> {result['fds']['end']}")
    if result["threads"]["end"] > result["threads"]["start"]:
        problems.append(f"threads {result['threads']['start']} -> {result['threads']['end']}")
    if result["temp_files"]["end"] != result["temp_files"]["start"] or leftover:
        problems.append(f"temp files {result['temp_files']['start']} -> {result['temp_files']['end']} (after close_all {leftover})")
    if counters["errors"]:
        problems.append(f"{counters['errors']} iterations failed: {errors[:2]}")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--real", action="store_true", help="LiteMedSAM (box prompts) instead of the fake backend")
    ap.add_argument("--warmup", type=float, default=0.15, help="fraction of the run left out of the baseline")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args(argv)
    r = soak(args.minutes, args.every, args.real, args.warmup)
    r["host"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(
        f"{r['minutes']} min, {r['iterations']} iterations ({r['slices_segmented']} slices, {r['errors']} errors) with "
        f"{r['model']}: RSS start {r['rss_mb']['start']} MB, end {r['rss_mb']['end']} MB, max {r['rss_mb']['max']} MB "
        f"(first sample {r['rss_mb']['first_sample']} MB, slope {r['rss_mb']['slope_mb_per_min_second_half']} MB/min); "
        f"fds {r['fds']['start']} -> {r['fds']['end']}; temp files {r['temp_files']['start']} -> {r['temp_files']['end']}; "
        f"wrote {args.out}"
    )
    for p in r["problems"]:
        print("PROBLEM:", p)
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
