"""What the web app does, as plain Python: load, click, preview, run, correct, measure, download.

These functions hold the app's logic and do not import gradio, so they are tested directly (no
browser). :mod:`promptonce.ui.app` only lays out the page and forwards events to them.

State lives in a :class:`Workspace` attached to the browser's :class:`~promptonce.ui.session.Session`
(never in ``gr.State``). The page passes the view it shows (case index, slice index, window) with
every event, so the workspace holds data only: the dataset, the user's prompts, previews and results.

Coordinates: the page shows slice ``k`` of volume ``v`` scaled by ``(sx, sy)`` display pixels per
image pixel (:meth:`Workspace.display_scale`): small images are enlarged, large ones shrunk, and
anisotropic pixels stretched so that the image keeps its physical aspect. A click at display pixel
``(X, Y)`` is image pixel ``((X + 0.5) / sx - 0.5, (Y + 0.5) / sy - 0.5)`` (see :func:`to_image_xy`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CancelledError, InputError, ModelError, PromptError, PromptOnceError, TooLargeError
from ..types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, SliceResult, Volume
from .session import Session

__all__ = [
    "MODES",
    "SCOPES",
    "STRATEGIES",
    "EXAMPLES",
    "ASSETS",
    "Draft",
    "ObjectInfo",
    "VolumeMeta",
    "RunProgress",
    "RunInfo",
    "Workspace",
    "workspace",
    "model_choices",
    "load_inputs",
    "APP_MAX_VOXELS",
    "MAX_ZIP_DEPTH",
    "MAX_ZIPS",
    "app_max_voxels",
    "load_example",
    "render",
    "save_view",
    "to_image_xy",
    "click",
    "add_object",
    "set_active",
    "undo",
    "reset_prompts",
    "run",
    "apply_corrections",
    "results_summary",
    "write_downloads",
    "set_reference_labels",
    "summary_markdown",
    "progress_text",
    "write_json_text",
    "user_message",
    "hide_paths",
    "slice_info",
]

log = logging.getLogger(__name__)

#: Click modes of the prompt tool.
MODES = ("positive", "negative", "box")
#: Run scopes: the prompted image only, the prompted volume, every volume of the dataset.
SCOPES = ("image", "volume", "dataset")
#: Dataset strategies (see promptonce.engine.segment).
STRATEGIES = ("transfer", "chain")

#: Repository assets (synthetic examples made by scripts/make_assets.py).
ASSETS = Path(__file__).resolve().parents[2] / "assets"
#: Example name -> (input files, reference files, loading mode).
EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "ct": (("ct_phantom/ct_phantom.nii.gz",), ("ct_phantom/ct_phantom_mask.nii.gz",), "auto"),
    "xray": (
        tuple(f"xray/images/cxr_{i:02d}.png" for i in range(1, 5)),
        tuple(f"xray/masks/cxr_{i:02d}.png" for i in range(1, 5)),
        "set",
    ),
}

#: Display size targets: images smaller than MIN are enlarged (integer factor), larger than MAX shrunk.
DISPLAY_MIN = 512
DISPLAY_MAX = 1024
#: Bytes of loaded volumes kept in memory per session (at least one volume is always kept).
VOLUME_CACHE_BYTES = 256 * 2**20
#: Slice embeddings an app engine keeps (per session; about 4 MB each).
ENGINE_CACHE_SLICES = 12
#: How often a running segmentation reports progress to the page (seconds).
PROGRESS_EVERY_S = 0.4
#: Voxels one image may hold in the app unless ``PROMPTONCE_MAX_VOXELS`` says otherwise: 512 x 512 x 1000
#: (about 1 GB as float32); the library's own default is twice that.
APP_MAX_VOXELS = 512 * 512 * 1000
#: Zips inside an uploaded zip are opened this many levels deep (the upload itself is level 1).
MAX_ZIP_DEPTH = 3
#: The most zip archives one load opens (uploads and the zips inside them).
MAX_ZIPS = 256

_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"<>|:]+)+[\\/]([^\\/\s'\"<>|:]+)")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class ObjectInfo:
    """One object the user segments: its label id in outputs (1..255) and its name."""

    object_id: int
    name: str


@dataclass
class Draft:
    """What the user put on one slice for one object, and the preview mask it gives.

    Attributes:
        points: clicks in image pixels, in the order given.
        box: a box in image pixels, or None.
        corner: first corner ``(x, y)`` of a box being drawn, or None.
        mask: bool ``(rows, cols)`` preview, or None when not predicted (yet).
        score: the model's confidence for ``mask``.
    """

    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    corner: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    score: float = 0.0

    @property
    def usable(self) -> bool:
        """True when the draft can seed a segmentation (a positive click or a box)."""
        return self.box is not None or any(p.label == 1 for p in self.points)

    def prompt(self, obj: ObjectInfo) -> ObjectPrompt:
        """The draft as an :class:`ObjectPrompt` for object ``obj``."""
        return ObjectPrompt(points=tuple(self.points), box=self.box, object_id=obj.object_id, name=obj.name)


@dataclass
class VolumeMeta:
    """What the app needs to know about a volume without holding it.

    Attributes:
        name: case name.
        shape: ``(slices, rows, cols)``.
        spacing: ``(col, row, slice)`` mm.
        modality: ``CT | MR | XR | OT``.
        source_format: ``nifti | dicom | image | numpy | ...``.
    """

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    modality: str
    source_format: str

    @property
    def n_slices(self) -> int:
        return self.shape[0]


@dataclass
class RunProgress:
    """One progress report of a running segmentation.

    Attributes:
        done: slices finished.
        total: slices the run covers.
        seconds: time since the run started.
        volume_index, slice_index: the slice just finished (or -1).
        message: what the run is doing, for the page.
        finished: True for the last report.
    """

    done: int
    total: int
    seconds: float
    volume_index: int = -1
    slice_index: int = -1
    message: str = ""
    finished: bool = False

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current pace, or None before the first slice."""
        if self.done <= 0 or self.total <= self.done:
            return None if self.done <= 0 else 0.0
        return self.seconds / self.done * (self.total - self.done)


@dataclass
class RunInfo:
    """The last run's figures (for the metrics panel and metrics.json)."""

    model: str
    scope: str
    strategy: str
    seconds: float = 0.0
    slices: int = 0
    cancelled: bool = False
    volumes: list[int] = field(default_factory=list)


