"""Does the outline evidence of an X-ray mask move with the image's intensity curve, and what would not?

The confidence of a transferred X-ray case takes the evidence of its outline
(:func:`promptonce.engine.quality.outline_evidence`: the contrast across each side of the mask, relative to
the image's 5-95th percentile range). Detectors and hospitals curve intensities differently. This
benchmark runs dataset scope once (one LiteMedSAM engine, one seed), keeps every case's masks, and
measures each mask's evidence again on the same image under gamma curves, with the product's measure and
with alternatives (``MEASURES``: other curves of the image, or the contrast relative to the object's own
step, :func:`object_step_evidence`). For each measure and gamma it writes how far the evidence moved (median
ratio to no curve, rank correlation), how many cases fall under the measure's threshold (0.12 for the
product's; for the others the value with as many cases under it as the product's without a curve), and
how well the per-case evidence (lowest over its objects) ranks the cases below Dice 0.90 (AUC).

    .venv/bin/python benchmarks/evidence_curves.py --start 0 --count 100 --seed-images 0 \\
        --out benchmarks/results/evidence_curves_tune.json        # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, add_seed_args, load_range, seed_indices, write_result  # noqa: E402

GAMMAS = (0.6, 0.8, 1.25, 1.6)
#: The product's threshold on the evidence (``quality.EVIDENCE_FULL`` when this was written).
THRESHOLD = 0.12
#: The medians (of the 5-95% range) of the tuning X-rays (Shenzhen 0-99): 0.65-0.84, median 0.77.
TUNING_MEDIANS = (0.65, 0.84)
STANDARD_MEDIAN = 0.77


def _unit(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """``(gray in its 5-95% range, clipped to 0..1; its median)``."""
    g = np.asarray(gray, np.float32)
    lo, hi = np.percentile(g, [5, 95])
    x = np.clip((g - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return x, float(np.median(x))


def _powered(x: np.ndarray, med: float, target: float) -> np.ndarray:
    return x if not 0.0 < med < 1.0 else (x ** np.float32(np.log(target) / np.log(med))).astype(np.float32)


def curved_to_range(gray: np.ndarray) -> np.ndarray:
    """The image, or, where its median lies outside :data:`TUNING_MEDIANS`, curved to the nearer end."""
    x, med = _unit(gray)
    if TUNING_MEDIANS[0] <= med <= TUNING_MEDIANS[1]:
        return np.asarray(gray, np.float32)
    return _powered(x, med, min(max(med, TUNING_MEDIANS[0]), TUNING_MEDIANS[1]))


def standard(gray: np.ndarray) -> np.ndarray:
    """The 5-95% range, then the power that puts the median at :data:`STANDARD_MEDIAN`."""
    x, med = _unit(gray)
    return _powered(x, med, STANDARD_MEDIAN)


def ranks(gray: np.ndarray) -> np.ndarray:
    """Each pixel's rank in the image, 0..1 (invariant to any increasing curve)."""
    from scipy.stats import rankdata

    g = np.asarray(gray, np.float32)
    return (rankdata(g.ravel(), method="average") / g.size).reshape(g.shape).astype(np.float32)


def log_intensity(gray: np.ndarray) -> np.ndarray:
    """``log(gray / max + 1/255)``: a pure gamma scales it, which the 5-95% range divides out."""
    g = np.asarray(gray, np.float32)
    return np.log(g / max(float(g.max()), 1e-6) + np.float32(1 / 255)).astype(np.float32)


def object_step_evidence(gray: np.ndarray, mask: np.ndarray, ring: float = 1.0) -> float | None:
    """The outline evidence relative to the object's own step instead of the image's 5-95% range.

    Each side's contrast (:func:`promptonce.engine.quality.side_contrast`, back in intensity units) is
    divided by the difference between the median of the whole mask and the median of a ring around it
    (``ring`` band widths wide). Medians commute with any increasing curve, so on an outline that
    follows the object's edge both differences span the same two tissues and their ratio stays near 1
    whatever the curve; a side with the same tissue on both sides stays near 0.
    """
    from scipy import ndimage

    from promptonce.engine.quality import extent, side_band, side_contrast

    m = np.asarray(mask, bool)
    if not m.any():
        return None
    g = np.asarray(gray, np.float32)
    band = side_band(extent(m))
    lo, hi = np.percentile(g, [5, 95])
    span = max(float(hi - lo), 1e-6)
    around = ndimage.distance_transform_edt(~m) <= ring * band
    around &= ~m
    if np.count_nonzero(around) < 10:
        return None
    step = abs(float(np.median(g[around])) - float(np.median(g[m])))
    values = [c * span for c in side_contrast(g, m, band).values() if c is not None]
    if not values:
        return None
    return float(np.mean(values)) / max(step, 1e-6)


