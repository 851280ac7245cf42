"""Dataset runs on executors (promptonce.distributed) and their run folder (promptonce.runstore).

Fake backend, synthetic cases (a bright disc on noise, position and radius varying by case).
The Ray tests start one local Ray instance (2 CPUs, loopback only, no dashboard) for the module and
are skipped with a reason when Ray is not installed (``pip install 'promptonce[ray]'``).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptonce.distributed import ExecutorUnavailableError, RayExecutor, run_dataset
from promptonce.engine import make_engine, segment
from promptonce.runstore import RunMismatchError, RunStore
from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt, Volume

N = 12
PROMPT = SlicePrompt((ObjectPrompt(box=Box(16, 16, 48, 48)),), slice_index=0, volume_index=0)


def make_case(i: int, slow: float = 0.0, fail: str = "", marker: str = "") -> Volume:
    """Case ``i``: a 64x64 image, a disc of grey 200 on noise 0..29. ``fail``: ``corrupt`` raises a
    CorruptFileError; ``kill`` kills the process reading it (once: ``marker`` is created first);
    ``flaky`` raises a RuntimeError once (``marker``)."""
    import os as _os
    import signal as _signal
    import time as _time
    from pathlib import Path as _Path

    import numpy as _np

    from promptonce.errors import CorruptFileError as _Corrupt
    from promptonce.types import Volume as _Volume

    if slow:
        _time.sleep(slow)
    if fail == "corrupt":
        raise _Corrupt(f"case{i:03d}.png is truncated (synthetic corrupt case)")
    if fail in ("kill", "flaky") and marker and not _Path(marker).exists():
        _Path(marker).write_text("x")
        if fail == "kill":
            _os.kill(_os.getpid(), _signal.SIGKILL)
        raise RuntimeError("transient read error (synthetic)")
    rng = _np.random.default_rng(i)
    n = 64
    a = rng.integers(0, 30, (n, n)).astype(_np.uint8)
    cx, cy, r = 32 + rng.integers(-6, 6), 32 + rng.integers(-6, 6), 10 + rng.integers(0, 6)
    yy, xx = _np.mgrid[:n, :n]
    a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 200
    return _Volume(a[None], name=f"case{i:03d}", source_format="image")


def lazy(n: int = N, order=None, **special) -> Dataset:
    """A lazy dataset of ``n`` cases; ``special``: ``{"case003": dict(fail="corrupt")}``."""
    order = list(range(n)) if order is None else order
    return Dataset([(f"case{i:03d}", functools.partial(make_case, i, **special.get(f"case{i:03d}", {})))
                    for i in order])


def read_masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """The masks of today's local engine (``segment`` in dataset scope), by case name, as written (0/255)."""
    ds = lazy()
    eng = make_engine(PROMPT, "fake", None)
    return {ds.names[r.volume_index]: (r.labels > 0).astype(np.uint8) * 255
            for r in segment(ds, PROMPT, scope="dataset", engine=eng)}


def assert_same(out: Path, reference: dict[str, np.ndarray], names=None) -> None:
    got = read_masks(out)
    names = sorted(reference) if names is None else names
    assert sorted(got) == sorted(names)
    for k in names:
        assert np.array_equal(got[k], reference[k]), k
    assert any(m.any() for m in got.values())


def log_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "run" / "cases.jsonl").read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------- local executor


def test_local_executor_same_masks_as_engine(tmp_path, reference):
    s = run_dataset(lazy(), PROMPT, tmp_path, model="fake")
    assert s.ok and s.done == N and s.images == N and s.resumed == 0
    assert_same(tmp_path, reference)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["done"] == N and summary["skipped"] == []


def test_rerun_skips_verified_cases_and_redoes_changed_ones(tmp_path, reference):
    run_dataset(lazy(), PROMPT, tmp_path, model="fake")
    again = run_dataset(lazy(), PROMPT, tmp_path, model="fake")
    assert again.resumed == N and again.images == 0 and again.done == N
    (tmp_path / "masks" / "case004.png").unlink()
    p = tmp_path / "masks" / "case007.png"
    p.write_bytes(p.read_bytes()[:-8])  # truncated: size differs
    third = run_dataset(lazy(), PROMPT, tmp_path, model="fake")
    assert third.resumed == N - 2 and third.images == 2
    assert_same(tmp_path, reference)


