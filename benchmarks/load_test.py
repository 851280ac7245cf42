"""Load test: N simultaneous app sessions on 127.0.0.1 (upload, click, run, download), checked for isolation.

The app (``promptonce.ui``: the same ``build_app`` / ``launch_kwargs`` / queue settings as ``app.py``) is
started in a subprocess on a free loopback port, with its Gradio upload folder and session store in a
fresh temporary folder and the ``fake`` backend (or ``--model litemedsam``). The ``fake`` backend is
wrapped to count how many model calls run at the same time (the queue's ``concurrency_id="model"``
limit, ``PROMPTONCE_MODEL_CONCURRENCY``, default 1).

Each session is a ``gradio_client.Client`` (its own Gradio session) in its own thread. Per round it
uploads its own synthetic NIfTI volume(s) (a disc at a position only this session uses, and a marker in
the affine's x translation: ``1000 * (session + 1) + round``), clicks on the disc, runs ``volume``
scope (even sessions) or ``dataset`` scope over two volumes (odd sessions), asks for the summary and
downloads the NIfTI masks. Checks:

* every request is answered (no exception, no timeout);
* no session ever receives another session's file or result: the downloaded masks carry this
  session's marker, disc position and case names; every file the server offers lies in this
  session's own folder (a random 32-hex name, different for every session); guessed sibling
  folder names and path traversal are refused by the server;
* temp storage (files under the server's temporary root) returns to its count before the sessions
  once their clients disconnect (Gradio's heartbeat ends the session, the store deletes its folder);
* at most ``PROMPTONCE_MODEL_CONCURRENCY`` model calls ever ran at once from request threads, while
  requests of several sessions were in flight together (the engine's own helper threads, which
  encode the next slice within a run or a shown slice while no request runs, are counted apart).

Figures: requests, errors, latency p50/p95/p99 per request kind and overall. ``--out`` writes JSON.

Usage::

    .venv/bin/python benchmarks/load_test.py [--sessions 8] [--duration 120] [--rounds 0]
        [--model fake|litemedsam] [--out benchmarks/results/load_test.json]

``--rounds N`` stops each session after N rounds (the test uses 1); otherwise sessions loop until
``--duration`` seconds have passed. Loopback only; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WIN = ("auto", 400, 40)  # window dropdown, custom width, custom level
SIZE = 64  # image side (displayed at 8x: 512 px)
SLICES = 6
SCALE = 8.0
_HEX32 = re.compile(r"/([0-9a-f]{32})/")


# ------------------------------------------------------------------------------------------ server
def serve(port: int, stats_path: Path, fake_delay: float) -> None:
    """Runs the app on 127.0.0.1:``port`` until SIGTERM, writing model-call concurrency to ``stats_path``."""
    from promptonce.backends import fake, registry

    registry.backend_names()  # built-ins first, then replace "fake" by the counting one
    lock = threading.Lock()
    # model calls made by request threads (what PROMPTONCE_MODEL_CONCURRENCY limits), and those of the
    # engine's own helper threads: the next slice encoded ahead within a run, the backward direction,
    # the shown slice encoded while no request runs (threads named promptonce-*)
    stats = {"active": 0, "max_active": 0, "calls": 0, "helper_active": 0, "max_helper_active": 0,
             "helper_calls": 0, "pid": os.getpid()}

    def dump() -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, stats_path)

    class CountingFake(fake.FakeBackend):
        """The fake backend, counting simultaneous calls (``fake_delay`` seconds each, to let calls overlap)."""

        @staticmethod
        def _kind() -> str:
            return "helper_" if threading.current_thread().name.startswith("promptonce-") else ""

        def _enter(self) -> None:
            k = self._kind()
            with lock:
                stats[f"{k}active"] += 1
                stats[f"{k}calls"] += 1
                stats[f"max_{k}active"] = max(stats[f"max_{k}active"], stats[f"{k}active"])
                dump()
            time.sleep(fake_delay)

        def _leave(self) -> None:
            k = self._kind()
            with lock:
                stats[f"{k}active"] -= 1

        def embed(self, frame):
            self._enter()
            try:
                return super().embed(frame)
            finally:
                self._leave()

        def predict(self, *args, **kwargs):
            self._enter()
            try:
                return super().predict(*args, **kwargs)
            finally:
                self._leave()

    registry.register("fake", lambda device=None, **kw: CountingFake(**kw), fake.INFO, None, uses_device=False)
    from promptonce.ui.app import _env_float, build_app, launch_kwargs

    demo = build_app(show_fake=True)
    demo.queue(default_concurrency_limit=1, max_size=int(_env_float("PROMPTONCE_QUEUE_SIZE", 64)))
    kw = launch_kwargs()
    kw.update(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    demo.launch(**kw)
    dump()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    (stats_path.parent / "ready").write_text(demo.local_url)
    while not stop.wait(0.5):
        pass
    demo.close()
    demo.promptonce_store.close_all()  # type: ignore[attr-defined]
    dump()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The app in a subprocess, with its temporary root (Gradio upload folder + session store)."""

    def __init__(self, root: Path, model_limit: int = 1, fake_delay: float = 0.01, ttl_s: float = 600.0) -> None:
        self.root = root
        self.tmp = root / "server-tmp"
        self.tmp.mkdir(parents=True)
        self.stats_path = root / "stats" / "stats.json"
        self.stats_path.parent.mkdir()
        self.port = _free_port()
        self.model_limit = model_limit
        env = dict(
            os.environ,
            GRADIO_TEMP_DIR=str(self.tmp / "gradio"),
            PROMPTONCE_SESSION_ROOT=str(self.tmp / "promptonce-sessions"),
            PROMPTONCE_MODEL_CONCURRENCY=str(model_limit),
            PROMPTONCE_SESSION_TTL_S=str(ttl_s),
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_HEARTBEAT_INTERVAL="0.5",
            PROMPTONCE_SHOW_FAKE="1",
            TMPDIR=str(self.tmp),
            PYTHONPATH=str(REPO),
        )  # fmt: skip
        self.log = open(root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.port), str(self.stats_path),
             str(fake_delay)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )  # fmt: skip
        self.url = ""

    def wait_ready(self, timeout: float = 120.0) -> str:
        ready = self.stats_path.parent / "ready"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready.exists():
                self.url = ready.read_text().strip()
                return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the app did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())

    def files(self) -> list[Path]:
        """Every file under the server's temporary root."""
        return [Path(d) / f for d, _, fs in os.walk(self.tmp) for f in fs]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# ------------------------------------------------------------------------------------------ data
