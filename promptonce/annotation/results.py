"""Scoring and export of an annotation session: one scoring path (through
:class:`~promptonce.metrics.MetricAccumulator`) and the existing writers."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PromptOnceError
from ..types import Volume, unit_name

if TYPE_CHECKING:
    from .session import AnnotationSession

__all__ = ["score", "export", "slice_rows"]


def score(session: AnnotationSession) -> dict[str, Any]:
    """Figures of the current result, scored through :class:`~promptonce.metrics.MetricAccumulator`.

    Dice and Jaccard compare the union of all objects with the union of the reference labels
    chosen (:meth:`AnnotationSession.set_reference_labels`), in 3D per case, over the slices segmented (a
    run on one image of a volume, or a stopped run, is not scored against the slices it did not reach);
    the per-slice Dice lists slices with foreground in either.

    Returns:
        ``{"cases": [{"case", "slices", "dice", "jaccard", "flags"}...], "per_slice": [{"case",
        "slice" (1-based), "dice"}...], "dice_mean", "jaccard_mean", "prompts" (what the person did:
        clicks and boxes, see :meth:`AnnotationSession.prompt_count`),
        "per_slice_prompts" (slices a per-slice workflow would prompt), "saved_percent", "seconds",
        "slices", "has_reference", "model", "scope", "strategy", "cancelled", "reference_labels", "unit"
        (``images`` for an image set, else ``slices``), "partly_segmented" (how many scored cases were
        segmented on only some of their slices)}``.
    """
    from ..metrics import MetricAccumulator

    info = session.run_info
    acc = MetricAccumulator(keep_slices=True)
    cases: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] = []
    needed = partial = 0
    for v in sorted(session.done):
        covered = session.done[v]
        if not covered.any():
            continue
        pred = np.asarray(session.results[v]) > 0
        name = session.cases[v].name
        ref = session.reference_mask(v)
        row: dict[str, Any] = {
            "case": name,
            "slices": int(covered.sum()),
            "dice": None,
            "jaccard": None,
            "flags": sum(1 for (vv, _k), f in session.flags.items() if vv == v and f),
        }
        done = np.flatnonzero(covered)
        if ref is not None:  # a case segmented in part is scored on its segmented slices
            partial += int(done.size < covered.size)
            scored = acc.add(str(v), pred[done], ref[done])
            row["dice"], row["jaccard"] = float(scored["dice"]), float(scored["jaccard"])
            ps = acc.slice_dice[str(v)]
            present = ref.any(axis=(1, 2)) | pred.any(axis=(1, 2))
            for j, k in enumerate(done):
                if present[k]:
                    per_slice.append({"case": name, "slice": int(k) + 1, "dice": float(ps[j])})
            needed += int(sum(1 for k in done if ref[k].any()))
        else:
            needed += int(sum(1 for k in done if pred[k].any()))
        cases.append(row)
    overall = acc.summary()
    prompts = session.prompt_count()
    return {
        "cases": cases,
        "per_slice": per_slice,
        "dice_mean": overall["dice_mean"],
        "jaccard_mean": overall["jaccard_mean"],
        "prompts": prompts,
        "per_slice_prompts": needed,
        "saved_percent": 100.0 * (1.0 - prompts / needed) if needed > 0 else None,
        "seconds": (info.seconds if info else 0.0) + session.correction_seconds,
        "slices": int(sum(d.sum() for d in session.done.values())),
        "has_reference": len(acc) > 0,
        "model": info.model if info else "",
        "scope": info.scope if info else "",
        "strategy": info.strategy if info else "",
        "cancelled": bool(info.cancelled) if info else False,
        "reference_labels": list(session.ref_labels) if session.ref_labels else "all",
        "unit": unit_name([c.n_slices for c in session.cases]),
        "partly_segmented": partial,
    }

def export(
    session: AnnotationSession, folder: str | Path, summary: dict[str, Any] | None = None, window: Any = None
) -> list[Path]:
    """Writes the result files into ``folder`` (created) and returns their paths.

    Files: the masks as NIfTI on the input's own grid and affine (one file, or a zip of one per
    case), PNG masks in a zip for 2D images, DICOM-SEG for DICOM input, ``metrics.json`` always
    and ``metrics.csv`` with references, and an overlay GIF of the first segmented volume (or of
    the images when they share a size).

    Args:
        folder: where to write (existing files of the same names are replaced).
        summary: :func:`score`'s figures (computed when not given).
        window: the window of the overlay GIF (default: the session's).
    """
    from ..io import writers

    summary = summary if summary is not None else session.score()
    window = session.window if window is None else window
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    segmented = [v for v in sorted(session.done) if session.done[v].any()]
    if not segmented:
        return files
    info = session.cases
    vols3d = [v for v in segmented if info[v].n_slices > 1 or info[v].source_format in ("nifti", "dicom")]
    imgs2d = [v for v in segmented if v not in vols3d]
    nifti_paths = []
    for v in vols3d:
        p = out / f"{writers.safe_name(info[v].name)}_mask.nii.gz"
        writers.write_mask_nifti(np.asarray(session.results[v]), session.volume(v), p)
        nifti_paths.append(p)
    if len(nifti_paths) == 1:
        files.append(nifti_paths[0])
    elif nifti_paths:
        files.append(_zip(out / "masks_nifti.zip", nifti_paths))
    names = {o.object_id: o.name for o in session.objects}
    if imgs2d:
        items = [(session.volume(v).slice_name(0), np.asarray(session.results[v][0])) for v in imgs2d]
        files.append(writers.write_png_masks_zip(items, out / "masks_png.zip", label_names=names))
    seg_paths = []
    for v in [v for v in segmented if info[v].source_format == "dicom" and info[v].n_slices > 1]:
        p = out / f"{writers.safe_name(info[v].name)}_seg.dcm"
        try:
            names = {o.object_id: o.name for o in session.objects}
            writers.write_dicom_seg(np.asarray(session.results[v]), session.volume(v), p, segment_names=names)
            seg_paths.append(p)
        except PromptOnceError as exc:
            session.notes.append(f"DICOM-SEG for {info[v].name} was not written: {exc}")
    if len(seg_paths) == 1:
        files.append(seg_paths[0])
    elif seg_paths:
        files.append(_zip(out / "masks_dicom_seg.zip", seg_paths))
    files.append(writers.write_json(_metrics_json(summary), out / "metrics.json"))
    if summary["has_reference"]:
        files.append(writers.write_metrics_csv(summary["cases"], out / "metrics.csv"))
    rows = slice_rows(session, segmented)
    if rows:
        files.append(writers.write_metrics_csv(rows, out / "slices.csv"))
    if vols3d:
        v = vols3d[0]
        p = out / f"{writers.safe_name(info[v].name)}_overlay.gif"
        writers.write_overlay_gif(session.volume(v), np.asarray(session.results[v]), p, window=window)
        files.append(p)
    elif imgs2d and len({info[v].shape for v in imgs2d}) == 1:
        stack = Volume(np.concatenate([session.volume(v).array for v in imgs2d]), name="images")
        labels = np.concatenate([np.asarray(session.results[v]) for v in imgs2d])
        p = out / "images_overlay.gif"
        writers.write_overlay_gif(stack, labels, p, window=window)
        files.append(p)
    return files


def slice_rows(session: AnnotationSession, cases: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per segmented slice and object (see :func:`promptonce.metrics.slice_rows`): case, slice,
    object, area in px and mm² (volumes; a 2D image's pixel size is unknown), Dice when the case has a
    reference, the confidence and the flags kept from the run."""
    from ..metrics import slice_rows as rows_of

    out: list[dict[str, Any]] = []
    names = {o.object_id: o.name for o in session.objects}
    for v in sorted(session.done) if cases is None else cases:
        covered = np.flatnonzero(session.done[v])
        if not len(covered):
            continue
        info = session.cases[v]
        labels = np.asarray(session.results[v])
        ref = session.reference(v)
        ref_map = None
        if ref is not None and session.ref_labels:
            ref_map = {oid: list(session.ref_labels) for oid in names}
        is_volume = info.n_slices > 1 or info.source_format in ("nifti", "dicom")
        spacing = (info.spacing[1], info.spacing[0]) if is_volume else None
        slice_names = None if is_volume else [session.volume(v).slice_name(0)]
        scores = {k: c for (vv, k), c in session.confidence.items() if vv == v}
        flags = {k: f for (vv, k), f in session.flags.items() if vv == v}
        rows = rows_of(
            labels, case=info.name, spacing=spacing, reference=ref, reference_labels=ref_map, scores=scores,
            flags=flags, object_names=names, slice_names=slice_names,
        )  # fmt: skip
        keep = set(int(k) for k in covered)
        for r in rows:
            if r["slice_index"] in keep:
                out.append({"case": r.pop("case"), "slice": r["slice_index"] + 1, **r})
    return out


def _metrics_json(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": {
            "model": summary["model"],
            "scope": summary["scope"],
            "strategy": summary["strategy"],
            "prompts": summary["prompts"],
            "images": summary["slices"],
            "per_slice_prompts": summary["per_slice_prompts"],
            "prompts_saved_percent": summary["saved_percent"],
            "dice_mean": summary["dice_mean"],
            "jaccard_mean": summary["jaccard_mean"],
            "seconds": round(summary["seconds"], 3),
            "cancelled": summary["cancelled"],
        },
        "cases": summary["cases"],
    }


def _zip(path: Path, members: Sequence[Path]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for m in members:
            zf.write(m, arcname=m.name)
    for m in members:
        m.unlink(missing_ok=True)
    return path
