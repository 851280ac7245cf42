"""Dataset transfer with registration priors and exemplar memory (fake backend: plumbing, not a model)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from promptonce.backends.base import BackendInfo
from promptonce.backends.fake import FakeBackend
from promptonce.engine import DatasetTransfer, Engine, segment
from promptonce.engine.quality import check_against_prior, lost_flag, uncertain_end_flag
from promptonce.engine.prior_mask import prior_guided_mask
from promptonce.errors import InputError
from promptonce.metrics import dice
from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt, Volume


def case(i: int, shape=(96, 80), leak: bool = False) -> tuple[Volume, np.ndarray]:
    """A one-image case: a bright ellipse (the object) whose place and size vary with ``i``."""
    h, w = shape
    rng = np.random.default_rng(i)
    cx, cy = 40 + 6 * np.sin(i), 46 + 5 * np.cos(1.3 * i)
    s = 1.0 + 0.08 * np.sin(2.1 * i)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - cx) / s, (yy - cy) / s
    obj = (u / 18) ** 2 + (v / 24) ** 2 <= 1
    img = 30 + 10 * np.sin(u / 5.0) + rng.normal(0, 2, shape)
    img = np.where(obj, 200.0, img)
    if leak:  # a marker the LeakyBackend below recognises (a planted model failure)
        img[0, 0] = 255.0
    return Volume(img[None].astype(np.float32), name=f"case{i:02d}"), obj


class LeakyBackend(FakeBackend):
    """The fake backend, except that on marked images its mask spills far below the object (a planted leak)."""

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        pred = super().predict(embedding, points, point_labels, box, mask_logits, multimask)
        if embedding.data[0, 0] > 250:
            for m in pred.masks:
                ys, xs = np.nonzero(m)
                if len(ys):
                    m[ys.max() : ys.max() + 30, xs.min() : xs.max() + 1] = True
        return pred


def box_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def run(vols: list[Volume], prompt: SlicePrompt, config=None, backend=None) -> dict[str, np.ndarray]:
    eng = Engine(backend or FakeBackend(), prefetch=False, config=config)
    out = {}
    for r in segment(Dataset(vols), prompt, scope="dataset", engine=eng):
        out[r.volume_name] = r.labels.copy()
    return out


def test_transfer_follows_the_object_and_scores_each_case():
    pairs = [case(i) for i in range(6)]
    vols = [v for v, _ in pairs]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=0, volume_index=0)
    eng = Engine(FakeBackend(), prefetch=False)
    results = list(segment(Dataset(vols), prompt, scope="dataset", engine=eng))
    assert sorted(r.volume_name for r in results) == sorted(v.name for v in vols)
    for r in results:
        ref = pairs[int(r.volume_name[4:])][1]
        assert dice(r.labels == 1, ref) > 0.9, r.volume_name
        assert r.confidence is not None and 0.0 <= r.confidence <= 1.0


@pytest.mark.parametrize("choice", [0.0, 1.01], ids=["default", "atlas-choice-always"])
def test_a_permuted_dataset_gives_identical_masks(choice):
    from promptonce.engine import PropagationConfig

    config = PropagationConfig(atlas_choice_below=choice)
    pairs = [case(i, leak=i in (3, 5)) for i in range(7)]  # two weak cases: the exemplar pass runs
    vols = [v for v, _ in pairs]
    p0 = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=0, volume_index=0)
    first = run(vols, p0, config, LeakyBackend())
    order = [0, 5, 2, 6, 1, 4, 3]
    second = run([vols[i] for i in order], p0, config, LeakyBackend())  # the seed stays at index 0
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    # the seed moved elsewhere in the list: same masks too
    order2 = [3, 1, 0, 2, 4, 5, 6]
    p2 = SlicePrompt(p0.objects, slice_index=0, volume_index=order2.index(0))
    third = run([vols[i] for i in order2], p2, config, LeakyBackend())
    for name in first:
        assert np.array_equal(first[name], third[name]), name


def test_a_planted_leak_is_flagged_and_confidence_drops():
    good = [case(i) for i in range(4)]
    leaky_vol, leaky_ref = case(9, leak=True)
    vols = [v for v, _ in good] + [leaky_vol]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(good[0][1])),), slice_index=0, volume_index=0)
    eng = Engine(LeakyBackend(), prefetch=False)
    res = {r.volume_name: r for r in segment(Dataset(vols), prompt, scope="dataset", engine=eng)}
    leaky = res[leaky_vol.name]
    assert any("leaked beyond the prior" in f for f in leaky.flags), leaky.flags
    others = [res[v.name].confidence for v, _ in good[1:]]
    assert leaky.confidence < min(others)
    assert not any(res[v.name].flags for v, _ in good[1:]), [res[v.name].flags for v, _ in good[1:]]


def test_second_pass_uses_exemplars_and_stays_order_free():
    pairs = [case(i) for i in range(5)]
    vols = [v for v, _ in pairs]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=0, volume_index=0)
    eng = Engine(FakeBackend(), prefetch=False)
    t = DatasetTransfer(eng, vols[0], prompt)
    outs = [t.first_pass(v, i) for i, v in enumerate(vols) if i]
    ex = DatasetTransfer.select_exemplars([o.exemplar for o in outs])
    assert ex, "confident cases must become exemplars"
    assert DatasetTransfer.select_exemplars([o.exemplar for o in reversed(outs)]) == ex
    weak = outs[0]
    again = t.second_pass(vols[1], 1, ex, weak)
    # a single image keeps its fused second pass (see the test below for volumes)
    assert again is not weak and again.passes == 2 and vols[1].name not in again.sources[1:]
    assert again.sources[0] == vols[0].name and set(again.sources[1:]) <= {e.name for e in ex}


def test_weak_cases_are_encoded_once_on_a_lazily_read_dataset(monkeypatch):
    """A dataset read from files gives a new Volume on each access, and the engine keeps 32
    embeddings: the exemplar pass of a weak case used to read and encode it again. The weak cases are
    now held (volume and pinned key-slice embedding) until their second pass; the masks are the same
    as when they are read and encoded again."""
    import promptonce.engine.transfer as transfer_module

    pairs = [case(i) for i in range(7)]
    items = [(v.name, (lambda v=v: Volume(v.array.copy(), name=v.name))) for v, _ in pairs]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=0, volume_index=0)
    monkeypatch.setattr(transfer_module, "SECOND_PASS_BELOW_IMAGE", 1.01)  # every case is weak: every case has both passes

    def go(pin_limit):
        backend = FakeBackend()
        eng = Engine(backend, prefetch=False, cache_size=2)
        eng.cache.pin_limit = pin_limit
        res = {r.volume_name: r.labels.copy() for r in segment(Dataset(items), prompt, scope="dataset", engine=eng)}
        assert not eng.cache._pinned  # every pin released
        return res, backend.encoder_calls

    held, calls_held = go(128)
    again, calls_again = go(0)  # nothing may be held: read and encoded again
    part, calls_part = go(2)  # two held, the other four read and encoded again
    assert calls_held == len(items)
    assert calls_again == len(items) + len(items) - 1
    assert calls_part == len(items) + len(items) - 1 - 2
    assert held.keys() == again.keys()
    for name in held:
        assert np.array_equal(held[name], again[name]) and np.array_equal(held[name], part[name]), name


def test_a_pinned_embedding_outlives_the_lru_limit_until_unpinned():
    from promptonce.engine.cache import EmbeddingCache

    cache = EmbeddingCache(size=2, background=False)
    backend = FakeBackend()
    vols = [case(i)[0] for i in range(4)]
    assert cache.pin(backend, vols[0], 0) is None  # not cached: nothing pinned
    first = cache.embedding(backend, vols[0], 0)
    assert cache.pin(backend, vols[0], 0) is first
    for v in vols[1:]:
        cache.embedding(backend, v, 0)
    assert len(cache) == 3  # two under the limit, and the pinned one
    assert cache.embedding(backend, vols[0], 0) is first and backend.encoder_calls == 4
    cache.unpin(backend, vols[0], 0)
    assert len(cache) == 2
    cache.embedding(backend, vols[3], 0)
    cache.embedding(backend, vols[2], 0)
    assert cache.embedding(backend, vols[0], 0) is not first  # evicted once unpinned: encoded again
    cache.pin_limit = 1
    assert cache.pin(backend, vols[0], 0) is not None and cache.pin(backend, vols[2], 0) is None  # at the limit


def test_quality_check_flags_a_missed_part_and_low_agreement():
    prior = np.zeros((60, 60), np.float32)
    prior[10:50, 5:25] = 1.0
    prior[10:50, 35:55] = 1.0  # two parts (two lungs)
    only_left = np.zeros((60, 60), bool)
    only_left[10:50, 5:25] = True
    chk = check_against_prior(only_left, prior, 0.9, "lungs")
    assert chk.parts_missed == 1
    assert any("missed part of the prior" in f for f in chk.flags)
    full = prior >= 0.5
    assert check_against_prior(full, prior, 0.9, "lungs").confidence > chk.confidence
    assert lost_flag("liver", 80, 100, "x") is not None and lost_flag("liver", 10, 100, "x") is None


def test_an_object_lost_mid_volume_is_flagged():
    n, size = 15, 64
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    ball = (xx - 32) ** 2 + (yy - 30) ** 2 <= 100
    arr = np.where(ball, 200.0, 20.0) + np.random.default_rng(0).normal(0, 2, ball.shape)
    arr[10] = 20.0  # the object is missing from one slice: the walk must not end silently there
    vol = Volume(arr.astype(np.float32), name="gap")
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ball[7]), name="ball"),), slice_index=7)
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None)}
    assert any("object lost mid-volume" in f for f in res[10].flags), res[10].flags
    assert any("may continue here" in f for f in res[11].flags), res[11].flags
    assert res[10].confidence is not None and res[10].confidence < 0.5
    assert all(res[k].confidence is not None and res[k].confidence > 0.8 for k in (6, 7, 8, 9))


class CavitySequence:
    """A stand-in memory model (SAM 2's interface) that answers every frame with the same disc of radius 7."""

    info = BackendInfo("fake-sequence", "fake sequence", points=True, boxes=True, input_size=64, sequence=True)

    def __init__(self, score: float = 0.95) -> None:
        self.score = score

    def propagate(self, n_frames, get_frame, seeds, start, reverse=False, end=None):
        yy, xx = np.mgrid[0:64, 0:64]
        disc = (xx - 32) ** 2 + (yy - 32) ** 2 <= 49
        stop = (0 if reverse else n_frames - 1) if end is None else end
        step = -1 if reverse else 1
        for k in range(start, stop + step, step):
            yield k, {o.object_id: disc.copy() for o in seeds[start]}, {o.object_id: self.score for o in seeds[start]}


class UnsureBackend(FakeBackend):
    """The fake model with its scores scaled by ``factor``: the same masks, told with less certainty."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def predict(self, *args, **kwargs):
        pred = super().predict(*args, **kwargs)
        return replace(pred, scores=(pred.scores * self.factor).astype(np.float32))


def test_a_memory_model_run_gets_the_inside_box_and_carried_flags():
    """SAM 2's path: the prompted slice's mask inside every side of the box is flagged, the slices carried from it too."""
    vol = Volume(np.random.default_rng(0).normal(100, 5, (5, 64, 64)).astype(np.float32), name="v")
    wide = SlicePrompt((ObjectPrompt(box=Box(14.0, 14.0, 50.0, 50.0), name="wall"),), slice_index=2)
    res = {r.slice_index: r for r in segment(vol, wide, scope="volume", engine=Engine(CavitySequence()))}
    assert sorted(res) == [0, 1, 2, 3, 4]
    assert any("wall: stays inside its box on every side" in f for f in res[2].flags), res[2].flags
    for k in (0, 1, 3, 4):
        assert any("wall: carried from the prompted slice, whose mask was flagged" in f for f in res[k].flags), res[k].flags
    assert all(r.confidence is not None and r.confidence <= 0.5 for r in res.values())
    close = SlicePrompt((ObjectPrompt(box=Box(25.0, 25.0, 39.0, 39.0), name="wall"),), slice_index=2)
    res = list(segment(vol, close, scope="volume", engine=Engine(CavitySequence())))
    assert not any(r.flags for r in res) and all(r.confidence > 0.5 for r in res)
    # a close box, but the model scores its mask on the prompted slice low: unsure, carried at that score
    res = {r.slice_index: r for r in segment(vol, close, scope="volume", engine=Engine(CavitySequence(score=0.6)))}
    assert any("wall: the model is unsure of its outline on the prompted slice (score 0.60)" in f for f in res[2].flags)
    for k in (0, 1, 3, 4):
        assert any("wall: carried from the prompted slice" in f for f in res[k].flags), res[k].flags
    assert all(r.confidence is not None and r.confidence <= 0.6 for r in res.values())


def test_a_seed_the_model_scores_low_is_flagged_and_its_walk_carries_the_doubt():
    """The model's own score on the prompted slice below SEED_MIN_SCORE: the seed says so, every walked slice too."""
    from promptonce.engine.quality import SEED_MIN_SCORE, unsure_seed_flag

    n = 7
    _, _, disc = ring_volume(n)
    arr = np.where(disc, 200.0, 110.0)[None].repeat(n, 0) + np.random.default_rng(3).normal(0, 2, (n, *disc.shape))
    vol = Volume(arr.astype(np.float32), name="disc")
    prompt = SlicePrompt((ObjectPrompt(box=box_of(disc), name="disc"),), slice_index=3)
    sure = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=UnsureBackend(1.0), click_backend=None)}
    assert sorted(sure) == list(range(n)) and not any(r.flags for r in sure.values())
    seed_score = float(sure[3].scores[0]) if 0 in sure[3].scores else float(next(iter(sure[3].scores.values())))
    assert seed_score >= SEED_MIN_SCORE
    factor = 0.7
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=UnsureBackend(factor), click_backend=None)}
    for k in range(n):  # the same masks, only the scores differ
        assert np.array_equal(res[k].labels, sure[k].labels), k
    low = factor * seed_score
    assert any(f.startswith(f"disc: the model is unsure of its outline on the prompted slice (score {low:.2f})")
               for f in res[3].flags), res[3].flags
    for k in set(range(n)) - {3}:
        assert any("disc: carried from the prompted slice, whose mask was flagged" in f for f in res[k].flags), res[k].flags
        assert res[k].confidence is not None and res[k].confidence <= low + 1e-6
    assert unsure_seed_flag("x", SEED_MIN_SCORE) is None and unsure_seed_flag("x", SEED_MIN_SCORE - 0.01) is not None