class Workspace:
    """One session's data: the loaded dataset, objects, prompts, previews and results.

    Args:
        session: the owning session (its folder receives uploads, views and downloads).
        dataset: the loaded images.
        references: per volume, the path of its reference mask or None.
        input_paths: the uploaded files (inside the session folder).
        max_voxels: the voxel budget of every image and reference read for this workspace.
    """

    def __init__(
        self,
        session: Session,
        dataset: Dataset,
        metas: list[VolumeMeta],
        references: list[Path | None],
        input_paths: list[Path],
        max_voxels: int = APP_MAX_VOXELS,
    ) -> None:
        self.session = session
        self.max_voxels = int(max_voxels)
        self._dataset = dataset
        self.metas = metas
        self.references = references
        self.input_paths = input_paths
        self.objects: list[ObjectInfo] = [ObjectInfo(1, "object 1")]
        self.active: int = 1
        self.drafts: dict[tuple[int, int], dict[int, Draft]] = {}
        self.order: list[tuple[int, int]] = []  # slices in the order they were first prompted
        self.history: list[tuple[tuple[int, int], int, Draft | None]] = []
        self.pending: set[tuple[int, int]] = set()  # prompts changed since the last run/correction
        self.results: dict[int, np.ndarray] = {}
        self.done: dict[int, np.ndarray] = {}
        self.flags: dict[tuple[int, int], list[str]] = {}
        self.run_info: RunInfo | None = None
        self.correction_seconds = 0.0
        self.engines: dict[str, Any] = {}
        self._engine_lock = threading.Lock()
        # the model of the last click or run: shown slices are warmed for it (none before the first use,
        # so that merely browsing never loads a model)
        self.last_model: str | None = None
        self._volumes: OrderedDict[int, Volume] = OrderedDict()
        self._refs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._frames: dict[tuple[int, Any], Any] = {}
        self.view_counter = 0
        self.notes: list[str] = []
        self.ref_labels: tuple[int, ...] | None = None  # reference labels scored (None = all non-zero)

    # ------------------------------------------------------------------ volumes
    @property
    def n_volumes(self) -> int:
        return len(self.metas)

    def volume(self, v: int) -> Volume:
        """Volume ``v``, loaded on first use and kept while the session's memory budget allows."""
        if not 0 <= v < self.n_volumes:
            raise InputError(f"Case {v + 1} does not exist; this dataset has {self.n_volumes} case(s).")
        vol = self._volumes.get(v)
        if vol is not None:
            self._volumes.move_to_end(v)
            return vol
        with _server_budget(self.max_voxels):
            vol = self._dataset[v]
        self._volumes[v] = vol
        evicted = False
        while len(self._volumes) > 1 and sum(x.array.nbytes for x in self._volumes.values()) > VOLUME_CACHE_BYTES:
            old, _ = self._volumes.popitem(last=False)
            self._frames = {key: fm for key, fm in self._frames.items() if key[0] != old}
            evicted = True
        if evicted:
            # engines cache embeddings by volume identity: drop them with the volume they belong to
            for eng in self.engines.values():
                eng.clear_cache()
        return vol

    def dataset(self) -> Dataset:
        """The dataset as the engine sees it: volumes served from this workspace's cache."""
        return Dataset([(m.name, partial(self.volume, i)) for i, m in enumerate(self.metas)])

    def reference(self, v: int) -> np.ndarray | None:
        """The reference label map of volume ``v`` as uint8 ``(slices, rows, cols)``, or None."""
        if not 0 <= v < len(self.references) or self.references[v] is None:
            return None
        ref = self._refs.get(v)
        if ref is None:
            from ..io.readers import load_reference

            image = self.volume(v)
            with _server_budget(self.max_voxels):
                ref_vol = load_reference(self.references[v], image, max_voxels=self.max_voxels)
            ref = np.asarray(ref_vol.array)
            if ref.shape != self.metas[v].shape:
                raise InputError(
                    f"{self.metas[v].name}: the reference mask has shape {ref.shape}, the image "
                    f"{self.metas[v].shape}; upload the mask made for this image."
                )
            ref = ref.astype(np.uint8) if ref.max(initial=0) < 256 else (ref > 0).astype(np.uint8)
            self._refs[v] = ref
            while len(self._refs) > 2:
                self._refs.popitem(last=False)
        return ref

    def reference_mask(self, v: int) -> np.ndarray | None:
        """bool ``(slices, rows, cols)``: the reference labels chosen for scoring (all non-zero by default)."""
        ref = self.reference(v)
        if ref is None:
            return None
        return np.isin(ref, self.ref_labels) if self.ref_labels else ref > 0

    def frames(self, v: int, window: Any) -> Any:
        """The FrameMaker of volume ``v`` for ``window`` (cached)."""
        from ..preprocess import FrameMaker

        key = (v, _window_key(window))
        fm = self._frames.get(key)
        if fm is None:
            fm = FrameMaker(self.volume(v), window)
            if len(self._frames) > 8:
                self._frames.clear()
            self._frames[key] = fm
        return fm

    def display_scale(self, v: int) -> tuple[float, float]:
        """``(sx, sy)``: display pixels per image pixel across and down (see the module docstring)."""
        _, rows, cols = self.metas[v].shape
        cs, rs, _ = self.metas[v].spacing
        ratio = rs / cs if cs > 0 and rs > 0 and math.isfinite(rs / cs) else 1.0
        ratio = min(max(ratio, 0.2), 5.0)
        w, h = cols, rows * ratio
        big = max(w, h)
        if big < DISPLAY_MIN:
            s = float(math.ceil(DISPLAY_MIN / big))
        elif big > DISPLAY_MAX:
            s = DISPLAY_MAX / big
        else:
            s = 1.0
        return s, s * ratio

    # ------------------------------------------------------------------ objects and prompts
    def object(self, oid: int) -> ObjectInfo:
        for o in self.objects:
            if o.object_id == oid:
                return o
        raise PromptError(f"Object {oid} does not exist; add it first.")

    def prompted_slices(self, v: int | None = None, oid: int | None = None) -> list[tuple[int, int]]:
        """Slices holding a usable prompt (of object ``oid`` / in volume ``v``), in prompting order."""
        out = []
        for key in self.order:
            if v is not None and key[0] != v:
                continue
            drafts = self.drafts.get(key, {})
            if any(d.usable and (oid is None or i == oid) for i, d in drafts.items()):
                out.append(key)
        return out

    # ------------------------------------------------------------------ results
    def result(self, v: int, create: bool = False) -> np.ndarray | None:
        """Volume ``v``'s result label map uint8 ``(slices, rows, cols)`` (memory-mapped in the session folder)."""
        arr = self.results.get(v)
        if arr is None and create:
            path = self.session.subdir("results") / f"{v}.npy"
            self.session.check_quota(int(np.prod(self.metas[v].shape)), max_age_s=5.0)
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=self.metas[v].shape)
            self.results[v] = arr
            self.done[v] = np.zeros(self.metas[v].n_slices, bool)
        return arr

    def has_results(self) -> bool:
        return any(d.any() for d in self.done.values())

    def store(self, res: SliceResult, only: Sequence[int] | None = None) -> None:
        """Writes one slice result into the result maps (only objects ``only`` when given)."""
        arr = self.result(res.volume_index, create=True)
        assert arr is not None  # noqa: S101 - created above
        k = res.slice_index
        if only is None:
            arr[k] = res.labels
            self.flags[(res.volume_index, k)] = list(res.flags)
        else:
            cur = np.array(arr[k])
            names = []
            for oid in only:
                cur[cur == oid] = 0
                cur[res.labels == oid] = oid
                names.append(self.object(oid).name)
            arr[k] = cur
            kept = [f for f in self.flags.get((res.volume_index, k), []) if not any(f.startswith(n) for n in names)]
            self.flags[(res.volume_index, k)] = kept + list(res.flags)
        self.done[res.volume_index][k] = True

    def clear_results(self, volumes: Sequence[int] | None = None) -> None:
        for v in list(self.results) if volumes is None else volumes:
            if v in self.results:
                self.results[v][:] = 0
                self.done[v][:] = False
            for key in [key for key in self.flags if key[0] == v]:
                del self.flags[key]

    def flagged(self) -> list[tuple[int, int, str]]:
        """``(volume, slice, text)`` for every flagged slice, in order."""
        return [(v, k, "; ".join(f)) for (v, k), f in sorted(self.flags.items()) if f]

    # ------------------------------------------------------------------ models
    def engine(self, model: str) -> Any:
        """This session's engine for ``model`` (the model itself is loaded once per process)."""
        with self._engine_lock:  # the page and the warm-up thread may both ask first
            return self._engine(model)

    def _engine(self, model: str) -> Any:
        eng = self.engines.get(model)
        if eng is None:
            from ..engine import make_engine

            name = model or "auto"
            try:
                eng = make_engine(None, name, "auto")
            except ModelError as exc:
                # the click helper (MobileSAM) may be missing while the box model works
                try:
                    eng = make_engine(None, name, None)
                except ModelError:
                    raise exc from None
                self.notes.append(f"Clicks are unavailable with {name} here ({exc}); draw boxes.")
            eng.cache_size = ENGINE_CACHE_SLICES  # bound the per-session memory
            self.engines[model] = eng
        return eng


def _window_key(window: Any) -> Any:
    if isinstance(window, list | tuple):
        return tuple(float(x) for x in window)
    return window


def workspace(session: Session) -> Workspace:
    """The session's workspace; raises a readable error when nothing is loaded yet."""
    ws = session.workspace
    if ws is None:
        raise InputError("Load images first: upload files or pick an example.")
    return ws


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


