"""Helpers shared by the readers: budgets, natural sort, display orientation, value checks.

Display orientation (see :mod:`promptonce.types`): a stored voxel array ``(i, j, k)`` with a
voxel-to-RAS+ affine is shown with the slices along ``k`` (file order, never flipped); of the two
in-plane axes, the one whose dominant world axis has the lower index (x < y < z) becomes the
columns, the other the rows, and each is flipped if needed so that it runs towards *decreasing*
RAS coordinates (towards patient Left, Posterior, Inferior). An axial RAS+ file therefore shows
anterior at the top and the patient's right on the viewer's left; a DICOM axial series in its
usual LPS storage is shown exactly as stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidValuesError, TooLargeError
from ..types import Modality

log = logging.getLogger(__name__)

#: Largest number of voxels a reader allocates unless told otherwise (512 x 512 x 2000, ~2 GB as float32).
DEFAULT_MAX_VOXELS: int = 512 * 512 * 2000

#: Largest total uncompressed size extracted from one zip archive, in bytes (4 GiB).
DEFAULT_MAX_ZIP_BYTES: int = 4 * 1024**3

#: Largest compression ratio accepted for a zip member bigger than 16 MiB (zip-bomb guard).
DEFAULT_MAX_ZIP_RATIO: float = 1000.0

#: Suffixes stripped from file names to make case names (longest first).
NAME_SUFFIXES: tuple[str, ...] = (
    ".nii.gz", ".nii", ".hdr", ".img", ".npy", ".npz", ".dcm", ".dicom", ".ima",
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".zip", ".gz",
)

_IDENTITY_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def natural_key(text: str | Path) -> tuple[object, ...]:
    """Sort key that orders numbers by value: ``img2`` before ``img10`` (case-insensitive)."""
    parts = re.split(r"(\d+)", str(text).lower())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def natural_sorted(paths: Sequence[Path]) -> list[Path]:
    """Returns ``paths`` in natural order of their full path strings."""
    return sorted(paths, key=natural_key)


def case_name(path: str | Path) -> str:
    """The case name of a file: its name without the known suffixes (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    low = name.lower()
    for suffix in NAME_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def check_voxels(shape: Sequence[int], max_voxels: int, what: str) -> None:
    """Refuses data larger than the voxel budget, before anything is allocated.

    Raises:
        TooLargeError: when ``prod(shape) > max_voxels``.
    """
    n = 1
    for s in shape:
        n *= int(s)
    if n > max_voxels:
        raise TooLargeError(
            f"{what}: {tuple(int(s) for s in shape)} = {n:,} voxels exceeds the budget of {max_voxels:,}. "
            "Crop or downsample it first, or raise the budget (max_voxels=... / --max-voxels) if this "
            "machine has the memory."
        )


def check_finite(array: np.ndarray, what: str) -> None:
    """Raises :class:`InvalidValuesError` when a float array holds NaN or inf.

    Policy: PromptOnce never silently replaces non-finite voxels (a NaN would turn into an arbitrary
    grey level); the user fixes the file (e.g. ``np.nan_to_num``) and loads it again.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InvalidValuesError(
            f"{what}: {bad:,} of {array.size:,} voxels are NaN or infinite. PromptOnce does not guess "
            "values for them; replace them (e.g. with numpy.nan_to_num or the background value) and load "
            "the file again."
        )


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """float64 -> float32, bool -> uint8, wide integers -> int16/uint16 when the values fit; else unchanged."""
    if array.dtype == np.float64 or array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 2 and array.size:
        lo, hi = int(array.min()), int(array.max())
        if -32768 <= lo and hi <= 32767:
            return array.astype(np.int16)
        if 0 <= lo and hi <= 65535:
            return array.astype(np.uint16)
    return array


def display_ornt(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation ``(3, 2)`` taking a stored 3D array to display ``(cols, rows, slices)``.

    Args:
        affine: ``(4, 4)`` voxel-to-RAS+ affine of the stored array.

    Returns:
        float array ``(3, 2)``: row ``i`` = ``[display axis of stored axis i, +1 keep / -1 flip]``;
        stored axis 2 always becomes the slice axis unflipped.

    Raises:
        InvalidValuesError: the affine holds NaN or inf.
    """
    from nibabel.orientations import io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InvalidValuesError(
            "the voxel-to-world affine holds NaN or inf (broken pixel spacing, orientation or position in the "
            "header); fix the file's geometry (e.g. re-export or re-convert it) and load it again."
        )
    ornt = np.asarray(io_orientation(affine), dtype=float)
    if not np.all(np.isfinite(ornt[:2])):
        log.warning("degenerate affine %s: showing the array as stored", np.round(affine, 3).tolist())
        return _IDENTITY_ORNT.copy()
    w0, w1 = ornt[0, 0], ornt[1, 0]
    col_axis, row_axis = (0, 1) if w0 <= w1 else (1, 0)
    out = np.zeros((3, 2), dtype=float)
    out[col_axis] = [0, -ornt[col_axis, 1]]
    out[row_axis] = [1, -ornt[row_axis, 1]]
    out[2] = [2, 1]
    return out


def to_display(stored: np.ndarray, affine: np.ndarray, ornt: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puts a stored 3D array in display order.

    Args:
        stored: array ``(i, j, k)`` as stored in the file.
        affine: its ``(4, 4)`` voxel-to-RAS+ affine.
        ornt: the orientation to apply; default :func:`display_ornt` of ``affine``.

    Returns:
        ``(display, display_affine, ornt)``: display array ``(slices, rows, cols)`` (C-contiguous),
        the ``(4, 4)`` affine from ``(col, row, slice, 1)`` to RAS+ mm, and the orientation used.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    if ornt is None:
        ornt = display_ornt(affine)
    xyz = apply_orientation(stored, ornt)  # (cols, rows, slices)
    display = np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)))
    display_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, stored.shape)
    return display, display_affine, ornt


def guess_modality(array: np.ndarray) -> Modality:
    """Guesses the modality of a volume without metadata (NIfTI, NumPy).

    Rule (simple on purpose): ``"CT"`` when the minimum is between -3100 and -500 (air at about
    -1000 HU, padding down to -3024); ``"OT"`` for integer data within 0..255 (already windowed
    8-bit pictures); ``"MR"`` otherwise.
    """
    if array.size == 0:
        return "OT"
    lo = float(np.min(array))
    hi = float(np.max(array))
    if -3100.0 <= lo <= -500.0 and hi <= 40000.0:
        return "CT"
    if np.issubdtype(array.dtype, np.integer) and lo >= 0 and hi <= 255:
        return "OT"
    return "MR"


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey from RGB(A) ``(..., 3|4)``: one channel when R == G == B, else ITU-R 601 luminance float32."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return np.ascontiguousarray(r)
    return (0.299 * r.astype(np.float32) + 0.587 * g.astype(np.float32) + 0.114 * b.astype(np.float32)).astype(
        np.float32
    )