def test_may_continue_here_runs_to_the_end_past_an_object_lost_while_large():
    """Nothing tells where a lost object ends: every slice past the loss is flagged, none before it."""
    n, size = 30, 64
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    rod = ((xx - 32) ** 2 + (yy - 30) ** 2 <= 100) & (zz <= 24)  # a rod from slice 0 to 24
    arr = np.where(rod, 200.0, 20.0) + np.random.default_rng(0).normal(0, 2, rod.shape)
    arr[10] = 20.0  # missing from one slice: lost mid-volume there
    vol = Volume(arr.astype(np.float32), name="rod")
    prompt = SlicePrompt((ObjectPrompt(box=box_of(rod[7]), name="rod"),), slice_index=7)
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None)}
    assert any("object lost mid-volume" in f for f in res[10].flags), res[10].flags
    may = [k for k, r in res.items() if any("may continue here" in f for f in r.flags)]
    assert may == list(range(11, 30)), may
    assert all("(lost mid-volume at slice 11)" in " ".join(res[k].flags) for k in may)  # numbered from 1, as in the app
    assert all(res[k].confidence == 0.3 for k in may)


def cone_volume(change_at: int | None):
    """A bright disc shrinking from radius 11 (slice 6) by 1.5 px a slice; from ``change_at`` on it is darker."""
    n, size = 14, 64
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    r = np.maximum(11.0 - 1.5 * np.maximum(zz - 6, 0), 0.0)
    obj = (xx - 32) ** 2 + (yy - 30) ** 2 <= r**2
    value = np.where(zz >= change_at, 110.0, 200.0) if change_at is not None else 200.0
    arr = np.where(obj, value, 20.0) + np.random.default_rng(1).normal(0, 2, obj.shape)
    return Volume(arr.astype(np.float32), name="cone"), obj