# ---------------------------------------------------------------------------------------------- models
def model_choices(show_fake: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The models the page offers, and those unavailable here with the reason.

    Args:
        show_fake: also offer the ``fake`` test backend.

    Returns:
        ``(choices as (label, value), [(title, why not)])``; the first choice is ``auto`` when the
        LiteMedSAM box model is available. Reasons have server paths reduced to file names.
    """
    from ..backends.registry import available_backends

    choices: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    names = set()
    for info, ok, why in available_backends():
        if info.name == "fake" and not show_fake:
            continue
        if ok:
            kinds = " + ".join(k for k, on in (("clicks", info.points), ("boxes", info.boxes)) if on)
            choices.append((f"{info.title} ({kinds})", info.name))
            names.add(info.name)
        else:
            missing.append((info.title, hide_paths(why)))
    if "litemedsam" in names:
        label = "Auto: LiteMedSAM" + (" (clicks through MobileSAM)" if "mobilesam" in names else " (boxes)")
        choices.insert(0, (label, "auto"))
    return choices, missing


# ---------------------------------------------------------------------------------------------- loading
_BUDGET_RE = re.compile(r"^(?P<what>.*): (?P<shape>\([\d, ]*\)) = (?P<n>[\d,]+) voxels exceeds the budget", re.S)


def app_max_voxels() -> int:
    """The app's voxel budget per image: ``PROMPTONCE_MAX_VOXELS`` when it is a positive number, else
    :data:`APP_MAX_VOXELS`."""
    raw = os.environ.get("PROMPTONCE_MAX_VOXELS", "").strip()
    if raw:
        try:
            value = int(float(raw))
        except (ValueError, OverflowError):
            value = 0
        if value > 0:
            return value
        log.warning("ignoring PROMPTONCE_MAX_VOXELS=%r (not a positive number)", raw)
    return APP_MAX_VOXELS


@contextmanager
def _server_budget(max_voxels: int) -> Iterator[None]:
    """Rewrites a reader's voxel-budget error for the page (the reader's own advice names a
    command-line option that a web user cannot set)."""
    try:
        yield
    except TooLargeError as exc:
        m = _BUDGET_RE.match(str(exc))
        if m is None:
            raise
        depth = max(1, max_voxels // (512 * 512))
        raise TooLargeError(
            f"{m['what']}: {m['shape']} = {m['n']} voxels, more than this server reads ({max_voxels:,} voxels "
            f"per image, e.g. 512 x 512 x {depth:,}). Crop it to the region you need or downsample it, then "
            "upload it again; or run PromptOnce on your own computer, where the limit can be raised."
        ) from None


def _copy_into(session: Session, paths: Sequence[str | Path], folder: str) -> list[Path]:
    """Copies uploaded files into a fresh folder of the session (quota checked); returns the copies."""
    srcs = [Path(p) for p in paths if p]
    size = 0
    for p in srcs:
        if not p.is_file():
            raise InputError(f"{p.name} is not a file; upload files (a zip for a folder of DICOM files).")
        size += p.stat().st_size
    session.check_quota(size)
    dest = session.subdir(folder, fresh=True)
    out: list[Path] = []
    used: set[str] = set()
    for p in srcs:
        name = re.sub(r"[^A-Za-z0-9._ -]+", "_", p.name).strip() or "upload"
        name = name.lstrip(".") or "upload"
        base, n = name, 1
        while name.lower() in used:
            n += 1
            name = f"{n}_{base}"
        used.add(name.lower())
        target = dest / name
        shutil.copyfile(p, target)
        out.append(target)
    return out


def load_inputs(
    session: Session,
    paths: Sequence[str | Path],
    reference_paths: Sequence[str | Path] = (),
    images_as: str = "auto",
    remove_sources: bool = False,
    max_voxels: int | None = None,
) -> Workspace:
    """Loads uploaded files into a new workspace of the session (the previous one is dropped).

    Zips are extracted inside the session folder, within its quota: a zip holding a single folder
    is read from that folder, and zips inside zips (up to :data:`MAX_ZIP_DEPTH` levels) are
    extracted there too, so no reader ever unpacks an upload elsewhere.

    Args:
        session: the browser session.
        paths: the uploaded image/volume files (NIfTI, DICOM files or a zip, PNG/JPG, ...).
        reference_paths: optional reference masks, paired to the images by file name.
        images_as: how several 2D images are read: ``auto``, ``set`` (separate images) or
            ``stack`` (slices of one volume).
        remove_sources: delete the uploaded originals once copied (they sit in Gradio's upload
            folder; the copies live in the session folder and go with it).
        max_voxels: voxel budget per image and reference (default: :func:`app_max_voxels`).

    Returns:
        The new workspace (also stored as ``session.workspace``).

    Raises:
        InputError: nothing uploaded, a file no reader understands, references that do not match,
            zips nested too deep, ...
        TooLargeError: over the session's quota, or an image over the voxel budget.
    """
    from ..io.readers import load_dataset, pair_references

    if not paths:
        raise InputError("No file was uploaded; choose one or more images or volumes, or pick an example.")
    if images_as not in ("auto", "set", "stack"):
        raise InputError(f"Unknown loading mode {images_as!r}; use auto, set or stack.")
    with session.lock:
        try:
            inputs = _copy_into(session, paths, "inputs")
            refs = _copy_into(session, reference_paths, "references") if reference_paths else []
        finally:
            if remove_sources:
                for p in list(paths) + list(reference_paths):
                    Path(p).unlink(missing_ok=True)
                    try:
                        Path(p).parent.rmdir()  # the upload's own folder, when now empty
                    except OSError:
                        pass
        _drop_workspace(session)
        session.clear("results", "out", "view", "unzipped", "unzipped-references")
        budget = app_max_voxels() if max_voxels is None else int(max_voxels)
        dataset = load_dataset(_unzip_into(session, inputs), images_as=images_as, max_voxels=budget)
        if len(dataset) == 0:
            raise InputError("No image was found in the upload; upload NIfTI, DICOM, PNG or JPG files.")
        metas: list[VolumeMeta] = []
        first: Volume | None = None
        for i in range(len(dataset)):
            with _server_budget(budget):
                vol = dataset[i]
            metas.append(
                VolumeMeta(vol.name, vol.shape, vol.spacing, str(vol.modality), str(vol.source_format))
            )
            if i == 0:
                first = vol
            del vol
        ref_list: list[Path | None] = [None] * len(dataset)
        ref_note = ""
        if refs:
            try:
                paired = [Path(p) for p in pair_references(dataset, refs)]
            except InputError as exc:
                ref_note = f"The reference masks are not used: {exc}"
            else:
                ref_list[:] = _unzip_references(session, paired)
        ws = Workspace(session, dataset, metas, ref_list, inputs, max_voxels=budget)
        if ref_note:
            ws.notes.append(ref_note)
        if first is not None:
            ws._volumes[0] = first  # noqa: SLF001 - keep the first volume loaded
        session.workspace = ws
        # check the references now, so a mismatch is reported at upload time
        for v in range(len(ref_list)):
            if ref_list[v] is not None and v < 3:
                ws.reference(v)
        return ws


def _is_archive(path: Path) -> bool:
    """True for a file the readers would open as a zip: zip magic, and not a NumPy ``.npz``, a file
    named as NIfTI or NumPy, or a DICOM file (``DICM`` at byte 128)."""
    from ..io.archive import is_zip

    low = path.name.lower()
    if path.name.startswith(".") or low.endswith((".npz", ".npy", ".nii", ".nii.gz", ".hdr", ".img")):
        return False
    if not (path.is_file() and not path.is_symlink() and is_zip(path)):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] != b"DICM"


def _free_folder(parent: Path, name: str) -> Path:
    """A new, empty folder (mode 0700) ``parent/<name>`` (or ``<name>_2``, ...) with a safe name."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "archive"
    dest, n = parent / base, 1
    while dest.exists():
        n += 1
        dest = parent / f"{base}_{n}"
    dest.mkdir(mode=0o700)
    return dest


