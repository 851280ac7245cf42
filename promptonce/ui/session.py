"""Per-session storage for the web app: one private folder and one workspace per browser session.

Every browser tab gets its own :class:`Session`, keyed by Gradio's ``session_hash``. A session owns

* a private folder ``<root>/<random 128-bit hex name>/`` (mode 0700) holding the user's uploads,
  extracted zips and result label maps. ``root`` must lie outside every folder the web server
  serves (Gradio's upload folder), so no URL reaches an upload whatever path it names;
* a results folder ``<results_root>/<another random 128-bit hex name>/`` (mode 0700) holding only
  outputs: the images the page shows (``view/``) and the files it offers for download (``out/``);
  :meth:`Session.subdir` puts these two folders there (:data:`RESULT_FOLDERS`). The web server
  serves files from ``results_root`` (it lies in Gradio's upload folder). Both names are random and
  never derived from the session id or from each other, so neither a guessed name nor an edited
  download URL reaches another folder or an upload;
* a ``workspace`` object (the loaded dataset, prompts, results; see :mod:`promptonce.ui.handlers`),
  kept in memory only, never in ``gr.State``;
* a ``cancel`` event that stops its running segmentation between slices.

Sessions end when the page is closed (``demo.unload``), when they have been idle for longer than the
time-to-live (a background sweep), or when the store is closed; their folder is then deleted.
The same background thread removes the empty temporary files that Gradio's ``File`` component leaves
in its upload folder (see :func:`remove_empty_upload_temps`).
This module does not import gradio, so it can be tested and reused without a server.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, PromptOnceError, TooLargeError

__all__ = [
    "RESULT_FOLDERS",
    "Session",
    "SessionStore",
    "default_roots",
    "folder_bytes",
    "is_inside",
    "remove_empty_upload_temps",
]

log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
#: Names of :func:`tempfile.NamedTemporaryFile` files: ``tmp`` + 8 characters of its alphabet.
_GRADIO_TMP_RE = re.compile(r"^tmp[a-z0-9_]{8}$")
#: How often the sweeper looks for Gradio's empty upload temp files (seconds).
UPLOAD_TEMP_SWEEP_S = 5.0
#: How old (seconds, by modification time) an empty temp file must be before it is removed.
UPLOAD_TEMP_MIN_AGE_S = 10.0
#: Sub-folders of a session that hold only outputs; they live in the session's served results folder.
RESULT_FOLDERS = frozenset({"out", "view"})


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved, links followed)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def default_roots(upload_folder: str | Path, private_root: str | Path | None = None) -> tuple[Path, Path]:
    """The store's folders for a server whose file route serves ``upload_folder``.

    Args:
        upload_folder: the folder the web server serves files from (Gradio's upload folder).
        private_root: where the private session folders go (``PROMPTONCE_SESSION_ROOT``); None: a
            ``promptonce-sessions-<uid>`` folder in the system temp folder, or in
            ``~/.cache/promptonce`` when the temp folder lies inside ``upload_folder``.

    Returns:
        ``(root, results_root)``: the private sessions' parent (outside ``upload_folder``) and the
        served results' parent ``<upload_folder>/promptonce-results``.

    Raises:
        PromptOnceError: when ``private_root`` lies inside ``upload_folder`` (uploads would be served).
    """
    import tempfile

    served = Path(upload_folder)
    results = served / "promptonce-results"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    if private_root:
        root = Path(private_root)
        if is_inside(root, served):
            raise PromptOnceError(
                f"PROMPTONCE_SESSION_ROOT ({root}) lies inside the web server's upload folder ({served}), "
                "whose files can be downloaded; set it to a folder outside it."
            )
        return root, results
    root = Path(tempfile.gettempdir()) / f"promptonce-sessions-{uid}"
    if is_inside(root, served):
        root = Path.home() / ".cache" / "promptonce" / f"sessions-{uid}"
    return root, results


def _open_in_this_process() -> set[str]:
    """Paths of the files this process holds open (Linux ``/proc/self/fd``; empty elsewhere)."""
    out: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return out


def remove_empty_upload_temps(folder: str | Path, min_age_s: float = UPLOAD_TEMP_MIN_AGE_S,
                              now: float | None = None) -> int:  # fmt: skip
    """Removes the empty temporary files Gradio's ``File`` component leaves in its upload folder.

    Gradio 6.31's ``gr.File(type="filepath").preprocess`` creates one
    ``tempfile.NamedTemporaryFile(delete=False, dir=<upload folder>)`` per uploaded file, never
    writes to it, never uses it and never removes it; ``delete_cache`` only covers the upload
    sub-folders. A file is removed only when all of these hold: it lies directly in ``folder``, is a
    regular file (not a link), is named like such a temp file (``tmp`` + 8 of ``[a-z0-9_]``), holds
    0 bytes, was last modified at least ``min_age_s`` seconds ago, and is not open in this process
    (an upload Gradio is still receiving is written through such a file; checked where ``/proc`` exists).

    Args:
        folder: Gradio's upload folder (``gradio.utils.get_upload_folder()``).
        min_age_s: the youngest file (seconds since its last modification) that may be removed.
        now: ``time.time()`` to compare with (tests).

    Returns:
        How many files were removed (0 when the folder does not exist).
    """
    now = time.time() if now is None else now
    removed = 0
    candidates: list[tuple[str, os.stat_result]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if not _GRADIO_TMP_RE.match(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_size == 0 and now - st.st_mtime >= min_age_s:
                    candidates.append((entry.path, st))
    except OSError:
        return 0
    if not candidates:
        return 0
    busy = _open_in_this_process()
    for path, st in candidates:
        if os.path.realpath(path) in busy:
            continue
        try:
            again = os.lstat(path)
            if again.st_size != 0 or again.st_ino != st.st_ino or again.st_mtime_ns != st.st_mtime_ns:
                continue  # written to or replaced since: not a leftover
            os.unlink(path)
            removed += 1
        except OSError:
            continue
    if removed:
        log.debug("removed %d empty Gradio upload temp file(s) from %s", removed, folder)
    return removed


def folder_bytes(path: Path) -> int:
    """Total size in bytes of the regular files under ``path`` (0 when it does not exist)."""
    total = 0
    if not path.exists():
        return 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


@dataclass(eq=False)
class Session:
    """One browser session's private state.

    Attributes:
        session_id: Gradio's ``session_hash`` (never used in file names).
        directory: the session's private folder (random name under the store's root): uploads,
            extracted zips, result label maps. Never served.
        max_bytes: the most bytes the session's two folders may hold together.
        results_directory: the session's served folder of outputs (another random name, under the
            store's ``results_root``): :data:`RESULT_FOLDERS`. None: outputs go in ``directory``
            (a session made without a store).
        created: ``time.time()`` at creation.
        last_seen: ``time.time()`` of the last access (refreshed by :meth:`touch`).
        lock: held while a handler changes the workspace (one change at a time per session).
        cancel: set to stop the session's running segmentation between slices.
        running: set while a segmentation runs (the sweep never removes a running session).
        workspace: the handlers' state object (dataset, prompts, results), or None.
    """

    session_id: str
    directory: Path
    max_bytes: int
    results_directory: Path | None = None
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    lock: threading.RLock = field(default_factory=threading.RLock)
    cancel: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)
    workspace: Any = None
    closed: bool = False
    _used: tuple[float, int] | None = field(default=None, repr=False)

    def touch(self) -> None:
        """Marks the session as active now (postpones its expiry)."""
        self.last_seen = time.time()

    def path(self, *parts: str) -> Path:
        """A path inside the session's folders; refuses names that would leave them.

        A path whose first part is one of :data:`RESULT_FOLDERS` (``out``, ``view``) lies in the
        served results folder; every other path lies in the private folder.

        Args:
            parts: path components relative to the session folder (e.g. ``"out", "mask.nii.gz"``).

        Raises:
            InputError: when the joined path would lie outside the folder it belongs to.
        """
        base = self.directory
        if parts and self.results_directory is not None and parts[0] in RESULT_FOLDERS:
            base = self.results_directory
        p = base.joinpath(*parts).resolve()
        root = base.resolve()
        if p != root and root not in p.parents:
            raise InputError("That file name is not allowed; use a plain name without folders.")
        return p

    def subdir(self, name: str, fresh: bool = False) -> Path:
        """A folder of the session, created if needed (emptied first when ``fresh``); ``out`` and
        ``view`` lie in the served results folder, any other name in the private folder."""
        d = self.path(name)
        if fresh and d.exists():
            shutil.rmtree(d, ignore_errors=True)
        if d.parent != d and not d.parent.exists():
            d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def clear(self, *names: str) -> None:
        """Deletes the named sub-folders of the session (wherever :meth:`subdir` puts them)."""
        for name in names:
            shutil.rmtree(self.path(name), ignore_errors=True)

    def folders(self) -> list[Path]:
        """The session's folders on disk: the private one, then the served results one (when separate)."""
        out = [self.directory]
        if self.results_directory is not None and self.results_directory != self.directory:
            out.append(self.results_directory)
        return out

    def bytes_used(self, max_age_s: float = 0.0) -> int:
        """Bytes stored in the session folder (a walk of the folder; reused for ``max_age_s`` seconds,
        plus what :meth:`check_quota` reserved since)."""
        now = time.monotonic()
        if self._used is None or now - self._used[0] > max_age_s:
            self._used = (now, sum(folder_bytes(d) for d in self.folders()))
        return self._used[1]

    def check_quota(self, extra_bytes: int = 0, max_age_s: float = 0.0) -> None:
        """Raises :class:`TooLargeError` when the folder plus ``extra_bytes`` would exceed ``max_bytes``.

        Args:
            extra_bytes: bytes about to be written (reserved when they fit).
            max_age_s: reuse a folder walk this recent (for frequent small checks).
        """
        used = self.bytes_used(max_age_s)
        if used + extra_bytes > self.max_bytes:
            raise TooLargeError(
                f"This session would hold {(used + extra_bytes) / 2**20:.0f} MB, over its limit of "
                f"{self.max_bytes / 2**20:.0f} MB. Upload fewer or smaller files, or reload the page to start over."
            )
        if self._used is not None:
            self._used = (self._used[0], used + max(0, int(extra_bytes)))


