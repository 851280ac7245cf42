"""Workers and executors of dataset runs: where the cases of :func:`promptonce.distributed.run_dataset` run.

* :class:`CaseWorker`: one model (built once with :func:`~promptonce.engine.make_engine`) and one
  :class:`~promptonce.engine.DatasetTransfer`; it segments the case numbers it is given and answers
  with a :class:`CaseReply` (the masks, the case's geometry without its voxels, confidence, flags,
  exemplar), or the reason it failed - never an exception, so a bad case does not stop a worker.
* :class:`LocalExecutor`: one CaseWorker in this process. :class:`RayExecutor`: a pool of Ray actors,
  one CaseWorker each (``num_cpus`` = threads, ``num_gpus``), at most ``per_worker`` cases queued per
  actor, ``ray.wait`` for whichever finishes first; a dead actor is replaced and its cases come back
  as retryable failures.

Ray is optional (``pip install 'promptonce[ray]'``) and imported only by :class:`RayExecutor`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .engine import PropagationConfig, make_engine
from .errors import InputError, PromptOnceError
from .types import Dataset, SlicePrompt, SliceResult, Volume

__all__ = [
    "ExecutorUnavailableError",
    "WorkerSpec",
    "CaseReply",
    "CaseWorker",
    "Task",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "geometry_volume",
    "transfer_class",
]

log = logging.getLogger(__name__)

ExecutorName = Literal["local", "ray"]
RAY_EXTRA = "pip install 'promptonce[ray]'"


class ExecutorUnavailableError(PromptOnceError):
    """The executor asked for cannot run here (Ray not installed, or the cluster unreachable)."""


# ============================================================================ the per-case work


def transfer_class():
    """The engine's :class:`~promptonce.engine.DatasetTransfer` (looked up at run time, so that a
    drop-in with the same methods can stand in for it)."""
    from . import engine as eng

    return eng.DatasetTransfer


def _seed_flags(results: Sequence[SliceResult]) -> list[str]:
    return [f"slice {r.slice_index + 1}: {f}" for r in results for f in r.flags]  # numbered from 1, as the app


@dataclass
class WorkerSpec:
    """What every worker needs to build its model and its dataset transfer (pickled once per worker).

    Attributes:
        dataset: the cases (lazy items are loaded on the worker: inputs must be readable there).
        prompt: the user's prompt on ``prompt.volume_index`` / ``prompt.slice_index``.
        model: backend registry name (``auto``, ``litemedsam``, ``fake``...).
        window: display window for model frames.
        config: propagation knobs.
        threads: CPU threads of the worker's model (``PROMPTONCE_THREADS``); None = the default.
        keep_first_mb: memory budget (MiB of masks) for first-pass outcomes kept on the worker for
            the quality pass; a case not kept is segmented again there (same result: deterministic).
        transfer: a class with DatasetTransfer's constructor and methods to use instead of the
            engine's (None: :class:`promptonce.engine.DatasetTransfer`); pickled to every worker.
    """

    dataset: Dataset
    prompt: SlicePrompt
    model: str = "auto"
    window: Any = None
    config: PropagationConfig | None = None
    threads: int | None = None
    keep_first_mb: float = 256.0
    transfer: Callable[..., Any] | None = None


@dataclass
class CaseReply:
    """A worker's answer for one case: small, except ``results`` (the masks, written then dropped).

    Attributes:
        index: the case's position in the dataset.
        name: the case's name ('' when it could not be read).
        ok: False when the case failed (``error`` says why).
        results: every slice's result, or None.
        geometry: the case's geometry without its voxels (to write masks on its grid).
        confidence, flags, needs_second, exemplar: from the engine's case outcome.
        error_type: the exception's class name; ``retryable`` is False for errors in the input itself.
        seconds: time spent in the engine for this case (load excluded).
        load_seconds: time spent reading the case.
        worker: the worker's id (for sending the quality pass to the worker that kept the first pass).
    """

    index: int
    name: str = ""
    ok: bool = True
    results: list[SliceResult] | None = None
    geometry: dict[str, Any] | None = None
    confidence: float | None = None
    flags: list[str] = field(default_factory=list)
    needs_second: bool = False
    exemplar: Any = None
    error_type: str = ""
    error: str = ""
    retryable: bool = True
    seconds: float = 0.0
    load_seconds: float = 0.0
    worker: str = ""


def _geometry(vol: Volume) -> dict[str, Any]:
    src = vol.source
    if src is not None and "datasets" in src.extra:  # DICOM headers of every slice: not needed to write masks
        src = dataclasses.replace(src, extra={k: v for k, v in src.extra.items() if k != "datasets"})
    return {"shape": vol.shape, "affine": vol.affine, "name": vol.name, "source_format": vol.source_format,
            "modality": vol.modality, "window": vol.window, "source": src}


def geometry_volume(geom: dict[str, Any]) -> Volume:
    """A Volume with a case's geometry and no voxels (a zero-stride array), for the mask writers."""
    shape = tuple(geom["shape"])
    return Volume(np.broadcast_to(np.uint8(0), shape), affine=geom["affine"], name=geom["name"],
                  source_format=geom["source_format"], modality=geom["modality"], window=geom["window"],
                  source=geom["source"])