def _stem(path: Path) -> str:
    return path.name[:-4] if path.name.lower().endswith(".zip") else path.stem


def _natural(text: str) -> tuple[Any, ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text.lower()))


@dataclass
class _Unpacking:
    """The zips of one load: the session's free bytes (walked once, then kept up to date) and how many
    archives were opened."""

    session: Session
    free: int
    opened: int = 0

    @classmethod
    def start(cls, session: Session) -> _Unpacking:
        return cls(session, max(0, session.max_bytes - session.bytes_used()))

    def extract(self, archive: Path, dest: Path, depth: int) -> None:
        """Extracts ``archive`` into the empty folder ``dest``, with the session's free space as the budget.

        Raises:
            InputError: nested deeper than :data:`MAX_ZIP_DEPTH`, or more than :data:`MAX_ZIPS` archives.
            TooLargeError: the content does not fit in the session's free space.
        """
        from ..io.archive import safe_extract

        if depth > MAX_ZIP_DEPTH:
            raise InputError(
                f"{archive.name} is a zip inside a zip more than {MAX_ZIP_DEPTH} levels deep; unzip the inner "
                "archives and upload their files (or one zip of them)."
            )
        self.opened += 1
        if self.opened > MAX_ZIPS:
            raise InputError(
                f"The upload holds more than {MAX_ZIPS} zip archives (counting zips inside zips); upload "
                "the files themselves, or one zip of them."
            )
        try:
            files = safe_extract(archive, dest, max_bytes=self.free)
        except TooLargeError as exc:
            if "exceed the budget" not in str(exc):
                raise
            raise TooLargeError(
                f"{archive.name} does not fit in this session once unpacked: {self.free / 2**20:.0f} MB of "
                f"its {self.session.max_bytes / 2**20:.0f} MB are free. Upload fewer or smaller files, or "
                "reload the page to start over."
            ) from None
        self.free -= sum(f.stat().st_size for f in files)

    def remove(self, archive: Path) -> None:
        """Deletes an archive whose content was extracted (its bytes are free again)."""
        size = archive.stat().st_size
        archive.unlink()
        self.free += size

    def open_upload(self, archive: Path, depth: int) -> list[Path]:
        """Extracts an upload (or a zip found directly in one) into ``unzipped/`` of the session folder.

        Returns:
            The folders to read, as :func:`~promptonce.io.readers.load_dataset` would have read the
            zip: the archive's content root (its single top folder, if any), then, for every zip
            directly in that root (natural order), that zip's own folders; those zips are deleted.
        """
        from ..io.archive import content_root

        dest = _free_folder(self.session.subdir("unzipped"), _stem(archive))
        self.extract(archive, dest, depth)
        root = content_root(dest)
        folders = [root]
        for z in sorted((f for f in root.iterdir() if _is_archive(f)), key=lambda f: _natural(f.name)):
            folders.extend(self.open_upload(z, depth + 1))
            self.remove(z)
        self.open_in_place(root, depth, skip_direct=True)
        return folders

    def open_in_place(self, folder: Path, depth: int, skip_direct: bool) -> None:
        """Replaces every zip under ``folder`` (of nesting level ``depth``; not those directly in it when
        ``skip_direct``) by a folder of the same name holding its content (e.g. a zipped DICOM series
        inside a folder of series), so that no reader opens a zip later."""
        found = [
            Path(d) / f for d, _dirs, files in os.walk(folder) for f in files if not (skip_direct and Path(d) == folder)
        ]
        for z in sorted(found, key=lambda f: _natural(str(f))):
            if not _is_archive(z):
                continue
            dest = _free_folder(z.parent, _stem(z))
            self.extract(z, dest, depth + 1)
            self.remove(z)
            self.open_in_place(dest, depth + 1, skip_direct=False)


def _unzip_into(session: Session, paths: list[Path]) -> list[Path]:
    """Extracts uploaded zips (not ``.npz``) into the session folder, so that they count against its
    quota and go with it; returns the inputs with each zip replaced by the folders to read (see
    :meth:`_Unpacking.open_upload`). No zip is left for a reader to extract elsewhere."""
    from ..io.archive import is_zip

    unpacking = _Unpacking.start(session)
    out: list[Path] = []
    try:
        for p in paths:
            if p.name.lower().endswith(".npz") or not is_zip(p):
                out.append(p)
                continue
            out.extend(unpacking.open_upload(p, depth=1))
    except BaseException:
        shutil.rmtree(session.directory / "unzipped", ignore_errors=True)
        raise
    return out


def _unzip_references(session: Session, paired: list[Path]) -> list[Path]:
    """Paired references that are zips (e.g. a zipped DICOM mask series) are extracted in the session
    folder like the inputs (quota counted, nested zips opened in place); each is then read from its
    zip's content folder. Returns ``paired`` with every zip replaced by that folder."""
    from ..io.archive import content_root, is_zip

    unpacking = _Unpacking.start(session)
    done: dict[Path, Path] = {}
    out: list[Path] = []
    try:
        for r in paired:
            if r not in done and not r.name.lower().endswith(".npz") and r.is_file() and is_zip(r):
                dest = _free_folder(session.subdir("unzipped-references"), _stem(r))
                unpacking.extract(r, dest, 1)
                unpacking.open_in_place(dest, 1, skip_direct=False)
                done[r] = content_root(dest)
            out.append(done.get(r, r))
    except BaseException:
        shutil.rmtree(session.directory / "unzipped-references", ignore_errors=True)
        raise
    return out


def load_example(session: Session, name: str) -> Workspace:
    """Loads one of the synthetic examples in ``assets/`` (with its reference masks)."""
    if name not in EXAMPLES:
        raise InputError(f"Unknown example {name!r}; pick one of {', '.join(EXAMPLES)}.")
    files, refs, mode = EXAMPLES[name]
    paths = [ASSETS / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"The example files are missing ({', '.join(missing)}); run scripts/make_assets.py.")
    return load_inputs(session, paths, [ASSETS / r for r in refs], images_as=mode)


def _drop_workspace(session: Session) -> None:
    ws = session.workspace
    session.workspace = None
    if ws is not None:
        for eng in ws.engines.values():
            eng.clear_cache()
        ws.results.clear()


# ---------------------------------------------------------------------------------------------- view
def to_image_xy(ws: Workspace, v: int, x_disp: float, y_disp: float) -> tuple[float, float]:
    """Maps a display pixel of volume ``v``'s view to an image pixel ``(x, y)`` (clamped into the image)."""
    sx, sy = ws.display_scale(v)
    _, rows, cols = ws.metas[v].shape
    x = (float(x_disp) + 0.5) / sx - 0.5
    y = (float(y_disp) + 0.5) / sy - 0.5
    return min(max(round(x, 1), 0.0), cols - 1.0), min(max(round(y, 1), 0.0), rows - 1.0)


def _labels_for_view(ws: Workspace, v: int, k: int) -> np.ndarray:
    """Result labels of the slice with the slice's previews painted over them."""
    _, rows, cols = ws.metas[v].shape
    res = ws.result(v)
    labels = np.array(res[k]) if res is not None else np.zeros((rows, cols), np.uint8)
    for oid, d in ws.drafts.get((v, k), {}).items():
        if d.mask is not None and ((v, k) in ws.pending or res is None or not ws.done[v][k]):
            labels[labels == oid] = 0
            labels[d.mask & (labels == 0)] = oid
    return labels


