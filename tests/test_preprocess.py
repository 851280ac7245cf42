"""Tests of promptonce.preprocess: window parsing, automatic windows, frames and overlays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptonce import preprocess
from promptonce.errors import DimensionError, InputError
from promptonce.preprocess import (
    CT_LUNG_FRACTION,
    WINDOW_PRESETS,
    FrameMaker,
    auto_window,
    describe_window,
    label_color,
    looks_like_hu,
    lung_fraction,
    overlay,
    parse_window,
    to_frame,
    to_gray,
)
from promptonce.types import Volume


def test_presets_values():
    assert WINDOW_PRESETS["lung"] == (1500, -600)
    assert WINDOW_PRESETS["mediastinum"] == (350, 50)
    assert WINDOW_PRESETS["abdomen"] == (400, 40)
    assert WINDOW_PRESETS["bone"] == (1800, 400)
    assert WINDOW_PRESETS["brain"] == (80, 40)
    assert WINDOW_PRESETS["soft_tissue"] == WINDOW_PRESETS["mediastinum"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("Lung", "lung"),
        ("soft-tissue", "soft_tissue"),
        ("1500,-600", (1500.0, -600.0)),
        (" 400 , 40 ", (400.0, 40.0)),
        ((350, 50), (350.0, 50.0)),
        ([80.0, 40.0], (80.0, 40.0)),
    ],
)
def test_parse_window(spec, expected):
    assert parse_window(spec) == expected


@pytest.mark.parametrize("spec", ["lungs", "400", "a,b", "0,40", "-5,40", "nan,3", (1, 2, 3), 5])
def test_parse_window_rejects_with_preset_list(spec):
    with pytest.raises(InputError) as err:
        parse_window(spec)
    msg = str(err.value)
    assert "lung" in msg or "width" in msg


def test_to_gray_by_hand():
    # Window W=200, L=100 -> 0 HU maps to 0, 100 to 127.5 -> 128, 200 to 255; outside is clipped.
    img = np.array([[-50.0, 0.0, 100.0], [150.0, 200.0, 1e6]])
    g = to_gray(img, (200, 100))
    assert g.dtype == np.uint8
    np.testing.assert_array_equal(g, [[0, 0, 128], [191, 255, 255]])
    f = to_frame(img, (200, 100))
    assert f.shape == (2, 3, 3) and f.dtype == np.uint8
    assert (f[..., 0] == g).all() and (f[..., 2] == g).all()
    assert to_gray(np.array([[np.nan, 1.0]]), (2, 1))[0, 0] == 0
    with pytest.raises(DimensionError):
        to_gray(np.zeros((2, 2, 2)), (1, 0))
    with pytest.raises(InputError):
        to_gray(np.zeros((2, 2)), (0, 0))


def _ct_like(seed=0, lung_rows=6):
    """Air around a 24x24 body of soft tissue with a lung region and a bone; float32 HU (4, 32, 32)."""
    rng = np.random.default_rng(seed)
    vol = np.full((4, 32, 32), -1000.0, np.float32)  # air
    vol[:, 4:28, 4:28] = rng.normal(40, 10, (4, 24, 24))  # soft tissue
    vol[:, 6 : 6 + lung_rows, 6:26] = -850  # lung
    vol[:, 24:27, 14:18] = 700  # bone
    return vol


def test_lung_fraction_by_hand():
    # Body 24x24 = 576 voxels above -950 HU per slice, of which 6x20 = 120 lung: 120/576 = 0.208.
    assert lung_fraction(_ct_like(lung_rows=6)) == pytest.approx(120 / 576)
    assert lung_fraction(np.full((3, 3), -1000.0)) == 0.0


def test_auto_window_ct_abdomen_or_lung_by_content():
    abdomen, lung = WINDOW_PRESETS["abdomen"], WINDOW_PRESETS["lung"]
    # 2 lung rows: 40/576 = 0.07 < CT_LUNG_FRACTION -> abdomen; 12 rows: 240/576 = 0.42 -> lung.
    assert 40 / 576 < CT_LUNG_FRACTION < 240 / 576
    v = Volume(_ct_like(lung_rows=2), modality="CT")
    assert looks_like_hu(v)
    assert auto_window(v) == abdomen
    assert auto_window(Volume(_ct_like(lung_rows=12), modality="CT")) == lung
    # Same values without the modality tag are still recognised as HU.
    assert auto_window(Volume(_ct_like(lung_rows=2), modality="OT")) == abdomen
    # A CT without bone in view but tagged CT is HU; untagged it is not (no bone evidence).
    no_bone = _ct_like(lung_rows=2)
    no_bone[no_bone > 300] = 40
    assert auto_window(Volume(no_bone, modality="CT")) == abdomen
    assert auto_window(Volume(no_bone, modality="OT")) not in (abdomen, lung)


def test_describe_window():
    assert describe_window((1500, -600)) == "lung W1500/L-600"
    assert describe_window((123.5, 7)) == "W123.5/L7"
    assert FrameMaker(Volume(np.zeros((1, 2, 2))), "bone").describe() == "bone: bone W1800/L400"


def test_auto_window_percentiles_for_mr_and_8bit():
    arr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    w, lvl = auto_window(Volume(arr, modality="MR"))
    lo, hi = np.percentile(arr, [0.5, 99.5])
    assert (w, lvl) == pytest.approx((hi - lo, (hi + lo) / 2))
    # 8-bit CT (already windowed, no negative values) is not treated as HU.
    eight = np.random.default_rng(1).integers(0, 256, (2, 20, 20)).astype(np.uint8)
    w8, l8 = auto_window(Volume(eight, modality="CT"))
    assert 200 < w8 <= 255 and 100 < l8 < 155


def test_auto_window_constant_and_sparse():
    w, lvl = auto_window(Volume(np.full((2, 5, 5), 7.0)))
    assert w > 0 and lvl == 7.0
    frame = FrameMaker(Volume(np.full((2, 5, 5), 7.0))).frame(0)
    assert (frame == 128).all()  # mid-grey, no division by zero
    sparse = np.zeros((1, 100, 100), np.float32)
    sparse[0, :3, :3] = 255  # 0.09 % of pixels: the 99.5th percentile is still 0
    w, lvl = auto_window(Volume(sparse))
    assert (w, lvl) == (255.0, 127.5)


def test_auto_window_subsample_is_deterministic_and_close(monkeypatch):
    monkeypatch.setattr(preprocess, "AUTO_SAMPLE", 50_000)
    # 100 k voxels > sample size; the value depends on slice and column (a sample that aliases onto
    # a few columns or slices would get the range wrong).
    s, _, c = np.mgrid[:10, :100, :100]
    arr = (c + 100 * s).astype(np.float32)
    v = Volume(arr, modality="MR")
    a, b = auto_window(v), auto_window(v)
    assert a == b
    lo, hi = np.percentile(arr, [0.5, 99.5])
    assert a[0] == pytest.approx(hi - lo, rel=0.03)


def test_frame_maker_one_window_per_volume():
    arr = np.zeros((3, 8, 8), np.float32)
    arr[0] = 10
    arr[1] = 20
    arr[2, :4] = 30
    fm = FrameMaker(Volume(arr, modality="MR"))
    assert fm.window_name == "auto" and len(fm) == 3
    # Every slice is scaled with the same window: slice 0 (value 10) is darker than slice 1 (20).
    assert fm.gray(0)[0, 0] < fm.gray(1)[0, 0]
    assert fm.frame(2).shape == (8, 8, 3)
    # A preset, a custom window, and the reader's suggestion.
    assert FrameMaker(Volume(arr), "lung").window == (1500.0, -600.0)
    assert FrameMaker(Volume(arr), "40,20").window_name == "custom"
    suggested = Volume(arr, window=(10.0, 15.0))
    assert FrameMaker(suggested).window == (10.0, 15.0)
    assert FrameMaker(suggested, "auto").window == (10.0, 15.0)
    assert FrameMaker(suggested, (100, 0)).window == (100.0, 0.0)
    with pytest.raises(InputError):
        FrameMaker(Volume(arr), "nonsense")


def test_label_color_stable_and_distinct():
    assert label_color(0) == (0, 0, 0)
    colours = [label_color(i) for i in range(1, 60)]
    assert len(set(colours)) == len(colours)
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    assert label_color(3) == label_color(3)


def test_overlay_fill_and_outline():
    gray = np.full((10, 10), 100, np.uint8)
    labels = np.zeros((10, 10), np.uint8)
    labels[2:8, 2:8] = 2
    out = overlay(gray, labels, alpha=0.5)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    col = np.array(label_color(2))
    np.testing.assert_array_equal(out[2, 2], col)  # contour: full colour
    np.testing.assert_array_equal(out[5, 5], np.rint(0.5 * 100 + 0.5 * col))  # inside: blended
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background untouched
    no_outline = overlay(gray, labels, alpha=0.5, outline=False)
    np.testing.assert_array_equal(no_outline[2, 2], np.rint(0.5 * 100 + 0.5 * col))
    custom = overlay(gray, labels.astype(bool), alpha=1.0, colors={1: (1, 2, 3)})
    np.testing.assert_array_equal(custom[5, 5], [1, 2, 3])
    assert (overlay(gray, np.zeros_like(labels)) == 100).all()
    with pytest.raises(InputError, match="uint8"):
        overlay(gray.astype(np.float32), labels)
    with pytest.raises(DimensionError):
        overlay(gray, labels[:5])


@settings(max_examples=40, deadline=None)
@given(st.floats(-2000, 2000), st.floats(1, 4000), st.floats(-3000, 3000))
def test_to_gray_monotone_and_bounded(level, width, value):
    img = np.array([[value, value + 1.0]])
    g = to_gray(img, (width, level))
    assert 0 <= g[0, 0] <= g[0, 1] <= 255
