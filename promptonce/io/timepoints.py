"""Time points of 4D inputs: how many there are (from the headers only) and reading one of them.

A 4D NIfTI ``(x, y, z, t)``, a 4D NumPy array ``(time, slices, rows, cols)`` or a DICOM series with
several images at each position (time points or echoes) holds several volumes; the readers need a
``time_index`` to read one (CLI: ``--time-index``). :func:`time_points` tells a front end how many
there are so that it can offer a control, and :func:`read_time_point` reads the chosen one.

Only headers are read to count: no pixel data.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, DimensionError, InputError
from ..types import Volume
from .dicom import is_dicom, read_header

__all__ = ["TimePoints", "time_points", "read_time_point"]

log = logging.getLogger(__name__)

_POS_TOL_MM = 0.01
_UNIT_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


@dataclass(frozen=True)
class TimePoints:
    """The time points of an input.

    Attributes:
        count: how many volumes the input holds along time (1 for a 2D/3D input).
        step_s: seconds between consecutive time points when the file says (NIfTI ``pixdim[4]``
            with a time unit; DICOM: not derived), else None.
        kind: ``"time"`` for NIfTI/NumPy, ``"time or echo"`` for DICOM (the header cannot always tell).
    """

    count: int
    step_s: float | None = None
    kind: str = "time"

    @property
    def is_4d(self) -> bool:
        """True when there is more than one time point (a front end shows a control)."""
        return self.count > 1

    def labels(self) -> list[str]:
        """One label per time point for a control, e.g. ``["t=0 (0 s)", "t=1 (2.5 s)"]`` or ``["t=0", ...]``."""
        if self.step_s:
            return [f"t={i} ({i * self.step_s:g} s)" for i in range(self.count)]
        return [f"t={i}" for i in range(self.count)]


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    s = tuple(int(v) for v in shape)
    while len(s) > 3 and s[-1] == 1:
        s = s[:-1]
    return s


def _nifti(path: Path) -> TimePoints:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise CorruptFileError(f"{path.name}: not a readable NIfTI file ({exc}).") from exc
    shape = _squeezed(img.shape)
    if len(shape) != 4:
        return TimePoints(1)
    step = None
    try:
        _, t_unit = img.header.get_xyzt_units()
        dt = float(img.header["pixdim"][4])
        if t_unit in _UNIT_S and np.isfinite(dt) and dt > 0:
            step = dt * _UNIT_S[t_unit]
    except (KeyError, IndexError, TypeError, ValueError):
        step = None
    return TimePoints(int(shape[3]), step)


def _npy_shape(fp) -> tuple[int, ...]:  # noqa: ANN001 - a binary file object
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(fp)
    return tuple(int(s) for s in shape)


def _numpy(path: Path) -> TimePoints:
    try:
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if Path(n).stem != "affine"]
                key = next((n for n in names if Path(n).stem == "image"), names[0] if len(names) == 1 else None)
                if key is None:
                    return TimePoints(1)
                with zf.open(key) as fp:
                    shape = _npy_shape(fp)
        else:
            with open(path, "rb") as fp:
                shape = _npy_shape(fp)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, zlib.error) as exc:
        raise CorruptFileError(
            f"{path.name}: not a readable NumPy file, or its archive uses an unsupported compression ({exc})."
        ) from exc
    return TimePoints(int(shape[0])) if len(shape) == 4 else TimePoints(1)


def _dicom(files: Sequence[Path]) -> TimePoints:
    series: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for f in files:
        try:
            ds = read_header(f)
        except InputError:
            continue
        ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
        if ipp is None or iop is None:
            continue
        try:
            series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append(
                (np.asarray([float(v) for v in ipp]), np.asarray([float(v) for v in iop]))
            )
        except (TypeError, ValueError):
            continue
    if not series:
        return TimePoints(1, kind="time or echo")
    frames = max(series.values(), key=len)  # the readers read the largest series
    iop = frames[0][1]
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 1e-6:
        return TimePoints(1, kind="time or echo")
    proj = np.sort(np.array([float(p @ normal) for p, _ in frames]))
    clusters = np.split(proj, np.flatnonzero(np.diff(proj) > _POS_TOL_MM) + 1)
    counts = {len(c) for c in clusters}
    if len(counts) != 1:
        raise DimensionError(
            f"{len(frames)} DICOM images lie at {len(clusters)} positions with uneven repeats; the series is "
            "incomplete or mixes acquisitions. Export one complete series."
        )
    return TimePoints(counts.pop(), kind="time or echo")


def time_points(source: str | Path | Sequence[str | Path]) -> TimePoints:
    """How many time points an input holds, from its headers.

    Args:
        source: a NIfTI or NumPy file, a DICOM file, a folder of DICOM files (searched recursively),
            or a list of DICOM files. Anything else (2D images, ...) has one time point.

    Returns:
        :class:`TimePoints`; ``count`` 1 for 2D/3D inputs.

    Raises:
        CorruptFileError: the header cannot be read.
        DimensionError: a DICOM series whose positions repeat unevenly.
    """
    if not isinstance(source, (str, Path)):
        files = [Path(p) for p in source]
        if len(files) == 1:
            return time_points(files[0])
        return _dicom([f for f in files if f.is_file() and is_dicom(f)])
    p = Path(source)
    if p.is_dir():
        return _dicom([f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".") and is_dicom(f)])
    if not p.is_file():
        raise InputError(f"{p}: no such file or folder.")
    low = p.name.lower()
    if low.endswith((".nii", ".nii.gz")):
        return _nifti(p)
    if low.endswith((".npy", ".npz")):
        return _numpy(p)
    if is_dicom(p):
        return _dicom([p])
    return TimePoints(1)


def read_time_point(source: str | Path | Sequence[str | Path], index: int, **kwargs) -> Volume:  # noqa: ANN003
    """Reads time point ``index`` of an input as a 3D volume (any input with one time point: ``index`` 0).

    Args:
        source: as for :func:`promptonce.io.readers.load`.
        index: 0-based time point (negative counts from the end).
        kwargs: other :func:`~promptonce.io.readers.load` arguments (``max_voxels``, ``name``, ...).

    Raises:
        DimensionError: ``index`` is out of range.
    """
    from .readers import load

    tp = time_points(source)
    if not -tp.count <= int(index) < tp.count:
        raise DimensionError(f"time point {index} does not exist; this input has {tp.count} (0..{tp.count - 1}).")
    vol = load(source, time_index=int(index) if tp.is_4d else None, **kwargs)
    return vol
