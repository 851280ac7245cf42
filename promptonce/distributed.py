"""Executors for dataset runs: one prompt over every case, in this process or on a Ray cluster.

Because the dataset strategy ``transfer`` carries the user's prompt to each case independently, a
dataset run is a map over cases. :func:`run_dataset` drives it:

1. **First pass**: every case is segmented from the prompt mapped to it (``first_pass``), by
   *workers* that each hold one model, loaded once (a Ray actor each, or one object in this
   process for the local executor). Cases are streamed: at most ``max_in_flight`` are out at a time
   (``ray.wait``), and each case's masks are written on the driver with the atomic
   :class:`~promptonce.io.writers.ResultWriter` as soon as they arrive, then dropped. The driver
   keeps only a short record per case (:class:`~promptonce.runstore.CaseRecord`) and writes each
   case's small exemplar to the run folder, so its memory does not grow with the dataset's masks.
2. **Quality pass**: each case's exemplar (a thumbnail and its masks) is folded into the exemplar
   set on the driver as it arrives (``select_exemplars``: a top-k, deterministic and
   order-independent, so memory holds the set only); the set is sent once to every worker and the
   weak cases (``needs_second_pass``) are redone from it (``second_pass``) and rewritten. A worker
   keeps the weak cases' first-pass outcomes (within a memory budget) and gets their second pass;
   elsewhere the first pass is recomputed (deterministic: same result).

Every written case is appended to the run folder's log (:mod:`promptonce.runstore`), so a rerun of
the same command skips the cases already written and verified and does only the rest; a run with
another prompt or model in the same folder is refused. A case that fails is retried (``retries``
times; errors in the input itself - a corrupt file - are not retried: they would fail the same way)
and then recorded with its reason and skipped. A worker that dies is replaced and its cases re-sent.

The workers and executors are in :mod:`promptonce.executors`; Ray is optional
(``pip install 'promptonce[ray]'``) and imported only when ``executor="ray"``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .engine import PropagationConfig
from .errors import InputError, PromptOnceError, check_cancel
from .executors import (
    CaseReply,
    CaseWorker,
    ExecutorName,
    ExecutorUnavailableError,
    LocalExecutor,
    RayExecutor,
    Task,
    WorkerSpec,
    geometry_volume,
    make_executor,
    transfer_class,
)
from .runstore import CaseRecord, RunStore, file_entry, input_fingerprints
from .types import Dataset, SlicePrompt, Volume

__all__ = [
    "run_dataset",
    "RunSummary",
    "ExecutorUnavailableError",
    "CaseWorker",
    "WorkerSpec",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
]

log = logging.getLogger(__name__)


# ============================================================================ the driver


@dataclass
class RunSummary:
    """How a dataset run ended.

    Attributes:
        cases: cases in the dataset.
        done: cases written (this run or an earlier one).
        resumed: of ``done``, cases found written and verified from an earlier run (not redone).
        skipped: ``(name, reason)`` of every case that failed after its retries.
        second_pass: cases redone by the quality pass in this run.
        images: the dataset's slices written in this run (a case rewritten by the quality pass counts once).
        seconds: wall time of this run (workers' start included).
        images_per_second: ``images / seconds`` (None when nothing was done).
        engine_seconds: time the workers spent in the engine (all workers summed).
        load_seconds: time the workers spent reading cases (summed).
        executor: how the run was executed (executor, workers, threads per worker...).
        out_dir: the output folder.
    """

    cases: int
    done: int
    resumed: int
    skipped: list[tuple[str, str]]
    second_pass: int
    images: int
    seconds: float
    images_per_second: float | None
    engine_seconds: float
    load_seconds: float
    executor: dict[str, Any]
    out_dir: str

    @property
    def ok(self) -> bool:
        """True when every case was written."""
        return not self.skipped

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skipped"] = [{"name": n, "reason": r} for n, r in self.skipped]
        return d

    def lines(self) -> list[str]:
        """A short human summary (the CLI prints it)."""
        out = [
            f"{self.done}/{self.cases} cases done ({self.resumed} from an earlier run, {self.second_pass} redone by "
            f"the quality pass), {self.images} images in {self.seconds:.1f} s"
            + (f" ({self.images_per_second:.2f} img/s)" if self.images_per_second else "")
        ]
        if self.skipped:
            out.append(f"{len(self.skipped)} cases skipped:")
            out.extend(f"  {n}: {r}" for n, r in self.skipped[:20])
            if len(self.skipped) > 20:
                out.append(f"  ... and {len(self.skipped) - 20} more (see {self.out_dir}/run/summary.json)")
        return out


class _ExemplarSet:
    """The exemplar set, folded one candidate at a time: memory and disk hold at most the set.

    ``select`` (``DatasetTransfer.select_exemplars``) is a top-k by confidence with an order-free
    tie-break, so the set of all candidates equals the set folded one at a time, in any order. An
    exemplar is stored in the run folder when it enters the set and deleted when it leaves it, so a
    resumed run starts from the stored ones (a candidate seen twice, e.g. from a case redone after a
    crash, is the same exemplar with the same key and counts once).
    """

    def __init__(self, store: RunStore, select: Callable[[Any], list]) -> None:
        self.store, self.select = store, select
        self._set: dict[str, tuple[Any, int]] = {}
        for index, ex in store.load_exemplars():
            self.consider(index, ex, save=False)

    def consider(self, index: int, ex: Any, save: bool = True) -> None:
        if ex is None or ex.key in self._set:
            return
        keys = {e.key for e in self.select([*(e for e, _ in self._set.values()), ex])}
        if ex.key not in keys:
            if not save:
                self.store.drop_exemplar(index)
            return
        if save:
            self.store.save_exemplar(index, ex)
        for key in [k for k in self._set if k not in keys]:
            _, i = self._set.pop(key)
            self.store.drop_exemplar(i)
        self._set[ex.key] = (ex, index)

    def chosen(self) -> list:
        return self.select([e for e, _ in self._set.values()])


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _write_quality(recs: dict[int, CaseRecord], out: Path, names: dict[int, str] | None = None) -> None:
    """``quality.json`` as the local CLI writes it (per-case confidence, flags, review order, the set
    check), from the per-slice records of every written case (this run's and earlier runs')."""
    from types import SimpleNamespace

    from .engine.quality import QualityReport
    from .io.writers import write_json

    report = QualityReport(names)
    for i, r in sorted(recs.items()):
        if r.status == "failed":
            continue
        for k, conf, flags in r.slices:
            report.add(SimpleNamespace(volume_index=i, volume_name=r.name, slice_index=k, confidence=conf,
                                       flags=flags))
        report.add_areas(i, {int(k): int(v) for k, v in r.areas.items()})
    write_json(report.to_dict(), out / "quality.json")


def _case_areas(results: Sequence[Any]) -> dict[str, int]:
    """Pixels of each object over a case's slice results, object id as text (a run record's ``areas``)."""
    from .engine.set_check import object_areas, total_areas

    return {str(oid): n for oid, n in total_areas(object_areas(r.labels) for r in results).items()}


def _prompt_json(prompt: SlicePrompt) -> dict[str, Any]:
    return dataclasses.asdict(prompt)


def run_dataset(
    dataset: Dataset | Sequence[Volume],
    prompt: SlicePrompt,
    out_dir: str | Path,
    *,
    model: str = "auto",
    window: Any = None,
    config: PropagationConfig | None = None,
    executor: ExecutorName | LocalExecutor | RayExecutor = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    num_gpus: float = 0.0,
    retries: int = 2,
    inputs: Sequence[str | Path] | None = None,
    options: dict[str, Any] | None = None,
    restart: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    transfer: Callable[..., Any] | None = None,
) -> RunSummary:
    """Segments every case of ``dataset`` from one prompt (dataset scope, ``transfer`` strategy),
    resumably, in this process or on a Ray cluster.

    Args:
        dataset: the cases (lazy :func:`~promptonce.io.readers.load_dataset` datasets stay lazy: each
            worker reads the cases it is given, so on a cluster the inputs must be on storage every
            node can read at the same path).
        prompt: the user's prompt, on case ``prompt.volume_index``, slice ``prompt.slice_index``.
        out_dir: output folder: masks go to ``out_dir/masks``, the run folder to ``out_dir/run``.
        model: backend registry name; a name, not an object, since every worker builds its own.
        window: display window for model frames.
        config: propagation knobs.
        executor: ``"local"`` (this process), ``"ray"``, or an executor object.
        address: Ray cluster address (``auto``, ``ray://host:10001``); None = a local Ray instance.
        workers: Ray workers (actors); None = as many as the cluster's CPUs / ``threads``.
        threads: CPU threads per worker (Ray default 1; local default: every core).
        num_gpus: GPUs per Ray worker.
        retries: how many times a failed case is tried again (input errors are not retried).
        inputs: the input paths, recorded in the manifest with their size and mtime (a rerun with
            files added or removed is refused; the cases of files changed in place are done again).
        options: other settings that must be equal for a rerun to reuse results (recorded).
        restart: forget an earlier run in ``out_dir`` instead of resuming it.
        progress: called as ``progress(cases_done, cases_total, case_name)`` after each case.
        cancel: an Event; when set the run stops after the cases in flight (the rerun resumes).
        transfer: a stand-in for :class:`promptonce.engine.DatasetTransfer` (same constructor and
            methods; recorded in the manifest by name), e.g. for tests and benchmarks.

    Returns:
        :class:`RunSummary` (also written to ``out_dir/run/summary.json``).

    Raises:
        RunMismatchError: ``out_dir`` holds a run with another prompt, model, options or inputs.
        ExecutorUnavailableError: Ray asked for but not installed, or the cluster unreachable.
        CancelledError: ``cancel`` was set (the cases written so far are kept and recorded).
    """
    from . import __version__
    from .io.writers import (
        LABEL_TABLE_NAME,
        ResultWriter,
        label_table_rows,
        write_metrics_csv,
    )

    if not isinstance(dataset, Dataset):
        dataset = Dataset(list(dataset))
    n = len(dataset)
    if n == 0:
        raise InputError("The dataset is empty; load at least one image or volume.")
    if not 0 <= prompt.volume_index < n:
        raise InputError(f"The prompt is on case {prompt.volume_index}, but the dataset has {n} (0..{n - 1}).")
    if not isinstance(model, str):
        raise InputError("run_dataset takes a model name (every worker builds its own model), not a backend object.")
    if retries < 0:
        raise InputError(f"retries {retries} must be >= 0.")
    out = Path(out_dir)
    manifest = {
        "kind": "segment-dataset",
        "version": __version__,
        "prompt": _prompt_json(prompt),
        "model": model,
        "options": {"scope": "dataset", "strategy": "transfer", "window": window,
                    "config": dataclasses.asdict(config) if config is not None else None,
                    "transfer": None if transfer is None else f"{transfer.__module__}.{transfer.__qualname__}",
                    **(options or {})},
        "inputs": input_fingerprints(inputs) if inputs else [],
        "cases": list(dataset.names),
    }
    store = RunStore(out)
    previous = store.open(manifest, restart=restart)
    names = dataset.names

    resumed = 0
    todo: list[int] = []
    for i in range(n):
        rec = previous.get(i)
        if rec is not None and rec.status in ("first", "done") and store.verified(rec):
            resumed += 1
        else:
            if rec is not None and rec.status in ("first", "done"):
                log.warning("%s: its recorded masks are missing or changed; it is done again", rec.name)
            todo.append(i)
    log.info("%d of %d cases to do (%d already written)", len(todo), n, resumed)

    ex = make_executor(executor, address=address, workers=workers, threads=threads, num_gpus=num_gpus)
    t0 = time.perf_counter()
    stats = {"images": 0, "engine": 0.0, "load": 0.0, "done": resumed, "second": 0}
    prefer: dict[int, str] = {}

    def write(reply: CaseReply, pass_: int, attempts: int) -> None:
        vol = geometry_volume(reply.geometry)  # type: ignore[arg-type]
        # one writer per case (a case rewritten by the quality pass is written anew); the run's object
        # ids fix the PNG form for the whole dataset, as in the local CLI; labels.csv once at the end
        writer = ResultWriter(out, objects=object_ids, label_names=label_names)
        files: list[Path] = []
        for res in reply.results or []:
            files.extend(writer.add(res, vol))
        missing = writer.pending
        png[0] = png[0] or vol.source_format == "image"
        if missing or not files:
            raise PromptOnceError(f"{reply.name}: the worker returned an incomplete case ({missing}); not recorded.")
        if pass_ == 1:
            exset.consider(reply.index, reply.exemplar)
        status = "first" if reply.needs_second else "done"
        src = reply.geometry.get("source") if reply.geometry else None
        path = src.extra.get("path") if src is not None else None
        store.record(CaseRecord(reply.index, reply.name, status, [file_entry(f, out) for f in files],
                                len(reply.results or []), reply.confidence, reply.flags[:50], reply.needs_second,
                                attempts, "", pass_, str(Path(path).resolve()) if path else None,
                                [[int(r.slice_index), _float(getattr(r, "confidence", None)), list(r.flags)]
                                 for r in reply.results or []], _case_areas(reply.results or [])))
        if pass_ == 1:  # a case redone by the quality pass is still one case's images
            stats["images"] += len(reply.results or [])

    started = [False]
    object_ids = [o.object_id for o in prompt.objects]
    label_names = {o.object_id: o.name for o in prompt.objects if o.name}
    png = [False]
    exset = _ExemplarSet(store, (transfer or transfer_class()).select_exemplars)

    def run_pass(kind: Literal["first", "second"], indices: list[int], exemplars: Any = None) -> None:
        if not indices:
            return
        if not started[0]:  # nothing to do (a finished run resumed): no workers, no model
            ex.start(WorkerSpec(dataset, prompt, model, window, config, transfer=transfer))
            started[0] = True
        if kind == "second":
            ex.set_exemplars(exemplars)  # once per worker, not once per case
        queue = deque(Task(kind, i, 1, prefer.get(i, "")) for i in indices)
        total = n if kind == "first" else len(indices)
        done_in_pass = [resumed if kind == "first" else 0]
        while queue or ex.in_flight():
            check_cancel(cancel)
            while queue and ex.capacity() > 0:
                ex.submit(queue.popleft())
            for task, reply in ex.poll():
                stats["engine"] += reply.seconds
                stats["load"] += reply.load_seconds
                if reply.ok:
                    try:
                        write(reply, 1 if kind == "first" else 2, task.attempt)
                    except PromptOnceError as exc:
                        reply = dataclasses.replace(reply, ok=False, error_type=type(exc).__name__, error=str(exc),
                                                    retryable=not isinstance(exc, InputError), results=None)
                    else:
                        if kind == "first" and reply.needs_second:
                            prefer[reply.index] = reply.worker
                        if kind == "first" and not reply.needs_second:
                            stats["done"] += 1
                        if kind == "second":
                            stats["second"] += 1
                            stats["done"] += 1
                if not reply.ok:
                    if reply.retryable and task.attempt <= retries:
                        log.warning("case %d (%s) failed on attempt %d: %s; retrying", task.index,
                                    names[task.index], task.attempt, reply.error)
                        queue.append(Task(kind, task.index, task.attempt + 1, ""))
                        continue
                    reason = f"{reply.error_type}: {reply.error}"
                    prev = store.records.get(task.index)
                    if kind == "second" and prev is not None:  # the first pass's masks stay: still a result
                        store.record(dataclasses.replace(prev, status="done", needs_second=False,
                                                         flags=[*prev.flags, f"quality pass failed: {reason}"]))
                        stats["done"] += 1
                    else:
                        store.record(CaseRecord(task.index, names[task.index], "failed", attempts=task.attempt,
                                                reason=reason, pass_=1 if kind == "first" else 2))
                done_in_pass[0] += 1
                if progress is not None:
                    progress(done_in_pass[0], total, names[task.index])
                reply.results = None  # drop the masks now

    try:
        run_pass("first", todo)
        recs = store.records
        second = sorted(i for i, r in recs.items() if r.status == "first" and r.needs_second)
        if second:
            chosen = exset.chosen()
            log.info("quality pass: %d cases, %d exemplars", len(second), len(chosen))
            if chosen:
                run_pass("second", second, chosen)
            else:  # nothing to learn from (as the local engine): the first pass stands
                for i in second:
                    store.record(dataclasses.replace(recs[i], status="done", needs_second=False))
                    stats["done"] += 1
    finally:
        info = dict(ex.info)
        ex.close()
    if png[0]:
        write_metrics_csv(label_table_rows(object_ids, label_names, max(object_ids) <= 1), out / "masks" / LABEL_TABLE_NAME)
    recs = store.records
    _write_quality(recs, out, label_names)
    seconds = time.perf_counter() - t0
    skipped = [(r.name, r.reason) for i, r in sorted(recs.items()) if r.status == "failed"]
    summary = RunSummary(
        cases=n, done=sum(1 for r in recs.values() if r.status == "done"), resumed=resumed, skipped=skipped,
        second_pass=stats["second"], images=stats["images"], seconds=round(seconds, 3),
        images_per_second=round(stats["images"] / seconds, 4) if stats["images"] and seconds > 0 else None,
        engine_seconds=round(stats["engine"], 3), load_seconds=round(stats["load"], 3), executor=info,
        out_dir=str(out),
    )
    store.write_summary(summary.to_json())
    return summary
