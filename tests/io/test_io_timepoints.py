"""4D inputs: count the time points from the headers and read one (issue 13, item 5)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from iosynth import save_nifti, write_series
from PIL import Image

from promptonce.errors import DimensionError
from promptonce.io.readers import load
from promptonce.io.timepoints import TimePoints, read_time_point, time_points


def test_nifti_4d_count_step_and_read(tmp_path):
    data = np.stack([np.full((6, 5, 4), t, np.int16) for t in range(3)], axis=-1)  # (x, y, z, t)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 2500.0
    nib.save(img, tmp_path / "fmri.nii.gz")
    tp = time_points(tmp_path / "fmri.nii.gz")
    assert tp == TimePoints(3, 2.5) and tp.is_4d
    assert tp.labels() == ["t=0 (0 s)", "t=1 (2.5 s)", "t=2 (5 s)"]
    vol = read_time_point(tmp_path / "fmri.nii.gz", 2)
    assert vol.shape == (4, 5, 6) and (vol.array == 2).all()
    assert (read_time_point(tmp_path / "fmri.nii.gz", -1).array == 2).all()
    with pytest.raises(DimensionError, match="0..2"):
        read_time_point(tmp_path / "fmri.nii.gz", 3)


def test_3d_and_2d_inputs_have_one_time_point(tmp_path):
    p = save_nifti(tmp_path / "ct.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    assert time_points(p) == TimePoints(1) and not time_points(p).is_4d
    assert read_time_point(p, 0).shape == (4, 5, 6)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert time_points(tmp_path / "x.png").count == 1
    # a 4D NIfTI whose 4th axis has length 1 is 3D
    save_nifti(tmp_path / "t1.nii.gz", np.zeros((6, 5, 4, 1), np.int16), np.eye(4))
    assert time_points(tmp_path / "t1.nii.gz").count == 1


def test_numpy_4d(tmp_path):
    arr = np.stack([np.full((2, 3, 4), t, np.float32) for t in range(5)])  # (time, slices, rows, cols)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", image=arr, affine=np.eye(4))
    assert time_points(tmp_path / "a.npy").count == 5 and time_points(tmp_path / "b.npz").count == 5
    assert (read_time_point(tmp_path / "b.npz", 3).array == 3).all()


def test_dicom_series_with_two_images_per_position(tmp_path):
    folder = tmp_path / "cine"
    stored = np.concatenate([np.zeros((3, 8, 8), np.int16), np.full((3, 8, 8), 7, np.int16)])
    extra = [{"TemporalPositionIdentifier": 1}] * 3 + [{"TemporalPositionIdentifier": 2}] * 3
    write_series(folder, stored, positions_override=[0, 1, 2, 0, 1, 2], extra_per_slice=extra, modality="MR",
                 intercept=0.0, rng=np.random.default_rng(5))
    tp = time_points(folder)
    assert tp.count == 2 and tp.kind == "time or echo"
    assert (read_time_point(folder, 1).array == 7).all()
    plain = tmp_path / "plain"
    write_series(plain, np.zeros((3, 8, 8), np.int16), rng=np.random.default_rng(1))
    assert time_points(plain).count == 1
    assert load(plain).n_slices == 3
