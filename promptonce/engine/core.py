"""The Engine: a backend, its embedding cache and propagation knobs; ``segment`` over a dataset."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import numpy as np

from ..backends.base import Backend, Embedding, SequenceBackend
from ..errors import InputError, ModelError, PromptError
from ..preprocess import FrameMaker, WindowSpec
from ..types import Dataset, ObjectPrompt, Point, Scope, SlicePrompt, SliceResult, Volume
from . import predict as _predict_mod
from . import transfer as _transfer_mod
from . import walk as _walk_mod
from .cache import EmbeddingCache
from .config import PropagationConfig, Strategy

__all__ = ["Engine", "segment", "make_engine"]

log = logging.getLogger(__name__)


class Engine:
    """Runs prompts through a backend with an embedding cache ("embed once, prompt many").

    The work is split by job: :mod:`.cache` (frames, embeddings, background encoding),
    :mod:`.predict` (one slice), :mod:`.walk` (inside a volume), :mod:`.transfer` (across a dataset),
    :mod:`.quality` (confidence and flags). This class holds what they share.

    Args:
        backend: the image model used for propagation (e.g. LiteMedSAM).
        click_backend: model used to turn a click-only prompt into a first mask when ``backend`` takes
            only boxes (e.g. MobileSAM); None -> clicks are given to ``backend`` directly.
        wall_backend: a model taking a box and clicks together, asked when ``backend`` takes boxes
            only and answers a box with the cavity inside a wall (:mod:`.walls`; ``config.box_walls``);
            None: ``click_backend`` is asked, if it can.
        config: propagation knobs.
        cache_size: how many slice embeddings to keep (LRU).
        prefetch: encode the slice that propagation needs next in a background thread while the
            current slice is decoded (image models only). Encoding is prompt-free, so the next
            slice's embedding is known to be needed before the current mask exists; at most one
            slice per direction is encoded in vain, where the object ends. Off: no background
            encoding at all (no prefetch, no :meth:`warm`, one direction after the other).
    """

    def __init__(
        self,
        backend: Backend | SequenceBackend,
        *,
        click_backend: Backend | None = None,
        wall_backend: Backend | None = None,
        config: PropagationConfig | None = None,
        cache_size: int = 32,
        prefetch: bool = True,
    ) -> None:
        self.backend = backend
        self.click_backend = click_backend
        self.wall_backend = wall_backend
        self.config = config or PropagationConfig()
        self.cache = EmbeddingCache(cache_size, background=prefetch)

    @property
    def cache_size(self) -> int:
        """How many slice embeddings the engine keeps (LRU); settable to bound a session's memory."""
        return self.cache.size

    @cache_size.setter
    def cache_size(self, n: int) -> None:
        self.cache.size = n

    @property
    def is_sequence(self) -> bool:
        """True when the backend propagates with its own memory (SAM 2's video predictor)."""
        return bool(getattr(self.backend.info, "sequence", False)) and hasattr(self.backend, "propagate")

    # ------------------------------------------------------------------ frames and embeddings
    def frames(self, volume: Volume, window: WindowSpec = None) -> FrameMaker:
        """The frame maker of a volume (one window for the whole volume), cached per volume object."""
        return self.cache.frames(volume, window)

    def embedding(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> Embedding:
        """The embedding of slice ``k`` of ``volume`` by ``backend``, from the cache when possible."""
        return self.cache.embedding(backend, volume, k, window)

    def prefetch(self, backend: Backend, volume: Volume, k: int, window: WindowSpec = None) -> None:
        """Starts encoding slice ``k`` in the background (see :meth:`EmbeddingCache.prefetch`)."""
        self.cache.prefetch(backend, volume, k, window)

    def warm(self, volume: Volume, k: int, window: WindowSpec = None, idle: Callable[[], bool] | None = None) -> list[Future]:
        """Encodes slice ``k`` in the background for the click model and the propagation model.

        See :meth:`EmbeddingCache.warm`: only the latest request is encoded, only while ``idle()``.
        """
        return self.cache.warm((self.click_backend, self.backend), volume, k, window, idle)

    def clear_cache(self) -> None:
        self.cache.clear()

    # ------------------------------------------------------------------ work
    def predict_object(
        self, volume: Volume, k: int, obj: ObjectPrompt, window: WindowSpec = None, refine: bool | int = False,
        avoid: Sequence[Point] = (), cavities: dict[int, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Segments one object on slice ``k`` (see :func:`.predict.predict_object`; ``cavities`` gets the
        cavity of a box taken for a box around a wall)."""
        return _predict_mod.predict_object(self, volume, k, obj, window, refine, avoid, cavities=cavities)

    def segment_volume(self, volume: Volume, prompt: SlicePrompt, **kwargs) -> Iterator[SliceResult]:
        """Propagates one prompt through one volume (see :func:`.walk.segment_volume` for the arguments)."""
        return _walk_mod.segment_volume(self, volume, prompt, **kwargs)


def segment(
    dataset: Dataset | Volume | Sequence[Volume],
    prompt: SlicePrompt,
    *,
    scope: Scope = "volume",
    backend: Backend | SequenceBackend | str = "auto",
    click_backend: Backend | str | None = "auto",
    window: WindowSpec = None,
    strategy: Strategy = "transfer",
    config: PropagationConfig | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> Iterator[SliceResult]:
    """Segments from one prompt: a slice, a volume, or every volume of a dataset.

    Args:
        dataset: the images (a single Volume is a one-volume dataset).
        prompt: the user's prompt, on ``prompt.volume_index`` / ``prompt.slice_index``.
        scope: ``"image"`` (the prompted slice only), ``"volume"`` (the prompted volume) or
            ``"dataset"`` (every volume, one prompt for all).
        backend: a backend or a registry name (``"auto"`` picks by prompt: see
            :func:`promptonce.backends.registry.get_backend`).
        click_backend: model that turns clicks into a first mask for box-only backends.
        window: display window for model frames (preset name, ``(W, L)``, or None/"auto").
        strategy: dataset scope only: ``"transfer"`` (each case seeded from the original prompt
            mapped to it, then refined on its own mask) or ``"chain"`` (each case seeded from the
            previous case's result).
        config: propagation knobs.
        cancel: an Event; when set, the generator raises :class:`CancelledError` between slices
            (results already yielded stay valid).
        engine: reuse an Engine (and its embedding cache) instead of building one.

    Yields:
        :class:`SliceResult` for every slice covered, volume by volume.
    """
    if isinstance(dataset, Volume):
        dataset = Dataset([dataset])
    elif not isinstance(dataset, Dataset):
        dataset = Dataset(list(dataset))
    if len(dataset) == 0:
        raise InputError("The dataset is empty; load at least one image or volume.")
    if scope not in ("image", "volume", "dataset"):
        raise InputError(f"Unknown scope {scope!r}; use image, volume or dataset.")
    if strategy not in ("transfer", "chain"):
        raise InputError(f"Unknown dataset strategy {strategy!r}; use transfer or chain.")
    v0 = prompt.volume_index
    if not 0 <= v0 < len(dataset):
        raise PromptError(f"Volume {v0} does not exist; the dataset has {len(dataset)} (0..{len(dataset) - 1}).")
    if engine is None:
        engine = make_engine(prompt, backend, click_backend, config)
    seed_volume = dataset[v0]
    if scope == "image":
        lo = hi = prompt.slice_index
        yield from engine.segment_volume(
            seed_volume, prompt, volume_index=v0, window=window, scope_slices=(lo, hi), cancel=cancel
        )
        return
    seed_results: list[SliceResult] = []
    for res in engine.segment_volume(seed_volume, prompt, volume_index=v0, window=window, cancel=cancel):
        if res.prompted:
            seed_results.append(res)
        yield res
    if scope == "volume":
        return
    yield from _transfer_mod.segment_dataset(engine, dataset, prompt, seed_results, window, strategy, cancel)


def make_engine(
    prompt: SlicePrompt | None,
    backend: Backend | SequenceBackend | str = "auto",
    click_backend: Backend | str | None = "auto",
    config: PropagationConfig | None = None,
    cache_size: int = 32,
) -> Engine:
    """Builds an Engine, resolving backend names through the registry (lazy: loads models on first use)."""
    from ..backends.registry import get_backend

    has_box = prompt is not None and any(o.box is not None for o in prompt.objects)
    if isinstance(backend, str):
        name = backend
        if name == "auto":
            name = "litemedsam"
        backend = get_backend(name)
    clicker: Backend | None = None
    if isinstance(click_backend, str):
        needs_clicker = isinstance(backend, Backend) and not backend.info.points
        if needs_clicker and (prompt is None or not has_box or any(o.box is None for o in prompt.objects)):
            clicker = get_backend("mobilesam" if click_backend == "auto" else click_backend)  # type: ignore[assignment]
    elif click_backend is not None:
        clicker = click_backend
    waller: Backend | None = None
    takes_points = isinstance(backend, Backend) and backend.info.points
    if (config or PropagationConfig()).box_walls and not takes_points and clicker is None:
        if isinstance(click_backend, str):
            try:  # built lazily: its weights load only if a box's answer stays inside it
                waller = get_backend("mobilesam" if click_backend == "auto" else click_backend)
            except ModelError as exc:
                log.info("no model for walls inside boxes: %s", exc)
    return Engine(backend, click_backend=clicker, wall_backend=waller, config=config, cache_size=cache_size)
