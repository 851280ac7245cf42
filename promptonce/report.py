"""Results report: one self-contained HTML page (and a Markdown twin) from ``evaluate`` run folders.

A run folder is what :func:`promptonce.evaluate.evaluate` (``promptonce evaluate --out DIR``) writes:

* ``metrics.json`` (required): ``{"summary": {...}, "cases": [{"name", "dice", "jaccard", ...}]}``;
* ``run.json`` (optional): the inputs, ``{"images": [...], "references": [...], "reference_paths":
  {case name: path}, "config": {...}}``;
* ``masks/`` (optional): the predicted masks, ``<name>.nii.gz`` per volume or ``<image stem>.png``.

What the report shows, per run: the summary table (model, scope, strategy, protocol, cases, images,
prompts, Dice mean/pooled, Jaccard, HD95, time per slice, images/s) next to the seed papers'
literature figures; box plots of per-case Dice; per-slice Dice along each volume (when the cases
carry ``slice_dice``); prompts used vs prompting every slice; time per slice; a paired Wilcoxon
signed-rank test between every two runs over the cases they share by name; overlay thumbnails of the
best and worst cases (when the images can be found: ``cases[].image_path``, else ``run.json``).

Every field is optional except ``metrics.json`` itself: a missing number prints as "-" and a plot
without data is left out with a note. ``report.html`` embeds its plots as base64 PNG and uses
inline CSS only (no external URL), so it can be mailed or archived as one file; ``report.md``
links sibling PNG files; ``report.json`` holds the table, the paired tests and the names of the
cases drawn as thumbnails, for scripts.

Example::

    from promptonce.report import write_report
    write_report([Path("runs/litemedsam_volume"), Path("runs/mobilesam_volume")], Path("report/"))
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InputError, PromptOnceError

__all__ = [
    "LITERATURE",
    "MIN_PAIRED_CASES",
    "PairedTest",
    "Run",
    "load_run",
    "paired_tests",
    "summary_rows",
    "write_report",
]

log = logging.getLogger(__name__)

#: Fewest shared cases for which the paired test is computed (below it the report says so).
MIN_PAIRED_CASES = 6

#: Seed papers' figures: zero-shot SAM ViT-L, prompts from the reference masks, one prompt set per
#: slice/image, on the full public versions of the sets (not the subsets in ``../shared/data``).
LITERATURE: tuple[dict[str, Any], ...] = (
    {
        "source": "SAM ViT-L, per-slice prompts (literature)",
        "data": "COVID-19 CT lungs (Ma et al. 2020), 20 volumes / 3520 slices",
        "dice": 0.9494,
        "jaccard": 0.9145,
    },
    {
        "source": "SAM ViT-L, per-image prompts (literature)",
        "data": "Montgomery chest X-rays, lungs",
        "dice": 0.9319,
        "jaccard": 0.8745,
    },
)

_THUMB_SIDE = 224  # pixels, longest side of an overlay thumbnail
_MAX_SLICE_CURVES = 12  # per run, in the per-slice Dice plot
_PRED_COLOR = (255, 70, 70)
_REF_COLOR = (40, 230, 90)


# ----------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One evaluate run folder, read.

    Attributes:
        path: the folder.
        label: a short unique name for tables and plots (the folder name, made unique).
        summary: ``metrics.json`` summary (may lack any field).
        cases: ``metrics.json`` cases (each a dict with at least ``name``).
        info: ``run.json`` content, or an empty dict.
    """

    path: Path
    label: str
    summary: dict[str, Any]
    cases: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def dice_by_case(self) -> dict[str, float]:
        """``{case name: Dice}`` for the cases with a finite Dice (first occurrence of a name)."""
        out: dict[str, float] = {}
        for c in self.cases:
            name, d = c.get("name"), _num(c.get("dice"))
            if name is None or d is None or name in out:
                continue
            out[str(name)] = d
        return out


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Reads one run folder.

    Args:
        run_dir: a folder holding ``metrics.json`` (and optionally ``run.json``, ``masks/``).
        label: display name (default: the folder name).

    Raises:
        InputError: the folder or its ``metrics.json`` is missing.
        CorruptFileError: ``metrics.json`` is not valid JSON or not ``{"summary": ..., "cases": ...}``.
    """
    path = Path(run_dir)
    metrics = path / "metrics.json"
    if not path.is_dir():
        raise InputError(f"Run folder {path} does not exist; give folders written by `promptonce evaluate --out`.")
    if not metrics.is_file():
        raise InputError(
            f"{path} holds no metrics.json; give folders written by `promptonce evaluate --out DIR`."
        )
    data = _read_json(metrics)
    if not isinstance(data, dict) or not isinstance(data.get("cases", []), list):
        raise CorruptFileError(
            f"{metrics} is not an evaluate result ({{'summary': {{...}}, 'cases': [...]}}); re-run the evaluation."
        )
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    cases = [c for c in data.get("cases", []) if isinstance(c, dict) and "name" in c]
    info: dict[str, Any] = {}
    if (path / "run.json").is_file():
        try:
            loaded = _read_json(path / "run.json")
            info = loaded if isinstance(loaded, dict) else {}
        except CorruptFileError as exc:
            log.warning("%s; thumbnails may be missing", exc)
    return Run(path=path, label=label or path.resolve().name, summary=dict(summary), cases=cases, info=info)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} cannot be read as JSON ({exc}); re-run the evaluation that wrote it.") from None


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    labels = [p.resolve().name or str(p) for p in paths]
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            parent = paths[i].resolve().parent.name
            labels[i] = f"{parent}/{lab}" if parent else lab
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            labels[i] = f"{lab} ({seen[lab]})"
    return labels


def _num(v: Any) -> float | None:
    """A finite float, or None (for None, NaN, inf, strings that are not numbers)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------------- table rows
