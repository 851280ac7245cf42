"""NIfTI reader: display orientation, world coordinates, round trip, bad inputs."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from iosynth import rotation_affine, save_nifti

from promptonce.errors import CorruptFileError, DimensionError, InvalidValuesError, TooLargeError
from promptonce.io.readers import load
from promptonce.io.writers import write_mask_nifti

SHAPE = (7, 5, 4)


def _unique_data(shape=SHAPE) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape) + 1


def _world_of_display(vol) -> np.ndarray:
    """World RAS+ of every display voxel, shape (slices, rows, cols, 3)."""
    s, r, c = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    idx = np.stack([c, r, s, np.ones_like(c)], axis=-1).astype(float)
    return (idx @ vol.affine.T)[..., :3]


def _world_of_stored(affine, shape) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    idx = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (idx @ affine.T)[..., :3]


AFFINES = {
    "ras": rotation_affine(),
    "lps": rotation_affine(flips=(-1, -1, 1)),
    "swapped_inplane": rotation_affine(perm=(1, 0, 2), flips=(1, -1, 1)),
    "sagittal_stored": rotation_affine(perm=(1, 2, 0), flips=(-1, 1, 1)),
    "coronal_stored": rotation_affine(perm=(0, 2, 1), flips=(1, 1, -1)),
    "oblique": rotation_affine(rot_deg=25.0),
    "oblique_flipped": rotation_affine(flips=(-1, 1, -1), rot_deg=-40.0),
}


@pytest.mark.parametrize("key", sorted(AFFINES))
def test_display_voxels_keep_their_world_position(tmp_path, key):
    aff = AFFINES[key]
    data = _unique_data()
    path = save_nifti(tmp_path / "a.nii.gz", data, aff)
    vol = load(path)
    assert vol.source_format == "nifti" and vol.name == "a"
    # slices run along the stored last axis, in file order
    assert vol.n_slices == SHAPE[2]
    assert sorted(vol.array.shape[1:]) == sorted(SHAPE[:2])
    for k in range(SHAPE[2]):
        assert set(np.unique(vol.array[k])) == set(np.unique(data[:, :, k]))
    # each display voxel's world position (display affine) equals its source voxel's (file affine)
    src_world = _world_of_stored(aff, SHAPE)
    lookup = {int(v): src_world[i, j, k] for (i, j, k), v in np.ndenumerate(data)}
    disp_world = _world_of_display(vol)
    expected = np.array([lookup[int(v)] for v in vol.array.ravel()]).reshape(disp_world.shape)
    np.testing.assert_allclose(disp_world, expected, atol=1e-6)
    # to_source gives back the stored order
    np.testing.assert_array_equal(vol.source.to_source(vol.array), data)


@pytest.mark.parametrize("key", sorted(AFFINES))
def test_display_axes_point_left_posterior_inferior(tmp_path, key):
    vol = load(save_nifti(tmp_path / "a.nii", _unique_data(), AFFINES[key]))
    col_dir, row_dir = vol.affine[:3, 0], vol.affine[:3, 1]
    col_axis, row_axis = int(np.argmax(np.abs(col_dir))), int(np.argmax(np.abs(row_dir)))
    assert col_axis < row_axis, "columns follow the lower world axis (x < y < z)"
    assert col_dir[col_axis] < 0 and row_dir[row_axis] < 0, "in-plane axes run towards decreasing RAS"


def test_axial_ras_shows_anterior_on_top_and_right_on_the_left(tmp_path):
    data = np.zeros((4, 3, 2), np.int16)
    data[3, :, :] = 10  # patient right edge (highest x in RAS+)
    data[:, 2, :] += 1  # anterior edge (highest y)
    vol = load(save_nifti(tmp_path / "ax.nii.gz", data, np.eye(4)))
    assert vol.shape == (2, 3, 4)
    assert np.all(vol.array[:, :, 0] >= 10) and np.all(vol.array[:, :, 1:] < 10)  # patient right on the viewer's left
    assert np.all(vol.array[:, 0, :] % 10 == 1) and np.all(vol.array[:, 1:, :] % 10 == 0)  # anterior at the top


def test_round_trip_mask_lands_on_source_voxels(tmp_path):
    aff = AFFINES["oblique_flipped"]
    data = _unique_data()
    src = save_nifti(tmp_path / "img.nii.gz", data, aff, sform_code=2, qform_code=1)
    vol = load(src)
    mask = (vol.array % 3 == 0).astype(np.uint8)
    mask[vol.array == 7] = 2
    out = write_mask_nifti(mask, vol, tmp_path / "out" / "img_mask.nii.gz")
    img_in, img_out = nib.load(src), nib.load(out)
    np.testing.assert_allclose(img_out.affine, img_in.affine, atol=1e-5)
    assert img_out.shape == img_in.shape
    assert img_out.get_data_dtype() == np.uint8
    assert int(img_out.header["sform_code"]) == 2 and int(img_out.header["qform_code"]) == 1
    np.testing.assert_allclose(img_out.header.get_sform(), img_in.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(img_out.header.get_qform(), img_in.header.get_qform(), atol=1e-5)
    got = np.asarray(img_out.dataobj)
    expected = (data % 3 == 0).astype(np.uint8)
    expected[data == 7] = 2
    np.testing.assert_array_equal(got, expected)
    # and reading the mask back gives the display-order mask
    np.testing.assert_array_equal(load(out).array, mask)


def test_2d_nifti_is_one_slice_and_writes_back_2d(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(4, 3)
    src = save_nifti(tmp_path / "flat.nii", data, np.eye(4))
    vol = load(src)
    assert vol.shape == (1, 3, 4)
    out = write_mask_nifti((vol.array > 5).astype(np.uint8), vol, tmp_path / "m.nii.gz")
    assert nib.load(out).shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), (data > 5).astype(np.uint8))


def test_4d_needs_a_time_index(tmp_path):
    data = np.stack([np.full((4, 4, 3), t, np.float32) for t in range(5)], axis=-1)
    path = save_nifti(tmp_path / "cine.nii.gz", data, np.eye(4))
    with pytest.raises(DimensionError, match=r"4D.*time-index"):
        load(path)
    vol = load(path, time_index=3)
    assert vol.shape == (3, 4, 4) and np.all(vol.array == 3)
    assert vol.source.extra["time_index"] == 3
    with pytest.raises(DimensionError, match="out of range"):
        load(path, time_index=5)


def test_trailing_singleton_axis_is_dropped(tmp_path):
    vol = load(save_nifti(tmp_path / "a.nii", np.ones((4, 3, 2, 1), np.int16), np.eye(4)))
    assert vol.shape == (2, 3, 4)


@pytest.mark.parametrize("shape", [(10,), (2, 2, 2, 2, 2)])
def test_1d_and_5d_are_refused(tmp_path, shape):
    path = save_nifti(tmp_path / "bad.nii", np.ones(shape, np.float32), np.eye(4))
    with pytest.raises(DimensionError, match=r"\dD"):
        load(path)


def test_nan_voxels_are_refused_with_a_count(tmp_path):
    data = np.zeros((4, 4, 2), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    with pytest.raises(InvalidValuesError, match=r"2 of 32 voxels"):
        load(save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))


def test_modality_guess(tmp_path):
    ct = np.full((4, 4, 2), -1024, np.int16)
    ct[1:3, 1:3] = 40
    assert load(save_nifti(tmp_path / "ct.nii", ct, np.eye(4))).modality == "CT"
    assert load(save_nifti(tmp_path / "mr.nii", np.random.rand(4, 4, 2).astype(np.float32), np.eye(4))).modality == "MR"
    assert load(save_nifti(tmp_path / "u8.nii", np.full((4, 4, 2), 200, np.uint8), np.eye(4))).modality == "OT"


def test_scaled_data_is_float(tmp_path):
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, tmp_path / "s.nii")
    vol = load(tmp_path / "s.nii")
    assert vol.array.dtype == np.float32
    assert sorted(np.unique(vol.array).tolist()) == [10 + 0.5 * i for i in range(8)]


def test_empty_file(tmp_path):
    (tmp_path / "e.nii.gz").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load(tmp_path / "e.nii.gz")


def test_truncated_gzip(tmp_path):
    save_nifti(tmp_path / "ok.nii.gz", np.random.rand(20, 20, 20).astype(np.float32), np.eye(4))
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated|damaged"):
        load(tmp_path / "t.nii.gz")


def test_truncated_uncompressed(tmp_path):
    save_nifti(tmp_path / "ok.nii", np.random.rand(20, 20, 20).astype(np.float32), np.eye(4))
    raw = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "t.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        load(tmp_path / "t.nii")


def test_random_bytes_with_nifti_suffix(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "r.nii").write_bytes(rng.bytes(2000))
    (tmp_path / "r2.nii.gz").write_bytes(rng.bytes(2000))
    (tmp_path / "h.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    for name in ("r.nii", "r2.nii.gz", "h.nii.gz"):
        with pytest.raises(CorruptFileError, match="NIfTI"):
            load(tmp_path / name)


def test_voxel_budget_is_checked_before_reading(tmp_path):
    # header says 200x200x200 but the data is cut: a TooLargeError (not a read error) proves no read happened
    save_nifti(tmp_path / "big.nii", np.zeros((200, 200, 200), np.uint8), np.eye(4))
    with open(tmp_path / "big.nii", "r+b") as fh:
        fh.truncate(1000)
    assert os.path.getsize(tmp_path / "big.nii") == 1000
    with pytest.raises(TooLargeError, match="8,000,000 voxels exceeds the budget of 1,000,000"):
        load(tmp_path / "big.nii", max_voxels=1_000_000)
