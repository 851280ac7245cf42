"""Checkpoints: resolve, download (resumable, verified, atomic) and load them safely.

Resolution order for :func:`resolve_checkpoint`:

1. an explicit path to an existing file;
2. the ``$PROMPTONCE_WEIGHTS`` directory (several may be given, separated by ``os.pathsep``);
3. the cache directory, ``$PROMPTONCE_CACHE`` or ``~/.cache/promptonce``;
4. the Hugging Face hub cache, where a Space's ``preload_from_hub`` put it (SAM 2/2.1 only; see
   :mod:`promptonce.backends.hub`; no network);
5. unless ``PROMPTONCE_OFFLINE=1`` or ``allow_download=False``: a download from the hub (the
   authors' hub repository at the spec's revision, with ``huggingface_hub``), else from the
   authors' URL, into the cache.

Every file found or fetched from steps 2-5 is checked against the size and sha256 in
:data:`KNOWN_CHECKPOINTS`, whatever its source.

A download streams into ``<file>.part`` in 1 MiB chunks, resumes a ``.part`` left by an interrupted
run with an HTTP ``Range`` request (the server must answer ``206`` with the matching
``Content-Range``, otherwise the download restarts), checks the size the server announced and the
published sha256, and only then moves the file into place with :func:`os.replace`. A checksum
mismatch deletes the ``.part`` and raises :class:`~promptonce.errors.WeightsError`.

Checkpoints without a published hash (none of the built-in ones today) are verified by the size the
server reports, and the hash of the first download is recorded beside the file in
``<file>.sha256`` (trust on first use); later resolutions compare the file's size with it.

A checkpoint found in ``$PROMPTONCE_WEIGHTS`` or the cache is checked by size and then by sha256
(the published one, else the recorded one) once per file: a successful check is recorded in
``<file>.sha256-verified`` (size, modification time in ns and hash, written atomically), and later
resolutions only compare the size and modification time with it; a changed file is hashed again.
Where the folder is read-only the result is remembered for the process instead. An explicit path
is the caller's own file and is not checked.

Command line (used by the Dockerfile to bake weights into an image)::

    python -m promptonce.backends.weights fetch sam2.1_hiera_tiny sam_vit_b
    python -m promptonce.backends.weights list
    python -m promptonce.backends.weights path sam_vit_b
    python -m promptonce.backends.weights verify sam_vit_b
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from . import hub

__all__ = [
    "CheckpointSpec",
    "KNOWN_CHECKPOINTS",
    "cache_dir",
    "search_dirs",
    "find_spec",
    "resolve_checkpoint",
    "download_checkpoint",
    "sha256_file",
    "verify_checkpoint",
    "load_state_dict",
    "main",
]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0
_LOG_EVERY_S = 5.0


@dataclass(frozen=True)
class CheckpointSpec:
    """A published checkpoint file.

    Attributes:
        name: PromptOnce model name (e.g. ``"sam2.1_hiera_t"``).
        filename: file name on disk and at the end of the URL.
        url: official download URL.
        sha256: published sha256 (lower-case hex), or None when none was found (trust on first use).
        size: size in bytes when known, else None.
        remedy: what to tell a user whose file fails its check; empty: download it again from ``url``
            (a file shipped inside a pip package says which package to reinstall instead).
        hub_repo: the Hugging Face hub repository where the authors publish the same file, or None.
        hub_revision: the hub revision to take it from. The content itself is pinned by ``sha256``:
            a file that differs from our table is refused whatever the revision holds.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    remedy: str = ""
    hub_repo: str | None = None
    hub_revision: str = "main"


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SAM21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


def _spec(name: str, base: str, filename: str, sha256: str | None, size: int | None = None) -> CheckpointSpec:
    return CheckpointSpec(name=name, filename=filename, url=base + filename, sha256=sha256, size=size,
                          hub_repo=_HUB_REPOS.get(name))


