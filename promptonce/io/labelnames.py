"""Names of the labels of a reference label map, from the file itself or from a file beside it.

:func:`read_label_names` looks, from the most explicit to the least:

1. a sidecar beside the file, named after it (``liver_seg.nii.gz`` -> ``liver_seg.json``, ``.csv``,
   ``.tsv``, ``.txt``, ``.ctbl``, or the full name plus that suffix, ``liver_seg.nii.gz.json``):

   * JSON: ``{"1": "liver", "2": "spleen"}``, the same under a ``"labels"`` key, the nnU-Net v2 form
     ``{"labels": {"background": 0, "liver": 1}}``, or a list of ``{"value"|"label"|"id": 1, "name": "liver"}``;
   * CSV / TSV / text: one label per line, ``value,name`` or ``name,value`` (a header is skipped), an ITK-SNAP
     label description file (``1  255 0 0  1 1 1  "liver"``) or a 3D Slicer colour table
     (``1 liver 255 0 0 255``); ``#`` starts a comment;

2. the file itself: DICOM-SEG segment labels (``SegmentSequence``: ``SegmentNumber`` ->
   ``SegmentLabel``); NIfTI: an XML label table in a header extension (``<Label Key="1">liver</Label>``,
   as CIFTI/GIFTI write it), or the header's ``intent_name`` for a single-label (0/1) mask;

3. a ``dataset.json`` in the same folder (Medical Segmentation Decathlon / nnU-Net ``"labels"``).

Value 0 (background) is never returned. Files that cannot be read or parsed give no names (logged
at debug level): names are a help for display, never a reason to refuse a reference.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import case_name

__all__ = [
    "SIDECAR_SUFFIXES",
    "format_label_selection",
    "is_label_sidecar",
    "parse_label_selection",
    "parse_label_table",
    "read_label_names",
]

log = logging.getLogger(__name__)

#: Suffixes of the files that can name a label map's labels (never read as images or masks).
SIDECAR_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".ctbl")
_MAX_SIDECAR_BYTES = 2 * 2**20
_XML_LABEL_RE = re.compile(r"<Label\b[^>]*\bKey\s*=\s*\"(\d+)\"[^>]*>\s*(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?\s*</Label>", re.S | re.I)
_QUOTED_RE = re.compile(r"^\s*(\d+)\b.*?\"([^\"]*)\"\s*$")


def is_label_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is a label-name file (by suffix), not an image or a mask."""
    return Path(path).suffix.lower() in SIDECAR_SUFFIXES


def _clean(names: dict[int, str]) -> dict[int, str]:
    return {k: v.strip() for k, v in sorted(names.items()) if k > 0 and v and v.strip()}


def _from_json(obj: Any) -> dict[int, str]:
    if isinstance(obj, dict) and "labels" in obj and isinstance(obj["labels"], (dict, list)):
        obj = obj["labels"]
    out: dict[int, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and str(k).strip().lstrip("-").isdigit():
                out[int(k)] = v  # {"1": "liver"}
            elif isinstance(v, int) and not isinstance(v, bool):
                out[int(v)] = str(k)  # nnU-Net v2: {"liver": 1}
            elif isinstance(v, dict) and str(k).strip().isdigit():
                name = v.get("name") or v.get("label")
                if isinstance(name, str):
                    out[int(k)] = name
    elif isinstance(obj, list):
        for item in obj:
            if not isinstance(item, dict):
                continue
            value = next((item[k] for k in ("value", "label", "id", "index", "key") if isinstance(item.get(k), int)), None)
            name = next((item[k] for k in ("name", "label_name", "structure", "description") if isinstance(item.get(k), str)), None)
            if value is not None and name:
                out[int(value)] = name
    return _clean(out)


def parse_label_table(text: str) -> dict[int, str]:
    """``{value: name}`` from a CSV/TSV/text label table (``value,name``, ITK-SNAP or 3D Slicer lines).

    Args:
        text: the file's text.

    Returns:
        The names found (value 0 and unnamed values left out); empty when no line fits.
    """
    out: dict[int, str] = {}
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return {}
    sample = "\n".join(lines[:20])
    delim = "\t" if "\t" in sample else ("," if "," in sample else (";" if ";" in sample else None))
    for ln in lines:
        m = _QUOTED_RE.match(ln)  # ITK-SNAP: IDX R G B A VIS MSH "LABEL"
        if m:
            out[int(m.group(1))] = m.group(2)
            continue
        cells = next(csv.reader(io.StringIO(ln), delimiter=delim)) if delim else ln.split()
        cells = [c.strip() for c in cells]
        if len(cells) >= 2 and not _is_number(cells[0]) and cells[1].isdigit():
            out[int(cells[1])] = cells[0]  # name,value
            continue
        if not cells or not cells[0].isdigit():
            continue  # a header or something else
        name = next((c for c in cells[1:] if c and not _is_number(c)), None)
        if name:
            out[int(cells[0])] = name
    return _clean(out)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_SIDECAR_BYTES:
            return None
        return path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return None


def _from_sidecar(path: Path) -> dict[int, str]:
    text = _read_text(path)
    if text is None:
        return {}
    if path.suffix.lower() == ".json":
        try:
            return _from_json(json.loads(text))
        except (ValueError, RecursionError):
            log.debug("label names: %s is not valid JSON", path.name)
            return {}
    return parse_label_table(text)


def _sidecars(path: Path) -> Iterable[Path]:
    stem = case_name(path)
    for base in (stem, path.name):
        for suffix in SIDECAR_SUFFIXES:
            yield path.with_name(base + suffix)


def _from_dicom_seg(path: Path) -> dict[int, str]:
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=False)
    except Exception:  # noqa: BLE001 - not a DICOM file, or unreadable: no names
        return {}
    if str(getattr(ds, "Modality", "")) != "SEG" or "SegmentSequence" not in ds:
        return {}
    out: dict[int, str] = {}
    for item in ds.SegmentSequence:
        try:
            out[int(item.SegmentNumber)] = str(getattr(item, "SegmentLabel", "") or getattr(item, "SegmentDescription", ""))
        except (AttributeError, TypeError, ValueError):
            continue
    return _clean(out)


