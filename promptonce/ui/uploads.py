"""Uploads: files copied into the session folder, zips unpacked there (within its quota), examples.

Every upload is copied into a fresh folder of the browser session and read from there; zips are
extracted inside the session folder (zips inside zips up to :data:`MAX_ZIP_DEPTH` levels, at most
:data:`MAX_ZIPS` archives), so no reader ever unpacks an upload elsewhere and everything counts
against the session's quota and goes with it. The result is a new
:class:`~promptonce.ui.workspace.Workspace` of the session.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..annotation import CaseInfo
from ..errors import InputError, PromptOnceError, TooLargeError
from ..io import natural_key
from ..io.timepoints import TimePoints
from ..types import Volume
from .messages import user_message
from .session import Session
from .workspace import Workspace, app_max_voxels, server_budget

__all__ = ["ASSETS", "EXAMPLES", "MAX_ZIP_DEPTH", "MAX_ZIPS", "load_inputs", "load_example", "load_time_point", "drop_workspace"]

#: Repository assets (synthetic examples made by scripts/make_assets.py).
ASSETS = Path(__file__).resolve().parents[2] / "assets"
#: Example name -> (input files, reference files, loading mode).
EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "ct": (("ct_phantom/ct_phantom.nii.gz",), ("ct_phantom/ct_phantom_mask.nii.gz",), "auto"),
    "xray": (
        tuple(f"xray/images/cxr_{i:02d}.png" for i in range(1, 5)),
        tuple(f"xray/masks/cxr_{i:02d}.png" for i in range(1, 5)),
        "set",
    ),
}
#: Zips inside an uploaded zip are opened this many levels deep (the upload itself is level 1).
MAX_ZIP_DEPTH = 3
#: The most zip archives one load opens (uploads and the zips inside them).
MAX_ZIPS = 256


def _copy_into(session: Session, paths: Sequence[str | Path], folder: str) -> list[Path]:
    """Copies uploaded files into a fresh folder of the session (quota checked); returns the copies."""
    srcs = [Path(p) for p in paths if p]
    size = 0
    for p in srcs:
        if not p.is_file():
            raise InputError(f"{p.name} is not a file; upload files (a zip for a folder of DICOM files).")
        size += p.stat().st_size
    session.check_quota(size)
    dest = session.subdir(folder, fresh=True)
    out: list[Path] = []
    used: set[str] = set()
    for p in srcs:
        name = re.sub(r"[^A-Za-z0-9._ -]+", "_", p.name).strip() or "upload"
        name = name.lstrip(".") or "upload"
        base, n = name, 1
        while name.lower() in used:
            n += 1
            name = f"{n}_{base}"
        used.add(name.lower())
        target = dest / name
        shutil.copyfile(p, target)
        out.append(target)
    return out


def load_inputs(
    session: Session,
    paths: Sequence[str | Path],
    reference_paths: Sequence[str | Path] = (),
    images_as: str = "auto",
    remove_sources: bool = False,
    max_voxels: int | None = None,
    time_index: int | None = None,
) -> Workspace:
    """Loads uploaded files into a new workspace of the session (the previous one is dropped).

    Zips are extracted inside the session folder, within its quota: a zip holding a single folder
    is read from that folder, and zips inside zips (up to :data:`MAX_ZIP_DEPTH` levels) are
    extracted there too, so no reader ever unpacks an upload elsewhere.

    Args:
        session: the browser session.
        paths: the uploaded image/volume files (NIfTI, DICOM files or a zip, PNG/JPG, ...).
        reference_paths: optional reference masks, paired to the images by file name.
        images_as: how several 2D images are read: ``auto``, ``set`` (separate images) or
            ``stack`` (slices of one volume).
        remove_sources: delete the uploaded originals once copied (they sit in Gradio's upload
            folder; the copies live in the session folder and go with it).
        max_voxels: voxel budget per image and reference (default: :func:`app_max_voxels`).
        time_index: the time point (0-based) of a 4D input (default: the first; see
            :func:`load_time_point` to show another).

    Returns:
        The new workspace (also stored as ``session.workspace``).

    Raises:
        InputError: nothing uploaded, a file no reader understands, references that do not match,
            zips nested too deep, ...
        TooLargeError: over the session's quota, or an image over the voxel budget.
    """
    if not paths:
        raise InputError("No file was uploaded; choose one or more images or volumes, or pick an example.")
    if images_as not in ("auto", "set", "stack"):
        raise InputError(f"Unknown loading mode {images_as!r}; use auto, set or stack.")
    with session.lock:
        try:
            inputs = _copy_into(session, paths, "inputs")
            refs = _copy_into(session, reference_paths, "references") if reference_paths else []
        finally:
            if remove_sources:
                for p in list(paths) + list(reference_paths):
                    Path(p).unlink(missing_ok=True)
                    try:
                        Path(p).parent.rmdir()  # the upload's own folder, when now empty
                    except OSError:
                        pass
        drop_workspace(session)
        session.clear("results", "out", "unzipped", "unzipped-references")  # views stay: see _last_view
        budget = app_max_voxels() if max_voxels is None else int(max_voxels)
        sources = _unzip_into(session, inputs)
        return _build_workspace(session, sources, refs, inputs, images_as, budget, time_index)


def _count_time_points(sources: Sequence[Path]) -> TimePoints | None:
    """The time points of a 4D input among ``sources`` (the one with the most), or None when all are 2D/3D."""
    from ..io import time_points

    best: TimePoints | None = None
    for src in sources:
        try:
            tp = time_points(src)
        except PromptOnceError:
            continue  # the reader says what is wrong when it loads the file
        if tp.is_4d and (best is None or tp.count > best.count):
            best = tp
    return best


def _build_workspace(
    session: Session,
    sources: Sequence[Path],
    refs: Sequence[Path],
    inputs: list[Path],
    images_as: str,
    budget: int,
    time_index: int | None,
    paired_refs: Sequence[Path | None] | None = None,
) -> Workspace:
    """Reads ``sources`` (at ``time_index`` for a 4D input, 0 by default), pairs the references and
    stores the new workspace on the session (the caller holds the session's lock)."""
    from ..io.readers import load_dataset, pair_references

    tp = _count_time_points(sources)
    if tp is not None:
        time_index = 0 if time_index is None else int(time_index)
        if not 0 <= time_index < tp.count:
            raise InputError(f"Time point {time_index + 1} does not exist; this input has {tp.count}.")
    else:
        time_index = None
    dataset = load_dataset(list(sources), images_as=images_as, max_voxels=budget, time_index=time_index)
    if len(dataset) == 0:
        raise InputError("No image was found in the upload; upload NIfTI, DICOM, PNG or JPG files.")
    metas: list[CaseInfo] = []
    first: Volume | None = None
    for i in range(len(dataset)):
        with server_budget(budget):
            vol = dataset[i]
        metas.append(CaseInfo.of(vol))
        if i == 0:
            first = vol
        del vol
    ref_list: list[Path | None] = [None] * len(dataset)
    ref_note = ""
    if paired_refs is not None and len(paired_refs) == len(dataset):
        ref_list[:] = list(paired_refs)
    elif refs:
        try:
            paired = [Path(p) for p in pair_references(dataset, refs)]
        except InputError as exc:
            ref_note = f"The reference masks are not used: {exc}"
        else:
            ref_list[:] = _unzip_references(session, paired)
    ws = Workspace(session, dataset, metas, ref_list, inputs, max_voxels=budget, first=first)
    ws.view_counter = _last_view(session)
    ws.sources, ws.reference_files, ws.images_as = list(sources), list(refs), images_as
    ws.time_points, ws.time_index = tp, time_index
    if ref_note:
        ws.notes.append(ref_note)
    session.workspace = ws
    # check the references now, so a mismatch is reported at upload time (the images stay loaded)
    for v in range(len(ref_list)):
        if ref_list[v] is not None and v < 3:
            try:
                ws.reference(v)
            except PromptOnceError as exc:
                ws.references = [None] * len(ref_list)
                ws.notes.append(f"The images are loaded; the reference masks are not used: {user_message(exc, session)}")
                break
    return ws


def _last_view(session: Session) -> int:
    """The number of the session's newest view image: a new workspace numbers its views after it, so
    that no view URL is used twice (a browser would show its cached picture of the old one)."""
    folder = session.path("view")
    best = 0
    for p in folder.glob("view_*.png") if folder.is_dir() else []:
        tail = p.stem[5:]
        if tail.isdigit() and len(tail) <= 9:
            best = max(best, int(tail))
    return best


def load_time_point(session: Session, index: int) -> Workspace:
    """Reloads the session's 4D input at time point ``index`` (0-based): a new workspace (prompts and
    results start afresh; the references stay paired).

    Raises:
        InputError: nothing loaded, the input has one time point, or ``index`` is out of range.
    """
    ws = session.workspace
    if ws is None:
        raise InputError("Load images first: upload files or pick an example.")
    tp = ws.time_points
    if tp is None:
        raise InputError("This input has a single time point; there is no other to show.")
    index = int(index)
    if not 0 <= index < tp.count:
        raise InputError(f"Time point {index + 1} does not exist; this input has {tp.count} (1..{tp.count}).")
    sources, refs, paired = ws.sources, ws.reference_files, list(ws.references)
    images_as, inputs, budget = ws.images_as, ws.input_paths, ws.max_voxels
    with session.lock:
        drop_workspace(session)
        session.clear("results", "out")
        return _build_workspace(session, sources, refs, inputs, images_as, budget, index, paired_refs=paired)


def _is_archive(path: Path) -> bool:
    """True for a file the readers would open as a zip: zip magic, and not a NumPy ``.npz``, a file
    named as NIfTI or NumPy, or a DICOM file (``DICM`` at byte 128)."""
    from ..io.archive import is_zip

    low = path.name.lower()
    if path.name.startswith(".") or low.endswith((".npz", ".npy", ".nii", ".nii.gz", ".hdr", ".img")):
        return False
    if not (path.is_file() and not path.is_symlink() and is_zip(path)):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] != b"DICM"


