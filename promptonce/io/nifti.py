"""NIfTI reader (``.nii``, ``.nii.gz``; Analyze ``.hdr/.img`` pairs too) with nibabel.

The stored array ``(i, j, k)`` is put in display order ``(slices, rows, cols)`` (see
:mod:`promptonce.io._common`); the file's affine, shape, header and the reorientation are kept in
:class:`~promptonce.types.SourceGeometry` so that masks can be written back on the input's grid.

Dimensions: 2D ``(X, Y)`` files are one-slice volumes; trailing axes of length 1 beyond the third
are dropped; 4D files need ``time_index`` (the volume at that time point is read); 1D and 5D+
files are refused with :class:`~promptonce.errors.DimensionError`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, DimensionError, InvalidValuesError, UnsupportedFormatError
from ..types import SourceGeometry, Volume
from ._common import DEFAULT_MAX_VOXELS, case_name, check_finite, check_voxels, compact_dtype, guess_modality, to_display

log = logging.getLogger(__name__)

__all__ = ["read_nifti", "read_nifti_stored", "StoredNifti"]


@dataclass
class StoredNifti:
    """A NIfTI file's voxels as stored.

    Attributes:
        data: array with the file's spatial axes, 3D ``(i, j, k)`` (2D files get ``k`` = 1).
        affine: ``(4, 4)`` voxel-to-RAS+ affine (nibabel's ``img.affine``).
        header: a copy of the file's header.
        spatial_shape: the file's spatial shape (2 or 3 numbers, as stored).
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any
    spatial_shape: tuple[int, ...]


def _open(path: Path):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    if not path.is_file():
        raise CorruptFileError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    try:
        img = nib.load(str(path), mmap=False)
    except (ImageFileError, HeaderDataError) as exc:
        raise CorruptFileError(
            f"{path}: not a readable NIfTI file ({exc}). Check that it is really NIfTI and not truncated "
            "or renamed; re-export it if needed."
        ) from exc
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise CorruptFileError(f"{path}: cannot read the NIfTI header ({exc}); the file looks damaged.") from exc
    if not hasattr(img, "dataobj") or not hasattr(img, "affine") or img.affine is None:
        raise UnsupportedFormatError(f"{path}: nibabel opened it as {type(img).__name__}, which has no voxel grid.")
    return img


#: Largest expansion of a deflate (gzip) stream: 1032:1 in theory; a little margin on top.
_MAX_GZIP_RATIO = 1040


def _check_stored_size(img: Any, path: Path) -> None:
    """Refuses a header that declares more voxel bytes than its file can hold, before reading any voxel.

    A truncated file, or a tiny file whose header claims a huge array, would otherwise make nibabel
    allocate the whole declared array first. Uncompressed files must hold ``vox_offset + voxel bytes``;
    a gzip file cannot expand more than :data:`_MAX_GZIP_RATIO` times.

    Raises:
        CorruptFileError: the file is too short for what its header declares.
    """
    proxy = getattr(img, "dataobj", None)
    file_like = getattr(proxy, "file_like", None)
    offset = getattr(proxy, "offset", None)
    if not isinstance(file_like, (str, Path)) or offset is None:
        return
    data_path = Path(file_like)
    try:
        have = data_path.stat().st_size
        with open(data_path, "rb") as fh:
            magic = fh.read(4)
        need = int(offset) + int(np.prod([int(s) for s in proxy.shape], dtype=object)) * np.dtype(proxy.dtype).itemsize
    except (OSError, TypeError, ValueError):
        return  # nibabel reports these itself
    if magic[:2] == b"\x1f\x8b":
        limit = have * _MAX_GZIP_RATIO
    elif magic[:3] == b"BZh" or magic == b"\x28\xb5\x2f\xfd":
        return  # bzip2 / zstd: no useful bound on the ratio
    else:
        limit = have
    if need > limit:
        raise CorruptFileError(
            f"{path}: the header declares {need:,} bytes of voxel data (shape {tuple(proxy.shape)}, "
            f"{np.dtype(proxy.dtype)}) but the file holds {have:,} bytes{' compressed' if limit != have else ''}; "
            "it is truncated or its header is wrong. Copy or export it again."
        )


def read_nifti_stored(
    path: str | Path, *, time_index: int | None = None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> StoredNifti:
    """Reads a NIfTI file's spatial voxels in stored order (no reorientation).

    Args:
        path: the file.
        time_index: time point to read from a 4D file (0-based); required for 4D files.
        max_voxels: voxel budget, checked on the header before reading any voxel.

    Returns:
        :class:`StoredNifti`; ``data`` keeps integer dtypes (int16 CT stays int16), float64 becomes
        float32, scaled data (``scl_slope``) is float32.

    Raises:
        CorruptFileError: empty, truncated or undecodable file.
        DimensionError: 1D, 5D+, or 4D without ``time_index`` / with one out of range.
        TooLargeError: over ``max_voxels``.
        InvalidValuesError: NaN/inf voxels, or a NaN/inf affine.
    """
    path = Path(path)
    img = _open(path)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if any(s < 1 for s in shape):
        raise DimensionError(
            f"{path}: the header gives the image shape {tuple(img.shape)}, with a dimension of size 0 or less; the "
            "header is damaged. Export the file again."
        )
    if len(shape) < 2:
        raise DimensionError(
            f"{path}: the image has shape {tuple(img.shape)} ({len(shape)}D); PromptOnce needs a 2D image or a "
            "3D volume."
        )
    if len(shape) > 4:
        raise DimensionError(
            f"{path}: the image has shape {tuple(img.shape)} ({len(shape)}D); PromptOnce reads 2D, 3D, or 4D with "
            "a chosen time point. Extract one 3D volume first."
        )
    if len(shape) == 4:
        n_t = shape[3]
        if time_index is None:
            raise DimensionError(
                f"{path}: this is a 4D image {shape} with {n_t} time points. Choose one with time_index=... "
                f"(CLI: --time-index N, 0..{n_t - 1})."
            )
        if not -n_t <= time_index < n_t:
            raise DimensionError(f"{path}: time_index {time_index} is out of range; the file has {n_t} time points (0..{n_t - 1}).")
    elif time_index not in (None, 0):
        raise DimensionError(f"{path}: time_index={time_index} was given but the image is {len(shape)}D, not 4D.")
    spatial = shape[:3]
    check_voxels(spatial, max_voxels, str(path))
    _check_stored_size(img, path)
    try:
        if len(shape) == 4:
            raw = img.dataobj[..., time_index] if len(img.shape) == 4 else np.asanyarray(img.dataobj).reshape(shape)[..., time_index]
        else:
            raw = img.dataobj
        data = np.asanyarray(raw)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise CorruptFileError(
            f"{path}: the voxel data cannot be read ({exc}). The file is probably truncated; copy or export it again."
        ) from exc
    if data.dtype.fields is not None or np.issubdtype(data.dtype, np.complexfloating):
        raise UnsupportedFormatError(
            f"{path}: voxel type {data.dtype} (RGB or complex) is not supported; convert it to one grey value per voxel."
        )
    data = np.asarray(data).reshape(spatial)
    data = compact_dtype(data)
    check_finite(data, str(path))
    if data.ndim == 2:
        data = data[:, :, None]
    header = img.header.copy()
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InvalidValuesError(
            f"{path}: the header's voxel-to-world affine holds NaN or inf (pixdim, qform or sform is broken); "
            "fix the file's geometry (e.g. re-export it) and load it again."
        )
    return StoredNifti(data=data, affine=affine, header=header, spatial_shape=spatial)


def read_nifti(
    path: str | Path,
    *,
    time_index: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    name: str | None = None,
) -> Volume:
    """Reads a NIfTI file as a :class:`Volume` in display orientation.

    Args:
        path: ``.nii`` / ``.nii.gz`` file.
        time_index: time point of a 4D file.
        max_voxels: voxel budget.
        name: case name (default: file name without ``.nii.gz``).

    Returns:
        Volume with ``array`` ``(slices, rows, cols)``, ``affine`` from ``(col, row, slice)`` to RAS+ mm,
        ``source_format="nifti"``, a guessed modality (:func:`~promptonce.io._common.guess_modality`)
        and ``source`` holding the file's affine, spatial shape, header and reorientation.
    """
    path = Path(path)
    stored = read_nifti_stored(path, time_index=time_index, max_voxels=max_voxels)
    display, display_affine, ornt = to_display(stored.data, stored.affine)
    extra: dict[str, Any] = {"path": str(path)}
    if time_index is not None:
        extra["time_index"] = int(time_index)
    source = SourceGeometry(
        affine=stored.affine, shape=stored.spatial_shape, ornt=ornt, header=stored.header, extra=extra
    )
    return Volume(
        array=display,
        affine=display_affine,
        name=name or case_name(path),
        source_format="nifti",
        modality=guess_modality(display),
        window=None,
        source=source,
    )
