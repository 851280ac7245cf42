"""Tests of promptonce.prompts: boxes, interior points, simulated users, mapping, jitter, seed slices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from promptonce.errors import InputError, PromptError
from promptonce.prompts import (
    box_from_mask,
    check_prompt,
    components,
    interior_point,
    jitter,
    map_box,
    map_point,
    map_prompt,
    map_slice_prompt,
    mask_stats,
    nmt_prompt,
    prompt_from_mask,
    prompt_from_reference,
    prompt_label,
    seed_slice,
)
from promptonce.types import Box, ObjectPrompt, Point, SlicePrompt

nonempty_masks = arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))).filter(lambda m: m.any())


def _ring(shape=(41, 41), c=(20, 20), r_out=15, r_in=9):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
    return (d2 <= r_out**2) & (d2 > r_in**2)


def _c_shape():
    m = np.zeros((30, 30), bool)
    m[3:27, 3:9] = True  # left bar
    m[3:9, 3:27] = True  # top bar
    m[21:27, 3:27] = True  # bottom bar
    return m


def test_box_from_mask_by_hand():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:8] = True  # rows 2..4, cols 3..7
    assert box_from_mask(m) == Box(3, 2, 7, 4)
    assert box_from_mask(m, margin=3) == Box(0, 0, 10, 7)  # clipped at 0 on the left/top
    assert box_from_mask(m, margin=3, shape=(6, 9)) == Box(0, 0, 8, 5)
    assert box_from_mask(np.zeros((4, 4), bool)) is None
    with pytest.raises(InputError):
        box_from_mask(m, margin=-1)


@settings(max_examples=80, deadline=None)
@given(nonempty_masks, st.integers(0, 5))
def test_box_contains_mask_and_interior_point_inside(mask, margin):
    box = box_from_mask(mask, margin=margin)
    ys, xs = np.nonzero(mask)
    assert box.x0 <= xs.min() and xs.max() <= box.x1
    assert box.y0 <= ys.min() and ys.max() <= box.y1
    assert 0 <= box.x0 and box.x1 <= mask.shape[1] - 1 and box.y1 <= mask.shape[0] - 1
    p = interior_point(mask)
    assert mask[int(p.y), int(p.x)] and p.label == 1
    assert interior_point(mask) == p  # deterministic


def test_interior_point_c_shape_and_ring():
    c = _c_shape()
    area, centroid, _ = mask_stats(c)
    assert not c[int(round(centroid[1])), int(round(centroid[0]))]  # the centroid is outside the C
    p = interior_point(c)
    assert c[int(p.y), int(p.x)]
    ring = _ring()
    p = interior_point(ring)
    assert ring[int(p.y), int(p.x)]
    assert interior_point(np.zeros((5, 5), bool)) is None


def test_interior_point_square_is_centre():
    m = np.zeros((11, 11), bool)
    m[2:9, 3:10] = True  # 7x7 square, centre (row 5, col 6)
    assert interior_point(m) == Point(6, 5)


def test_components_sorted_and_specks_dropped():
    m = np.zeros((40, 40), bool)
    m[2:22, 2:12] = True  # 200 px
    m[2:17, 20:30] = True  # 150 px
    m[30, 30] = True  # 1-px speck
    m[35:37, 35:37] = True  # 4 px (< 5 px)
    m[24, 24] = m[25, 25] = True  # diagonal pair: one 8-connected component of 2 px
    parts = components(m)
    assert [int(p.sum()) for p in parts] == [200, 150]
    everything = components(m, min_size=1, min_fraction=0)
    assert [int(p.sum()) for p in everything] == [200, 150, 4, 2, 1]
    assert components(np.zeros((3, 3), bool)) == []
    tiny = np.zeros((9, 9), bool)
    tiny[4, 4] = tiny[1, 1] = True  # a 1-px object alone on its slice is still prompted
    assert [int(p.sum()) for p in components(tiny)] == [1]
    assert nmt_prompt(tiny.astype(np.uint8)).points == (Point(1, 1),)


def test_prompt_from_reference_two_lungs():
    ref = np.zeros((50, 60), np.uint8)
    ref[10:40, 5:25] = 255  # "left lung" 600 px
    ref[12:38, 35:55] = 255  # "right lung" 520 px
    ref[45, 2] = 255  # speck
    objs = prompt_from_reference(ref)
    assert [o.object_id for o in objs] == [1, 2]
    assert objs[0].box == Box(5, 10, 24, 39) and objs[1].box == Box(35, 12, 54, 37)
    for o in objs:
        (p,) = o.points
        assert ref[int(p.y), int(p.x)] and p.label == 1
    assert len(prompt_from_reference(ref, max_components=1)) == 1
    merged = prompt_from_reference(ref, per_component=False)
    assert len(merged) == 1 and merged[0].box == Box(2, 10, 54, 45)
    box_only = prompt_from_reference(ref, with_point=False)
    assert box_only[0].points == () and box_only[0].box is not None
    assert prompt_from_reference(np.zeros((5, 5))) == ()  # vanished object


def test_prompt_from_reference_per_label():
    ref = np.zeros((30, 30), np.uint8)
    ref[2:10, 2:10] = 1
    ref[15:25, 15:25] = 2
    ref[2:6, 20:24] = 2  # second part of label 2 (16 px, 16% of 100)
    objs = prompt_from_reference(ref, merge=False)
    assert [prompt_label(o) for o in objs] == [1, 2, 2]
    assert [o.object_id for o in objs] == [1, 2, 3]
    only2 = prompt_from_reference(ref, labels=[2], merge=False, per_component=False)
    assert len(only2) == 1 and prompt_label(only2[0]) == 2 and only2[0].box == Box(15, 2, 24, 24)
    assert prompt_from_reference(ref, labels=[7]) == ()


def test_prompt_from_mask_margin():
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    p = prompt_from_mask(m, object_id=3, margin=2)
    assert p.object_id == 3 and p.box == Box(3, 3, 11, 11) and p.points == (Point(7, 7),)
    assert prompt_from_mask(np.zeros_like(m)) is None


def test_nmt_prompt_two_components():
    ref = np.zeros((40, 60), np.uint8)
    ref[10:30, 5:20] = 1  # centroid (x 12, y 19.5)
    ref[10:30, 40:55] = 2  # centroid (x 47, y 19.5)
    p = nmt_prompt(ref)
    pos = [q for q in p.points if q.label == 1]
    neg = [q for q in p.points if q.label == 0]
    assert len(pos) == 2 and len(neg) == 1
    for q in pos:
        assert ref[int(q.y), int(q.x)]
    assert p.box == Box(5, 10, 54, 29)
    assert (neg[0].x, neg[0].y) == (30.0, 20.0)  # round((5+54)/2)=30 (banker's 29.5->30), round(19.5)=20
    assert not ref[20, 30]


def test_nmt_prompt_ring_centroid_moved_inside():
    # Ring centred at (20, 20), inner radius 9: the centroid (20, 20) lies in the hole, so the
    # positive click moves to the nearest ring pixel (distance sqrt(82) ~= 9.06, e.g. (21, 29)).
    # The union box centre is also (20, 20), background, so the negative click is kept there.
    ring = _ring()
    p = nmt_prompt(ring.astype(np.uint8))
    positives = [q for q in p.points if q.label == 1]
    negatives = [q for q in p.points if q.label == 0]
    assert len(positives) == 1 and len(negatives) == 1
    q = positives[0]
    assert ring[int(q.y), int(q.x)]
    assert np.hypot(q.x - 20, q.y - 20) == pytest.approx(np.sqrt(82))
    assert (negatives[0].x, negatives[0].y) == (20.0, 20.0)


def test_nmt_prompt_convex_skips_negative():
    m = np.zeros((20, 20), np.uint8)
    m[4:16, 4:16] = 1
    p = nmt_prompt(m)
    assert all(q.label == 1 for q in p.points) and len(p.points) == 1
    assert nmt_prompt(np.zeros((5, 5))) is None


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 200),
    st.integers(2, 200),
    st.floats(0, 50),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["uniform", "normal"]),
)
def test_jitter_stays_inside_image(h, w, pixels, seed, kind):
    rng = np.random.default_rng(seed)
    prompt = ObjectPrompt(
        points=(Point(0, 0), Point(w - 1, h - 1, 0)), box=Box(0, 0, w - 1, h - 1), object_id=4, name="n"
    )
    out = jitter(prompt, rng, pixels, (h, w), kind=kind)
    assert out.object_id == 4 and out.name == "n" and [p.label for p in out.points] == [1, 0]
    for p in out.points:
        assert 0 <= p.x <= w - 1 and 0 <= p.y <= h - 1
    b = out.box
    assert 0 <= b.x0 <= b.x1 <= w - 1 and 0 <= b.y0 <= b.y1 <= h - 1
    check_prompt(out, (h, w))


def test_jitter_moves_and_is_reproducible():
    prompt = ObjectPrompt(points=(Point(50, 50),), box=Box(20, 20, 80, 80))
    a = jitter(prompt, np.random.default_rng(1), 5, (100, 100))
    b = jitter(prompt, np.random.default_rng(1), 5, (100, 100))
    assert a == b and a != prompt
    assert abs(a.points[0].x - 50) <= 5 and abs(a.box.x1 - 80) <= 5
    assert jitter(prompt, np.random.default_rng(1), 0, (100, 100)) == prompt


def test_map_prompt_by_hand():
    # 100x200 -> 50x100 (half size). Pixel centres: x' = (x + .5) * .5 - .5.
    assert map_point(Point(9, 19), (100, 200), (50, 100)) == Point(4.25, 9.25)
    # Box covering cols 10..29 (20 px) -> cols 5..14 (10 px).
    assert map_box(Box(10, 20, 29, 39), (100, 200), (50, 100)) == Box(5, 10, 14, 19)
    # A 1-pixel box stays at least one pixel.
    b = map_box(Box(5, 5, 5, 5), (100, 100), (50, 50))
    assert b.x1 >= b.x0 and b.y1 >= b.y0


@settings(max_examples=80, deadline=None)
@given(
    st.integers(8, 600),
    st.integers(8, 600),
    st.integers(8, 600),
    st.integers(8, 600),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_map_prompt_round_trip(sh, sw, dh, dw, fx0, fy0, fx1, fy1):
    x0, x1 = sorted((fx0 * (sw - 1), fx1 * (sw - 1)))
    y0, y1 = sorted((fy0 * (sh - 1), fy1 * (sh - 1)))
    prompt = ObjectPrompt(points=(Point(x0, y1), Point(x1, y0, 0)), box=Box(x0, y0, x1, y1), object_id=2)
    there = map_prompt(prompt, (sh, sw), (dh, dw))
    check_prompt(there, (dh, dw))
    back = map_prompt(there, (dh, dw), (sh, sw))
    # Clipping to the target image costs at most half a target pixel (points) or one (box corners).
    tol_x, tol_y = 1e-6 + sw / dw, 1e-6 + sh / dh
    for p, q in zip(prompt.points, back.points):
        assert abs(p.x - q.x) <= tol_x / 2 and abs(p.y - q.y) <= tol_y / 2
        assert p.label == q.label
        u = (p.x + 0.5) * dw / sw - 0.5  # not clipped in the target -> exact round trip
        if 0 <= u <= dw - 1:
            assert q.x == pytest.approx(p.x, abs=1e-6)
    assert abs(back.box.x0 - x0) <= tol_x and abs(back.box.x1 - x1) <= tol_x
    assert abs(back.box.y0 - y0) <= tol_y and abs(back.box.y1 - y1) <= tol_y
    assert back.object_id == 2


def test_map_slice_prompt_and_check():
    sp = SlicePrompt((ObjectPrompt(box=Box(0, 0, 9, 9)),), slice_index=3)
    out = map_slice_prompt(sp, (10, 10), (20, 20), slice_index=0, volume_index=2)
    assert out.slice_index == 0 and out.volume_index == 2 and out.objects[0].box == Box(0, 0, 19, 19)
    with pytest.raises(PromptError, match="outside the image"):
        check_prompt(sp, (5, 5))


def test_seed_slice():
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[2, :2, :2] = 1  # 4 px
    ref[3, :4, :4] = 1  # 16 px (largest)
    ref[6, :3, :3] = 2  # 9 px
    # extent 2..6 -> centre 4 has no foreground; nearest slices with foreground: 3 (distance 1)
    assert seed_slice(ref, "largest") == 3
    assert seed_slice(ref, "first") == 2
    assert seed_slice(ref, "centre") == 3
    assert seed_slice(ref, "center", labels=[2]) == 6
    ref[4, 0, 0] = 1
    assert seed_slice(ref, "centre") == 4
    with pytest.raises(PromptError, match="no foreground"):
        seed_slice(ref, labels=[9])
    with pytest.raises(InputError, match="Unknown seed"):
        seed_slice(ref, "middle")  # type: ignore[arg-type]