def render(ws: Workspace, v: int, k: int, window: Any = "auto", show_reference: bool = False) -> np.ndarray:
    """The picture of slice ``k`` of volume ``v`` as the page shows it.

    Returns:
        uint8 RGB ``(H, W, 3)`` at display size: the windowed slice, the result (or preview) labels
        in their objects' colours, the reference outline (white) when asked, and the slice's clicks
        (green = object, red = background), boxes and a pending box corner.
    """
    from PIL import Image, ImageDraw

    from ..preprocess import label_color, overlay

    meta = ws.metas[v]
    k = _clamp_slice(ws, v, k)
    gray = ws.frames(v, window).gray(k)
    sx, sy = ws.display_scale(v)
    rows, cols = gray.shape
    size = (max(1, round(cols * sx)), max(1, round(rows * sy)))
    up = sx >= 1 and sy >= 1
    gray_d = np.asarray(Image.fromarray(gray).resize(size, Image.NEAREST if up and sx == int(sx) else Image.BILINEAR))
    labels = _labels_for_view(ws, v, k)
    lab_d = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    rgb = overlay(gray_d, lab_d, alpha=0.45, outline=False)
    if lab_d.any():
        # an opaque contour of about 1/3 image pixel (at least 1 display pixel), drawn inwards
        edge = _label_edges(lab_d)
        for _ in range(max(0, int(round(min(sx, sy) / 3)) - 1)):
            grown = edge.copy()
            grown[1:] |= edge[:-1]
            grown[:-1] |= edge[1:]
            grown[:, 1:] |= edge[:, :-1]
            grown[:, :-1] |= edge[:, 1:]
            edge = grown & (lab_d != 0)
        for oid in (int(i) for i in np.unique(lab_d[edge])):
            rgb[edge & (lab_d == oid)] = label_color(oid)
    if show_reference:
        ref = ws.reference_mask(v)
        if ref is not None:
            ref_d = np.asarray(Image.fromarray(ref[k].astype(np.uint8)).resize(size, Image.NEAREST))
            rgb[_edges(ref_d)] = (255, 255, 255)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    r = max(4, round(min(size) * 0.009))
    for oid, d in ws.drafts.get((v, k), {}).items():
        color = tuple(label_color(oid))
        if d.box is not None:
            b = d.box
            draw.rectangle(
                [b.x0 * sx, b.y0 * sy, (b.x1 + 1) * sx - 1, (b.y1 + 1) * sy - 1], outline=color, width=max(2, r // 2)
            )
        for p in d.points:
            cx, cy = (p.x + 0.5) * sx, (p.y + 0.5) * sy
            fill = (40, 220, 80) if p.label == 1 else (240, 50, 50)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=(255, 255, 255), width=2)
            if p.label == 0:
                draw.line([cx - r * 0.6, cy, cx + r * 0.6, cy], fill=(255, 255, 255), width=2)
        if d.corner is not None:
            cx, cy = (d.corner[0] + 0.5) * sx, (d.corner[1] + 0.5) * sy
            draw.line([cx - 2 * r, cy, cx + 2 * r, cy], fill=color, width=2)
            draw.line([cx, cy - 2 * r, cx, cy + 2 * r], fill=color, width=2)
    del meta
    return np.asarray(im)


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """bool: labelled pixels with a 4-neighbour of another label (the image border counts as 0)."""
    p = np.pad(labels, 1)
    c = p[1:-1, 1:-1]
    diff = (p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)
    return diff & (c != 0)


