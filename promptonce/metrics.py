"""Overlap and distance metrics on boolean masks: Dice, Jaccard, HD95; per slice, per case, per dataset.

Empty masks (explicit policy)
-----------------------------
Dice and Jaccard are 0/0 when BOTH the prediction and the reference are empty. The ``empty``
argument says what that is worth:

* ``"one"`` (default): 1.0. An empty prediction for an empty reference is exactly right (the model
  correctly found nothing), the convention of MONAI's ``ignore_empty=False`` and of the seed papers'
  per-slice scores.
* ``"zero"``: 0.0 (pessimistic).
* ``"nan"``: NaN, meaning "undefined, leave it out". NaN never enters a mean silently: every
  aggregate here goes through :func:`mean_finite`, which drops non-finite values and REPORTS how many
  it dropped.

When exactly one of the two is empty, Dice and Jaccard are 0 under every policy (the formula gives
that). HD95 is 0.0 when both are empty and ``inf`` when exactly one is (no surface to measure to);
``inf`` is excluded from means by :func:`mean_finite` and counted.

Datasets
--------
:class:`MetricAccumulator` takes cases one at a time and keeps only numbers. Its summary gives the
*mean over cases* of each case's own Dice (3D Dice for a volume; every case weighs the same) and the
*pooled* Dice from the TP/FP/FN summed over all cases (large cases weigh more), and the mean per-slice
Dice over all 2D slices/images that have foreground in the reference or the prediction.

Array conventions: masks are any-dimensional arrays of the same shape; non-zero / True is foreground.
Spacing is given in ARRAY AXIS ORDER (for a ``(slices, rows, cols)`` volume:
``(slice, row, col)`` millimetres, i.e. ``volume.spacing[::-1]``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from .errors import InputError, ReferenceMismatchError

__all__ = [
    "EmptyPolicy",
    "FiniteMean",
    "confusion",
    "dice",
    "jaccard",
    "dice_from_counts",
    "jaccard_from_counts",
    "dice_to_jaccard",
    "hd95",
    "per_slice",
    "per_slice_counts",
    "case_metrics",
    "mean_finite",
    "MetricAccumulator",
    "label_voxel_counts",
    "mask_volumes_ml",
    "slice_rows",
]

logger = logging.getLogger(__name__)

EmptyPolicy = Literal["one", "nan", "zero"]
_EMPTY_VALUE: dict[str, float] = {"one": 1.0, "nan": math.nan, "zero": 0.0}


def _empty_value(empty: str) -> float:
    try:
        return _EMPTY_VALUE[empty]
    except KeyError:
        raise InputError(f"Unknown empty policy {empty!r}; use 'one', 'nan' or 'zero'.") from None


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ReferenceMismatchError(
            f"Prediction shape {p.shape} differs from reference shape {r.shape}; "
            "compare masks of the same image (same slices, rows, cols)."
        )
    return (p if p.dtype == bool else p != 0), (r if r.dtype == bool else r != 0)


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """Counts ``(TP, FP, FN)`` voxels of two masks of the same shape (non-zero = foreground)."""
    p, r = _pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    n_p = int(np.count_nonzero(p))
    n_r = int(np.count_nonzero(r))
    return tp, n_p - tp, n_r - tp


def dice_from_counts(tp: float, fp: float, fn: float, *, empty: EmptyPolicy = "one") -> float:
    """Dice ``2TP / (2TP + FP + FN)``; ``empty`` when all three are 0 (see the module docstring)."""
    denom = 2 * tp + fp + fn
    if denom == 0:
        return _empty_value(empty)
    return float(2 * tp / denom)


def jaccard_from_counts(tp: float, fp: float, fn: float, *, empty: EmptyPolicy = "one") -> float:
    """Jaccard (IoU) ``TP / (TP + FP + FN)``; ``empty`` when all three are 0."""
    denom = tp + fp + fn
    if denom == 0:
        return _empty_value(empty)
    return float(tp / denom)


def dice(pred: np.ndarray, ref: np.ndarray, *, empty: EmptyPolicy = "one") -> float:
    """Dice coefficient of two masks of any (equal) shape, 0..1.

    Args:
        pred: predicted mask, bool or integer (non-zero = foreground).
        ref: reference mask, same shape.
        empty: value when both are empty (module docstring).

    Raises:
        ReferenceMismatchError: when the shapes differ.
    """
    return dice_from_counts(*confusion(pred, ref), empty=empty)


def jaccard(pred: np.ndarray, ref: np.ndarray, *, empty: EmptyPolicy = "one") -> float:
    """Jaccard index (IoU) of two masks of any (equal) shape, 0..1. Equals ``D / (2 - D)``."""
    return jaccard_from_counts(*confusion(pred, ref), empty=empty)


def dice_to_jaccard(d: float) -> float:
    """Converts a Dice value to the Jaccard value of the same masks: ``J = D / (2 - D)``."""
    return float(d / (2.0 - d))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face-neighbour in the background (the image border counts as background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance between the surfaces of two masks, in millimetres.

    The surface of a mask is its foreground voxels that touch the background across a face. For
    every surface voxel of one mask, the Euclidean distance (in mm, via ``spacing``) to the nearest
    surface voxel of the other is taken; the result is the larger of the two directed 95th
    percentiles (MONAI's ``percentile=95`` definition).

    Args:
        pred: predicted mask (non-zero = foreground), any number of dimensions.
        ref: reference mask, same shape.
        spacing: voxel size in mm per ARRAY AXIS (``len == ndim``), e.g. ``volume.spacing[::-1]``
            for a ``(slices, rows, cols)`` array; None means 1 mm on every axis (pixels).

    Returns:
        The distance in mm. 0.0 when both masks are empty, ``inf`` when exactly one is empty.

    Raises:
        ReferenceMismatchError: when the shapes differ. InputError: for a bad spacing.
    """
    p, r = _pair(pred, ref)
    if spacing is None:
        spacing = (1.0,) * p.ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != p.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(
            f"spacing {tuple(spacing)} must give one positive size in mm per array axis ({p.ndim} axes), "
            "in array axis order."
        )
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return math.inf
    # Work inside the joint bounding box (plus one voxel) for speed on large volumes.
    both = p | r
    lo = [int(np.min(ix)) for ix in np.nonzero(both)]
    hi = [int(np.max(ix)) for ix in np.nonzero(both)]
    crop = tuple(slice(max(a - 1, 0), b + 2) for a, b in zip(lo, hi))
    sp_p, sp_r = _surface(p[crop]), _surface(r[crop])
    dist_to_r = ndimage.distance_transform_edt(~sp_r, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~sp_p, sampling=sp)
    d_pr = dist_to_r[sp_p]
    d_rp = dist_to_p[sp_r]
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def per_slice_counts(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """TP, FP, FN per slice of ``(S, H, W)`` masks: int64 ``(S, 3)``."""
    p, r = _pair(pred, ref)
    if p.ndim != 3:
        raise InputError(f"per-slice metrics need (slices, rows, cols) masks, got shape {p.shape}.")
    tp = np.count_nonzero(p & r, axis=(1, 2))
    n_p = np.count_nonzero(p, axis=(1, 2))
    n_r = np.count_nonzero(r, axis=(1, 2))
    return np.stack([tp, n_p - tp, n_r - tp], axis=1).astype(np.int64)


def _dice_counts_vec(counts: np.ndarray, empty: EmptyPolicy) -> np.ndarray:
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = 2 * tp + fp + fn
    out = np.full(len(counts), _empty_value(empty), dtype=np.float64)
    nz = denom > 0
    out[nz] = 2 * tp[nz] / denom[nz]
    return out


def per_slice(pred: np.ndarray, ref: np.ndarray, *, empty: EmptyPolicy = "one") -> np.ndarray:
    """Dice of every slice of ``(S, H, W)`` masks: float64 ``(S,)``; both-empty slices get ``empty``."""
    return _dice_counts_vec(per_slice_counts(pred, ref), empty)


@dataclass(frozen=True)
class FiniteMean:
    """A mean over the finite values only, saying how many values were left out.

    Attributes:
        mean: the mean of the finite values, or None when there were none.
        n: how many values entered the mean.
        excluded: how many were NaN or infinite and left out.
    """

    mean: float | None
    n: int
    excluded: int


def mean_finite(values: Iterable[float] | np.ndarray) -> FiniteMean:
    """Mean of the finite values of ``values``; NaN/inf are left out and counted, never averaged."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    ok = np.isfinite(arr)
    n = int(ok.sum())
    return FiniteMean(float(arr[ok].mean()) if n else None, n, int(arr.size - n))


def _binary_metrics(
    p: np.ndarray, r: np.ndarray, spacing: Sequence[float] | None, empty: EmptyPolicy
) -> dict[str, Any]:
    tp, fp, fn = confusion(p, r)
    out: dict[str, Any] = {
        "dice": dice_from_counts(tp, fp, fn, empty=empty),
        "jaccard": jaccard_from_counts(tp, fp, fn, empty=empty),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "ref_voxels": tp + fn,
        "pred_voxels": tp + fp,
    }
    if spacing is not None:
        out["hd95"] = hd95(p, r, spacing)
    return out


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    *,
    empty: EmptyPolicy = "one",
) -> dict[str, Any]:
    """Metrics of one case (a 2D image or a 3D volume), merged and per label.

    Args:
        pred: predicted label map or mask, any dims (e.g. ``(slices, rows, cols)``).
        ref: reference label map, same shape.
        spacing: voxel size in mm per array axis; when given, ``hd95`` is added.
        labels: reference label values to score. None: one foreground, every non-zero voxel of each.
            Given: each label ``l`` is scored as ``pred == l`` vs ``ref == l`` (under ``"labels"``), and the
            merged score compares ``pred != 0`` with ``ref`` in ``labels`` (the prediction only holds the
            objects that were asked for, whatever their ids).
        empty: the empty policy (module docstring).

    Returns:
        ``{"dice", "jaccard", "tp", "fp", "fn", "ref_voxels", "pred_voxels"[, "hd95"]
        [, "labels": {l: {same keys}}]}``; counts are ints, metrics floats.
    """
    p_arr, r_arr = np.asarray(pred), np.asarray(ref)
    if p_arr.shape != r_arr.shape:
        _pair(p_arr, r_arr)  # raises with the message
    if labels is None:
        return _binary_metrics(p_arr != 0, r_arr != 0, spacing, empty)
    labels = [int(v) for v in labels]
    if not labels:
        raise InputError("labels is empty; give at least one reference label value, or None for all non-zero.")
    out = _binary_metrics(p_arr != 0, np.isin(r_arr, labels), spacing, empty)
    out["labels"] = {lab: _binary_metrics(p_arr == lab, r_arr == lab, spacing, empty) for lab in labels}
    return out


def _stats(values: Sequence[float]) -> dict[str, Any]:
    fm = mean_finite(values)
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return {
        "mean": fm.mean,
        "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "median": float(np.median(arr)) if arr.size else None,
        "min": float(arr.min()) if arr.size else None,
        "max": float(arr.max()) if arr.size else None,
        "n": fm.n,
        "excluded": fm.excluded,
    }


class MetricAccumulator:
    """Collects per-case metrics one case at a time, keeping only numbers.

    Args:
        labels: reference labels to score per label (see :func:`case_metrics`); None = merged only.
        empty: the empty policy for Dice/Jaccard.
        keep_slices: keep each case's per-slice Dice array (float32, one number per slice) for
            plots; the slice mean is accumulated either way.

    Example::

        acc = MetricAccumulator()
        for name, pred, ref, spacing in cases:
            acc.add(name, pred, ref, spacing, prompts=1)
        acc.summary()["dice_mean"], acc.rows()
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        *,
        empty: EmptyPolicy = "one",
        keep_slices: bool = True,
    ) -> None:
        _empty_value(empty)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.empty: EmptyPolicy = empty
        self.keep_slices = keep_slices
        self._rows: list[dict[str, Any]] = []
        self._pooled = np.zeros(3, dtype=np.int64)
        self._pooled_labels = {lab: np.zeros(3, dtype=np.int64) for lab in self.labels or []}
        self._slice_sum = 0.0
        self._slice_n = 0
        self._slice_both_empty = 0
        self._slice_excluded = 0
        self.slice_dice: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        name: str,
        pred: np.ndarray,
        ref: np.ndarray,
        spacing: Sequence[float] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Scores one case and keeps its numbers.

        Args:
            name: case name (unique names make :attr:`slice_dice` unambiguous).
            pred: predicted label map, ``(rows, cols)`` for an image or ``(slices, rows, cols)``.
            ref: reference label map, same shape.
            spacing: voxel size in mm per array axis; adds ``hd95``.
            **extra: other fields for this case's row (e.g. ``prompts=1, seconds=0.4, flags=[]``).

        Returns:
            The case's row (also kept for :meth:`rows`).
        """
        p_arr, r_arr = np.asarray(pred), np.asarray(ref)
        m = case_metrics(p_arr, r_arr, spacing, self.labels, empty=self.empty)
        p3 = p_arr[None] if p_arr.ndim == 2 else p_arr if p_arr.ndim == 3 else None
        row: dict[str, Any] = {"name": name}
        row.update({k: v for k, v in m.items() if k != "labels"})
        for lab, lm in (m.get("labels") or {}).items():
            row[f"dice_{lab}"] = lm["dice"]
            row[f"jaccard_{lab}"] = lm["jaccard"]
            if "hd95" in lm:
                row[f"hd95_{lab}"] = lm["hd95"]
            self._pooled_labels[lab] += (lm["tp"], lm["fp"], lm["fn"])
        self._pooled += (m["tp"], m["fp"], m["fn"])
        if p3 is not None:
            r3 = r_arr.reshape(p3.shape)
            r_fg = np.isin(r3, self.labels) if self.labels is not None else r3 != 0
            counts = per_slice_counts(p3 != 0, r_fg)
            sd = _dice_counts_vec(counts, self.empty)
            scored = counts.sum(axis=1) > 0  # slices with foreground in reference or prediction
            vals = sd[scored]
            finite = np.isfinite(vals)
            self._slice_sum += float(vals[finite].sum())
            self._slice_n += int(finite.sum())
            self._slice_excluded += int((~finite).sum())
            self._slice_both_empty += int((~scored).sum())
            row["slices"] = int(p3.shape[0])
            row["slices_scored"] = int(scored.sum())
            row["dice_slice_mean"] = float(vals[finite].mean()) if finite.any() else None
            if self.keep_slices:
                self.slice_dice[name] = sd.astype(np.float32)
        row.update(extra)
        self._rows.append(row)
        return row

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case, in the order added (copies)."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict[str, Any]:
        """Dataset-level numbers.

        Returns:
            ``cases``; ``dice_mean``, ``jaccard_mean`` (mean over cases, NaN/inf excluded and counted in
            ``cases_excluded``) with ``dice_std``, ``dice_median``, ``dice_min``, ``dice_max``;
            ``dice_pooled``, ``jaccard_pooled`` (from summed TP/FP/FN); ``dice_slice_mean`` (mean of
            the Dice of every slice/image with foreground in reference or prediction) with
            ``slices_scored``, ``slices_both_empty`` (left out: trivially right), ``slices_excluded``;
            ``tp``, ``fp``, ``fn``; ``hd95_mean``/``hd95_median`` and ``hd95_excluded`` (inf = one
            mask empty) when spacing was given; ``labels: {l: {dice_mean, jaccard_mean, dice_pooled,
            jaccard_pooled}}`` when labels were given. Empty means are None, never NaN.
        """
        dices = [r["dice"] for r in self._rows]
        d = _stats(dices)
        j = mean_finite(r["jaccard"] for r in self._rows)
        tp, fp, fn = (int(v) for v in self._pooled)
        out: dict[str, Any] = {
            "cases": len(self._rows),
            "dice_mean": d["mean"],
            "dice_std": d["std"],
            "dice_median": d["median"],
            "dice_min": d["min"],
            "dice_max": d["max"],
            "jaccard_mean": j.mean,
            "cases_excluded": d["excluded"],
            "dice_pooled": _none_if_nan(dice_from_counts(tp, fp, fn, empty=self.empty)) if self._rows else None,
            "jaccard_pooled": _none_if_nan(jaccard_from_counts(tp, fp, fn, empty=self.empty))
            if self._rows
            else None,
            "dice_slice_mean": self._slice_sum / self._slice_n if self._slice_n else None,
            "slices_scored": self._slice_n,
            "slices_both_empty": self._slice_both_empty,
            "slices_excluded": self._slice_excluded,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
        hds = [r["hd95"] for r in self._rows if "hd95" in r]
        if hds:
            h = _stats(hds)
            out.update(hd95_mean=h["mean"], hd95_median=h["median"], hd95_excluded=h["excluded"])
        if self.labels is not None:
            per: dict[int, dict[str, Any]] = {}
            for lab in self.labels:
                c = self._pooled_labels[lab]
                per[lab] = {
                    "dice_mean": mean_finite(r[f"dice_{lab}"] for r in self._rows).mean,
                    "jaccard_mean": mean_finite(r[f"jaccard_{lab}"] for r in self._rows).mean,
                    "dice_pooled": _none_if_nan(dice_from_counts(*c, empty=self.empty)) if self._rows else None,
                    "jaccard_pooled": _none_if_nan(jaccard_from_counts(*c, empty=self.empty))
                    if self._rows
                    else None,
                }
            out["labels"] = per
        return out


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v


# ------------------------------------------------------------------------------ sizes and per-slice rows
def label_voxel_counts(labels: np.ndarray) -> dict[int, int]:
    """``{label id: number of voxels}`` of every non-zero label of an integer label map (any dims)."""
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    ids, counts = np.unique(lab[lab != 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def mask_volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[int, float]:
    """The volume of every object of a label map in millilitres.

    Args:
        labels: ``(slices, rows, cols)`` integer label map (0 = background) or bool mask (object 1).
        spacing: voxel size in mm in array axis order, ``(slice, row, col)`` (``volume.spacing[::-1]``).

    Returns:
        ``{object id: mL}`` (1 mL = 1000 mm^3) for every id present; empty when nothing is labelled.

    Raises:
        InputError: ``spacing`` does not have one positive finite value per axis.
    """
    lab = np.asarray(labels)
    sp = [float(v) for v in spacing]
    if len(sp) != lab.ndim or not all(math.isfinite(v) and v > 0 for v in sp):
        raise InputError(
            f"spacing {tuple(spacing)} must give one positive voxel size in mm per axis of the {lab.ndim}D "
            "label map, in array order (slice, row, col)."
        )
    voxel_ml = float(np.prod(sp)) / 1000.0
    return {i: n * voxel_ml for i, n in label_voxel_counts(lab).items()}


def slice_rows(
    labels: np.ndarray,
    *,
    case: str,
    spacing: Sequence[float] | None = None,
    reference: np.ndarray | None = None,
    reference_labels: Mapping[int, Sequence[int]] | None = None,
    scores: Mapping[int, Mapping[int, float]] | None = None,
    flags: Mapping[int, Sequence[str]] | None = None,
    object_names: Mapping[int, str] | None = None,
    slice_names: Sequence[str] | None = None,
    objects: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per slice and object: area, Dice when a reference exists, confidence and flags.

    Args:
        labels: ``(slices, rows, cols)`` result label map (0 = background, else the object id).
        case: the case name written in every row.
        spacing: ``(row, col)`` pixel size in mm (array order; ``volume.spacing[1::-1]``), or the
            3-axis ``(slice, row, col)``; None: ``area_mm2`` is left empty (e.g. a PNG X-ray, whose
            pixel size is unknown).
        reference: optional reference label map, same shape.
        reference_labels: ``{object id: reference label values}`` each object is scored against
            (their union). Default: every non-zero reference value when there is one object,
            else the object's own id.
        scores: ``{slice_index: {object id: confidence 0..1}}`` (the engine's ``SliceResult.scores``).
        flags: ``{slice_index: [warnings]}`` (``SliceResult.flags``), joined by ``;`` in the CSV.
        object_names: ``{object id: name}``.
        slice_names: a name per slice (e.g. the X-ray file names).
        objects: the object ids to list; default: those in ``labels`` and in ``object_names``.

    Returns:
        Dicts with ``case, slice_index, slice_name, object, object_name, area_px, area_mm2`` and, with a
        reference, ``reference_area_px, dice`` (NaN where both are empty on that slice), then
        ``confidence`` (None when unknown) and ``flags``, in slice then object order.
    """
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3:
        raise InputError(f"slice_rows() needs a (slices, rows, cols) label map, got shape {lab.shape}.")
    ref = None
    if reference is not None:
        ref = np.asarray(reference)
        if ref.ndim == 2:
            ref = ref[None]
        if ref.shape != lab.shape:
            raise ReferenceMismatchError(f"reference shape {ref.shape} differs from the result's {lab.shape}.")
    pixel_mm2: float | None = None
    if spacing is not None:
        sp = [float(v) for v in spacing][-2:]
        if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
            raise InputError(f"spacing {tuple(spacing)} must end with positive (row, col) pixel sizes in mm.")
        pixel_mm2 = sp[0] * sp[1]
    ids = set(int(i) for i in (objects if objects is not None else []))
    if objects is None:
        ids.update(int(i) for i in np.unique(lab) if i != 0)
        ids.update(int(i) for i in (object_names or {}))
    ref_ids = sorted(int(v) for v in np.unique(ref) if v != 0) if ref is not None else []
    rows: list[dict[str, Any]] = []
    for k in range(lab.shape[0]):
        for oid in sorted(ids):
            area = int(np.count_nonzero(lab[k] == oid))
            row: dict[str, Any] = {
                "case": case,
                "slice_index": k,
                "slice_name": slice_names[k] if slice_names is not None and k < len(slice_names) else "",
                "object": oid,
                "object_name": (object_names or {}).get(oid, f"object {oid}"),
                "area_px": area,
                "area_mm2": area * pixel_mm2 if pixel_mm2 is not None else None,
            }
            if ref is not None:
                if reference_labels is not None and oid in reference_labels:
                    wanted = [int(v) for v in reference_labels[oid]]
                elif len(ids) == 1:
                    wanted = ref_ids
                else:
                    wanted = [oid]
                r = np.isin(ref[k], wanted)
                row["reference_area_px"] = int(np.count_nonzero(r))
                row["dice"] = dice(lab[k] == oid, r, empty="nan")
            score = (scores or {}).get(k, {}).get(oid)
            row["confidence"] = float(score) if score is not None else None
            row["flags"] = list((flags or {}).get(k, []))
            rows.append(row)
    return rows

