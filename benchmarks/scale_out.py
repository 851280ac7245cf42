"""Scale-out of dataset runs (issue 15): local executor vs Ray with 1 and 2 workers, in ONE run.

Every configuration runs in its own child process (``--child JSON``), so that its driver's peak
RSS is its own; the child starts its own local Ray instance (``ray.init(num_cpus=2)``) when the
configuration asks for Ray. Per configuration:

* ``processing_images_per_s``: the dataset's images / (wall seconds - ``startup_s``, the workers'
  model load and seed case): the rate once the workers are up, the quality pass included (a case it
  rewrites counts once); ``wall_images_per_s``: images / the whole run; ``images_per_s``: case
  completions / second between the first and the last (counts the quality pass's rewrites too).
* ``efficiency``: ``processing_images_per_s`` / (workers x that of one Ray worker).
* ``engine_ms_per_case``: time the workers spent inside the engine per case (reading the case
  excluded). With the FAKE backend the model costs ~nothing, so this is the engine's own per-case
  overhead (prompt transfer: registration + box tracking, walk, quality checks).
* ``driver_ms_per_case``: driver time per case beyond waiting (writing masks atomically with fsync,
  the run log line, the exemplar) = the executor's own cost per case.
* driver RSS: ``rss_mb_at`` (current RSS after N cases written, at the checkpoint and at the end) and
  ``peak_rss_mb`` (VmHWM of the driver process: Ray's workers are other processes).
* ``masks_equal_local``: the config's mask files are byte-identical to the local executor's.

Parts: ``fake`` (synthetic 64x64 images generated on read, fake backend, the engine's
DatasetTransfer; ``--fake-cases`` cases), ``fake-big`` (``--fake-big`` cases for the driver's memory,
RSS at ``--fake-checkpoint`` and at the end; with :class:`LightTransfer`, see its docstring) and ``real``
(LiteMedSAM on the CPU via ONNX Runtime, the first ``--real-cases`` Shenzhen X-rays of
``../shared/data/cxr_shenzhen``, prompt = the boxes of the first image's reference lungs).
Threads per worker are stated in every row (``threads``); the local executor uses every core.

    .venv/bin/python benchmarks/scale_out.py --fake-cases 300 --fake-big 10000 --real-cases 40
    .venv/bin/python benchmarks/scale_out.py --quick            # plumbing smoke test, not figures
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHENZHEN = ROOT.parent / "shared" / "data" / "cxr_shenzhen"
if not SHENZHEN.exists():
    SHENZHEN = Path("/work/shared/data/cxr_shenzhen")


# ----------------------------------------------------------------------------- data


def synthetic_case(i: int):
    """Case ``i``: 64x64 uint8, a disc of grey 200 on noise 0..29 (position and size vary)."""
    import numpy as np

    from promptonce.types import Volume

    rng = np.random.default_rng(i)
    n = 64
    a = rng.integers(0, 30, (n, n)).astype(np.uint8)
    cx, cy, r = 32 + rng.integers(-6, 6), 32 + rng.integers(-6, 6), 10 + rng.integers(0, 6)
    yy, xx = np.mgrid[:n, :n]
    a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 200
    return Volume(a[None], name=f"case{i:05d}", source_format="image")


def fake_data(n: int):
    from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt

    ds = Dataset([(f"case{i:05d}", functools.partial(synthetic_case, i)) for i in range(n)])
    return ds, SlicePrompt((ObjectPrompt(box=Box(16, 16, 48, 48)),), 0, 0), []


def real_data(n: int):
    import numpy as np

    from promptonce.evaluate import reference_prompt
    from promptonce.io.readers import load_dataset, load_reference

    imgs = sorted((SHENZHEN / "images").glob("*.png"))[:n]
    ds = load_dataset([str(p) for p in imgs])
    ref = load_reference(SHENZHEN / "masks" / imgs[0].name, ds[0])
    prompt = reference_prompt(np.asarray(ref.array[0]), labels=None, protocol="box", slice_index=0, volume_index=0)
    return ds, prompt, [str(p) for p in imgs]


class LightTransfer:
    """A stand-in for the engine's DatasetTransfer for the 10,000-case DRIVER run: the prompt mapped
    by relative position, the fake model and the slice walk, a real exemplar per case, no
    registration and no quality pass. It makes a 10,000-case run affordable on 2 shared cores; the
    driver's work per case (receive, write atomically, log, fold the exemplars of every 10th case) is
    the real one."""

    def __init__(self, engine, seed_volume, prompt, window=None, seed_labels=None):
        self.engine, self.seed, self.prompt, self.window = engine, seed_volume, prompt, window

    def first_pass(self, volume, volume_index, cancel=None):
        from types import SimpleNamespace

        from promptonce.engine.transfer import make_exemplar
        from promptonce.prompts import map_prompt
        from promptonce.types import SlicePrompt

        objs = tuple(map_prompt(o, self.seed.shape[1:], volume.shape[1:]) for o in self.prompt.objects)
        res = list(self.engine.segment_volume(volume, SlicePrompt(objs, 0, 0), volume_index=volume_index,
                                              window=self.window))
        conf = float(min((v for r in res for v in r.scores.values()), default=0.0))
        ex = None
        if volume_index % 10 == 0:  # a real exemplar for every 10th case (the thumbnail costs ~30 ms)
            ex = make_exemplar(volume.name, self.engine.frames(volume, self.window).gray(0), res[0].labels,
                               [o.object_id for o in objs], 0.5, conf)
        return SimpleNamespace(results=res, confidence=conf, flags=[], exemplar=ex, name=volume.name)

    def needs_second_pass(self, out):
        return False

    @staticmethod
    def select_exemplars(candidates):
        from promptonce.engine import DatasetTransfer

        return DatasetTransfer.select_exemplars(candidates)

    def second_pass(self, volume, volume_index, exemplars, first=None, cancel=None):
        return first


# ----------------------------------------------------------------------------- one configuration (child)


def vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(cfg: dict) -> dict:
    import psutil

    from promptonce.distributed import run_dataset

    if cfg["executor"] == "ray":
        import ray

        ray.init(num_cpus=cfg.get("ray_cpus", 2), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    ds, prompt, inputs = fake_data(cfg["cases"]) if cfg["part"].startswith("fake") else real_data(cfg["cases"])
    transfer = LightTransfer if cfg.get("light") else None
    proc = psutil.Process()
    marks: dict[str, float] = {}
    times: list[float] = []
    checkpoint = cfg.get("checkpoint")

    def progress(done: int, total: int, name: str) -> None:
        times.append(time.perf_counter())
        if checkpoint and done == checkpoint:
            marks[str(done)] = round(proc.memory_info().rss / 2**20, 1)

    t0 = time.perf_counter()
    s = run_dataset(ds, prompt, cfg["out"], model=cfg["model"], executor=cfg["executor"],
                    workers=cfg.get("workers"), threads=cfg.get("threads"), transfer=transfer, progress=progress,
                    restart=True, inputs=inputs)
    wall = time.perf_counter() - t0
    marks[str(cfg["cases"])] = round(proc.memory_info().rss / 2**20, 1)
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else None
    busy = s.engine_seconds + s.load_seconds
    return {
        **{k: cfg[k] for k in ("part", "executor", "workers", "threads", "cases", "model")},
        "transfer": "LightTransfer (no registration, no quality pass)" if cfg.get("light") else "engine DatasetTransfer",
        "done": s.done, "skipped": len(s.skipped), "images": s.images,
        "wall_s": round(wall, 3),
        "wall_images_per_s": round(s.images / wall, 3),
        "processing_images_per_s": round(s.images / max(1e-9, wall - _startup(s.executor)), 3),
        "startup_s": round(_startup(s.executor), 3),
        "images_per_s": round(steady, 3) if steady else None,
        "engine_ms_per_case": round(1000 * s.engine_seconds / max(1, s.images), 2),
        "read_ms_per_case": round(1000 * s.load_seconds / max(1, s.images), 2),
        "worker_busy_s": round(busy, 3),
        "worker_init_s": s.executor.get("worker_init_seconds"),
        "rss_mb_at": marks,
        "peak_rss_mb": round(vm_hwm_mb() or 0, 1),
    }


def _startup(info: dict) -> float:
    """Seconds of the run spent starting workers (model load + the seed case), before any case."""
    if info.get("executor") == "ray":
        return float(info.get("startup_wait_seconds") or 0.0)
    return float(sum(info.get("worker_init_seconds") or [0.0]))


# ----------------------------------------------------------------------------- parent


def run_child(cfg: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if cfg["executor"] == "local" and cfg.get("threads"):
        env["PROMPTONCE_THREADS"] = str(cfg["threads"])
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if p.returncode != 0:
        return {**cfg, "error": p.stderr[-3000:]}
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(row), file=sys.stderr)
    return row


def same_masks(a: Path, b: Path) -> bool | None:
    fa, fb = sorted((a / "masks").iterdir()), sorted((b / "masks").iterdir())
    if not fa:
        return None
    return [f.name for f in fa] == [f.name for f in fb] and all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def _mask_array(path: Path):
    from promptonce.io.readers import load

    return load(path).array


def masks_min_dice(a: Path, b: Path) -> float | None:
    """The lowest Dice (label > 0) between same-named mask files of two run folders (1.0 = identical).

    Byte equality is the strict check; when it fails this says by how much (ONNX Runtime's float sums
    depend on its thread count, so a pixel at a mask's edge may flip between 1 and 2 threads)."""

    fa = {f.name: f for f in (a / "masks").iterdir() if not f.name.endswith(".csv")}
    fb = {f.name: f for f in (b / "masks").iterdir() if not f.name.endswith(".csv")}
    if not fa or set(fa) != set(fb):
        return None
    worst = 1.0
    for name in sorted(fa):
        x, y = _mask_array(fa[name]) > 0, _mask_array(fb[name]) > 0
        if x.shape != y.shape:
            return 0.0
        denom = int(x.sum()) + int(y.sum())
        worst = min(worst, 1.0 if denom == 0 else 2.0 * int((x & y).sum()) / denom)
    return round(worst, 6)


def part(name: str, cases: int, model: str, tmp: Path, timeout: float, threads_local: int | None,
         light: bool = False, checkpoint: int | None = None, ray_workers=(1, 2)) -> list[dict]:
    rows = []
    base = {"part": name, "cases": cases, "model": model, "light": light, "checkpoint": checkpoint}
    local = {**base, "executor": "local", "workers": 1, "threads": threads_local, "out": str(tmp / f"{name}-local")}
    rows.append(run_child(local, timeout))
    for w in ray_workers:
        cfg = {**base, "executor": "ray", "workers": w, "threads": 1, "out": str(tmp / f"{name}-ray{w}")}
        rows.append(run_child(cfg, timeout))
    key = "processing_images_per_s"
    one = next((r for r in rows if r.get("executor") == "ray" and r.get("workers") == 1 and r.get(key)), None)
    loc = rows[0]
    for r in rows:
        if "error" in r:
            continue
        mine = Path(tmp / (f"{name}-local" if r["executor"] == "local" else f"{name}-ray{r['workers']}"))
        r["masks_equal_local"] = same_masks(Path(local["out"]), mine)
        if r["masks_equal_local"] is False:
            r["masks_min_dice_vs_local"] = masks_min_dice(Path(local["out"]), mine)
        if one and r["executor"] == "ray" and r.get(key):
            r["speedup_vs_1_worker"] = round(r[key] / one[key], 3)
            r["efficiency"] = round(r[key] / (r["workers"] * one[key]), 3)
        if loc.get(key) and r.get(key):
            r["vs_local"] = round(r[key] / loc[key], 3)
        r["driver_ms_per_case"] = None
        if r.get("images"):
            # the driver's own time per case: wall minus the workers' busy time spread over the workers
            r["driver_ms_per_case"] = round(1000 * max(0.0, r["wall_s"] - r["worker_busy_s"] / r["workers"])
                                            / r["images"], 2) if r["executor"] == "local" else None
    return rows


def machine() -> dict:
    import numpy as np

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
            "python": platform.python_version(), "numpy": np.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fake-cases", type=int, default=300, help="fake throughput run (every executor)")
    ap.add_argument("--fake-big", type=int, default=10000, help="fake memory run (local and 2 Ray workers); 0 = skip")
    ap.add_argument("--fake-checkpoint", type=int, default=1000)
    ap.add_argument("--big-engine", action="store_true",
                    help="the big fake run with the engine's DatasetTransfer (default: LightTransfer; the run measures the driver)")
    ap.add_argument("--real-cases", type=int, default=40, help="Shenzhen X-rays with LiteMedSAM; 0 = skip")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "scale_out.json"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if a.quick:
        a.fake_cases, a.fake_big, a.fake_checkpoint, a.real_cases = 30, 60, 20, 0
    import ray

    from promptonce import __version__

    t0 = time.perf_counter()
    result: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                    "promptonce": __version__, "ray": ray.__version__,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="scale_out-"))
    out = Path(a.json)

    def save() -> None:  # after every part, so that a long run leaves its figures so far
        result["targets"] = targets(result["rows"])
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["seconds"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmpf = out.with_suffix(".json.tmp")
        tmpf.write_text(json.dumps(result, indent=2))
        os.replace(tmpf, out)

    try:
        if a.fake_cases:
            result["rows"] += part("fake", a.fake_cases, "fake", tmp, a.timeout, None)
            save()
        if a.real_cases and SHENZHEN.exists():
            result["rows"] += part("real", a.real_cases, "litemedsam", tmp, a.timeout, None)
            # like with like: the local executor held to one thread
            row = run_child({"part": "real", "cases": a.real_cases, "model": "litemedsam", "executor": "local",
                             "workers": 1, "threads": 1, "out": str(tmp / "real-local1")}, a.timeout)
            row["masks_equal_local"] = same_masks(tmp / "real-local", tmp / "real-local1")
            if row["masks_equal_local"] is False:
                row["masks_min_dice_vs_local"] = masks_min_dice(tmp / "real-local", tmp / "real-local1")
            result["rows"].append(row)
            save()
        if a.fake_big:
            result["rows"] += part("fake-big", a.fake_big, "fake", tmp, a.timeout, None, light=not a.big_engine,
                                   checkpoint=a.fake_checkpoint, ray_workers=(2,))
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save()
    print(json.dumps(result["targets"], indent=2))
    return 0


def targets(rows: list[dict]) -> dict:
    def get(part, executor, workers, threads=None):
        for r in rows:
            if (r.get("part"), r.get("executor"), r.get("workers")) == (part, executor, workers) and \
                    (threads is None or r.get("threads") == threads) and "error" not in r:
                return r
        return None

    t: dict = {}
    r1, r2, loc = get("real", "ray", 1), get("real", "ray", 2), get("real", "local", 1, None)
    key = "processing_images_per_s"
    if r1 and r2 and r1.get(key) and r2.get(key):
        t["real_2_workers_vs_1 (>= 1.6)"] = round(r2[key] / r1[key], 3)
    if r2 and loc and loc.get(key) and r2.get(key):
        t["real_ray_vs_local_all_cores (>= 0.9)"] = round(r2[key] / loc[key], 3)
    big = [r for r in rows if r.get("part") == "fake-big" and "error" not in r]
    for r in big:
        m = r.get("rss_mb_at") or {}
        if len(m) >= 2:
            lo, hi = sorted(m, key=int)[0], sorted(m, key=int)[-1]
            t[f"fake_rss_growth_mb_{lo}_to_{hi}_{r['executor']}{r['workers']} (<= 100)"] = round(m[hi] - m[lo], 1)
    f = get("fake", "local", 1)
    if f:
        t["fake_engine_ms_per_case (< 50)"] = f["engine_ms_per_case"]
    t["same_masks_everywhere"] = all(r.get("masks_equal_local") is not False for r in rows)
    return t


if __name__ == "__main__":
    sys.exit(main())
