"""Reference masks: pairing by name, value conversion, geometry checks."""

from __future__ import annotations

import numpy as np
import pytest
from iosynth import rotation_affine, save_nifti
from PIL import Image

from promptonce.errors import InputError, InvalidValuesError, ReferenceMismatchError
from promptonce.io.readers import load, load_dataset, load_reference, pair_references


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def test_pair_by_name(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ref").mkdir()
    for n in ("case10", "case2", "case1"):
        _png(tmp_path / "img" / f"{n}.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "ref" / "case1.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "ref" / "case2_mask.png", np.zeros((4, 4), np.uint8))
    save_nifti(tmp_path / "ref" / "case10.nii.gz", np.zeros((4, 4, 1), np.uint8), np.eye(4))
    images = load_dataset(tmp_path / "img")
    refs = pair_references(images, [tmp_path / "ref"])
    assert [p.name for p in refs] == ["case1.png", "case2_mask.png", "case10.nii.gz"]
    (tmp_path / "ref" / "case1.png").unlink()
    with pytest.raises(InputError, match=r"1 of 3 images have no reference mask: case1"):
        pair_references(images, [tmp_path / "ref"])


def test_png_mask_binarised_and_small_labels_kept(tmp_path):
    img = load(_png(tmp_path / "x.png", np.zeros((5, 6), np.uint8)))
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 1:4] = 255
    m[4, 0] = 100  # an interpolated edge value below 128 is background
    ref = load_reference(_png(tmp_path / "x_mask.png", m), img)
    assert ref.array.dtype == np.uint8 and ref.shape == (1, 5, 6)
    np.testing.assert_array_equal(ref.array[0], (m > 127).astype(np.uint8))
    lab = np.zeros((5, 6), np.uint8)
    lab[0, 0], lab[1, 1] = 1, 3
    ref = load_reference(_png(tmp_path / "lab.png", lab), img)
    np.testing.assert_array_equal(ref.array[0], lab)


def test_shape_mismatch_message(tmp_path):
    img = load(_png(tmp_path / "x.png", np.zeros((256, 256), np.uint8)))
    with pytest.raises(ReferenceMismatchError, match=r"reference shape \(1, 512, 512\) vs image \(1, 256, 256\)"):
        load_reference(_png(tmp_path / "m.png", np.zeros((512, 512), np.uint8)), img)
    vol = load(save_nifti(tmp_path / "v.nii.gz", np.zeros((256, 256, 1), np.int16), np.eye(4)))
    with pytest.raises(ReferenceMismatchError, match=r"reference shape \(512, 512, 1\) vs image \(256, 256, 1\)"):
        load_reference(save_nifti(tmp_path / "r.nii.gz", np.zeros((512, 512, 1), np.uint8), np.eye(4)), vol)


def test_nifti_labels_follow_the_image_reorientation(tmp_path):
    aff = rotation_affine(perm=(1, 0, 2), flips=(-1, 1, 1), rot_deg=12)
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    lab = (data % 7).astype(np.uint8)
    img = load(save_nifti(tmp_path / "i.nii.gz", data, aff))
    ref = load_reference(save_nifti(tmp_path / "l.nii.gz", lab, aff), img)
    np.testing.assert_array_equal(ref.array, (img.array % 7).astype(np.uint8))
    assert sorted(np.unique(ref.array).tolist()) == list(range(7))


def test_reference_stored_with_another_orientation_is_aligned(tmp_path):
    aff = rotation_affine(spacing=(1.0, 2.0, 3.0))
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    img = load(save_nifti(tmp_path / "i.nii.gz", data, aff))
    # the same world grid, stored with the first axis flipped (as some converters do)
    flip = aff.copy()
    flip[:3, 0] *= -1
    flip[:3, 3] = aff[:3, :3] @ [4, 0, 0] + aff[:3, 3]
    lab = (data[::-1] % 5).astype(np.uint8)
    ref = load_reference(save_nifti(tmp_path / "l.nii.gz", lab, flip), img)
    np.testing.assert_array_equal(ref.array, (img.array % 5).astype(np.uint8))


def test_geometry_mismatch_message(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    img = load(save_nifti(tmp_path / "i.nii.gz", np.zeros((4, 4, 3), np.int16), aff))
    moved = aff.copy()
    moved[:3, 3] = [5.0, 0.0, 0.0]
    with pytest.raises(ReferenceMismatchError, match=r"origin .* mm"):
        load_reference(save_nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 3), np.uint8), moved), img)


def test_bad_reference_values(tmp_path):
    img = load(save_nifti(tmp_path / "i.nii.gz", np.zeros((4, 4, 2), np.int16), np.eye(4)))
    with pytest.raises(InvalidValuesError, match="negative"):
        load_reference(save_nifti(tmp_path / "n.nii.gz", -np.ones((4, 4, 2), np.int16), np.eye(4)), img)
    with pytest.raises(InvalidValuesError, match="non-integer"):
        load_reference(save_nifti(tmp_path / "f.nii.gz", np.full((4, 4, 2), 2.5, np.float32), np.eye(4)), img)
    prob = np.zeros((4, 4, 2), np.float32)
    prob[0, 0, 0] = 0.9
    ref = load_reference(save_nifti(tmp_path / "p.nii.gz", prob, np.eye(4)), img)
    assert int(ref.array.sum()) == 1
