"""DICOM reader: sorting, rescale, geometry (oblique/sagittal, anisotropic), multi-series, 4D, X-rays, SEG."""

from __future__ import annotations

import logging
import zipfile

import nibabel as nib
import numpy as np
import pytest
from iosynth import AXIAL, CORONAL, SAGITTAL, make_dataset, oblique_iop, ras_affine, save_nifti, world_ras, write_series

from promptonce.errors import CorruptFileError, DimensionError, InputError
from promptonce.io.readers import load, load_dataset, load_reference
from promptonce.io.writers import write_dicom_seg, write_mask_nifti

N, ROWS, COLS = 6, 9, 11
IPP0 = (-50.0, 20.0, 100.0)
SPACING = (0.8, 0.6)  # (row spacing, column spacing) as in PixelSpacing
STEP = 2.5


def _stored() -> np.ndarray:
    """(slices, rows, cols) raw values, all distinct so that each voxel can be found by value."""
    return np.arange(N * ROWS * COLS, dtype=np.int16).reshape(N, ROWS, COLS)


def _series(tmp_path, iop, name="series", **kw):
    folder = tmp_path / name
    write_series(folder, _stored(), iop=iop, ipp0=IPP0, pixel_spacing=SPACING, step=STEP,
                 rng=np.random.default_rng(3), **kw)
    return folder


def test_axial_series_sorted_by_position_with_hu(tmp_path):
    folder = _series(tmp_path, AXIAL)
    vol = load(folder)
    assert vol.source_format == "dicom" and vol.modality == "CT"
    assert vol.shape == (N, ROWS, COLS)
    # an axial series in the usual orientation is displayed as stored, slices inferior -> superior
    np.testing.assert_array_equal(vol.array, _stored().astype(np.int32) - 1024)
    assert vol.array.dtype == np.int16
    assert vol.array.min() < -500
    np.testing.assert_allclose(vol.spacing, (0.6, 0.8, 2.5))
    assert len(vol.source.extra["datasets"]) == N
    assert not hasattr(vol.source.extra["datasets"][0], "PixelData") or "PixelData" not in vol.source.extra["datasets"][0]


@pytest.mark.parametrize("iop", [SAGITTAL, CORONAL, oblique_iop(20, 35), oblique_iop(-60, 110)],
                         ids=["sagittal", "coronal", "oblique1", "oblique2"])
def test_world_coordinates_follow_dicom_geometry(tmp_path, iop):
    vol = load(_series(tmp_path, iop))
    raw = _stored()
    for c, r, k in [(0, 0, 0), (COLS - 1, 0, 0), (0, ROWS - 1, N - 1), (5, 4, 3), (COLS - 1, ROWS - 1, N - 1)]:
        value = int(raw[k, r, c]) - 1024
        s_, r_, c_ = (int(v[0]) for v in np.nonzero(vol.array == value))
        got = vol.affine @ np.array([c_, r_, s_, 1.0])
        np.testing.assert_allclose(got[:3], world_ras(c, r, k, iop, IPP0, SPACING, STEP), atol=1e-4)
    # anisotropic spacing survives (columns/rows may be swapped by the display orientation)
    assert sorted(np.round(vol.spacing, 6)) == sorted([0.6, 0.8, 2.5])
    np.testing.assert_allclose(vol.source.affine, ras_affine(iop, IPP0, SPACING, STEP), atol=1e-6)


def test_sagittal_display_has_anterior_left_superior_top(tmp_path):
    vol = load(_series(tmp_path, SAGITTAL))
    col_dir, row_dir = vol.affine[:3, 0], vol.affine[:3, 1]
    assert np.argmax(np.abs(col_dir)) == 1 and col_dir[1] < 0  # columns run towards posterior
    assert np.argmax(np.abs(row_dir)) == 2 and row_dir[2] < 0  # rows run towards inferior