def test_other_prompt_or_model_refused(tmp_path):
    run_dataset(lazy(4), PROMPT, tmp_path, model="fake")
    other = SlicePrompt((ObjectPrompt(box=Box(10, 16, 48, 48)),), slice_index=0, volume_index=0)
    with pytest.raises(RunMismatchError, match="another prompt.*x0"):
        run_dataset(lazy(4), other, tmp_path, model="fake")
    with pytest.raises(RunMismatchError, match="another model"):
        run_dataset(lazy(4), PROMPT, tmp_path, model="litemedsam")
    with pytest.raises(RunMismatchError, match="other cases"):
        run_dataset(lazy(5), PROMPT, tmp_path, model="fake")


def test_changed_inputs_refused(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a")
    run_dataset(lazy(3), PROMPT, tmp_path / "out", model="fake", inputs=[f])
    f.write_text("abc")
    with pytest.raises(RunMismatchError, match="inputs that changed"):
        run_dataset(lazy(3), PROMPT, tmp_path / "out", model="fake", inputs=[f])


def test_corrupt_case_skipped_with_reason_and_flaky_case_retried(tmp_path, reference):
    marker = tmp_path / "flaky-once"
    ds = lazy(case005={"fail": "corrupt"}, case008={"fail": "flaky", "marker": str(marker)})
    s = run_dataset(ds, PROMPT, tmp_path / "out", model="fake", retries=2)
    assert not s.ok
    assert [n for n, _ in s.skipped] == ["case005"]
    assert "CorruptFileError" in s.skipped[0][1] and "truncated" in s.skipped[0][1]
    recs = RunStore(tmp_path / "out").open_existing()
    assert recs[5].status == "failed" and recs[5].attempts == 1  # input errors are not retried
    assert recs[8].status == "done" and recs[8].attempts == 2  # the transient error was retried
    assert_same(tmp_path / "out", reference, [n for n in sorted(reference) if n != "case005"])
    # the rerun tries the skipped case again (it may have been fixed) and nothing else
    fixed = run_dataset(lazy(), PROMPT, tmp_path / "out", model="fake")
    assert fixed.ok and fixed.images == 1 and fixed.resumed == N - 1


def test_torn_log_line_ignored(tmp_path):
    run_dataset(lazy(3), PROMPT, tmp_path, model="fake")
    with open(tmp_path / "run" / "cases.jsonl", "a") as fh:
        fh.write('{"index": 1, "name": "case0')  # a write cut by a kill
    s = run_dataset(lazy(3), PROMPT, tmp_path, model="fake")
    assert s.resumed == 3 and s.images == 0


class _Outcome:
    def __init__(self, results, name):
        self.results, self.name, self.flags, self.exemplar = results, name, [], None
        self.confidence = float(np.mean([v for r in results for v in r.scores.values()] or [0.0]))


def _Ex(name: str, confidence: float, key: str):  # noqa: N802 - a small real exemplar
    from promptonce.engine import Exemplar

    return Exemplar(name, np.zeros((4, 4), np.float32), {1: np.eye(4, dtype=bool)}, 0.5, confidence, key)


class _QualityTransfer:
    """A DatasetTransfer with a quality pass, for the driver's map-gather-map: its first pass is the
    engine's segmentation from the prompt mapped by relative position; cases with an odd index 'need'
    a second pass, which erodes their mask by one pixel per exemplar (so the test sees that the pass
    ran and how many exemplars it got); exemplar confidence = the mask's area / 1000 (a top 3)."""

    calls: list[tuple[str, int]] = []

    def __init__(self, engine, seed_volume, prompt, window=None, seed_labels=None):
        self.engine, self.seed, self.prompt = engine, seed_volume, prompt

    def first_pass(self, volume, volume_index, cancel=None):
        from promptonce.prompts import map_prompt

        _QualityTransfer.calls.append(("first", volume_index))
        objs = tuple(map_prompt(o, self.seed.shape[1:], volume.shape[1:]) for o in self.prompt.objects)
        p = SlicePrompt(objs, slice_index=0, volume_index=0)
        res = list(self.engine.segment_volume(volume, p, volume_index=volume_index))
        for r in res:
            r.prompted = False
        out = _Outcome(res, volume.name)
        area = int((res[0].labels > 0).sum())
        out.exemplar = _Ex(volume.name, area / 1000, f"{volume.name}:{area}")
        return out

    def needs_second_pass(self, out):
        return out.results[0].volume_index % 2 == 1

    @staticmethod
    def select_exemplars(candidates):
        return sorted((c for c in candidates if c is not None), key=lambda e: (-e.confidence, e.key))[:3]

    def second_pass(self, volume, volume_index, exemplars, first=None, cancel=None):
        from scipy.ndimage import binary_erosion

        _QualityTransfer.calls.append(("second", volume_index))
        assert first is not None and len(exemplars) == 3
        for r in first.results:
            r.labels = binary_erosion(r.labels > 0, iterations=len(exemplars)).astype(np.uint8)
        return first


def test_quality_pass_runs_on_weak_cases_and_resumes(tmp_path, monkeypatch):
    from scipy.ndimage import binary_erosion

    import promptonce.engine as eng

    monkeypatch.setattr(eng, "DatasetTransfer", _QualityTransfer)
    ds = lazy()
    t = _QualityTransfer(make_engine(PROMPT, "fake", None), ds[0], PROMPT)
    want = {}
    for i in range(1, N):
        m = t.first_pass(ds[i], i).results[0].labels > 0
        want[f"case{i:03d}"] = (binary_erosion(m, iterations=3) if i % 2 else m).astype(np.uint8) * 255
    _QualityTransfer.calls = []
    s = run_dataset(ds, PROMPT, tmp_path, model="fake")
    assert s.ok and s.second_pass == N // 2
    calls = _QualityTransfer.calls
    assert sorted(i for k, i in calls if k == "second") == list(range(1, N, 2))
    assert [k for k, _ in calls].count("first") == N - 1  # the weak cases' first pass was kept, not redone
    got = read_masks(tmp_path)
    for name, m in want.items():
        assert np.array_equal(got[name], m), name
    # the run folder keeps only the exemplar set (the 3 largest masks)
    assert len(list((tmp_path / "run" / "exemplars").glob("*.npz"))) == 3
    # interrupted between the passes: the rerun redoes the quality pass only, with the same exemplars
    store = RunStore(tmp_path)
    recs = store.open_existing()
    for i in range(1, N, 2):  # rewind the log as if the driver died after the first pass
        store.record(recs[i].__class__(**{**recs[i].__dict__, "status": "first", "needs_second": True, "pass_": 1}))
    _QualityTransfer.calls = []
    again = run_dataset(lazy(), PROMPT, tmp_path, model="fake")
    assert again.second_pass == N // 2 and again.resumed == N
    assert sorted(i for k, i in _QualityTransfer.calls if k == "first") == list(range(1, N, 2))  # recomputed
    after = read_masks(tmp_path)
    for name in want:
        assert np.array_equal(after[name], got[name]), name


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorUnavailableError, match=r"promptonce\[ray\]"):
        RayExecutor()


