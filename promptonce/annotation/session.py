"""The :class:`AnnotationSession` (see :mod:`promptonce.annotation`)."""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CancelledError, InputError, ModelError, PromptError, check_cancel
from ..types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, SliceResult, Volume
from . import results
from .state import (
    MODES,
    SCOPES,
    STRATEGIES,
    VOLUME_CACHE_BYTES,
    Action,
    CaseInfo,
    Draft,
    Images,
    Mode,
    ObjectInfo,
    Preview,
    Reference,
    RunInfo,
    RunProgress,
    Scope,
    correction_range,
    slices_in_scope,
)

if TYPE_CHECKING:  # the engine (and through it the backends) loads on first use
    from ..engine import Engine

__all__ = ["AnnotationSession"]

log = logging.getLogger(__name__)


class AnnotationSession:
    """One person's interactive segmentation of a dataset (see the module docstring).

    Args:
        images: a Dataset, a Volume, a list of Volumes, or file/folder path(s) (read with
            :func:`promptonce.io.readers.load_dataset`).
        references: one reference label map per case, in case order (a file, an array
            ``(slices, rows, cols)``, a Volume, or None), for :meth:`score`; or None.
        model: ``auto`` or a backend name; methods take ``model=`` to override it per call.
        window: display window the model sees (preset name, ``(width, level)`` or ``auto``).
        workdir: a folder for memory-mapped result maps (None: results in memory).
        quota: called with the bytes a result map will take before it is created; raise
            (e.g. :class:`~promptonce.errors.TooLargeError`) to refuse.
        max_voxels: the voxel budget of every image and reference read (None: the readers' default).
        images_as: how several 2D image files are read when ``images`` are paths: ``auto`` / ``set`` / ``stack``.
        engine_cache: slice embeddings each engine keeps (about 4 MB each).
        cases: the cases' :class:`CaseInfo` when the caller has them (skips reading every case once).
        segmenter: what runs the volume and dataset scopes, with :func:`promptonce.engine.segment`'s
            signature (default: that function; the web app passes one that runs it on a ZeroGPU slot).

    Raises:
        InputError: no image, references not one per case.
    """

    def __init__(
        self,
        images: Images,
        references: Sequence[Reference] | None = None,
        *,
        model: str = "auto",
        window: Any = "auto",
        workdir: str | Path | None = None,
        quota: Callable[[int], None] | None = None,
        max_voxels: int | None = None,
        images_as: str = "auto",
        engine_cache: int = 12,
        cases: Sequence[CaseInfo] | None = None,
        segmenter: Callable[..., Iterator[SliceResult]] | None = None,
    ) -> None:
        from ..io.readers import DEFAULT_MAX_VOXELS

        self.max_voxels = int(max_voxels) if max_voxels is not None else DEFAULT_MAX_VOXELS
        self._dataset = _as_dataset(images, images_as, self.max_voxels)
        if len(self._dataset) == 0:
            raise InputError("No image was given; pass a Volume, a Dataset or image/volume files.")
        self.model = model or "auto"
        self.window = window
        self.workdir = Path(workdir) if workdir is not None else None
        self.quota = quota
        self.engine_cache = int(engine_cache)
        self.segmenter = segmenter
        self._volumes: OrderedDict[int, Volume] = OrderedDict()
        self._refs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._ref_names: dict[int, dict[int, str]] = {}
        if cases is None:
            infos = []
            for i in range(len(self._dataset)):
                vol = self.read_case(i)
                infos.append(CaseInfo.of(vol))
                if i == 0:
                    self._volumes[0] = vol  # keep the first case loaded
            cases = infos
        self.cases: list[CaseInfo] = list(cases)
        refs = list(references) if references is not None else [None] * len(self.cases)
        if len(refs) != len(self.cases):
            raise InputError(
                f"{len(refs)} reference(s) for {len(self.cases)} case(s): give one per case, in case order "
                "(None where a case has none)."
            )
        self.references: list[Reference] = refs
        self.objects: list[ObjectInfo] = [ObjectInfo(1, "object 1")]
        self.active: int = 1
        self.drafts: dict[tuple[int, int], dict[int, Draft]] = {}
        self.order: list[tuple[int, int]] = []  # slices in the order they were first prompted
        self.history: list[Action] = []
        self.pending: set[tuple[int, int]] = set()  # prompts changed since the last run/correction
        self.results: dict[int, np.ndarray] = {}
        self.done: dict[int, np.ndarray] = {}
        self.flags: dict[tuple[int, int], list[str]] = {}
        #: per (case, slice): {object id: confidence 0..1} (the engine's quality estimate, else the model's score)
        self.confidence: dict[tuple[int, int], dict[int, float]] = {}
        self.run_info: RunInfo | None = None
        self.correction_seconds = 0.0
        self.engines: dict[str, Engine] = {}
        self._engine_lock = threading.Lock()
        #: the model of the last prompt or run (None before the first use: nothing loads a model before)
        self.last_model: str | None = None
        #: messages for the person (e.g. a model fell back); a front end shows and clears them
        self.notes: list[str] = []
        #: reference labels scored (None = every non-zero label)
        self.ref_labels: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ cases
    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def read_case(self, case: int) -> Volume:
        """Reads case ``case`` from the dataset (uncached). Front ends may override it to reword errors."""
        return self._dataset[case]

    def read_reference(self, source: str | Path, image: Volume) -> Volume:
        """Reads a reference file for ``image`` (uncached). Front ends may override it to reword errors."""
        from ..io.readers import load_reference

        return load_reference(source, image, max_voxels=self.max_voxels)

    def volume(self, case: int) -> Volume:
        """Case ``case``, read on first use and kept while :data:`VOLUME_CACHE_BYTES` allows."""
        if not 0 <= case < self.n_cases:
            raise InputError(f"Case {case + 1} does not exist; this dataset has {self.n_cases} case(s).")
        vol = self._volumes.get(case)
        if vol is not None:
            self._volumes.move_to_end(case)
            return vol
        vol = self.read_case(case)
        self._volumes[case] = vol
        evicted = False
        while len(self._volumes) > 1 and sum(x.array.nbytes for x in self._volumes.values()) > VOLUME_CACHE_BYTES:
            self._volumes.popitem(last=False)
            evicted = True
        if evicted:
            # engines cache embeddings by volume identity: drop them with the volume they belong to
            for eng in self.engines.values():
                eng.clear_cache()
        return vol

    def dataset(self) -> Dataset:
        """The dataset as the engine sees it: cases served from this session's cache."""
        return Dataset([(c.name, partial(self.volume, i)) for i, c in enumerate(self.cases)])

    def reference(self, case: int) -> np.ndarray | None:
        """The reference label map of ``case`` as uint8 ``(slices, rows, cols)``, or None."""
        if not 0 <= case < len(self.references) or self.references[case] is None:
            return None
        ref = self._refs.get(case)
        if ref is None:
            src = self.references[case]
            if isinstance(src, Volume):
                ref = np.asarray(src.array)
                self._ref_names[case] = dict(src.label_names)
            elif isinstance(src, np.ndarray):
                ref = src
            else:
                ref_vol = self.read_reference(src, self.volume(case))  # type: ignore[arg-type]
                ref = np.asarray(ref_vol.array)
                self._ref_names[case] = dict(ref_vol.label_names)
            info = self.cases[case]
            if ref.shape != info.shape:
                raise InputError(
                    f"{info.name}: the reference mask has shape {ref.shape}, the image "
                    f"{info.shape}; use the mask made for this image."
                )
            ref = ref.astype(np.uint8) if ref.max(initial=0) < 256 else (ref > 0).astype(np.uint8)
            self._refs[case] = ref
            while len(self._refs) > 2:
                self._refs.popitem(last=False)
        return ref

    def reference_label_names(self) -> dict[int, str]:
        """``{label value: name}`` of the references read so far (the file's own names, or a file beside it)."""
        out: dict[int, str] = {}
        for case in sorted(self._ref_names):
            for k, v in self._ref_names[case].items():
                out.setdefault(int(k), str(v))
        if not out:
            for case, src in enumerate(self.references):
                if src is not None and case not in self._ref_names:
                    try:
                        self.reference(case)
                    except InputError:
                        continue
                    out.update(self._ref_names.get(case, {}))
                    break
        return out

    def set_reference_selection(self, text: str | None) -> tuple[int, ...] | None:
        """Chooses the reference labels scored from what a person typed: numbers or names (``"liver, 2"``).

        Raises:
            InputError: a part is neither a label number nor a (unique) label name.
        """
        from ..io.labelnames import parse_label_selection

        return self.set_reference_labels(parse_label_selection(text, self.reference_label_names()))

    def reference_mask(self, case: int) -> np.ndarray | None:
        """bool ``(slices, rows, cols)``: the reference labels scored (all non-zero by default), or None."""
        ref = self.reference(case)
        if ref is None:
            return None
        return np.isin(ref, self.ref_labels) if self.ref_labels else ref > 0

    def set_reference_labels(self, labels: Sequence[int] | None) -> tuple[int, ...] | None:
        """Chooses which reference labels :meth:`score` compares with (None or empty: every non-zero label).

        Raises:
            InputError: a label outside 1..65535.
        """
        if not labels:
            self.ref_labels = None
            return None
        out = tuple(sorted({int(x) for x in labels}))
        if any(not 1 <= x <= 65535 for x in out):
            raise InputError(f"Reference labels {list(out)}: give numbers from 1 to 65535 (none = all).")
        self.ref_labels = out
        return out

    def _slice(self, case: int, slice_index: int | None) -> int:
        if not 0 <= case < self.n_cases:
            raise InputError(f"Case {case + 1} does not exist; this dataset has {self.n_cases} case(s).")
        n = self.cases[case].n_slices
        k = 0 if slice_index is None else int(slice_index)
        return min(max(k, 0), n - 1)

    # ------------------------------------------------------------------ objects
    def object(self, object_id: int) -> ObjectInfo:
        """The object with id ``object_id``.

        Raises:
            PromptError: no such object.
        """
        for o in self.objects:
            if o.object_id == object_id:
                return o
        raise PromptError(f"Object {object_id} does not exist; add it first.")

    def has_object(self, object_id: int) -> bool:
        return any(o.object_id == object_id for o in self.objects)

    def add_object(self, name: str = "") -> int:
        """Adds an object (the next free label id), makes it active and returns its id.

        Raises:
            PromptError: 255 objects exist already.
        """
        used = {o.object_id for o in self.objects}
        if len(used) >= 255:
            raise PromptError("255 objects is the most a label map can hold; remove some first.")
        oid = next(i for i in range(1, 256) if i not in used)
        name = re.sub(r"\s+", " ", (name or "").strip())[:40] or f"object {oid}"
        if any(o.name == name for o in self.objects):
            name = f"{name} ({oid})"
        self.history.append(Action("object", -1, -1, oid, None, previous_active=self.active))
        self.objects.append(ObjectInfo(oid, name))
        self.active = oid
        return oid

    def set_active(self, object_id: int) -> None:
        """Makes ``object_id`` the object new prompts belong to."""
        self.object(int(object_id))
        self.active = int(object_id)

    # ------------------------------------------------------------------ prompts
    def prompted_slices(self, case: int | None = None, object_id: int | None = None) -> list[tuple[int, int]]:
        """``(case, slice)`` of every slice holding a usable prompt (of ``object_id``, in ``case``), in prompting order."""
        out = []
        for key in self.order:
            if case is not None and key[0] != case:
                continue
            drafts = self.drafts.get(key, {})
            if any(d.usable and (object_id is None or i == object_id) for i, d in drafts.items()):
                out.append(key)
        return out

    def prompt_count(self) -> int:
        """The prompts the person gave and kept: every click (object or background) and every box.

        Two clicks on two lungs are 2 prompts, a box is 1 (its two corners are one box); undone
        prompts do not count.
        """
        return sum(len(d.points) + (d.box is not None) for slot in self.drafts.values() for d in slot.values())

    def click(
        self,
        case: int,
        slice_index: int,
        x: float,
        y: float,
        mode: Mode = "positive",
        *,
        object_id: int | None = None,
        model: str | None = None,
        window: Any = None,
    ) -> Preview:
        """Adds a click (or a box corner) of an object on one slice and predicts its preview.

        Args:
            case, slice_index: where (the slice index is clamped into the case).
            x, y: image pixels (clamped into the image).
            mode: ``positive`` / ``negative`` click, or ``box`` (two calls: opposite corners).
            object_id: the object (default: the active one).
            model, window: override the session's model / window for this prompt.

        Returns:
            The :class:`Preview`: the mask at once (None after a first box corner or background clicks only).
        """
        if mode not in MODES:
            raise InputError(f"Unknown click mode {mode!r}; use {', '.join(MODES)}.")
        k = self._slice(case, slice_index)
        _, rows, cols = self.cases[case].shape
        x = min(max(float(x), 0.0), cols - 1.0)
        y = min(max(float(y), 0.0), rows - 1.0)
        oid = self.active if object_id is None else int(object_id)
        if mode == "negative" and object_id is None:
            oid = self._object_at(case, k, x, y) or oid  # a background click removes what it lands on
        obj = self.object(oid)
        key = (case, k)
        slot = self.drafts.setdefault(key, {})
        before = copy.deepcopy(slot.get(oid))
        d = slot.setdefault(oid, Draft())
        if mode == "box":
            if d.corner is None:
                d.corner = (x, y)
                self.history.append(Action("corner", case, k, oid, before))
                self._note_order(key)
                msg = f"Box for {obj.name}: first corner set at ({x:.0f}, {y:.0f}); click the opposite corner."
                return Preview(case, k, oid, d.mask, d.score, message=msg)
            (x0, y0), d.corner = d.corner, None
            if abs(x - x0) < 1 and abs(y - y0) < 1:
                self.history.append(Action("same_corner", case, k, oid, before))
                msg = "The two corners are the same pixel; click the first corner again, then the opposite one."
                return Preview(case, k, oid, d.mask, d.score, message=msg)
            d.box = Box(min(x0, x), min(y0, y), max(x0, x), max(y0, y))
            kind = "box"
        else:
            d.points.append(Point(x, y, 1 if mode == "positive" else 0))
            d.corner = None  # a click ends a box being drawn (undo brings the corner back)
            kind = "point"
        self.history.append(Action(kind, case, k, oid, before))
        self._note_order(key)
        self.pending.add(key)
        self.last_model = model or self.model
        return self._predict(case, k, oid, model, window)

    def _object_at(self, case: int, k: int, x: float, y: float) -> int | None:
        """The object shown at image pixel ``(x, y)`` of slice ``k`` (result or preview), or None."""
        labels = self.slice_labels(case, k)
        r = min(max(int(round(y)), 0), labels.shape[0] - 1)
        c = min(max(int(round(x)), 0), labels.shape[1] - 1)
        oid = int(labels[r, c])
        return oid if oid and self.has_object(oid) else None

    def add_point(
        self, case: int, slice_index: int, x: float, y: float, positive: bool = True, **kwargs: Any
    ) -> Preview:
        """Adds an object (``positive``) or background click at image pixel ``(x, y)``; see :meth:`click`."""
        return self.click(case, slice_index, x, y, "positive" if positive else "negative", **kwargs)

    def add_box(self, case: int, slice_index: int, box: Box, **kwargs: Any) -> Preview:
        """Sets the object's box on one slice (image pixels, XYXY): two box corners; see :meth:`click`.

        Undo removes the whole box in two steps (the second corner, then the first).
        """
        self.click(case, slice_index, box.x0, box.y0, "box", **kwargs)
        return self.click(case, slice_index, box.x1, box.y1, "box", **kwargs)

    def drag_box(self, case: int, slice_index: int, box: Box, **kwargs: Any) -> Preview:
        """Sets the object's box on one slice in one step (a box drawn by dragging; image pixels, XYXY).

        A first corner left pending is dropped; undo removes the whole box in one step.
        """
        oid = self.active if kwargs.get("object_id") is None else int(kwargs["object_id"])
        key = (case, self._slice(case, slice_index))
        d = self.drafts.get(key, {}).get(oid)
        before = copy.deepcopy(d)
        if d is not None:
            d.corner = None
        n = len(self.history)
        self.click(case, slice_index, box.x0, box.y0, "box", **kwargs)
        p = self.click(case, slice_index, box.x1, box.y1, "box", **kwargs)
        last = self.history[-1]
        del self.history[n:]
        self.history.append(Action(last.kind, last.case, last.slice_index, last.object_id, before))
        return p

    def undo(self, *, model: str | None = None, window: Any = None) -> Action | None:
        """Steps back one action, whatever it was (a click, a box corner, a box).

        Returns:
            The action undone, or None when there is nothing left to undo.
        """
        if not self.history:
            return None
        act = self.history.pop()
        if act.kind == "object":
            self._undo_object(act)
            return act
        key, oid = act.key, act.object_id
        slot = self.drafts.setdefault(key, {})
        if act.before is None:
            slot.pop(oid, None)
        else:
            slot[oid] = act.before
        if not slot:
            self.drafts.pop(key, None)
            if key in self.order:
                self.order.remove(key)
        self.pending.add(key)
        d = slot.get(oid)
        if d is not None and d.usable and d.mask is None:
            self._predict(key[0], key[1], oid, model, window)
        return act

    def _undo_object(self, act: Action) -> None:
        """Removes an added object with its prompts and results (its history entries go too)."""
        oid = act.object_id
        self.objects = [o for o in self.objects if o.object_id != oid] or [ObjectInfo(1, "object 1")]
        for key in list(self.drafts):
            if self.drafts[key].pop(oid, None) is not None:
                self.pending.add(key)
            if not self.drafts[key]:
                del self.drafts[key]
                if key in self.order:
                    self.order.remove(key)
        self.history = [a for a in self.history if a.object_id != oid]
        for arr in self.results.values():
            arr[np.asarray(arr) == oid] = 0
        prev = act.previous_active
        self.active = prev if prev is not None and self.has_object(prev) else self.objects[0].object_id

    def reset(self) -> None:
        """Removes every prompt, preview and result (the cases and objects stay)."""
        self.drafts.clear()
        self.order.clear()
        self.history.clear()
        self.pending.clear()
        self.clear_results()
        self.run_info = None
        self.correction_seconds = 0.0

    def preview(self, case: int, slice_index: int, *, model: str | None = None, window: Any = None) -> np.ndarray:
        """The slice's previews as a uint8 label map ``(rows, cols)`` (predicting any not predicted yet)."""
        k = self._slice(case, slice_index)
        for oid, d in sorted(self.drafts.get((case, k), {}).items()):
            if d.usable and d.mask is None:
                self._predict(case, k, oid, model, window)
        labels = np.zeros(self.cases[case].shape[1:], np.uint8)
        for oid, d in sorted(self.drafts.get((case, k), {}).items()):
            if d.mask is not None:
                labels[d.mask & (labels == 0)] = oid
        return labels

    def slice_labels(self, case: int, slice_index: int) -> np.ndarray:
        """What slice ``slice_index`` shows now: uint8 ``(rows, cols)``, the result with newer previews over it."""
        k = self._slice(case, slice_index)
        res = self.results.get(case)
        labels = np.array(res[k]) if res is not None else np.zeros(self.cases[case].shape[1:], np.uint8)
        for oid, d in self.drafts.get((case, k), {}).items():
            if d.mask is not None and ((case, k) in self.pending or res is None or not self.done[case][k]):
                labels[labels == oid] = 0
                labels[d.mask & (labels == 0)] = oid
        return labels

    def _note_order(self, key: tuple[int, int]) -> None:
        if key not in self.order:
            self.order.append(key)

    def _predict(self, case: int, k: int, oid: int, model: str | None, window: Any) -> Preview:
        """Predicts the preview of one draft.

        The refinement rule: on a slice that has a result, clicks inside the object's result box
        (3 px margin) refine that result (clicks and the box go together to a model that takes both);
        a click outside it means another place and is taken as a fresh prompt.
        """
        d = self.drafts[(case, k)][oid]
        obj = self.object(oid)
        model = model or self.model
        window = self.window if window is None else window
        result_box = self._result_box(case, k, oid) if d.box is None else None
        if not d.usable and result_box is None:
            d.mask = None
            msg = f"{obj.name}: add a click on the object (positive) or a box; background clicks only refine it."
            return Preview(case, k, oid, None, message=msg)
        eng = self.engine(model)
        vol = self.volume(case)
        prompt = d.prompt(obj)
        t0 = time.perf_counter()
        box = result_box
        cavities: dict[int, np.ndarray] = {}  # filled when the box is taken for a box around a wall
        if box is not None and all(box.x0 <= p.x <= box.x1 and box.y0 <= p.y <= box.y1 for p in d.points if p.label == 1):
            corr = ObjectPrompt(points=prompt.points, box=box, object_id=oid, name=obj.name)
            mask, score = self._point_engine(model, eng).predict_object(vol, k, corr, window)
        else:
            others = tuple(p for o, od in self.drafts[(case, k)].items() if o != oid for p in od.points if p.label == 1)
            mask, score = eng.predict_object(vol, k, prompt, window, avoid=others, cavities=cavities)
        d.mask, d.score = _without_background(np.asarray(mask, bool), d.points), float(score)
        secs = time.perf_counter() - t0
        area = int(d.mask.sum())
        if area == 0:
            msg = f"{obj.name}: the model found nothing there; click inside the object or draw a box around it."
        else:
            msg = f"{obj.name}: preview {area} px, confidence {score:.2f} ({secs * 1000:.0f} ms)."
            from ..engine.quality import inside_box_flag, unsure_seed_flag
            from ..engine.walls import ring_hint, wall_flag

            doubt = inside_box_flag(obj.name, d.mask, d.box) or unsure_seed_flag(obj.name, d.score)
            if cavities:
                doubt = wall_flag(obj.name) if doubt is None else f"{doubt}. {wall_flag(obj.name)}"
            elif doubt is None and eng.config.box_walls:
                doubt = ring_hint(obj.name, d.mask, d.box)
            if doubt is not None:
                msg += f" {doubt}."
        return Preview(case, k, oid, d.mask, d.score, secs, msg)

    def _result_box(self, case: int, k: int, oid: int) -> Box | None:
        """The box (3 px margin) of object ``oid``'s current result on slice ``k``, or None."""
        from ..prompts import box_from_mask

        res = self.results.get(case)
        if res is None or not self.done[case][k]:
            return None
        current = np.asarray(res[k]) == oid
        return box_from_mask(current, margin=3, shape=current.shape) if current.any() else None

    # ------------------------------------------------------------------ models
    def engine(self, model: str | None = None) -> Engine:
        """This session's :class:`~promptonce.engine.Engine` for ``model`` (the model itself loads once per process)."""
        with self._engine_lock:  # a front end's warm-up thread may ask at the same time
            return self._engine(model or self.model)

    def _engine(self, model: str) -> Engine:
        eng = self.engines.get(model)
        if eng is None:
            from ..engine import make_engine

            try:
                eng = make_engine(None, model, "auto")
            except ModelError as exc:
                # the click helper (MobileSAM) may be missing while the box model works
                try:
                    eng = make_engine(None, model, None)
                except ModelError:
                    raise exc from None
                self.notes.append(f"Clicks are unavailable with {model} here ({exc}); draw boxes.")
            eng.cache_size = self.engine_cache  # bound the memory of one session
            eng.cache.pin_limit = self.engine_cache  # and what a dataset run holds for its exemplar pass
            self.engines[model] = eng
        return eng

    def _point_engine(self, model: str, eng: Engine) -> Engine:
        """An engine whose model takes clicks and boxes together (for corrections), or ``eng`` itself."""
        if eng.backend.info.points and eng.backend.info.boxes:
            return eng
        clicker = getattr(eng, "click_backend", None)
        if clicker is None or not (clicker.info.points and clicker.info.boxes):
            return eng
        key = f"{model}#points"
        pe = self.engines.get(key)
        if pe is None:
            from ..engine import Engine

            pe = Engine(clicker, cache_size=self.engine_cache)
            self.engines[key] = pe
        return pe

    def close(self) -> None:
        """Drops the engines' embeddings and the results (the session is not used afterwards)."""
        for eng in self.engines.values():
            eng.clear_cache()
        self.results.clear()

    # ------------------------------------------------------------------ results
    def result(self, case: int, create: bool = False) -> np.ndarray | None:
        """The result label map of ``case``: uint8 ``(slices, rows, cols)``, or None before any result."""
        arr = self.results.get(case)
        if arr is None and create:
            shape = self.cases[case].shape
            if self.quota is not None:
                self.quota(int(np.prod(shape)))
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
                path = self.workdir / f"{case}.npy"
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
            else:
                arr = np.zeros(shape, np.uint8)
            self.results[case] = arr
            self.done[case] = np.zeros(shape[0], bool)
        return arr

    def has_results(self) -> bool:
        return any(d.any() for d in self.done.values())

    def store(self, res: SliceResult, only: Sequence[int] | None = None) -> None:
        """Writes one slice result into the result maps (only objects ``only`` when given)."""
        arr = self.result(res.volume_index, create=True)
        if arr is None:  # pragma: no cover - created above
            raise RuntimeError("no result map")
        k = res.slice_index
        key = (res.volume_index, k)
        ids = [int(i) for i in np.unique(res.labels) if i] if only is None else [int(i) for i in only]
        conf = {
            oid: float(res.confidence if res.confidence is not None else res.scores[oid])
            for oid in ids
            if res.confidence is not None or res.scores.get(oid) is not None
        }
        if not conf and res.confidence is not None and res.flags:
            conf = {0: float(res.confidence)}  # a slice where an object was lost: the slice's own confidence
        if only is None:
            self.confidence[key] = conf
        else:
            kept_conf = {o: c for o, c in self.confidence.get(key, {}).items() if o not in only}
            self.confidence[key] = {**kept_conf, **conf}
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

    def clear_results(self, cases: Sequence[int] | None = None) -> None:
        for v in list(self.results) if cases is None else cases:
            if v in self.results:
                self.results[v][:] = 0
                self.done[v][:] = False
            for key in [key for key in self.flags if key[0] == v]:
                del self.flags[key]
            for key in [key for key in self.confidence if key[0] == v]:
                del self.confidence[key]

    def _check_set(self, volumes: Sequence[int]) -> None:
        """Flags the cases whose objects are out of proportion with the rest of the set
        (:func:`~promptonce.engine.set_check.proportion_flags`), on each case's slice where its objects
        cover the most pixels."""
        from ..engine.set_check import object_areas, proportion_flags

        areas: dict[int, dict[int, int]] = {}
        where: dict[int, int] = {}
        for v in volumes:
            arr = self.results.get(v)
            if arr is None or not self.done[v].any():
                continue
            areas[v] = object_areas(arr)
            where[v] = int(np.argmax((np.asarray(arr) != 0).reshape(arr.shape[0], -1).sum(axis=1)))
        names = {oid: self.object(oid).name for oid in {o for a in areas.values() for o in a} if self.has_object(oid)}
        for v, extra in proportion_flags(areas, names).items():
            key = (v, where[v])
            self.flags[key] = [*self.flags.get(key, []), *extra]

    def flagged(self) -> list[tuple[int, int, str]]:
        """``(case, slice, text)`` for every flagged slice, in order."""
        return [(v, k, "; ".join(f)) for (v, k), f in sorted(self.flags.items()) if f]

    # ------------------------------------------------------------------ running
    def _primary(self, scope: str, case: int) -> tuple[int, int]:
        here = self.prompted_slices(case)
        if here:
            return here[0]
        if scope == "dataset":
            anywhere = self.prompted_slices()
            if anywhere:
                return anywhere[0]
        where = "this case" if self.n_cases > 1 and scope != "dataset" else "the image"
        raise PromptError(f"Nothing to run from: click on the object (or draw a box) on {where} first.")

    def _slice_prompt(self, case: int, k: int) -> SlicePrompt:
        drafts = sorted(self.drafts.get((case, k), {}).items())
        objs = tuple(d.prompt(self.object(oid)) for oid, d in drafts if d.usable)
        return SlicePrompt(objs, slice_index=k, volume_index=case)

    def run(
        self,
        scope: Scope = "volume",
        strategy: str = "transfer",
        case: int = 0,
        *,
        model: str | None = None,
        window: Any = None,
        cancel: threading.Event | None = None,
        progress_every_s: float = 0.4,
    ) -> Iterator[RunProgress]:
        """Segments from the prompts: the prompted image(s), the prompted volume or the whole dataset.

        The first prompted slice of ``case`` seeds the run (of any case for dataset scope); prompts
        on other slices of the covered cases are then applied as corrections (each re-propagates
        only its range, :func:`correction_range`). Image scope takes each prompted slice's preview
        through the engine's one-slice walk. Results are stored slice by slice, so a cancelled run
        keeps what it finished.

        Args:
            scope: ``image`` / ``volume`` / ``dataset``.
            strategy: dataset strategy ``transfer`` or ``chain``.
            case: the case whose prompt seeds the run.
            model, window: override the session's model / window.
            cancel: set it to stop between slices (the last report then says ``stopped``).
            progress_every_s: the least time between two progress reports (the last one always comes).

        Yields:
            :class:`RunProgress` reports, the last with ``finished=True``.

        Raises:
            InputError: unknown scope or strategy.
            PromptError: nothing usable to run from.
        """
        from ..engine import segment as engine_segment

        segment = self.segmenter or engine_segment
        if scope not in SCOPES:
            raise InputError(f"Unknown scope {scope!r}; use {', '.join(SCOPES)}.")
        if strategy not in STRATEGIES:
            raise InputError(f"Unknown strategy {strategy!r}; use {', '.join(STRATEGIES)}.")
        model = model or self.model
        window = self.window if window is None else window
        v0, k0 = self._primary(scope, int(case))
        prompt = self._slice_prompt(v0, k0)
        eng = self.engine(model)
        self.last_model = model
        prompted = self.prompted_slices()
        total = slices_in_scope(scope, lambda i: self.cases[i].n_slices, self.n_cases, v0, len(prompted))
        if scope == "image":
            volumes = sorted({v for v, _ in prompted})
        elif scope == "volume":
            volumes = [v0]
        else:
            volumes = list(range(self.n_cases))
        t0 = time.perf_counter()
        info = RunInfo(model=model, scope=scope, strategy=strategy, volumes=volumes)
        self.run_info = info
        self.correction_seconds = 0.0
        self.clear_results(volumes)
        done = 0
        last = 0.0
        try:
            if scope == "image":
                for v, k in prompted:
                    check_cancel(cancel)
                    for res in self._commit_previews(v, k, model, window, cancel):
                        self.store(res)
                    done += 1
                    yield RunProgress(done, total, time.perf_counter() - t0, v, k, f"image {done}/{total}")
            else:
                for res in segment(
                    self.dataset(), prompt, scope=scope, engine=eng, window=window, strategy=strategy, cancel=cancel
                ):
                    self.store(res)
                    done += 1
                    now = time.perf_counter()
                    if now - last >= progress_every_s or done == total:
                        last = now
                        yield RunProgress(
                            done, total, now - t0, res.volume_index, res.slice_index,
                            f"{self.cases[res.volume_index].name}: slice {res.slice_index + 1}",
                        )  # fmt: skip
                # other prompted slices inside the covered cases act as corrections
                extra = [key for key in self.prompted_slices() if key != (v0, k0) and key[0] in volumes]
                for key in extra:
                    yield from self._repropagate(key, model, window, cancel, t0, done, total)
                if scope == "dataset":
                    self._check_set(volumes)
            self.pending.clear()
        except CancelledError:
            info.cancelled = True
        finally:
            info.seconds = time.perf_counter() - t0
            info.slices = int(sum(self.done[v].sum() for v in volumes if v in self.done))
        yield RunProgress(
            info.slices, total, info.seconds, message="stopped" if info.cancelled else "done", finished=True
        )

    def _commit_previews(
        self, case: int, k: int, model: str, window: Any, cancel: threading.Event | None
    ) -> Iterator[SliceResult]:
        """The image scope on one prompted slice: the engine's one-slice walk seeded with the previews
        (so that the result is what was shown)."""
        for oid, d in sorted(self.drafts[(case, k)].items()):
            if d.usable and d.mask is None:
                self._predict(case, k, oid, model, window)
        sp = self._slice_prompt(case, k)
        drafts = self.drafts[(case, k)]
        seeds = {o.object_id: (drafts[o.object_id].mask, drafts[o.object_id].score) for o in sp.objects}
        seeds = {oid: ms for oid, ms in seeds.items() if ms[0] is not None}
        yield from self.engine(model).segment_volume(
            self.volume(case), sp, volume_index=case, window=window, scope_slices=(k, k), cancel=cancel,
            seed_masks=seeds,
        )  # fmt: skip

    def _repropagate(
        self,
        key: tuple[int, int],
        model: str,
        window: Any,
        cancel: threading.Event | None,
        t0: float,
        done0: int,
        total: int,
    ) -> Iterator[RunProgress]:
        """Re-propagates the objects prompted on slice ``key`` over their :func:`correction_range` only.

        The range of each object is bounded by the other slices where that object was prompted;
        other objects' labels are left as they are.
        """
        from ..prompts import box_from_mask

        v, c = key
        eng = self.engine(model)
        vol = self.volume(v)
        n = self.cases[v].n_slices
        done = done0
        for oid, d in sorted(self.drafts.get(key, {}).items()):
            if not d.usable:
                continue
            if d.mask is None:
                self._predict(v, c, oid, model, window)
            mask = d.mask if d.mask is not None else np.zeros(self.cases[v].shape[1:], bool)
            lo, hi = correction_range(c, [kk for _, kk in self.prompted_slices(v, oid)], n)
            obj = self.object(oid)
            box = box_from_mask(mask, margin=0, shape=mask.shape)
            if box is None:  # nothing found on the prompted slice: the object ends there
                labels = np.zeros(mask.shape, np.uint8)
                self.store(SliceResult(volume_index=v, slice_index=c, labels=labels, prompted=True,
                                       volume_name=vol.name, n_slices=n), only=[oid])
                continue
            sp = SlicePrompt((ObjectPrompt(box=box, object_id=oid, name=obj.name),), slice_index=c, volume_index=v)
            for res in eng.segment_volume(
                vol, sp, volume_index=v, window=window, scope_slices=(lo, hi), cancel=cancel, seed_masks={oid: mask}
            ):
                self.store(res, only=[oid])
                done += 1
                yield RunProgress(
                    min(done, max(total, done)), max(total, done), time.perf_counter() - t0, v, res.slice_index,
                    f"{obj.name}: correcting slice {res.slice_index + 1}",
                )  # fmt: skip
        self.pending.discard(key)

    def correct(
        self, *, model: str | None = None, window: Any = None, cancel: threading.Event | None = None
    ) -> Iterator[RunProgress]:
        """Re-propagates from every slice prompted since the last run or correction (only the affected ranges).

        Yields:
            :class:`RunProgress` reports, the last with ``finished=True`` and message ``corrected`` (or ``stopped``).

        Raises:
            PromptError: nothing was run yet, or no prompt changed since.
        """
        if not self.has_results():
            raise PromptError("Run a segmentation first; corrections refine its result.")
        keys = [key for key in self.order if key in self.pending]
        if not keys:
            raise PromptError("No correction to apply: click on a result slice to correct it first.")
        model = model or self.model
        window = self.window if window is None else window
        t0 = time.perf_counter()
        total = sum(self.cases[v].n_slices for v, _ in keys)
        done = 0
        cancelled = False
        try:
            for key in keys:
                if not self.drafts.get(key):
                    self.pending.discard(key)  # an undone prompt: nothing to re-run from it
                    continue
                for p in self._repropagate(key, model, window, cancel, t0, done, total):
                    done = p.done
                    yield p
        except CancelledError:
            cancelled = True
        secs = time.perf_counter() - t0
        self.correction_seconds += secs
        yield RunProgress(done, max(done, 1), secs, message="stopped" if cancelled else "corrected", finished=True)

    # ------------------------------------------------------------------ scoring and export
    def score(self) -> dict[str, Any]:
        """Figures of the current result, scored through :class:`~promptonce.metrics.MetricAccumulator`
        (see :func:`promptonce.annotation.results.score`: Dice/Jaccard per case and per slice, prompts used
        and saved, time)."""
        return results.score(self)

    def export(self, folder: str | Path, summary: dict[str, Any] | None = None, window: Any = None) -> list[Path]:
        """Writes masks and metrics into ``folder``; returns the files (see :func:`promptonce.annotation.results.export`)."""
        return results.export(self, folder, summary, window)