@pytest.mark.parametrize("iop", [AXIAL, oblique_iop(15, -25)], ids=["axial", "oblique"])
def test_dicom_and_its_nifti_conversion_agree(tmp_path, iop):
    folder = _series(tmp_path, iop)
    hu = (_stored().astype(np.int32) - 1024).astype(np.int16)
    nii = save_nifti(tmp_path / "conv.nii.gz", np.transpose(hu, (2, 1, 0)), ras_affine(iop, IPP0, SPACING, STEP))
    vd, vn = load(folder), load(nii)
    np.testing.assert_array_equal(vd.array, vn.array)
    np.testing.assert_allclose(vd.affine, vn.affine, atol=1e-5)
    for idx in [(0, 0, 0), (N - 1, ROWS - 1, COLS - 1), (2, 3, 4)]:
        s, r, c = idx
        np.testing.assert_allclose(vd.affine @ [c, r, s, 1], vn.affine @ [c, r, s, 1], atol=1e-5)
    # a mask written for the DICOM input lands on the NIfTI conversion's grid
    mask = (vd.array % 5 == 0).astype(np.uint8)
    out = write_mask_nifti(mask, vd, tmp_path / "m.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, nib.load(nii).affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.transpose((hu % 5 == 0).astype(np.uint8), (2, 1, 0)))
    # and the NIfTI conversion serves as a reference for the DICOM image
    ref = load_reference(out, vd)
    np.testing.assert_array_equal(ref.array, mask)


def test_several_series_choose_largest_and_warn(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_series(folder, _stored(), series_uid="1.2.3.4.5", names=[f"a{i}.dcm" for i in range(N)])
    write_series(folder, _stored()[:3], series_uid="1.2.3.4.6", names=[f"b{i}.dcm" for i in range(3)])
    (folder / "README.txt").write_text("not dicom")
    with caplog.at_level(logging.WARNING):
        vol = load(folder)
    assert vol.n_slices == N
    warnings = vol.source.extra["warnings"]
    assert any("found 2 DICOM image series" in w for w in warnings)
    assert "largest" in caplog.text


def test_several_images_per_position_need_time_index(tmp_path):
    folder = tmp_path / "cine"
    stored = np.concatenate([_stored()[:3], _stored()[:3] + 1000])
    extra = [{"TemporalPositionIdentifier": 1}] * 3 + [{"TemporalPositionIdentifier": 2}] * 3
    write_series(folder, stored, positions_override=[0, 1, 2, 0, 1, 2], extra_per_slice=extra, modality="MR",
                 intercept=0.0, rng=np.random.default_rng(5))
    with pytest.raises(DimensionError, match=r"2 images at each of its 3 positions.*time-index"):
        load(folder)
    v1 = load(folder, time_index=1)
    np.testing.assert_array_equal(v1.array, _stored()[:3] + 1000)
    assert v1.modality == "MR"


def test_single_file_xray(tmp_path):
    px = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 7)
    ds = make_dataset(px, modality="DX", iop=None, ipp=None, pixel_spacing=None, imager_spacing=(0.15, 0.2),
                      intercept=0.0, photometric="MONOCHROME2")
    ds.BitsStored = 12
    ds.HighBit = 11
    path = tmp_path / "chest.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = load(path)
    assert vol.shape == (1, 12, 10) and vol.modality == "XR" and vol.name == "chest"
    np.testing.assert_array_equal(vol.array[0], px)
    np.testing.assert_allclose(vol.spacing[:2], (0.2, 0.15))


def test_monochrome1_is_inverted(tmp_path):
    px = np.array([[0, 100], [4095, 50]], np.uint16)
    ds = make_dataset(px, modality="CR", iop=None, ipp=None, intercept=0.0, photometric="MONOCHROME1")
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.save_as(tmp_path / "cr.dcm", enforce_file_format=True)
    vol = load(tmp_path / "cr.dcm")
    np.testing.assert_array_equal(vol.array[0], 4095 - px.astype(np.int32))


def test_xray_set_in_load_dataset(tmp_path):
    for i, shape in enumerate([(8, 6), (5, 7)]):
        ds = make_dataset(np.ones(shape, np.uint16), modality="DX", iop=None, ipp=None, intercept=0.0,
                          series_uid=f"1.2.3.{i}")
        ds.save_as(tmp_path / f"xr{i}.dcm", enforce_file_format=True)
    dset = load_dataset(tmp_path)
    assert dset.names == ["xr0", "xr1"]
    assert [v.shape for v in dset] == [(1, 8, 6), (1, 5, 7)]
    with pytest.raises(DimensionError, match="differ in size"):
        load(tmp_path)


def test_zip_of_series(tmp_path):
    folder = _series(tmp_path, AXIAL)
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"deep/dir/{f.name}")
    vol = load(z)
    np.testing.assert_array_equal(vol.array, load(folder).array)
    assert vol.name == "series"