def test_an_object_ending_without_fading_out_is_flagged_where_it_ended():
    from promptonce.engine.walk import ends_uncertainly

    assert ends_uncertainly("intensity changed (z 9.1)") and ends_uncertainly("no overlap with the neighbouring slice")
    for natural in ("too small", "no mask", "confidence 0.12", "area x3.1", "area grows again after a tip (4 -> 9 px)",
                    "the mask fills its prompt box (background, not the object)"):
        assert not ends_uncertainly(natural), natural
    assert uncertain_end_flag("x", 30, 100, "intensity changed (z 3.0)") is not None
    assert uncertain_end_flag("x", 10, 100, "intensity changed (z 3.0)") is None  # a tip
    assert uncertain_end_flag("x", 50, 100, "intensity changed (z 3.0)") is None  # large: lost_flag's
    # small and darker from slice 10 on: the model still sees it there, the walk ends it on intensity
    vol, obj = cone_volume(change_at=10)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(obj[6]), name="cone"),), slice_index=6)
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None)}
    assert not res[10].labels.any() and obj[10].any()
    assert any("ended here without fading out (intensity changed" in f for f in res[10].flags), res[10].flags
    assert not any("lost mid-volume" in f for f in res[10].flags)  # it was small (under 40% of its peak)
    assert res[10].confidence is not None and res[10].confidence <= 0.5
    assert not res[11].flags  # one slice, not a span
    # the same cone fading out at its tip: a natural end, no flag anywhere
    vol, obj = cone_volume(change_at=None)
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None)}
    assert not any(r.flags for r in res.values()), {k: r.flags for k, r in res.items() if r.flags}
    assert max(k for k, r in res.items() if r.labels.any()) >= 10  # followed down to its small end


def drifting_cone(step: float):
    """:func:`cone_volume`'s disc, ``step`` darker on each slice past its largest one (slice 6)."""
    vol, obj = cone_volume(change_at=None)
    zz = np.arange(obj.shape[0])[:, None, None]
    arr = np.where(obj, 200.0 - step * np.maximum(zz - 6, 0), 20.0) + np.random.default_rng(1).normal(0, 2, obj.shape)
    return Volume(arr.astype(np.float32), name="drift"), obj


def test_a_gradual_intensity_drift_does_not_end_the_object_but_a_jump_still_does():
    from promptonce.engine import PropagationConfig

    cfg = PropagationConfig(max_intensity_step_z=1.0)

    def last_slice(vol, obj, config):
        prompt = SlicePrompt((ObjectPrompt(box=box_of(obj[6]), name="cone"),), slice_index=6)
        res = segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None, config=config)
        return max(r.slice_index for r in res if r.labels.any())

    # 2.5 grey levels darker a slice (the seed's robust SD is the 2% floor of the range: 3.6 levels)
    vol, obj = drifting_cone(2.5)
    assert last_slice(vol, obj, None) == 8  # the seed-referenced rule alone ends it on slice 9 (z 2.1)
    assert last_slice(vol, obj, cfg) >= 10  # each slice is close to the one before: followed on
    vol, obj = cone_volume(change_at=10)  # 90 levels darker at once: a neighbour, not a drift
    assert last_slice(vol, obj, cfg) == 9


