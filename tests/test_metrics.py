"""Tests of promptonce.metrics: hand-checkable cases, identities, empty policies, HD95, accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from promptonce.errors import InputError, ReferenceMismatchError
from promptonce.metrics import (
    MetricAccumulator,
    case_metrics,
    confusion,
    dice,
    dice_to_jaccard,
    hd95,
    jaccard,
    mean_finite,
    per_slice,
)


def _square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def test_half_overlapping_squares_by_hand():
    # Two 2x2 squares shifted by one column: A covers cols 0-1, B cols 1-2 (rows 0-1).
    # |A| = |B| = 4, |A & B| = 2 (column 1), |A | B| = 6.
    # Dice = 2*2 / (4+4) = 0.5; Jaccard = 2/6 = 1/3.
    a = _square((4, 4), 0, 0, 2)
    b = _square((4, 4), 0, 1, 2)
    assert confusion(a, b) == (2, 2, 2)
    assert dice(a, b) == pytest.approx(0.5)
    assert jaccard(a, b) == pytest.approx(1 / 3)


def test_contained_mask_by_hand():
    # A 2x2 square inside a 4x4 square: TP = 4, FP = 0, FN = 12 -> Dice 8/20 = 0.4, Jaccard 4/16.
    big = _square((6, 6), 1, 1, 4)
    small = _square((6, 6), 2, 2, 2)
    assert dice(small, big) == pytest.approx(0.4)
    assert jaccard(small, big) == pytest.approx(0.25)


def test_label_maps_count_nonzero_as_foreground():
    a = np.array([[0, 2], [3, 0]])
    b = np.array([[0, 1], [0, 0]])
    assert dice(a, b) == pytest.approx(2 * 1 / (2 + 1))


def test_shape_mismatch_raises():
    with pytest.raises(ReferenceMismatchError, match="differs"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


@pytest.mark.parametrize(("policy", "expected"), [("one", 1.0), ("zero", 0.0)])
def test_empty_policies_both_empty(policy, expected):
    z = np.zeros((5, 5), bool)
    assert dice(z, z, empty=policy) == expected
    assert jaccard(z, z, empty=policy) == expected


def test_empty_policy_nan_and_one_sided_empty():
    z = np.zeros((5, 5), bool)
    one = _square((5, 5), 1, 1, 2)
    assert math.isnan(dice(z, z, empty="nan"))
    for policy in ("one", "zero", "nan"):
        assert dice(z, one, empty=policy) == 0.0
        assert dice(one, z, empty=policy) == 0.0
    with pytest.raises(InputError, match="empty policy"):
        dice(z, z, empty="maybe")  # type: ignore[arg-type]


masks = arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_identity_symmetry_bounds(data):
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    d, j = dice(a, b), jaccard(a, b)
    assert 0.0 <= j <= d <= 1.0
    assert d == pytest.approx(dice(b, a))
    assert j == pytest.approx(jaccard(b, a))
    assert j == pytest.approx(d / (2 - d))
    assert dice_to_jaccard(d) == pytest.approx(j)
    assert dice(a, a) == 1.0


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_hd95_identical_and_empty():
    a = _disc((40, 40), 20, 20, 8)
    assert hd95(a, a, (1.0, 1.0)) == 0.0
    z = np.zeros_like(a)
    assert hd95(z, z, (1.0, 1.0)) == 0.0
    assert hd95(a, z, (1.0, 1.0)) == math.inf
    assert hd95(z, a, (1.0, 1.0)) == math.inf


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


@pytest.mark.parametrize(("axis", "shift"), [(0, 4), (1, 6)])
def test_hd95_shifted_discs_anisotropic(axis, shift):
    # A disc of radius 30 mm drawn on a grid of 2.5 mm rows x 0.7 mm cols (an ellipse of 12 x 42.9
    # pixels), shifted by `shift` pixels along one axis = shift * spacing[axis] mm.
    # A boundary point at angle t moves by about shift_mm * |cos t| away from the other circle; the
    # 95th percentile of |cos t| is ~0.99, so HD95 ~= the shift in mm.
    spacing = (2.5, 0.7)
    a = _ellipse((60, 120), 30, 60, 30 / spacing[0], 30 / spacing[1])
    b = np.roll(a, shift, axis=axis)
    expected = shift * spacing[axis]
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=0.1)
    assert hd95(b, a, spacing) == pytest.approx(hd95(a, b, spacing))
    # Spacing in the wrong axis order gives a clearly different answer: the order matters.
    assert abs(hd95(a, b, spacing[::-1]) - expected) > 1.0


def test_hd95_3d_slab_shift_exact():
    # A 6-slice-thick slab of 20x20 shifted by 2 slices, slice spacing 3 mm: most surface voxels
    # (the two big faces) are exactly 2 slices = 6 mm from the other slab's corresponding face.
    a = np.zeros((14, 24, 24), bool)
    a[3:9, 2:22, 2:22] = True
    b = np.roll(a, 2, axis=0)
    assert hd95(a, b, (3.0, 0.8, 0.8)) == pytest.approx(6.0)


def test_hd95_bad_spacing():
    a = _disc((10, 10), 5, 5, 2)
    with pytest.raises(InputError, match="spacing"):
        hd95(a, a, (1.0,))
    with pytest.raises(InputError, match="spacing"):
        hd95(a, a, (1.0, 0.0))


def test_per_slice_by_hand():
    pred = np.zeros((3, 4, 4), bool)
    ref = np.zeros((3, 4, 4), bool)
    pred[0, :2, :2] = True  # slice 0: 4 vs 4 px, 2 overlapping
    ref[0, :2, 1:3] = True
    ref[1, 0, 0] = True  # slice 1: missed entirely -> 0
    # slice 2: both empty -> policy
    np.testing.assert_allclose(per_slice(pred, ref), [0.5, 0.0, 1.0])
    out = per_slice(pred, ref, empty="nan")
    assert math.isnan(out[2])


def test_case_metrics_multilabel():
    ref = np.zeros((1, 6, 6), np.uint8)
    ref[0, 0:2, 0:2] = 1  # label 1: 4 px
    ref[0, 3:5, 3:5] = 2  # label 2: 4 px
    pred = np.zeros_like(ref)
    pred[0, 0:2, 0:2] = 1  # label 1 perfect
    pred[0, 3:5, 3:4] = 2  # label 2: 2 of 4 -> Dice 2*2/(2+4) = 2/3
    m = case_metrics(pred, ref, spacing=(1.0, 1.0, 1.0), labels=[1, 2])
    assert m["labels"][1]["dice"] == pytest.approx(1.0)
    assert m["labels"][2]["dice"] == pytest.approx(2 / 3)
    # merged: TP = 6, FP = 0, FN = 2 -> 12/14
    assert m["dice"] == pytest.approx(12 / 14)
    assert (m["tp"], m["fp"], m["fn"]) == (6, 0, 2)
    assert m["hd95"] >= 0
    plain = case_metrics(pred, ref)
    assert plain["dice"] == pytest.approx(12 / 14) and "hd95" not in plain and "labels" not in plain


def test_mean_finite_reports_exclusions():
    fm = mean_finite([1.0, float("nan"), 0.5, float("inf")])
    assert fm.mean == pytest.approx(0.75) and fm.n == 2 and fm.excluded == 2
    assert mean_finite([]).mean is None


def test_accumulator_pooled_differs_from_mean():
    # Case A: a big 10x10 object predicted perfectly (Dice 1). Case B: a 2x2 object missed (Dice 0).
    # Mean over cases = 0.5. Pooled: TP = 100, FP = 0, FN = 4 -> 200 / 204 = 0.980.
    acc = MetricAccumulator()
    big = _square((12, 12), 1, 1, 10)
    small = _square((12, 12), 5, 5, 2)
    acc.add("a", big, big, prompts=1)
    acc.add("b", np.zeros_like(small), small, prompts=1)
    s = acc.summary()
    assert s["cases"] == 2
    assert s["dice_mean"] == pytest.approx(0.5)
    assert s["dice_pooled"] == pytest.approx(200 / 204)
    assert s["jaccard_pooled"] == pytest.approx(100 / 104)
    assert s["dice_slice_mean"] == pytest.approx(0.5)
    rows = acc.rows()
    assert [r["name"] for r in rows] == ["a", "b"] and rows[0]["prompts"] == 1


def test_accumulator_slice_mean_skips_both_empty_slices_and_nan_cases():
    ref = np.zeros((4, 6, 6), bool)
    pred = np.zeros((4, 6, 6), bool)
    ref[1, :2, :2] = True
    pred[1, :2, :1] = True  # slice 1: Dice 2*2/(2+4) = 2/3
    ref[2, :2, :2] = True  # slice 2: missed -> 0; slices 0 and 3 both empty (left out)
    acc = MetricAccumulator(empty="nan", keep_slices=True)
    acc.add("vol", pred, ref, spacing=(3.0, 1.0, 1.0))
    acc.add("nothing", np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    s = acc.summary()
    assert s["dice_slice_mean"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["slices_scored"] == 2 and s["slices_both_empty"] == 4
    assert s["cases_excluded"] == 1  # the empty case's NaN Dice is not averaged in
    assert s["dice_mean"] == pytest.approx(2 * 2 / (2 + 8))
    assert s["hd95_excluded"] == 0
    assert acc.slice_dice["vol"].shape == (4,)


def test_accumulator_per_label():
    ref = np.zeros((6, 6), np.uint8)
    ref[:2, :2] = 1
    ref[3:5, 3:5] = 2
    acc = MetricAccumulator(labels=[1, 2])
    acc.add("x", ref, ref)
    pred = ref.copy()
    pred[pred == 2] = 0
    acc.add("y", pred, ref)
    s = acc.summary()
    assert s["labels"][1]["dice_mean"] == pytest.approx(1.0)
    assert s["labels"][2]["dice_mean"] == pytest.approx(0.5)
    assert s["labels"][2]["dice_pooled"] == pytest.approx(8 / 12)
    assert acc.rows()[1]["dice_2"] == 0.0
