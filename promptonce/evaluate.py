"""Simulated-user evaluation: build the prompt a person would give, segment, score everything.

Protocols
---------
* ``oneclick`` (default; the CLI's ``evaluate``): the prompt is built from the reference mask of the
  seed image ONLY - one box and one interior point per connected component of the chosen labels, as
  a person would draw or click - and the engine never sees any other reference while segmenting.
  ``scope="image"`` prompts every image/slice that holds the object (the per-image upper bound),
  ``"volume"`` one slice per volume, ``"dataset"`` one slice in total.
* ``nmt``: the "No More Training" protocol, per slice: positive points at each component's centroid
  (moved inside), one negative point at the centre of the components' box, plus that box.

Masks and metrics are streamed: only the case in progress is held in memory.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .engine import Engine, PropagationConfig, make_engine, segment
from .engine.quality import case_confidence, flag_lines
from .engine.set_check import object_areas, proportion_flags
from .errors import InputError, check_cancel
from .flagscore import BAD_BELOW, FAIL_BELOW, confidence_auc, flag_score, review_order
from .metrics import MetricAccumulator, per_slice
from .prompts import nmt_prompt, prompt_from_reference, seed_slice
from .types import Dataset, ObjectPrompt, Scope, SlicePrompt, SliceResult, Volume

__all__ = [
    "EvalConfig", "add_set_flags", "check_seed_case", "evaluate", "flag_quality", "foreground_mask", "reference_prompt",
    "seed_prompt", "write_summary_line",
]

log = logging.getLogger(__name__)

Protocol = Literal["oneclick", "box", "click", "nmt"]


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        model: backend name (``auto``, ``litemedsam``, ``mobilesam``, ``sam_vit_l``, ``sam2.1_hiera_t``...).
        scope: ``image`` | ``volume`` | ``dataset``.
        labels: reference labels that form the foreground (None = every non-zero label, merged).
        seed: how the seed slice is chosen inside a volume: ``largest`` | ``centre`` | ``first``.
        protocol: ``oneclick`` = one box + one interior point per component; ``box`` = boxes only;
            ``click`` = interior points only; ``nmt`` = the "No More Training" prompt set.
        strategy: dataset-scope strategy, ``transfer`` | ``chain``.
        window: display window for model frames.
        seed_case: index of the case the user prompts in dataset scope (with ``seed_sweep``: the
            first seed).
        seed_sweep: dataset scope: K > 0 runs once per seed case, K seeds spread evenly over the
            dataset from ``seed_case`` on, and reports the mean, worst and spread of the dataset Dice
            (0 = one run with ``seed_case``). One engine serves every seed, so each image is encoded once.
        jitter_px: simulated-user imprecision, pixels (0 = exact); uses ``rng_seed``.
        write_masks: write predicted masks to ``out/masks``.
    """

    model: str = "auto"
    scope: Scope = "volume"
    labels: Sequence[int] | None = None
    seed: str = "largest"
    protocol: Protocol = "oneclick"
    strategy: str = "transfer"
    window: Any = None
    seed_case: int = 0
    seed_sweep: int = 0
    jitter_px: float = 0.0
    rng_seed: int = 0
    write_masks: bool = True
    config: PropagationConfig | None = None