def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run with the report's table columns (None where the run lacks the field).

    Columns: ``run, model, scope, strategy, protocol, cases, images, prompts, prompts_per_slice,
    prompts_saved_pct, dice_mean, dice_pooled, jaccard_mean, jaccard_pooled, hd95_mm, seconds,
    ms_per_slice, images_per_second``. Counts fall back to the cases when the summary lacks them.
    """
    rows = []
    for r in runs:
        s = r.summary
        images = s.get("images")
        if images is None and r.cases:
            images = sum(int(_num(c.get("images")) or 0) for c in r.cases) or None
        prompts = s.get("prompts")
        if prompts is None and r.cases and all("prompts" in c for c in r.cases):
            prompts = sum(int(_num(c.get("prompts")) or 0) for c in r.cases)
        per_slice = s.get("prompts_per_slice_workflow")
        if per_slice is None and r.cases and all("slices_with_object" in c for c in r.cases):
            per_slice = sum(int(_num(c.get("slices_with_object")) or 0) for c in r.cases)
        saved = _num(s.get("prompts_saved_pct"))
        if saved is None and _num(prompts) is not None and _num(per_slice):
            saved = 100.0 * (1.0 - float(prompts) / float(per_slice))
        dice_mean = _num(s.get("dice_mean"))
        if dice_mean is None:
            vals = list(r.dice_by_case().values())
            dice_mean = float(np.mean(vals)) if vals else None
        seconds = _num(s.get("seconds"))
        ms = 1000.0 * seconds / float(images) if seconds is not None and _num(images) else None
        ips = _num(s.get("images_per_second"))
        if ips is None and seconds and _num(images):
            ips = float(images) / seconds
        rows.append({
            "run": r.label,
            "model": s.get("model"),
            "scope": s.get("scope"),
            "strategy": s.get("strategy"),
            "protocol": s.get("protocol"),
            "cases": s.get("cases", len(r.cases)),
            "images": images,
            "prompts": prompts,
            "prompts_per_slice": per_slice,
            "prompts_saved_pct": saved,
            "dice_mean": dice_mean,
            "dice_pooled": _num(s.get("dice_pooled")),
            "jaccard_mean": _num(s.get("jaccard_mean")),
            "jaccard_pooled": _num(s.get("jaccard_pooled")),
            "hd95_mm": _num(s.get("hd95_mean_mm", s.get("hd95_mean"))),
            "seconds": seconds,
            "ms_per_slice": ms,
            "images_per_second": ips,
        })
    return rows


_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, format
    ("run", "Run", "s"),
    ("model", "Model", "s"),
    ("scope", "Scope", "s"),
    ("strategy", "Strategy", "s"),
    ("protocol", "Protocol", "s"),
    ("cases", "Cases", "d"),
    ("images", "Images", "d"),
    ("prompts", "Prompts", "d"),
    ("dice_mean", "Dice mean", ".4f"),
    ("dice_pooled", "Dice pooled", ".4f"),
    ("jaccard_mean", "Jaccard mean", ".4f"),
    ("hd95_mm", "HD95 mm", ".2f"),
    ("ms_per_slice", "ms / slice", ".1f"),
    ("images_per_second", "images / s", ".2f"),
)


def _fmt(v: Any, spec: str) -> str:
    if v is None or v == "":
        return "-"
    if spec == "s":
        return str(v)
    f = _num(v)
    if f is None:
        return "-"
    if spec == "d":
        return str(int(round(f)))
    return format(f, spec)


# ------------------------------------------------------------------------------- paired tests
@dataclass
class PairedTest:
    """A paired Wilcoxon signed-rank test of per-case Dice between two runs.

    Attributes:
        a, b: run labels.
        n: cases shared by name with a finite Dice in both runs.
        statistic: the Wilcoxon statistic (None when not computed).
        p_value: two-sided p (None when not computed).
        median_diff: median of ``Dice_b - Dice_a`` over the shared cases (None when n = 0).
        note: why no test was computed, or ``""``.
    """

    a: str
    b: str
    n: int
    statistic: float | None
    p_value: float | None
    median_diff: float | None
    note: str = ""

    def line(self) -> str:
        """One human sentence, e.g. ``Wilcoxon A vs B: n=12, statistic=3.0, p=0.0049 (median ...)``."""
        head = f"Wilcoxon signed-rank, {self.a} vs {self.b}: n={self.n}"
        if self.note:
            return f"{head}: {self.note}."
        md = "" if self.median_diff is None else f", median Dice difference ({self.b} - {self.a}) {self.median_diff:+.4f}"
        return f"{head}, statistic={self.statistic:.4g}, p={self.p_value:.4g}{md}."

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n, "statistic": self.statistic, "p_value": self.p_value,
                "median_diff": self.median_diff, "note": self.note}


def paired_tests(runs: Sequence[Run], min_cases: int = MIN_PAIRED_CASES) -> list[PairedTest]:
    """Paired Wilcoxon signed-rank tests (two-sided) between every two runs, over the cases they share.

    Cases are matched by ``name``; a case counts only when both runs have a finite Dice for it.
    Below ``min_cases`` shared cases, or when every difference is zero, no test is computed and
    :attr:`PairedTest.note` says why.
    """
    from scipy.stats import wilcoxon

    out = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            da, db = runs[i].dice_by_case(), runs[j].dice_by_case()
            names = [n for n in da if n in db]
            a = np.array([da[n] for n in names], dtype=np.float64)
            b = np.array([db[n] for n in names], dtype=np.float64)
            n = len(names)
            med = float(np.median(b - a)) if n else None
            la, lb = runs[i].label, runs[j].label
            if n < min_cases:
                out.append(PairedTest(la, lb, n, None, None, med,
                                      f"not enough paired cases (need at least {min_cases})"))
            elif np.all(a == b):
                out.append(PairedTest(la, lb, n, None, None, med, "identical Dice on every shared case"))
            else:
                try:
                    res = wilcoxon(b, a)
                except ValueError as exc:  # e.g. too few non-zero differences for the method
                    out.append(PairedTest(la, lb, n, None, None, med, f"test not computable ({exc})"))
                    continue
                out.append(PairedTest(la, lb, n, float(res.statistic), float(res.pvalue), med))
    return out


# ------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _plot_dice_box(runs: Sequence[Run]) -> bytes | None:
    data = [(r.label, list(r.dice_by_case().values())) for r in runs]
    data = [(lab, v) for lab, v in data if v]
    if not data:
        return None
    fig = _figure(max(5.0, 1.3 * len(data) + 3.0), 4.2)
    ax = fig.add_subplot()
    ax.boxplot([v for _, v in data], showfliers=False, widths=0.5)
    rng = np.random.default_rng(0)
    for k, (_, v) in enumerate(data, start=1):
        ax.scatter(k + rng.uniform(-0.12, 0.12, len(v)), v, s=10, alpha=0.6, color="#1f5fa8", zorder=3)
    for lit, style in zip(LITERATURE, (":", "--")):
        ax.axhline(lit["dice"], color="#888", linestyle=style, linewidth=1,
                   label=f"literature {lit['data'].split(' (')[0].split(',')[0]}: {lit['dice']:.4f}")
    ax.set_xticks(range(1, len(data) + 1), [_short(lab) for lab, _ in data], rotation=20, ha="right")
    ax.set_ylabel("Dice per case")
    lo = min(min(v) for _, v in data)
    ax.set_ylim(max(0.0, min(lo, 0.9) - 0.05), 1.005)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Per-case Dice")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _slice_curves(run: Run) -> list[tuple[str, np.ndarray]]:
    out = []
    for c in run.cases:
        sd = c.get("slice_dice")
        if isinstance(sd, list) and len(sd) > 1:
            vals = np.array([_num(v) if _num(v) is not None else np.nan for v in sd], dtype=np.float64)
            out.append((str(c["name"]), vals))
    return out


def _plot_slice_dice(runs: Sequence[Run]) -> tuple[bytes | None, list[str]]:
    """Per-slice Dice along each volume, one panel per run that has it; also the notes on what was cut."""
    panels = [(r, _slice_curves(r)) for r in runs]
    panels = [(r, c) for r, c in panels if c]
    notes = []
    if not panels:
        return None, notes
    fig = _figure(9.0, 2.6 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (run, curves) in zip(axes, panels):
        shown = curves[:_MAX_SLICE_CURVES]
        if len(curves) > len(shown):
            notes.append(f"{run.label}: {len(shown)} of {len(curves)} volumes drawn")
        for name, vals in shown:
            ax.plot(np.arange(len(vals)), vals, linewidth=1.2, marker="." if len(vals) < 40 else None,
                    label=_short(name, 28))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("slice index")
        ax.set_ylabel("Dice")
        ax.set_title(f"{run.label}: per-slice Dice (slices without object in reference and prediction count 1)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        if len(shown) <= 8:
            ax.legend(fontsize=7, loc="best")
    return _png(fig), notes


def _plot_prompts(rows: Sequence[dict[str, Any]]) -> bytes | None:
    rows = [r for r in rows if _num(r["prompts"]) is not None and _num(r["prompts_per_slice"])]
    if not rows:
        return None
    fig = _figure(max(5.0, 1.4 * len(rows) + 3.0), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    used = [float(r["prompts"]) for r in rows]
    every = [float(r["prompts_per_slice"]) for r in rows]
    ax.bar(x - 0.2, every, 0.4, label="prompting every slice", color="#bbb")
    ax.bar(x + 0.2, used, 0.4, label="prompts used", color="#1f5fa8")
    for k, r in enumerate(rows):
        if r["prompts_saved_pct"] is not None:
            ax.annotate(f"{r['prompts_saved_pct']:.1f}% saved", (k, max(every[k], used[k])), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [_short(r["run"]) for r in rows], rotation=20, ha="right")
    ax.set_ylabel("prompts")
    ax.set_ylim(0, max(every + used) * 1.18)
    ax.legend(fontsize=8)
    ax.set_title("Prompts used vs per-slice prompting")
    return _png(fig)


def _plot_time(rows: Sequence[dict[str, Any]]) -> bytes | None:
    rows = [r for r in rows if r["ms_per_slice"] is not None]
    if not rows:
        return None
    fig = _figure(max(5.0, 1.2 * len(rows) + 3.0), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ms = [r["ms_per_slice"] for r in rows]
    ax.bar(x, ms, 0.55, color="#d2691e")
    for k, v in enumerate(ms):
        ax.annotate(f"{v:.0f} ms", (k, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x, [_short(r["run"]) for r in rows], rotation=20, ha="right")
    ax.set_ylabel("wall time per slice (ms)")
    ax.set_ylim(0, max(ms) * 1.2)
    ax.set_title("Time per slice (whole evaluation / images)")
    return _png(fig)


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


# -------------------------------------------------------------------------------- thumbnails
@dataclass
class _Thumb:
    name: str
    dice: float
    rgb: np.ndarray  # uint8 (rows, cols, 3)
    slice_index: int


class _CaseFinder:
    """Finds a run's image, reference and predicted mask for a case name (lazily, once per run)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._dataset: Any = None
        self._dataset_failed = False

    def image(self, case: dict[str, Any]):
        from .io.readers import load

        path = case.get("image_path")
        if path and Path(path).exists():
            return load(path, name=str(case["name"]))
        ds = self._load_dataset()
        if ds is not None:
            names = ds.names
            if case["name"] in names:
                return ds[names.index(case["name"])]
        return None

    def _load_dataset(self):
        if self._dataset is not None or self._dataset_failed:
            return self._dataset
        images = self.run.info.get("images")
        if not images:
            self._dataset_failed = True
            return None
        from .io.readers import load_dataset

        cfg = self.run.info.get("config") or {}
        images_as = cfg.get("images_as") if cfg.get("images_as") in ("auto", "stack", "set") else "auto"
        try:
            self._dataset = load_dataset([str(p) for p in images], images_as=images_as,
                                         time_index=cfg.get("time_index"))
        except (PromptOnceError, OSError) as exc:
            log.warning("%s: the inputs in run.json cannot be read (%s); no thumbnails", self.run.label, exc)
            self._dataset_failed = True
        return self._dataset

    def reference(self, case: dict[str, Any], vol) -> np.ndarray | None:
        from .io.readers import load_reference

        path = case.get("reference_path") or (self.run.info.get("reference_paths") or {}).get(case["name"])
        paths = [path] if isinstance(path, str) else list(path or [])  # a list: a reference in parts
        if not paths or not all(isinstance(p, str) and Path(p).exists() for p in paths):
            return None
        arr = load_reference(paths[0] if len(paths) == 1 else tuple(paths), vol).array
        labels = (self.run.info.get("config") or {}).get("labels")
        if isinstance(labels, str) and labels.strip():
            try:
                wanted = [int(v) for v in labels.split(",")]
            except ValueError:
                wanted = None
            if wanted:
                return np.isin(arr, wanted)
        return arr != 0

    def prediction(self, case: dict[str, Any], vol) -> np.ndarray | None:
        from .io.readers import load_reference
        from .io.writers import safe_name

        masks = self.run.path / "masks"
        if not masks.is_dir():
            return None
        name = str(case["name"])
        cands = [masks / f"{safe_name(name)}.nii.gz", masks / f"{name}.nii.gz"]
        if vol.n_slices == 1:
            stem = Path(vol.slice_name(0)).stem
            cands += [masks / f"{safe_name(stem)}.png", masks / f"{safe_name(name)}.png"]
        for p in cands:
            if p.is_file():
                return load_reference(p, vol).array
        return None


