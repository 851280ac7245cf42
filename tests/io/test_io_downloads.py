"""Downloads people can open (issue 13, item 7): PNG masks, label table, readable GIF, per-slice rows,
mask volume in mL, and the word for a slice of an image set."""

from __future__ import annotations

import csv
import io
import math
import zipfile

import numpy as np
import pytest
from PIL import Image

from promptonce.errors import InputError
from promptonce.io.writers import gif_frame_size, write_metrics_csv, write_overlay_gif, write_png_mask, write_png_masks_zip
from promptonce.metrics import mask_volumes_ml, slice_rows
from promptonce.preprocess import draw_outline, label_color, label_palette, outline_edges
from promptonce.types import Dataset, Volume, unit_name


def _zip_png(zf: zipfile.ZipFile, name: str) -> Image.Image:
    im = Image.open(io.BytesIO(zf.read(name)))
    im.load()
    return im


def test_one_object_masks_are_white_on_black_with_a_label_table(tmp_path):
    a = np.zeros((6, 7), np.uint8)
    a[2:4, 1:5] = 1
    empty = np.zeros((6, 7), np.uint8)
    out = write_png_masks_zip([("a.png", a), ("b.png", empty)], tmp_path / "m.zip", label_names={1: "right lung"})
    with zipfile.ZipFile(out) as zf:
        ia, ib = _zip_png(zf, "a.png"), _zip_png(zf, "b.png")
        table = list(csv.DictReader(io.StringIO(zf.read("labels.csv").decode())))
    assert ia.mode == "L" and set(np.unique(np.asarray(ia)).tolist()) == {0, 255}
    np.testing.assert_array_equal(np.asarray(ia) == 255, a == 1)
    assert not np.asarray(ib).any()
    assert table == [
        {"value": "0", "object": "0", "name": "background", "color": "#000000"},
        {"value": "255", "object": "1", "name": "right lung", "color": "#ffffff"},
    ]


def test_several_objects_are_a_palette_png_in_the_app_colours(tmp_path):
    lab = np.zeros((5, 5), np.uint8)
    lab[0, 0], lab[1, 1], lab[4, 4] = 1, 2, 3
    out = write_png_masks_zip([("x", lab)], tmp_path / "m.zip", label_names={1: "liver", 2: "spleen", 3: "kidney"})
    with zipfile.ZipFile(out) as zf:
        im = _zip_png(zf, "x.png")
        table = {int(r["value"]): r for r in csv.DictReader(io.StringIO(zf.read("labels.csv").decode()))}
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), lab)  # the ids are kept as pixel values
    rgb = np.asarray(im.convert("RGB"))
    for i in (1, 2, 3):
        y, x = np.argwhere(lab == i)[0]
        assert tuple(rgb[y, x]) == label_color(i)
        assert table[i]["color"] == "#%02x%02x%02x" % label_color(i)
    assert [table[i]["name"] for i in (1, 2, 3)] == ["liver", "spleen", "kidney"]
    assert len({tuple(label_color(i)) for i in range(1, 11)}) == 10, "ten distinct colours"
    single = write_png_mask(lab, tmp_path / "one.png")
    assert Image.open(single).mode == "P" and len(label_palette()) == 768


def test_gif_is_scaled_up_to_a_readable_size_with_an_outline(tmp_path):
    arr = np.random.default_rng(1).normal(0, 50, (4, 101, 122)).astype(np.float32)
    aff = np.diag([0.8, 0.8, 3.0, 1.0])  # square pixels
    vol = Volume(array=arr, affine=aff, name="v", modality="MR")
    lab = np.zeros(vol.shape, np.uint8)
    lab[:, 30:70, 40:90] = 2
    out = write_overlay_gif(vol, lab, tmp_path / "v.gif")
    with Image.open(out) as im:
        assert max(im.size) >= 512 and im.size == gif_frame_size((101, 122), (0.8, 0.8))
        w, h = im.size
        assert abs(w / h - 122 / 101) < 0.02, "the aspect ratio is kept"
        im.seek(1)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    sx, sy = w / 122, h / 101
    # the object's outline is drawn in its full colour; its inside is only tinted
    edge_px = rgb[int(50 * sy), int(40 * sx) + 1]
    assert np.abs(edge_px - np.array(label_color(2))).max() < 40, edge_px
    inside = rgb[int(50 * sy), int(65 * sx)]
    assert np.abs(inside - np.array(label_color(2))).max() > 40
    # non-square pixels: rows twice as tall as columns are wide
    assert gif_frame_size((100, 100), (0.5, 1.0)) == (256, 512)
    assert gif_frame_size((2000, 1000)) == (384, 768)