# The authors' own hub repositories holding the same files (facebook/sam2*-hiera-*; sam2's
# build_sam.HF_MODEL_ID_TO_FILENAMES names the same file in each). SAM (ViT) checkpoints are not
# published there in their original format, so they come from the authors' URL only.
_HUB_REPOS: dict[str, str] = {
    f"{gen}_hiera_{short}": f"facebook/{gen}-hiera-{long}"
    for gen in ("sam2", "sam2.1")
    for short, long in (("t", "tiny"), ("s", "small"), ("b+", "base-plus"), ("l", "large"))
}


# Hashes and sizes as published alongside these files in public code (see the report of issue 4):
# every built-in checkpoint has a sha256; sizes are given where a public source stated them.
KNOWN_CHECKPOINTS: dict[str, CheckpointSpec] = {
    s.name: s
    for s in (
        _spec("sam_vit_b", _SAM, "sam_vit_b_01ec64.pth",
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        _spec("sam_vit_l", _SAM, "sam_vit_l_0b3195.pth",
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
        _spec("sam_vit_h", _SAM, "sam_vit_h_4b8939.pth",
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
        _spec("sam2_hiera_t", _SAM2, "sam2_hiera_tiny.pt",
              "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155_906_050),
        _spec("sam2_hiera_s", _SAM2, "sam2_hiera_small.pt",
              "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3"),
        _spec("sam2_hiera_b+", _SAM2, "sam2_hiera_base_plus.pt",
              "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071"),
        _spec("sam2_hiera_l", _SAM2, "sam2_hiera_large.pt",
              "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897_952_466),
        _spec("sam2.1_hiera_t", _SAM21, "sam2.1_hiera_tiny.pt",
              "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466),
        _spec("sam2.1_hiera_s", _SAM21, "sam2.1_hiera_small.pt",
              "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
        _spec("sam2.1_hiera_b+", _SAM21, "sam2.1_hiera_base_plus.pt",
              "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
        _spec("sam2.1_hiera_l", _SAM21, "sam2.1_hiera_large.pt",
              "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
    )
}


def cache_dir(sub: str | None = None) -> Path:
    """PromptOnce's cache folder, or its sub-folder ``sub`` (then created if missing).

    The folder is ``$PROMPTONCE_CACHE``, else ``$XDG_CACHE_HOME/promptonce``, else
    ``~/.cache/promptonce``. Checkpoints live in it directly; ``sub="onnx"`` holds the ONNX exports.

    Raises:
        OSError: ``sub`` was given and the folder cannot be created.
    """
    env = os.environ.get("PROMPTONCE_CACHE", "").strip()
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "promptonce"
    if sub is None:
        return root
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    return d


def search_dirs() -> list[Path]:
    """Directories searched for a checkpoint file, in order: ``$PROMPTONCE_WEIGHTS`` entries, the cache."""
    dirs = [Path(p).expanduser() for p in os.environ.get("PROMPTONCE_WEIGHTS", "").split(os.pathsep) if p.strip()]
    dirs.append(cache_dir())
    return dirs


def _downloads_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get("PROMPTONCE_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def find_spec(name: str) -> CheckpointSpec | None:
    """The known checkpoint called ``name``, or None.

    ``name`` may be the model name (``"sam2.1_hiera_t"``), the file name (``"sam2.1_hiera_tiny.pt"``)
    or the file name without its suffix (``"sam2.1_hiera_tiny"``, ``"sam_vit_b_01ec64"``).
    """
    if name in KNOWN_CHECKPOINTS:
        return KNOWN_CHECKPOINTS[name]
    for spec in KNOWN_CHECKPOINTS.values():
        if name in (spec.filename, spec.filename.rsplit(".", 1)[0]):
            return spec
    return None


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    allow_download: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Finds a checkpoint on disk, downloading it into the cache when needed and allowed.

    Args:
        name_or_path: a path to an existing file, a known model name (``"sam_vit_b"``,
            ``"sam2.1_hiera_t"``, ...; see :data:`KNOWN_CHECKPOINTS`) or a known file name.
        allow_download: False forbids the download, True allows it even when
            ``PROMPTONCE_OFFLINE=1``; None (default) allows it unless ``PROMPTONCE_OFFLINE=1``.
        progress: called as ``progress(bytes_done, bytes_total)`` while downloading
            (``bytes_total`` is 0 when the server does not say).

    Returns:
        The path of the checkpoint file.

    Raises:
        WeightsError: unknown name, missing file with downloads disabled (the message names the
            file, the directories searched and the URL to fetch it from), a failed download, a size
            or checksum mismatch.
    """
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    spec = find_spec(raw)
    if spec is None:
        if os.sep in raw or raw.endswith((".pt", ".pth", ".ckpt", ".safetensors")):
            raise WeightsError(f"Checkpoint file {path} does not exist. Check the path.")
        raise WeightsError(
            f"{raw!r} is neither an existing checkpoint file nor a known model name. Known names: "
            f"{', '.join(KNOWN_CHECKPOINTS)}; or give the path of a checkpoint file."
        )
    dirs = search_dirs()
    for d in dirs:
        candidate = d / spec.filename
        if candidate.is_file():
            _check_size(candidate, spec)
            _check_hash_once(candidate, spec)
            logger.debug("checkpoint %s found at %s", spec.name, candidate)
            return candidate
    if spec.hub_repo is not None:
        found = hub.cached_file(spec.hub_repo, spec.filename, spec.hub_revision)
        if found is not None:
            verify_checkpoint(found, spec)
            logger.debug("checkpoint %s found in the hub cache at %s", spec.name, found)
            return found
    if not _downloads_allowed(allow_download):
        searched = ", ".join(str(d) for d in dirs)
        if spec.hub_repo is not None:
            searched += f", the hub cache {hub.hub_cache_dir()} ({spec.hub_repo})"
        raise WeightsError(
            f"Checkpoint {spec.filename} for {spec.name} was not found and downloads are disabled "
            f"(PROMPTONCE_OFFLINE=1 or allow_download=False). Searched: {searched}. Download it from "
            f"{spec.url} and put it in one of those folders (or set PROMPTONCE_WEIGHTS to its folder)."
        )
    hub_error = None
    if spec.hub_repo is not None and hub.available() and not hub.offline():
        try:
            return _from_hub(spec, spec.hub_repo)
        except WeightsError as e:
            hub_error = e
            logger.warning("%s; trying the authors' URL %s", e, spec.url)
    try:
        return download_checkpoint(spec, cache_dir(), progress=progress)
    except WeightsError as e:
        if hub_error is None:
            raise
        raise WeightsError(f"{hub_error} And from the authors' URL: {e}") from e


def _from_hub(spec: CheckpointSpec, repo: str) -> Path:
    """Downloads ``spec`` from the hub repository ``repo`` into the cache (checked, then moved into place)."""
    dest_dir = cache_dir()
    dest = dest_dir / spec.filename

    def check(path: Path) -> None:
        try:
            verify_checkpoint(path, spec)
        except WeightsError as e:
            raise WeightsError(f"The hub's {repo}/{spec.filename} is not the expected file "
                               f"and was deleted: {e}") from e

    hub.download(repo, spec.filename, spec.hub_revision, dest, check)
    digest = spec.sha256 or sha256_file(dest)
    size = dest.stat().st_size
    _sidecar(dest).write_text(f"{digest} {size}\n", encoding="utf-8")
    _record_verified(dest, *_stat_key(dest), digest)
    return dest


def _check_size(path: Path, spec: CheckpointSpec) -> None:
    expected = spec.size
    if expected is None:
        recorded = _read_recorded(path)
        expected = recorded[1] if recorded else None
    if expected is not None:
        actual = path.stat().st_size
        if actual != expected:
            raise WeightsError(
                f"Checkpoint {path} has {actual} bytes but {spec.filename} has {expected}: it is truncated "
                f"or another file. Delete it and run again to download it from {spec.url}."
            )


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-verified")


#: (resolved path, size, mtime_ns, sha256) of files verified by this process (for read-only folders).
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _already_verified(path: Path, expected: str) -> bool:
    """True when ``path`` was hashed to ``expected`` and its size and mtime have not changed since."""
    size, mtime_ns = _stat_key(path)
    if (str(path.resolve()), size, mtime_ns, expected) in _VERIFIED:
        return True
    try:
        parts = _verified_sidecar(path).read_text(encoding="utf-8").split()
        return len(parts) == 3 and int(parts[0]) == size and int(parts[1]) == mtime_ns and parts[2] == expected
    except (OSError, ValueError):
        return False


def _record_verified(path: Path, size: int, mtime_ns: int, digest: str) -> None:
    """Records a successful sha256 check beside the file (atomically), and in this process."""
    _VERIFIED.add((str(path.resolve()), size, mtime_ns, digest))
    side = _verified_sidecar(path)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{size} {mtime_ns} {digest}\n", encoding="utf-8")
        os.replace(tmp, side)
    except OSError as e:  # a read-only weights folder: the check is remembered for this process only
        logger.debug("could not record the sha256 check of %s in %s: %s", path, side, e)
        tmp.unlink(missing_ok=True)


def _check_hash_once(path: Path, spec: CheckpointSpec) -> None:
    """Checks ``path`` against the spec's sha256 (or the recorded one) unless it was already checked.

    Raises:
        WeightsError: the file's sha256 differs (the message names the file, both hashes and what to do).
    """
    expected = spec.sha256 or (rec[0] if (rec := _read_recorded(path)) else None)
    if expected is None or _already_verified(path, expected):
        return
    size, mtime_ns = _stat_key(path)
    logger.info("checking the sha256 of %s (once per file)", path)
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(
            f"Checkpoint {path} has sha256 {digest}, expected {expected} for {spec.filename}: the file is "
            f"corrupt or another file of the same size. Delete it and run again to download it from "
            f"{spec.url} (or put the right file there)."
        )
    if _stat_key(path) == (size, mtime_ns):  # not replaced while it was being read
        _record_verified(path, size, mtime_ns, digest)


def _read_recorded(path: Path) -> tuple[str, int] | None:
    side = _sidecar(path)
    try:
        parts = side.read_text(encoding="utf-8").split()
        return parts[0], int(parts[1])
    except (OSError, IndexError, ValueError):
        return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Returns the lower-case hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(path: str | os.PathLike[str], spec: CheckpointSpec) -> str:
    """Checks a file against the spec's size and sha256 (or the hash recorded on first download).

    The one verification routine for every checkpoint: downloaded ones, the ones shipped inside pip
    packages (LiteMedSAM, MobileSAM) and the ONNX exports. A file is hashed once per process: the
    result is remembered by ``(path, size, modification time)``, so a replaced file is hashed again.

    Args:
        path: the file.
        spec: what it must be; ``spec.size`` (when known) is checked before hashing.

    Returns:
        The file's sha256.

    Raises:
        WeightsError: the file is missing, its size or sha256 differs (the message says what to do:
            ``spec.remedy`` when given, else download it again from ``spec.url``), or there is nothing
            to compare with.
    """
    p = Path(path)
    fix = spec.remedy or f"Delete it and download it again from {spec.url}."
    try:
        size, mtime_ns = _stat_key(p)
    except OSError as e:
        raise WeightsError(f"Checkpoint {p} is missing ({e}). {fix}") from e
    if spec.size is not None and size != spec.size:
        raise WeightsError(
            f"Checkpoint {p} has {size} bytes, expected {spec.size} for {spec.filename}: the file is "
            f"truncated or replaced. {fix}"
        )
    expected = spec.sha256 or (rec[0] if (rec := _read_recorded(p)) else None)
    if expected is None:
        raise WeightsError(f"No sha256 is known for {spec.filename}; nothing to verify {p} against.")
    if (str(p.resolve()), size, mtime_ns, expected) in _VERIFIED:
        return expected
    digest = sha256_file(p)
    if digest != expected:
        raise WeightsError(
            f"{p} has sha256 {digest}, expected {expected}: the file is corrupt or not {spec.filename}. {fix}"
        )
    if _stat_key(p) == (size, mtime_ns):  # not replaced while it was being read
        _VERIFIED.add((str(p.resolve()), size, mtime_ns, digest))
    return digest


class _Progress:
    """Calls the user's callback on every chunk and logs at most every few seconds."""

    def __init__(self, name: str, callback: Callable[[int, int], None] | None) -> None:
        self.name = name
        self.callback = callback
        self.last_log = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(done, total)
        now = time.monotonic()
        if now - self.last_log >= _LOG_EVERY_S or (total and done >= total):
            self.last_log = now
            if total:
                logger.info("downloading %s: %.1f / %.1f MB (%.0f%%)", self.name, done / 1e6, total / 1e6,
                            100.0 * done / total)
            else:
                logger.info("downloading %s: %.1f MB", self.name, done / 1e6)


def _open(url: str, start: int) -> Any:
    headers = {"User-Agent": "promptonce-weights/1"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(req, timeout=_TIMEOUT_S)  # noqa: S310 - fixed https URLs or a user's own


def download_checkpoint(
    spec: CheckpointSpec,
    dest_dir: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Downloads ``spec`` into ``dest_dir``: resumable, size- and sha256-checked, atomic.

    Args:
        spec: the checkpoint to fetch.
        dest_dir: target folder (created if missing).
        progress: ``progress(bytes_done, bytes_total)`` callback (``bytes_total`` 0 when unknown).

    Returns:
        The path of the verified file ``dest_dir / spec.filename``.

    Raises:
        WeightsError: the download failed (the ``.part`` is kept for a later resume), the size does
            not match, or the checksum does not match (the ``.part`` is deleted).
    """
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"Cannot create the weights folder {dest_dir}: {e}. Set PROMPTONCE_CACHE "
                           f"to a writable folder.") from e
    dest = dest_dir / spec.filename
    part = dest_dir / (spec.filename + ".part")
    report = _Progress(spec.filename, progress)
    start = part.stat().st_size if part.is_file() else 0
    hasher = hashlib.sha256()
    try:
        resp = _open(spec.url, start)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:
            # The server says the range starts past the end: the .part may be complete already.
            logger.info("server refused resuming %s at byte %d; checking the partial file", spec.filename, start)
            total = start
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                    hasher.update(chunk)
            return _finish(spec, part, dest, hasher.hexdigest(), start, total)
        raise WeightsError(_failed(spec, f"HTTP {e.code} {e.reason}", part)) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise WeightsError(_failed(spec, str(getattr(e, "reason", e)), part)) from e
    with resp:
        status = getattr(resp, "status", 200)
        length = int(resp.headers.get("Content-Length") or 0)
        if start > 0 and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == start:
            logger.info("resuming %s at byte %d", spec.filename, start)
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                    hasher.update(chunk)
            mode, done, total = "ab", start, start + length if length else 0
        else:
            if start > 0:
                logger.info("server did not resume %s (HTTP %s); starting over", spec.filename, status)
            mode, done, total = "wb", 0, length
        if spec.size is not None and total and total != spec.size:
            raise WeightsError(
                f"The server announces {total} bytes for {spec.filename} but it has {spec.size}. "
                f"Not downloading it; fetch it manually from {spec.url} and check it."
            )
        try:
            with open(part, mode) as out:
                report(done, total)
                while True:
                    chunk = resp.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    report(done, total)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise WeightsError(_failed(spec, f"{e} after {done} bytes", part)) from e
    return _finish(spec, part, dest, hasher.hexdigest(), done, total or (spec.size or 0))


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(m.group(1)) if m else None


def _failed(spec: CheckpointSpec, why: str, part: Path) -> str:
    kept = f" The partial file {part} is kept; running again resumes it." if part.is_file() else ""
    return (
        f"Downloading {spec.filename} from {spec.url} failed: {why}.{kept} Without network access, fetch "
        f"the file elsewhere and put it in {cache_dir()} or a folder named by PROMPTONCE_WEIGHTS."
    )


def _finish(spec: CheckpointSpec, part: Path, dest: Path, digest: str, done: int, total: int) -> Path:
    if total and done != total:
        raise WeightsError(_failed(spec, f"the connection ended after {done} of {total} bytes", part))
    if spec.size is not None and done != spec.size:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"Downloaded {done} bytes for {spec.filename} but it has {spec.size}; the partial file was "
            f"deleted. Run again, or fetch it manually from {spec.url}."
        )
    if spec.sha256 is not None and digest != spec.sha256:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"Checksum mismatch for {spec.filename} from {spec.url}: got sha256 {digest}, expected "
            f"{spec.sha256}. The download was deleted; run again (a proxy or a broken mirror may have "
            f"altered it)."
        )
    os.replace(part, dest)
    if spec.sha256 is None:
        logger.warning(
            "%s has no published sha256; recorded %s (%d bytes) in %s (trust on first use)",
            spec.filename, digest, done, _sidecar(dest),
        )
    _sidecar(dest).write_text(f"{digest} {done}\n", encoding="utf-8")
    _record_verified(dest, *_stat_key(dest), digest)
    logger.info("saved %s (%d bytes, sha256 %s)", dest, done, digest)
    return dest


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads a checkpoint with ``torch.load(..., weights_only=True)`` on the CPU.

    Returns:
        The loaded mapping (a state dict, or a dict holding one, e.g. SAM 2's ``{"model": ...}``).

    Raises:
        WeightsError: the file is missing, truncated, not a torch checkpoint, or holds objects that a
            weights-only load refuses (PromptOnce never unpickles arbitrary code).
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"Checkpoint {p} does not exist.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(
            f"Cannot load {p} as a weights-only torch checkpoint ({type(e).__name__}: {str(e)[:300]}). "
            f"The file is truncated or corrupt, or it holds pickled code, which PromptOnce refuses to "
            f"run. Delete it and download it again."
        ) from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{p} holds a {type(obj).__name__}, not a state dict; it is not a model checkpoint.")
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m promptonce.backends.weights {fetch,list,path,verify} NAME...``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m promptonce.backends.weights",
                                     description="Fetch and check PromptOnce model checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve or download checkpoints into the cache")
    p_fetch.add_argument("names", nargs="+")
    sub.add_parser("list", help="list the known checkpoints")
    p_path = sub.add_parser("path", help="print where a checkpoint is (no download)")
    p_path.add_argument("names", nargs="+")
    p_verify = sub.add_parser("verify", help="check the sha256 of resolved checkpoints (no download)")
    p_verify.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = sys.stdout
    try:
        if args.command == "list":
            for s in KNOWN_CHECKPOINTS.values():
                out.write(f"{s.name}\t{s.filename}\t{s.sha256 or '-'}\t{s.url}\n")
            return 0
        for name in args.names:
            if args.command == "fetch":
                path = resolve_checkpoint(name)
            else:
                path = resolve_checkpoint(name, allow_download=False)
            if args.command == "verify":
                spec = find_spec(name) or CheckpointSpec(name, path.name, "", None)
                out.write(f"{verify_checkpoint(path, spec)}  {path}\n")
            else:
                out.write(f"{path}\n")
    except WeightsError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