def ring_volume(n: int, size: int = 64):
    """``(volume, ring, disc)``: a bright ring (radius 8-14) around a dark cavity on every slice, and the disc it bounds."""
    yy, xx = np.mgrid[0:size, 0:size]
    r2 = (xx - 32) ** 2 + (yy - 32) ** 2
    ring = (r2 <= 14**2) & (r2 > 8**2)
    arr = np.where(ring, 200.0, np.where(r2 <= 8**2, 20.0, 110.0))[None].repeat(n, 0)
    arr = arr + np.random.default_rng(2).normal(0, 2, arr.shape)
    return Volume(arr.astype(np.float32), name="ring"), ring, r2 <= 14**2


def test_a_seed_mask_inside_every_side_of_the_users_box_is_flagged():
    """A box drawn around a ring whose model takes the cavity (the myocardium's case) is flagged; a disc is not."""
    from promptonce.engine.quality import inside_box_flag

    n = 5
    vol, ring, disc = ring_volume(n)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ring), name="wall"),), slice_index=2)
    res = list(segment(vol, prompt, scope="image", backend=FakeBackend(), click_backend=None))[0]
    assert res.labels.any() and not (res.labels.astype(bool) & ring).any()  # the fake model took the cavity
    assert any("wall: stays inside its box on every side" in f for f in res.flags), res.flags
    assert res.confidence is not None and res.confidence <= 0.5
    vol2 = Volume(np.where(disc, 200.0, 110.0)[None].repeat(n, 0).astype(np.float32), name="disc")
    res2 = list(segment(vol2, prompt, scope="image", backend=FakeBackend(), click_backend=None))[0]
    assert res2.labels.any() and not res2.flags, res2.flags
    # the rule: every side at least INSIDE_BOX_FRACTION inside the box
    box = Box(10.0, 10.0, 59.0, 59.0)  # 50 x 50
    m = np.zeros((70, 70), bool)
    m[14:56, 14:56] = True  # 4 px = 8% inside every side
    assert inside_box_flag("x", m, box) is not None
    m[14:56, 11:56] = True  # the left side reaches the box (1 px = 2%)
    assert inside_box_flag("x", m, box) is None
    assert inside_box_flag("x", np.zeros((70, 70), bool), box) is None and inside_box_flag("x", m, None) is None


def test_slices_walked_from_a_flagged_seed_carry_its_doubt():
    """Every slice walked from a seed that took a ring's cavity is flagged, at most at the seed's confidence."""
    n = 7
    vol, ring, disc = ring_volume(n)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ring), name="wall"),), slice_index=3)
    res = {r.slice_index: r for r in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None)}
    walked = [k for k, r in res.items() if k != 3 and r.labels.any()]
    assert len(walked) >= 4, sorted(walked)  # the walk went on with the cavity, as the model answered
    for k in walked:
        assert any("wall: carried from the prompted slice, whose mask was flagged" in f for f in res[k].flags), res[k].flags
        assert res[k].confidence is not None and res[k].confidence <= 0.5
    # a disc walked from a box drawn close around it: no such flag, confident slices
    arr2 = np.where(disc, 200.0, 110.0)[None].repeat(n, 0) + np.random.default_rng(3).normal(0, 2, (n, *disc.shape))
    res2 = {r.slice_index: r for r in segment(Volume(arr2.astype(np.float32), name="disc"), prompt, scope="volume",
                                              backend=FakeBackend(), click_backend=None)}
    assert all(r.labels.any() for r in res2.values())
    assert not any("carried from" in f for r in res2.values() for f in r.flags)
    assert all(r.confidence is not None and r.confidence > 0.5 for r in res2.values())


def test_walk_with_registration_follows_a_moving_object():
    from promptonce.engine import PropagationConfig

    n, size = 13, 64
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    cx = 20 + 2.5 * zz  # moves 2.5 px per slice
    ref = (xx - cx) ** 2 + (yy - 32) ** 2 <= 64
    arr = np.where(ref, 200.0, 20.0) + 15 * np.sin(xx / 4.0 - zz * 2.5 / 4.0)
    vol = Volume(arr.astype(np.float32), name="mover")
    prompt = SlicePrompt((ObjectPrompt(box=box_of(ref[6])),), slice_index=6)
    eng = Engine(FakeBackend(), config=PropagationConfig(walk_registration=True), prefetch=False)
    pred = np.zeros(ref.shape, bool)
    for r in segment(vol, prompt, scope="volume", engine=eng):
        pred[r.slice_index] = r.labels == 1
    assert dice(pred, ref) > 0.9


def tall_object(shape=(120, 80)):
    """A tall bright bar (rows 10-70) on a dark textured background, and the bar cut at row 50."""
    h, w = shape
    rng = np.random.default_rng(5)
    img = 30 + rng.normal(0, 2, shape)
    obj = np.zeros(shape, bool)
    obj[10:71, 25:55] = True
    img = np.where(obj, 200.0, img)
    cut = obj.copy()
    cut[50:] = False
    return Volume(img[None].astype(np.float32), name="tall"), obj, cut


def test_side_contrast_tells_an_edge_from_a_cut():
    from promptonce.engine.quality import side_contrast

    vol, obj, cut = tall_object()
    gray = vol.array[0]
    whole, short = side_contrast(gray, obj, 4), side_contrast(gray, cut, 4)
    assert min(whole.values()) > 0.5  # every side of the bar is an image edge
    assert short["bottom"] < 0.05 < short["top"]  # the cut side has the same tissue on both sides


def test_a_mask_cut_short_by_its_box_continues_to_the_object_edge():
    from promptonce.engine.prior_mask import extend_soft_sides

    vol, obj, cut = tall_object()
    eng = Engine(FakeBackend(), prefetch=False)
    emb = eng.embedding(eng.backend, vol, 0)
    gray = eng.frames(vol).gray(0)
    longer, _ = extend_soft_sides(eng, eng.backend, emb, gray, cut, None, 1)
    assert dice(longer, obj) > 0.9 > dice(cut, obj) + 0.1
    # a mask that already ends at the object's edges is left as it is (the same array back)
    same, _ = extend_soft_sides(eng, eng.backend, emb, gray, obj, None, 1)
    assert same is obj


def test_an_extension_that_runs_to_the_new_box_edge_is_refused():
    """Past a soft side the object must end inside the extension; one that runs on (a leak into the
    next dark region, the image border) is not taken."""
    from promptonce.engine.prior_mask import extend_soft_sides

    h, w = 120, 80
    rng = np.random.default_rng(6)
    img = 30 + rng.normal(0, 2, (h, w))
    img[10:, 25:55] = 200.0  # the bar runs to the bottom of the image
    vol = Volume(img[None].astype(np.float32), name="runs-on")
    cut = np.zeros((h, w), bool)
    cut[10:40, 25:55] = True
    eng = Engine(FakeBackend(), prefetch=False)
    out, _ = extend_soft_sides(eng, eng.backend, eng.embedding(eng.backend, vol, 0), eng.frames(vol).gray(0), cut, None, 1)
    assert out is cut