def test_outline_edges_and_draw_outline():
    lab = np.zeros((7, 7), np.uint8)
    lab[1:6, 1:6] = 1
    e1, e2 = outline_edges(lab, 1), outline_edges(lab, 2)
    assert e1.sum() == 16 and e2.sum() == 24 and not e2[3, 3]
    ref = np.zeros((7, 7), np.uint8)
    ref[0:3, 0:3], ref[4:7, 4:7] = 1, 5
    out = draw_outline(np.zeros((7, 7, 3), np.uint8), ref)
    assert tuple(out[0, 0]) == label_color(1) and tuple(out[6, 6]) == label_color(5)
    assert tuple(out[3, 3]) == (0, 0, 0)


def test_slice_rows_by_hand(tmp_path):
    pred = np.zeros((2, 4, 4), np.uint8)
    pred[0, :2, :2] = 1  # 4 px
    pred[1, :, :] = 2  # 16 px
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :1] = 7  # 2 px of reference label 7, object 1's
    rows = slice_rows(
        pred, case="c", spacing=(0.5, 2.0), reference=ref, scores={0: {1: 0.9}}, flags={1: ["area jump 2.0x"]},
        object_names={1: "liver", 2: "spleen"}, reference_labels={1: [7]},
    )
    assert [(r["slice_index"], r["object"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    r0 = rows[0]
    assert r0["area_px"] == 4 and r0["area_mm2"] == pytest.approx(4.0) and r0["object_name"] == "liver"
    assert r0["dice"] == pytest.approx(2 * 2 / (4 + 2)) and r0["confidence"] == pytest.approx(0.9)
    assert math.isnan(rows[1]["dice"]) and rows[1]["confidence"] is None
    assert rows[3]["area_px"] == 16 and rows[3]["dice"] == 0.0 and rows[3]["flags"] == ["area jump 2.0x"]
    write_metrics_csv(rows, tmp_path / "slices.csv")
    with open(tmp_path / "slices.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["case", "slice_index", "slice_name", "object", "object_name", "area_px", "area_mm2",
                            "reference_area_px", "dice", "confidence", "flags"]  # fmt: skip
    assert got[1]["dice"] == "" and got[3]["flags"] == "area jump 2.0x"
    # one object: scored against every reference label; without spacing (a PNG X-ray): no mm²
    rows = slice_rows(pred[:1], case="c", reference=ref[:1])
    assert len(rows) == 1 and rows[0]["area_mm2"] is None and rows[0]["dice"] == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="spacing"):
        slice_rows(pred, case="c", spacing=(0, 1))


def test_mask_volume_in_ml():
    lab = np.zeros((10, 20, 20), np.uint8)
    lab[:, :10, :10] = 1  # 1000 voxels
    lab[0, 15:, 15:] = 2  # 25 voxels
    got = mask_volumes_ml(lab, (2.0, 0.5, 0.5))  # 0.5 mm^3 per voxel
    assert got == {1: pytest.approx(0.5), 2: pytest.approx(0.0125)}
    assert mask_volumes_ml(np.zeros((2, 2, 2), np.uint8), (1, 1, 1)) == {}
    with pytest.raises(InputError, match="spacing"):
        mask_volumes_ml(lab, (1.0, 1.0))


def test_unit_name_says_images_for_image_sets():
    xr = Volume(np.zeros((1, 8, 8)), modality="XR")
    ct = Volume(np.zeros((5, 8, 8)), modality="CT")
    assert unit_name(xr) == "images" and unit_name(xr, 1) == "image"
    assert unit_name(ct, 8) == "slices" and unit_name(ct, 1) == "slice"
    assert unit_name(Dataset([xr, xr])) == "images" and unit_name(Dataset([xr, ct])) == "slices"
    assert unit_name([1, 1, 1], 3) == "images" and unit_name([1, 112]) == "slices" and unit_name(112) == "slices"
