"""Writers: masks (NIfTI on the input's grid, PNG zip, DICOM-SEG), metrics (CSV, JSON), overlay GIF.

Every write is atomic: the data goes to a temporary file in the destination folder
(``.<name>.tmp-XXXX<suffix>``), is flushed and fsync'ed, then renamed over the final name with
``os.replace``. On any error the temporary file is removed, so a failed or cancelled run never
leaves a half-written file under a name that looks finished.

Label maps are uint8 ``(slices, rows, cols)`` in display order (0 = background, else the object id).

DICOM-SEG privacy: :func:`write_dicom_seg` replaces patient-identifying attributes that highdicom
copies from the source images (PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge,
OtherPatientIDs, OtherPatientNames, IssuerOfPatientID, PatientComments, AccessionNumber,
ReferringPhysicianName, InstitutionName/Address/Department, StationName, StudyID, ...; see
``_ANON_TAGS``) by empty or ``ANONYMOUS`` values, at every nesting level (highdicom copies the
source's equipment into ContributingEquipmentSequence), when ``anonymize=True`` (the default).
UIDs are kept, so that viewers can still place the segmentation on its series.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import secrets
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DimensionError, InputError
from ..types import SliceResult, Volume

log = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "write_mask_nifti",
    "write_png_masks_zip",
    "write_png_mask",
    "label_table_rows",
    "LABEL_TABLE_NAME",
    "write_dicom_seg",
    "write_metrics_csv",
    "write_json",
    "write_overlay_gif",
    "gif_frame_size",
    "ResultWriter",
    "safe_name",
]


def safe_name(name: str) -> str:
    """A file-system safe version of a case name (path separators and odd characters -> ``_``)."""
    s = re.sub(r"[^\w.\-+]+", "_", str(name)).strip("._")
    return s or "unnamed"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    The temporary name keeps the suffixes of ``path`` (``.nii.gz`` stays compressed). If the body
    raises, the temporary file is removed and the exception propagates; ``path`` is untouched.

    Example::

        with atomic_path(out / "a.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}{''.join(path.suffixes)}"
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to the temporary file for {path}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                log.warning("could not remove temporary file %s", tmp)


def _check_labels(labels: np.ndarray, volume: Volume) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.shape != volume.shape:
        raise DimensionError(
            f"{volume.name}: label map shape {lab.shape} differs from the volume's {volume.shape} (slices, rows, cols)."
        )
    if lab.dtype != np.uint8:
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise InputError(f"{volume.name}: labels must be in 0..255 to be written as uint8.")
        lab = lab.astype(np.uint8)
    return lab


def write_mask_nifti(labels: np.ndarray, volume: Volume, path: str | Path) -> Path:
    """Writes a label map as NIfTI on the input's own voxel grid.

    Args:
        labels: uint8 ``(slices, rows, cols)`` in display order (as ``volume.array``).
        volume: the image it belongs to. With ``volume.source`` the labels are put back in the
            stored voxel order and written with the input's affine (NIfTI input: sform/qform codes
            copied from its header; DICOM input: both codes 1 = scanner). Without it the labels are
            written as ``(cols, rows, slices)`` with ``volume.affine``.
        path: ``.nii`` or ``.nii.gz`` destination.

    Returns:
        ``path``. The file has dtype uint8, intent ``label``, no scaling.
    """
    import nibabel as nib

    path = Path(path)
    lab = _check_labels(labels, volume)
    geo = volume.source
    sform_code, qform_code = 2, 2
    if geo is not None and volume.source_format in ("nifti", "dicom"):
        data = geo.to_source(lab)
        affine = np.asarray(geo.affine, dtype=np.float64)
        header = geo.header if isinstance(geo.header, nib.Nifti1Header) else None
        if header is not None:
            sform_code = int(header["sform_code"])
            qform_code = int(header["qform_code"])
            if sform_code == 0 and qform_code == 0:
                sform_code = 2  # input had no transform: keep the same (fallback) affine explicitly
        elif volume.source_format == "dicom":
            sform_code, qform_code = 1, 1
    else:
        data = np.transpose(lab, (2, 1, 0))
        affine = volume.affine
    data = np.ascontiguousarray(data, dtype=np.uint8)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    if geo is not None and isinstance(geo.header, nib.Nifti1Header):
        hdr.set_xyzt_units(*geo.header.get_xyzt_units())
    hdr.set_data_dtype(np.uint8)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_intent("label")
    hdr["descrip"] = b"PromptOnce mask"
    hdr["cal_min"] = 0
    hdr["cal_max"] = float(data.max()) if data.size else 0.0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _png_bytes(labels2d: np.ndarray, binary: bool | None = None, palette: bool = False) -> bytes:
    from PIL import Image

    lab = np.asarray(labels2d)
    if lab.ndim != 2:
        raise DimensionError(f"A PNG mask needs a 2D label map (rows, cols), got shape {lab.shape}.")
    if binary is None:
        binary = not lab.size or int(lab.max()) <= 1
    if binary:
        im = Image.fromarray(np.where(lab != 0, 255, 0).astype(np.uint8), mode="L")
    elif int(lab.max(initial=0)) <= 255 and int(lab.min(initial=0)) >= 0:
        im = Image.fromarray(lab.astype(np.uint8), mode="L")
        if palette:
            from ..preprocess import label_palette

            ids8 = np.ascontiguousarray(lab, dtype=np.uint8)
            im = Image.frombytes("P", (ids8.shape[1], ids8.shape[0]), ids8.tobytes())
            im.putpalette(label_palette())
    else:
        im = Image.fromarray(lab.astype(np.uint16))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _png_name(name: str) -> str:
    base = safe_name(Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm") else name)
    return base + ".png"


def write_png_mask(
    labels2d: np.ndarray, path: str | Path, *, binary: bool | None = None, palette: bool = True
) -> Path:
    """Writes one PNG mask atomically: one object as 0/255, several as a palette PNG.

    Args:
        labels2d: ``(rows, cols)`` integer label map.
        path: destination ``.png``.
        binary: force 0/255 (True) or label values (False); default: binary when max <= 1.
        palette: write label values (ids 0..255) as a palette PNG whose colours are
            :func:`promptonce.preprocess.label_color` (pixel values stay the label ids; viewers show
            colours instead of near-black greys). False: a plain greyscale PNG of the ids.
    """
    path = Path(path)
    data = _png_bytes(labels2d, binary, palette)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


#: Name of the label table written into PNG mask zips (value, object, name, colour).
LABEL_TABLE_NAME = "labels.csv"


def label_table_rows(ids: Iterable[int], names: Mapping[int, str] | None = None, binary: bool = False) -> list[dict[str, Any]]:
    """Rows of the label table that goes with PNG masks: which pixel value / colour is which object.

    Args:
        ids: the object ids present (0, the background, is always listed first).
        names: optional ``{object id: name}``; default names are ``object <id>``.
        binary: the masks are 0/255 (one object): its pixel value is 255, drawn white.

    Returns:
        One dict per value: ``value`` (pixel value), ``object`` (id, 0 = background), ``name``,
        ``color`` (``#rrggbb`` as the palette PNG and the app draw it).
    """
    from ..preprocess import color_hex, label_color

    names = {int(k): str(v) for k, v in (names or {}).items()}
    rows: list[dict[str, Any]] = [{"value": 0, "object": 0, "name": "background", "color": "#000000"}]
    for i in sorted({int(i) for i in ids} - {0}):
        rows.append({
            "value": 255 if binary else i,
            "object": i,
            "name": names.get(i, f"object {i}"),
            "color": "#ffffff" if binary else color_hex(label_color(i)),
        })  # fmt: skip
    return rows


def write_png_masks_zip(
    items: Iterable[tuple[str, np.ndarray]],
    path: str | Path,
    *,
    label_names: Mapping[int, str] | None = None,
) -> Path:
    """Writes PNG masks into one zip: ``<name>.png`` per item (an image extension in ``name`` is replaced),
    plus ``labels.csv`` (:data:`LABEL_TABLE_NAME`), the table of which pixel value and colour is which object.

    One object over the whole zip (every value <= 1): every mask is 0/255 (white on black, as any
    viewer shows it). Several objects: palette PNGs whose pixel values are the object ids and whose
    colours are the app's (:func:`promptonce.preprocess.label_color`); 16-bit greyscale above 255.

    Args:
        items: ``(name, labels (rows, cols))`` pairs.
        path: destination ``.zip``.
        label_names: optional ``{object id: name}`` for the label table.

    Raises:
        InputError: two items map to the same file name (or to the label table's name).
    """
    path = Path(path)
    seen: set[str] = {LABEL_TABLE_NAME}
    listed = [(name, np.asarray(labels)) for name, labels in items]
    ids: set[int] = {int(k) for k in (label_names or {})}
    for _, lab in listed:
        ids.update(int(v) for v in np.unique(lab) if v != 0)
    binary = max(ids, default=0) <= 1
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, labels in listed:
                fn = _png_name(name)
                if fn in seen:
                    raise InputError(f"two masks would both be called {fn!r} in {path.name}; give distinct names.")
                seen.add(fn)
                zf.writestr(fn, _png_bytes(labels, binary=binary, palette=not binary))
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["value", "object", "name", "color"], lineterminator="\n")
            w.writeheader()
            w.writerows(label_table_rows(ids, label_names, binary))
            zf.writestr(LABEL_TABLE_NAME, buf.getvalue())
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Writes ``obj`` as indented UTF-8 JSON; numpy scalars/arrays and Paths are converted, NaN/inf become null."""
    path = Path(path)
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False, default=str)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Writes rows as CSV; the columns are the union of the keys in first-seen order.

    Floats are written with ``repr`` precision; None and NaN as empty cells; lists joined by ``;``.
    """
    path = Path(path)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(str(k))

    def cell(v: Any) -> Any:
        v = _jsonable(v)
        if v is None:
            return ""
        if isinstance(v, list):
            return ";".join(str(x) for x in v)
        if isinstance(v, dict):
            return json.dumps(v)
        return v

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: cell(r.get(k)) for k in cols})
    return path


# --------------------------------------------------------------------------------------- GIF

def _frames_fn(volume: Volume, window: Any) -> Callable[[int], np.ndarray]:
    """``to_rgb(k) -> uint8 (rows, cols, 3)``: slice ``k`` through one window for the whole volume."""
    from .. import preprocess as pp

    win = pp.resolve_window(window, volume)
    return lambda k: pp.to_frame(volume.array[k], win)


def gif_frame_size(shape: tuple[int, int], spacing: tuple[float, float] | None = None, *,
                   min_size: int = 512, max_size: int = 768) -> tuple[int, int]:  # fmt: skip
    """The ``(width, height)`` in pixels a slice of ``shape`` is drawn at in the overlay GIF.

    The slice is scaled so that its longest side is at least ``min_size`` (small images become
    readable) and at most ``max_size``; non-square pixels are drawn at their true aspect ratio.

    Args:
        shape: ``(rows, cols)`` of the slice.
        spacing: ``(col, row)`` pixel size in mm (as :attr:`Volume.spacing` ``[:2]``), or None (square).
        min_size, max_size: bounds on the longest side, pixels.
    """
    rows, cols = int(shape[0]), int(shape[1])
    aspect = 1.0
    if spacing is not None and spacing[0] > 0 and spacing[1] > 0:
        aspect = float(spacing[1]) / float(spacing[0])  # height of one pixel / its width
        if not 0.2 <= aspect <= 5.0:
            aspect = 1.0  # not a real pixel shape (e.g. an unknown spacing): draw square pixels
    w, h = float(cols), rows * aspect
    longest = max(w, h)
    scale = 1.0
    if longest < min_size:
        scale = min_size / longest
    elif longest > max_size:
        scale = max_size / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def write_overlay_gif(
    volume: Volume,
    labels: np.ndarray,
    path: str | Path,
    *,
    window: Any = None,
    max_frames: int = 200,
    fps: float = 8,
    min_size: int = 512,
    max_size: int = 768,
    alpha: float = 0.35,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
) -> Path:
    """Writes an animated GIF of the volume's slices with the labels drawn over them.

    Each frame is the windowed slice scaled to a readable size (:func:`gif_frame_size`: the longest
    side between ``min_size`` and ``max_size`` pixels, true pixel aspect), with every label as a
    translucent fill and an opaque outline in its colour (:func:`promptonce.preprocess.label_color`).

    Args:
        volume: the image; slices are windowed with ``promptonce.preprocess`` (``window`` =
            None/"auto", a preset name or ``(width, level)``).
        labels: ``(slices, rows, cols)`` label map (display order).
        path: destination ``.gif``.
        max_frames: at most this many slices, evenly spaced.
        fps: frames per second.
        min_size, max_size: bounds on the frames' longest side, pixels.
        alpha: opacity of the label fill, 0..1.
        colors: optional ``{label id: (r, g, b)}``.

    Returns:
        ``path``.
    """
    from PIL import Image

    from ..preprocess import draw_outline, overlay

    path = Path(path)
    lab = _check_labels(labels, volume)
    if fps <= 0 or max_frames < 1:
        raise InputError("fps must be > 0 and max_frames >= 1.")
    if min_size < 1 or max_size < min_size:
        raise InputError(f"GIF sizes must satisfy 1 <= min_size <= max_size, got {min_size} and {max_size}.")
    idx = np.unique(np.linspace(0, volume.n_slices - 1, min(volume.n_slices, max_frames)).round().astype(int))
    to_rgb = _frames_fn(volume, window)
    size = gif_frame_size(volume.shape[1:], volume.spacing[:2], min_size=min_size, max_size=max_size)
    thickness = max(1, int(round(min(size[0] / volume.shape[2], size[1] / volume.shape[1]) / 3)))
    frames = []
    for k in idx:
        gray = Image.fromarray(to_rgb(int(k))).resize(size, Image.Resampling.BILINEAR)
        lab_k = np.asarray(Image.fromarray(np.ascontiguousarray(lab[k])).resize(size, Image.Resampling.NEAREST))
        rgb = overlay(np.asarray(gray), lab_k, alpha=alpha, colors=colors, outline=False)
        rgb = draw_outline(rgb, lab_k, colors=colors, thickness=thickness)
        frames.append(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=255))
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(round(1000 / fps)),
                       loop=0, optimize=False)
    return path


# --------------------------------------------------------------------------------- DICOM-SEG

_ANON_TAGS = {
    "PatientName": "ANONYMOUS",
    "PatientID": "ANONYMOUS",
    "PatientBirthDate": "",
    "PatientSex": "",
    "PatientAge": "",
    "OtherPatientIDs": None,
    "OtherPatientIDsSequence": None,
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "InstitutionName": None,
    "InstitutionAddress": None,
    "InstitutionalDepartmentName": None,
    "StationName": None,
    "StudyID": "",
    "IssuerOfPatientID": None,
    "OtherPatientNames": None,
    "PatientComments": None,
    "PatientAddress": None,
    "PatientTelephoneNumbers": None,
    "PatientMotherBirthName": None,
    "PatientBirthTime": None,
}


def _anonymize(ds: Any) -> None:
    """Applies :data:`_ANON_TAGS` at every level of ``ds``: highdicom also copies the source's equipment
    (InstitutionName, StationName, ...) into ``ContributingEquipmentSequence``."""
    for tag, value in _ANON_TAGS.items():
        if tag in ds:
            if value is None:
                delattr(ds, tag)
            else:
                setattr(ds, tag, value)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _anonymize(item)


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | Path,
    *,
    segment_names: dict[int, str] | None = None,
    anonymize: bool = True,
) -> Path:
    """Writes a label map as a DICOM Segmentation (binary segments) referencing the source series.

    Args:
        labels: uint8 ``(slices, rows, cols)`` in display order.
        volume: a volume read from DICOM (``volume.source.extra["datasets"]`` holds the source
            headers); other inputs raise :class:`InputError`.
        path: destination ``.dcm``.
        segment_names: ``{label id: name}``; default ``"object <id>"``. Segments 1..max label are
            described (highdicom needs consecutive numbers), empty frames are omitted.
        anonymize: replace patient-identifying attributes (see the module docstring).

    Returns:
        ``path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    path = Path(path)
    geo = volume.source
    if volume.source_format != "dicom" or geo is None or not geo.extra.get("datasets"):
        raise InputError(
            f"{volume.name}: DICOM-SEG needs a DICOM input (the segmentation references its series); this input is "
            f"{volume.source_format}. Write NIfTI or PNG masks instead."
        )
    lab = _check_labels(labels, volume)
    stored = geo.to_source(lab) if geo.ornt is not None else np.transpose(lab, (2, 1, 0))  # (cols, rows, slices)
    frames = np.ascontiguousarray(np.transpose(stored, (2, 1, 0)))  # (slices, rows, cols) in source order
    datasets = list(geo.extra["datasets"])
    frame_refs = geo.extra.get("frames")
    if len(datasets) != frames.shape[0]:
        if len(datasets) == 1 and frame_refs and all(f is not None for _, f in frame_refs):
            # one multi-frame source: highdicom wants a frame array in the source's frame order
            full = np.zeros((len(frame_refs),) + frames.shape[1:], dtype=np.uint8)
            for k, (_, f) in enumerate(frame_refs):
                full[f] = frames[k]
            frames = full
        else:
            raise InputError(f"{volume.name}: {len(datasets)} source DICOM images for {frames.shape[0]} slices; cannot build a DICOM-SEG.")
    max_label = int(lab.max()) if lab.size else 0
    if max_label == 0:
        raise InputError(f"{volume.name}: the mask is empty; a DICOM-SEG needs at least one segmented pixel.")
    names = segment_names or {}
    algo = hd.AlgorithmIdentificationSequence(name="PromptOnce", family=codes.DCM.ArtificialIntelligence, version=__version__)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=str(names.get(i, f"object {i}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algo,
        )
        for i in range(1, max_label + 1)
    ]
    series_number = int(datasets[0].get("SeriesNumber", 0) or 0) + 1000
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="PromptOnce",
            manufacturer_model_name="PromptOnce",
            software_versions=__version__,
            device_serial_number="0",
            series_description="PromptOnce segmentation",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"{volume.name}: highdicom could not build a DICOM-SEG from these source images ({exc}).") from exc
    if anonymize:
        _anonymize(seg)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