def _edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def save_view(session: Session, rgb: np.ndarray, keep: int = 4) -> Path:
    """Writes a rendered view as a PNG in the session folder (keeping the last ``keep``) and returns it.

    Views are files of the session (not of Gradio's shared cache), so they go when the session ends.
    """
    from PIL import Image

    folder = session.subdir("view")
    ws = session.workspace
    n = 0
    if ws is not None:
        ws.view_counter += 1
        n = ws.view_counter
    else:
        n = int(time.time() * 1000)
    path = folder / f"view_{n:06d}.png"
    Image.fromarray(rgb).save(path, compress_level=1)
    old = sorted(folder.glob("view_*.png"))[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return path


def _clamp_slice(ws: Workspace, v: int, k: int | float | None) -> int:
    n = ws.metas[v].n_slices
    k = 0 if k is None else int(k)
    return min(max(k, 0), n - 1)


def slice_info(ws: Workspace, v: int, k: int) -> str:
    """One line of markdown describing slice ``k`` of volume ``v``: position, prompts, result, flags."""
    meta = ws.metas[v]
    k = _clamp_slice(ws, v, k)
    parts = [f"**{meta.name}**", f"slice {k + 1} / {meta.n_slices}" if meta.n_slices > 1 else "2D image"]
    parts.append(f"{meta.shape[2]}×{meta.shape[1]} px, {meta.modality}")
    drafts = ws.drafts.get((v, k), {})
    if drafts:
        n_pts = sum(len(d.points) for d in drafts.values())
        n_box = sum(d.box is not None for d in drafts.values())
        parts.append(f"prompted here ({n_pts} click(s), {n_box} box(es))")
    if v in ws.done and ws.done[v][k]:
        res = ws.results[v][k]
        ids = [int(i) for i in np.unique(res) if i]
        parts.append("result: " + (", ".join(ws.object(i).name if _has(ws, i) else str(i) for i in ids) or "empty"))
    flags = ws.flags.get((v, k))
    if flags:
        parts.append("⚠ " + "; ".join(flags))
    return " · ".join(parts)


def _has(ws: Workspace, oid: int) -> bool:
    return any(o.object_id == oid for o in ws.objects)


# ---------------------------------------------------------------------------------------------- prompts
def click(
    ws: Workspace,
    v: int,
    k: int,
    x_disp: float,
    y_disp: float,
    mode: str = "positive",
    model: str = "auto",
    window: Any = "auto",
) -> str:
    """Adds a click (or a box corner) of the active object on slice ``k`` of volume ``v`` and predicts its preview.

    Args:
        ws: the workspace.
        v, k: the volume and slice shown.
        x_disp, y_disp: the click in display pixels (Gradio's ``SelectData.index``).
        mode: ``positive`` / ``negative`` click, or ``box`` (two clicks: opposite corners).
        model: the model choice (``auto`` or a backend name).
        window: the display window (also what the model sees).

    Returns:
        A short message for the page (what happened, or what to do next).
    """
    if mode not in MODES:
        raise InputError(f"Unknown click mode {mode!r}; use {', '.join(MODES)}.")
    if not 0 <= v < ws.n_volumes:
        raise InputError(f"Case {v + 1} does not exist; pick a case from the list.")
    k = _clamp_slice(ws, v, k)
    x, y = to_image_xy(ws, v, x_disp, y_disp)
    oid = ws.active
    obj = ws.object(oid)
    key = (v, k)
    slot = ws.drafts.setdefault(key, {})
    before = copy.deepcopy(slot.get(oid))
    d = slot.setdefault(oid, Draft())
    if mode == "box":
        if d.corner is None:
            d.corner = (x, y)
            ws.history.append((key, oid, before))
            _note_order(ws, key)
            return f"Box for {obj.name}: first corner set at ({x:.0f}, {y:.0f}); click the opposite corner."
        (x0, y0), d.corner = d.corner, None
        if abs(x - x0) < 1 and abs(y - y0) < 1:
            ws.history.append((key, oid, before))
            return "The two corners are the same pixel; click the first corner again, then the opposite one."
        d.box = Box(min(x0, x), min(y0, y), max(x0, x), max(y0, y))
    else:
        d.points.append(Point(x, y, 1 if mode == "positive" else 0))
    ws.history.append((key, oid, before))
    _note_order(ws, key)
    ws.pending.add(key)
    ws.last_model = model or "auto"
    with _model_busy():
        return _predict_draft(ws, v, k, oid, model, window)


_BUSY_LOCK = threading.Lock()
_BUSY = [0]  # model requests (clicks, runs, corrections) in progress in this process


@contextmanager
def _model_busy() -> Iterator[None]:
    with _BUSY_LOCK:
        _BUSY[0] += 1
    try:
        yield
    finally:
        with _BUSY_LOCK:
            _BUSY[0] -= 1


def models_idle() -> bool:
    """True when no click, run or correction is using a model in this process."""
    with _BUSY_LOCK:
        return _BUSY[0] == 0


def warm_enabled() -> bool:
    """Whether shown slices are encoded ahead of a click (``PROMPTONCE_WARM_VIEW``, default on)."""
    return os.environ.get("PROMPTONCE_WARM_VIEW", "1").strip().lower() not in ("0", "false", "no", "off")


def warm_view(ws: Workspace, v: int, k: int, window: Any = "auto") -> None:
    """Starts encoding the shown slice for the session's model in the background (returns at once).

    A click on a slice whose embeddings exist costs only decoding; encoding a slice costs 1-2.5 s on
    a 2-core CPU (MobileSAM for the click, then LiteMedSAM for the box), which the user spends
    looking at the slice anyway. Only the latest shown slice is encoded (see
    :meth:`promptonce.engine.Engine.warm`), and only while no model request runs in the process (the
    warm-up is idle-time work: it never takes a core from someone's run; a request that starts while
    it encodes shares the CPU with that one encoding). Nothing happens before the session's first
    click or run (browsing alone never loads a model).
    """
    model = ws.last_model
    if model is None or not warm_enabled() or not 0 <= v < ws.n_volumes:
        return
    from ..engine import background_pool

    vol = ws.volume(v)  # in the page's thread: the workspace's volume cache is not shared with the task
    k = min(max(int(k), 0), vol.n_slices - 1)

    def task() -> None:
        try:
            ws.engine(model).warm(vol, k, window, idle=models_idle)
        except Exception as exc:  # noqa: BLE001 - a warm-up is an optimisation; the click reports errors
            log.debug("warming slice %d of case %d failed: %s", k, v, exc)

    background_pool("warm").submit(task)


def _note_order(ws: Workspace, key: tuple[int, int]) -> None:
    if key not in ws.order:
        ws.order.append(key)


def _predict_draft(ws: Workspace, v: int, k: int, oid: int, model: str, window: Any) -> str:
    """Predicts the preview mask of one draft; returns the message for the page."""
    d = ws.drafts[(v, k)][oid]
    obj = ws.object(oid)
    if not d.usable:
        d.mask = None
        return f"{obj.name}: add a click on the object (positive) or a box; background clicks only refine it."
    eng = ws.engine(model)
    vol = ws.volume(v)
    prompt = d.prompt(obj)
    res = ws.result(v)
    mask: np.ndarray
    t0 = time.perf_counter()
    box = _result_box(ws, v, k, oid) if d.box is None else None
    if box is not None and all(
        box.x0 <= p.x <= box.x1 and box.y0 <= p.y <= box.y1 for p in d.points if p.label == 1
    ):
        # a correction on a result slice: the clicks refine the current mask inside its box (a click
        # outside that box means another place, and is taken as a fresh prompt below)
        corr = ObjectPrompt(points=prompt.points, box=box, object_id=oid, name=obj.name)
        point_engine = _point_engine(ws, model, eng)
        mask, score = point_engine.predict_object(vol, k, corr, window)
    else:
        mask, score = eng.predict_object(vol, k, prompt, window)
    d.mask, d.score = np.asarray(mask, bool), float(score)
    ms = (time.perf_counter() - t0) * 1000
    area = int(d.mask.sum())
    if area == 0:
        return f"{obj.name}: the model found nothing there; click inside the object or draw a box around it."
    return f"{obj.name}: preview {area} px, confidence {score:.2f} ({ms:.0f} ms)."


def _result_box(ws: Workspace, v: int, k: int, oid: int) -> Box | None:
    """The box (3 px margin) of object ``oid``'s current result on slice ``k``, or None."""
    from ..prompts import box_from_mask

    res = ws.result(v)
    if res is None or not ws.done[v][k]:
        return None
    current = np.asarray(res[k]) == oid
    return box_from_mask(current, margin=3, shape=current.shape) if current.any() else None


def _point_engine(ws: Workspace, model: str, eng: Any) -> Any:
    """An engine whose model takes clicks and boxes together (for corrections), or ``eng`` itself."""
    if eng.backend.info.points and eng.backend.info.boxes:
        return eng
    clicker = getattr(eng, "click_backend", None)
    if clicker is None or not (clicker.info.points and clicker.info.boxes):
        return eng
    key = f"{model}#points"
    pe = ws.engines.get(key)
    if pe is None:
        from ..engine import Engine

        pe = Engine(clicker, cache_size=ENGINE_CACHE_SLICES)
        ws.engines[key] = pe
    return pe


def add_object(ws: Workspace, name: str = "") -> int:
    """Adds an object (next free label id), makes it active and returns its id."""
    used = {o.object_id for o in ws.objects}
    oid = next(i for i in range(1, 256) if i not in used) if len(used) < 255 else None
    if oid is None:
        raise PromptError("255 objects is the most a label map can hold; remove some first.")
    name = re.sub(r"\s+", " ", (name or "").strip())[:40] or f"object {oid}"
    if any(o.name == name for o in ws.objects):
        name = f"{name} ({oid})"
    ws.objects.append(ObjectInfo(oid, name))
    ws.active = oid
    return oid


def set_active(ws: Workspace, oid: int) -> None:
    """Makes object ``oid`` the one new clicks belong to."""
    ws.object(int(oid))
    ws.active = int(oid)


def undo(ws: Workspace, model: str = "auto", window: Any = "auto") -> tuple[int, int] | None:
    """Undoes the last click or box; returns the ``(volume, slice)`` it was on, or None when nothing is left."""
    if not ws.history:
        return None
    key, oid, before = ws.history.pop()
    slot = ws.drafts.setdefault(key, {})
    if before is None:
        slot.pop(oid, None)
    else:
        slot[oid] = before
    if not slot:
        ws.drafts.pop(key, None)
        if key in ws.order:
            ws.order.remove(key)
    ws.pending.add(key)
    d = slot.get(oid)
    if d is not None and d.usable and d.mask is None:
        _predict_draft(ws, key[0], key[1], oid, model, window)
    return key


def reset_prompts(ws: Workspace) -> None:
    """Removes every prompt, preview and result (the loaded images and objects stay)."""
    ws.drafts.clear()
    ws.order.clear()
    ws.history.clear()
    ws.pending.clear()
    ws.clear_results()
    ws.run_info = None
    ws.correction_seconds = 0.0
    ws.session.clear("out")


# ---------------------------------------------------------------------------------------------- running
def _primary(ws: Workspace, scope: str, v_current: int) -> tuple[int, int]:
    here = ws.prompted_slices(v_current)
    if here:
        return here[0]
    if scope == "dataset":
        anywhere = ws.prompted_slices()
        if anywhere:
            return anywhere[0]
    where = "this case" if ws.n_volumes > 1 and scope != "dataset" else "the image"
    raise PromptError(f"Nothing to run from: click on the object (or draw a box) on {where} first.")


def _slice_prompt(ws: Workspace, v: int, k: int) -> SlicePrompt:
    objs = tuple(d.prompt(ws.object(oid)) for oid, d in sorted(ws.drafts.get((v, k), {}).items()) if d.usable)
    return SlicePrompt(objs, slice_index=k, volume_index=v)


def run(
    ws: Workspace,
    scope: str = "volume",
    strategy: str = "transfer",
    model: str = "auto",
    window: Any = "auto",
    v_current: int = 0,
    cancel: threading.Event | None = None,
) -> Iterator[RunProgress]:
    """Segments from the prompts: the prompted image(s), the current volume or the whole dataset.

    The first prompted slice of the current case seeds the run (any case for dataset scope); prompts
    on other slices of the covered cases are then applied as corrections (each re-propagates only
    its range). Results are stored slice by slice, so a cancelled run keeps what it finished.

    Args:
        ws: the workspace.
        scope: ``image`` / ``volume`` / ``dataset``.
        strategy: dataset strategy ``transfer`` or ``chain``.
        model: ``auto`` or a backend name.
        window: display window (what the model sees).
        v_current: the case the page shows.
        cancel: set to stop between slices.

    Yields:
        :class:`RunProgress` reports, the last with ``finished=True``.
    """
    from .zerogpu import segment  # the engine's segment; inside spaces.GPU on ZeroGPU

    if scope not in SCOPES:
        raise InputError(f"Unknown scope {scope!r}; use {', '.join(SCOPES)}.")
    if strategy not in STRATEGIES:
        raise InputError(f"Unknown strategy {strategy!r}; use {', '.join(STRATEGIES)}.")
    v0, k0 = _primary(ws, scope, v_current)
    prompt = _slice_prompt(ws, v0, k0)
    eng = ws.engine(model)
    ws.last_model = model or "auto"
    if scope == "image":
        volumes = sorted({v for v, _ in ws.prompted_slices()})
        total = len(ws.prompted_slices())
    elif scope == "volume":
        volumes, total = [v0], ws.metas[v0].n_slices
    else:
        volumes, total = list(range(ws.n_volumes)), sum(m.n_slices for m in ws.metas)
    t0 = time.perf_counter()
    info = RunInfo(model=model, scope=scope, strategy=strategy, volumes=volumes)
    ws.run_info = info
    ws.correction_seconds = 0.0
    if scope == "image":
        ws.clear_results([v for v in volumes])
    else:
        ws.clear_results(volumes)
    done = 0
    last = 0.0
    busy = _model_busy()
    busy.__enter__()
    try:
        if scope == "image":
            for v, k in ws.prompted_slices():
                _check(cancel)
                sp = _slice_prompt(ws, v, k)
                labels = np.zeros(ws.metas[v].shape[1:], np.uint8)
                for obj in sp.objects:
                    d = ws.drafts[(v, k)][obj.object_id]
                    if d.mask is None:
                        _predict_draft(ws, v, k, obj.object_id, model, window)
                    if d.mask is not None:
                        labels[d.mask & (labels == 0)] = obj.object_id
                ws.store(SliceResult(v, k, labels, prompted=True, volume_name=ws.metas[v].name))
                done += 1
                yield RunProgress(done, total, time.perf_counter() - t0, v, k, f"image {done}/{total}")
        else:
            for res in segment(
                ws.dataset(), prompt, scope=scope, engine=eng, window=window, strategy=strategy, cancel=cancel
            ):
                ws.store(res)
                done += 1
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S or done == total:
                    last = now
                    yield RunProgress(
                        done, total, now - t0, res.volume_index, res.slice_index,
                        f"{ws.metas[res.volume_index].name}: slice {res.slice_index + 1}",
                    )
            # other prompted slices inside the covered volumes act as corrections
            extra = [key for key in ws.prompted_slices() if key != (v0, k0) and key[0] in volumes]
            for key in extra:
                for p in _repropagate(ws, key, model, window, cancel, t0, done, total):
                    yield p
        ws.pending.clear()
    except CancelledError:
        info.cancelled = True
    finally:
        busy.__exit__(None, None, None)
        info.seconds = time.perf_counter() - t0
        info.slices = int(sum(ws.done[v].sum() for v in volumes if v in ws.done))
    yield RunProgress(
        info.slices, total, info.seconds, message="stopped" if info.cancelled else "done", finished=True
    )


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("The run was cancelled; the slices finished so far are kept.")


def _repropagate(
    ws: Workspace,
    key: tuple[int, int],
    model: str,
    window: Any,
    cancel: threading.Event | None,
    t0: float,
    done0: int,
    total: int,
) -> Iterator[RunProgress]:
    """Re-propagates the objects prompted on slice ``key`` over their range only.

    For each object prompted on slice ``c``, the range runs from ``c`` forward to the slice before the
    next slice where the user prompted that object (or the end), and backward likewise. Other objects'
    labels are left as they are.
    """
    from ..prompts import box_from_mask

    v, c = key
    eng = ws.engine(model)
    vol = ws.volume(v)
    n = ws.metas[v].n_slices
    done = done0
    for oid, d in sorted(ws.drafts.get(key, {}).items()):
        if not d.usable:
            continue
        if d.mask is None:
            _predict_draft(ws, v, c, oid, model, window)
        mask = d.mask if d.mask is not None else np.zeros(ws.metas[v].shape[1:], bool)
        others = [kk for vv, kk in ws.prompted_slices(v, oid) if kk != c]
        lo = max([kk + 1 for kk in others if kk < c], default=0)
        hi = min([kk - 1 for kk in others if kk > c], default=n - 1)
        obj = ws.object(oid)
        box = box_from_mask(mask, margin=0, shape=mask.shape)
        if box is None:  # nothing found on the prompted slice: the object ends there
            labels = np.zeros(mask.shape, np.uint8)
            ws.store(SliceResult(v, c, labels, prompted=True, volume_name=vol.name, n_slices=n), only=[oid])
            continue
        sp = SlicePrompt((ObjectPrompt(box=box, object_id=oid, name=obj.name),), slice_index=c, volume_index=v)
        for res in eng.segment_volume(
            vol, sp, volume_index=v, window=window, scope_slices=(lo, hi), cancel=cancel, seed_masks={oid: mask}
        ):
            ws.store(res, only=[oid])
            done += 1
            yield RunProgress(
                min(done, max(total, done)), max(total, done), time.perf_counter() - t0, v, res.slice_index,
                f"{obj.name}: correcting slice {res.slice_index + 1}",
            )
    ws.pending.discard(key)


def apply_corrections(
    ws: Workspace,
    model: str = "auto",
    window: Any = "auto",
    cancel: threading.Event | None = None,
) -> Iterator[RunProgress]:
    """Re-propagates from every slice prompted since the last run (only the affected ranges).

    Raises:
        PromptError: when nothing was run yet, or no prompt changed since.
    """
    if not ws.has_results():
        raise PromptError("Run a segmentation first; corrections refine its result.")
    keys = [key for key in ws.order if key in ws.pending]
    if not keys:
        raise PromptError("No correction to apply: click on a result slice to correct it first.")
    t0 = time.perf_counter()
    total = sum(ws.metas[v].n_slices for v, _ in keys)
    done = 0
    cancelled = False
    try:
        with _model_busy():
            for key in keys:
                if not ws.drafts.get(key):
                    ws.pending.discard(key)  # an undone prompt: nothing to re-run from it
                    continue
                for p in _repropagate(ws, key, model, window, cancel, t0, done, total):
                    done = p.done
                    yield p
    except CancelledError:
        cancelled = True
    secs = time.perf_counter() - t0
    ws.correction_seconds += secs
    yield RunProgress(done, max(done, 1), secs, message="stopped" if cancelled else "corrected", finished=True)


# ---------------------------------------------------------------------------------------------- results
def results_summary(ws: Workspace) -> dict[str, Any]:
    """Figures of the current result: per case, per slice (with references) and the prompt count.

    Returns:
        ``{"cases": [{"case", "slices", "dice", "jaccard", "flags"}...], "per_slice": [{"case", "slice",
        "dice"}...], "dice_mean", "jaccard_mean", "prompts", "per_slice_prompts", "saved_percent",
        "seconds", "slices", "has_reference", "model", "scope", "strategy", "cancelled"}``; Dice and
        Jaccard compare the union of all objects with the union of the reference labels, in 3D.
    """
    from ..metrics import dice, jaccard, per_slice as per_slice_dice

    info = ws.run_info
    cases: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] = []
    needed = 0
    has_ref = False
    for v in sorted(ws.done):
        covered = ws.done[v]
        if not covered.any():
            continue
        pred = np.asarray(ws.results[v]) > 0
        meta = ws.metas[v]
        ref_sel = ws.reference_mask(v)
        row: dict[str, Any] = {
            "case": meta.name,
            "slices": int(covered.sum()),
            "dice": None,
            "jaccard": None,
            "flags": sum(1 for (vv, _k), f in ws.flags.items() if vv == v and f),
        }
        if ref_sel is not None:
            has_ref = True
            ref = ref_sel
            row["dice"] = float(dice(pred, ref))
            row["jaccard"] = float(jaccard(pred, ref))
            ps = per_slice_dice(pred, ref)
            present = ref.any(axis=(1, 2)) | pred.any(axis=(1, 2))
            for k in np.flatnonzero(present & covered):
                per_slice.append({"case": meta.name, "slice": int(k) + 1, "dice": float(ps[k])})
            needed += int(sum(1 for k in np.flatnonzero(covered) if ref[k].any()))
        else:
            needed += int(sum(1 for k in np.flatnonzero(covered) if pred[k].any()))
        cases.append(row)
    prompts = len(ws.prompted_slices())
    dices = [c["dice"] for c in cases if c["dice"] is not None]
    jacs = [c["jaccard"] for c in cases if c["jaccard"] is not None]
    saved = 100.0 * (1.0 - prompts / needed) if needed > 0 else None
    return {
        "cases": cases,
        "per_slice": per_slice,
        "dice_mean": float(np.mean(dices)) if dices else None,
        "jaccard_mean": float(np.mean(jacs)) if jacs else None,
        "prompts": prompts,
        "per_slice_prompts": needed,
        "saved_percent": saved,
        "seconds": (info.seconds if info else 0.0) + ws.correction_seconds,
        "slices": int(sum(d.sum() for d in ws.done.values())),
        "has_reference": has_ref,
        "model": info.model if info else "",
        "scope": info.scope if info else "",
        "strategy": info.strategy if info else "",
        "cancelled": bool(info.cancelled) if info else False,
        "reference_labels": list(ws.ref_labels) if ws.ref_labels else "all",
    }