def test_a_side_left_where_the_seed_had_it_moves_to_the_image_edge():
    """The lung base case: the transferred mask's lower end sits where the seed's did, short of the
    object's edge (or past it); the side search puts it on the edge, and leaves the other sides."""
    from promptonce.engine.prior_mask import search_sides

    vol, obj, _ = tall_object()  # rows 10-70
    eng = Engine(FakeBackend(), prefetch=False)
    emb = eng.embedding(eng.backend, vol, 0)
    gray = eng.frames(vol).gray(0)
    short = obj.copy()
    short[64:] = False  # ends 7 rows (12%) above the object's edge
    placed, _ = search_sides(eng, eng.backend, emb, gray, short, None, 1, ("bottom",))
    assert dice(placed, obj) > 0.99 > dice(short, obj)
    # a mask already on the object's edges comes back as it is (the same array)
    assert search_sides(eng, eng.backend, emb, gray, obj, None, 1, ("bottom",))[0] is obj
    # nothing is searched on a side that is not asked for
    assert search_sides(eng, eng.backend, emb, gray, short, None, 1, ("top",))[0] is short


def test_the_side_search_runs_on_x_ray_sets_only_and_rejects_unknown_sides():
    from promptonce.engine import PropagationConfig

    with pytest.raises(InputError, match="unknown sides"):
        PropagationConfig(side_search=("down",))
    vol, obj, _ = tall_object()
    short = obj.copy()
    short[64:] = False
    prior = short.astype(np.float32)
    calls = {}
    for name, v in (("image", vol), ("volume", Volume(np.repeat(vol.array, 3, axis=0), name="stack"))):
        eng = Engine(FakeBackend(), prefetch=False, config=PropagationConfig(soft_side_contrast=0.0))
        real = eng.backend.predict
        n = [0]

        def counted(*a, _real=real, _n=n, **k):
            _n[0] += 1
            return _real(*a, **k)

        eng.backend.predict = counted
        prior_guided_mask(eng, v, 0, prior, ObjectPrompt(box=box_of(short)), "o")
        calls[name] = n[0]
    assert calls["image"] == calls["volume"] + len(PropagationConfig().side_search_offsets)


def test_side_contrast_on_images_smaller_than_the_band():
    from promptonce.engine.quality import side_contrast

    out = side_contrast(np.array([[1.0, 2.0]]), np.array([[True, False]]), 3)
    assert set(out) == {"bottom", "top", "right", "left"} and all(v is None for v in out.values())


def test_side_contrast_on_the_masks_crop_equals_the_whole_image_definition():
    """side_contrast works on the mask's box grown by the band; the bands it measures must be those
    of the whole image, masks at the image's edges and empty masks included."""
    from promptonce.engine.quality import SIDES, side_contrast

    def whole_image(gray, mask, band):  # the definition, on every pixel
        h, w = mask.shape
        lo, hi = np.percentile(gray, [5, 95])
        span = max(float(hi - lo), 1e-6)
        yy, xx = np.mgrid[0:h, 0:w]
        out = {}
        for name, (dy, dx) in SIDES.items():
            beyond = np.zeros_like(mask)
            for s in range(1, band + 1):
                ys, xs = yy - s * dy, xx - s * dx  # a pixel is beyond when a mask pixel lies s steps back
                ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
                beyond[ok] |= mask[ys[ok], xs[ok]]
            beyond &= ~mask
            ys, xs = yy + band * dy, xx + band * dx  # inner: band steps out is still inside the image's mask?
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            further = np.zeros_like(mask)
            further[ok] = mask[ys[ok], xs[ok]]
            inner = mask & ~further
            if beyond.sum() < 10 or inner.sum() < 10:
                out[name] = None
            else:
                out[name] = float(abs(np.median(gray[beyond]) - np.median(gray[inner])) / span)
        return out

    rng = np.random.default_rng(3)
    gray = (rng.random((60, 80)) * 255).astype(np.uint8)  # the engine's slices are uint8
    cases = [np.zeros((60, 80), bool)]
    for y0, y1, x0, x1 in ((10, 30, 12, 40), (0, 25, 50, 80), (40, 60, 0, 20), (0, 60, 0, 80), (28, 31, 30, 70)):
        m = np.zeros((60, 80), bool)
        m[y0:y1, x0:x1] = True
        cases.append(m)
    cases.append(rng.random((60, 80)) > 0.7)  # scattered pixels
    for turn in range(2):
        if turn:  # the same array changed in place: its intensity range is measured again
            gray[:30] = np.sqrt(gray[:30].astype(float) * 255).astype(np.uint8)
        image = gray
        for m in cases:
            for band in (1, 3, 7):
                got, want = side_contrast(image, m, band), whole_image(image.astype(np.float32), m, band)
                assert list(got) == list(want)
                for k in want:
                    assert (got[k] is None) == (want[k] is None), (k, band)
                    if want[k] is not None:
                        assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_the_image_not_the_prior_chooses_among_candidates():
    """A prior warped from one seed carries the seed's shape: a candidate that agrees with it better
    but whose boundary runs through flat background loses to one on the object's edges; a candidate
    the prior flags (a leak) is passed over even when its boundary is sharper."""
    from promptonce.engine.prior_mask import choose_candidate

    vol, obj = case(3)
    gray = vol.array[0]
    prior = ndimage.binary_dilation(obj, iterations=6).astype(np.float32)  # the seed's lung was larger
    bigger = ndimage.binary_dilation(obj, iterations=5)  # agrees better with that prior, off the edges
    leak = obj.copy()
    leak[obj.any(axis=1).nonzero()[0].max():, :] = True  # sharp edges, but spills far below the prior
    cands = [(bigger, 0.9, check_against_prior(bigger, prior, 0.9, "o")),
             (obj, 0.9, check_against_prior(obj, prior, 0.9, "o")),
             (leak, 0.95, check_against_prior(leak, prior, 0.95, "o"))]
    assert cands[0][2].confidence > cands[1][2].confidence  # the old rule (agreement) took `bigger`
    assert cands[2][2].flags and not cands[1][2].flags
    assert choose_candidate(gray, cands)[0] is obj
    # when the prior flags every candidate, the image still decides among them
    flagged = [(m, s, replace(c, flags=["x"])) for m, s, c in cands]
    assert choose_candidate(gray, flagged)[0] is not bigger


