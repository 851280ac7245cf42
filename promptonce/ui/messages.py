"""Texts for the page: error messages without server paths, progress lines, the metrics panel."""

from __future__ import annotations

import json
import re
from typing import Any

from ..annotation import RunProgress
from ..errors import PromptOnceError
from .session import Session

__all__ = ["hide_paths", "user_message", "summary_markdown", "progress_text", "write_json_text"]

_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"<>|:]+)+[\\/]([^\\/\s'\"<>|:]+)")


def hide_paths(text: str) -> str:
    """``text`` with every server file path reduced to its last component (web addresses are kept)."""
    parts = re.split(r"(\s+)", text)
    return "".join(p if re.match(r"^[a-z][a-z0-9+.-]*://", p, re.I) else _PATH_RE.sub(lambda m: m.group(1), p) for p in parts)


def user_message(exc: BaseException, session: Session | None = None) -> str:
    """A message for the page: the error's text with every server path reduced to its file name."""
    text = hide_paths(str(exc) or exc.__class__.__name__)
    if session is not None:
        text = text.replace(str(session.directory), "")
    if not isinstance(exc, PromptOnceError):
        return "Something went wrong on the server (it was logged). Try again, or reload the page."
    return text


def summary_markdown(summary: dict[str, Any]) -> str:
    """The metrics panel's text: overall Dice/Jaccard, prompts used vs a per-slice workflow, time."""
    if not summary["cases"]:
        return "No result yet: click on the object, then **Run**."
    lines = []
    state = " (stopped: the slices finished are kept)" if summary["cancelled"] else ""
    unit = summary.get("unit") or "slices"
    if summary["slices"] == 1:
        unit = unit.rstrip("s")
    lines.append(
        f"**{summary['slices']} {unit} segmented** in {summary['seconds']:.1f} s "
        f"with `{summary['model']}`, scope *{summary['scope']}*{state}."
    )
    if summary["has_reference"] and summary["dice_mean"] is not None:
        labels = summary.get("reference_labels", "all")
        which = "all reference labels" if labels == "all" else "reference label(s) " + ", ".join(map(str, labels))
        lines.append(
            f"**Dice {summary['dice_mean']:.3f}** · Jaccard {summary['jaccard_mean']:.3f} "
            f"(mean over {sum(c['dice'] is not None for c in summary['cases'])} case(s); all objects vs {which}"
            + ("; on the slices segmented only)." if summary.get("partly_segmented") else ").")
        )
    else:
        lines.append("Upload reference masks to see Dice and Jaccard.")
    if summary["saved_percent"] is not None:
        item = "image" if (summary.get("unit") or "").startswith("image") else "slice"
        basis = "with the object in the reference" if summary["has_reference"] else "with the object found"
        saved = summary["saved_percent"]
        versus = f"**{saved:.2f}% fewer**" if saved >= 0 else f"{-saved:.0f}% more"
        lines.append(
            f"**Prompts: {summary['prompts']}** (clicks and boxes) vs {summary['per_slice_prompts']} for a "
            f"per-{item} workflow (one per {item} {basis}): {versus}."
        )
    return "\n\n".join(lines)


def write_json_text(obj: Any) -> str:
    """``obj`` as pretty JSON (for tests and the API)."""
    return json.dumps(obj, indent=2, default=float)


def progress_text(p: RunProgress, unit: str = "slices") -> str:
    """``"12 / 40 slices · 5 s left"``-style progress line (``unit``: ``slices`` or ``images`` for an X-ray set)."""
    unit = unit if unit in ("slices", "images") else "slices"
    if p.finished:
        verb = {"stopped": "Stopped", "corrected": "Corrections applied"}.get(p.message, "Done")
        return f"{verb}: {p.done} {unit[:-1] if p.done == 1 else unit} in {p.seconds:.1f} s."
    eta = p.eta_s
    left = f" · {eta:.0f} s left" if eta is not None else ""
    return f"{p.done} / {p.total} {unit}{left} · {p.message}"

