"""ZeroGPU (Hugging Face Spaces' shared GPU tier): the app's model runs inside ``spaces.GPU``.

On a ZeroGPU Space the process has no GPU of its own: a GPU is lent only while a function decorated
with ``spaces.GPU(duration=...)`` runs, and that function runs in a *forked worker process*: its
arguments and results are pickled across, and what it changes in memory is lost. So the GPU work
here is a pure generator, :func:`_segment_on_gpu`: it gets the images and the prompt, builds the
engine in the worker from the model names (the registry's loaded models came over with the fork),
and yields :class:`~promptonce.types.SliceResult` objects that the app stores as they arrive.

* :func:`segment` is a drop-in for :func:`promptonce.engine.segment`. Off ZeroGPU (a CPU Space, a GPU
  Space, Docker, a laptop) it *is* the engine's generator, unchanged. On ZeroGPU it runs the job
  inside ``spaces.GPU`` with a duration sized from the job (:func:`duration_for`: slices x seconds
  per slice for the model, plus the model's set-up).
* **Chunks**: a dataset run with the ``transfer`` strategy (cases are independent) that would not fit
  one slot (:data:`MAX_DURATION_S`) is split into several GPU calls of a few cases each; every call
  also gets the prompted case as its reference (its slices are yielded by the first call only), so
  the results are those of one long run. Results stream back slice by slice, so a slot that ends
  early (or a Stop) keeps every slice finished so far. Image and volume scopes, and the ``chain``
  strategy (each case seeds the next), run as one call with the longest duration.
* CPU models (LiteMedSAM, MobileSAM on ONNX Runtime) need no GPU: their jobs never ask for one.

The check (:func:`active`) is ``SPACES_ZERO_GPU`` set true (as ZeroGPU Spaces set it) *and* the
``spaces`` package importable; the real package (``pip install spaces``) imports off Spaces without
side effects and its ``GPU`` then returns the function unchanged. Imported by the UI only.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import check_cancel
from ..types import Dataset, SlicePrompt, SliceResult, Volume

__all__ = ["active", "duration_for", "plan_chunks", "segment", "gpu", "prepare", "MAX_DURATION_S", "CPU_MODELS"]

log = logging.getLogger(__name__)

CPU_MODELS = frozenset({"litemedsam", "mobilesam", "fake"})
"""Models that run on the CPU (ONNX Runtime) and never need a ZeroGPU slot."""

MAX_DURATION_S = int(os.environ.get("PROMPTONCE_ZEROGPU_MAX_S", "120") or 120)
"""The longest slot one call asks for (seconds); longer jobs are chunked where they can be."""

#: Seconds per slice by model family on a ZeroGPU slice (H200 MIG), with a margin; set-up seconds per call
_PER_SLICE_S = {"sam2": 0.35, "sam_vit_h": 0.5, "sam_vit_l": 0.35, "sam": 0.25}
_SETUP_S = 20.0
_MIN_DURATION_S = 30


def active() -> bool:
    """True on a ZeroGPU Space: ``SPACES_ZERO_GPU`` is true and the ``spaces`` package is installed."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def _per_slice(model: str) -> float:
    for prefix in ("sam2", "sam_vit_h", "sam_vit_l", "sam"):
        if model.startswith(prefix):
            return _PER_SLICE_S[prefix]
    return 0.3


def duration_for(model: str, n_slices: int) -> int:
    """Seconds of GPU to ask for a job of ``n_slices`` slices with ``model`` (set-up + slices, with margin).

    Returns a value in ``[30, MAX_DURATION_S]``; a job that needs more is chunked by :func:`plan_chunks`
    where it can be.
    """
    need = _SETUP_S + _per_slice(model) * max(0, int(n_slices))
    return int(min(MAX_DURATION_S, max(_MIN_DURATION_S, math.ceil(need))))


def plan_chunks(
    model: str, n_slices: Sequence[int], prompted: int, scope: str, strategy: str
) -> list[list[int]]:
    """Which cases each GPU call runs, the prompted case always first.

    Args:
        model: the model name (its seconds per slice).
        n_slices: slices per case of the dataset.
        prompted: the prompted case.
        scope: ``image`` / ``volume`` / ``dataset``.
        strategy: ``transfer`` (cases independent: may be chunked) or ``chain``.

    Returns:
        Lists of case indices; one list (one call) unless a transfer run over the dataset would not
        fit :data:`MAX_DURATION_S`.
    """
    if scope != "dataset":
        return [[prompted]]
    others = [v for v in range(len(n_slices)) if v != prompted]
    if strategy != "transfer":
        return [[prompted, *others]]
    budget = (MAX_DURATION_S - _SETUP_S) / _per_slice(model)
    chunks: list[list[int]] = []
    current = [prompted]
    used = n_slices[prompted]
    for v in others:
        # every later chunk re-runs the prompted case as its reference
        if len(current) > 1 and used + n_slices[v] > budget:
            chunks.append(current)
            current, used = [prompted], n_slices[prompted]
        current.append(v)
        used += n_slices[v]
    chunks.append(current)
    return chunks


@dataclasses.dataclass(frozen=True)
class _Job:
    """One GPU call: picklable (it crosses into the ZeroGPU worker process)."""

    volumes: tuple[Volume, ...]
    prompt: SlicePrompt
    scope: str
    strategy: str
    backend: str
    click_backend: str | None
    device: str
    window: Any
    config: Any
    keep_prompted: bool
    seconds: int


