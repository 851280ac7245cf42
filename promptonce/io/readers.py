"""One entry point for every input: :func:`load`, :func:`load_dataset`, :func:`load_reference`.

Formats are recognised by content first (NIfTI header, ``DICM`` marker, PNG/JPEG/TIFF/BMP magic,
NumPy magic, zip magic) and by suffix; when nothing fits, :class:`UnsupportedFormatError` lists
:data:`SUPPORTED_FORMATS`.

What becomes what
    ============================================  ============================================
    input                                         result
    ============================================  ============================================
    NIfTI / NumPy file                            one volume
    DICOM folder, list of files, or ``.zip``      one volume (largest series, with a warning)
    one 2D image / one X-ray DICOM file           one-slice volume
    several same-size 2D images, ``stack``        one volume, slices in natural name order
    several 2D images, ``set``                    one one-slice volume per image (load_dataset)
    ============================================  ============================================

``images_as``: ``"auto"`` means *stack* in :func:`load` (which returns one volume; images of
different sizes raise and point to :func:`load_dataset`) and *set* in :func:`load_dataset`
(independent images, e.g. an X-ray set). Say ``"stack"`` to make one volume of a folder of slices.

Order: files from a folder or a glob are taken in natural order (``img2`` before ``img10``);
separate arguments keep the order given. Folders given to :func:`load_dataset` contribute their
files (unknown files such as README are skipped) and one volume per sub-folder that holds DICOM
files; other sub-folders are ignored (logged).
"""

from __future__ import annotations

import glob
import logging
import shutil
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import (
    CorruptFileError,
    DimensionError,
    InputError,
    InvalidValuesError,
    ReferenceMismatchError,
    UnsupportedFormatError,
)
from ..types import Dataset, SourceGeometry, Volume
from ._common import DEFAULT_MAX_VOXELS, DEFAULT_MAX_ZIP_BYTES, case_name, natural_sorted, to_display
from .archive import content_root, extract_to_temp, extracted, is_zip
from .dicom import is_dicom, is_projection, read_dicom, read_header
from .dicomseg import is_dicom_seg, read_dicom_seg
from .labelnames import is_label_sidecar, read_label_names
from .images import IMAGE_SUFFIXES, image_info, read_image, read_image_array, read_image_stack
from .arrays import read_numpy
from .nifti import read_nifti, read_nifti_stored

log = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_FORMATS",
    "DEFAULT_MAX_VOXELS",
    "DEFAULT_MAX_ZIP_BYTES",
    "ImagesAs",
    "sniff",
    "load",
    "load_dataset",
    "load_reference",
    "pair_references",
    "reference_paths_json",
    "label_values",
]

ImagesAs = Literal["auto", "stack", "set"]
Kind = Literal["nifti", "dicom", "image", "numpy", "zip"]

#: Human-readable list of what :func:`load` reads (used in error messages).
SUPPORTED_FORMATS: list[str] = [
    "NIfTI (.nii, .nii.gz)",
    "DICOM series (a folder, a list of files, or a .zip)",
    "single-file DICOM (.dcm), e.g. CR/DX X-rays",
    "PNG, JPEG, TIFF, BMP images (8/16-bit, grey or RGB)",
    "NumPy arrays (.npy, .npz)",
    "a .zip of any of these",
]

_NIFTI_ENDINGS = (".nii", ".nii.gz", ".hdr", ".img")
_GLOB_CHARS = set("*?[")


def _formats() -> str:
    return "; ".join(SUPPORTED_FORMATS)