def set_reference_labels(ws: Workspace, text: str | None) -> tuple[int, ...] | None:
    """Chooses which reference labels the metrics compare with (``"1,2"``; empty = every non-zero label).

    Raises:
        InputError: when the text is not a list of integers 1..65535.
    """
    text = (text or "").strip()
    if not text:
        ws.ref_labels = None
        return None
    try:
        labels = tuple(sorted({int(t) for t in re.split(r"[,\s;]+", text) if t}))
    except ValueError:
        raise InputError(f"Reference labels {text!r}: give label numbers separated by commas, e.g. 1,2.") from None
    if not labels or any(not 1 <= x <= 65535 for x in labels):
        raise InputError(f"Reference labels {text!r}: give numbers from 1 up, e.g. 1,2 (empty = all).")
    ws.ref_labels = labels
    return labels


def write_downloads(ws: Workspace, summary: dict[str, Any] | None = None, window: Any = "auto") -> list[Path]:
    """Writes the result files into the session's ``out/`` folder and returns their paths.

    Files: the masks as NIfTI on the input's own grid and affine (one file, or a zip of one per
    case), PNG masks in a zip for 2D images, DICOM-SEG for DICOM input, ``metrics.json`` always and
    ``metrics.csv`` with references, and an overlay GIF of the first segmented volume.
    """
    from ..io import writers

    summary = summary if summary is not None else results_summary(ws)
    out = ws.session.subdir("out", fresh=True)
    files: list[Path] = []
    segmented = [v for v in sorted(ws.done) if ws.done[v].any()]
    if not segmented:
        return files
    vols3d = [v for v in segmented if ws.metas[v].n_slices > 1 or ws.metas[v].source_format in ("nifti", "dicom")]
    imgs2d = [v for v in segmented if v not in vols3d]
    nifti_paths = []
    for v in vols3d:
        p = out / f"{_safe(ws.metas[v].name)}_mask.nii.gz"
        writers.write_mask_nifti(np.asarray(ws.results[v]), ws.volume(v), p)
        nifti_paths.append(p)
    if len(nifti_paths) == 1:
        files.append(nifti_paths[0])
    elif nifti_paths:
        files.append(_zip(out / "masks_nifti.zip", nifti_paths))
    if imgs2d:
        items = [(ws.volume(v).slice_name(0), np.asarray(ws.results[v][0])) for v in imgs2d]
        p = out / "masks_png.zip"
        writers.write_png_masks_zip(items, p)
        files.append(p)
    dicom = [v for v in segmented if ws.metas[v].source_format == "dicom" and ws.metas[v].n_slices > 1]
    seg_paths = []
    for v in dicom:
        p = out / f"{_safe(ws.metas[v].name)}_seg.dcm"
        try:
            names = {o.object_id: o.name for o in ws.objects}
            writers.write_dicom_seg(np.asarray(ws.results[v]), ws.volume(v), p, segment_names=names)
            seg_paths.append(p)
        except PromptOnceError as exc:
            ws.notes.append(f"DICOM-SEG for {ws.metas[v].name} was not written: {exc}")
    if len(seg_paths) == 1:
        files.append(seg_paths[0])
    elif seg_paths:
        files.append(_zip(out / "masks_dicom_seg.zip", seg_paths))
    metrics_json = {
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
    p = out / "metrics.json"
    writers.write_json(metrics_json, p)
    files.append(p)
    if summary["has_reference"]:
        p = out / "metrics.csv"
        writers.write_metrics_csv(summary["cases"], p)
        files.append(p)
    gif_v = vols3d[0] if vols3d else None
    if gif_v is not None:
        p = out / f"{_safe(ws.metas[gif_v].name)}_overlay.gif"
        writers.write_overlay_gif(ws.volume(gif_v), np.asarray(ws.results[gif_v]), p, window=window)
        files.append(p)
    elif imgs2d:
        shapes = {ws.metas[v].shape for v in imgs2d}
        if len(shapes) == 1:
            stack = Volume(np.concatenate([ws.volume(v).array for v in imgs2d]), name="images")
            labels = np.concatenate([np.asarray(ws.results[v]) for v in imgs2d])
            p = out / "images_overlay.gif"
            writers.write_overlay_gif(stack, labels, p, window=window)
            files.append(p)
    return files


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _zip(path: Path, members: Sequence[Path]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for m in members:
            zf.write(m, arcname=m.name)
    for m in members:
        m.unlink(missing_ok=True)
    return path


def summary_markdown(summary: dict[str, Any]) -> str:
    """The metrics panel's text: overall Dice/Jaccard, prompts used vs a per-slice workflow, time."""
    if not summary["cases"]:
        return "No result yet: click on the object, then **Run**."
    lines = []
    state = " (stopped: the slices finished are kept)" if summary["cancelled"] else ""
    lines.append(
        f"**{summary['slices']} image(s)/slice(s) segmented** in {summary['seconds']:.1f} s "
        f"with `{summary['model']}`, scope *{summary['scope']}*{state}."
    )
    if summary["has_reference"] and summary["dice_mean"] is not None:
        labels = summary.get("reference_labels", "all")
        which = "all reference labels" if labels == "all" else "reference label(s) " + ", ".join(map(str, labels))
        lines.append(
            f"**Dice {summary['dice_mean']:.3f}** · Jaccard {summary['jaccard_mean']:.3f} "
            f"(mean over {sum(c['dice'] is not None for c in summary['cases'])} case(s); all objects vs {which})."
        )
    else:
        lines.append("Upload reference masks to see Dice and Jaccard.")
    if summary["saved_percent"] is not None:
        basis = "with the object in the reference" if summary["has_reference"] else "with the object found"
        lines.append(
            f"**Prompts: {summary['prompts']}** vs {summary['per_slice_prompts']} for a per-slice workflow "
            f"(one per slice {basis}): **{summary['saved_percent']:.2f}% fewer**."
        )
    return "\n\n".join(lines)


def write_json_text(obj: Any) -> str:
    """``obj`` as pretty JSON (for tests and the API)."""
    return json.dumps(obj, indent=2, default=float)


def progress_text(p: RunProgress) -> str:
    """``"12 / 40 slices · 5 s left"``-style progress line."""
    if p.finished:
        verb = {"stopped": "Stopped", "corrected": "Corrections applied"}.get(p.message, "Done")
        return f"{verb}: {p.done} slice(s) in {p.seconds:.1f} s."
    eta = p.eta_s
    left = f" · {eta:.0f} s left" if eta is not None else ""
    return f"{p.done} / {p.total} slices{left} · {p.message}"

