"""Embedding cache of an engine: frames per volume, slice embeddings (LRU), background encoding."""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..backends.base import Backend, Embedding
from ..preprocess import FrameMaker, WindowSpec
from ..types import Volume

__all__ = ["EmbeddingCache", "background_pool"]

log = logging.getLogger(__name__)

_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()

_POOLS_LOCK = threading.Lock()


def background_pool(name: str) -> ThreadPoolExecutor:
    """One background thread per purpose, shared by every engine of the process.

    ``prefetch``: the slice a propagation needs next. ``warm``: the slice the app shows (see
    :meth:`Engine.warm`); kept apart so that a shown slice never delays a running propagation's queue.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"promptonce-{name}")
        return pool


class EmbeddingCache:
    """Frames and slice embeddings of one engine, with background encoding ("embed once, prompt many").

    Args:
        size: how many slice embeddings to keep (LRU).
        background: encode slices in background threads (:meth:`prefetch`, :meth:`warm`); off: never.
        click_backend, backend: the models :meth:`warm` encodes for.
    """

    def __init__(self, size: int = 32, background: bool = True, pin_limit: int = 128) -> None:
        self._cache: OrderedDict[tuple, Embedding] = OrderedDict()
        self._size = size
        #: how many embeddings :meth:`pin` keeps at most beside the LRU ones (0: none; a LiteMedSAM or
        #: SAM embedding is 4 MB)
        self.pin_limit = int(pin_limit)
        self.background = bool(background)
        self._pending: dict[tuple, Future] = {}
        self._pinned: set[tuple] = set()  # kept past the LRU limit until unpinned (see pin)
        self._warm_ticket: object | None = None
        self._lock = threading.Lock()
        self._frames_lock = threading.Lock()
        # FrameMaker holds its volume, so this cache is keyed by uid and kept small (LRU).
        self._frames: OrderedDict[int, FrameMaker] = OrderedDict()
        self._uids: weakref.WeakKeyDictionary[Volume, int] = weakref.WeakKeyDictionary()
        self._next_uid = itertools.count()

    @property
    def size(self) -> int:
        """How many slice embeddings the engine keeps (LRU); settable to bound a session's memory."""
        return self._size

    @size.setter
    def size(self, n: int) -> None:
        with self._lock:
            self._size = max(1, int(n))
            self._evict()

    def _evict(self) -> None:
        """Drops the least recently used unpinned embeddings past the size (caller holds the lock)."""
        over = len(self._cache) - len(self._pinned) - self._size
        if over <= 0:
            return
        for key in [k for k in self._cache if k not in self._pinned][:over]:
            del self._cache[key]

    def _uid(self, volume: Volume) -> int:
        """A key for a volume that is never reused while this engine lives (``id()`` can be)."""
        with self._lock:
            uid = self._uids.get(volume)
            if uid is None:
                uid = self._uids[volume] = next(self._next_uid)
            return uid

    def frames(self, volume: Volume, window: WindowSpec = None) -> FrameMaker:
        """The frame maker of a volume (one window for the whole volume), cached per volume object."""
        key = self._uid(volume)
        with self._frames_lock:
            fm = self._frames.get(key)
            if fm is None or getattr(fm, "requested", None) != window:
                fm = FrameMaker(volume, window)
                fm.requested = window  # type: ignore[attr-defined]
                self._frames[key] = fm
            self._frames.move_to_end(key)
            while len(self._frames) > 4:
                self._frames.popitem(last=False)
            return fm

    def _key(self, backend: Backend, volume: Volume, k: int, fm: FrameMaker) -> tuple:
        """The cache key of slice ``k`` of ``volume`` by ``backend`` in ``fm``'s display window."""
        return (backend.info.name, self._uid(volume), k, tuple(fm.window))

    def embedding(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> Embedding:
        """The embedding of slice ``k`` of ``volume`` by ``backend``, from the cache when possible.

        A slice being encoded by :meth:`prefetch` is waited for, not encoded twice.
        """
        fm = self.frames(volume, window)
        key = self._key(backend, volume, k, fm)
        with self._lock:
            emb = self._cache.get(key)
            if emb is not None:
                self._cache.move_to_end(key)
                return emb
            pending = self._pending.get(key)
        if pending is not None:
            try:
                got = pending.result()
                if got is not None:  # None: a warm-up that was superseded before it ran
                    return got
            except Exception as exc:  # noqa: BLE001 - encode again in this thread, where errors surface
                log.debug("background encoding of slice %d failed (%s); encoding it now", k, exc)
        emb = backend.embed(fm.frame(k))
        self._store(key, emb)
        return emb

    def _store(self, key: tuple, emb: Embedding) -> None:
        with self._lock:
            self._cache[key] = emb
            self._cache.move_to_end(key)
            self._evict()

    def pin(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> Embedding | None:
        """Keeps slice ``k``'s cached embedding past the LRU limit until :meth:`unpin`.

        For work that comes back to a slice later (the exemplar pass of a weak case at dataset
        scope), so that it is not encoded twice. Returns the embedding, or None when it is not
        cached or :attr:`pin_limit` embeddings are pinned already (nothing is pinned then). The
        caller keeps ``volume`` alive and unpins.
        """
        key = self._key(backend, volume, k, self.frames(volume, window))
        with self._lock:
            emb = self._cache.get(key)
            if emb is None or (key not in self._pinned and len(self._pinned) >= self.pin_limit):
                return None
            self._pinned.add(key)
            return emb

    def unpin(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> None:
        """Lets a pinned embedding go back under the LRU limit (a no-op when it is not pinned)."""
        key = self._key(backend, volume, k, self.frames(volume, window))
        with self._lock:
            self._pinned.discard(key)
            self._evict()

    def prefetch(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> None:
        """Starts encoding slice ``k`` in the background (no-op when cached, pending, off or out of range)."""
        self._submit("prefetch", backend, volume, k, window)

    def _submit(
        self, pool: str, backend: Backend, volume: Volume, k: int, window: WindowSpec = None, still_wanted=None
    ) -> Future | None:
        if not self.background or not 0 <= k < volume.n_slices or not hasattr(backend, "embed"):
            return None
        fm = self.frames(volume, window)
        key = self._key(backend, volume, k, fm)
        with self._lock:
            if key in self._cache or key in self._pending:
                return self._pending.get(key)

            def work() -> Embedding | None:
                try:
                    if still_wanted is not None and not still_wanted():
                        return None
                    emb = backend.embed(fm.frame(k))
                    self._store(key, emb)
                    return emb
                finally:
                    with self._lock:
                        self._pending.pop(key, None)

            fut = self._pending[key] = background_pool(pool).submit(work)
        return fut

    def warm(
        self, backends: Sequence[object], volume: Volume, k: int, window: WindowSpec = None, idle: Callable[[], bool] | None = None
    ) -> list[Future]:
        """Encodes slice ``k`` in the background for the click model and the propagation model.

        The app calls this when it shows a slice: the user looks before clicking, so a click then
        costs only decoding (~0.1 s) instead of encoding first (~1-2.5 s on a 2-core CPU). Only the
        latest slice asked for is encoded: requests still queued when another slice is shown are
        dropped (scrolling through a volume does not queue work). A click that arrives while its
        slice is being encoded waits for that encoding instead of starting another. ``idle``: when
        given, an encoding starts only while it says True (the app: no model request running).
        """
        ticket = object()
        self._warm_ticket = ticket

        def wanted() -> bool:
            return self._warm_ticket is ticket and (idle is None or idle())

        futures = []
        for b in backends:
            if isinstance(b, Backend):
                fut = self._submit("warm", b, volume, k, window, still_wanted=wanted)
                if fut is not None:
                    futures.append(fut)
        return futures

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._pinned.clear()
        with self._frames_lock:
            self._frames.clear()

    def keys(self) -> list[tuple]:
        """The cached embeddings' keys ``(backend name, volume uid, slice_index, window)``, oldest first."""
        with self._lock:
            return list(self._cache)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._cache
