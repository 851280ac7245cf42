"""Small synthetic inputs for the io tests: DICOM series (pydicom), NIfTI files, images.

The DICOM geometry helpers compute world coordinates straight from the DICOM definition
(ImagePositionPatient + column/row steps along the direction cosines, LPS), independently of the
reader under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def oblique_iop(deg_a: float = 20.0, deg_b: float = 35.0) -> tuple[float, ...]:
    """An oblique orientation: the axial cosines rotated about x by ``deg_a`` then about z by ``deg_b``."""
    a, b = np.deg2rad(deg_a), np.deg2rad(deg_b)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    row = r @ np.array([1.0, 0, 0])
    col = r @ np.array([0, 1.0, 0])
    return tuple(float(v) for v in (*row, *col))


def series_geometry(
    iop: Sequence[float], ipp0: Sequence[float], pixel_spacing: tuple[float, float], step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(row_cos, col_cos, normal)`` and checks nothing: plain DICOM definitions."""
    row = np.asarray(iop[:3], float)
    col = np.asarray(iop[3:], float)
    return row, col, np.cross(row, col)


def world_ras(c: int, r: int, k: int, iop, ipp0, pixel_spacing, step) -> np.ndarray:
    """RAS+ mm of pixel (column c, row r) of the k-th slice (k-th along the normal) of a synthetic series."""
    row, col, normal = series_geometry(iop, ipp0, pixel_spacing, step)
    lps = np.asarray(ipp0, float) + k * step * normal + c * pixel_spacing[1] * row + r * pixel_spacing[0] * col
    return np.array([-lps[0], -lps[1], lps[2]])


def ras_affine(iop, ipp0, pixel_spacing, step) -> np.ndarray:
    """The (col, row, slice) -> RAS+ affine of a synthetic series (what a NIfTI conversion stores)."""
    row, col, normal = series_geometry(iop, ipp0, pixel_spacing, step)
    lps = np.eye(4)
    lps[:3, 0] = row * pixel_spacing[1]
    lps[:3, 1] = col * pixel_spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = ipp0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    iop: Sequence[float] | None = AXIAL,
    ipp: Sequence[float] | None = (0.0, 0.0, 0.0),
    pixel_spacing: tuple[float, float] | None = (0.7, 0.7),
    imager_spacing: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    for_uid: str | None = None,
    instance: int = 1,
    photometric: str = "MONOCHROME2",
    extra: dict | None = None,
):
    """One single-frame DICOM dataset holding ``pixels`` (2D, int16 or uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "CT": "1.2.840.10008.5.1.4.1.1.2",
        "MR": "1.2.840.10008.5.1.4.1.1.4",
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
        "CR": "1.2.840.10008.5.1.4.1.1.1",
    }[modality]
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid or "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.2"
    ds.FrameOfReferenceUID = for_uid or "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    ds.Manufacturer = "Synthetic"
    ds.PositionReferenceIndicator = ""
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = [float(v) for v in imager_spacing]
    ds.SliceThickness = 1.0
    pixels = np.asarray(pixels)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if modality in ("CT", "MR") or slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    iop: Sequence[float] = AXIAL,
    ipp0: Sequence[float] = (-50.0, 20.0, 100.0),
    pixel_spacing: tuple[float, float] = (0.8, 0.6),
    step: float = 2.5,
    intercept: float = -1024.0,
    slope: float = 1.0,
    modality: str = "CT",
    series_uid: str | None = None,
    names: Sequence[str] | None = None,
    rng: np.random.Generator | None = None,
    extra_per_slice: Sequence[dict] | None = None,
    positions_override: Sequence[int] | None = None,
) -> list[Path]:
    """Writes ``stored`` ``(slices, rows, cols)`` as a DICOM series, slice k at ``ipp0 + k * step * normal``.

    File names are shuffled (``names`` or random order) so that the reader must sort by position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = stored.shape[0]
    row, col, normal = series_geometry(iop, ipp0, pixel_spacing, step)
    order = np.arange(n)
    if rng is not None:
        order = rng.permutation(n)
    paths = []
    for idx, k in enumerate(order):
        pos_k = positions_override[k] if positions_override is not None else k
        ipp = np.asarray(ipp0, float) + pos_k * step * normal
        ds = make_dataset(
            stored[k], modality=modality, iop=iop, ipp=ipp, pixel_spacing=pixel_spacing, slope=slope,
            intercept=intercept, series_uid=series_uid, instance=int(idx) + 1,
            extra=None if extra_per_slice is None else extra_per_slice[k],
        )
        name = names[idx] if names is not None else f"IM{idx:04d}.dcm"
        p = folder / name
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, sform_code: int = 1, qform_code: int = 1) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    nib.save(img, str(path))
    return path


def rotation_affine(spacing=(0.9, 1.3, 2.7), origin=(10.0, -20.0, 30.0), perm=(0, 1, 2), flips=(1, 1, 1),
                    rot_deg: float = 0.0) -> np.ndarray:
    """A voxel->RAS affine: voxel axis i runs along world axis ``perm[i]`` with sign ``flips[i]``,
    scaled by ``spacing[i]``, then rotated about the world z axis by ``rot_deg``."""
    m = np.zeros((3, 3))
    for i in range(3):
        m[perm[i], i] = flips[i] * spacing[i]
    t = np.deg2rad(rot_deg)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ m
    aff[:3, 3] = origin
    return aff


def write_enhanced(path: Path, stored: np.ndarray, *, iop=AXIAL, ipp0=(-50.0, 20.0, 100.0), pixel_spacing=(0.8, 0.6),
                   step: float = 2.5, frame_order: Sequence[int] | None = None, intercept: float = -1024.0) -> Path:
    """Writes ``stored`` ``(slices, rows, cols)`` as ONE enhanced multi-frame CT file; frame f holds slice
    ``frame_order[f]`` (default: reversed, so that the reader must sort frames by position)."""
    from pydicom.dataset import Dataset

    n = stored.shape[0]
    order = list(frame_order) if frame_order is not None else list(range(n))[::-1]
    ds = make_dataset(stored[0], modality="CT", iop=None, ipp=None, pixel_spacing=None, intercept=0.0)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for tag in ("RescaleSlope", "RescaleIntercept"):
        if tag in ds:
            delattr(ds, tag)
    ds.NumberOfFrames = n
    row, col, normal = series_geometry(iop, ipp0, pixel_spacing, step)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [float(v) for v in pixel_spacing]
    pm.SliceThickness = step
    po = Dataset()
    po.ImageOrientationPatient = [float(v) for v in iop]
    pvt = Dataset()
    pvt.RescaleSlope = 1.0
    pvt.RescaleIntercept = intercept
    pvt.RescaleType = "HU"
    shared.PixelMeasuresSequence = [pm]
    shared.PlaneOrientationSequence = [po]
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for f in range(n):
        k = order[f]
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(v) for v in np.asarray(ipp0, float) + k * step * normal]
        item.PlanePositionSequence = [pp]
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = per
    ds.PixelData = np.ascontiguousarray(stored[order]).astype(stored.dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
