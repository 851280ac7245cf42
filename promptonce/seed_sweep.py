"""Seed robustness: the same dataset-scope evaluation once per choice of the prompted case.

With one prompt for a whole dataset, the result depends on which case the user happens to prompt.
:func:`evaluate_sweep` runs :func:`promptonce.evaluate.evaluate` once for each of K seed cases spread
evenly over the dataset and reports the mean, the worst and the spread (max - min) of the dataset
Dice. Every run shares one :class:`~promptonce.engine.Engine` whose embedding cache holds every slice
of the dataset, so each image is encoded once for the whole sweep, not once per seed; the cases are
loaded once and kept in memory for that (the cache is keyed by the volume object).

Memory: every case's image and reference, plus one embedding per slice (LiteMedSAM's is 256x64x64
float32 = 4 MiB: 566 X-rays hold about 2.3 GiB). Memory models (SAM 2's video predictor) encode inside
their own propagation, so for them the sweep saves the loading, not the encoding.

Output folder: ``seed_NNN/`` per seed (that run's usual ``metrics.json``, ``metrics.csv``, ``masks/``)
and the sweep's ``metrics.json`` (``{"summary", "seeds", "cases", "flag_quality"}``) and ``metrics.csv``
(one row per case: Dice per seed, mean and worst).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine, make_engine
from .errors import InputError
from .evaluate import EvalConfig, check_seed_case, evaluate, foreground_mask, quality_headline, seed_prompt
from .flagscore import FlagScore
from .types import Dataset, Volume

__all__ = ["evaluate_sweep", "sweep_seeds"]

log = logging.getLogger(__name__)


def sweep_seeds(n_cases: int, k: int, start: int = 0) -> list[int]:
    """K case indices spread evenly over ``n_cases``, the first at ``start``: ``start + floor(j * n / k)`` mod n.

    Example: 40 cases, 4 seeds, start 1 -> ``[1, 11, 21, 31]``.

    Raises:
        InputError: ``k`` is not in ``1..n_cases`` or ``start`` is not a case index.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"seed sweep {k!r} must be a whole number of seed cases >= 1.")
    if k > n_cases:
        raise InputError(
            f"a sweep of {k} seed cases needs at least {k} cases; the dataset has {n_cases}. "
            f"Ask for {n_cases} seeds or fewer."
        )
    check_seed_case(start, n_cases)
    return [(start + (j * n_cases) // k) % n_cases for j in range(k)]


def evaluate_sweep(
    images: Dataset,
    references: Sequence[Volume | Callable[[], Volume]],
    out_dir: str | Path | None,
    cfg: EvalConfig,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Runs the dataset-scope evaluation once per seed case and summarises the spread (module docstring).

    Args:
        images: the cases.
        references: one reference per case (same order), or loaders of them.
        out_dir: the sweep's folder (None: nothing written).
        cfg: ``scope`` must be ``"dataset"``; ``seed_sweep`` = K, ``seed_case`` = the first seed.
        progress: called as ``progress(slices_done, slices_total, case_name)``, counted over the sweep.
        cancel: an Event to stop early.
        engine: an engine to use (its cache is enlarged for the sweep and set back afterwards).

    Returns:
        ``{"summary", "seeds", "cases", "flag_quality"}``; ``summary`` holds ``dice_mean`` (mean over
        seeds of the dataset Dice), ``dice_worst``, ``dice_best``, ``dice_spread``, ``worst_seed_case``.

    Raises:
        InputError: scope is not ``dataset``, K is out of range, or no case has a foreground.
    """
    if cfg.scope != "dataset":
        raise InputError(
            f"a seed sweep compares which case is prompted for a whole dataset; it needs scope 'dataset', "
            f"not {cfg.scope!r} (use --scope dataset)."
        )
    n = len(images)
    if len(references) != n:
        raise InputError(f"{n} images but {len(references)} references; give one reference per image.")
    seeds = sweep_seeds(n, cfg.seed_sweep, cfg.seed_case)
    # Load every case once and keep it: the engine's cache is keyed by the volume object, so a
    # lazily loaded dataset would be encoded again for every seed.
    vols = Dataset([images[i] for i in range(n)])
    refs = [r if isinstance(r, Volume) else r() for r in references]
    seeds = _usable_seeds(seeds, refs, cfg)
    total_slices = sum(v.n_slices for v in vols)

    eng = engine
    if eng is None:
        first = seed_prompt(refs[seeds[0]], seeds[0], replace(cfg, jitter_px=0.0))
        eng = make_engine(first, cfg.model, "auto", cfg.config)
    old_size = eng.cache_size
    per_backend = 2 if eng.click_backend is not None else 1  # a click model's embeddings are cached too
    eng.cache_size = max(old_size, total_slices * per_backend + 1)
    log.info("seed sweep: %d seeds over %d cases (%d slices); embedding cache %d", len(seeds), n, total_slices,
             eng.cache_size)

    out = Path(out_dir) if out_dir is not None else None
    width = max(3, len(str(n - 1)))
    runs: list[dict[str, Any]] = []
    offset = [0]

    def shifted(done: int, _total: int, name: str) -> None:
        if progress is not None:
            progress(offset[0] + done, total_slices * len(seeds), name)

    try:
        for s in seeds:
            sub = out / f"seed_{s:0{width}d}" if out is not None else None
            res = evaluate(vols, refs, sub, replace(cfg, seed_case=s, seed_sweep=0), progress=shifted,
                           cancel=cancel, engine=eng)
            res["_dir"] = sub.name if sub is not None else None
            runs.append(res)
            offset[0] += int(res["summary"]["images"])
    finally:
        if engine is not None:
            engine.cache_size = old_size
    result = _summarise(runs, seeds, vols, cfg)
    if out is not None:
        from .io.writers import write_json, write_metrics_csv

        write_json(result, out / "metrics.json")
        write_metrics_csv(_sweep_csv(result["cases"], seeds), out / "metrics.csv")
    return result


def _usable_seeds(seeds: list[int], refs: Sequence[Volume], cfg: EvalConfig) -> list[int]:
    """Moves a seed whose reference is empty to the next case (in order) that has a foreground."""
    n = len(refs)
    labels = None if cfg.labels is None else list(cfg.labels)
    has_fg = [bool(foreground_mask(r.array, labels).any()) for r in refs]
    if not any(has_fg):
        raise InputError("No case's reference holds the chosen labels; nothing can be prompted (check --labels).")
    out: list[int] = []
    for s in seeds:
        t = s
        while not has_fg[t] or t in out:
            t = (t + 1) % n
            if t == s:
                break
        if has_fg[t] and t not in out:
            if t != s:
                log.warning("seed case %d has no foreground in its reference; case %d is prompted instead", s, t)
            out.append(t)
    return out


def _summarise(runs: list[dict[str, Any]], seeds: list[int], vols: Dataset, cfg: EvalConfig) -> dict[str, Any]:
    dice = [r["summary"]["dice_mean"] for r in runs]
    finite = [d for d in dice if d is not None]
    worst_i = int(np.argmin([d if d is not None else np.inf for d in dice])) if finite else 0
    case_pool = sum((FlagScore.from_dict(r["flag_quality"]["case"]) for r in runs), FlagScore())
    slice_pool = sum((FlagScore.from_dict(r["flag_quality"]["slice"]) for r in runs), FlagScore())
    pooled = {
        "thresholds": runs[0]["flag_quality"]["thresholds"],
        "pooled_over": "every seed's run",
        "case": case_pool.as_dict(),
        "slice": slice_pool.as_dict(),
    }
    aucs = [r["flag_quality"]["confidence_auc_case"] for r in runs if r["flag_quality"]["confidence_auc_case"]]
    if aucs:
        pooled["confidence_auc_case_mean"] = round(float(np.mean(aucs)), 4)
    seconds = [r["summary"]["seconds"] for r in runs]
    s0 = runs[0]["summary"]
    summary = {
        "model": s0["model"],
        "scope": "dataset",
        "strategy": cfg.strategy,
        "protocol": cfg.protocol,
        "seed_sweep": len(seeds),
        "seed_cases": seeds,
        "seed_names": [vols.names[s] for s in seeds],
        "prompts": len(seeds),
        "images": s0["images"],
        "cases": s0["cases"],
        "dice_mean": _r(np.mean(finite)) if finite else None,
        "dice_worst": _r(min(finite)) if finite else None,
        "dice_best": _r(max(finite)) if finite else None,
        "dice_spread": _r(max(finite) - min(finite)) if finite else None,
        "worst_seed_case": seeds[worst_i],
        "jaccard_mean": _mean_of(r["summary"]["jaccard_mean"] for r in runs),
        "dice_pooled_mean": _mean_of(r["summary"]["dice_pooled"] for r in runs),
        "seconds": round(float(sum(seconds)), 3),
        "seconds_first_seed": seconds[0],
        "seconds_other_seeds_mean": round(float(np.mean(seconds[1:])), 3) if len(seconds) > 1 else None,
        "model_load_seconds": s0["model_load_seconds"],
        **quality_headline({"case": case_pool.as_dict(), "slice": slice_pool.as_dict(),
                            "confidence_auc_case": pooled.get("confidence_auc_case_mean")}),
    }
    per_seed = [
        {"seed_case": s, "seed_name": vols.names[s], "out": r.get("_dir"),
         **{k: r["summary"].get(k) for k in (
             "dice_mean", "dice_pooled", "jaccard_mean", "dice_slice_mean", "seconds", "images",
             "flag_recall_case", "flag_precision_case", "flag_recall_slice", "flag_precision_slice",
             "flagged_cases", "failed_cases", "confidence_auc_case")}}
        for s, r in zip(seeds, runs)
    ]
    by_case: dict[int, dict[str, Any]] = {}
    for s, r in zip(seeds, runs):
        for c in r["cases"]:
            d = by_case.setdefault(c["index"], {"name": c["name"], "index": c["index"], "dice_by_seed": {},
                                                "flags_by_seed": {}})
            d["dice_by_seed"][str(s)] = c.get("dice")
            d["flags_by_seed"][str(s)] = len(c.get("flags") or [])
    cases = []
    for i in sorted(by_case):
        d = by_case[i]
        vals = [v for v in d["dice_by_seed"].values() if v is not None and np.isfinite(v)]
        d["dice"] = _r(np.mean(vals)) if vals else None
        d["dice_worst"] = _r(min(vals)) if vals else None
        cases.append(d)
    return {"summary": summary, "seeds": per_seed, "cases": cases, "flag_quality": pooled}


def _sweep_csv(cases: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for c in cases:
        row = {"name": c["name"], "index": c["index"], "dice_mean_over_seeds": c["dice"], "dice_worst": c["dice_worst"]}
        for s in seeds:
            row[f"dice_seed_{s}"] = c["dice_by_seed"].get(str(s))
        rows.append(row)
    return rows


def _r(v: float) -> float:
    return round(float(v), 4)


def _mean_of(values) -> float | None:
    vals = [v for v in values if v is not None]
    return _r(np.mean(vals)) if vals else None
