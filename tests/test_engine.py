"""Engine plumbing with the fake backend (a deterministic stand-in, not a model)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from promptonce.engine import Engine, PropagationConfig, segment
from promptonce.errors import CancelledError, PromptError
from promptonce.metrics import dice
from promptonce.types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, Volume


def fake_backend():
    from promptonce.backends.fake import FakeBackend

    return FakeBackend()


def sphere_volume(n=21, size=64, radius=9.0, centre=(32, 30), drift=0.6, name="sphere") -> tuple[Volume, np.ndarray]:
    """A bright ball on a dark background, its centre drifting along x slice by slice."""
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    cz = n // 2
    cx = centre[0] + drift * (zz - cz)
    r2 = radius**2 - (zz - cz) ** 2 * (radius / (n // 2 - 2)) ** 2 * 0.9
    ref = ((xx - cx) ** 2 + (yy - centre[1]) ** 2) <= np.maximum(r2, 0)
    ref &= r2 > 4
    rng = np.random.default_rng(0)
    arr = np.where(ref, 200.0, 20.0) + rng.normal(0, 3, ref.shape)
    return Volume(arr.astype(np.float32), name=name), ref


def box_of(mask2d: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask2d)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def test_volume_propagation_follows_a_drifting_ball_and_stops_where_it_ends():
    vol, ref = sphere_volume()
    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[k])),), slice_index=k)
    results = list(segment(vol, prompt, scope="volume", backend=fake_backend(), click_backend=None))
    order = [r.slice_index for r in results]
    assert order[0] == k and results[0].prompted
    assert sorted(order) == list(range(vol.n_slices))
    pred = np.zeros(ref.shape, bool)
    for r in results:
        pred[r.slice_index] = r.labels == 1
    assert dice(pred, ref) > 0.9
    empty = [z for z in range(vol.n_slices) if not ref[z].any()]
    assert empty, "the phantom must have empty end slices for this test"
    assert not pred[empty].any(), "propagation must end where the object vanishes"


def test_two_objects_keep_their_ids():
    vol, ref = sphere_volume(drift=0.0, centre=(20, 32), radius=6)
    vol2, ref2 = sphere_volume(drift=0.0, centre=(46, 32), radius=6)
    arr = np.maximum(vol.array, vol2.array)
    both = Volume(arr, name="two")
    k = both.n_slices // 2
    prompt = SlicePrompt(
        (ObjectPrompt(box=box_of(ref[k]), object_id=1), ObjectPrompt(box=box_of(ref2[k]), object_id=2)),
        slice_index=k,
    )
    res = {r.slice_index: r for r in segment(both, prompt, backend=fake_backend(), click_backend=None)}
    lab = res[k].labels
    assert dice(lab == 1, ref[k]) > 0.9 and dice(lab == 2, ref2[k]) > 0.9


def test_image_scope_yields_only_the_prompted_slice():
    vol, ref = sphere_volume()
    prompt = SlicePrompt((ObjectPrompt(points=(Point(32, 30),)),), slice_index=10)
    out = list(segment(vol, prompt, scope="image", backend=fake_backend(), click_backend=None))
    assert [r.slice_index for r in out] == [10]
    assert out[0].labels[30, 32] == 1


@pytest.mark.parametrize("strategy", ["transfer", "chain"])
def test_dataset_scope_covers_every_case_from_one_prompt(strategy):
    cases = [sphere_volume(n=9, centre=(28 + 2 * i, 30), name=f"c{i}") for i in range(4)]
    ds = Dataset([v for v, _ in cases])
    k = 4
    prompt = SlicePrompt((ObjectPrompt(box=box_of(cases[0][1][k])),), slice_index=k, volume_index=0)
    got: dict[int, np.ndarray] = {}
    for r in segment(ds, prompt, scope="dataset", backend=fake_backend(), click_backend=None, strategy=strategy):
        got.setdefault(r.volume_index, np.zeros(cases[r.volume_index][1].shape, bool))[r.slice_index] = r.labels > 0
    assert sorted(got) == [0, 1, 2, 3]
    for i, (_, ref) in enumerate(cases):
        assert dice(got[i], ref) > 0.85, f"case {i}"


def test_cancel_stops_between_slices_and_keeps_what_was_done():
    vol, ref = sphere_volume()
    cancel = threading.Event()
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[10])),), slice_index=10)
    done = []
    with pytest.raises(CancelledError):
        for r in segment(vol, prompt, backend=fake_backend(), click_backend=None, cancel=cancel):
            done.append(r.slice_index)
            if len(done) == 3:
                cancel.set()
    assert len(done) == 3


def test_prompt_outside_the_image_is_refused_with_a_clear_message():
    vol, _ = sphere_volume()
    prompt = SlicePrompt((ObjectPrompt(points=(Point(500, 5),)),), slice_index=3)
    with pytest.raises(PromptError, match="outside"):
        list(segment(vol, prompt, backend=fake_backend(), click_backend=None))


def test_second_click_on_a_slice_reuses_the_embedding():
    be = fake_backend()
    calls = {"n": 0}
    orig = be.embed

    def counting(frame):
        calls["n"] += 1
        return orig(frame)

    be.embed = counting  # type: ignore[method-assign]
    eng = Engine(be)
    vol, ref = sphere_volume()
    obj = ObjectPrompt(points=(Point(32, 30),))
    eng.predict_object(vol, 10, obj)
    eng.predict_object(vol, 10, ObjectPrompt(points=(Point(33, 30), Point(5, 5, 0))))
    assert calls["n"] == 1


def test_correction_range_recomputes_only_the_given_slices():
    vol, ref = sphere_volume()
    eng = Engine(fake_backend())
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[12])),), slice_index=12)
    out = list(eng.segment_volume(vol, prompt, scope_slices=(12, 15)))
    assert sorted(r.slice_index for r in out) == [12, 13, 14, 15]


def test_memory_does_not_grow_with_dataset_length():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()

    def loader(i):
        return lambda: sphere_volume(n=7, size=96, name=f"c{i}")[0]

    n = 120
    ds = Dataset([(f"c{i}", loader(i)) for i in range(n)])
    _, ref = sphere_volume(n=7, size=96)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[3])),), slice_index=3)
    rss = []
    for r in segment(ds, prompt, scope="dataset", backend=fake_backend(), click_backend=None):
        if r.slice_index == 3 and r.volume_index in (20, n - 1):
            gc.collect()
            rss.append(proc.memory_info().rss)
    assert len(rss) == 2
    # 100 more cases of 7x96x96 float32 would be ~26 MB if they were kept; allow noise well below that.
    assert rss[1] - rss[0] < 12 * 2**20


def test_config_is_used():
    vol, ref = sphere_volume()
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[10])),), slice_index=10)
    strict = PropagationConfig(min_area_frac=0.95)  # ends as soon as the ball shrinks a little
    out = list(segment(vol, prompt, backend=fake_backend(), click_backend=None, config=strict))
    nonempty = [r.slice_index for r in out if r.labels.any()]
    assert len(nonempty) < int(ref.reshape(ref.shape[0], -1).any(1).sum())


class _CountingFake:
    """The fake backend (not a model), counting embed calls and the threads that made them."""

    def __init__(self, fail_in_prefetch: bool = False, name: str = "fake") -> None:
        from dataclasses import replace as dc_replace

        from promptonce.backends.fake import FakeBackend

        self._be = FakeBackend()
        self.info = dc_replace(self._be.info, name=name)
        self.threads: list[str] = []
        self.fail_in_prefetch = fail_in_prefetch
        self._lock = threading.Lock()

    def embed(self, frame):
        name = threading.current_thread().name
        with self._lock:
            self.threads.append(name)
        if self.fail_in_prefetch and name.startswith("promptonce-prefetch"):
            raise RuntimeError("simulated failure in the prefetch thread")
        return self._be.embed(frame)

    def predict(self, *args, **kwargs):
        return self._be.predict(*args, **kwargs)


def _labels(results):
    return {r.slice_index: r.labels for r in results}


def test_prefetch_gives_the_same_masks_and_encodes_at_most_one_extra_slice_per_direction():
    vol, ref = sphere_volume()
    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[k])),), slice_index=k)
    plain, ahead = _CountingFake(), _CountingFake()
    a = list(Engine(plain, prefetch=False).segment_volume(vol, prompt))
    b = list(Engine(ahead, prefetch=True).segment_volume(vol, prompt))
    assert [r.slice_index for r in a] == [r.slice_index for r in b]
    la, lb = _labels(a), _labels(b)
    for z in la:
        np.testing.assert_array_equal(la[z], lb[z])
    assert len(plain.threads) < vol.n_slices, "the phantom must end before the volume does"
    assert len(plain.threads) <= len(ahead.threads) <= len(plain.threads) + 2
    assert any(t.startswith("promptonce-prefetch") for t in ahead.threads), "nothing was encoded ahead"
    assert not any(t.startswith("promptonce-prefetch") for t in plain.threads)


def test_a_failed_prefetch_is_encoded_again_in_the_caller():
    vol, ref = sphere_volume()
    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[k])),), slice_index=k)
    plain, failing = _CountingFake(), _CountingFake(fail_in_prefetch=True)
    a = _labels(Engine(plain, prefetch=False).segment_volume(vol, prompt))
    b = _labels(Engine(failing, prefetch=True).segment_volume(vol, prompt))
    assert a.keys() == b.keys()
    for z in a:
        np.testing.assert_array_equal(a[z], b[z])
    assert any(t.startswith("promptonce-prefetch") for t in failing.threads)


def test_image_scope_does_not_prefetch_neighbours():
    vol, ref = sphere_volume()
    be = _CountingFake()
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[10])),), slice_index=10)
    list(Engine(be, prefetch=True).segment_volume(vol, prompt, scope_slices=(10, 10)))
    assert len(be.threads) == 1


def test_warm_encodes_the_shown_slice_for_both_models_and_a_click_then_reuses_it():
    vol, ref = sphere_volume()
    box_model, click_model = _CountingFake(), _CountingFake(name="fake-click")
    eng = Engine(box_model, click_backend=click_model)
    for fut in eng.warm(vol, 10):
        fut.result(timeout=30)
    assert len(box_model.threads) == len(click_model.threads) == 1
    assert all(t.startswith("promptonce-warm") for t in box_model.threads + click_model.threads)
    eng.predict_object(vol, 10, ObjectPrompt(box=box_of(ref[10])))
    assert len(box_model.threads) == 1, "the click re-encoded a warmed slice"


def test_warm_drops_requests_superseded_before_they_run():
    vol, _ = sphere_volume()
    gate, started = threading.Event(), threading.Event()

    class Slow(_CountingFake):
        def embed(self, frame):
            started.set()
            gate.wait(30)
            return super().embed(frame)

    be = Slow()
    eng = Engine(be)
    first = eng.warm(vol, 3)
    assert started.wait(30)  # slice 3 is being encoded (blocked on the gate)
    queued = [eng.warm(vol, k) for k in (4, 5, 6)]  # queued behind it; only the last is still wanted
    gate.set()
    for fut in first + [f for fs in queued for f in fs]:
        fut.result(timeout=30)
    assert len(be.threads) == 2  # slice 3 (already running) and slice 6 (the latest); 4 and 5 dropped
    assert eng.embedding(be, vol, 6) is not None and len(be.threads) == 2
    eng.embedding(be, vol, 4)  # a dropped slice is encoded on demand
    assert len(be.threads) == 3


def test_walking_both_ways_at_once_gives_the_same_results_in_the_same_order():
    vol, ref = sphere_volume()
    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[k])),), slice_index=k)
    plain, both = _CountingFake(), _CountingFake()
    both.parallel_encodes = 2  # as OpenVINO's throughput streams say
    a = list(Engine(plain, prefetch=False).segment_volume(vol, prompt))
    b = list(Engine(both).segment_volume(vol, prompt))
    assert [r.slice_index for r in a] == [r.slice_index for r in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
    assert any(t == "promptonce-backward" for t in both.threads), "the backward walk did not run in its thread"


def test_walking_both_ways_stops_on_cancel_and_on_close():
    vol, ref = sphere_volume()
    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[k])),), slice_index=k)
    be = _CountingFake()
    be.parallel_encodes = 2
    cancel = threading.Event()
    done = []
    with pytest.raises(CancelledError):
        for r in Engine(be).segment_volume(vol, prompt, cancel=cancel):
            done.append(r.slice_index)
            if len(done) == 2:
                cancel.set()
    assert len(done) == 2
    gen = Engine(be).segment_volume(vol, prompt)
    next(gen)
    next(gen)
    gen.close()  # the backward thread is told to stop; nothing hangs