def test_cli_ray_needs_dataset_scope(tmp_path, capsys):
    from promptonce.cli import main

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    rc = main(["segment", str(img), "--box", "2,2,20,20", "--model", "fake", "--out", str(tmp_path / "o"),
               "--executor", "ray"])
    assert rc == 2
    assert "--scope dataset" in capsys.readouterr().err
    rc = main(["segment", str(img), "--box", "2,2,20,20", "--model", "fake", "--out", str(tmp_path / "o"),
               "--scope", "dataset", "--workers", "4"])
    assert rc == 2
    assert "need --executor ray" in capsys.readouterr().err


def test_importing_promptonce_distributed_does_not_import_ray():
    code = "import sys, promptonce.distributed, promptonce.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False", out.stderr


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'promptonce[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 _node_ip_address="127.0.0.1")
    # the synthetic cases' loaders live in this test module, which Ray workers cannot import by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    if started:
        ray.shutdown()


def test_ray_same_masks_as_local_and_order_independent(ray_local, tmp_path, reference):
    s = run_dataset(lazy(), PROMPT, tmp_path / "a", model="fake", executor="ray", workers=2)
    assert s.ok and s.done == N and s.executor["workers"] == 2 and s.executor["threads_per_worker"] == 1
    assert_same(tmp_path / "a", reference)
    # the same cases in another order, prompted on the same case (now at position N-1)
    order = list(reversed(range(N)))
    p = SlicePrompt(PROMPT.objects, slice_index=0, volume_index=order.index(0))
    s2 = run_dataset(lazy(order=order), p, tmp_path / "b", model="fake", executor="ray", workers=2)
    assert s2.ok
    assert_same(tmp_path / "b", reference)