def test_a_small_leak_costs_confidence_and_the_candidate_without_a_flag():
    """Between ``LEAK_FRACTION`` and ``LEAK_FLAG_FRACTION`` of the mask outside the prior a leak is not
    flagged, but it still lowers the confidence and the candidate loses to one that stays inside."""
    from promptonce.engine import quality
    from promptonce.engine.prior_mask import choose_candidate

    core = np.zeros((100, 100), bool)
    core[20:60, 30:70] = True  # 1600 pixels; the halo grows it by 2
    prior = core.astype(np.float32)

    def spilled(rows: int) -> np.ndarray:
        m = core.copy()
        m[70 : 70 + rows, 33:67] = True  # 34 pixels a row, well outside the halo
        return m

    small, large = spilled(10), spilled(20)  # 340 / 1940 = 17.5% and 680 / 2280 = 29.8% outside
    s_check = check_against_prior(small, prior, 0.95, "o")
    l_check = check_against_prior(large, prior, 0.95, "o")
    inside = check_against_prior(core, prior, 0.95, "o")
    assert quality.LEAK_FRACTION < s_check.leak <= quality.LEAK_FLAG_FRACTION < l_check.leak
    assert not s_check.flags and not inside.flags
    assert any("leaked beyond the prior (30% of the mask outside it)" in f for f in l_check.flags)
    agreement_only = 0.75 * s_check.agreement + 0.25 * 0.95
    assert s_check.confidence == pytest.approx(agreement_only - 0.5 * (s_check.leak - quality.LEAK_FRACTION))
    gray = np.where(large, 1.0, 0.0).astype(np.float32)  # the spill has sharper edges than the object
    cands = [(small, 0.99, s_check), (core, 0.90, inside)]
    assert choose_candidate(gray, cands)[0] is core


def test_the_first_pass_reaches_as_far_as_the_users_box_did():
    """Where the model's seed mask stops short of the user's box (a lung base behind the heart), the
    user's box, not the mask, says how far the object goes: every case's boxes reach that far too."""
    from promptonce.engine import PropagationConfig

    pairs = [case(i) for i in range(3)]
    vols = [v for v, _ in pairs]
    seed_obj = pairs[0][1]
    ys = np.nonzero(seed_obj.any(axis=1))[0]
    short = seed_obj.copy()
    short[ys.min() + int(0.6 * (ys.max() - ys.min())):] = False  # the model's seed mask: the top 60%
    prompt = SlicePrompt((ObjectPrompt(box=box_of(seed_obj)),), slice_index=0, volume_index=0)
    eng = Engine(FakeBackend(), prefetch=False, config=PropagationConfig(soft_side_contrast=0.0))
    t = DatasetTransfer(eng, vols[0], prompt, seed_labels=short.astype(np.uint8))
    left, top, right, bottom = t.seed.reach[1]
    assert bottom > 0.3 and max(left, top, right) < 0.05
    with_reach = t.first_pass(vols[1], 1).results[0].labels == 1
    t.seed = replace(t.seed, reach={})  # the mask alone
    without = t.first_pass(vols[1], 1).results[0].labels == 1
    assert dice(with_reach, pairs[1][1]) > 0.95 > dice(without, pairs[1][1]) + 0.1


def test_an_outline_through_even_tissue_lowers_confidence_and_says_why():
    """A mask that agrees with its prior but whose outline follows no image edge (the prior was wrong
    in the same way, e.g. the seed's own anatomy) is not trusted; the same mask on the object is."""
    from promptonce.engine.quality import EVIDENCE_FULL, REVIEW_BELOW, boundary_evidence, with_stability

    yy, xx = np.mgrid[0:120, 0:120]
    gray = np.random.default_rng(0).normal(40.0, 2.0, (120, 120)).astype(np.float32)
    on = (yy - 40) ** 2 + (xx - 40) ** 2 <= 18 ** 2
    gray[on] = 200.0
    off = (yy - 85) ** 2 + (xx - 85) ** 2 <= 18 ** 2  # same disc, in even background
    checks = {}
    for name, m in (("on", on), ("off", off)):
        base = check_against_prior(m, m.astype(np.float32), 0.95, name)
        assert base.confidence > 0.95  # prior and score cannot tell the two apart
        checks[name] = with_stability(base, [0.97], name, evidence=boundary_evidence(gray, m))
    assert checks["on"].evidence > EVIDENCE_FULL and checks["on"].confidence > REVIEW_BELOW
    assert not checks["on"].flags
    assert checks["off"].evidence < 0.05 and checks["off"].confidence < 0.5
    assert any("weak edges" in f and "review" in f for f in checks["off"].flags)
    # without an image the confidence is the stability-scaled one, as before
    plain = with_stability(check_against_prior(off, off.astype(np.float32), 0.95, "off"), [0.97], "off")
    assert plain.evidence is None and plain.confidence > REVIEW_BELOW
    # a speck a few pixels across cannot be measured: unmeasured is not weak
    from promptonce.engine.quality import outline_evidence

    speck = np.zeros_like(on)
    speck[84:87, 84:87] = True
    assert boundary_evidence(gray, speck) == 0.0 and outline_evidence(gray, speck) is None
    assert outline_evidence(gray, np.zeros_like(on)) is None
    assert outline_evidence(gray, on) == boundary_evidence(gray, on)


def test_instability_alone_lowers_confidence_without_a_flag(monkeypatch):
    """A mask that changes with a few pixels of box margin is ranked early for review and gets the
    exemplar pass, but is not flagged unless something else is wrong too (its edges, or its prior)."""
    from promptonce.engine import quality
    from promptonce.engine.quality import REVIEW_BELOW, with_stability

    yy, xx = np.mgrid[0:120, 0:120]
    gray = np.random.default_rng(0).normal(40.0, 2.0, (120, 120)).astype(np.float32)
    on = (yy - 40) ** 2 + (xx - 40) ** 2 <= 18 ** 2
    gray[on] = 200.0
    good = check_against_prior(on, on.astype(np.float32), 0.95, "lung")
    shaky = with_stability(good, [0.6], "lung", evidence=quality.boundary_evidence(gray, on))
    assert shaky.confidence < REVIEW_BELOW and shaky.stability == 0.6
    assert shaky.flags == []
    weak = with_stability(good, [0.6], "lung", evidence=0.02)  # unstable and weak edges: flagged, both said
    assert len(weak.flags) == 1 and "unstable" in weak.flags[0] and "weak edges" in weak.flags[0]
    far = np.zeros_like(on)
    far[80:110, 80:110] = True  # unstable and off its prior: the prior's own flag stays
    off_prior = with_stability(check_against_prior(on, far.astype(np.float32), 0.95, "lung"), [0.6], "lung",
                               evidence=quality.boundary_evidence(gray, on))
    assert any("prior" in f for f in off_prior.flags)
    monkeypatch.setattr(quality, "FLAG_INSTABILITY_ALONE", True)
    assert "unstable" in with_stability(good, [0.6], "lung", evidence=quality.boundary_evidence(gray, on)).flags[0]