def _thumb_rgb(image2d: np.ndarray, window: tuple[float, float], pred: np.ndarray | None,
               ref: np.ndarray | None) -> np.ndarray:
    """Grey image (longest side <= _THUMB_SIDE) with the prediction filled red and the reference outlined green."""
    from .preprocess import overlay, to_gray

    step = max(1, int(math.ceil(max(image2d.shape) / _THUMB_SIDE)))
    gray = to_gray(np.asarray(image2d)[::step, ::step], window)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if pred is not None:
        rgb = overlay(rgb, (np.asarray(pred)[::step, ::step] != 0).astype(np.uint8), alpha=0.35,
                      colors={1: _PRED_COLOR})
    if ref is not None:  # alpha 0: the outline only
        rgb = overlay(rgb, (np.asarray(ref)[::step, ::step] != 0).astype(np.uint8), alpha=0.0,
                      colors={1: _REF_COLOR})
    return rgb


def _pick_cases(run: Run, k: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    scored = [c for c in run.cases if _num(c.get("dice")) is not None]
    scored.sort(key=lambda c: (_num(c["dice"]), str(c["name"])))
    worst = scored[:k]
    best = list(reversed(scored[k:]))[:k]
    return best, worst


def _case_thumbs(run: Run, cases: Iterable[dict[str, Any]], finder: _CaseFinder) -> list[_Thumb]:
    from .preprocess import resolve_window

    out = []
    for case in cases:
        try:
            vol = finder.image(case)
            if vol is None:
                continue
            ref = finder.reference(case, vol)
            pred = finder.prediction(case, vol)
            fg = ref if ref is not None else pred
            if fg is not None and fg.any():
                k = int(np.argmax(fg.reshape(fg.shape[0], -1).sum(axis=1)))
            else:
                k = vol.n_slices // 2
            window = resolve_window(None, vol)
            rgb = _thumb_rgb(vol.array[k], window, None if pred is None else pred[k], None if ref is None else ref[k])
        except (PromptOnceError, OSError, ValueError) as exc:
            log.warning("%s: no thumbnail for %s (%s)", run.label, case.get("name"), exc)
            continue
        out.append(_Thumb(str(case["name"]), float(_num(case["dice"]) or 0.0), rgb, k))
    return out


def _plot_thumbs(run: Run) -> tuple[bytes | None, dict[str, list[str]]]:
    """The best and worst cases' overlays, and ``{"best": names, "worst": names}`` of those drawn."""
    best, worst = _pick_cases(run)
    finder = _CaseFinder(run)
    rows = [("best", _case_thumbs(run, best, finder)), ("worst", _case_thumbs(run, worst, finder))]
    drawn = {t: [th.name for th in thumbs] for t, thumbs in rows}
    rows = [(t, th) for t, th in rows if th]
    if not rows:
        return None, drawn
    ncol = max(len(th) for _, th in rows)
    fig = _figure(2.4 * ncol + 0.4, 2.7 * len(rows) + 0.3)
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for r, (title, thumbs) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(thumbs):
                continue
            t = thumbs[c]
            ax.imshow(t.rgb, interpolation="nearest")
            where = f", slice {t.slice_index + 1}" if _n_slices(run, t.name) > 1 else ""
            ax.set_title(f"{title}: {_short(t.name, 24)}\nDice {t.dice:.3f}{where}", fontsize=8)
    fig.suptitle(f"{run.label}: red fill = prediction, green outline = reference", fontsize=9)
    return _png(fig), drawn


def _n_slices(run: Run, name: str) -> int:
    for c in run.cases:
        if str(c.get("name")) == name:
            return int(_num(c.get("images")) or 1)
    return 1


# ------------------------------------------------------------------------------------ writing
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f2f4f7}td.s,th.s{text-align:left}
tr.lit td{background:#fbf7ea;font-style:italic}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.note{color:#666;font-size:.85rem}
code{background:#f4f4f4;padding:0 .2rem}
details{margin:.4rem 0}
"""


@dataclass
class _Section:
    title: str
    html: str
    md: str


def _img_html(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_cols: set[int],
           row_class: Sequence[str] | None = None) -> tuple[str, str]:
    """Returns ``(html, markdown)`` of a table whose cells are already formatted strings."""
    h = ["<table><thead><tr>"]
    h += [f'<th class="{"s" if i in text_cols else ""}">{html.escape(t)}</th>' for i, t in enumerate(headers)]
    h.append("</tr></thead><tbody>")
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        h.append(f"<tr{cls}>" + "".join(
            f'<td class="{"s" if i in text_cols else ""}">{html.escape(v)}</td>' for i, v in enumerate(row)
        ) + "</tr>")
    h.append("</tbody></table>")
    md = ["| " + " | ".join(_md_escape(t) for t in headers) + " |",
          "|" + "|".join("---" if i in text_cols else "---:" for i in range(len(headers))) + "|"]
    md += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "".join(h), "\n".join(md)


def write_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Writes ``out/report.html`` (self-contained), ``out/report.md`` (+ PNG files) and ``out/report.json``.

    Args:
        run_dirs: evaluate run folders (each with ``metrics.json``), in the order to show them.
        out: output folder (created).

    Returns:
        The path of ``report.html``.

    Raises:
        InputError: no run folder given, or one without ``metrics.json`` (the message names it).
        CorruptFileError: a ``metrics.json`` that is not valid JSON.
    """
    if not run_dirs:
        raise InputError("No run folder given; pass one or more folders written by `promptonce evaluate --out`.")
    paths = [Path(p) for p in run_dirs]
    labels = _unique_labels(paths)
    runs = [load_run(p, lab) for p, lab in zip(paths, labels)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .io.writers import atomic_path, write_json

    images: dict[str, bytes] = {}  # file name -> PNG, for the Markdown twin
    sections: list[_Section] = []

    # summary + literature
    rows = summary_rows(runs)
    t_html, t_md = _table(
        [h for _, h, _ in _COLUMNS], [[_fmt(r[k], f) for k, _, f in _COLUMNS] for r in rows],
        {i for i, (_, _, f) in enumerate(_COLUMNS) if f == "s"},
    )
    lit_html, lit_md = _table(
        ["Source", "Data", "Dice", "Jaccard"],
        [[d["source"], d["data"], f"{d['dice']:.4f}", f"{d['jaccard']:.4f}"] for d in LITERATURE],
        {0, 1}, ["lit"] * len(LITERATURE),
    )
    lit_note = ("Literature figures come from the seed papers, on the full public versions of these sets; "
                "the runs above may use other data versions, subsets and models, so the numbers are a "
                "landmark, not a like-for-like comparison.")
    defs = ("Dice mean: mean over cases; Dice pooled: from the TP/FP/FN summed over all cases; HD95: mean "
            "over cases with both masks non-empty, in mm; ms / slice: whole evaluation wall time divided by "
            "the images (slices) segmented.")
    sections.append(_Section(
        "Summary",
        f"{t_html}<p class='note'>{html.escape(defs)}</p><h3>Reference figures (literature)</h3>{lit_html}"
        f"<p class='note'>{html.escape(lit_note)}</p>",
        f"{t_md}\n\n{defs}\n\n### Reference figures (literature)\n\n{lit_md}\n\n*{lit_note}*",
    ))

    def add_plot(title: str, fname: str, png: bytes | None, missing: str, note: str = "") -> None:
        if png is None:
            sections.append(_Section(title, f"<p class='note'>{html.escape(missing)}</p>", f"*{missing}*"))
            return
        images[fname] = png
        extra_h = f"<p class='note'>{html.escape(note)}</p>" if note else ""
        extra_m = f"\n\n{note}" if note else ""
        sections.append(_Section(title, _img_html(png, title) + extra_h, f"![{title}]({fname}){extra_m}"))

    add_plot("Per-case Dice", "dice_boxplot.png", _plot_dice_box(runs), "No run has a per-case Dice.",
             "Each dot is one case; the box spans the quartiles; grey lines: literature Dice (other data).")
    slice_png, slice_notes = _plot_slice_dice(runs)
    add_plot("Per-slice Dice along each volume", "slice_dice.png", slice_png,
             "Per-slice Dice not available: the cases are single images, or the runs did not record slice_dice.",
             "; ".join(slice_notes))
    add_plot("Prompts used vs per-slice prompting", "prompts.png", _plot_prompts(rows),
             "Prompt counts not recorded.",
             "Per-slice prompting = one prompt on every image/slice whose reference holds the object.")
    p_rows = [[r["run"], _fmt(r["prompts"], "d"), _fmt(r["prompts_per_slice"], "d"), _fmt(r["prompts_saved_pct"], ".1f")]
              for r in rows]
    ph, pm = _table(["Run", "Prompts used", "Per-slice prompts", "Saved %"], p_rows, {0})
    sections[-1].html += ph
    sections[-1].md += "\n\n" + pm
    add_plot("Time per slice", "time_per_slice.png", _plot_time(rows), "Timing not recorded.")

    # paired tests: pairs sharing no case (different data) are counted, not listed
    tests = paired_tests(runs)
    shown = [t for t in tests if t.n > 0]
    unrelated = len(tests) - len(shown)
    method = (f"Two-sided, per-case Dice over the cases both runs share by name (scipy.stats.wilcoxon); "
              f"computed when at least {MIN_PAIRED_CASES} cases are shared.")
    if unrelated:
        method += f" {unrelated} pair(s) of runs share no case and are not listed."
    if shown:
        t_rows = [[t.a, t.b, str(t.n), _fmt(t.statistic, ".4g"), _fmt(t.p_value, ".4g"), _fmt(t.median_diff, "+.4f"),
                   t.note] for t in shown]
        th, tm = _table(["Run A", "Run B", "n", "statistic", "p", "median Dice B - A", "note"], t_rows, {0, 1, 6})
        lines = "".join(f"<li>{html.escape(t.line())}</li>" for t in shown)
        sections.append(_Section(
            "Paired test (Wilcoxon signed-rank)",
            f"{th}<ul class='tests'>{lines}</ul><p class='note'>{html.escape(method)}</p>",
            tm + "\n\n" + "\n".join(f"- {t.line()}" for t in shown) + f"\n\n{method}",
        ))
    else:
        msg = "One run only: nothing to pair." if len(runs) < 2 else "No two runs share a case: nothing to pair."
        sections.append(_Section("Paired test (Wilcoxon signed-rank)", f"<p class='note'>{msg}</p>", f"*{msg}*"))

    # thumbnails
    thumbs: dict[str, dict[str, list[str]]] = {}
    for k, run in enumerate(runs):
        png, thumbs[run.label] = _plot_thumbs(run)
        add_plot(f"Best and worst cases: {run.label}", f"cases_{k}_{_slug(run.label)}.png", png,
                 "No thumbnails: the images, references or predicted masks of this run could not be found "
                 "(the run folder needs metrics.json image_path or run.json inputs, and masks/).")

    # per-case details (HTML only)
    det = []
    for run in runs:
        crow = [[str(c.get("name")), _fmt(c.get("dice"), ".4f"), _fmt(c.get("jaccard"), ".4f"),
                 _fmt(c.get("hd95_mm", c.get("hd95")), ".2f"), _fmt(c.get("images"), "d"), _fmt(c.get("prompts"), "d"),
                 str(len(c.get("flags") or []))] for c in run.cases]
        ch, _ = _table(["Case", "Dice", "Jaccard", "HD95 mm", "Images", "Prompts", "Flags"], crow, {0})
        det.append(f"<details><summary>{html.escape(run.label)}: {len(run.cases)} cases "
                   f"(<code>{html.escape(str(run.path))}</code>)</summary>{ch}</details>")
    sections.append(_Section("Cases", "".join(det),
                             "Per-case figures: see each run's `metrics.csv`:\n\n" +
                             "\n".join(f"- {r.label}: `{r.path}`" for r in runs)))

    title = "PromptOnce evaluation report"
    body = "".join(f"<h2>{html.escape(s.title)}</h2>{s.html}" for s in sections)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
            f"<body><h1>{title}</h1><p class='note'>{len(runs)} run(s): "
            f"{html.escape(', '.join(r.label for r in runs))}</p>{body}</body></html>\n")
    md = f"# {title}\n\n" + "\n\n".join(f"## {s.title}\n\n{s.md}" for s in sections) + "\n"

    for fname, png in images.items():
        with atomic_path(out / fname) as tmp:
            tmp.write_bytes(png)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    write_json({"runs": rows, "paired_tests": [t.as_dict() for t in tests], "thumbnails": thumbs,
                "literature": list(LITERATURE)}, out / "report.json")
    html_path = out / "report.html"
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report: %s (%d runs, %d plots)", html_path, len(runs), len(images))
    return html_path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "run"
