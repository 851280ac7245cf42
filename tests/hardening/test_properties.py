"""Property-based tests (hypothesis) that tests/test_metrics.py, tests/test_prompts.py and tests/test_engine.py
do not cover yet: the engine under random prompts, per-slice and pooled metrics against their
definitions, HD95 invariants, and prompts derived from random label maps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from promptonce.backends.fake import FakeBackend
from promptonce.engine import segment
from promptonce.errors import PromptError, PromptOnceError
from promptonce.metrics import MetricAccumulator, case_metrics, dice, hd95, jaccard, per_slice
from promptonce.prompts import check_prompt, components, interior_point, nmt_prompt, prompt_from_reference, seed_slice
from promptonce.types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, Volume

pytestmark = pytest.mark.timeout(300)
FAKE = FakeBackend()
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------ engine
@st.composite
def volumes(draw, max_side: int = 40, max_slices: int = 5):
    n = draw(st.integers(1, max_slices))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["noise", "blob", "constant"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        arr = rng.integers(-1000, 1500, size=(n, h, w)).astype(np.int16)
    elif kind == "constant":
        arr = np.full((n, h, w), draw(st.sampled_from([0, -1000, 255, 3000])), np.int16)
    else:
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        arr = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) / 3) ** 2, 200, 20).astype(np.uint8)
        arr = np.repeat(arr[None], n, axis=0)
    return Volume(arr, name="v")


@st.composite
def box_in(draw, h: int, w: int):
    x0 = draw(st.floats(0, w - 1))
    x1 = draw(st.floats(x0, w - 1))
    y0 = draw(st.floats(0, h - 1))
    y1 = draw(st.floats(y0, h - 1))
    return Box(x0, y0, x1, y1)


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_any_box_or_click_inside_the_image_never_crashes_the_engine(data):
    vol = data.draw(volumes())
    n, h, w = vol.shape
    k = data.draw(st.integers(0, n - 1))
    use_box = data.draw(st.booleans())
    box = data.draw(box_in(h, w)) if use_box else None
    pts = ()
    if not use_box or data.draw(st.booleans()):
        x, y = data.draw(st.floats(0, w - 1)), data.draw(st.floats(0, h - 1))
        pts = (Point(x, y, 1),)
        if data.draw(st.booleans()):
            pts += (Point(data.draw(st.floats(0, w - 1)), data.draw(st.floats(0, h - 1)), 0),)
    scope = data.draw(st.sampled_from(["image", "volume"]))
    prompt = SlicePrompt((ObjectPrompt(points=pts, box=box, object_id=7),), slice_index=k)
    window = data.draw(st.sampled_from([None, "auto", (400.0, 40.0), "lung"]))
    results = list(segment(vol, prompt, scope=scope, backend=FAKE, click_backend=None, window=window))
    covered = sorted(r.slice_index for r in results)
    assert covered == ([k] if scope == "image" else list(range(n)))
    for r in results:
        assert r.labels.shape == (h, w) and r.labels.dtype == np.uint8
        assert set(np.unique(r.labels)) <= {0, 7}
        assert all(0.0 <= s <= 1.0 for s in r.scores.values())
    assert sum(r.prompted for r in results) == 1


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_prompts_outside_the_image_are_refused_not_crashes(data):
    vol = data.draw(volumes(max_side=24, max_slices=3))
    n, h, w = vol.shape
    far = st.one_of(st.floats(-1e6, -0.6), st.floats(max(w, h) + 0.6, 1e6))
    x = data.draw(st.one_of(far, st.floats(0, w - 1)))
    y = data.draw(far) if 0 <= x <= w - 1 else data.draw(st.floats(-1e6, 1e6))
    assume(not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5))
    prompt = SlicePrompt((ObjectPrompt(points=(Point(x, y),)),), slice_index=data.draw(st.integers(0, n - 1)))
    with pytest.raises(PromptError):
        list(segment(vol, prompt, scope="volume", backend=FAKE, click_backend=None))


@settings(max_examples=25, **SETTINGS)
@given(st.data())
def test_dataset_scope_over_random_sizes_covers_every_slice(data):
    vols = [data.draw(volumes(max_side=32, max_slices=3)) for _ in range(data.draw(st.integers(2, 3)))]
    for i, v in enumerate(vols):
        v.name = f"case{i}"
    n, h, w = vols[0].shape
    box = data.draw(box_in(h, w))
    prompt = SlicePrompt((ObjectPrompt(box=box),), slice_index=data.draw(st.integers(0, n - 1)))
    strategy = data.draw(st.sampled_from(["transfer", "chain"]))
    try:
        results = list(segment(Dataset(vols), prompt, scope="dataset", backend=FAKE, click_backend=None, strategy=strategy))
    except PromptOnceError as exc:  # allowed: a readable refusal (e.g. nothing to transfer), never another error
        assert str(exc)
        return
    seen = {(r.volume_index, r.slice_index) for r in results}
    assert seen == {(i, k) for i, v in enumerate(vols) for k in range(v.n_slices)}
    for r in results:
        assert r.labels.shape == vols[r.volume_index].shape[1:]


# ------------------------------------------------------------------------------------------ metrics
masks3d = st.tuples(st.integers(1, 5), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(arrays(bool, s), arrays(bool, s))
)


@settings(max_examples=80, **SETTINGS)
@given(masks3d)
def test_per_slice_is_dice_of_each_slice(pair):
    a, b = pair
    ps = per_slice(a, b)
    assert ps.shape == (a.shape[0],)
    for k in range(a.shape[0]):
        assert ps[k] == pytest.approx(dice(a[k], b[k]))


@settings(max_examples=60, **SETTINGS)
@given(st.lists(masks3d, min_size=1, max_size=4))
def test_accumulator_pooled_dice_is_dice_of_all_voxels(cases):
    acc = MetricAccumulator()
    for i, (a, b) in enumerate(cases):
        acc.add(f"c{i}", a, b)
    s = acc.summary()
    all_a = np.concatenate([a.ravel() for a, _ in cases])
    all_b = np.concatenate([b.ravel() for _, b in cases])
    assert s["dice_pooled"] == pytest.approx(dice(all_a, all_b))
    assert s["jaccard_pooled"] == pytest.approx(jaccard(all_a, all_b))
    assert s["dice_mean"] == pytest.approx(float(np.mean([dice(a, b) for a, b in cases])))
    assert s["tp"] + s["fn"] == int(all_b.sum()) and s["tp"] + s["fp"] == int(all_a.sum())


masks2d = st.tuples(st.integers(2, 20), st.integers(2, 20)).flatmap(lambda s: st.tuples(arrays(bool, s), arrays(bool, s)))


@settings(max_examples=50, **SETTINGS)
@given(masks2d, st.tuples(st.floats(0.1, 5), st.floats(0.1, 5)))
def test_hd95_symmetric_nonnegative_zero_on_self(pair, spacing):
    a, b = pair
    d = hd95(a, b, spacing)
    assert d == hd95(b, a, spacing)
    assert d >= 0 or np.isnan(d)
    if a.any():
        assert hd95(a, a, spacing) == 0.0
    if a.any() != b.any():
        assert d == np.inf


@settings(max_examples=40, **SETTINGS)
@given(st.integers(4, 30), st.integers(4, 30), st.integers(1, 3), st.integers(0, 3), st.floats(0.2, 3))
def test_hd95_of_a_shifted_square_is_the_shift(h, w, size, shift, sp):
    assume(size + shift + 2 < min(h, w))
    a = np.zeros((h, w), bool)
    a[1 : 1 + size, 1 : 1 + size] = True
    b = np.roll(a, shift, axis=1)
    assert hd95(a, b, (1.0, sp)) == pytest.approx(shift * sp, abs=1e-6)


@settings(max_examples=50, **SETTINGS)
@given(arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 10), st.integers(1, 10)), elements=st.integers(0, 3)))
def test_case_metrics_per_label_match_binary_dice(ref):
    rng = np.random.default_rng(int(ref.sum()))
    pred = rng.integers(0, 4, size=ref.shape).astype(np.uint8)
    m = case_metrics(pred, ref, labels=[1, 2, 3])
    assert m["dice"] == pytest.approx(dice(pred > 0, ref > 0))
    for lab in (1, 2, 3):
        assert m["labels"][lab]["dice"] == pytest.approx(dice(pred == lab, ref == lab))


# ------------------------------------------------------------------------------------------ prompts
label_maps = arrays(
    np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.sampled_from([0, 0, 0, 1, 2, 5])
)


@settings(max_examples=80, **SETTINGS)
@given(label_maps, st.booleans(), st.booleans())
def test_prompts_from_random_references_lie_on_their_labels(ref, merge, per_component):
    prompts = prompt_from_reference(ref, merge=merge, per_component=per_component)
    fg = ref > 0
    if not fg.any():
        assert not prompts
        return
    for p in prompts:
        check_prompt(p, ref.shape)
        assert 1 <= p.object_id <= 255
        for pt in p.points:
            if pt.label == 1:
                assert fg[int(pt.y), int(pt.x)], (pt, p.name)
        if p.box is not None:
            ys, xs = np.nonzero(fg)
            assert xs.min() - 0.5 <= p.box.x1 and p.box.x0 <= xs.max() + 0.5


@settings(max_examples=80, **SETTINGS)
@given(label_maps)
def test_nmt_prompt_positives_inside_negative_outside(ref):
    p = nmt_prompt(ref)
    parts = components(ref > 0)
    if not parts:
        assert p is None
        return
    assert p is not None
    check_prompt(p, ref.shape)
    positives = [q for q in p.points if q.label == 1]
    assert len(positives) == len(parts)
    for q in p.points:
        inside = bool((ref > 0)[int(q.y), int(q.x)])
        assert inside == (q.label == 1)


@settings(max_examples=60, **SETTINGS)
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 10), st.integers(1, 10)), elements=st.sampled_from([0, 0, 1])),
       st.sampled_from(["largest", "centre", "first"]))  # fmt: skip
def test_seed_slice_holds_the_object(ref, how):
    if not ref.any():
        with pytest.raises(PromptError):
            seed_slice(ref, how)
        return
    k = seed_slice(ref, how)
    assert 0 <= k < ref.shape[0] and ref[k].any()
    p = interior_point(ref[k] > 0)
    assert p is not None and ref[k][int(p.y), int(p.x)]
