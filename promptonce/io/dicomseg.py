"""DICOM Segmentation (DICOM-SEG) files as reference label maps of a DICOM image.

A DICOM-SEG references the images it segments by SOP Instance UID; each of its segments (numbered
1, 2, ...) becomes that label value on the image's display grid, and the segment labels become the
map's label names. Only SEGs of the series that was loaded as the image can be read (the frames are
matched to the image's own slices, so no geometry is guessed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, InputError, ReferenceMismatchError
from ..types import Volume
from ._common import to_display

__all__ = ["is_dicom_seg", "read_dicom_seg"]

log = logging.getLogger(__name__)


def is_dicom_seg(path: str | Path) -> bool:
    """True when ``path`` is a DICOM file whose Modality is ``SEG`` (header only)."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
    except Exception:  # noqa: BLE001 - not DICOM, or unreadable: not a SEG
        return False
    return str(getattr(ds, "Modality", "")) == "SEG" or str(getattr(ds, "SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.66.4"


def read_dicom_seg(path: str | Path, image: Volume) -> tuple[np.ndarray, dict[int, str]]:
    """Reads a DICOM-SEG as a label map on ``image``'s display grid.

    Args:
        path: the DICOM-SEG file.
        image: the DICOM volume it segments (read by :func:`promptonce.io.dicom.read_dicom`, which keeps
            the source headers in ``image.source.extra["datasets"]``).

    Returns:
        ``(labels, names)``: uint8 ``(slices, rows, cols)`` label map in display order (segment
        number = value, 0 = background; slices the SEG does not cover are 0), and
        ``{segment number: segment label}``.

    Raises:
        ReferenceMismatchError: the image is not DICOM, or the SEG references none of its slices.
        CorruptFileError: highdicom cannot read the SEG.
        InputError: segments overlap (a label map holds one label per pixel).
    """
    import highdicom as hd

    p = Path(path)
    geo = image.source
    datasets = list(geo.extra.get("datasets") or []) if geo is not None else []
    if image.source_format != "dicom" or geo is None or not datasets:
        raise ReferenceMismatchError(
            f"{p.name}: a DICOM-SEG reference needs its DICOM series as the image; {image.name} is "
            f"{image.source_format}. Load the DICOM series, or give the reference as NIfTI."
        )
    if len(datasets) != image.n_slices:
        raise ReferenceMismatchError(
            f"{p.name}: the image {image.name} comes from a multi-frame DICOM file; DICOM-SEG references are read "
            "for single-frame series only. Give the reference as NIfTI."
        )
    try:
        seg = hd.seg.segread(str(p))
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise many types for a bad file
        raise CorruptFileError(f"{p.name}: not a readable DICOM-SEG ({type(exc).__name__}: {exc}).") from exc
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    referenced = {str(u) for _, _, u in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise ReferenceMismatchError(
            f"{p.name}: this DICOM-SEG segments another series than {image.name} (none of its slices is referenced). "
            "Check the pairing."
        )
    try:
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True, dtype=np.uint8
        )
    except ValueError as exc:
        raise InputError(f"{p.name}: cannot make one label map from this DICOM-SEG ({exc}).") from exc
    stored = np.transpose(np.asarray(frames), (2, 1, 0))  # (cols, rows, slices) as the source series is stored
    if geo.ornt is not None:
        display, _, _ = to_display(stored, geo.affine, geo.ornt)
    else:
        display = np.ascontiguousarray(np.asarray(frames))
    if display.shape != image.shape:
        raise ReferenceMismatchError(f"{p.name}: label map shape {display.shape} vs image {image.shape}.")
    names: dict[int, str] = {}
    for item in seg.SegmentSequence:
        label = str(getattr(item, "SegmentLabel", "") or "").strip()
        if label:
            names[int(item.SegmentNumber)] = label
    return display.astype(np.uint8, copy=False), names