def disc_center(session: int) -> tuple[int, int]:
    """``(x, y)`` pixel of session ``session``'s disc: a position no other session of 8 uses."""
    return 12 + 6 * (session % 8), 20 + 4 * (session // 8 % 8)


def write_volume(path: Path, session: int, marker: int, radius: int = 6) -> Path:
    """A ``(SLICES, SIZE, SIZE)`` CT-like NIfTI with a bright disc at :func:`disc_center` and ``marker``
    as the affine's x translation (mm)."""
    import nibabel as nib

    cx, cy = disc_center(session)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    vol = np.full((SLICES, SIZE, SIZE), -1000, np.int16)
    for k in range(SLICES):
        vol[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 200
    # display (slices, rows, cols) -> stored (i, j, k) with an LPS-like affine so that display == stored
    stored = np.transpose(vol, (2, 1, 0))
    aff = np.diag([-1.0, -1.0, 2.0, 1.0])
    aff[0, 3] = float(marker)
    img = nib.Nifti1Image(stored, aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    nib.save(img, str(path))
    return path


# ------------------------------------------------------------------------------------------ sessions
@dataclass
class SessionLog:
    """What one client did and saw."""

    index: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    intervals: list[tuple[float, float, str]] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    server_paths: list[str] = field(default_factory=list)
    rounds: int = 0
    uploads: int = 0


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 4),
        "p95": round(float(np.percentile(a, 95)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
        "max": round(float(a.max()), 4),
    }


def _is_gradio_empty_tmp(path: Path, gradio_root: Path) -> bool:
    """A 0-byte ``tmpXXXXXXXX`` file directly in Gradio's upload folder (see ``temp_files`` in the result)."""
    try:
        return path.parent == gradio_root and re.fullmatch(r"tmp[a-z0-9_]{8}", path.name) is not None and (
            path.stat().st_size == 0
        )
    except OSError:
        return False


def _file_infos(value: Any) -> list[dict[str, Any]]:
    """FileData dicts in a gradio_client output (download_files=False)."""
    if isinstance(value, dict) and "path" in value:
        return [value]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in _file_infos(v)]
    return []


def _nifti_members(name: str, data: bytes) -> list[tuple[str, bytes]]:
    if name.endswith(".zip"):
        with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
            return [(n, zf.read(n)) for n in zf.namelist() if n.endswith((".nii", ".nii.gz"))]
    if name.endswith((".nii.gz", ".nii")):
        return [(name, data)]
    return []


def run_session(
    index: int, url: str, work: Path, model: str, deadline: float, rounds: int, log: SessionLog,
    start: threading.Barrier,
) -> None:  # fmt: skip
    """One client's rounds (see the module docstring); fills ``log``."""
    import httpx
    import nibabel as nib
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    http = httpx.Client(timeout=60)

    def call(kind: str, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        log.requests += 1
        try:
            return client.predict(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            log.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            return None
        finally:
            t1 = time.perf_counter()
            log.latencies.setdefault(kind, []).append(t1 - t0)
            log.intervals.append((t0, t1, kind))

    try:
        start.wait(timeout=120)
        r = 0
        while (rounds and r < rounds) or (not rounds and time.time() < deadline):
            folder = work / f"s{index}" / f"r{r}"
            folder.mkdir(parents=True)
            marker = 1000 * (index + 1) + r
            n_vol = 2 if index % 2 else 1
            names = [f"case{index}x{r}v{j}_{secrets.token_hex(3)}" for j in range(n_vol)]
            paths = [write_volume(folder / f"{nm}.nii.gz", index, marker) for nm in names]
            log.uploads += len(paths)
            out = call("load", [handle_file(str(p)) for p in paths], None, "auto", *WIN, False, api_name="/load")
            if out is None:
                r += 1
                continue
            log.server_paths += [f["path"] for f in _file_infos(out)]
            cx, cy = disc_center(index)
            k1 = SLICES // 2 + 1
            out = call("click", 0, k1, (cx + 0.5) * SCALE - 0.5, (cy + 0.5) * SCALE - 0.5, "positive", model, *WIN,
                       False, api_name="/click_at")  # fmt: skip
            if out is not None:
                log.server_paths += [f["path"] for f in _file_infos(out)]
            scope = "dataset" if n_vol > 1 else "volume"
            final = call("run", 0, k1, scope, "transfer", model, *WIN, False, api_name="/run")
            summary_text = call("summary", api_name="/summary")
            if final is None or summary_text is None:
                r += 1
                continue
            summary = json.loads(summary_text)
            cases = sorted(c["case"] for c in summary["cases"])
            if cases != sorted(names):
                log.violations.append(f"round {r}: summary lists cases {cases}, this session uploaded {sorted(names)}")
            files = _file_infos(final[11])
            log.server_paths += [f["path"] for f in _file_infos(final)]
            got = 0
            for f in files:
                t0 = time.perf_counter()
                resp = http.get(f["url"])
                log.requests += 1
                log.latencies.setdefault("download", []).append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    log.errors.append(f"download {f['path']}: HTTP {resp.status_code}")
                    continue
                for member, data in _nifti_members(Path(f["path"]).name, resp.content):
                    got += 1
                    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
                    img = nib.Nifti1Image.from_bytes(raw)
                    mask = np.asarray(img.dataobj)
                    if float(img.affine[0, 3]) != float(marker):
                        log.violations.append(f"{member}: affine marker {img.affine[0, 3]}, expected {marker}")
                    if not any(nm in member for nm in names):
                        log.violations.append(f"{member}: not one of this session's cases {names}")
                    fg = np.argwhere(mask > 0)  # (i=x, j=y, k)
                    if fg.size == 0:
                        log.violations.append(f"{member}: empty mask")
                    else:
                        mx, my = fg[:, 0].mean(), fg[:, 1].mean()
                        if abs(mx - cx) > 1.5 or abs(my - cy) > 1.5:
                            log.violations.append(f"{member}: mask centred at ({mx:.1f}, {my:.1f}), this session's disc at ({cx}, {cy})")
            if got != n_vol:
                log.violations.append(f"round {r}: {got} NIfTI masks downloaded, expected {n_vol}")
            log.rounds += 1
            r += 1
    finally:
        http.close()
        client.close()


def _overlap(logs: list[SessionLog], kinds: tuple[str, ...]) -> int:
    """The largest number of requests of ``kinds`` (from all sessions) in flight at one moment."""
    events = []
    for lg in logs:
        for t0, t1, kind in lg.intervals:
            if kind in kinds:
                events += [(t0, 1), (t1, -1)]
    cur = best = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        cur += d
        best = max(best, cur)
    return best


def _guess_checks(url: str, paths: list[str], tmp_root: Path) -> list[str]:
    """Fetches guessed neighbours of real session files and a traversal; returns what was NOT refused."""
    import httpx

    bad = []
    with httpx.Client(timeout=30) as http:
        for p in paths[:4]:
            m = _HEX32.search(p)
            if not m:
                continue
            guess = p.replace(m.group(1), secrets.token_hex(16))
            resp = http.get(f"{url}gradio_api/file={guess}")
            if resp.status_code == 200:
                bad.append(f"guessed path served: {guess}")
        for probe in (f"{tmp_root}/../../etc/passwd", "/etc/passwd", f"{REPO}/app.py"):
            resp = http.get(f"{url}gradio_api/file={probe}")
            if resp.status_code == 200:
                bad.append(f"served {probe}")
    return bad


def run_load(
    sessions: int = 8, duration: float = 120.0, rounds: int = 0, model: str = "fake", model_limit: int = 1,
    fake_delay: float = 0.01, settle_s: float = 30.0, work_root: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Starts the app, runs the sessions, checks isolation / cleanup / queue, and returns the figures."""
    root = Path(tempfile.mkdtemp(prefix="promptonce-load-", dir=work_root))
    server = Server(root, model_limit=model_limit, fake_delay=fake_delay)
    result: dict[str, Any] = {"sessions": sessions, "model": model, "model_concurrency_limit": model_limit}
    try:
        url = server.wait_ready()
        time.sleep(1.0)
        baseline = len(server.files())
        logs = [SessionLog(i) for i in range(sessions)]
        barrier = threading.Barrier(sessions)
        deadline = time.time() + duration
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=run_session, args=(i, url, root / "client", model, deadline, rounds, logs[i], barrier),
                             name=f"session-{i}")
            for i in range(sessions)
        ]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(60.0, duration * 3 if not rounds else 600.0))
        hung = [t.name for t in threads if t.is_alive()]
        elapsed = time.perf_counter() - t0
        # isolation of the files the server offered
        folders: dict[int, set[str]] = {}
        for lg in logs:
            folders[lg.index] = {m.group(1) for p in lg.server_paths if (m := _HEX32.search(p))}
        owners: dict[str, list[int]] = {}
        for i, fs in folders.items():
            for f in fs:
                owners.setdefault(f, []).append(i)
        shared = {f: o for f, o in owners.items() if len(o) > 1}
        not_in_own = [
            p for lg in logs for p in lg.server_paths if "promptonce-results" not in p
        ]  # every offered file comes from a session's results folder
        guess_failures = _guess_checks(url, [p for lg in logs for p in lg.server_paths], server.tmp)
        stats = server.stats()
        # temp storage back to its baseline once the clients have disconnected
        t_settle = time.time()
        def settled() -> int:
            return sum(1 for p in server.files() if not _is_gradio_empty_tmp(p, server.tmp / "gradio"))

        while settled() != baseline and time.time() - t_settle < settle_s:
            time.sleep(0.5)
        after = len(server.files())
        left = [p for p in server.files()]
        gradio_empty = [p for p in left if _is_gradio_empty_tmp(p, server.tmp / "gradio")]
        others = sorted(str(p.relative_to(server.tmp)) for p in left if p not in gradio_empty)
        lat_all = [x for lg in logs for v in lg.latencies.values() for x in v]
        kinds = sorted({k for lg in logs for k in lg.latencies})
        result.update({
            "rounds_done": sum(lg.rounds for lg in logs),
            "seconds": round(elapsed, 2),
            "requests": sum(lg.requests for lg in logs),
            "errors": sum(len(lg.errors) for lg in logs),
            "error_samples": [e for lg in logs for e in lg.errors][:10],
            "hung_sessions": hung,
            "latency_s": {"all": _percentiles(lat_all), **{k: _percentiles([x for lg in logs for x in lg.latencies.get(k, [])]) for k in kinds}},
            "isolation": {
                "violations": [v for lg in logs for v in lg.violations][:20],
                "n_violations": sum(len(lg.violations) for lg in logs),
                "session_folders": {str(i): sorted(f) for i, f in folders.items()},
                "folders_shared_between_sessions": shared,
                "offered_outside_session_folders": not_in_own[:10],
                "guessed_or_traversal_served": guess_failures,
            },
            "queue": {
                "model_calls": stats["calls"],
                "max_simultaneous_model_calls": stats["max_active"],
                "helper_model_calls": stats.get("helper_calls", 0),
                "max_simultaneous_helper_calls": stats.get("max_helper_active", 0),
                "max_simultaneous_model_requests_in_flight": _overlap(logs, ("click", "run")),
                "max_simultaneous_requests_in_flight": _overlap(logs, tuple(kinds)),
            },
            "temp_files": {
                "baseline": baseline, "after_sessions": after, "uploads": sum(lg.uploads for lg in logs),
                "leftovers": others[:20], "n_leftovers": len(others) - baseline,
                "gradio_empty_tmp": len(gradio_empty),
                "gradio_empty_tmp_note": "0-byte files left by gradio/components/file.py (File.preprocess with "
                                         "type='filepath' creates a NamedTemporaryFile per uploaded file and never "
                                         "removes it); one per uploaded file",
            },
        })  # fmt: skip
    finally:
        server.stop()
        if not os.environ.get("PROMPTONCE_LOAD_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
    result["problems"] = problems(result)
    return result


def problems(r: dict[str, Any]) -> list[str]:
    """Every failed check of a :func:`run_load` result (empty when all passed)."""
    out = []
    if r["errors"]:
        out.append(f"{r['errors']} requests failed: {r['error_samples'][:3]}")
    if r["hung_sessions"]:
        out.append(f"sessions did not finish: {r['hung_sessions']}")
    iso = r["isolation"]
    if iso["n_violations"]:
        out.append(f"isolation violated: {iso['violations'][:3]}")
    if iso["folders_shared_between_sessions"]:
        out.append(f"session folders shared: {iso['folders_shared_between_sessions']}")
    if any(len(f) != 1 for f in iso["session_folders"].values()):
        out.append(f"a session's files are not in exactly one folder: {iso['session_folders']}")
    if iso["offered_outside_session_folders"]:
        out.append(f"files offered outside the session folders: {iso['offered_outside_session_folders'][:3]}")
    if iso["guessed_or_traversal_served"]:
        out.append(f"served to a guess: {iso['guessed_or_traversal_served']}")
    q = r["queue"]
    if q["max_simultaneous_model_calls"] > r["model_concurrency_limit"]:
        out.append(f"{q['max_simultaneous_model_calls']} model calls ran at once, limit {r['model_concurrency_limit']}")
    if r["temp_files"]["n_leftovers"]:
        out.append(f"{r['temp_files']['n_leftovers']} temp files left besides Gradio's empty upload temps: "
                   f"{r['temp_files']['leftovers'][:5]}")  # fmt: skip
    if r["temp_files"]["gradio_empty_tmp"] > r["temp_files"]["uploads"]:
        out.append(f"{r['temp_files']['gradio_empty_tmp']} empty Gradio temp files for {r['temp_files']['uploads']} uploads")
    if r["rounds_done"] < r["sessions"]:
        out.append(f"only {r['rounds_done']} rounds done by {r['sessions']} sessions")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(int(argv[1]), Path(argv[2]), float(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds each session keeps going (without --rounds)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per session (0 = until --duration)")
    ap.add_argument("--model", default="fake", help="fake (default) or a real backend name, e.g. litemedsam")
    ap.add_argument("--model-limit", type=int, default=1, help="PROMPTONCE_MODEL_CONCURRENCY for the server")
    ap.add_argument("--fake-delay", type=float, default=0.01, help="seconds added to each fake model call")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load_test.json")
    args = ap.parse_args(argv)
    result = run_load(args.sessions, args.duration, args.rounds, args.model, args.model_limit, args.fake_delay)
    result["host"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lat = result["latency_s"]["all"]
    print(
        f"{result['sessions']} sessions, {result['rounds_done']} rounds, {result['requests']} requests, "
        f"{result['errors']} errors in {result['seconds']} s; latency p50 {lat['p50']} s, p95 {lat['p95']} s, "
        f"p99 {lat['p99']} s; max model calls at once {result['queue']['max_simultaneous_model_calls']} "
        f"(limit {result['model_concurrency_limit']}); temp files {result['temp_files']['baseline']} -> "
        f"{result['temp_files']['after_sessions']} ({result['temp_files']['gradio_empty_tmp']} empty Gradio upload "
        f"temps for {result['temp_files']['uploads']} uploads); wrote {args.out}"
    )
    for p in result["problems"]:
        print("PROBLEM:", p)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
