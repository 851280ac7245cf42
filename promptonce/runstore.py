"""The run folder of a dataset run: what was asked, what is done, what failed; so a run can resume.

Layout (inside the output folder)::

    out/
      masks/                 the mask files (written by :class:`~promptonce.io.writers.ResultWriter`)
      run/
        manifest.json        what the run is: inputs (path, size, mtime), prompt, model, options, version
        cases.jsonl          one line per event, appended and fsync'ed: a case written (its files with
                             size and CRC-32), a case failed (its reason); the last line of a case wins
        exemplars/<i>.npz    the exemplar of case ``i`` while it is in the exemplar set (at most the
                             set's size: an exemplar leaving the set is deleted)
        summary.json         written at the end: done / skipped with reasons / timing

Why an append-only log and not one JSON rewritten per case: a 100,000-case run would rewrite a
growing file 100,000 times; appending one short line is O(1) and a torn last line (a kill in the
middle of a write) is simply ignored on reading.

A case counts as done on a rerun only when its record says so AND every file it lists still exists
with the recorded size and CRC-32 (:meth:`RunStore.verified`). The manifest's ``prompt``, ``model``,
``options`` and case names must match the new run's, otherwise :class:`RunMismatchError` (results
of two different prompts or models are never mixed in one folder). Input files added or removed are
refused too; a file changed in place (size or mtime) makes the case read from it be done again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io.writers import atomic_path, write_json

__all__ = ["RunStore", "CaseRecord", "RunMismatchError", "input_fingerprints", "file_entry"]

log = logging.getLogger(__name__)

RUN_DIR = "run"
#: manifest keys that must be equal for a rerun to reuse results (inputs are checked separately).
IDENTITY_KEYS = ("kind", "prompt", "model", "options")


class RunMismatchError(InputError):
    """The output folder holds a run made with another prompt, model, options or inputs."""


@dataclass
class CaseRecord:
    """The state of one case in the run folder.

    Attributes:
        index: the case's position in the dataset.
        name: the case's name.
        status: ``"first"`` (first pass written; ``needs_second`` says whether the quality pass must
            redo it), ``"done"`` (final), ``"failed"`` (skipped; ``reason`` says why).
        files: the written mask files, ``{"path": relative to the output folder, "size", "crc32"}``.
        images: slices written.
        confidence: the case's confidence (0..1) from the engine, or None.
        flags: the engine's warnings for the case.
        needs_second: the quality pass must redo this case.
        attempts: how many times the case was tried in this run.
        reason: why it failed.
        pass_: 1 or 2 (the pass that wrote the files).
        input: the input file the case was read from (absolute), when it is one file.
        slices: ``[slice_index, confidence or None, flags]`` per slice (for ``quality.json``).
        areas: pixels (voxels) of each object in the written masks, object id (as text) -> count
            (for ``quality.json``'s set check, :func:`promptonce.engine.set_check.proportion_flags`).
    """

    index: int
    name: str
    status: str
    files: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    confidence: float | None = None
    flags: list[str] = field(default_factory=list)
    needs_second: bool = False
    attempts: int = 1
    reason: str = ""
    pass_: int = 1
    input: str | None = None
    slices: list[list[Any]] = field(default_factory=list)
    areas: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["pass"] = d.pop("pass_")
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CaseRecord:
        d = dict(d)
        d["pass_"] = d.pop("pass", 1)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_entry(path: Path, root: Path) -> dict[str, Any]:
    """``{"path", "size", "crc32"}`` of a written file, its path relative to ``root``."""
    return {"path": str(Path(path).relative_to(root)), "size": Path(path).stat().st_size, "crc32": _crc32(Path(path))}


def input_fingerprints(sources: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every file under the input arguments, sorted, as ``{"path", "size", "mtime_ns"}``.

    Cheap (``stat`` only, no reading), so it runs for 100,000 files in seconds. Paths are absolute.
    """
    out: list[dict[str, Any]] = []
    for s in sources:
        p = Path(s).expanduser()
        paths: Iterable[Path]
        if p.is_dir():
            paths = (q for q in p.rglob("*") if q.is_file())
        elif p.exists():
            paths = [p]
        else:  # a glob or a missing path: the reader reports it; record the argument as given
            paths = sorted(Path(".").glob(str(s))) if any(c in str(s) for c in "*?[") else []
        for q in paths:
            st = q.stat()
            out.append({"path": str(q.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    out.sort(key=lambda d: d["path"])
    return out


class RunStore:
    """The run folder ``<out_dir>/run`` (see the module docstring).

    Args:
        out_dir: the run's output folder (masks go to ``out_dir/masks``).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / RUN_DIR
        self.log_path = self.dir / "cases.jsonl"
        self.exemplar_dir = self.dir / "exemplars"
        self._records: dict[int, CaseRecord] = {}

    # ------------------------------------------------------------------ opening
    def open(self, manifest: Mapping[str, Any], *, restart: bool = False) -> dict[int, CaseRecord]:
        """Starts a new run or resumes the one in the folder.

        Args:
            manifest: the new run's manifest (JSON-able): ``kind``, ``prompt``, ``model``,
                ``options``, ``inputs``, ``cases`` (names), ``version``.
            restart: forget the previous run's records (its mask files are overwritten as cases finish).

        Returns:
            The previous records by case index (empty for a new run).

        Raises:
            RunMismatchError: the folder holds a run of another prompt, model, options or inputs.
        """
        path = self.dir / "manifest.json"
        if path.exists() and not restart:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise RunMismatchError(
                    f"{path} is unreadable ({exc}); remove {self.dir} or choose another output folder."
                ) from None
            changed = self._check_same(old, manifest)
            self._records = self._read_log()
            if changed:
                self._redo_changed(changed, old, manifest)
        else:
            if restart and self.dir.exists():
                for f in (self.log_path, self.dir / "summary.json"):
                    if f.exists():
                        f.unlink()
                if self.exemplar_dir.exists():
                    for f in self.exemplar_dir.iterdir():
                        f.unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(dict(manifest), path)
            self._records = {}
        return dict(self._records)

    def open_existing(self) -> dict[int, CaseRecord]:
        """Reads the run in the folder without starting one (e.g. to score it).

        Raises:
            InputError: the folder holds no run.
        """
        if not (self.dir / "manifest.json").exists():
            raise InputError(f"{self.out_dir} holds no run (no {RUN_DIR}/manifest.json).")
        self._records = self._read_log()
        return dict(self._records)

    def _check_same(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
        """Refuses another prompt/model/options/cases; returns the input files changed in place."""
        where = f"{self.out_dir} holds a run"
        fix = "Use another --out folder, or delete that folder's run/ and masks/ to start over."
        for key in IDENTITY_KEYS:
            if _canon(old.get(key)) != _canon(new.get(key)):
                raise RunMismatchError(
                    f"{where} made with another {key} ({_diff(old.get(key), new.get(key))}); "
                    f"its results are not mixed with this run's. {fix}"
                )
        if old.get("cases") != new.get("cases"):
            raise RunMismatchError(
                f"{where} over other cases ({len(old.get('cases') or [])} cases; now {len(new.get('cases') or [])}). {fix}"
            )
        a = {d["path"]: (d["size"], d["mtime_ns"]) for d in old.get("inputs") or []}
        b = {d["path"]: (d["size"], d["mtime_ns"]) for d in new.get("inputs") or []}
        if set(a) != set(b):
            moved = sorted(set(a) ^ set(b))
            raise RunMismatchError(
                f"{where} over other input files ({len(moved)} added or removed, e.g. {moved[:3]}). {fix}"
            )
        return {k for k in a if a[k] != b[k]}

    def _redo_changed(self, changed: set[str], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Input files changed in place: the cases read from them are done again, when each written
        case knows its file; otherwise (e.g. a DICOM series: many files per case) the run is refused."""
        done = [r for r in self._records.values() if r.status != "failed"]
        seed = self._records.get(int((new.get("prompt") or {}).get("volume_index", -1)))
        if seed is not None and seed.input in changed:
            raise RunMismatchError(
                f"The prompted case's file {seed.input} changed since {self.out_dir}'s run began; every case "
                "depends on it. Use another --out folder, or delete that folder's run/ and masks/ to start over."
            )
        if any(not r.input for r in done):
            raise RunMismatchError(
                f"{self.out_dir} holds a run over inputs that changed since ({len(changed)} files differ in size or "
                f"time, e.g. {sorted(changed)[:3]}), and its cases cannot all be traced to one file. "
                "Use another --out folder, or delete that folder's run/ and masks/ to start over."
            )
        for r in done:
            if r.input in changed:
                log.warning("%s: its input %s changed since it was written; it is done again", r.name, r.input)
                self.record(dataclasses.replace(r, status="failed", files=[], reason="input changed; redo"))
                self.drop_exemplar(r.index)
        write_json({**dict(old), "inputs": new.get("inputs")}, self.dir / "manifest.json")

    def _read_log(self) -> dict[int, CaseRecord]:
        recs: dict[int, CaseRecord] = {}
        if not self.log_path.exists():
            return recs
        with open(self.log_path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = CaseRecord.from_json(json.loads(line))
                except (ValueError, TypeError):
                    log.warning("%s line %d is torn (an interrupted write); ignored", self.log_path, n)
                    continue
                recs[r.index] = r
        return recs

    # ------------------------------------------------------------------ state
    @property
    def records(self) -> dict[int, CaseRecord]:
        return self._records

    def verified(self, rec: CaseRecord) -> bool:
        """True when every file of ``rec`` exists with its recorded size and CRC-32."""
        if not rec.files:
            return False
        for f in rec.files:
            p = self.out_dir / f["path"]
            try:
                if p.stat().st_size != f["size"] or _crc32(p) != f["crc32"]:
                    return False
            except OSError:
                return False
        return True

    def record(self, rec: CaseRecord) -> None:
        """Appends ``rec`` to the log (one line, flushed and fsync'ed) and keeps it as the case's state."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec.to_json(), separators=(",", ":"), default=float) + "\n"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._records[rec.index] = rec

    # ------------------------------------------------------------------ exemplars
    def save_exemplar(self, index: int, exemplar: Any) -> None:
        """Stores case ``index``'s exemplar (atomic; plain arrays in an ``.npz``, never pickled)."""
        if exemplar is None:
            return
        meta = {"name": exemplar.name, "position": exemplar.position, "confidence": exemplar.confidence,
                "key": exemplar.key, "objects": [int(o) for o in exemplar.masks],
                "evidence": {str(int(o)): float(v) for o, v in exemplar.evidence.items()},
                "walled": bool(exemplar.walled)}  # fmt: skip
        arrays = {"image": np.asarray(exemplar.image, np.float32), "meta": np.array(json.dumps(meta))}
        arrays.update({f"mask_{int(o)}": np.asarray(m, bool) for o, m in exemplar.masks.items()})
        with atomic_path(self.exemplar_dir / f"{index}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def drop_exemplar(self, index: int) -> None:
        """Removes case ``index``'s stored exemplar (it left the exemplar set)."""
        p = self.exemplar_dir / f"{index}.npz"
        if p.exists():
            p.unlink()

    def load_exemplars(self) -> Iterator[tuple[int, Any]]:
        """``(case index, exemplar)`` of every stored exemplar, loaded one at a time (unreadable ones skipped)."""
        from .engine import Exemplar

        if not self.exemplar_dir.exists():
            return
        for p in sorted(self.exemplar_dir.glob("*.npz")):
            try:
                with np.load(p, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    masks = {int(o): np.asarray(z[f"mask_{int(o)}"], bool) for o in meta["objects"]}
                    evidence = {int(o): float(v) for o, v in meta.get("evidence", {}).items()}
                    ex = Exemplar(meta["name"], np.asarray(z["image"], np.float32), masks, float(meta["position"]),
                                  float(meta["confidence"]), str(meta["key"]), evidence=evidence,
                                  walled=bool(meta.get("walled", False)))  # fmt: skip
                yield int(p.stem), ex
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                log.warning("stored exemplar %s is unreadable (%s); not used", p.name, exc)

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        return write_json(dict(summary), self.dir / "summary.json")


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _diff(old: Any, new: Any) -> str:
    """What differs: for dicts, the keys whose values differ (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if _canon(old.get(k)) != _canon(new.get(k)))
        return "; ".join(f"{k}: {_short(old.get(k), 60)} -> {_short(new.get(k), 60)}" for k in keys[:4])
    return f"{_short(old)} -> {_short(new)}"


def _short(v: Any, n: int = 120) -> str:
    s = _canon(v)
    return s if len(s) <= n else s[: n - 3] + "..."
