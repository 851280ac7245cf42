"""2D images, stacks vs sets, natural sort, NumPy arrays, format sniffing and bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from promptonce.errors import CorruptFileError, DimensionError, TooLargeError, UnsupportedFormatError
from promptonce.io._common import natural_key
from promptonce.io.readers import SUPPORTED_FORMATS, load, load_dataset


def _save(path, arr, mode=None, **kw):
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def test_natural_sort_key():
    names = ["img10.png", "img2.png", "img1.png", "IMG3.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "img1.png", "img2.png", "IMG3.png", "img10.png"]


def test_grey_8bit_png(tmp_path):
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8)
    vol = load(_save(tmp_path / "x.png", arr))
    assert vol.shape == (1, 6, 8) and vol.array.dtype == np.uint8 and vol.source_format == "image"
    np.testing.assert_array_equal(vol.array[0], arr)
    assert vol.name == "x" and vol.slice_name(0) == "x.png"


def test_grey_16bit_png_keeps_values(tmp_path):
    arr = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000)
    vol = load(_save(tmp_path / "x16.png", arr))
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], arr)


def test_rgb_grey_and_colour(tmp_path):
    g = np.arange(20, dtype=np.uint8).reshape(4, 5)
    vol = load(_save(tmp_path / "g.png", np.stack([g, g, g], -1)))
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array[0], g)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 255)
    vol = load(_save(tmp_path / "c.png", rgb))
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array[0], [[0.299 * 255, 0], [0, 0.114 * 255]], rtol=1e-5)
    rgba = np.concatenate([np.stack([g, g, g], -1), np.full((4, 5, 1), 128, np.uint8)], -1)
    np.testing.assert_array_equal(load(_save(tmp_path / "a.png", rgba)).array[0], g)


def test_palette_png(tmp_path):
    g = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(np.stack([g, g, g], -1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(tmp_path / "p.png")
    vol = load(tmp_path / "p.png")
    assert vol.shape == (1, 4, 5)
    assert np.corrcoef(vol.array[0].ravel().astype(float), g.ravel().astype(float))[0, 1] > 0.95


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_other_formats(tmp_path, suffix):
    arr = np.tile(np.linspace(0, 250, 16).astype(np.uint8), (12, 1))
    vol = load(_save(tmp_path / f"x{suffix}", arr))
    assert vol.shape == (1, 12, 16)
    tol = 8 if suffix == ".jpg" else 0
    assert np.max(np.abs(vol.array[0].astype(int) - arr.astype(int))) <= tol


def test_multipage_tiff_is_a_stack(tmp_path):
    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (1, 2, 3)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    vol = load(tmp_path / "m.tif")
    assert vol.shape == (3, 4, 5)
    assert vol.array[:, 0, 0].tolist() == [1, 2, 3]


def test_folder_of_slices_is_a_stack_in_natural_order(tmp_path):
    for i in (10, 2, 1):
        _save(tmp_path / f"img{i}.png", np.full((4, 5), i, np.uint8))
    vol = load(tmp_path)
    assert vol.array[:, 0, 0].tolist() == [1, 2, 10]
    assert vol.name == tmp_path.name
    assert [vol.slice_name(k) for k in range(3)] == ["img1.png", "img2.png", "img10.png"]
    # same through a glob and a list
    assert load(str(tmp_path / "img*.png")).array[:, 0, 0].tolist() == [1, 2, 10]
    vs = load_dataset(tmp_path, images_as="stack")
    assert len(vs) == 1 and vs[0].array[:, 0, 0].tolist() == [1, 2, 10]


def test_images_of_different_sizes_are_a_set(tmp_path):
    _save(tmp_path / "b10.png", np.zeros((4, 5), np.uint8))
    _save(tmp_path / "b9.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(DimensionError, match="load_dataset"):
        load(tmp_path)
    with pytest.raises(DimensionError, match="cannot\\s+be stacked|differ in size"):
        load(tmp_path, images_as="stack")
    dset = load_dataset(tmp_path)
    assert dset.names == ["b9", "b10"]
    assert [v.shape for v in dset] == [(1, 6, 5), (1, 4, 5)]


def test_set_of_same_size_images_with_load_asks_for_load_dataset(tmp_path):
    for i in range(2):
        _save(tmp_path / f"c{i}.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(DimensionError, match="load_dataset"):
        load(tmp_path, images_as="set")


def test_dataset_items_are_lazy(tmp_path):
    _save(tmp_path / "a.png", np.zeros((4, 5), np.uint8))
    _save(tmp_path / "b.png", np.zeros((4, 5), np.uint8))
    dset = load_dataset([tmp_path / "a.png", tmp_path / "b.png"])
    (tmp_path / "b.png").write_bytes(b"garbage that is no png")
    assert dset[0].shape == (1, 4, 5)
    with pytest.raises(CorruptFileError):
        dset[1]


def test_dataset_mixes_files_and_skips_unknown_in_folders(tmp_path):
    from iosynth import save_nifti

    save_nifti(tmp_path / "vol2.nii.gz", np.zeros((3, 3, 2), np.int16), np.eye(4))
    save_nifti(tmp_path / "vol10.nii.gz", np.zeros((3, 3, 4), np.int16), np.eye(4))
    np.save(tmp_path / "arr.npy", np.zeros((2, 3, 3), np.float32))
    (tmp_path / "README.md").write_text("notes")
    dset = load_dataset(tmp_path)
    assert dset.names == ["arr", "vol2", "vol10"]
    assert [v.n_slices for v in dset] == [2, 2, 4]
    with pytest.raises(UnsupportedFormatError, match="text file"):
        load_dataset([tmp_path / "vol2.nii.gz", tmp_path / "README.md"])


def test_numpy_arrays(tmp_path):
    np.save(tmp_path / "a2.npy", np.arange(12, dtype=np.float64).reshape(3, 4))
    v = load(tmp_path / "a2.npy")
    assert v.shape == (1, 3, 4) and v.array.dtype == np.float32 and v.source_format == "numpy"
    np.save(tmp_path / "a4.npy", np.zeros((2, 3, 4, 5), np.int16))
    with pytest.raises(DimensionError, match="time-index"):
        load(tmp_path / "a4.npy")
    assert load(tmp_path / "a4.npy", time_index=1).shape == (3, 4, 5)
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    np.savez(tmp_path / "b.npz", image=np.ones((2, 3, 4), np.int16), affine=aff, other=np.zeros(3))
    v = load(tmp_path / "b.npz")
    assert v.shape == (2, 3, 4)
    np.testing.assert_allclose(v.spacing, (0.5, 0.5, 2.0))
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 2)), y=np.zeros((2, 2)))
    with pytest.raises(UnsupportedFormatError, match="image"):
        load(tmp_path / "c.npz")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedFormatError, match="pickle|objects"):
        load(tmp_path / "o.npy")
    np.save(tmp_path / "n.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(Exception, match="NaN"):
        load(tmp_path / "n.npy")
    np.save(tmp_path / "big.npy", np.zeros((10, 10, 10), np.uint8))
    with pytest.raises(TooLargeError):
        load(tmp_path / "big.npy", max_voxels=999)


def test_bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load(tmp_path / "empty.png")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(CorruptFileError, match="not a readable image"):
        load(tmp_path / "noise.png")
    (tmp_path / "notes.txt").write_text("hello, this is not an image\n")
    with pytest.raises(UnsupportedFormatError, match="text file") as ei:
        load(tmp_path / "notes.txt")
    assert SUPPORTED_FORMATS[0] in str(ei.value)
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    with pytest.raises(UnsupportedFormatError, match="PDF"):
        load(tmp_path / "paper.pdf")
    with pytest.raises(Exception, match="no such file"):
        load(tmp_path / "missing.nii.gz")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UnsupportedFormatError, match="no supported file"):
        load(tmp_path / "empty_dir")


def test_truncated_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    _save(tmp_path / "ok.png", arr)
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated|damaged"):
        load(tmp_path / "cut.png")


def test_image_budget_from_header(tmp_path):
    _save(tmp_path / "x.png", np.zeros((100, 100), np.uint8))
    with pytest.raises(TooLargeError, match="10,000 voxels"):
        load(tmp_path / "x.png", max_voxels=9_999)


def test_dataset_folder_with_only_image_subfolders_says_which_to_give(tmp_path):
    (tmp_path / "images").mkdir()
    _save(tmp_path / "images" / "a.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(UnsupportedFormatError, match=r"give the one you mean, e\.g\. .*images"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path / "images").names == ["a"]