def _without_background(mask: np.ndarray, points: Sequence[Point]) -> np.ndarray:
    """``mask`` without the connected region under each background click that the model left in it.

    A background click says "this pixel is not the object"; a model that still covers it (a small
    model may, e.g. MobileSAM with a click inside a uniform region) has ignored the click, and the
    region the click lands on is removed, so that the click always changes what it lands on.

    Args:
        mask: bool ``(rows, cols)`` prediction.
        points: the draft's clicks (image pixels); only ``label == 0`` ones act.
    """
    neg = [p for p in points if p.label == 0]
    if not neg or not mask.any():
        return mask
    rows, cols = mask.shape
    hits = [(min(max(int(round(p.y)), 0), rows - 1), min(max(int(round(p.x)), 0), cols - 1)) for p in neg]
    if not any(mask[r, c] for r, c in hits):
        return mask
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    drop = {int(lab[r, c]) for r, c in hits if lab[r, c]}
    return mask & ~np.isin(lab, list(drop))


def _as_dataset(images: Images, images_as: str, max_voxels: int) -> Dataset:
    if isinstance(images, Dataset):
        return images
    if isinstance(images, Volume):
        return Dataset([images])
    if isinstance(images, str | Path):
        images = [images]
    items = list(images)
    if items and all(isinstance(x, Volume) for x in items):
        return Dataset(items)  # type: ignore[arg-type]
    if not all(isinstance(x, str | Path) for x in items):
        raise InputError("Give images as a Dataset, a Volume, a list of Volumes, or file/folder paths.")
    from ..io.readers import load_dataset

    return load_dataset(items, images_as=images_as, max_voxels=max_voxels)  # type: ignore[arg-type]