def test_a_lowered_weak_edge_threshold_changes_the_flag_and_the_confidence_never_the_check():
    from promptonce.engine.quality import EVIDENCE_FULL, REVIEW_BELOW, with_stability

    on = np.zeros((60, 60), bool)
    on[10:50, 10:50] = True
    good = check_against_prior(on, on.astype(np.float32), 0.95, "lung")
    weak = 0.7 * EVIDENCE_FULL  # weak at the tuning threshold; not for a set whose outlines are all weaker
    now = with_stability(good, [0.97], "lung", evidence=weak)
    eased = with_stability(good, [0.97], "lung", evidence=weak, evidence_scale=0.65)
    assert now.confidence < REVIEW_BELOW and any("weak edges" in f for f in now.flags)
    assert eased.confidence > now.confidence and not eased.flags
    weaker = with_stability(good, [0.97], "lung", evidence=0.4 * EVIDENCE_FULL, evidence_scale=0.65)
    assert "(contrast 0.05 against this set's 0.08)" in weaker.flags[0]  # the set's threshold is said
    assert "against" not in now.flags[0]
    assert (eased.agreement, eased.evidence, eased.stability) == (now.agreement, now.evidence, now.stability)
    # a scale outside 0..1 is held to it: the threshold is never raised
    assert with_stability(good, [0.97], "lung", evidence=weak, evidence_scale=1.5).flags == now.flags


def test_an_image_second_pass_judges_weak_edges_against_the_exemplars_outlines(monkeypatch, caplog):
    """The exemplars carry their outline evidence; an image's second pass scales the weak-edge
    threshold by the set's (:func:`.set_check.evidence_scales`). The mask is the same either way."""
    import promptonce.engine.prior_mask as pm
    from promptonce.engine import set_check

    pairs = [case(i) for i in range(5)]
    vols = [v for v, _ in pairs]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=0, volume_index=0)
    t = DatasetTransfer(Engine(FakeBackend(), prefetch=False), vols[0], prompt)
    outs = [t.first_pass(v, i) for i, v in enumerate(vols) if i]
    ex = DatasetTransfer.select_exemplars([o.exemplar for o in outs])
    assert ex and all(e.evidence.get(1, 0) > 0.3 for e in ex)  # the phantom's strong edges, measured
    seen, real = [], pm.with_stability
    monkeypatch.setattr(pm, "with_stability", lambda *a, evidence_scale=1.0, **k: seen.append(evidence_scale)
                        or real(*a, evidence_scale=evidence_scale, **k))
    many = [replace(e, name=f"{e.name}_{j}", key=f"{e.key}_{j}")
            for e in ex for j in range(set_check.EVIDENCE_MIN_CASES)]
    sharp = t.second_pass(vols[1], 1, many, outs[0])
    faint = [replace(e, evidence={1: 0.7 * set_check.EVIDENCE_REFERENCE}) for e in many]
    with caplog.at_level("INFO", logger="promptonce.engine.transfer"):
        soft = t.second_pass(vols[1], 1, faint, outs[0])
        t.second_pass(vols[2], 2, faint, outs[1])
    assert seen == [1.0, pytest.approx(0.7), pytest.approx(0.7)]
    said = [r.getMessage() for r in caplog.records if "weak-edge threshold" in r.getMessage()]
    assert len(said) == 1 and "0.7" in said[0]  # once per exemplar set
    assert np.array_equal(sharp.results[0].labels, soft.results[0].labels)
    # fewer exemplars than a median needs: the threshold stays
    seen.clear()
    t.second_pass(vols[1], 1, faint[: set_check.EVIDENCE_MIN_CASES - 1], outs[0])
    assert seen == [1.0]


def test_a_transferred_case_carries_the_evidence_of_its_outline(monkeypatch):
    import promptonce.engine.prior_mask as pm

    vols_refs = [case(i) for i in range(3)]
    seed_mask = vols_refs[0][1]
    prompt = SlicePrompt((ObjectPrompt(box=box_of(seed_mask), object_id=1),), slice_index=0, volume_index=0)
    transfer = DatasetTransfer(Engine(FakeBackend(), prefetch=False), vols_refs[0][0], prompt,
                               seed_labels=seed_mask.astype(np.uint8))
    seen, real = [], pm.with_stability
    monkeypatch.setattr(pm, "with_stability",
                        lambda check, agreements, name, evidence=None, **kw: seen.append(evidence)
                        or real(check, agreements, name, evidence=evidence, **kw))
    out = transfer.first_pass(vols_refs[1][0], 1)
    # the phantom's ellipse stands 170 grey levels above its background: strong evidence, full confidence
    assert seen and all(e is not None and e > 0.3 for e in seen)
    assert out.confidence is not None and out.confidence > 0.8


def test_a_single_image_keeps_its_multi_atlas_second_pass_a_volume_the_more_confident(monkeypatch):
    """On one image the first pass is scored against the seed's mask it was drawn from, so the fused
    prior's result is kept even when it scores lower; on a volume the more confident pass is kept."""
    from promptonce.engine import transfer as transfer_module

    pairs = [case(i) for i in range(5)]
    image_vols = [v for v, _ in pairs]
    volume_vols = [Volume(np.repeat(v.array, 3, axis=0), name=v.name + "_3d") for v in image_vols]
    for vols in (image_vols, volume_vols):
        prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=vols[0].n_slices // 2,
                             volume_index=0)
        t = DatasetTransfer(Engine(FakeBackend(), prefetch=False), vols[0], prompt)
        outs = [t.first_pass(v, i) for i, v in enumerate(vols) if i]
        ex = DatasetTransfer.select_exemplars([o.exemplar for o in outs])
        assert ex
        first = outs[0]
        real = DatasetTransfer.segment_case
        calls = []

        def lower(self, volume, volume_index, sources, cancel, passes, evidence_scale=None, real=real, calls=calls):
            out = real(self, volume, volume_index, sources, cancel, passes, evidence_scale)
            calls.append([s.name for s in sources])
            return replace(out, confidence=first.confidence - 0.1)

        monkeypatch.setattr(DatasetTransfer, "segment_case", lower)
        again = t.second_pass(vols[1], 1, ex, first)
        monkeypatch.undo()
        assert calls and calls[0][0] == vols[0].name  # the seed is among the fused atlases
        if vols is image_vols:
            assert again is not first and again.passes == 2
        else:
            assert again is first
        # the threshold below which a case is redone: higher for a single image
        weak = replace(first, confidence=(transfer_module.SECOND_PASS_BELOW + transfer_module.SECOND_PASS_BELOW_IMAGE) / 2)
        assert t.needs_second_pass(weak) is (vols is image_vols)