class SessionStore:
    """All live sessions of one server process, each with a private folder under ``root`` and a
    results folder under ``results_root``.

    Args:
        root: folder that holds one private sub-folder per session (created, mode 0700). Give it a
            folder of its own, outside every folder the web server serves: leftovers of dead
            processes older than ``ttl_s`` are removed from it.
        results_root: folder that holds one results sub-folder per session (outputs only; the web
            server serves it). Default: ``<root>-results`` beside ``root``.
        ttl_s: a session idle for longer than this many seconds is removed by :meth:`sweep`.
        max_session_bytes: the most bytes one session's folder may hold.
        max_sessions: the most sessions at once; the least recently seen idle one is evicted beyond that.
        on_close: called with a session just before its folder is deleted (e.g. to drop caches).
        upload_folder: Gradio's upload folder; the sweeper removes the empty temp files Gradio leaves
            there (see :func:`remove_empty_upload_temps`). None: not swept.

    Raises:
        PromptOnceError: when ``root`` lies inside ``upload_folder`` or ``results_root`` (uploads would
            be served), or ``results_root`` inside ``root``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        results_root: str | Path | None = None,
        ttl_s: float = 3600.0,
        max_session_bytes: int = 2 * 2**30,
        max_sessions: int = 64,
        on_close: Callable[[Session], None] | None = None,
        upload_folder: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.results_root = Path(results_root) if results_root is not None else self.root.with_name(
            self.root.name + "-results"
        )
        if is_inside(self.root, self.results_root) or is_inside(self.results_root, self.root):
            raise PromptOnceError(
                f"The session folders ({self.root}) and the results folders ({self.results_root}) must not "
                "contain each other: only results may be served. Give them separate folders."
            )
        self._upload_folder: Path | None = None
        self.upload_folder = Path(upload_folder) if upload_folder is not None else None
        for folder in (self.root, self.results_root):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                os.chmod(folder, 0o700)
            except OSError:
                log.debug("could not chmod %s", folder)
        self.ttl_s = float(ttl_s)
        self.max_session_bytes = int(max_session_bytes)
        self.max_sessions = int(max_sessions)
        self.on_close = on_close
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._remove_orphans()

    @property
    def upload_folder(self) -> Path | None:
        """Gradio's upload folder (served by the web server); the private root never lies inside it."""
        return self._upload_folder

    @upload_folder.setter
    def upload_folder(self, folder: str | Path | None) -> None:
        if folder is not None and is_inside(self.root, folder):
            raise PromptOnceError(
                f"The private session folder ({self.root}) lies inside the web server's upload folder "
                f"({folder}), whose files can be downloaded; give the store a root outside it "
                "(PROMPTONCE_SESSION_ROOT)."
            )
        self._upload_folder = Path(folder) if folder is not None else None

    # ------------------------------------------------------------------ access
    def get(self, session_id: str | None, create: bool = True) -> Session:
        """The session for ``session_id``, created on first use.

        Args:
            session_id: Gradio's ``request.session_hash``.
            create: create the session when it does not exist yet.

        Raises:
            InputError: when ``session_id`` is empty, or unknown and ``create`` is False.
        """
        if not session_id:
            raise InputError("This request has no browser session; reload the page.")
        with self._lock:
            sess = self._sessions.get(session_id)
            if sess is None:
                if not create:
                    raise InputError("This session has expired; reload the page to start again.")
                self._evict_for_new()
                directory = self.root / secrets.token_hex(16)
                results = self.results_root / secrets.token_hex(16)
                directory.mkdir(mode=0o700)
                results.mkdir(mode=0o700)
                sess = Session(session_id, directory, self.max_session_bytes, results_directory=results)
                self._sessions[session_id] = sess
                log.info("session opened (%d live)", len(self._sessions))
        sess.touch()
        return sess

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._sessions

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        with self._lock:
            return iter(list(self._sessions.values()))

    def total_bytes(self) -> int:
        """Bytes stored under both roots by all sessions (and any leftovers)."""
        return folder_bytes(self.root) + folder_bytes(self.results_root)

    # ------------------------------------------------------------------ cleanup
    def close(self, session_id: str | None, wait_s: float = 5.0) -> bool:
        """Ends a session: stops its run, forgets its workspace and deletes its folder.

        Args:
            session_id: the session to end (unknown ids are ignored).
            wait_s: how long to wait for a running segmentation to notice the cancel.

        Returns:
            True when a session was closed.
        """
        if not session_id:
            return False
        with self._lock:
            sess = self._sessions.pop(session_id, None)
        if sess is None:
            return False
        self._dispose(sess, wait_s)
        return True

    def _dispose(self, sess: Session, wait_s: float) -> None:
        sess.closed = True
        sess.cancel.set()
        deadline = time.time() + wait_s
        while sess.running.is_set() and time.time() < deadline:
            time.sleep(0.05)
        if self.on_close is not None:
            try:
                self.on_close(sess)
            except Exception:  # noqa: BLE001 - cleanup must go on whatever a hook does
                log.exception("session close hook failed")
        with sess.lock:
            sess.workspace = None
        for folder in sess.folders():
            shutil.rmtree(folder, ignore_errors=True)
        log.info("session closed (%d live)", len(self))

    def sweep(self, now: float | None = None) -> int:
        """Closes the sessions idle for longer than the TTL (running ones are kept).

        Returns:
            How many sessions were closed.
        """
        now = time.time() if now is None else now
        with self._lock:
            expired = [
                s for s in self._sessions.values() if now - s.last_seen > self.ttl_s and not s.running.is_set()
            ]
            for s in expired:
                self._sessions.pop(s.session_id, None)
        for s in expired:
            self._dispose(s, wait_s=0.0)
        return len(expired)

    def sweep_upload_temps(self, min_age_s: float = UPLOAD_TEMP_MIN_AGE_S) -> int:
        """Removes Gradio's empty upload temp files from :attr:`upload_folder` (when set); returns how many."""
        if self.upload_folder is None:
            return 0
        return remove_empty_upload_temps(self.upload_folder, min_age_s)

    def close_all(self) -> None:
        """Closes every session and stops the sweeper (server shutdown)."""
        self._stop.set()
        with self._lock:
            ids = list(self._sessions)
        for sid in ids:
            self.close(sid, wait_s=1.0)

    def start_sweeper(self, interval_s: float | None = None) -> None:
        """Starts a daemon thread that calls :meth:`sweep` every ``interval_s`` (default TTL / 4, 5..300 s)
        and :meth:`sweep_upload_temps` every :data:`UPLOAD_TEMP_SWEEP_S` seconds (when an upload folder is set)."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        interval = interval_s if interval_s is not None else min(300.0, max(5.0, self.ttl_s / 4))
        tick = min(interval, UPLOAD_TEMP_SWEEP_S) if self.upload_folder is not None else interval

        def loop() -> None:
            next_sweep = time.monotonic() + interval
            while not self._stop.wait(tick):
                try:
                    self.sweep_upload_temps()
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + interval
                        n = self.sweep()
                        if n:
                            log.info("swept %d idle session(s)", n)
                except Exception:  # noqa: BLE001 - the sweeper must survive one bad pass
                    log.exception("session sweep failed")

        self._sweeper = threading.Thread(target=loop, name="promptonce-session-sweeper", daemon=True)
        self._sweeper.start()

    def _evict_for_new(self) -> None:
        """Makes room for one more session (called with the lock held)."""
        if len(self._sessions) < self.max_sessions:
            return
        idle = sorted(
            (s for s in self._sessions.values() if not s.running.is_set()), key=lambda s: s.last_seen
        )
        if not idle:
            raise TooLargeError("The server is busy with other users right now; try again in a few minutes.")
        victim = idle[0]
        self._sessions.pop(victim.session_id, None)
        threading.Thread(target=self._dispose, args=(victim, 0.0), daemon=True).start()

    def _remove_orphans(self) -> None:
        """Deletes session folders left by a dead process (older than the TTL)."""
        now = time.time()
        for child in [*self.root.iterdir(), *self.results_root.iterdir()]:
            if not (child.is_dir() and _TOKEN_RE.match(child.name)):
                continue
            try:
                age = now - child.stat().st_mtime
            except OSError:
                continue
            if age > self.ttl_s:
                shutil.rmtree(child, ignore_errors=True)
