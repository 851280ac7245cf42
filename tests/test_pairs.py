"""Two side-by-side objects on one image (the lungs): lower ends levelled or flagged. Fake backend."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from promptonce.backends.fake import FakeBackend
from promptonce.engine import Engine, PropagationConfig, segment
from promptonce.engine.pairs import base_gap, is_pair, level_bases
from promptonce.metrics import dice
from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt, Volume


def two_bars(left_end: int = 90, right_end: int = 90, shape=(120, 100), name: str = "bars", seed: int = 3):
    """Two bright bars from row 10 (columns 10-39 and 60-89) ending at the given rows, on textured dark."""
    rng = np.random.default_rng(seed)
    img = 30 + rng.normal(0, 2, shape)
    left = np.zeros(shape, bool)
    right = np.zeros(shape, bool)
    left[10:left_end + 1, 10:40] = True
    right[10:right_end + 1, 60:90] = True
    img = np.where(left | right, 200.0, img)
    return Volume(img[None].astype(np.float32), name=name), left, right


def box_of(m: np.ndarray) -> Box:
    ys, xs = np.nonzero(m)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def test_base_gap_measures_side_by_side_pairs_only():
    _, left, right = two_bars(60, 90)
    # bottoms 30 rows apart, heights 51 and 81 rows: 30 / (0.5 * (50 + 80) + 1)
    assert base_gap(left, right) == pytest.approx(30 / 66.0)
    assert base_gap(right, left) == base_gap(left, right)
    _, a, b = two_bars(90, 90)
    assert base_gap(a, b) == 0.0
    stacked = np.zeros_like(a)
    stacked[95:115, 10:40] = True  # below the left bar: not side by side
    assert base_gap(a, stacked) is None
    assert base_gap(a, a) is None  # the same columns
    assert base_gap(a, np.zeros_like(a)) is None


def test_only_side_by_side_objects_of_similar_height_are_a_pair():
    _, left, right = two_bars(90, 90)
    assert is_pair({1: left, 2: right})
    _, left, small = two_bars(90, 40)  # heights 81 and 31 rows: a liver beside a spleen, not two lungs
    assert not is_pair({1: left, 2: small})
    assert not is_pair({1: left})
    assert not is_pair({1: left, 2: right, 3: right})
    stacked = np.zeros_like(left)
    stacked[95:115, 10:40] = True
    assert not is_pair({1: left, 2: stacked})


def test_the_shorter_object_reaches_down_to_the_others_end():
    vol, left, right = two_bars(90, 90)
    eng = Engine(FakeBackend(), prefetch=False)
    emb = eng.embedding(eng.backend, vol, 0)
    gray = eng.frames(vol).gray(0)
    cut = left.copy()
    cut[61:] = False  # the seed's lung base, 30 rows too high
    out = level_bases(eng, emb, gray, {1: cut, 2: right}, lambda oid: None)
    assert out is not None
    oid, mask, _ = out
    assert oid == 1 and dice(mask, left) > 0.99 > dice(cut, left)
    # level bases, or the feature switched off: nothing to do
    assert level_bases(eng, emb, gray, {1: left, 2: right}, lambda oid: None) is None
    off = Engine(FakeBackend(), prefetch=False, config=PropagationConfig(pair_base_gap=0.0))
    assert level_bases(off, emb, gray, {1: cut, 2: right}, lambda oid: None) is None


def test_the_longer_object_ends_at_the_others_end_when_it_ran_past_its_edge():
    """A base carried too low (into the abdomen, on an X-ray): the longer mask is brought up to the
    other's lower end, where the image has its edge; the short one is not pulled down after it."""
    vol, left, right = two_bars(90, 90)
    eng = Engine(FakeBackend(), prefetch=False)
    emb = eng.embedding(eng.backend, vol, 0)
    gray = eng.frames(vol).gray(0)
    long = right.copy()
    long[91:116, 60:90] = True  # 25 rows past the bar's real end, over the dark background
    out = level_bases(eng, emb, gray, {1: left, 2: long}, lambda oid: None)
    assert out is not None
    oid, mask, _ = out
    assert oid == 2 and dice(mask, right) > 0.99 > dice(long, right)
    # a pair whose bases really differ: the longer one is not cut at the shorter one's end (its edge
    # there is weaker than its own), and the shorter one stays on its own edge
    vol2, l2, r2 = two_bars(60, 90)
    emb2 = eng.embedding(eng.backend, vol2, 0)
    out2 = level_bases(eng, emb2, eng.frames(vol2).gray(0), {1: l2, 2: r2}, lambda oid: None)
    assert out2 is None or dice(out2[1], {1: l2, 2: r2}[out2[0]]) > 0.99