def test_ray_killed_worker_case_redone_once(ray_local, tmp_path, reference):
    marker = tmp_path / "killed-once"
    ds = lazy(case006={"fail": "kill", "marker": str(marker)})
    s = run_dataset(ds, PROMPT, tmp_path / "out", model="fake", executor="ray", workers=2, retries=2)
    assert marker.exists()  # a worker process was killed while reading case006
    assert s.ok and s.done == N
    recs = RunStore(tmp_path / "out").open_existing()
    assert recs[6].attempts == 2
    names = [r["name"] for r in log_lines(tmp_path / "out")]
    assert sorted(names) == sorted(reference)  # every case written exactly once
    assert_same(tmp_path / "out", reference)


def test_ray_corrupt_case_skipped_and_reported(ray_local, tmp_path, reference):
    s = run_dataset(lazy(case002={"fail": "corrupt"}), PROMPT, tmp_path, model="fake", executor="ray", workers=2)
    assert [n for n, _ in s.skipped] == ["case002"] and "CorruptFileError" in s.skipped[0][1]
    assert any("case002" in line for line in s.lines())
    assert_same(tmp_path, reference, [n for n in sorted(reference) if n != "case002"])


DRIVER = """from __future__ import annotations
import sys, time, functools
sys.path.insert(0, {root!r})
from promptonce.types import Dataset, Volume
N = {n}
{make_case}
{lazy}
from promptonce.types import Box, ObjectPrompt, SlicePrompt
from promptonce.distributed import run_dataset
import ray
ray.init(address={address!r}, log_to_driver=False, logging_level="WARNING")
ray.cloudpickle.register_pickle_by_value(sys.modules["__main__"])
slow = {{f"case{{i:03d}}": {{"slow": 0.4}} for i in range(N)}}
p = SlicePrompt((ObjectPrompt(box=Box(16, 16, 48, 48)),), slice_index=0, volume_index=0)
run_dataset(lazy(N, **slow), p, {out!r}, model="fake", executor="ray", workers=2)
"""