class CaseWorker:
    """One model and one dataset transfer; segments the cases it is given, one at a time.

    The local executor uses it directly; the Ray executor runs one per actor. Failures of a case are
    returned as a :class:`CaseReply` with ``ok=False``, never raised (a worker survives a bad case).
    """

    def __init__(self, spec: WorkerSpec, worker_id: str = "local") -> None:
        if spec.threads:
            os.environ["PROMPTONCE_THREADS"] = str(int(spec.threads))
        self.spec = spec
        self.worker_id = worker_id
        t = time.perf_counter()
        p = spec.prompt
        seed = spec.dataset[p.volume_index]
        engine = make_engine(p, spec.model, "auto", spec.config)
        if engine.is_sequence:
            raise InputError(
                f"{spec.model} propagates with its own memory (SAM 2); dataset runs on an executor take image "
                "models (litemedsam, mobilesam, sam_vit_*) for now. Run SAM 2 without --executor."
            )
        # The seed case exactly as the local engine does it: the whole prompted volume from the
        # user's prompt; its prompted slice seeds the transfer to every other case.
        seed_results = list(engine.segment_volume(seed, p, volume_index=p.volume_index, window=spec.window))
        seed_labels = next((r.labels for r in seed_results if r.prompted), None)
        cls = spec.transfer or transfer_class()
        self.transfer = cls(engine, seed, p, window=spec.window, seed_labels=seed_labels)
        self.seed_index = p.volume_index
        self._seed = (seed_results, _geometry(seed), seed.name)
        del seed
        self.init_seconds = time.perf_counter() - t
        self._kept: OrderedDict[int, Any] = OrderedDict()  # first-pass outcomes waiting for the quality pass
        self._kept_bytes = 0
        self._exemplars: Any = None

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> float:
        """Seconds spent building the model and segmenting the seed case."""
        return self.init_seconds

    def set_exemplars(self, exemplars: Any) -> None:
        self._exemplars = exemplars

    def first(self, index: int) -> CaseReply:
        """Runs the first pass on case ``index`` (the seed case: its own segmentation)."""
        t0 = time.perf_counter()
        try:
            if index == self.seed_index:
                results, geom, name = self._seed
                return CaseReply(index, name, True, list(results), geom, 1.0, _seed_flags(results), False, None,
                                 seconds=0.0, worker=self.worker_id)
            vol = self.spec.dataset[index]
            load_s = time.perf_counter() - t0
            geom = _geometry(vol)
            out = self.transfer.first_pass(vol, index)
            needs = bool(self.transfer.needs_second_pass(out))
            if needs:
                self._keep(index, out)
            del vol
        except Exception as exc:  # noqa: BLE001 - reported per case; the worker goes on
            return self._failed(index, exc, t0)
        return CaseReply(index, out.name or geom["name"], True, list(out.results), geom, _conf(out.confidence),
                         list(out.flags), needs, getattr(out, "exemplar", None),
                         seconds=time.perf_counter() - t0 - load_s, load_seconds=load_s, worker=self.worker_id)

    def second(self, index: int, exemplars: Any = None) -> CaseReply:
        """Runs the quality pass on case ``index`` with ``exemplars`` (or those set before)."""
        t0 = time.perf_counter()
        ex = exemplars if exemplars is not None else self._exemplars
        try:
            vol = self.spec.dataset[index]
            load_s = time.perf_counter() - t0
            first = self._kept.pop(index, None)
            if first is not None:
                self._kept_bytes -= _outcome_bytes(first)
            else:
                first = self.transfer.first_pass(vol, index)
            out = self.transfer.second_pass(vol, index, ex, first=first)
            geom = _geometry(vol)
        except Exception as exc:  # noqa: BLE001
            return self._failed(index, exc, t0)
        return CaseReply(index, out.name or geom["name"], True, list(out.results), geom, _conf(out.confidence),
                         list(out.flags), False, None, seconds=time.perf_counter() - t0 - load_s, load_seconds=load_s,
                         worker=self.worker_id)

    def _keep(self, index: int, out: Any) -> None:
        self._kept[index] = out
        self._kept_bytes += _outcome_bytes(out)
        budget = self.spec.keep_first_mb * 2**20
        while self._kept_bytes > budget and self._kept:
            _, old = self._kept.popitem(last=False)
            self._kept_bytes -= _outcome_bytes(old)

    def _failed(self, index: int, exc: Exception, t0: float) -> CaseReply:
        log.warning("case %d failed: %s: %s", index, type(exc).__name__, exc)
        return CaseReply(index, _safe_name(self.spec.dataset, index), False, error_type=type(exc).__name__,
                         error=str(exc) or repr(exc), retryable=not isinstance(exc, InputError),
                         seconds=time.perf_counter() - t0, worker=self.worker_id)


