"""DICOM reader (pydicom): a series (folder, list of files, zip) or a single-file image.

Series
    Files are grouped by ``SeriesInstanceUID`` (and image size / orientation, so that a localizer
    sharing a series UID does not break the volume). When several groups are present the largest is
    read, a warning is logged and kept in ``volume.source.extra["warnings"]``. Slices are sorted by
    the projection of ``ImagePositionPatient`` on the slice normal (row cosine x column cosine from
    ``ImageOrientationPatient``), never by file name or InstanceNumber. Several images at the same
    position (time points, echoes) make a 4D series: ``time_index`` chooses one (ordered by
    TemporalPositionIdentifier, AcquisitionNumber, TriggerTime, InstanceNumber).

Values
    ``RescaleSlope`` / ``RescaleIntercept`` are applied (CT in Hounsfield units): integer results
    are stored as int16 (or uint16/int32 when the range needs it), otherwise float32.
    MONOCHROME1 images are inverted so that higher values are brighter; colour images become grey.

Geometry
    The source grid is ``(col, row, slice)`` with slices in ascending position along the normal
    (the grid a NIfTI conversion stores), its affine built from the DICOM geometry and converted
    from LPS to RAS+ (``diag(-1, -1, 1)``). The volume is then put in display orientation like a
    NIfTI file (an axial series in the usual orientation is shown exactly as stored).

Single-file 2D images (CR/DX X-rays, secondary captures) without ``ImagePositionPatient`` are
one-slice volumes shown as stored, with ``PixelSpacing`` or ``ImagerPixelSpacing`` as pixel size.

Metadata
    ``source.extra`` keeps, for DICOM-SEG export, the source datasets *without pixel data* in source
    slice order (``"datasets"``) plus ``"series_uid"``, ``"modality"`` and ``"warnings"``.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, DimensionError, UnsupportedFormatError
from ..types import Modality, SourceGeometry, Volume
from ._common import DEFAULT_MAX_VOXELS, case_name, check_finite, check_voxels, compact_dtype, luminance, to_display

log = logging.getLogger(__name__)

__all__ = ["DICOM_SUFFIXES", "is_dicom", "read_header", "is_projection", "read_dicom", "LPS_TO_RAS"]

DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".ima", ""})

#: Converts DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS+).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_XR_MODALITIES = {"CR", "DX", "DR", "RF", "XA", "MG", "PX", "IO", "RG"}
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, EOFError, OSError, struct.error, OverflowError, IndexError, AttributeError,
    NotImplementedError,
)
_POS_TOL_MM = 1e-2


def _invalid_dicom_error() -> type[BaseException]:
    from pydicom.errors import InvalidDicomError

    return InvalidDicomError


class _BoundedFile(io.FileIO):
    """A file whose ``read(n)`` never asks for more than the bytes left in it.

    pydicom reads an element with ``read(declared length)``; a damaged length (up to 4 GiB) would
    otherwise allocate that much before finding out that the file is shorter.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)


