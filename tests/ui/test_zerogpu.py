"""ZeroGPU support (promptonce.ui.zerogpu): a no-op elsewhere; on ZeroGPU, the model runs inside spaces.GPU.

The stand-in ``spaces`` module behaves as ZeroGPU does where it matters here: the decorated function
runs "elsewhere", so its argument and every result it yields are pickled across; the duration is
asked per call (a callable of the call's arguments).
"""

from __future__ import annotations

import importlib.machinery
import pickle
import sys
import threading
import types
from typing import Any

import numpy as np
import pytest

from promptonce.engine import segment as engine_segment
from promptonce.errors import CancelledError
from promptonce.types import Box, ObjectPrompt, SlicePrompt, Volume
from promptonce.ui import zerogpu


def _ball(n: int, shift: float, name: str) -> Volume:
    zz, yy, xx = np.mgrid[0:n, 0:48, 0:48]
    ref = (xx - 24 - shift) ** 2 + (yy - 22) ** 2 <= np.maximum(64 - (zz - n // 2) ** 2 * 2.0, 0)
    arr = np.where(ref, 200.0, 20.0) + np.random.default_rng(n).normal(0, 2, ref.shape)
    return Volume(arr.astype(np.float32), name=name)


@pytest.fixture
def cases() -> list[Volume]:
    return [_ball(9, 0.0, "a"), _ball(11, 2.0, "b"), _ball(7, -1.0, "c"), _ball(9, 1.0, "d")]


PROMPT = SlicePrompt((ObjectPrompt(box=Box(15, 13, 33, 31)),), slice_index=4, volume_index=1)


def _engine() -> Any:
    from promptonce.backends.fake import FakeBackend
    from promptonce.engine import Engine

    return Engine(FakeBackend(), click_backend=None)


class _StandInSpaces:
    """What the app can see of ``spaces`` on ZeroGPU: ``GPU(duration=...)`` returning a wrapper."""

    def __init__(self) -> None:
        self.decorated: list[str] = []
        self.calls: list[int] = []
        self.module = types.ModuleType("spaces")
        self.module.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
        self.module.GPU = self.GPU  # type: ignore[attr-defined]
        self.auto_wrap = True
        self.module.disable_gradio_auto_wrap = lambda: setattr(self, "auto_wrap", False)  # type: ignore[attr-defined]

    def GPU(self, task: Any = None, *, duration: Any = None) -> Any:  # noqa: N802 - the package's name
        def deco(fn: Any) -> Any:
            self.decorated.append(fn.__name__)

            def in_worker(*args: Any) -> Any:
                self.calls.append(int(duration(*args) if callable(duration) else duration))
                args = pickle.loads(pickle.dumps(args))  # crosses into the worker process
                for item in fn(*args):
                    yield pickle.loads(pickle.dumps(item))  # and back

            return in_worker

        return deco(task) if callable(task) else deco


@pytest.fixture
def on_zerogpu(monkeypatch: pytest.MonkeyPatch) -> _StandInSpaces:
    stand_in = _StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", stand_in.module)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(zerogpu, "_RUN_ON_GPU", [])
    # the fake backend plays a GPU model here, on the CPU
    monkeypatch.setattr(zerogpu, "CPU_MODELS", frozenset())
    monkeypatch.setattr(zerogpu, "gpu_device", lambda: "cpu")
    return stand_in


def _by_key(results: list[Any]) -> dict[tuple[int, int], np.ndarray]:
    return {(r.volume_index, r.slice_index): r.labels for r in results}


def test_off_zerogpu_everything_is_the_engine_itself(monkeypatch: pytest.MonkeyPatch, cases: list[Volume]) -> None:
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not zerogpu.active()

    def fn() -> int:
        return 1

    assert zerogpu.gpu(fn, 60) is fn
    got = list(zerogpu.segment(cases, PROMPT, scope="dataset", engine=_engine()))
    want = list(engine_segment(cases, PROMPT, scope="dataset", engine=_engine()))
    assert [(r.volume_index, r.slice_index) for r in got] == [(r.volume_index, r.slice_index) for r in want]


def test_the_real_spaces_package_is_a_no_op_off_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    spaces = pytest.importorskip("spaces")

    def fn() -> int:
        return 1

    assert spaces.GPU(duration=30)(fn) is fn
    assert not zerogpu.active()  # the package alone is not ZeroGPU


def test_durations_are_sized_from_the_job() -> None:
    short, long = zerogpu.duration_for("sam2.1_hiera_t", 5), zerogpu.duration_for("sam2.1_hiera_t", 200)
    assert 30 <= short < long <= zerogpu.MAX_DURATION_S
    assert zerogpu.duration_for("sam2.1_hiera_t", 100_000) == zerogpu.MAX_DURATION_S
    assert zerogpu.duration_for("sam_vit_h", 100) > zerogpu.duration_for("sam_vit_b", 100)


def test_chunks_fit_the_slot_and_always_carry_the_prompted_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zerogpu, "MAX_DURATION_S", 50)
    monkeypatch.setattr(zerogpu, "_SETUP_S", 20.0)
    monkeypatch.setattr(zerogpu, "_PER_SLICE_S", {**zerogpu._PER_SLICE_S, "sam2": 1.0})
    # 30 slices of budget per call: the prompted case (10) + 20 more
    chunks = zerogpu.plan_chunks("sam2.1_hiera_t", [10, 10, 10, 15, 5], 0, "dataset", "transfer")
    assert chunks == [[0, 1, 2], [0, 3, 4]]
    assert zerogpu.plan_chunks("sam2.1_hiera_t", [10, 10, 10, 15, 5], 2, "dataset", "chain") == [[2, 0, 1, 3, 4]]
    assert zerogpu.plan_chunks("sam2.1_hiera_t", [10, 10], 1, "volume", "transfer") == [[1]]
    # a case larger than a slot still runs (alone with the reference), it is never dropped
    assert zerogpu.plan_chunks("sam2.1_hiera_t", [10, 90, 5], 0, "dataset", "transfer") == [[0, 1], [0, 2]]


def test_on_zerogpu_the_run_happens_inside_spaces_gpu(on_zerogpu: _StandInSpaces, cases: list[Volume]) -> None:
    assert zerogpu.active() and zerogpu.prepare()
    assert on_zerogpu.decorated == ["_segment_on_gpu"]
    assert not on_zerogpu.auto_wrap  # handlers keep their state in this process: only the model work is wrapped
    got = list(zerogpu.segment(cases, PROMPT, scope="volume", engine=_engine()))
    want = list(engine_segment(cases, PROMPT, scope="volume", engine=_engine()))
    assert len(on_zerogpu.calls) == 1 and on_zerogpu.calls[0] == zerogpu.duration_for("fake", 11)
    assert _by_key(got).keys() == _by_key(want).keys()
    for key, labels in _by_key(want).items():
        np.testing.assert_array_equal(_by_key(got)[key], labels)


def test_a_long_dataset_run_continues_in_chunks_without_losing_or_repeating_slices(
    on_zerogpu: _StandInSpaces, cases: list[Volume], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zerogpu, "MAX_DURATION_S", 40)
    monkeypatch.setattr(zerogpu, "_SETUP_S", 20.0)
    monkeypatch.setattr(zerogpu, "_per_slice", lambda model: 1.0)  # 20 slices per call
    got = list(zerogpu.segment(cases, PROMPT, scope="dataset", strategy="transfer", engine=_engine()))
    want = list(engine_segment(cases, PROMPT, scope="dataset", strategy="transfer", engine=_engine()))
    assert len(on_zerogpu.calls) == 3  # [b, a], [b, c], [b, d]
    keys = [(r.volume_index, r.slice_index) for r in got]
    assert len(keys) == len(set(keys)), "a slice came back twice"
    assert set(keys) == set(_by_key(want))
    for key, labels in _by_key(want).items():
        np.testing.assert_array_equal(_by_key(got)[key], labels, err_msg=str(key))
    assert {r.volume_name for r in got if r.volume_index == 2} == {"c"}


def test_cancel_between_slices_keeps_what_came_back(on_zerogpu: _StandInSpaces, cases: list[Volume]) -> None:
    cancel = threading.Event()
    got = []
    with pytest.raises(CancelledError):
        for res in zerogpu.segment(cases, PROMPT, scope="dataset", engine=_engine(), cancel=cancel):
            got.append(res)
            if len(got) == 3:
                cancel.set()
    assert len(got) == 3


def test_cpu_models_never_ask_for_a_gpu(on_zerogpu: _StandInSpaces, cases: list[Volume],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zerogpu, "CPU_MODELS", frozenset({"fake"}))
    assert list(zerogpu.segment(cases, PROMPT, scope="volume", engine=_engine()))
    assert on_zerogpu.calls == []