def _conf(c: float | None) -> float | None:
    return None if c is None else float(c)


def _outcome_bytes(out: Any) -> int:
    return int(sum(np.asarray(r.labels).nbytes for r in out.results))


def _safe_name(dataset: Dataset, index: int) -> str:
    try:
        return dataset.names[index]
    except (IndexError, AttributeError):
        return f"case {index}"


# ============================================================================ executors


@dataclass
class Task:
    kind: Literal["first", "second"]
    index: int
    attempt: int = 1
    prefer: str = ""  # worker id that holds the first pass (quality pass only)


class LocalExecutor:
    """Runs the cases in this process with one :class:`CaseWorker` (the model uses every core)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.workers = 1
        self._worker: CaseWorker | None = None
        self._queue: deque[Task] = deque()
        self.info: dict[str, Any] = {}

    def start(self, spec: WorkerSpec) -> None:
        if self.threads:
            spec = dataclasses.replace(spec, threads=self.threads)
        self._worker = CaseWorker(spec)
        self.info = {"executor": "local", "workers": 1, "threads_per_worker": self.threads,
                     "worker_init_seconds": [round(self._worker.ready(), 3)]}

    def capacity(self) -> int:
        return 1 - len(self._queue)

    def set_exemplars(self, exemplars: Any) -> None:
        if self._worker is None:
            raise PromptOnceError("LocalExecutor.set_exemplars before start.")
        self._worker.set_exemplars(exemplars)

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def in_flight(self) -> int:
        return len(self._queue)

    def poll(self) -> list[tuple[Task, CaseReply]]:
        if self._worker is None:
            raise PromptOnceError("LocalExecutor.poll before start.")
        task = self._queue.popleft()
        w = self._worker
        reply = w.first(task.index) if task.kind == "first" else w.second(task.index)
        return [(task, reply)]

    def close(self) -> None:
        self._worker = None
        self._queue.clear()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailableError(
            f"The Ray executor needs Ray, which is not installed here. Install the extra: {RAY_EXTRA} "
            "(or run without --executor ray to use this machine only)."
        ) from None
    return ray


class RayExecutor:
    """Runs the cases on a Ray cluster: a pool of actors, one model each, loaded once.

    Args:
        address: the cluster (``"auto"``, ``"ray://host:10001"``); None starts a local Ray instance
            (or uses the one this process already started with ``ray.init``).
        workers: number of actors; None = the cluster's CPUs / ``threads`` (GPUs when ``num_gpus``).
        threads: CPU threads per worker (its ``num_cpus`` and the model's intra-op threads).
        num_gpus: GPUs per worker (e.g. 1 for SAM on GPU nodes; fractions share a GPU).
        per_worker: cases queued per actor (2: the next case is already there when one finishes).
        max_restarts: how many dead actors are replaced in one run before giving up.
        init_kwargs: extra arguments of ``ray.init`` when this executor starts Ray.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads: int | None = 1,
        num_gpus: float = 0.0,
        per_worker: int = 2,
        max_restarts: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.ray = _import_ray()
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers} must be >= 1.")
        if threads is not None and threads < 1:
            raise InputError(f"threads per worker {threads} must be >= 1.")
        self.address, self.workers, self.threads, self.num_gpus = address, workers, threads, num_gpus
        self.per_worker = max(1, int(per_worker))
        self.max_restarts = max_restarts
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False
        self._actors: dict[str, Any] = {}
        self._load: dict[str, int] = {}
        self._refs: dict[Any, tuple[Task, str]] = {}
        self._dead: set[str] = set()
        self._restarts = 0
        self._n = 0
        self._spec_ref = None
        self._exemplars_ref = None
        self._actor_cls = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, spec: WorkerSpec) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
            if self.address is None:  # a new local instance: no dashboard (no port opened beyond Ray's own)
                kwargs["include_dashboard"] = False
            kwargs.update(self.init_kwargs)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorUnavailableError(
                    f"Could not reach the Ray cluster at {self.address or 'a new local instance'}: {exc}. "
                    "Start it with `ray start --head` (see the README, 'Running on a cluster') or check --address."
                ) from None
            self._started_ray = True
        if self.workers is None:
            res = ray.cluster_resources()
            if self.num_gpus:
                self.workers = max(1, int(res.get("GPU", 0) // self.num_gpus))
            else:
                self.workers = max(1, int(res.get("CPU", 1) // (self.threads or 1)))
        spec = dataclasses.replace(spec, threads=self.threads)
        self._spec_ref = ray.put(spec)
        if self.max_restarts is None:
            self.max_restarts = 2 * self.workers + 2
        for _ in range(self.workers):
            self._new_actor()
        t = time.perf_counter()
        try:
            init = ray.get([a.ready.remote() for a in self._actors.values()])
        except ray.exceptions.RayError as exc:
            self.close()
            raise _worker_start_error(exc) from None
        self.info = {"executor": "ray", "address": self.address, "workers": self.workers,
                     "threads_per_worker": self.threads, "num_gpus_per_worker": self.num_gpus,
                     "worker_init_seconds": [round(float(s), 3) for s in init],
                     "startup_wait_seconds": round(time.perf_counter() - t, 3)}

    def _new_actor(self) -> str:
        ray = self.ray
        self._n += 1
        wid = f"w{self._n}"
        if self._actor_cls is None:
            self._actor_cls = ray.remote(CaseWorker)
        actor = self._actor_cls.options(num_cpus=self.threads or 1, num_gpus=self.num_gpus or 0, max_restarts=0,
                            max_concurrency=1).remote(self._spec_ref, wid)
        self._actors[wid] = actor
        self._load[wid] = 0
        if self._exemplars_ref is not None:
            actor.set_exemplars.remote(self._exemplars_ref)
        return wid

    def close(self) -> None:
        ray = self.ray
        for a in self._actors.values():
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors.clear()
        self._refs.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # ------------------------------------------------------------------ work
    def actor_pids(self) -> dict[str, int]:
        """The process id of every live worker (for tests that kill one)."""
        return {w: int(self.ray.get(a.pid.remote())) for w, a in self._actors.items()}

    def capacity(self) -> int:
        return self.per_worker * len(self._actors) - len(self._refs)

    def in_flight(self) -> int:
        return len(self._refs)

    def set_exemplars(self, exemplars: Any) -> None:
        self._exemplars_ref = self.ray.put(exemplars)
        self.ray.get([a.set_exemplars.remote(self._exemplars_ref) for a in self._actors.values()])

    def submit(self, task: Task) -> None:
        wid = task.prefer if task.prefer in self._actors and self._load[task.prefer] < self.per_worker else ""
        if not wid:
            wid = min(self._actors, key=lambda w: self._load[w])
        actor = self._actors[wid]
        ref = actor.first.remote(task.index) if task.kind == "first" else actor.second.remote(task.index)
        self._refs[ref] = (task, wid)
        self._load[wid] += 1

    def poll(self) -> list[tuple[Task, CaseReply]]:
        ray = self.ray
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=None)
        out = []
        for ref in ready:
            task, wid = self._refs.pop(ref)
            if wid in self._load:
                self._load[wid] -= 1
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                reply = CaseReply(task.index, "", False, error_type="WorkerDied",
                                  error=f"worker {wid} died ({_first_line(exc)})", retryable=True, worker=wid)
                self._replace(wid)
            except ray.exceptions.RayError as exc:
                reply = CaseReply(task.index, "", False, error_type=type(exc).__name__, error=_first_line(exc),
                                  retryable=True, worker=wid)
            out.append((task, reply))
        return out

    def _replace(self, wid: str) -> None:
        if wid in self._dead:
            return
        self._dead.add(wid)
        self._actors.pop(wid, None)
        self._load.pop(wid, None)
        if self._restarts >= (self.max_restarts or 0):
            if not self._actors:
                raise PromptOnceError(
                    f"Every Ray worker died and {self._restarts} were already replaced; see the Ray logs "
                    "(/tmp/ray/session_latest/logs) for the cause (often memory). Rerun the same command to resume."
                )
            log.warning("worker %s died; not replaced (%d replaced already)", wid, self._restarts)
            return
        self._restarts += 1
        new = self._new_actor()
        log.warning("worker %s died; replaced by %s", wid, new)


def _worker_start_error(exc: BaseException) -> PromptOnceError:
    """The error that stopped a worker's start, as the PromptOnce error it was (its message and class,
    so a wrong model name is still an input error), else a PromptOnceError with Ray's last line."""
    from . import errors

    last = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), "")
    name, sep, msg = last.partition(": ")
    cls = getattr(errors, name.rsplit(".", 1)[-1], None) if sep and name.startswith("promptonce.") else None
    if isinstance(cls, type) and issubclass(cls, PromptOnceError):
        return cls(msg)
    return PromptOnceError(f"The Ray workers could not start: {last or _cause(exc)}")


def _cause(exc: BaseException) -> str:
    """The message of the error raised inside a worker (Ray wraps it), else the first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else type(exc).__name__


def make_executor(
    executor: ExecutorName | LocalExecutor | RayExecutor = "local",
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    num_gpus: float = 0.0,
) -> LocalExecutor | RayExecutor:
    """An executor by name (``local`` or ``ray``), or the one given."""
    if isinstance(executor, (LocalExecutor, RayExecutor)):
        return executor
    if executor == "local":
        if address or (workers and workers > 1):
            raise InputError("--address and --workers need --executor ray.")
        return LocalExecutor(threads=threads)
    if executor == "ray":
        return RayExecutor(address=address, workers=workers, threads=threads or 1, num_gpus=num_gpus)
    raise InputError(f"Unknown executor {executor!r}; use local or ray.")