def _dcmread(path: Path, **kwargs: Any):
    """``pydicom.dcmread`` on a :class:`_BoundedFile` (closed afterwards); same arguments."""
    import pydicom

    with _BoundedFile(Path(path)) as fh:
        ds = pydicom.dcmread(fh, **kwargs)
        ds.filename = str(path)
    return ds


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (pydicom puts whole tracebacks in
    some messages; users should see what went wrong, not the library's internals)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _bytes_length_error() -> type[BaseException]:
    from pydicom.errors import BytesLengthException

    return BytesLengthException


def is_dicom(path: str | Path) -> bool:
    """True when the file is DICOM: the ``DICM`` marker at byte 128, or (for ``.dcm``/no suffix) a dataset with an image or SOP class."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if path.suffix.lower() not in DICOM_SUFFIXES or len(head) < 8:
        return False
    try:
        ds = _dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPClassUID", "Rows", "Columns"])
    except (_invalid_dicom_error(), *_PARSE_ERRORS):
        return False
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def read_header(path: str | Path):
    """Reads a DICOM file's dataset without pixel data.

    Raises:
        CorruptFileError: empty or unparsable file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    try:
        ds = _dcmread(path, stop_before_pixels=True, force=True)
        # pydicom decodes element values lazily: decode them all now, so that a damaged element is
        # reported here as a damaged file instead of failing later wherever the value is first used
        ds.walk(lambda _ds, _elem: None)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            meta.walk(lambda _ds, _elem: None)
        return ds
    except (_invalid_dicom_error(), _bytes_length_error(), *_PARSE_ERRORS) as exc:
        raise CorruptFileError(f"{path}: not a readable DICOM file ({_short(exc)}).") from exc


def _has_image(ds) -> bool:
    return "Rows" in ds and "Columns" in ds


def _geometry_of(ds) -> tuple[np.ndarray | None, np.ndarray | None]:
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    if ipp is None or iop is None:
        return None, None
    try:
        if len(ipp) != 3 or len(iop) != 6:
            return None, None
        return np.array([float(v) for v in ipp]), np.array([float(v) for v in iop])
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(
            f"ImagePositionPatient {str(ipp)[:60]!r} / ImageOrientationPatient {str(iop)[:60]!r} are malformed "
            f"({_short(exc)}); the DICOM header is damaged. Export the series again."
        ) from exc


def _nframes(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def is_projection(ds) -> bool:
    """True for a single-frame 2D image without patient position (X-ray, secondary capture)."""
    if _nframes(ds) > 1:
        return False
    ipp, _ = _geometry_of(ds)
    return ipp is None


def _modality(ds) -> Modality:
    m = str(ds.get("Modality", "")).upper()
    if m in ("CT", "MR"):
        return m  # type: ignore[return-value]
    if m in _XR_MODALITIES:
        return "XR"
    return "OT"


def _pixel_spacing(ds, warnings: list[str]) -> tuple[float, float]:
    """``(row spacing, column spacing)`` in mm: PixelSpacing, else ImagerPixelSpacing, else 1 (with a warning)."""
    for src in (ds, _fg(ds, "PixelMeasuresSequence")):
        if src is None:
            continue
        for tag in ("PixelSpacing", "ImagerPixelSpacing"):
            v = src.get(tag)
            if v is not None and len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0:
                return float(v[0]), float(v[1])
    warnings.append("no PixelSpacing in the DICOM header: pixels are taken as 1 mm")
    return 1.0, 1.0


def _fg(ds, seq_name: str, frame: int | None = None):
    """First item of a functional-group sequence (per-frame item if given, else shared), or None."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        pf = ds.PerFrameFunctionalGroupsSequence
        if frame < len(pf):
            groups.append(pf[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for g in groups:
        seq = g.get(seq_name)
        if seq is not None and len(seq):
            return seq[0]
    return None


def _window(ds) -> tuple[float, float] | None:
    src = ds if "WindowWidth" in ds else _fg(ds, "FrameVOILUTSequence", 0)
    if src is None or "WindowWidth" not in src or "WindowCenter" not in src:
        return None
    try:
        w = src.WindowWidth
        c = src.WindowCenter
        w = float(w[0] if isinstance(w, Sequence) and not isinstance(w, str) else w)
        c = float(c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c)
    except (TypeError, ValueError, IndexError):
        return None
    return (w, c) if w > 0 and np.isfinite(c) else None


@dataclass
class _Frame:
    """One 2D image of the series: file ``inst``, frame ``frame`` of it (None = single-frame file)."""

    inst: int
    frame: int | None
    ipp: np.ndarray | None
    iop: np.ndarray | None
    slope: float = 1.0
    intercept: float = 0.0
    order: tuple[float, ...] = field(default_factory=tuple)


def _rescale(ds, frame: int | None) -> tuple[float, float]:
    src = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _fg(ds, "PixelValueTransformationSequence", frame)
    if src is None:
        return 1.0, 0.0
    try:
        return float(src.get("RescaleSlope", 1.0) or 1.0), float(src.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 1.0, 0.0


def _num(ds, tag: str) -> float:
    v = ds.get(tag)
    try:
        return float(v) if v is not None and v != "" else 0.0
    except (TypeError, ValueError):
        return 0.0


def _frames_of(headers: list[Any]) -> list[_Frame]:
    frames: list[_Frame] = []
    for i, ds in enumerate(headers):
        n = _nframes(ds)
        if n == 1:
            ipp, iop = _geometry_of(ds)
            slope, inter = _rescale(ds, None)
            order = (_num(ds, "TemporalPositionIdentifier"), _num(ds, "AcquisitionNumber"), _num(ds, "TriggerTime"),
                     _num(ds, "InstanceNumber"), float(i))
            frames.append(_Frame(i, None, ipp, iop, slope, inter, order))
            continue
        shared_iop = None
        for f in range(n):
            pos = _fg(ds, "PlanePositionSequence", f)
            ori = _fg(ds, "PlaneOrientationSequence", f)
            ipp = np.array([float(v) for v in pos.ImagePositionPatient]) if pos is not None and "ImagePositionPatient" in pos else None
            iop = np.array([float(v) for v in ori.ImageOrientationPatient]) if ori is not None and "ImageOrientationPatient" in ori else shared_iop
            if iop is None and "ImageOrientationPatient" in ds:
                iop = np.array([float(v) for v in ds.ImageOrientationPatient])
            slope, inter = _rescale(ds, f)
            fc = _fg(ds, "FrameContentSequence", f)
            tpos = _num(fc, "TemporalPositionIndex") if fc is not None else 0.0
            frames.append(_Frame(i, f, ipp, iop, slope, inter, (tpos, float(f))))
    return frames


def _group_key(ds) -> tuple[Any, ...]:
    _, iop = _geometry_of(ds)
    iop_key = None if iop is None else tuple(np.round(iop, 2))
    return (str(ds.get("SeriesInstanceUID", "")), int(ds.Rows), int(ds.Columns), iop_key)


def _dtype_for(ds, frames: list[_Frame]) -> np.dtype:
    """int16 / uint16 / int32 when every rescale is integral and the range fits, else float32."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return np.dtype(np.float32)
    if any(f.slope != 1.0 or f.intercept != round(f.intercept) for f in frames):
        return np.dtype(np.float32)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    inters = [f.intercept for f in frames]
    lo, hi = lo + min(inters), hi + max(inters)
    for dt in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.float32)


def _pixels(path: Path, ds_header) -> np.ndarray:
    try:
        full = _dcmread(path, force=True)
        arr = full.pixel_array
    except (_invalid_dicom_error(), _bytes_length_error(), *_PARSE_ERRORS, RuntimeError) as exc:
        ts = getattr(getattr(ds_header, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        try:
            compressed = ts is not None and bool(ts.is_compressed)
        except (ValueError, AttributeError):  # not a transfer syntax UID at all
            compressed = False
        if compressed:
            hint = (f" It is compressed ({ts.name}); install a decoder (pip install pylibjpeg pylibjpeg-libjpeg "
                    "pylibjpeg-openjpeg) or decompress it (e.g. gdcmconv --raw).")
        raise CorruptFileError(f"{path}: the DICOM pixel data cannot be decoded ({_short(exc)}).{hint}") from exc
    photometric = str(full.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(full.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        arr = luminance(arr)
    elif photometric == "MONOCHROME1":  # 0 is white: invert over the stored bit range, per file the same
        bits = int(full.get("BitsStored", 8 * arr.dtype.itemsize) or 8 * arr.dtype.itemsize)
        if arr.dtype.kind == "u":
            arr = (2**bits - 1) - arr.astype(np.int64)
        elif arr.dtype.kind == "i":
            arr = -1 - arr.astype(np.int64)
        else:
            arr = -arr
    return arr


#: What a DICOM header with malformed values (wrong multiplicity, unparsable numbers) raises while it is read.
_HEADER_VALUE_ERRORS: tuple[type[BaseException], ...] = (TypeError, ValueError, IndexError, KeyError, OverflowError,
                                                         AttributeError, ZeroDivisionError)


def read_dicom(
    files: Sequence[str | Path],
    *,
    time_index: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    name: str | None = None,
    headers: Sequence[Any] | None = None,
) -> Volume:
    """Reads DICOM files as one Volume (see the module docstring for the rules).

    Args:
        files: the DICOM files (a series, or several series of which the largest is read). Files that
            are not DICOM images (DICOMDIR, reports) are skipped with a log message.
        time_index: time point / echo for series with several images per position.
        max_voxels: voxel budget, checked on the headers before pixel data is read.
        name: volume name (default: the folder of the first file, or the file name for one file).
        headers: the files' datasets without pixels, if already read (same order as ``files``).

    Returns:
        Volume ``(slices, rows, cols)`` in display orientation, ``source_format="dicom"``.

    Raises:
        UnsupportedFormatError: no DICOM image among the files.
        CorruptFileError: unreadable files or undecodable pixel data.
        DimensionError: 4D series without ``time_index``, or positions repeated unevenly.
        TooLargeError: over ``max_voxels``.
    """
    try:
        return _read_dicom(files, time_index=time_index, max_voxels=max_voxels, name=name, headers=headers)
    except _HEADER_VALUE_ERRORS as exc:
        where = Path(files[0]).parent.name if len(files) > 1 else Path(files[0]).name
        raise CorruptFileError(
            f"{where}: a DICOM header value is malformed ({type(exc).__name__}: {_short(exc)}); the file is damaged. "
            "Export the series again."
        ) from exc


def _read_dicom(
    files: Sequence[str | Path],
    *,
    time_index: int | None,
    max_voxels: int,
    name: str | None,
    headers: Sequence[Any] | None,
) -> Volume:
    paths = [Path(f) for f in files]
    if not paths:
        raise UnsupportedFormatError("No DICOM files were given.")
    if headers is None:
        headers = [read_header(p) for p in paths]
    imgs = [(p, ds) for p, ds in zip(paths, headers) if _has_image(ds)]
    skipped = len(paths) - len(imgs)
    if skipped:
        log.info("skipped %d DICOM files without an image (DICOMDIR, reports, ...)", skipped)
    if not imgs:
        raise UnsupportedFormatError(
            f"None of the {len(paths)} DICOM files holds an image (e.g. only a DICOMDIR or reports); give the image files."
        )
    warnings: list[str] = []
    groups: dict[tuple[Any, ...], list[tuple[Path, Any]]] = {}
    for p, ds in imgs:
        groups.setdefault(_group_key(ds), []).append((p, ds))
    ordered = sorted(groups.values(), key=lambda g: -sum(_nframes(ds) for _, ds in g))
    chosen = ordered[0]
    if len(ordered) > 1:
        desc = "; ".join(
            f"{str(g[0][1].get('SeriesDescription', '') or g[0][1].get('SeriesInstanceUID', '?'))!s} "
            f"({sum(_nframes(ds) for _, ds in g)} images of {int(g[0][1].Rows)}x{int(g[0][1].Columns)})"
            for g in ordered[:5]
        )
        msg = (f"found {len(ordered)} DICOM image series/groups: {desc}. Reading the largest one; give the folder "
               "or files of one series to choose another.")
        log.warning(msg)
        warnings.append(msg)
    cpaths = [p for p, _ in chosen]
    cheaders = [ds for _, ds in chosen]
    first = cheaders[0]
    nm = name or (case_name(cpaths[0]) if len(cpaths) == 1 else (cpaths[0].parent.name or "dicom"))
    frames = _frames_of(cheaders)
    geometric = all(f.ipp is not None and f.iop is not None for f in frames)
    rows, cols = int(first.Rows), int(first.Columns)
    row_sp, col_sp = _pixel_spacing(first, warnings)
    if geometric:
        frames, affine_lps = _sort_geometric(frames, time_index, row_sp, col_sp, first, warnings, nm)
    else:
        if time_index not in (None, 0):
            raise DimensionError(f"{nm}: time_index={time_index} was given but this DICOM data has no time points.")
        if len(frames) > 1:
            frames.sort(key=lambda f: (f.order[3] if len(f.order) > 3 else 0.0, f.inst, f.frame or 0))
            warnings.append("no ImagePositionPatient: images ordered by InstanceNumber; the slice geometry is unknown")
        thick = float(first.get("SliceThickness", 0) or 0) or 1.0
        affine_lps = None
        affine = np.diag([col_sp, row_sp, thick, 1.0])
    check_voxels((len(frames), rows, cols), max_voxels, f"DICOM series {nm}")
    dtype = _dtype_for(first, frames)
    out = np.empty((len(frames), rows, cols), dtype=dtype)
    cache: dict[int, np.ndarray] = {}
    for k, fr in enumerate(frames):
        if fr.inst not in cache:
            cache.clear()
            cache[fr.inst] = _pixels(cpaths[fr.inst], cheaders[fr.inst])
        px = cache[fr.inst]
        img = px[fr.frame] if fr.frame is not None else px
        if img.shape != (rows, cols):
            raise CorruptFileError(f"{cpaths[fr.inst]}: pixel data of shape {img.shape} does not match Rows x Columns {rows}x{cols}.")
        if dtype.kind == "f":
            out[k] = img.astype(np.float32) * np.float32(fr.slope) + np.float32(fr.intercept)
        else:
            out[k] = img.astype(np.int32) + int(fr.intercept)
    cache.clear()
    if out.dtype == np.int32:  # the bit-depth rule was conservative: shrink when the values fit
        out = compact_dtype(out)
    check_finite(out, f"DICOM series {nm}")
    order_headers = []
    seen: set[int] = set()
    for fr in frames:
        if fr.inst not in seen:
            seen.add(fr.inst)
            order_headers.append(cheaders[fr.inst])
    extra: dict[str, Any] = {
        "datasets": order_headers,
        "frames": [(fr.inst, fr.frame) for fr in frames],
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "modality": str(first.get("Modality", "")),
        "warnings": warnings,
        "files": [str(cpaths[fr.inst]) for fr in frames],
        "files_skipped": skipped,
    }
    if time_index is not None:
        extra["time_index"] = int(time_index)
    for w in warnings:
        log.info("%s: %s", nm, w)
    stored = np.transpose(out, (2, 1, 0))  # (cols, rows, slices): the grid a NIfTI conversion stores
    if affine_lps is not None:
        affine = LPS_TO_RAS @ affine_lps
        display, display_affine, ornt = to_display(stored, affine)
        source = SourceGeometry(affine=affine, shape=tuple(stored.shape), ornt=ornt, header=None, extra=extra)
    else:
        display, display_affine = out, affine
        source = SourceGeometry(affine=affine, shape=tuple(stored.shape), ornt=None, header=None, extra=extra)
    return Volume(
        array=display,
        affine=display_affine,
        name=nm,
        source_format="dicom",
        modality=_modality(first),
        window=_window(first),
        source=source,
    )


def _sort_geometric(
    frames: list[_Frame],
    time_index: int | None,
    row_sp: float,
    col_sp: float,
    first: Any,
    warnings: list[str],
    nm: str,
) -> tuple[list[_Frame], np.ndarray]:
    """Sorts frames along the slice normal, picks a time point, and builds the LPS affine."""
    iop = frames[0].iop
    if iop is None:
        raise CorruptFileError(f"{nm}: ImageOrientationPatient is missing.")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        raise CorruptFileError(f"{nm}: ImageOrientationPatient {iop.tolist()} is degenerate; the DICOM geometry is broken.")
    normal = normal / np.linalg.norm(normal)
    for f in frames:
        if f.iop is not None and not np.allclose(f.iop, iop, atol=1e-3):
            warnings.append("slices have different orientations; the first one's is used")
            break
    proj = np.array([float(f.ipp @ normal) for f in frames])  # type: ignore[operator]
    order = np.argsort(proj, kind="stable")
    # cluster equal positions
    clusters: list[list[int]] = []
    last = None
    for idx in order:
        if last is None or proj[idx] - last > _POS_TOL_MM:
            clusters.append([int(idx)])
        else:
            clusters[-1].append(int(idx))
        last = proj[idx]
    counts = {len(c) for c in clusters}
    if counts == {1}:
        if time_index not in (None, 0):
            raise DimensionError(f"{nm}: time_index={time_index} was given but the DICOM series has one image per position.")
        picked = [frames[c[0]] for c in clusters]
    elif len(counts) == 1:
        n_t = counts.pop()
        if time_index is None:
            raise DimensionError(
                f"{nm}: the DICOM series has {n_t} images at each of its {len(clusters)} positions (time points or "
                f"echoes). Choose one with time_index=... (CLI: --time-index N, 0..{n_t - 1})."
            )
        if not -n_t <= time_index < n_t:
            raise DimensionError(f"{nm}: time_index {time_index} out of range 0..{n_t - 1}.")
        picked = [sorted((frames[i] for i in c), key=lambda f: f.order)[time_index] for c in clusters]
    else:
        raise DimensionError(
            f"{nm}: {len(frames)} DICOM images lie at {len(clusters)} positions with uneven repeats "
            f"({sorted(counts)} per position); the files mix acquisitions. Give the files of one series / one time point."
        )
    n = len(picked)
    ipp0 = picked[0].ipp
    if n > 1:
        pos = np.array([float(f.ipp @ normal) for f in picked])  # type: ignore[operator]
        gaps = np.diff(pos)
        med = float(np.median(gaps))
        if np.max(np.abs(gaps - med)) > max(0.01 * med, 1e-3):
            warnings.append(
                f"slice spacing is not uniform ({gaps.min():.3f}..{gaps.max():.3f} mm, missing slices?); distances "
                "along the slice axis are approximate"
            )
        slice_vec = (picked[-1].ipp - ipp0) / (n - 1)  # type: ignore[operator]
    else:
        step = _num(first, "SpacingBetweenSlices") or _num(first, "SliceThickness") or 1.0
        slice_vec = normal * step
    aff = np.eye(4)
    aff[:3, 0] = row_cos * col_sp
    aff[:3, 1] = col_cos * row_sp
    aff[:3, 2] = slice_vec
    aff[:3, 3] = ipp0  # type: ignore[assignment]
    return picked, aff
