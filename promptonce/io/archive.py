"""Safe zip extraction.

Refused (with :class:`~promptonce.errors.InputError` subclasses, before anything is written):
absolute member paths, ``..`` components, drive letters, symbolic links, encrypted members, more
than ``max_members`` members, a total uncompressed size over ``max_bytes`` (a byte budget, checked
on the directory and again while writing, since declared sizes can lie), and members over 16 MiB
compressed more than ``max_ratio`` times (zip bombs). ``__MACOSX/`` and dot-files are skipped.
"""

from __future__ import annotations

import logging
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..errors import CorruptFileError, InputError, TooLargeError
from ._common import DEFAULT_MAX_ZIP_BYTES, DEFAULT_MAX_ZIP_RATIO

log = logging.getLogger(__name__)

__all__ = ["safe_extract", "extracted", "extract_to_temp", "is_zip", "content_root"]

_RATIO_MIN_BYTES = 16 * 1024**2
_CHUNK = 1024 * 1024


def is_zip(path: str | Path) -> bool:
    """True when the file starts like a zip archive (``PK\\x03\\x04`` or an empty archive)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in (b"PK\x03\x04", b"PK\x05\x06")


def content_root(folder: str | Path) -> Path:
    """The folder an extracted archive's content starts in: descends while the folder holds a single
    sub-folder and nothing else (dot-files aside), as "compress folder" tools make them."""
    folder = Path(folder)
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            folder = entries[0]
        else:
            return folder


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"{archive}: member {info.filename!r} has an absolute path; refusing to extract this archive.")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise InputError(f"{archive}: member {info.filename!r} points outside the archive ('..'); refusing to extract it.")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract this archive.")
    if info.flag_bits & 0x1:
        raise InputError(f"{archive}: member {info.filename!r} is encrypted; unzip it yourself and give the folder.")
    if info.is_dir() or not parts:
        return None
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return PurePosixPath(*parts)


def safe_extract(
    archive: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_ratio: float = DEFAULT_MAX_ZIP_RATIO,
    max_members: int = 100_000,
) -> list[Path]:
    """Extracts a zip archive into ``dest`` after checking every member (see the module docstring).

    Args:
        archive: the ``.zip`` file.
        dest: an existing, empty folder.
        max_bytes: byte budget for the total uncompressed size.
        max_ratio: largest compression ratio for members over 16 MiB.
        max_members: largest number of members.

    Returns:
        The extracted files, in archive order.

    Raises:
        CorruptFileError: not a zip, or a damaged one (bad CRC, truncated).
        TooLargeError: over the byte budget or the ratio.
        InputError: unsafe member names, links, encryption.
    """
    archive = Path(archive)
    dest = Path(dest)
    if archive.stat().st_size == 0:
        raise CorruptFileError(f"{archive}: the file is empty (0 bytes).")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptFileError(f"{archive}: not a readable zip archive ({exc}). Re-create the archive.") from exc
    out: list[Path] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise TooLargeError(f"{archive}: {len(infos):,} members exceed the limit of {max_members:,}.")
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        for info in infos:
            rel = _member_path(info, archive)
            if rel is None:
                continue
            total += info.file_size
            if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise TooLargeError(
                    f"{archive}: member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f} times "
                    f"(limit {max_ratio:.0f}); this looks like a zip bomb and is not extracted."
                )
            plan.append((info, rel))
        if total > max_bytes:
            raise TooLargeError(
                f"{archive}: {total:,} bytes uncompressed exceed the budget of {max_bytes:,} bytes; unzip it yourself "
                "and give the folder, or raise the budget."
            )
        written = 0
        root = dest.resolve()
        for info, rel in plan:
            target = (dest / Path(*rel.parts)).resolve()
            if root not in target.parents:
                raise InputError(f"{archive}: member {info.filename!r} would land outside the extraction folder.")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    member_bytes = 0
                    while chunk := src.read(_CHUNK):
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if member_bytes > info.file_size or written > max_bytes:
                            raise TooLargeError(
                                f"{archive}: member {info.filename!r} is larger than its declared size or over the "
                                "byte budget; the archive is not trusted."
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, NotImplementedError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise CorruptFileError(
                    f"{archive}: member {info.filename[:120]!r} cannot be extracted ({why}); the archive is damaged or "
                    "its member names do not fit a file system (too long, or a file and a folder of the same name)."
                ) from exc
            out.append(target)
    log.debug("extracted %d files (%d bytes) from %s", len(out), written, archive)
    return out


def extract_to_temp(archive: str | Path, **limits) -> Path:
    """Extracts into a new temporary folder and returns it; the caller removes it (``shutil.rmtree``)."""
    tmp = Path(tempfile.mkdtemp(prefix="promptonce-zip-"))
    try:
        safe_extract(archive, tmp, **limits)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextmanager
def extracted(archive: str | Path, **limits) -> Iterator[Path]:
    """Context manager: extracts ``archive`` into a temporary folder, yields it, and removes it afterwards."""
    tmp = extract_to_temp(archive, **limits)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