def _free_folder(parent: Path, name: str) -> Path:
    """A new, empty folder (mode 0700) ``parent/<name>`` (or ``<name>_2``, ...) with a safe name."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "archive"
    dest, n = parent / base, 1
    while dest.exists():
        n += 1
        dest = parent / f"{base}_{n}"
    dest.mkdir(mode=0o700)
    return dest


def _stem(path: Path) -> str:
    return path.name[:-4] if path.name.lower().endswith(".zip") else path.stem


@dataclass
class _Unpacking:
    """The zips of one load: the session's free bytes (walked once, then kept up to date) and how many
    archives were opened."""

    session: Session
    free: int
    opened: int = 0

    @classmethod
    def start(cls, session: Session) -> _Unpacking:
        return cls(session, max(0, session.max_bytes - session.bytes_used()))

    def extract(self, archive: Path, dest: Path, depth: int) -> None:
        """Extracts ``archive`` into the empty folder ``dest``, with the session's free space as the budget.

        Raises:
            InputError: nested deeper than :data:`MAX_ZIP_DEPTH`, or more than :data:`MAX_ZIPS` archives.
            TooLargeError: the content does not fit in the session's free space.
        """
        from ..io.archive import safe_extract

        if depth > MAX_ZIP_DEPTH:
            raise InputError(
                f"{archive.name} is a zip inside a zip more than {MAX_ZIP_DEPTH} levels deep; unzip the inner "
                "archives and upload their files (or one zip of them)."
            )
        self.opened += 1
        if self.opened > MAX_ZIPS:
            raise InputError(
                f"The upload holds more than {MAX_ZIPS} zip archives (counting zips inside zips); upload "
                "the files themselves, or one zip of them."
            )
        try:
            files = safe_extract(archive, dest, max_bytes=self.free)
        except TooLargeError as exc:
            if "exceed the budget" not in str(exc):
                raise
            raise TooLargeError(
                f"{archive.name} does not fit in this session once unpacked: {self.free / 2**20:.0f} MB of "
                f"its {self.session.max_bytes / 2**20:.0f} MB are free. Upload fewer or smaller files, or "
                "reload the page to start over."
            ) from None
        self.free -= sum(f.stat().st_size for f in files)

    def remove(self, archive: Path) -> None:
        """Deletes an archive whose content was extracted (its bytes are free again)."""
        size = archive.stat().st_size
        archive.unlink()
        self.free += size

    def open_upload(self, archive: Path, depth: int) -> list[Path]:
        """Extracts an upload (or a zip found directly in one) into ``unzipped/`` of the session folder.

        Returns:
            The folders to read, as :func:`~promptonce.io.readers.load_dataset` would have read the
            zip: the archive's content root (its single top folder, if any), then, for every zip
            directly in that root (natural order), that zip's own folders; those zips are deleted.
        """
        from ..io.archive import content_root

        dest = _free_folder(self.session.subdir("unzipped"), _stem(archive))
        self.extract(archive, dest, depth)
        root = content_root(dest)
        folders = [root]
        for z in sorted((f for f in root.iterdir() if _is_archive(f)), key=lambda f: natural_key(f.name)):
            folders.extend(self.open_upload(z, depth + 1))
            self.remove(z)
        self.open_in_place(root, depth, skip_direct=True)
        return folders

    def open_in_place(self, folder: Path, depth: int, skip_direct: bool) -> None:
        """Replaces every zip under ``folder`` (of nesting level ``depth``; not those directly in it when
        ``skip_direct``) by a folder of the same name holding its content (e.g. a zipped DICOM series
        inside a folder of series), so that no reader opens a zip later."""
        found = [
            Path(d) / f for d, _dirs, files in os.walk(folder) for f in files if not (skip_direct and Path(d) == folder)
        ]
        for z in sorted(found, key=lambda f: natural_key(str(f))):
            if not _is_archive(z):
                continue
            dest = _free_folder(z.parent, _stem(z))
            self.extract(z, dest, depth + 1)
            self.remove(z)
            self.open_in_place(dest, depth + 1, skip_direct=False)


def _unzip_into(session: Session, paths: list[Path]) -> list[Path]:
    """Extracts uploaded zips (not ``.npz``) into the session folder, so that they count against its
    quota and go with it; returns the inputs with each zip replaced by the folders to read (see
    :meth:`_Unpacking.open_upload`). No zip is left for a reader to extract elsewhere."""
    from ..io.archive import is_zip

    unpacking = _Unpacking.start(session)
    out: list[Path] = []
    try:
        for p in paths:
            if p.name.lower().endswith(".npz") or not is_zip(p):
                out.append(p)
                continue
            out.extend(unpacking.open_upload(p, depth=1))
    except BaseException:
        shutil.rmtree(session.directory / "unzipped", ignore_errors=True)
        raise
    return out


def _unzip_references(session: Session, paired: list[Path]) -> list[Path]:
    """Paired references that are zips (e.g. a zipped DICOM mask series) are extracted in the session
    folder like the inputs (quota counted, nested zips opened in place); each is then read from its
    zip's content folder. Returns ``paired`` with every zip replaced by that folder."""
    from ..io.archive import content_root, is_zip

    unpacking = _Unpacking.start(session)
    done: dict[Path, Path] = {}
    out: list[Path] = []
    try:
        for r in paired:
            if r not in done and not r.name.lower().endswith(".npz") and r.is_file() and is_zip(r):
                dest = _free_folder(session.subdir("unzipped-references"), _stem(r))
                unpacking.extract(r, dest, 1)
                unpacking.open_in_place(dest, 1, skip_direct=False)
                done[r] = content_root(dest)
            out.append(done.get(r, r))
    except BaseException:
        shutil.rmtree(session.directory / "unzipped-references", ignore_errors=True)
        raise
    return out


def load_example(session: Session, name: str) -> Workspace:
    """Loads one of the synthetic examples in ``assets/`` (with its reference masks)."""
    if name not in EXAMPLES:
        raise InputError(f"Unknown example {name!r}; pick one of {', '.join(EXAMPLES)}.")
    files, refs, mode = EXAMPLES[name]
    paths = [ASSETS / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"The example files are missing ({', '.join(missing)}); run scripts/make_assets.py.")
    return load_inputs(session, paths, [ASSETS / r for r in refs], images_as=mode)


def drop_workspace(session: Session) -> None:
    """Drops the session's workspace (its engines' embeddings and result maps go with it)."""
    ws = session.workspace
    session.workspace = None
    if ws is not None:
        ws.close()