def _unsupported(path: Path, what: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(f"{path}: {what}. PromptOnce reads: {_formats()}.")


def sniff(path: str | Path) -> Kind:
    """Says which reader a file needs, from its first bytes and its name.

    Raises:
        InputError: the path does not exist.
        CorruptFileError: the file is empty.
        UnsupportedFormatError: no reader fits (the message lists the supported formats).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    if path.is_dir():
        raise InputError(f"{path} is a folder; sniff() takes a file.")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    with open(path, "rb") as fh:
        head = fh.read(348)
    low = path.name.lower()
    if head[128:132] == b"DICM":
        return "dicom"
    if low.endswith(_NIFTI_ENDINGS):
        return "nifti"
    if low.endswith((".npy", ".npz")) or head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if (
        head.startswith(b"\x89PNG")
        or head.startswith(b"\xff\xd8\xff")
        or head[:4] in (b"II*\x00", b"MM\x00*")
        or head.startswith(b"BM")
        or path.suffix.lower() in IMAGE_SUFFIXES
    ):
        return "image"
    if len(head) >= 4 and (int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)):
        return "nifti"
    if is_dicom(path):
        return "dicom"
    if head.startswith(b"%PDF"):
        raise _unsupported(path, "this is a PDF document, not an image")
    if head.startswith(b"\x1f\x8b"):
        raise _unsupported(path, "a gzip file of unknown content (if it is NIfTI, name it .nii.gz)")
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise _unsupported(path, "this is a text file, not an image")
    raise _unsupported(path, "not a recognised image format")


def _sniff_lenient(path: Path) -> Kind | None:
    """:func:`sniff` for files found in folders: unknown, empty or hidden files give None (skipped)."""
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return None
    try:
        return sniff(path)
    except (UnsupportedFormatError, CorruptFileError):
        log.debug("skipping %s (not a supported file)", path)
        return None


def _expand(source: str | Path) -> list[Path]:
    """A path as given, or the natural-sorted matches of a glob pattern."""
    p = Path(source)
    if p.exists():
        return [p]
    s = str(source)
    if _GLOB_CHARS & set(s):
        hits = natural_sorted([Path(h) for h in glob.glob(s, recursive=True)])
        if not hits:
            raise InputError(f"no file matches the pattern {s!r}.")
        return hits
    raise InputError(f"{p}: no such file or folder.")


def _files_in(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return natural_sorted([f for f in it if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)])


def _classify(files: Sequence[Path], strict: bool) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {"nifti": [], "dicom": [], "image": [], "numpy": [], "zip": []}
    for f in files:
        kind = sniff(f) if strict else _sniff_lenient(f)
        if kind is not None:
            out[kind].append(f)
    return out


def _zip_root(folder: Path) -> Path:
    """The folder a zip's content starts in: descends while it holds a single sub-folder and no files."""
    return content_root(folder)


def _has_dicom(folder: Path) -> bool:
    for f in folder.rglob("*"):
        if f.is_file() and not f.name.startswith(".") and is_dicom(f):
            return True
    return False


# ----------------------------------------------------------------------------------------- load


def _load_file(path: Path, kind: Kind, time_index: int | None, max_voxels: int, name: str | None) -> Volume:
    if kind == "nifti":
        return read_nifti(path, time_index=time_index, max_voxels=max_voxels, name=name)
    if kind == "numpy":
        return read_numpy(path, time_index=time_index, max_voxels=max_voxels, name=name)
    if kind == "image":
        return read_image(path, max_voxels=max_voxels, name=name)
    if kind == "dicom":
        return read_dicom([path], time_index=time_index, max_voxels=max_voxels, name=name)
    raise _unsupported(path, f"cannot read a {kind} here")


def _stack_dicom_projections(files: Sequence[Path], max_voxels: int, name: str | None) -> Volume:
    vols = [read_dicom([f], max_voxels=max_voxels) for f in files]
    shapes = {v.shape for v in vols}
    if len(shapes) != 1:
        raise DimensionError(
            f"The {len(files)} DICOM images differ in size ({sorted(shapes)[:4]}); they cannot be one volume. "
            "Load them as a set with load_dataset (--images-as set)."
        )
    arr = np.concatenate([v.array for v in vols])
    first = vols[0]
    src = SourceGeometry(
        affine=first.affine, shape=(arr.shape[2], arr.shape[1], arr.shape[0]), slice_names=tuple(f.name for f in files),
        extra={"datasets": [d for v in vols for d in v.source.extra["datasets"]] if first.source else []},
    )
    return Volume(array=arr, affine=first.affine, name=name or files[0].parent.name or "dicom", source_format="dicom",
                  modality=first.modality, window=first.window, source=src)


def _load_images(files: Sequence[Path], images_as: ImagesAs, max_voxels: int, name: str | None) -> Volume:
    if len(files) == 1:
        return read_image(files[0], max_voxels=max_voxels, name=name)
    if images_as == "set":
        raise DimensionError(
            f"{len(files)} independent images (images_as='set') are not one volume; use load_dataset(...) "
            "(CLI: give them as a dataset with --images-as set)."
        )
    if images_as == "auto":
        sizes = {image_info(f)[:2] for f in files}
        if len(sizes) > 1:
            raise DimensionError(
                f"These {len(files)} images have {len(sizes)} different sizes, so they are a set of independent images, "
                "not one volume. Use load_dataset(...) to read them as a set (CLI: --images-as set)."
            )
    return read_image_stack(files, max_voxels=max_voxels, name=name)


def _load_files(
    files: Sequence[Path], strict: bool, images_as: ImagesAs, time_index: int | None, max_voxels: int, name: str | None,
    where: str,
) -> Volume:
    kinds = _classify(files, strict)
    n_known = sum(len(v) for v in kinds.values())
    if n_known == 0:
        raise UnsupportedFormatError(f"{where}: no supported file found. PromptOnce reads: {_formats()}.")
    if kinds["dicom"] and not (kinds["image"] or kinds["nifti"] or kinds["numpy"]):
        dfiles = kinds["dicom"]
        headers = [read_header(f) for f in dfiles]
        if len(dfiles) > 1 and all(is_projection(h) for h in headers if "Rows" in h):
            if images_as == "set":
                raise DimensionError(f"{where}: {len(dfiles)} independent DICOM images; use load_dataset(...) for a set.")
            return _stack_dicom_projections(dfiles, max_voxels, name)
        return read_dicom(dfiles, time_index=time_index, max_voxels=max_voxels, name=name, headers=headers)
    if kinds["image"] and not (kinds["dicom"] or kinds["nifti"] or kinds["numpy"] or kinds["zip"]):
        return _load_images(kinds["image"], images_as, max_voxels, name)
    volumes = kinds["nifti"] + kinds["numpy"] + kinds["zip"]
    if len(volumes) == 1 and n_known == 1:
        f = volumes[0]
        if f in kinds["zip"]:
            return load(f, images_as=images_as, time_index=time_index, max_voxels=max_voxels, name=name)
        return _load_file(f, "nifti" if f in kinds["nifti"] else "numpy", time_index, max_voxels, name)
    summary = ", ".join(f"{len(v)} {k}" for k, v in kinds.items() if v)
    raise InputError(f"{where} holds several volumes or mixed files ({summary}); load() reads one volume. "
                     "Use load_dataset(...) to read them all.")


def load(
    source: str | Path | Sequence[str | Path],
    *,
    images_as: ImagesAs = "auto",
    time_index: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    name: str | None = None,
) -> Volume:
    """Reads ONE volume.

    Args:
        source: a NIfTI / NumPy / image / DICOM file; a DICOM folder, a list of DICOM files or a ``.zip``
            of a series; a folder, list or glob of same-size 2D images (a stack, natural order).
        images_as: ``"auto"``/``"stack"`` stack several images; ``"set"`` refuses several images
            (a set is a dataset: use :func:`load_dataset`).
        time_index: time point of a 4D NIfTI / NumPy / DICOM series.
        max_voxels: voxel budget, checked on headers before allocating.
        name: volume name (default: the file name without suffix, or the folder name).

    Returns:
        :class:`Volume` ``(slices, rows, cols)`` in display orientation (see :mod:`promptonce.types`).

    Raises:
        InputError subclasses: unsupported / corrupt / too large / wrong dimensions / non-finite data,
        or several independent images (:class:`DimensionError` pointing to :func:`load_dataset`).
    """
    if isinstance(source, (str, Path)):
        paths = _expand(source)
    else:
        paths = [p for s in source for p in _expand(s)]
        if not paths:
            raise InputError("No input was given.")
    if len(paths) == 1:
        p = paths[0]
        if p.is_dir():
            direct = _files_in(p, recursive=False)
            files = direct if any(_sniff_lenient(f) for f in direct) else _files_in(p, recursive=True)
            return _load_files(files, False, images_as, time_index, max_voxels, name or p.name, str(p))
        kind = sniff(p)
        if kind == "zip":
            with extracted(p) as tmp:
                files = _files_in(tmp, recursive=True)
                return _load_files(files, False, images_as, time_index, max_voxels, name or case_name(p), str(p))
        return _load_file(p, kind, time_index, max_voxels, name)
    if any(p.is_dir() for p in paths):
        raise InputError("load() takes one folder, or a list of files; for several folders use load_dataset(...).")
    return _load_files(paths, True, images_as, time_index, max_voxels, name, f"the {len(paths)} files given")


# --------------------------------------------------------------------------------- load_dataset

Item = tuple[str, Callable[[], Volume]]


def _items_from_files(
    files: Sequence[Path], strict: bool, images_as: ImagesAs, time_index: int | None, max_voxels: int,
    group_name: str, temps: list[Path], ignored: list[Path],
) -> list[Item]:
    kinds = _classify(files, strict)
    items: list[Item] = []
    for f in natural_sorted(kinds["nifti"] + kinds["numpy"]):
        kind: Kind = "nifti" if f in kinds["nifti"] else "numpy"
        items.append((case_name(f), lambda f=f, kind=kind: _load_file(f, kind, time_index, max_voxels, None)))
    images = kinds["image"]
    dfiles = kinds["dicom"]
    if dfiles:
        headers = [read_header(f) for f in dfiles]
        proj = [f for f, h in zip(dfiles, headers) if "Rows" in h and is_projection(h)]
        series = [(f, h) for f, h in zip(dfiles, headers) if not ("Rows" in h and is_projection(h))]
        if series and any("Rows" in h for _, h in series):
            sf = [f for f, _ in series]
            sh = [h for _, h in series]
            items.append((group_name or sf[0].parent.name,
                          lambda sf=sf, sh=sh: read_dicom(sf, headers=sh, time_index=time_index, max_voxels=max_voxels,
                                                           name=group_name or sf[0].parent.name)))
        if proj and images_as == "stack":
            items.append((group_name or "dicom", lambda proj=proj: _stack_dicom_projections(proj, max_voxels, group_name)))
        else:
            for f in proj:
                items.append((case_name(f), lambda f=f: read_dicom([f], max_voxels=max_voxels)))
    if images:
        if images_as == "stack":
            nm = group_name or images[0].parent.name or "stack"
            items.append((nm, lambda images=images, nm=nm: read_image_stack(images, max_voxels=max_voxels, name=nm)))
        else:
            for f in images:
                items.append((case_name(f), lambda f=f: read_image(f, max_voxels=max_voxels)))
    for z in kinds["zip"]:
        tmp = extract_to_temp(z)
        temps.append(tmp)
        items.extend(_items_from_dir(_zip_root(tmp), images_as, time_index, max_voxels, case_name(z), temps, ignored))
    return items


def _items_from_dir(
    folder: Path, images_as: ImagesAs, time_index: int | None, max_voxels: int, name: str, temps: list[Path],
    ignored: list[Path],
) -> list[Item]:
    direct = _files_in(folder, recursive=False)
    items = _items_from_files(direct, False, images_as, time_index, max_voxels, name, temps, ignored)
    for sub in natural_sorted([d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]):
        if _has_dicom(sub):
            items.append((sub.name, lambda sub=sub: load(sub, time_index=time_index, max_voxels=max_voxels, name=sub.name)))
        else:
            log.info("load_dataset: ignoring sub-folder %s (no DICOM files; give it explicitly to read it)", sub)
            ignored.append(sub)
    return items


def _dedupe(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    out: list[Item] = []
    for nm, loader in items:
        if nm in seen:
            seen[nm] += 1
            new = f"{nm}_{seen[nm]}"
            log.warning("two inputs are both named %r; the second is called %r", nm, new)
            out.append((new, lambda loader=loader, new=new: _renamed(loader(), new)))
        else:
            seen[nm] = 1
            out.append((nm, loader))
    return out


def _renamed(vol: Volume, nm: str) -> Volume:
    vol.name = nm
    return vol


def load_dataset(
    sources: str | Path | Sequence[str | Path],
    *,
    images_as: ImagesAs = "auto",
    time_index: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Dataset:
    """Reads a dataset: files, folders, globs and zips, mixed.

    Each NIfTI/NumPy file is one volume; each 2D image (PNG/JPEG/TIFF/BMP or single-file X-ray
    DICOM) is one one-slice volume named by its file stem (``images_as="auto"`` or ``"set"``), or
    all images of one source form one stacked volume (``"stack"``); the DICOM series files of a
    source, or a sub-folder holding DICOM files, form one volume.

    Volumes are read lazily (on ``dataset[i]``), so a large dataset is not held in memory at once;
    formats are recognised up front, so an unsupported file fails here. Zips are extracted into a
    temporary folder removed when the Dataset is garbage-collected.

    Returns:
        :class:`Dataset` of named lazy items, natural order within each source.

    Raises:
        InputError subclasses as :func:`load`; InputError when nothing readable is found.
    """
    srcs: list[str | Path] = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not srcs:
        raise InputError("No input was given.")
    temps: list[Path] = []
    items: list[Item] = []
    ignored: list[Path] = []  # sub-folders skipped (named in the error when nothing is found)
    try:
        for s in srcs:
            paths = _expand(s)
            loose: list[Path] = []
            for p in paths:
                if p.is_dir():
                    items.extend(_items_from_dir(p, images_as, time_index, max_voxels, p.name, temps, ignored))
                elif is_zip(p) and not p.name.lower().endswith(".npz"):
                    tmp = extract_to_temp(p)
                    temps.append(tmp)
                    items.extend(
                        _items_from_dir(_zip_root(tmp), images_as, time_index, max_voxels, case_name(p), temps, ignored)
                    )
                else:
                    loose.append(p)
            if loose:
                group = loose[0].parent.name if len({f.parent for f in loose}) == 1 else ""
                items.extend(_items_from_files(loose, True, images_as, time_index, max_voxels, group, temps, ignored))
    except BaseException:
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)
        raise
    if not items:
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)
        hint = ""
        if ignored:
            shown = ", ".join(str(d) for d in ignored[:3])
            hint = f" Sub-folders are only read when they hold DICOM files; give the one you mean, e.g. {shown}."
        raise UnsupportedFormatError(
            f"No readable image found in {[str(s) for s in srcs]}.{hint} PromptOnce reads: {_formats()}."
        )
    dataset = Dataset(_dedupe(items))
    for t in temps:
        weakref.finalize(dataset, shutil.rmtree, t, True)
    return dataset


# ------------------------------------------------------------------------------- references

_MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_seg", "_segmentation", "_label", "_labels", "_gt", "_ref")


def _affine_tol(affine: np.ndarray) -> float:
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return max(1e-4, 1e-3 * float(np.min(spacing)))


def _geometry_diff(ref_aff: np.ndarray, img_aff: np.ndarray) -> str:
    rs = np.linalg.norm(ref_aff[:3, :3], axis=0)
    is_ = np.linalg.norm(img_aff[:3, :3], axis=0)
    return (
        f"origin {np.round(ref_aff[:3, 3], 3).tolist()} vs {np.round(img_aff[:3, 3], 3).tolist()} mm, "
        f"spacing {np.round(rs, 4).tolist()} vs {np.round(is_, 4).tolist()} mm, "
        f"largest affine difference {float(np.max(np.abs(ref_aff - img_aff))):.4g}"
    )


def _as_labels(arr: np.ndarray, from_picture: bool, what: str) -> np.ndarray:
    """Turns reference values into an integer label map (module docstring of load_reference)."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise InvalidValuesError(f"{what}: the reference mask holds NaN or inf values; fix the mask file.")
        if not from_picture and not np.array_equal(a, np.round(a)):
            if a.min() >= 0 and a.max() <= 1:
                log.warning("%s: non-integer reference values in 0..1, binarised at 0.5", what)
                return (a > 0.5).astype(np.uint8)
            raise InvalidValuesError(
                f"{what}: the reference holds non-integer values ({float(a.min()):.3g}..{float(a.max()):.3g}); "
                "give an integer label map (0 = background)."
            )
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0:
        raise InvalidValuesError(f"{what}: the reference has negative values (min {lo:g}); labels must be 0 or positive.")
    if from_picture:
        small = hi <= 20 and a.dtype.kind != "f" and len(np.unique(a)) <= 21
        if hi > 1 and not small:
            thr = 127 if hi <= 255 else 32767
            return (a > thr).astype(np.uint8)
    a = np.rint(a).astype(np.int64) if a.dtype.kind == "f" else a
    if hi <= 255:
        return a.astype(np.uint8)
    if hi <= 65535:
        return a.astype(np.uint16)
    return a.astype(np.int32)


def load_reference(
    source: str | Path | Sequence[str | Path], image: Volume, *, max_voxels: int = DEFAULT_MAX_VOXELS
) -> Volume:
    """Reads a reference mask for ``image`` and puts it on the image's display grid.

    ``source`` may also be the parts of one reference (a tuple from :func:`pair_references` with
    ``parts=True``: a left-lung and a right-lung mask of the same X-ray): each part is read and checked
    as below, and the foreground of part ``j`` (1-based, in the order given) becomes label ``j``; where
    parts overlap the earlier one keeps the pixel. The labels are named after the parts' folders
    (``leftMask``, ``rightMask``), or ``part j`` when their folders share a name.

    Values: NIfTI / NumPy / DICOM integer label maps keep their labels; a DICOM-SEG of a DICOM image
    gives each segment its number (:mod:`promptonce.io.dicomseg`); PNG/JPEG/TIFF/BMP masks
    are binarised with ``> 127`` (``> 32767`` for 16-bit) unless they hold small labels (max <= 20),
    which are kept. Boolean masks become 0/1; float masks in 0..1 are binarised at 0.5.

    Geometry: a NIfTI reference of a NIfTI/DICOM image gets the same reorientation as the image
    (exactly the image's when both files have the same grid; otherwise matched through world axes),
    then its shape and affine must equal the image's (tolerance 1e-3 x the smallest voxel size).
    Other references are compared by shape (and affine for DICOM).

    Returns:
        Volume whose ``array`` is the integer label map ``(slices, rows, cols)`` (uint8 when labels
        fit), with the image's affine and source geometry, and ``label_names`` when the file or a
        file beside it names the labels (:func:`promptonce.io.labelnames.read_label_names`).

    Raises:
        ReferenceMismatchError: shape or geometry differ (the message says how).
        InputError subclasses from the readers.
    """
    if not isinstance(source, (str, Path)):
        return _load_reference_parts([Path(p) for p in source], image, max_voxels)
    src = Path(source)
    what = f"reference {src}"
    kind = sniff(src) if src.is_file() else None
    geo = image.source
    if kind == "dicom" and is_dicom_seg(src):
        seg_labels, seg_names = read_dicom_seg(src, image)
        return Volume(array=seg_labels, affine=image.affine, name=case_name(src), source_format="dicom-seg",
                      modality="OT", source=image.source, label_names=seg_names)  # fmt: skip
    if kind == "nifti" and geo is not None and geo.ornt is not None:
        stored = read_nifti_stored(src, max_voxels=max_voxels)
        same_grid = tuple(stored.spatial_shape) == tuple(geo.shape) and np.allclose(
            stored.affine, geo.affine, rtol=0, atol=_affine_tol(geo.affine)
        )
        if same_grid:
            display, _, _ = to_display(stored.data, stored.affine, geo.ornt)
        else:
            from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

            # take the reference's voxel axes to the image's display axes through their world directions
            t = ornt_transform(io_orientation(stored.affine), io_orientation(image.affine))
            xyz = apply_orientation(stored.data, t)
            ref_display_aff = stored.affine @ inv_ornt_aff(t, stored.data.shape)
            display = np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)))
            if display.shape != image.shape:
                raise ReferenceMismatchError(
                    f"{what}: reference shape {tuple(stored.spatial_shape)} vs image {tuple(geo.shape)} "
                    f"({image.name}); the mask must be on the image's voxel grid. Check the pairing or resample the mask."
                )
            if not np.allclose(ref_display_aff, image.affine, rtol=0, atol=_affine_tol(image.affine)):
                raise ReferenceMismatchError(
                    f"{what}: same size as image {image.name} but another position/orientation in space: "
                    f"{_geometry_diff(ref_display_aff, image.affine)}. Resample the mask onto the image grid "
                    "(e.g. with 3D Slicer or SimpleITK) or check the pairing."
                )
        labels = _as_labels(display, False, what)
    else:
        if kind == "image":
            arr = read_image_array(src, max_voxels=max_voxels)
            ref = None
        else:
            ref = load(src, images_as="stack", max_voxels=max_voxels)
            arr = ref.array
        if arr.shape != image.shape:
            raise ReferenceMismatchError(
                f"{what}: reference shape {tuple(arr.shape)} vs image {image.shape} ({image.name}), both as "
                "(slices, rows, cols); the mask must have the image's size. Check the pairing."
            )
        if ref is not None and ref.source_format == "dicom" and image.source_format == "dicom" and not np.allclose(
            ref.affine, image.affine, rtol=0, atol=_affine_tol(image.affine)
        ):
            raise ReferenceMismatchError(f"{what}: another geometry than image {image.name}: {_geometry_diff(ref.affine, image.affine)}.")
        picture = kind == "image" or (ref is not None and ref.source_format == "image")
        labels = _as_labels(arr, picture, what)
    return Volume(
        array=labels,
        affine=image.affine,
        name=case_name(src),
        source_format=kind or "folder",
        modality="OT",
        source=image.source,
        label_names=read_label_names(src, label_values(labels)) if src.is_file() else {},
    )


def _load_reference_parts(parts: list[Path], image: Volume, max_voxels: int) -> Volume:
    """One reference from its parts (see :func:`load_reference`): part ``j``'s foreground is label ``j``."""
    if not parts:
        raise InputError(f"an empty list of reference parts was given for {image.name}; give at least one file.")
    if len(parts) > 255:
        raise InputError(f"{len(parts)} reference parts for {image.name}; at most 255 fit one label map.")
    first = load_reference(parts[0], image, max_voxels=max_voxels)
    out = (np.asarray(first.array) != 0).astype(np.uint8)
    for j, part in enumerate(parts[1:], start=2):  # one part in memory at a time besides the label map
        fg = np.asarray(load_reference(part, image, max_voxels=max_voxels).array) != 0
        overlap = int(np.count_nonzero(fg & (out != 0)))
        if overlap:
            log.info("reference part %s overlaps an earlier part of %s in %d pixels; the earlier part keeps them",
                     part, image.name, overlap)
        out[fg & (out == 0)] = j
    folders = [p.parent.name for p in parts]
    unique = len(set(folders)) == len(folders) and all(folders)
    names = {j: (folders[j - 1] if unique else f"part {j}") for j in range(1, len(parts) + 1)}
    return Volume(array=out, affine=first.affine, name=first.name, source_format=first.source_format,
                  modality="OT", source=first.source, label_names=names)


def reference_paths_json(names: Sequence[str], ref_paths: Sequence[Path | tuple[Path, ...]]) -> dict[str, str | list[str]]:
    """``{case: path}`` of :func:`pair_references`' result for a run's JSON; a reference in parts gives its parts."""
    return {n: [str(q) for q in p] if isinstance(p, tuple) else str(p) for n, p in zip(names, ref_paths)}


def label_values(labels: np.ndarray) -> list[int]:
    """The distinct non-zero values of an integer label map (fast for uint8: one bincount)."""
    arr = np.asarray(labels)
    if arr.dtype == np.uint8:
        return [int(v) for v in np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if v != 0]
    return [int(v) for v in np.unique(arr) if v != 0]


def _ref_keys(path: Path) -> list[str]:
    name = case_name(path)
    keys = [name]
    low = name.lower()
    for suffix in _MASK_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            keys.append(name[: -len(suffix)])
    return keys


def pair_references(
    images: Dataset, references: Sequence[str | Path], *, parts: bool = False
) -> list[Path | tuple[Path, ...]]:
    """Pairs each image of ``images`` with its reference file by name.

    A reference pairs with image ``name`` when its file name without suffixes (``.nii.gz``, ``.png``,
    ...) equals ``name``, or does after removing a mask suffix (``_mask``, ``_seg``, ``_label(s)``,
    ``_gt``, ...). ``references`` may hold files, folders (their files) and globs; label-name files
    (``.json``, ``.csv``, ``.txt``, ...; see :mod:`promptonce.io.labelnames`) are not references.

    With ``parts=True``, files of the same name in *different* entries of ``references`` are parts of
    one reference (the Montgomery and JSRT/SCR chest X-ray sets keep each lung in its own folder:
    ``leftMask/MCUCXR_0001_0.png`` and ``rightMask/MCUCXR_0001_0.png``); such an image pairs with the
    tuple of its parts in the order the entries were given, which :func:`load_reference` reads as
    labels 1, 2, ... Two files of one name within one entry are still refused.

    When no name pairs at all and there are as many references as images, they pair in the order
    given: one image with one reference pairs whatever their names (``image.nii.gz`` with
    ``labels.nii.gz``), and ``a.png, b.png`` with ``ma.png, mb.png`` pair in that order (logged as a
    warning when more than one pair is made so). A partial name match never falls back to order (a
    wrong pair of same-sized files would be scored silently). The readers still check that each pair
    has the same size and geometry.

    Returns:
        One reference path per image (a tuple of paths for a reference in parts), in the dataset's order.

    Raises:
        InputError: an image has no reference (the message lists them), or two references claim one name.
    """
    srcs = [references] if isinstance(references, (str, Path)) else list(references)
    entry: dict[Path, int] = {}  # reference file -> the entry of ``references`` it came from
    refs: list[Path] = []
    for i, r in enumerate(srcs):
        for p in _expand(r):
            for f in _files_in(p, recursive=False) if p.is_dir() else [p]:
                if not f.name.startswith(".") and not is_label_sidecar(f):
                    refs.append(f)
                    entry.setdefault(f, i)
    by_key: dict[str, Path] = {}
    exact: dict[str, Path] = {}
    more: dict[str, list[Path]] = {}  # parts=True: the further parts of the reference named by the key
    for p in refs:
        keys = _ref_keys(p)
        prev = exact.get(keys[0])
        if prev is not None and prev != p:
            taken = [prev, *more.get(keys[0], [])]
            if parts and all(entry[q] != entry[p] for q in taken):
                more.setdefault(keys[0], []).append(p)
                continue
            raise InputError(f"two references are both named {keys[0]!r}: {prev} and {p}; keep one.")
        exact[keys[0]] = p
        for k in keys[1:]:
            by_key.setdefault(k, p)

    def whole(p: Path) -> tuple[Path, ...]:  # a reference with its further parts, in the order of the entries
        return tuple(sorted([p, *more.get(_ref_keys(p)[0], [])], key=lambda q: entry[q]))

    found: list[Path | None] = [exact.get(nm) or by_key.get(nm) for nm in images.names]
    claimed = {str(q) for p in found if p is not None for q in whole(p)}
    further = {q for qs in more.values() for q in qs}  # later parts go with their first part, never alone
    free = [p for p in refs if str(p) not in claimed and p not in further]
    free = list(dict.fromkeys(free))  # a file given twice counts once
    if all(p is None for p in found) and len(free) == len(found) > 0:
        found = list(free)
        if len(found) > 1:
            log.warning("pair_references: no reference name matches an image name; %d pairs made in the order given",
                        len(found))  # fmt: skip
    missing = [nm for nm, p in zip(images.names, found) if p is None]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(
            f"{len(missing)} of {len(images)} images have no reference mask: {shown}. References are paired by file "
            "name without extension (optionally with _mask/_seg/_label); rename them or give them in the same order."
        )
    groups = [whole(p) for p in found if p is not None]
    out: list[Path | tuple[Path, ...]] = [g if len(g) > 1 else g[0] for g in groups]
    unused = {str(p) for p in refs} - {str(q) for g in groups for q in g}
    if unused:
        log.info("pair_references: %d reference files were not used (e.g. %s)", len(unused), sorted(unused)[0])
    n_parts = sum(isinstance(p, tuple) for p in out)
    if n_parts:
        log.info("pair_references: %d of %d references come in parts (same name in different folders)", n_parts, len(out))
    return out