@pytest.mark.parametrize("flag_on", [False, True])
def test_a_dataset_case_with_uneven_bases_keeps_its_real_ends_and_is_flagged_only_if_asked(monkeypatch, caplog, flag_on):
    """Seed with level bases; one case whose left object really ends 30 rows higher (mask kept on the
    object's edge; the gap logged, and a flag only with ``FLAG_UNEVEN_BASES``) and one like the seed."""
    from promptonce.engine import pairs

    assert pairs.FLAG_UNEVEN_BASES is False  # the product's default: a remaining gap is no flag
    monkeypatch.setattr(pairs, "FLAG_UNEVEN_BASES", flag_on)
    seed, sl, sr = two_bars(90, 90, name="seed", seed=1)
    uneven, ul, _ = two_bars(60, 90, name="uneven", seed=2)
    even, el, er = two_bars(90, 90, name="even", seed=4)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(sl), object_id=1, name="left"),
                          ObjectPrompt(box=box_of(sr), object_id=2, name="right")), slice_index=0, volume_index=0)
    eng = Engine(FakeBackend(), prefetch=False)
    with caplog.at_level("INFO", logger="promptonce.engine.transfer"):
        results = {r.volume_index: r for r in segment(Dataset([seed, uneven, even]), prompt, scope="dataset", engine=eng)}
    assert dice(results[1].labels == 1, ul) > 0.95  # the fake model stops at the object's real edge
    assert any("uneven: left: ends" in m and "above right" in m for m in caplog.messages), caplog.messages
    assert any("left: ends" in f and "above right" in f for f in results[1].flags) is flag_on, results[1].flags
    assert not any("ends" in f for f in results[2].flags), results[2].flags
    assert not any(m.startswith("even:") for m in caplog.messages), caplog.messages
    assert dice(results[2].labels == 1, el) > 0.95 and dice(results[2].labels == 2, er) > 0.95


def test_objects_that_are_no_pair_on_the_seed_are_left_alone():
    """A tall object beside a short one (not lungs): a case where they end far apart carries no flag."""
    seed, tall, short = two_bars(90, 40, name="seed", seed=1)
    case, _, _ = two_bars(90, 40, name="case", seed=2)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(tall), object_id=1, name="tall"),
                          ObjectPrompt(box=box_of(short), object_id=2, name="short")), slice_index=0, volume_index=0)
    eng = Engine(FakeBackend(), prefetch=False)
    results = {r.volume_index: r for r in segment(Dataset([seed, case]), prompt, scope="dataset", engine=eng)}
    assert not any("ends" in f for f in results[1].flags), results[1].flags


def test_a_seed_with_one_high_base_does_not_cut_the_cases_short():
    """The seed's left object really ends 30 rows higher; a case whose objects end level gets both whole,
    without a flag (the part below the seed's lower end is not a leak beyond the prior)."""
    seed, sl, sr = two_bars(60, 90, name="seed", seed=1)
    case, cl, cr = two_bars(90, 90, name="case", seed=2)
    prompt = SlicePrompt((ObjectPrompt(box=box_of(sl), object_id=1, name="left"),
                          ObjectPrompt(box=box_of(sr), object_id=2, name="right")), slice_index=0, volume_index=0)
    cfg = PropagationConfig(soft_side_contrast=0.0, side_search=())  # only the pair check can fix the base
    for gap, whole in ((0.0, False), (0.15, True)):
        eng = Engine(FakeBackend(), prefetch=False, config=replace(cfg, pair_base_gap=gap))
        res = [r for r in segment(Dataset([seed, case]), prompt, scope="dataset", engine=eng) if r.volume_index == 1][0]
        assert (dice(res.labels == 1, cl) > 0.98) is whole, (gap, dice(res.labels == 1, cl))
        if whole:
            assert res.flags == [], res.flags