def gpu_device() -> str:
    """The device the GPU models use inside a ZeroGPU call."""
    return "cuda"


def _job_duration(job: _Job) -> int:
    return job.seconds


def _segment_on_gpu(job: _Job) -> Iterator[SliceResult]:
    """Runs one chunk with a fresh engine over the models named in the job (in the GPU worker on ZeroGPU)."""
    from ..backends.registry import get_backend
    from ..engine import make_engine, segment as engine_segment

    # the GPU model on the lent GPU (built once per worker; on ZeroGPU, models moved to "cuda" at the
    # app's start come over with the fork); the CPU click helper stays on the CPU
    backend = get_backend(job.backend, device=job.device)
    click = get_backend(job.click_backend) if job.click_backend else None
    eng = make_engine(job.prompt, backend, click, job.config)
    for res in engine_segment(
        Dataset(list(job.volumes)), job.prompt, scope=job.scope, engine=eng, window=job.window,  # type: ignore[arg-type]
        strategy=job.strategy, config=job.config,  # type: ignore[arg-type]
    ):
        if res.volume_index == 0 and not job.keep_prompted:
            continue
        yield res


def gpu(fn: Callable[..., Any], duration: int | Callable[..., int]) -> Callable[..., Any]:
    """``spaces.GPU(duration=duration)(fn)`` on ZeroGPU; ``fn`` itself anywhere else.

    Call it at import time (ZeroGPU registers decorated functions when the app starts).
    """
    if not active():
        return fn
    spaces = importlib.import_module("spaces")
    return spaces.GPU(duration=duration)(fn)


_RUN_ON_GPU_LOCK = threading.Lock()
_RUN_ON_GPU: list[Callable[[_Job], Iterator[SliceResult]]] = []


def _run_on_gpu() -> Callable[[_Job], Iterator[SliceResult]]:
    """The decorated chunk runner (made once: on ZeroGPU at the app's start, see :func:`prepare`)."""
    with _RUN_ON_GPU_LOCK:
        if not _RUN_ON_GPU:
            _RUN_ON_GPU.append(gpu(_segment_on_gpu, duration=_job_duration))
        return _RUN_ON_GPU[0]


def prepare() -> bool:
    """Registers the GPU function with ``spaces`` now (call before the page is built); True on ZeroGPU.

    Also switches off ``spaces``' automatic wrapping of every Gradio handler (``SPACES_GRADIO_AUTO_WRAP``):
    the app's handlers keep per-session state in this process, which a forked GPU worker would lose;
    only :func:`_segment_on_gpu` is meant to run there.
    """
    _run_on_gpu()
    if not active():
        return False
    disable = getattr(importlib.import_module("spaces"), "disable_gradio_auto_wrap", None)
    if callable(disable):
        disable()
    return True


def _names(engine: Any) -> tuple[str, str | None]:
    backend = getattr(getattr(engine, "backend", None), "info", None)
    click = getattr(getattr(engine, "click_backend", None), "info", None)
    return (backend.name if backend is not None else "auto", click.name if click is not None else None)


def segment(
    dataset: Dataset | Volume | Sequence[Volume],
    prompt: SlicePrompt,
    *,
    scope: str = "volume",
    engine: Any = None,
    window: Any = None,
    strategy: str = "transfer",
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> Iterator[SliceResult]:
    """:func:`promptonce.engine.segment`, run inside ZeroGPU slots when on ZeroGPU (module doc).

    Same arguments and results as the engine's ``segment``; off ZeroGPU, or with a CPU model, it is that
    generator. On ZeroGPU ``engine`` only names the models (the worker builds its own engine), and
    ``cancel`` is checked between the slices that come back.

    Raises:
        CancelledError: ``cancel`` was set (slices already yielded stay valid).
    """
    from ..engine import segment as engine_segment

    backend, click = _names(engine) if engine is not None else (str(kwargs.get("backend", "auto")), None)
    if not active() or backend in CPU_MODELS:
        yield from engine_segment(dataset, prompt, scope=scope, engine=engine, window=window,  # type: ignore[arg-type]
                                  strategy=strategy, cancel=cancel, **kwargs)  # type: ignore[arg-type]
        return
    if isinstance(dataset, Volume):
        dataset = [dataset]
    n_slices = [dataset[i].array.shape[0] for i in range(len(dataset))]
    v0 = prompt.volume_index
    chunks = plan_chunks(backend, n_slices, v0, scope, strategy)
    run = _run_on_gpu()
    for i, cases in enumerate(chunks):
        check_cancel(cancel)
        slices = 1 if scope == "image" else sum(n_slices[v] for v in cases)
        job = _Job(
            volumes=tuple(dataset[v] for v in cases), prompt=dataclasses.replace(prompt, volume_index=0),
            scope=scope, strategy=strategy, backend=backend, click_backend=click, device=gpu_device(), window=window,
            config=kwargs.get("config"), keep_prompted=i == 0, seconds=duration_for(backend, slices),
        )
        log.info("ZeroGPU call %d/%d: %d case(s), %d s asked", i + 1, len(chunks), len(cases), job.seconds)
        for res in run(job):
            check_cancel(cancel)
            yield dataclasses.replace(res, volume_index=cases[res.volume_index])