def test_an_images_exemplar_pass_tries_its_own_smaller_candidate_set(monkeypatch):
    """Given ``exemplar_prior_margins`` / ``exemplar_side_search_offsets``, a single image's exemplar
    pass tries them; its first pass and a volume's two passes the first pass's; ``None`` (the
    default) keeps the first pass's everywhere."""
    import promptonce.engine.prior_mask as pm
    from promptonce.engine import PropagationConfig

    same = PropagationConfig()
    assert same.for_exemplar_pass() is same
    base = PropagationConfig(exemplar_prior_margins=(0.0, 0.05), exemplar_side_search_offsets=(-0.05, 0.15))
    assert base.for_exemplar_pass().prior_margins == base.exemplar_prior_margins
    assert base.for_exemplar_pass().side_search_offsets == base.exemplar_side_search_offsets
    assert base.for_exemplar_pass().pair_base_gap == base.pair_base_gap
    for bad in ({"prior_margins": ()}, {"exemplar_prior_margins": ()}):
        with pytest.raises(InputError, match="empty"):
            PropagationConfig(**bad)

    seen = []
    real_candidates, real_search = pm.prior_candidates, pm.search_sides

    def candidates(*a, **k):
        seen.append(("margins", tuple(a[7].prior_margins)))
        return real_candidates(*a, **k)

    def search(*a, **k):
        seen.append(("offsets", tuple(a[8].side_search_offsets)))
        return real_search(*a, **k)

    monkeypatch.setattr(pm, "prior_candidates", candidates)
    monkeypatch.setattr(pm, "search_sides", search)
    pairs = [case(i) for i in range(5)]
    image_vols = [v for v, _ in pairs]
    volume_vols = [Volume(np.repeat(v.array, 3, axis=0), name=v.name + "_3d") for v in image_vols]
    for config in (base, same):
        for vols in (image_vols, volume_vols):
            prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=vols[0].n_slices // 2,
                                 volume_index=0)
            t = DatasetTransfer(Engine(FakeBackend(), prefetch=False, config=config), vols[0], prompt)
            seen.clear()
            outs = [t.first_pass(v, i) for i, v in enumerate(vols) if i]
            first = set(seen)
            ex = DatasetTransfer.select_exemplars([o.exemplar for o in outs])
            assert ex
            seen.clear()
            again = t.second_pass(vols[1], 1, ex, outs[0])
            second = set(seen)
            assert again.passes == 2 or vols is volume_vols
            assert ("margins", base.prior_margins) in first and ("margins", base.exemplar_prior_margins) not in first
            if vols is image_vols:
                assert ("offsets", base.side_search_offsets) in first
                own = config is base
                assert second == ({("margins", base.exemplar_prior_margins),
                                   ("offsets", base.exemplar_side_search_offsets)} if own else first)
            else:  # volumes: no side search, and the first pass's margins on both passes
                assert first == second == {("margins", base.prior_margins)}


def test_a_weak_fused_image_result_is_weighed_against_its_nearest_exemplars_alone(monkeypatch):
    """With ``atlas_choice_below`` set, an image whose fused exemplar pass stays below it is also segmented
    from each of its ``atlas_choice_singles`` most similar exemplars alone, and the most confident result
    is kept (the fused one on ties); a confident fused result, a volume, or the default (off) runs nothing more."""
    from promptonce.engine import PropagationConfig
    from promptonce.engine.transfer import rank_by_similarity

    pairs = [case(i) for i in range(6)]
    image_vols = [v for v, _ in pairs]
    volume_vols = [Volume(np.repeat(v.array, 3, axis=0), name=v.name + "_3d") for v in image_vols]
    real = DatasetTransfer.segment_case
    for config, vols, fused_conf, expect in (
        (PropagationConfig(atlas_choice_below=0.9, atlas_choice_singles=2), image_vols, 0.5, "nearest"),
        (PropagationConfig(atlas_choice_below=0.9, atlas_choice_singles=2), image_vols, 0.95, "fused"),
        (PropagationConfig(atlas_choice_below=0.9, atlas_choice_singles=2), volume_vols, 0.5, "fused"),
        (PropagationConfig(), image_vols, 0.5, "fused"),
    ):
        prompt = SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), slice_index=vols[0].n_slices // 2,
                             volume_index=0)
        eng = Engine(FakeBackend(), prefetch=False, config=config)
        t = DatasetTransfer(eng, vols[0], prompt)
        outs = [t.first_pass(v, i) for i, v in enumerate(vols) if i]
        ex = DatasetTransfer.select_exemplars([o.exemplar for o in outs])
        assert len(ex) >= 3
        gray = eng.frames(vols[1], None).gray(vols[1].n_slices // 2)
        ranked = [e.name for e in rank_by_similarity(gray, [e for e in ex if e.name != vols[1].name])]
        calls = []

        def scored(self, volume, volume_index, sources, cancel, passes, evidence_scale=None, calls=calls):
            out = real(self, volume, volume_index, sources, cancel, passes, evidence_scale)
            calls.append([s.name for s in sources])
            if len(sources) > 1:
                return replace(out, confidence=fused_conf)
            # single atlases: the second most similar scores best, the farther ones would score higher still
            return replace(out, confidence={ranked[0]: 0.6, ranked[1]: 0.7}.get(sources[0].name, 0.99))

        monkeypatch.setattr(DatasetTransfer, "segment_case", scored)
        kept = t.second_pass(vols[1], 1, ex, replace(outs[0], confidence=0.1))
        monkeypatch.undo()
        if expect == "nearest":
            assert calls[1:] == [[ranked[0]], [ranked[1]]]  # only the two most similar, in that order
            assert kept.sources == (ranked[1],) and kept.confidence == 0.7
        else:
            assert len(calls) == 1 and len(kept.sources) > 1
    # ties keep the fused result
    monkeypatch.setattr(DatasetTransfer, "segment_case", lambda self, *a, **k: replace(
        real(self, *a, **k), confidence=0.5))
    t = DatasetTransfer(Engine(FakeBackend(), prefetch=False, config=PropagationConfig(atlas_choice_below=0.9)),
                        image_vols[0], SlicePrompt((ObjectPrompt(box=box_of(pairs[0][1])),), 0, 0))
    kept = t.second_pass(image_vols[1], 1, ex, replace(outs[0], confidence=0.1))
    assert len(kept.sources) > 1