def test_ray_killed_driver_rerun_completes(ray_local, tmp_path, reference):
    out = tmp_path / "out"
    script = DRIVER.format(root=str(Path(__file__).resolve().parents[1]), make_case=inspect.getsource(make_case),
                           lazy=textwrap.dedent(inspect.getsource(lazy)), n=N, out=str(out),
                           address=ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "run" / "cases.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(log_lines(out))
    assert 3 <= before < N
    s = run_dataset(lazy(), PROMPT, out, model="fake", executor="ray", workers=2)
    assert s.ok and s.resumed >= before and s.resumed + s.images == N
    names = [r["name"] for r in log_lines(out)]
    assert sorted(names) == sorted(reference)  # every case exactly once across both drivers
    assert_same(out, reference)


def test_cli_ray_corrupt_file_skipped_exit_1_and_rerun_resumes(ray_local, tmp_path, capsys):
    from promptonce.cli import main

    src = tmp_path / "xrays"
    src.mkdir()
    for i in range(4):
        Image.fromarray(make_case(i).array[0]).save(src / f"case{i:03d}.png")
    good = (src / "case001.png").read_bytes()
    (src / "case002.png").write_bytes(good[: len(good) // 2])  # truncated: a valid header, half the data
    argv = ["segment", str(src), "--scope", "dataset", "--box", "16,16,48,48", "--model", "fake",
            "--out", str(tmp_path / "out"), "--executor", "ray", "--workers", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "3/4 cases done" in err and "1 cases skipped" in err and "case002" in err
    assert sorted(p.name for p in (tmp_path / "out" / "masks").glob("*.png")) == ["case000.png", "case001.png", "case003.png"]
    (src / "case002.png").write_bytes(good)  # the corrupt file fixed in place: only it is done
    assert main(argv) == 0
    assert "4/4 cases done (3 from an earlier run" in capsys.readouterr().err
    before = (tmp_path / "out" / "masks" / "case003.png").read_bytes()
    Image.fromarray(make_case(7).array[0]).save(src / "case003.png")  # a done case's file replaced
    assert main(argv) == 0
    assert "4/4 cases done (3 from an earlier run" in capsys.readouterr().err
    assert (tmp_path / "out" / "masks" / "case003.png").read_bytes() != before
    (src / "case000.png").touch()  # the prompted case: every case depends on it
    os.utime(src / "case000.png", ns=(1, 1))
    assert main(argv) == 2
    assert "prompted case" in capsys.readouterr().err
    (src / "case004.png").write_bytes(good)  # a file added: other cases
    assert main(argv) == 2


def test_ray_worker_start_error_is_the_workers_error(ray_local, tmp_path):
    from promptonce.errors import InputError

    with pytest.raises(InputError, match="Unknown model 'nosuch'"):
        run_dataset(lazy(3), PROMPT, tmp_path, model="nosuch", executor="ray", workers=1)


def test_cli_ray_writes_the_same_files_as_the_local_cli(ray_local, tmp_path):
    from promptonce.cli import main

    src = tmp_path / "xrays"
    src.mkdir()
    for i in range(5):
        Image.fromarray(make_case(i).array[0]).save(src / f"case{i:03d}.png")
    base = ["segment", str(src), "--scope", "dataset", "--box", "16,16,48,48", "--model", "fake", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    assert main([*base, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"]) == 0
    local = sorted((tmp_path / "local" / "masks").iterdir())
    ray = sorted((tmp_path / "ray" / "masks").iterdir())
    assert [p.name for p in local] == [p.name for p in ray] and "labels.csv" in [p.name for p in ray]
    for a, b in zip(local, ray):
        assert a.read_bytes() == b.read_bytes(), a.name
    q_local = json.loads((tmp_path / "local" / "quality.json").read_text())
    q_ray = json.loads((tmp_path / "ray" / "quality.json").read_text())
    assert sorted(q_ray["cases"], key=lambda c: c["volume_index"]) == sorted(q_local["cases"], key=lambda c: c["volume_index"])
    assert q_ray["review_first"] == q_local["review_first"]


def test_ray_quality_pass_same_masks_as_local(ray_local, tmp_path):
    _QualityTransfer.calls = []
    loc = run_dataset(lazy(), PROMPT, tmp_path / "local", model="fake", transfer=_QualityTransfer)
    ray_run = run_dataset(lazy(), PROMPT, tmp_path / "ray", model="fake", transfer=_QualityTransfer,
                          executor="ray", workers=2)
    assert loc.second_pass == ray_run.second_pass == N // 2
    got, want = read_masks(tmp_path / "ray"), read_masks(tmp_path / "local")
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k

def test_a_stored_exemplar_keeps_its_outline_evidence(tmp_path):
    from promptonce.engine import Exemplar

    ex = Exemplar("case", np.zeros((8, 8), np.float32), {1: np.ones((8, 8), bool)}, 0.5, 0.93, "case:abc",
                  evidence={1: 0.17})
    store = RunStore(tmp_path)
    store.exemplar_dir.mkdir(parents=True)
    store.save_exemplar(4, ex)
    (index, back), = list(store.load_exemplars())
    assert index == 4 and back.evidence == {1: 0.17} and back.key == ex.key
    assert back.walled is False
    walled = Exemplar("wall", np.zeros((8, 8), np.float32), {1: np.ones((8, 8), bool)}, 0.5, 0.41, "wall:abc",
                      walled=True)  # an atlas for cases without a wall, whatever its confidence
    store.save_exemplar(5, walled)
    assert {i: e.walled for i, e in store.load_exemplars()} == {4: False, 5: True}