def foreground_mask(ref: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    """Bool mask of the reference labels that form the foreground (None = every non-zero label)."""
    if labels is None:
        return ref != 0
    return np.isin(ref, list(labels))


def reference_prompt(
    ref_slice: np.ndarray,
    *,
    labels: Sequence[int] | None,
    protocol: Protocol,
    slice_index: int,
    volume_index: int = 0,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0.0,
) -> SlicePrompt | None:
    """The prompt a simulated user gives on one reference slice, or None when it holds no object.

    Args:
        ref_slice: integer label map ``(rows, cols)``.
        labels: foreground labels (None = all non-zero).
        protocol: see :class:`EvalConfig`.
    """
    from .prompts import jitter

    fg = foreground_mask(ref_slice, labels).astype(np.uint8)
    if not fg.any():
        return None
    if protocol == "nmt":
        objs: tuple[ObjectPrompt, ...] = (nmt_prompt(fg),)
    else:
        objs = tuple(prompt_from_reference(fg))
        if protocol == "box":
            objs = tuple(ObjectPrompt(box=o.box, object_id=o.object_id) for o in objs if o.box is not None)
        elif protocol == "click":
            objs = tuple(ObjectPrompt(points=o.points, object_id=o.object_id) for o in objs if o.points)
    if not objs:
        return None
    if rng is not None and jitter_px > 0:
        objs = tuple(jitter(o, rng, jitter_px, fg.shape) for o in objs)
    return SlicePrompt(objs, slice_index=slice_index, volume_index=volume_index)


def evaluate(
    images: Dataset,
    references: Sequence[Volume | Callable[[], Volume]],
    out_dir: str | Path | None,
    cfg: EvalConfig,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Runs the simulated user over a dataset and scores every case.

    Besides Dice/Jaccard/HD95 per case, it scores the run's own warnings (see
    :mod:`promptonce.flagscore`): flag recall and precision per case and per slice, how well the
    confidence ranks failures first, and the order in which a user should review the cases.

    Args:
        images: the cases.
        references: one reference label volume per case (same order), or loaders of them.
        out_dir: where ``metrics.json``, ``metrics.csv`` and ``masks/`` go (None: nothing written).
            With ``cfg.seed_sweep``: one sub-folder ``seed_NNN`` per seed plus the sweep's own
            ``metrics.json``/``metrics.csv``.
        cfg: what to evaluate.
        progress: called as ``progress(slices_done, slices_total, case_name)``.
        cancel: an Event to stop early.
        engine: reuse an engine (its models and embedding cache).

    Returns:
        The ``metrics.json`` content: ``{"summary": {...}, "cases": [...], "flag_quality": {...},
        "review_first": [...]}`` (a sweep: ``{"summary", "seeds", "cases", "flag_quality"}``).

    Raises:
        InputError: counts differ, no images, an unknown scope, or a seed case out of range.
    """
    if len(images) != len(references):
        raise InputError(f"{len(images)} images but {len(references)} references; give one reference per image.")
    if len(images) == 0:
        raise InputError("No images to evaluate.")
    if cfg.seed_sweep:
        from .seed_sweep import evaluate_sweep

        return evaluate_sweep(images, references, out_dir, cfg, progress=progress, cancel=cancel, engine=engine)
    if cfg.scope == "dataset":
        check_seed_case(cfg.seed_case, len(images))

    def ref_of(i: int) -> Volume:
        r = references[i]
        return r if isinstance(r, Volume) else r()

    rng = np.random.default_rng(cfg.rng_seed)
    out = Path(out_dir) if out_dir is not None else None
    writer = None
    if out is not None and cfg.write_masks:
        from .io.writers import ResultWriter

        writer = ResultWriter(out)
    acc = MetricAccumulator()
    case_rows: list[dict[str, Any]] = []
    prompts_total = 0
    slices_total = 0
    t0 = time.perf_counter()
    merged_labels = None if cfg.labels is None else list(cfg.labels)

    def case_seed_prompt(i: int, ref: Volume) -> SlicePrompt | None:
        return seed_prompt(ref, i, cfg, rng=rng)

    eng = engine
    load_s = 0.0

    def build(sp: SlicePrompt) -> Engine:
        nonlocal load_s
        t = time.perf_counter()
        e = make_engine(sp, cfg.model, "auto", cfg.config)
        load_s += time.perf_counter() - t
        return e

    def collect(case: _Case, results) -> None:
        nonlocal slices_total
        for res in results:
            case.add(res)
            slices_total += 1
            if writer is not None:
                writer.add(res, case.vol)
            if progress is not None:
                progress(slices_total, -1, case.vol.name)

    def finish_case(case: _Case) -> None:
        case_rows.append(_score_case(acc, case, merged_labels))

    if cfg.scope == "image":
        for i in range(len(images)):
            vol, ref = images[i], ref_of(i)
            _check_pair(vol, ref)
            case = _Case(i, vol, ref)
            for k in range(vol.n_slices):
                check_cancel(cancel)
                sp = reference_prompt(
                    ref.array[k], labels=merged_labels, protocol=cfg.protocol, slice_index=k, volume_index=0,
                    rng=rng, jitter_px=cfg.jitter_px,
                )
                if sp is not None:
                    if eng is None:
                        eng = build(sp)
                    for res in segment(Dataset([vol]), sp, scope="image", engine=eng, window=cfg.window):
                        res.volume_index = i
                        case.add(res)
                        if writer is not None:
                            writer.add(res, vol)
                    case.prompts += 1
                elif writer is not None:
                    writer.add(SliceResult(volume_index=i, slice_index=k, labels=case.pred[k], volume_name=vol.name,
                                           n_slices=vol.n_slices), vol)
                slices_total += 1
                if progress is not None:
                    progress(slices_total, -1, vol.name)
            prompts_total += case.prompts
            finish_case(case)
    elif cfg.scope == "volume":
        for i in range(len(images)):
            vol, ref = images[i], ref_of(i)
            _check_pair(vol, ref)
            case = _Case(i, vol, ref)
            sp = case_seed_prompt(i, ref)
            if sp is None:
                log.warning("%s: the reference holds no foreground; predicted empty", vol.name)
                case.notes.append("no foreground in reference")
                finish_case(case)
                continue
            sp = replace(sp, volume_index=0)
            if eng is None:
                eng = build(sp)
            prompts_total += 1
            case.prompts = 1
            results = segment(Dataset([vol]), sp, scope="volume", engine=eng, window=cfg.window, cancel=cancel)
            collect(case, (_renumber(r, i) for r in results))
            finish_case(case)
    elif cfg.scope == "dataset":
        s = cfg.seed_case
        sp = case_seed_prompt(s, ref_of(s))
        if sp is None:
            raise InputError(f"{images[s].name}: its reference holds no foreground; choose another seed case.")
        if eng is None:
            eng = build(sp)
        prompts_total = 1
        current: _Case | None = None
        for res in segment(
            images, sp, scope="dataset", engine=eng, window=cfg.window, strategy=cfg.strategy,  # type: ignore[arg-type]
            cancel=cancel,
        ):
            if current is None or current.index != res.volume_index:
                if current is not None:
                    finish_case(current)
                vol = images[res.volume_index]
                ref = ref_of(res.volume_index)
                _check_pair(vol, ref)
                current = _Case(res.volume_index, vol, ref, prompts=1 if res.volume_index == s else 0)
            collect(current, (res,))
        if current is not None:
            finish_case(current)
    else:
        raise InputError(f"Unknown scope {cfg.scope!r}; use image, volume or dataset.")

    seconds = time.perf_counter() - t0 - load_s
    if writer is not None:
        writer.close()
    if cfg.scope == "dataset":  # one prompt: object ids mean the same object in every case
        add_set_flags(case_rows, {o.object_id: o.name for o in sp.objects if o.name})
    summ = acc.summary()
    model_name = eng.backend.info.name if eng is not None else cfg.model
    quality = flag_quality(case_rows)
    summary = {
        "model": model_name,
        "scope": cfg.scope,
        "strategy": cfg.strategy if cfg.scope == "dataset" else None,
        "protocol": cfg.protocol,
        "seed_case": cfg.seed_case if cfg.scope == "dataset" else None,
        "seed_name": images.names[cfg.seed_case] if cfg.scope == "dataset" else None,
        "prompts": prompts_total,
        "images": slices_total,
        "cases": len(case_rows),
        "dice_mean": summ.get("dice_mean"),
        "jaccard_mean": summ.get("jaccard_mean"),
        "dice_pooled": summ.get("dice_pooled"),
        "jaccard_pooled": summ.get("jaccard_pooled"),
        "dice_slice_mean": summ.get("dice_slice_mean"),
        "hd95_mean_mm": summ.get("hd95_mean"),
        "seconds": round(seconds, 3),
        "model_load_seconds": round(load_s, 3),
        "images_per_second": round(slices_total / seconds, 4) if seconds > 0 else None,
        "prompts_per_slice_workflow": _per_slice_prompts(case_rows),
        **quality_headline(quality),
    }
    if summary["prompts_per_slice_workflow"]:
        summary["prompts_saved_pct"] = round(100.0 * (1 - prompts_total / summary["prompts_per_slice_workflow"]), 3)
    result = {
        "summary": summary,
        "cases": [_case_json(r) for r in case_rows],
        "flag_quality": quality,
        "review_first": review_list(case_rows),
    }
    if out is not None:
        from .io.writers import write_json, write_metrics_csv

        write_json(result, out / "metrics.json")
        write_metrics_csv([_case_csv(r) for r in case_rows], out / "metrics.csv")
    return result


def check_seed_case(seed_case: int, n_cases: int) -> None:
    """Raises a clear :class:`InputError` when ``seed_case`` is not a case index of an ``n_cases`` dataset."""
    if isinstance(seed_case, bool) or not isinstance(seed_case, (int, np.integer)) or not 0 <= seed_case < n_cases:
        raise InputError(
            f"seed case {seed_case!r} does not exist: the dataset has {n_cases} case(s), numbered 0..{n_cases - 1} "
            "in load order; choose one of them."
        )


def seed_prompt(
    ref: Volume, volume_index: int, cfg: EvalConfig, rng: np.random.Generator | None = None
) -> SlicePrompt | None:
    """The simulated user's prompt on one case: on its seed slice (``cfg.seed``), from its reference only.

    Args:
        ref: the case's reference label volume.
        volume_index: the case's index, written into the prompt.
        cfg: labels, seed rule, protocol and jitter.
        rng: random source for the jitter (None: no jitter).

    Returns:
        The prompt, or None when the reference holds no foreground.
    """
    labels = None if cfg.labels is None else list(cfg.labels)
    fg = foreground_mask(ref.array, labels)
    if not fg.any():
        return None
    k = seed_slice(fg.astype(np.uint8), how=cfg.seed)
    return reference_prompt(
        ref.array[k], labels=labels, protocol=cfg.protocol, slice_index=k, volume_index=volume_index,
        rng=rng, jitter_px=cfg.jitter_px,
    )


@dataclass
class _Case:
    """One case being collected: its prediction and what the engine said about each slice."""

    index: int
    vol: Volume
    ref: Volume
    prompts: int = 0
    pred: np.ndarray = field(init=False)
    slice_flags: dict[int, list[str]] = field(default_factory=dict)
    slice_conf: list[float | None] = field(init=False)
    case_conf: float | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pred = np.zeros(self.vol.shape, np.uint8)
        self.slice_conf = [None] * self.vol.n_slices

    def add(self, res: SliceResult) -> None:
        self.pred[res.slice_index] = res.labels
        if res.flags:
            self.slice_flags.setdefault(res.slice_index, []).extend(str(f) for f in res.flags)
        conf = _confidence_value(getattr(res, "confidence", None))
        if conf is not None:
            self.slice_conf[res.slice_index] = conf
        case_conf = _confidence_value(getattr(res, "case_confidence", None))
        if case_conf is not None:
            self.case_conf = case_conf
        case_flags = getattr(res, "case_flags", None)
        if case_flags:
            self.slice_flags.setdefault(-1, [])
            for f in case_flags:
                if str(f) not in self.slice_flags[-1]:
                    self.slice_flags[-1].append(str(f))


def _confidence_value(v: Any) -> float | None:
    """A confidence as one float: a number as is, a per-object mapping by its lowest value."""
    if v is None:
        return None
    if isinstance(v, dict):
        vals = [float(x) for x in v.values() if x is not None]
        return min(vals) if vals else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _score_case(acc: MetricAccumulator, case: _Case, labels: list[int] | None) -> dict[str, Any]:
    """The case's metrics row, with its flags and confidence per slice (private ``_``-keys for scoring)."""
    vol, pred = case.vol, case.pred
    fg = foreground_mask(case.ref.array, labels)
    row = dict(acc.add(vol.name, pred != 0, fg, spacing=_array_spacing(vol)))
    slice_dice = per_slice(pred != 0, fg, empty="nan")
    if vol.n_slices > 1:
        row["slice_dice"] = [round(float(d), 4) if np.isfinite(d) else 1.0 for d in slice_dice]
    if "hd95" in row:
        row["hd95_mm"] = row.pop("hd95")
    if vol.source is not None and vol.source.extra.get("path"):
        row["image_path"] = str(vol.source.extra["path"])
    flags = flag_lines({k: v for k, v in case.slice_flags.items() if k >= 0}, numbered=vol.n_slices > 1)
    flags = case.slice_flags.get(-1, []) + flags
    conf = case.case_conf if case.case_conf is not None else case_confidence(case.slice_conf)
    row.update({
        "index": case.index,
        "images": int(vol.n_slices),
        "prompts": case.prompts,
        "flags": flags,
        "confidence": None if conf is None else round(float(conf), 4),
        "notes": list(case.notes),
        "slices_with_object": int(fg.reshape(fg.shape[0], -1).any(axis=1).sum()),
    })
    if vol.n_slices > 1:
        row["slice_flags"] = {str(k): v for k, v in sorted(case.slice_flags.items()) if k >= 0}
        if any(c is not None for c in case.slice_conf):
            row["slice_confidence"] = [None if c is None else round(c, 4) for c in case.slice_conf]
    row["_areas"] = object_areas(pred)
    row["_slice_dice"] = slice_dice.tolist()
    row["_slice_flagged"] = [bool(case.slice_flags.get(k)) for k in range(vol.n_slices)]
    row["_slice_conf"] = list(case.slice_conf)
    return row


def add_set_flags(case_rows: Sequence[dict[str, Any]], names: dict[int, str] | None = None) -> None:
    """Adds :func:`~.engine.set_check.proportion_flags` to the rows' ``flags`` (rows with ``_areas``).

    Only for runs whose object ids mean the same object in every case (dataset scope, one prompt): a
    prompt per image or volume numbers each case's objects on their own.
    """
    flags = proportion_flags({i: r["_areas"] for i, r in enumerate(case_rows) if r.get("_areas")}, names)
    for i, extra in flags.items():
        case_rows[i]["flags"] = [*case_rows[i].get("flags", []), *extra]


def flag_quality(case_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flag recall/precision per case and per slice, confidence AUCs, and how often each kind of flag fires.

    Args:
        case_rows: rows as :func:`evaluate` builds them (``dice``, ``flags``, ``confidence`` and the
            per-slice ``_slice_dice`` / ``_slice_flagged`` / ``_slice_conf``).

    Returns:
        ``{"case": FlagScore dict, "slice": FlagScore dict, "confidence_auc_case", "confidence_auc_slice",
        "flag_kinds": {kind: {"slices", "below_bad"}}, "thresholds": {...}}``; kinds are flag texts with
        their numbers replaced by ``#``.
    """
    case_dice = [r.get("dice") for r in case_rows]
    case_flagged = [bool(r.get("flags")) for r in case_rows]
    s_dice: list[float] = []
    s_flag: list[bool] = []
    s_conf: list[float | None] = []
    kinds: dict[str, dict[str, int]] = {}
    for r in case_rows:
        s_dice.extend(r.get("_slice_dice", []))
        s_flag.extend(r.get("_slice_flagged", []))
        s_conf.extend(r.get("_slice_conf", []))
        sd = r.get("_slice_dice", [])
        for f in r.get("flags", []):
            m = _SLICE_FLAG.match(f)
            k = int(m.group(1)) if m else None
            kind = _NUMBER.sub("#", m.group(2) if m else f)
            d = kinds.setdefault(kind, {"count": 0, "below_bad": 0})
            d["count"] += 1
            dv = sd[k] if k is not None and k < len(sd) else r.get("dice")
            if dv is not None and np.isfinite(dv) and dv < BAD_BELOW:
                d["below_bad"] += 1
    return {
        "thresholds": {"fail_below": FAIL_BELOW, "bad_below": BAD_BELOW},
        "case": flag_score(case_dice, case_flagged).as_dict(),
        "slice": flag_score(s_dice, s_flag).as_dict(),
        "confidence_auc_case": confidence_auc(case_dice, [r.get("confidence") for r in case_rows]),
        "confidence_auc_slice": confidence_auc(s_dice, s_conf),
        "flag_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["count"])),
    }


def quality_headline(quality: dict[str, Any]) -> dict[str, Any]:
    """The few flag figures that go into a run's summary."""
    return {
        "flag_recall_case": quality["case"]["recall"],
        "flag_precision_case": quality["case"]["precision"],
        "flag_recall_slice": quality["slice"]["recall"],
        "flag_precision_slice": quality["slice"]["precision"],
        "flagged_cases": quality["case"]["flagged"],
        "failed_cases": quality["case"]["failures"],
        "confidence_auc_case": quality["confidence_auc_case"],
    }


def review_list(case_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every case in the order to review it (:func:`promptonce.flagscore.review_order`), with its evidence."""
    return [
        {"rank": rank + 1, "index": case_rows[i].get("index"), "name": case_rows[i]["name"],
         "confidence": case_rows[i].get("confidence"), "flags": len(case_rows[i].get("flags") or []),
         "dice": case_rows[i].get("dice")}
        for rank, i in enumerate(review_order(case_rows))
    ]


_SLICE_FLAG = re.compile(r"slice (\d+): (.*)$", re.S)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _per_slice_prompts(rows: list[dict[str, Any]]) -> int:
    return int(sum(r.get("slices_with_object", r.get("images", 0)) for r in rows))


def _case_json(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "name", "index", "dice", "jaccard", "hd95_mm", "images", "prompts", "confidence", "flags", "notes",
        "slices_with_object", "slice_dice", "slice_confidence", "slice_flags", "image_path", "reference_path",
    )
    return {k: r[k] for k in keys if k in r}


def _case_csv(r: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: the case's figures, its confidence, the number of flag lines (a run of slices with one flag
    is one line, :func:`~.engine.quality.flag_lines`) and their texts (``;``-joined)."""
    d = _case_json(r)
    for k in ("slice_dice", "slice_confidence", "slice_flags"):
        d.pop(k, None)
    flags = d.pop("flags", [])
    d["n_flags"] = len(flags)
    d["flags"] = flags
    d["confidence"] = d.pop("confidence", None)
    return d


def _renumber(res: SliceResult, i: int) -> SliceResult:
    res.volume_index = i
    return res


def _array_spacing(vol: Volume) -> tuple[float, float, float]:
    c, r, s = vol.spacing
    return (s, r, c)


def _check_pair(vol: Volume, ref: Volume) -> None:
    if vol.shape != ref.shape:
        from .errors import ReferenceMismatchError

        raise ReferenceMismatchError(
            f"{vol.name}: reference shape {ref.shape} differs from the image's {vol.shape} (slices, rows, cols); "
            "give the reference mask made for this image."
        )


def write_summary_line(result: dict[str, Any]) -> str:
    """A one-line human summary of an evaluation result."""
    s = result["summary"]
    if s.get("seed_sweep"):
        per = " ".join(f"{r['seed_case']}:{_num(r['dice_mean'])}" for r in result.get("seeds", []))
        return (
            f"{s['model']} scope={s['scope']} seed_sweep={s['seed_sweep']} images={s['images']}/seed "
            f"dice over seeds: mean={_num(s['dice_mean'])} worst={_num(s['dice_worst'])} "
            f"(seed {s['worst_seed_case']}) spread={_num(s['dice_spread'])}; per seed {per}; "
            f"flags: {_flag_text(s)} ({s['seconds']:.1f} s)"
        )
    seed = f" seed_case={s['seed_case']}" if s.get("seed_case") is not None else ""
    return (
        f"{s['model']} scope={s['scope']}{seed} prompts={s['prompts']} images={s['images']} "
        f"dice_mean={_num(s['dice_mean'])} jaccard_mean={_num(s['jaccard_mean'])} flags: {_flag_text(s)} "
        f"({s['seconds']:.1f} s)"
    )


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _flag_text(s: dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    return (
        f"{s.get('flagged_cases', 0)} cases flagged, {s.get('failed_cases', 0)} below {FAIL_BELOW}; "
        f"recall {pct(s.get('flag_recall_case'))} precision {pct(s.get('flag_precision_case'))}"
    )