def _product(g: np.ndarray, m: np.ndarray) -> float | None:
    from promptonce.engine.quality import outline_evidence

    return outline_evidence(g, m)


#: name -> (the image the evidence is measured on, the evidence of one object's mask on it).
MEASURES = {
    "now": (lambda g: np.asarray(g, np.float32), _product),
    "curved_to_tuning_range": (curved_to_range, _product),
    "ranks": (ranks, _product),
    "log": (log_intensity, _product),
    "standard_curve": (standard, _product),
    "object_step": (lambda g: np.asarray(g, np.float32), object_step_evidence),
    "object_step_wide": (lambda g: np.asarray(g, np.float32), lambda g, m: object_step_evidence(g, m, ring=2.0)),
}


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """An 8-bit image under the curve ``255 * (x / 255) ** g``."""
    return np.round(255.0 * (np.asarray(image, np.float32) / 255.0) ** g).astype(np.float32)


def case_evidence(image: np.ndarray, labels: np.ndarray, measure) -> float:
    """The lowest evidence over a case's objects (NaN when none can be measured)."""
    transform, evidence = measure
    shown = transform(image)
    values = [evidence(shown, labels == o) for o in np.unique(labels) if o]
    values = [v for v in values if v is not None]
    return min(values) if values else float("nan")


def score(evidence: dict[float, np.ndarray], dice: np.ndarray, threshold: float) -> dict:
    """Per gamma: median ratio to no curve, Spearman rho, cases under ``threshold``, AUC for Dice < 0.90."""
    from scipy.stats import spearmanr

    from promptonce.flagscore import BAD_BELOW, confidence_auc

    def auc(e: np.ndarray) -> float | None:  # how well low evidence ranks the cases below Dice 0.90 first
        return confidence_auc(list(dice), list(e), fail_below=BAD_BELOW)

    base = evidence[1.0]
    out = {"threshold": round(float(threshold), 4), "under_without_curve": int((base < threshold).sum()),
           "auc_below_0.90": auc(base), "gammas": {}}
    for g, e in evidence.items():
        if g == 1.0:
            continue
        out["gammas"][str(g)] = {"median_ratio": round(float(np.nanmedian(e / base)), 3),
                                 "spearman": round(float(spearmanr(base, e, nan_policy="omit")[0]), 3),
                                 "under": int((e < threshold).sum()), "auc_below_0.90": auc(e)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evidence_curves.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    from promptonce.engine import make_engine, segment
    from promptonce.evaluate import reference_prompt
    from promptonce.metrics import dice
    from promptonce.types import Dataset

    paths, vols, refs = loaded
    (s,) = seed_indices(len(vols), args.seeds, args.seed_images)[:1]
    eng = make_engine(None, "litemedsam", None)
    eng.cache_size = len(vols) + 4
    prompt = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
    cases = [(r.volume_index, r.labels.copy()) for r in segment(Dataset(vols), prompt, scope="dataset", engine=eng)
             if r.volume_index != s]
    d = np.array([float(dice(lab > 0, refs[i])) for i, lab in cases])
    gammas = (1.0, *GAMMAS)
    evidence = {name: {g: np.array([case_evidence(gamma(vols[i].array[0], g), lab, measure) for i, lab in cases])
                       for g in gammas} for name, measure in MEASURES.items()}
    n_under = int((evidence["now"][1.0] < THRESHOLD).sum())
    measures = {}
    for name, ev in evidence.items():
        if name == "now":
            threshold = THRESHOLD
        else:  # as many cases under it without a curve as under the product's threshold
            threshold = float(np.sort(ev[1.0])[max(n_under - 1, 0)]) + 1e-9 if n_under else float(np.nanmin(ev[1.0]))
        measures[name] = score(ev, d, threshold)
        print(name, measures[name]["under_without_curve"], measures[name]["auc_below_0.90"],
              {g: v["under"] for g, v in measures[name]["gammas"].items()}, flush=True)
    write_result(args.out, argv, args.start, len(paths), seed=vols[s].name, cases=len(cases),
                 dice_mean=float(d.mean()), below_0_90=int((d < 0.90).sum()), measures=measures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
