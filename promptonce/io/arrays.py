"""NumPy reader (``.npy``, ``.npz``).

Arrays are taken as already in display order:

* 2D ``(rows, cols)`` -> one slice;
* 3D ``(slices, rows, cols)``; an 8-bit ``(rows, cols, 3|4)`` array is read as one RGB(A) picture
  and turned to grey;
* 4D ``(time, slices, rows, cols)`` needs ``time_index``;
* other ranks are refused.

An ``.npz`` must hold one array, or an array named ``image`` (also ``volume``, ``data``, ``arr_0``);
an optional ``affine`` (4x4, from ``(col, row, slice, 1)`` to RAS+ mm) is used when present, else
the identity. Object (pickled) arrays are refused: loading them could run code.
"""

from __future__ import annotations

import logging
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, DimensionError, InvalidValuesError, UnsupportedFormatError
from ..types import Volume
from ._common import DEFAULT_MAX_VOXELS, case_name, check_finite, check_voxels, compact_dtype, guess_modality, luminance

log = logging.getLogger(__name__)

__all__ = ["read_numpy", "read_numpy_array"]

_IMAGE_KEYS = ("image", "volume", "data", "arr_0")


def _npy_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, what: str, time_index: int | None, max_voxels: int) -> None:
    if dtype.hasobject:
        raise UnsupportedFormatError(f"{what}: holds Python objects (pickled data), which PromptOnce does not load; save a numeric array.")
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating) or not (
        np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)
    ):
        raise UnsupportedFormatError(f"{what}: dtype {dtype} is not a real number type; save a numeric array.")
    if len(shape) not in (2, 3, 4):
        raise DimensionError(
            f"{what}: array of shape {shape} ({len(shape)}D); PromptOnce reads (rows, cols), (slices, rows, cols) or "
            "(time, slices, rows, cols) with a time_index."
        )
    if len(shape) == 4:
        if time_index is None:
            raise DimensionError(
                f"{what}: 4D array {shape} read as (time, slices, rows, cols); choose a time point with time_index=... "
                f"(CLI: --time-index N, 0..{shape[0] - 1})."
            )
        if not -shape[0] <= time_index < shape[0]:
            raise DimensionError(f"{what}: time_index {time_index} out of range 0..{shape[0] - 1}.")
        check_voxels(shape[1:], max_voxels, what)
    else:
        check_voxels(shape, max_voxels, what)
    if min(shape) < 1:
        raise DimensionError(f"{what}: the array is empty (shape {shape}).")


#: Largest expansion of a deflated zip member (1032:1 in theory, plus a margin).
_MAX_DEFLATE_RATIO = 1040


def _check_member_size(info: zipfile.ZipInfo, header_bytes: int, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    """Refuses an ``.npz`` member whose header declares more data than the member holds, before allocating it."""
    need = header_bytes + int(np.prod(shape, dtype=object)) * dtype.itemsize
    limit = info.file_size
    if info.compress_type == zipfile.ZIP_DEFLATED:
        limit = min(limit, info.compress_size * _MAX_DEFLATE_RATIO)
    elif info.compress_type == zipfile.ZIP_STORED:
        limit = min(limit, info.compress_size)
    if need > limit:
        raise CorruptFileError(
            f"{what}: the array header declares {need:,} bytes (shape {shape}, {dtype}) but the archive member holds "
            f"at most {limit:,}; the file is truncated or its header is wrong. Save the array again."
        )


def read_numpy_array(
    path: str | Path, *, time_index: int | None = None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads the image array (and the optional affine of an ``.npz``), checking the shape before loading.

    Returns:
        ``(array, affine)``: array as stored (2D, 3D, or the chosen 3D time point of a 4D array);
        affine ``(4, 4)`` or None.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    affine = None
    try:
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as zf:
                members = {Path(n).stem if n.endswith(".npy") else n: n for n in zf.namelist()}
                keys = [k for k in members if k != "affine"]
                if len(keys) == 1:
                    key = keys[0]
                else:
                    key = next((k for k in _IMAGE_KEYS if k in members), None)
                    if key is None:
                        raise UnsupportedFormatError(
                            f"{path}: holds arrays {sorted(members)}; name the image array 'image' (or keep one array)."
                        )
                with zf.open(members[key]) as fp:
                    shape, dtype = _npy_header(fp)
                    header_bytes = fp.tell()
                _check_shape(shape, dtype, f"{path}[{key}]", time_index, max_voxels)
                _check_member_size(zf.getinfo(members[key]), header_bytes, shape, dtype, f"{path}[{key}]")
                with zf.open(members[key]) as fp:
                    arr = np.lib.format.read_array(fp, allow_pickle=False)
                four_d = arr.ndim == 4
                if four_d:
                    arr = arr[time_index]
                if "affine" in members:
                    with zf.open(members["affine"]) as fp:
                        affine = np.asarray(np.lib.format.read_array(fp, allow_pickle=False), dtype=np.float64)
                    if affine.shape != (4, 4):
                        raise DimensionError(f"{path}: 'affine' must be 4x4, got {affine.shape}.")
        else:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_shape(tuple(mm.shape), mm.dtype, str(path), time_index, max_voxels)
            four_d = mm.ndim == 4
            arr = np.array(mm[time_index] if four_d else mm)
            del mm
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise CorruptFileError(f"{path}: the archive is damaged or uses an unsupported compression ({exc}).") from exc
    except (SyntaxError, tokenize.TokenError, TypeError, KeyError, struct.error) as exc:
        raise CorruptFileError(f"{path}: the NumPy header cannot be parsed ({type(exc).__name__}); the file is damaged.") from exc
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise UnsupportedFormatError(f"{path}: holds pickled Python objects, which PromptOnce does not load; save a numeric array.") from exc
        raise CorruptFileError(f"{path}: not a readable NumPy file ({exc}); it may be truncated.") from exc
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read it as NumPy data ({exc}).") from exc
    if not four_d and time_index not in (None, 0):
        raise DimensionError(f"{path}: time_index={time_index} was given but the array is {arr.ndim}D, not 4D.")
    if affine is not None and not np.all(np.isfinite(affine)):
        raise InvalidValuesError(f"{path}: the stored affine holds NaN or inf.")
    return arr, affine


def read_numpy(
    path: str | Path,
    *,
    time_index: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    name: str | None = None,
) -> Volume:
    """Reads a ``.npy`` / ``.npz`` array as a Volume (see the module docstring for the axis rules).

    Returns:
        Volume ``(slices, rows, cols)``; ``source_format="numpy"``, ``source=None`` (writers use
        ``volume.affine``), modality guessed from the values.
    """
    path = Path(path)
    arr, affine = read_numpy_array(path, time_index=time_index, max_voxels=max_voxels)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8 and arr.shape[0] > 4:
        arr = luminance(arr)
    arr = compact_dtype(np.ascontiguousarray(arr))
    check_finite(arr, str(path))
    return Volume(
        array=arr,
        affine=affine if affine is not None else np.eye(4),
        name=name or case_name(path),
        source_format="numpy",
        modality=guess_modality(arr),
    )