def test_dataset_of_series_folders(tmp_path):
    _series(tmp_path / "root", AXIAL, name="case1")
    _series(tmp_path / "root", SAGITTAL, name="case2")
    dset = load_dataset(tmp_path / "root")
    assert dset.names == ["case1", "case2"]
    assert dset[1].n_slices == N


def test_truncated_pixel_data(tmp_path):
    folder = _series(tmp_path, AXIAL)
    f = sorted(folder.iterdir())[0]
    raw = f.read_bytes()
    f.write_bytes(raw[:-40])
    with pytest.raises(CorruptFileError, match="pixel data"):
        load(folder)


def test_dicom_seg_export(tmp_path):
    import highdicom as hd

    vol = load(_series(tmp_path, oblique_iop(10, 20)))
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:4, 2:6, 3:8] = 1
    labels[2, 0:2, 0:2] = 2
    out = write_dicom_seg(labels, vol, tmp_path / "seg.dcm", segment_names={1: "lesion", 2: "vessel"})
    seg = hd.seg.segread(out)
    assert str(seg.PatientName) == "ANONYMOUS" and seg.PatientID == "ANONYMOUS"
    assert "PatientBirthDate" not in seg or seg.PatientBirthDate == ""
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lesion", "vessel"]
    assert seg.StudyInstanceUID == vol.source.extra["datasets"][0].StudyInstanceUID
    # voxel count per segment survives the export (frames are in source order)
    segvol = seg.get_volume(combine_segments=True)
    arr = segvol.array
    assert int((arr == 1).sum()) == int((labels == 1).sum())
    assert int((arr == 2).sum()) == int((labels == 2).sum())
    # and they sit at the same place in the patient: compare the centroids in RAS+ mm
    for lab_id in (1, 2):
        ijk = np.argwhere(arr == lab_id).mean(axis=0)  # highdicom: (slice, row, col) -> LPS
        lps = segvol.affine @ np.append(ijk, 1.0)
        src = np.argwhere(labels == lab_id).mean(axis=0)  # ours: (slice, row, col) display
        ras = vol.affine @ np.array([src[2], src[1], src[0], 1.0])
        np.testing.assert_allclose([-lps[0], -lps[1], lps[2]], ras[:3], atol=1e-3)


def test_dicom_seg_needs_dicom_input(tmp_path):
    vol = load(save_nifti(tmp_path / "a.nii", np.ones((3, 3, 2), np.int16), np.eye(4)))
    with pytest.raises(InputError, match="DICOM input"):
        write_dicom_seg(np.ones(vol.shape, np.uint8), vol, tmp_path / "seg.dcm")


def test_enhanced_multiframe_sorted_by_position(tmp_path):
    from iosynth import write_enhanced

    iop = oblique_iop(5, 30)
    path = write_enhanced(tmp_path / "enh.dcm", _stored(), iop=iop, ipp0=IPP0, pixel_spacing=SPACING, step=STEP)
    vol = load(path)
    ref = load(_series(tmp_path, iop))
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 1:3, 1:3] = 1
    out = write_dicom_seg(labels, vol, tmp_path / "seg.dcm")
    import highdicom as hd

    assert int((hd.seg.segread(out).get_volume(combine_segments=True).array == 1).sum()) == 4