def _from_nifti(path: Path, values: set[int] | None) -> dict[int, str]:
    try:
        import nibabel as nib

        img = nib.load(str(path))
        hdr = img.header
    except Exception:  # noqa: BLE001 - not NIfTI: no names
        return {}
    out: dict[int, str] = {}
    for ext in getattr(hdr, "extensions", []):
        raw = getattr(ext, "content", None)  # the stored bytes (nibabel >= 5.2), not nibabel's parse of them
        if not isinstance(raw, bytes):
            continue
        text = raw.decode("utf-8", "replace")
        for key, name in _XML_LABEL_RE.findall(text):
            out[int(key)] = re.sub(r"\s+", " ", name)
    if not out and values is not None and values <= {1}:
        try:
            intent = hdr.get_intent()[2]
        except Exception:  # noqa: BLE001 - no intent fields
            intent = ""
        if intent and intent.strip():
            out[1] = intent.strip()
    return _clean(out)


def read_label_names(path: str | Path, values: Iterable[int] | None = None) -> dict[int, str]:
    """The names of a label map's values, from a sidecar, the file itself or a ``dataset.json``.

    Args:
        path: the label map file (NIfTI, DICOM-SEG, PNG, ...).
        values: the label values the map holds (for the single-label NIfTI ``intent_name`` rule);
            when given, names of values not in the map are dropped.

    Returns:
        ``{value: name}`` for values > 0; empty when nothing names them.
    """
    p = Path(path)
    present = {int(v) for v in values} if values is not None else None
    names: dict[int, str] = {}
    for side in _sidecars(p):
        if side != p and (names := _from_sidecar(side)):
            log.debug("label names of %s from %s", p.name, side.name)
            break
    if not names and p.is_file():
        low = p.name.lower()
        if low.endswith((".nii", ".nii.gz")):
            names = _from_nifti(p, present)
        elif not low.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".npz")):
            names = _from_dicom_seg(p)
    if not names:
        names = _from_sidecar(p.with_name("dataset.json"))
    if present is not None:
        names = {k: v for k, v in names.items() if k in present}
    return names


def parse_label_selection(text: str | None, names: Mapping[int, str] | None = None) -> tuple[int, ...] | None:
    """The reference labels a user typed, by number or by name: ``"5"``, ``"liver, spleen"``, ``"1;liver"``.

    Args:
        text: values and/or names separated by commas or semicolons (numbers may also be separated
            by spaces); a name matches case-insensitively, whole or by a unique beginning.
        names: ``{value: name}`` of the reference map (:attr:`Volume.label_names`).

    Returns:
        The sorted label values, or None for an empty text (every non-zero label).

    Raises:
        InputError: a part is neither a number from 1 to 65535 nor a (unique) name; the message
            lists the names there are.
    """
    text = (text or "").strip()
    if not text:
        return None
    by_name = {v.strip().lower(): k for k, v in (names or {}).items() if v and v.strip()}
    values: set[int] = set()
    for part in (t.strip() for t in re.split(r"[,;]+", text)):
        if not part:
            continue
        if re.fullmatch(r"\d+(\s+\d+)*", part):
            values.update(int(t) for t in part.split())
            continue
        key = part.lower()
        hits = [by_name[key]] if key in by_name else [k for n, k in by_name.items() if n.startswith(key)]
        if len(hits) != 1:
            known = ", ".join(f"{k} {v}" for k, v in sorted((names or {}).items())) or "this reference has no names"
            what = "matches several names" if hits else "is not a label number or name"
            raise InputError(f"Reference labels: {part!r} {what}. Give numbers or names separated by commas ({known}).")
        values.add(hits[0])
    if not values or any(not 1 <= v <= 65535 for v in values):
        raise InputError(f"Reference labels {text!r}: give numbers from 1 up or names, e.g. 1,2 (empty = all).")
    return tuple(sorted(values))


def format_label_selection(values: Iterable[int] | None, names: Mapping[int, str] | None = None) -> str:
    """Label values as a user reads them: ``"5 liver, 52 aorta"`` (``"all"`` for None)."""
    if values is None:
        return "all"
    names = names or {}
    return ", ".join(f"{v} {names[v]}" if v in names else str(v) for v in sorted({int(v) for v in values}))

