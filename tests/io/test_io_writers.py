"""Writers: atomicity, PNG zip, CSV/JSON, GIF, ResultWriter streaming and partial runs."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from iosynth import rotation_affine, save_nifti
from PIL import Image

from promptonce.errors import DimensionError, InputError
from promptonce.io import writers
from promptonce.io.readers import load, load_dataset
from promptonce.io.writers import (
    ResultWriter,
    atomic_path,
    write_json,
    write_mask_nifti,
    write_metrics_csv,
    write_overlay_gif,
    write_png_masks_zip,
)
from promptonce.types import SliceResult, Volume


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("failed midway")
    assert target.read_bytes() == b"complete"  # the old file is untouched
    assert _leftovers(tmp_path) == []
    new = tmp_path / "new.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(new) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not new.exists() and _leftovers(tmp_path) == []


def test_nifti_write_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    vol = load(save_nifti(tmp_path / "in.nii.gz", np.zeros((8, 8, 4), np.int16), np.eye(4)))
    real_save = nib.save

    def broken_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    out_dir = tmp_path / "masks"
    with pytest.raises(OSError, match="disk full"):
        write_mask_nifti(np.zeros(vol.shape, np.uint8), vol, out_dir / "in.nii.gz")
    assert list(out_dir.iterdir()) == []
    monkeypatch.setattr(nib, "save", real_save)
    write_mask_nifti(np.zeros(vol.shape, np.uint8), vol, out_dir / "in.nii.gz")
    assert [p.name for p in out_dir.iterdir()] == ["in.nii.gz"]


def test_mask_without_source_geometry_uses_volume_affine(tmp_path):
    aff = rotation_affine()
    vol = Volume(array=np.zeros((3, 4, 5), np.float32), affine=aff, name="syn")
    lab = np.zeros(vol.shape, np.uint8)
    lab[2, 1, 4] = 1
    out = write_mask_nifti(lab, vol, tmp_path / "syn.nii.gz")
    img = nib.load(out)
    assert img.shape == (5, 4, 3)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    assert np.asarray(img.dataobj)[4, 1, 2] == 1
    with pytest.raises(DimensionError):
        write_mask_nifti(np.zeros((3, 4, 6), np.uint8), vol, tmp_path / "bad.nii.gz")


def test_png_zip(tmp_path):
    a = np.zeros((4, 5), np.uint8)
    a[1, 1] = 1
    b = np.zeros((3, 2), np.uint8)
    b[0, 0], b[2, 1] = 2, 3
    out = write_png_masks_zip([("CHNCXR_0001_0.png", a), ("case b", b)], tmp_path / "masks.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["CHNCXR_0001_0.png", "case_b.png", "labels.csv"]
        ia = np.asarray(Image.open(io.BytesIO(zf.read("CHNCXR_0001_0.png"))))
        ib = np.asarray(Image.open(io.BytesIO(zf.read("case_b.png"))))
    # several objects in the zip: palette PNGs whose pixel values are the object ids
    np.testing.assert_array_equal(ia, a)
    np.testing.assert_array_equal(ib, b)
    out = write_png_masks_zip([("one.png", a)], tmp_path / "one.zip")
    with zipfile.ZipFile(out) as zf:
        ia = np.asarray(Image.open(io.BytesIO(zf.read("one.png"))))
    assert ia.shape == (4, 5) and sorted(np.unique(ia).tolist()) == [0, 255] and ia[1, 1] == 255
    with pytest.raises(InputError, match="both be called"):
        write_png_masks_zip([("x.png", a), ("x", a)], tmp_path / "dup.zip")
    assert not (tmp_path / "dup.zip").exists() and _leftovers(tmp_path) == []


def test_json_and_csv(tmp_path):
    obj = {"dice": np.float32(0.5), "n": np.int64(3), "nan": float("nan"), "arr": np.arange(3), "p": tmp_path}
    out = write_json(obj, tmp_path / "m.json")
    back = json.loads(out.read_text())
    assert back == {"dice": 0.5, "n": 3, "nan": None, "arr": [0, 1, 2], "p": str(tmp_path)}
    rows = [{"case": "a", "dice": 0.9}, {"case": "b", "jaccard": np.float64(0.25), "flags": ["x", "y"]}]
    write_metrics_csv(rows, tmp_path / "m.csv")
    with open(tmp_path / "m.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0].keys()) == ["case", "dice", "jaccard", "flags"]
    assert got[0]["dice"] == "0.9" and got[0]["jaccard"] == "" and got[1]["jaccard"] == "0.25"
    assert got[1]["flags"] == "x;y"


def test_overlay_gif(tmp_path):
    arr = np.random.default_rng(0).normal(0, 100, (30, 20, 24)).astype(np.float32)
    vol = Volume(array=arr, name="g", modality="MR")
    lab = np.zeros(vol.shape, np.uint8)
    lab[:, 5:10, 5:10] = 1
    out = write_overlay_gif(vol, lab, tmp_path / "g.gif", max_frames=10, fps=5, min_size=24)
    with Image.open(out) as im:
        assert im.n_frames == 10 and im.size == (24, 20)
        im.seek(3)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    inside, outside = rgb[6:9, 6:9], rgb[15:, 15:]
    # the labelled square is tinted: its channels are unequal, the grey background's are equal
    assert np.abs(inside[..., 0] - inside[..., 1]).mean() > 20
    assert np.abs(outside[..., 0] - outside[..., 1]).mean() < 5


def _results(vol: Volume, vi: int, order, value=1):
    for k in order:
        lab = np.zeros(vol.shape[1:], np.uint8)
        lab[0, k % vol.shape[2]] = value
        yield SliceResult(volume_index=vi, slice_index=k, labels=lab, volume_name=vol.name, n_slices=vol.n_slices)


def test_result_writer_streams_volumes(tmp_path):
    src = save_nifti(tmp_path / "ct.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    vol = load(src)
    w = ResultWriter(tmp_path / "run")
    written = []
    for i, res in enumerate(_results(vol, 0, [2, 0, 3, 1])):
        written += w.add(res, vol)
        if i < 3:
            assert written == [] and w.pending == ["ct"]
    assert [p.name for p in written] == ["ct.nii.gz"] and w.pending == []
    out = nib.load(written[0])
    assert out.shape == (6, 5, 4)
    np.testing.assert_allclose(out.affine, nib.load(src).affine)
    assert int(np.asarray(out.dataobj).sum()) == 4
    assert w.close() == written


def test_result_writer_pngs_keep_image_names(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("CHNCXR_0002_0", "CHNCXR_0001_1"):
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(imgs / f"{n}.png")
    dset = load_dataset(imgs)
    w = ResultWriter(tmp_path / "run")
    for vi, vol in enumerate(dset):
        for res in _results(vol, vi, [0]):
            w.add(res, vol)
    paths = w.close()
    assert sorted(p.name for p in paths) == ["CHNCXR_0001_1.png", "CHNCXR_0002_0.png", "labels.csv"]
    m = np.asarray(Image.open(paths[0]))
    assert m.shape == (4, 6) and m.max() == 255


def test_result_writer_writes_a_dataset_of_pngs_one_way(tmp_path):
    """Two objects in the run: every image is a palette PNG of the ids, even one holding only object 1."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("a", "b"):
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(imgs / f"{n}.png")
    dset = load_dataset(imgs)
    w = ResultWriter(tmp_path / "run", objects=[1, 2], label_names={1: "left lung", 2: "right lung"})
    for vi, vol in enumerate(dset):
        for res in _results(vol, vi, [0], value=vi + 1):  # image a holds object 1 only, b object 2
            w.add(res, vol)
    paths = {p.name: p for p in w.close()}
    a, b = (np.asarray(Image.open(paths[f"{n}.png"])) for n in ("a", "b"))
    assert Image.open(paths["a.png"]).mode == "P" and a.max() == 1 and b.max() == 2
    table = paths["labels.csv"].read_text().splitlines()
    assert table[0] == "value,object,name,color" and table[1] == "0,0,background,#000000"
    assert table[2].startswith("1,1,left lung,#") and table[3].startswith("2,2,right lung,#")


def test_result_writer_partial_runs(tmp_path):
    vol = Volume(array=np.zeros((5, 3, 4), np.int16), name="cancelled")
    w = ResultWriter(tmp_path / "a")
    for res in _results(vol, 0, [0, 1]):
        w.add(res, vol)
    assert w.close() == []
    assert not (tmp_path / "a" / "masks").exists() or list((tmp_path / "a" / "masks").iterdir()) == []
    w = ResultWriter(tmp_path / "b")
    for res in _results(vol, 0, [0, 1]):
        w.add(res, vol)
    paths = w.close(write_partial=True)
    assert [p.name for p in paths] == ["cancelled.partial.nii.gz"]
    with pytest.raises(DimensionError):
        ResultWriter(tmp_path / "c").add(SliceResult(0, 9, np.zeros((3, 4), np.uint8)), vol)
    with pytest.raises(DimensionError):
        ResultWriter(tmp_path / "c").add(SliceResult(0, 0, np.zeros((4, 4), np.uint8)), vol)


def test_writers_module_exports():
    for name in writers.__all__:
        assert hasattr(writers, name)