# ------------------------------------------------------------------------------- ResultWriter


@dataclass
class _Pending:
    volume: Volume
    labels: np.ndarray
    received: np.ndarray
    name: str


@dataclass
class ResultWriter:
    """Streams :class:`SliceResult` objects to mask files, one volume at a time.

    Each volume's slices are buffered (uint8 ``(slices, rows, cols)``); when the last missing
    slice arrives the volume is written and its buffer freed, so memory holds only the volumes in
    progress. NIfTI, DICOM and NumPy volumes go to ``<out_dir>/masks/<name>.nii.gz`` (on the
    input's grid); 2D image volumes to ``<out_dir>/masks/<slice name>.png``, named after each input
    image: 0/255 for one object, palette PNGs of the object ids for several (see
    :func:`write_png_masks_zip`), with ``labels.csv`` (:data:`LABEL_TABLE_NAME`) beside them on close.

    Args:
        out_dir: output folder (created).
        subdir: sub-folder for the masks.
        objects: the object ids of the run; with them every PNG of a dataset is written the same way
            (0/255 only when the only id is 1). None: decided per volume from its labels.
        label_names: ``{object id: name}`` for the label table.

    Example::

        writer = ResultWriter(out)
        for res in segment(...):
            writer.add(res, dataset[res.volume_index])
        paths = writer.close()
    """

    out_dir: Path
    subdir: str = "masks"
    objects: Sequence[int] | None = None
    label_names: Mapping[int, str] | None = None
    written: list[Path] = field(default_factory=list)
    _png_ids: set[int] = field(default_factory=set, repr=False)
    _png_binary: bool | None = field(default=None, repr=False)
    _pending: dict[int, _Pending] = field(default_factory=dict, repr=False)
    _done: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    @property
    def mask_dir(self) -> Path:
        return self.out_dir / self.subdir

    @property
    def pending(self) -> list[str]:
        """Names of the volumes still waiting for slices."""
        return [p.name for p in self._pending.values()]

    def add(self, result: SliceResult, volume: Volume) -> list[Path]:
        """Stores one slice's labels; writes the volume when it is complete.

        Returns:
            The files written by this call (empty until the volume is complete).

        Raises:
            DimensionError: the labels do not fit the volume's slice, or the slice index is out of range.
        """
        vi = int(result.volume_index)
        if vi in self._done:
            log.warning("ResultWriter: volume %d (%s) was already written; slice %d ignored", vi, volume.name, result.slice_index)
            return []
        p = self._pending.get(vi)
        if p is None:
            p = _Pending(volume=volume, labels=np.zeros(volume.shape, np.uint8), received=np.zeros(volume.n_slices, bool),
                         name=volume.name)
            self._pending[vi] = p
        k = int(result.slice_index)
        if not 0 <= k < p.volume.n_slices:
            raise DimensionError(f"{volume.name}: slice {k} out of range 0..{p.volume.n_slices - 1}.")
        lab = np.asarray(result.labels)
        if lab.shape != p.labels.shape[1:]:
            raise DimensionError(f"{volume.name}: slice {k} labels have shape {lab.shape}, expected {p.labels.shape[1:]}.")
        p.labels[k] = lab
        p.received[k] = True
        if p.received.all():
            del self._pending[vi]
            self._done.add(vi)
            paths = self._write(p, partial=False)
            self.written.extend(paths)
            return paths
        return []

    def _write(self, p: _Pending, partial: bool) -> list[Path]:
        vol = p.volume
        marker = ".partial" if partial else ""
        out: list[Path] = []
        if vol.source_format == "image":
            if self.objects is not None:
                binary = max((int(i) for i in self.objects), default=1) <= 1
            else:
                binary = int(p.labels.max()) <= 1 if p.labels.size else True
            self._png_ids.update(int(i) for i in np.unique(p.labels) if i != 0)
            self._png_binary = binary if self._png_binary is None else (self._png_binary and binary)
            for k in range(vol.n_slices):
                if partial and not p.received[k]:
                    continue
                base = _png_name(vol.slice_name(k))[:-4]
                out.append(write_png_mask(p.labels[k], self.mask_dir / f"{base}{marker}.png", binary=binary))
        else:
            out.append(write_mask_nifti(p.labels, vol, self.mask_dir / f"{safe_name(p.name)}{marker}.nii.gz"))
        log.info("wrote %s%s", out[0] if len(out) == 1 else f"{len(out)} PNG masks for {p.name}", " (partial)" if partial else "")
        return out

    def close(self, write_partial: bool = False) -> list[Path]:
        """Finishes: incomplete volumes are dropped, or written with a ``.partial`` marker when asked.

        Returns:
            Every file written by this writer.
        """
        for p in list(self._pending.values()):
            missing = int((~p.received).sum())
            if write_partial:
                self.written.extend(self._write(p, partial=True))
                log.warning("%s: %d of %d slices missing; written as .partial", p.name, missing, p.volume.n_slices)
            else:
                log.warning("%s: %d of %d slices missing; not written", p.name, missing, p.volume.n_slices)
        self._pending.clear()
        if self._png_binary is not None:
            ids = self._png_ids | {int(i) for i in (self.objects or ())}
            path = self.mask_dir / LABEL_TABLE_NAME
            write_metrics_csv(label_table_rows(ids, self.label_names, self._png_binary), path)
            if path not in self.written:
                self.written.append(path)
            self._png_binary = None
        return list(self.written)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(write_partial=False)
