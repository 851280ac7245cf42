"""Across a dataset: the user's prompt carried to every other case (transfer) or case to case (chain)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Engine

import numpy as np
from scipy import ndimage

from ..backends.base import Backend
from ..errors import InputError, check_cancel
from ..preprocess import WindowSpec
from ..prompts import box_from_mask, interior_point, map_prompt
from ..registration import image_similarity, register, thumbnail, warp
from ..types import Box, Dataset, ObjectPrompt, SlicePrompt, SliceResult, Volume
from .config import Strategy
from . import pairs
from .pairs import base_gap, is_pair, level_bases, shorter, uneven_bases_flag
from .predict import other_clicks
from .prior_mask import prior_guided_mask
from .quality import (
    WALL_MISSING_CONFIDENCE,
    ObjectCheck,
    SequenceMonitor,
    case_confidence,
    check_against_prior,
    extent,
    outline_evidence,
    wall_missing_flag,
    with_stability,
)
from .set_check import evidence_scales
from .wall_prior import ring_hole, wall_from_prior
from .walls import ready_cavity, wall_depth

__all__ = [
    "DatasetTransfer",
    "CaseOutcome",
    "Exemplar",
    "make_exemplar",
    "relative_prompt",
    "segment_dataset",
    "dataset_sequence",
]

log = logging.getLogger(__name__)


def relative_prompt(prompt: SlicePrompt, src: Volume, dst: Volume) -> SlicePrompt:
    """Maps the user's prompt to another case: same relative slice position and in-plane position."""
    n_src, n_dst = src.n_slices, dst.n_slices
    k = int(round(prompt.slice_index * (n_dst - 1) / (n_src - 1))) if n_src > 1 else n_dst // 2
    k = min(max(k, 0), n_dst - 1)
    objs = tuple(map_prompt(o, src.shape[1:], dst.shape[1:]) for o in prompt.objects)
    return SlicePrompt(objs, slice_index=k, volume_index=0)


#: A case whose confidence reaches this may serve as an exemplar for the second pass.
EXEMPLAR_MIN_CONFIDENCE = 0.85
#: Cases below this confidence are segmented again from their most similar exemplars. Was 0.85:
#: on Shenzhen X-rays (seeds 0 and 90 of images 0-99, seed 0108 of 100-159) 0.80 gave the same flags,
#: Dice within 0.03 points and 7-11% fewer decoder calls (benchmarks/README.md, "Sixth round").
SECOND_PASS_BELOW = 0.80
#: The same for a case of one image (an X-ray): there the second pass's result is kept whatever its
#: confidence (:meth:`DatasetTransfer.second_pass`), so more cases are worth redoing. On Shenzhen
#: X-rays redo below 0.90 and keep: tuning seeds 0001/0012/0074 0.9483/0.9416/0.9133 ->
#: 0.9464/0.9465/0.9211; held out (images 366-565) seeds 0662/0435 0.9421/0.9450 -> 0.9459/0.9458
#: (benchmarks/README.md, "Sixteenth round").
SECOND_PASS_BELOW_IMAGE = 0.90
#: Each atlas's fusion weight is its registration similarity (floored at 0.05) to this power; 12 was
#: not better held out (benchmarks/README.md, "Sixteenth round").
FUSION_POWER = 1
#: How many exemplars are fused for one case, and how many are kept for a dataset.
EXEMPLARS_PER_CASE = 3
MAX_EXEMPLARS = 24
#: A seed mask that stops short of a side of the user's box by more than this fraction of its size
#: missed part of the object there (:attr:`Exemplar.reach`); less is the usual slack of a mask in a
#: tight box (0-4% on the tuning X-rays' seeds; 8% where the model left out a lung base).
MIN_REACH = 0.05
#: How many of its most similar walled exemplars a case on which no wall was found tries, one at a time
#: (:meth:`DatasetTransfer.second_pass`).
WALL_ATLAS_TRIES = 3
#: A case whose walls were all found but whose confidence is below this tries them too, and takes an atlas's
#: result only when more confident: the seed's ring may have put the wall around another cavity, or the walk
#: lost it. A carried wall's confidence is its agreement with a ring warped a few pixels off (0.5-0.75 on the
#: tuning cases where it was right). ACDC myocardium, one box for all: tuning files 1-10, five seeds,
#: 0.723 -> 0.755 (0.758 below 0.80, every weak case, at about twice the time); held out, files 11-40,
#: three seeds, 0.546 -> 0.598, 9 cases up by more than 0.10 and none down (benchmarks/README.md,
#: "Thirty-seventh round").
WALL_ATLAS_WEAK_BELOW = 0.5
#: Where a case's ring gives no wall on its key slice (the seed's relative position), the slices this far
#: either side are tried too and the one whose walls agree best with their ring becomes the key slice: hearts
#: of other patients sit at other relative positions, and at the key slice the ring may meet the base's
#: outflow or the apex. ACDC myocardium, one box for all: tuning files 1-10, five seeds, 0.755 -> 0.800;
#: held out, files 11-40, three seeds, 0.598 -> 0.645. A wall found but weak is left to the exemplar pass: a
#: first version searched from those too and moved some held-out cases onto a ring-like structure outside the
#: myocardium, confident and wrong (benchmarks/README.md, "Thirty-eighth round").
WALL_KEY_SEARCH = 2
#: Longer side of an exemplar's stored image and masks (pixels; registration works at 64).
EXEMPLAR_SIZE = 256


@dataclass(frozen=True)
class Exemplar:
    """A segmented image kept as an atlas for other cases (small: a thumbnail and its masks).

    Attributes:
        name: the case's name.
        image: float32 ``(rows, cols)`` intensity-normalised thumbnail of the case's key slice.
        masks: object id -> bool ``(rows, cols)`` mask on that thumbnail.
        position: relative position of the key slice in its volume (0..1; 0.5 for single images).
        confidence: the case's confidence when it became an exemplar.
        key: an order-free tie-breaker (name and a digest of the image), so exemplar choice never
            depends on the order of the cases.
        reach: object id -> ``(left, top, right, bottom)``: how far the user's box reached past the
            mask on each side, as fractions of the mask's size (the seed only; see :func:`make_exemplar`).
        evidence: object id -> how sharply its outline follows the case's image edges
            (:func:`.quality.outline_evidence`, on the full-size slice): the exemplar set's evidence is
            the set's yardstick for weak edges (:func:`.set_check.evidence_scales`).
        walled: a case on which every object carried as a wall (:mod:`.wall_prior`) got its wall: an
            atlas for the cases on which none was found (:meth:`DatasetTransfer.second_pass`), whatever
            its confidence (a carried wall's confidence is its agreement with a ring warped off).
    """

    name: str
    image: np.ndarray
    masks: dict[int, np.ndarray]
    position: float
    confidence: float
    key: str
    reach: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    evidence: dict[int, float] = field(default_factory=dict)
    walled: bool = False


@dataclass
class CaseOutcome:
    """One case's results from one pass.

    Attributes:
        volume_index: index of the case in its dataset.
        name: the case's name.
        results: every slice's :class:`SliceResult`, in the order the engine yielded them.
        confidence: case confidence 0..1 (:func:`.quality.case_confidence`), None if not estimated.
        flags: case-level flags (the key slice's, plus any registration fallback).
        exemplar: the case as an :class:`Exemplar` when its confidence allows, else None.
        passes: 1 from the user's seed alone, 2 when re-segmented from exemplars.
        sources: names of the exemplars the case was segmented from.
        missing_walls: ids of the objects carried as walls on which no wall was found (:mod:`.wall_prior`).
    """

    volume_index: int
    name: str
    results: list[SliceResult]
    confidence: float | None
    flags: list[str] = field(default_factory=list)
    exemplar: Exemplar | None = None
    passes: int = 1
    sources: tuple[str, ...] = ()
    missing_walls: tuple[int, ...] = ()


@dataclass
class _KeySlice:
    """A case's key slice for a set of sources: its index and relative position (the first source's unless
    another slice was taken), its image, the sources' priors on it and, for the objects carried as walls, the
    wall found from each ring (None: none found) and the least agreement of those walls with their rings (-1
    when one is missing)."""

    k: int
    position: float
    gray: np.ndarray
    thumb: np.ndarray
    priors: dict[int, np.ndarray | None]
    notes: list[str]
    walls: dict[int, tuple | None]
    agreement: float


def _relative_position(k: int, n: int) -> float:
    return k / (n - 1) if n > 1 else 0.5


def _single_image(outcome: CaseOutcome) -> bool:
    """True when the case is one image (an X-ray), not a volume."""
    return bool(outcome.results) and outcome.results[0].n_slices == 1


def rank_by_similarity(gray: np.ndarray, atlases: Iterable[Exemplar]) -> list[Exemplar]:
    """``atlases``, the most similar to ``gray`` first (ties broken by key, so never by their order)."""
    return sorted(atlases, key=lambda e: (-round(image_similarity(gray, e.image), 6), e.key))


def _slice_at(position: float, n: int) -> int:
    return min(max(int(round(position * (n - 1))), 0), n - 1) if n > 1 else 0


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    zoom = (shape[0] / mask.shape[0], shape[1] / mask.shape[1])
    out = ndimage.zoom(mask.astype(np.float32), zoom, order=1, prefilter=False)
    out = out[: shape[0], : shape[1]]
    if out.shape != shape:
        out = np.pad(out, ((0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])))
    return out >= 0.5


def make_exemplar(name: str, gray: np.ndarray, labels: np.ndarray, object_ids, position: float, confidence: float,
                  image: np.ndarray | None = None, boxes: dict[int, Box] | None = None,
                  evidence: dict[int, float | None] | None = None, walled: bool = False) -> Exemplar:
    """An :class:`Exemplar` from a case's key slice (``gray`` ``(rows, cols)``) and its label map.

    ``image``: the slice's thumbnail when already computed (``thumbnail(gray, EXEMPLAR_SIZE)``).
    ``boxes``: object id -> the user's box on ``gray`` (pixels); where the mask stops short of a side
    of it, the shortfall is kept (:attr:`Exemplar.reach`): the user said the object goes that far.
    ``evidence``: object id -> the outline evidence its check measured (None values are dropped).
    ``walled``: see :attr:`Exemplar.walled`.
    """
    if image is None:
        image = thumbnail(gray, EXEMPLAR_SIZE)
    masks = {int(o): _shrink_mask(labels == o, image.shape) for o in object_ids}
    reach = {}
    for oid, b in (boxes or {}).items():
        m = np.asarray(labels) == oid
        if b is None or not m.any():
            continue
        ys, xs = np.nonzero(m)
        size = float(extent(m))
        short = (xs.min() - b.x0, ys.min() - b.y0, b.x1 - xs.max(), b.y1 - ys.max())
        reach[int(oid)] = tuple(float(d) / size if d > MIN_REACH * size else 0.0 for d in short)
    ev = {int(o): float(v) for o, v in (evidence or {}).items() if v is not None}
    return Exemplar(name, image, masks, float(position), float(confidence), exemplar_key(name, image), reach, ev,
                    walled)


def exemplar_key(name: str, image: np.ndarray) -> str:
    """An order-free tie-breaker for exemplars: the case name and a digest of its thumbnail."""
    return f"{name}:{hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:12]}"


class DatasetTransfer:
    """Carries one prompt to every case of a dataset, with exemplar memory.

    * First pass (:meth:`first_pass`): the seed case's masks on the prompted slice are warped onto
      the case's slice at the same relative position by registration (:mod:`promptonce.registration`:
      affine + demons); each warped mask is a *prior*: boxes are derived from it (reaching as far
      as the user's box did, :attr:`Exemplar.reach`), the image chooses among the model's
      candidates while the prior vetoes leaks and misses (:func:`choose_candidate`), on single
      images the lung base is placed on the image's edge (:func:`search_sides`), the confidence
      is the agreement with the prior (:mod:`.quality`), and inside a volume the chosen masks seed
      the slice walk.
    * Exemplars: cases whose confidence reaches ``EXEMPLAR_MIN_CONFIDENCE`` (plus the seed), and cases
      on which every object carried as a wall got its wall (:attr:`Exemplar.walled`).
    * Second pass (:meth:`second_pass`): a case below ``SECOND_PASS_BELOW`` is segmented again from
      its ``EXEMPLARS_PER_CASE`` most similar exemplars and the seed, their warped masks fused
      (weighted by how well each registered: multi-atlas label fusion); on a volume the more
      confident of the two passes is kept, on a single image the second (``SECOND_PASS_BELOW_IMAGE``),
      its weak edges judged against the exemplars' outlines (:func:`.set_check.evidence_scales`) and
      its candidates those of :meth:`.config.PropagationConfig.for_exemplar_pass`. A case on which no
      wall was found is tried from its most similar walled exemplars instead, one at a time (:meth:`_wall_atlas`);
      so is a walled case below ``WALL_ATLAS_WEAK_BELOW``, which keeps the more confident result.
    * Key slice: where a ring gives no wall on a case's slice at the seed's relative position, the slices up
      to ``WALL_KEY_SEARCH`` either side are tried and the best-agreeing becomes the case's key slice
      (:meth:`_key_slice`), in both passes; an exemplar keeps its own key slice's position.

    Each case depends only on the seed and on the exemplar *set* (chosen by confidence with an
    order-free tie-break), never on the order of the cases: the work can be spread over workers.

    Args:
        engine: the engine (image-model backend; memory models use :func:`dataset_sequence`).
        seed_volume: the prompted case.
        prompt: the user's prompt on ``prompt.slice_index`` of ``seed_volume``.
        window: display window of the model frames.
        seed_labels: the seed slice's label map when already segmented (else it is predicted here).
    """

    def __init__(
        self,
        engine: Engine,
        seed_volume: Volume,
        prompt: SlicePrompt,
        window: WindowSpec = None,
        seed_labels: np.ndarray | None = None,
    ) -> None:
        self.engine = engine
        self.prompt = prompt
        self.window = window
        self.seed_volume = seed_volume
        k0 = prompt.slice_index
        #: object id -> the depth of the seed's wall (:mod:`.walls`), for its objects taken as walls around a
        #: cavity: asked for as walls on every case (:mod:`.wall_prior`)
        self.walls: dict[int, float] = {}
        cavities: dict[int, np.ndarray] = {}
        if seed_labels is None:
            seed_labels = np.zeros(seed_volume.shape[1:], np.uint8)
            for obj in prompt.objects:
                mask, _ = engine.predict_object(seed_volume, k0, obj, window, avoid=other_clicks(prompt, obj),
                                                cavities=cavities)
                seed_labels[mask & (seed_labels == 0)] = obj.object_id
        elif engine.config.box_walls:  # the seed case was segmented already: were its boxes walls (rings)?
            for obj in prompt.objects:
                m = np.asarray(seed_labels) == obj.object_id
                if obj.box is not None and ring_hole(m).any():
                    cavity = ready_cavity(engine, seed_volume, k0, window, obj.box, m)
                    if cavity is not None:
                        cavities[obj.object_id] = cavity
        for oid, cavity in cavities.items():
            self.walls[oid] = wall_depth(np.asarray(seed_labels) == oid, cavity)
        self.seed = make_exemplar(
            seed_volume.name,
            engine.frames(seed_volume, window).gray(k0),
            np.asarray(seed_labels),
            [o.object_id for o in prompt.objects],
            _relative_position(k0, seed_volume.n_slices),
            1.0,
            boxes={o.object_id: o.box for o in prompt.objects if o.box is not None},
        )
        self.names = {o.object_id: o.name or f"object {o.object_id}" for o in prompt.objects}
        #: the seed's two objects are a side-by-side pair (the lungs): their lower ends are levelled
        self.paired = is_pair(self.seed.masks)
        self._scales_said: dict[int, float] = {}  # the weak-edge scales last logged

    # ------------------------------------------------------------------ passes
    def first_pass(self, volume: Volume, volume_index: int, cancel: threading.Event | None = None) -> CaseOutcome:
        """Segments a case from the seed alone (its masks warped onto the case as priors)."""
        return self.segment_case(volume, volume_index, [self.seed], cancel, passes=1)

    def needs_second_pass(self, outcome: CaseOutcome) -> bool:
        """True when a case's confidence is low enough to try its most similar exemplars."""
        below = SECOND_PASS_BELOW_IMAGE if _single_image(outcome) else SECOND_PASS_BELOW
        return outcome.confidence is None or outcome.confidence < below

    @staticmethod
    def select_exemplars(candidates: Iterable[Exemplar | None], limit: int = MAX_EXEMPLARS) -> list[Exemplar]:
        """The exemplar set: the most confident candidates (ties broken by key), at most ``limit``; a walled
        one (:attr:`Exemplar.walled`) whatever its confidence."""
        good = [e for e in candidates if e is not None and (e.confidence >= EXEMPLAR_MIN_CONFIDENCE or e.walled)]
        return sorted(good, key=lambda e: (-round(e.confidence, 6), e.key))[:limit]

    def second_pass(
        self,
        volume: Volume,
        volume_index: int,
        exemplars: Sequence[Exemplar],
        first: CaseOutcome,
        cancel: threading.Event | None = None,
    ) -> CaseOutcome:
        """Segments a weak case again from its most similar exemplars and the seed.

        Returns the second pass on a single image; on a volume the more confident of the two. A
        single image's first-pass confidence is its agreement with the seed's warped mask, the very
        prior it was drawn from: where the seed is unlike the case both are wrong the same way and
        the case looks confident, so the two confidences are not comparable there; the fused prior
        of several atlases is the better one (on Shenzhen X-rays keeping it raised the worst seed
        0.9133 -> 0.9211 on tuning images, 0.9421 -> 0.9458 held out; benchmarks/README.md,
        "Sixteenth round")."""
        k = _slice_at(self.seed.position, volume.n_slices)
        gray = self.engine.frames(volume, self.window).gray(k)
        if first.missing_walls or (self.walls and (first.confidence or 0.0) < WALL_ATLAS_WEAK_BELOW):
            walled = [e for e in exemplars if e.walled and e.name != volume.name]
            atlas = self._wall_atlas(volume, volume_index, rank_by_similarity(gray, walled), first, cancel)
            if atlas is not first or first.missing_walls:
                return atlas
        pool = [e for e in exemplars if e.name != volume.name and e.confidence >= EXEMPLAR_MIN_CONFIDENCE]
        if not pool:
            return first
        ranked = rank_by_similarity(gray, pool)
        sources = [self.seed, *ranked[:EXEMPLARS_PER_CASE]]
        # weak edges are judged against the set's confident outlines: on a single image only, whose
        # second pass is kept as it is; a volume's two passes are compared by confidence, on one scale
        scales = evidence_scales(e.evidence for e in exemplars) if _single_image(first) else {}
        if any(v < 1.0 for v in scales.values()) and scales != self._scales_said:
            self._scales_said = scales  # once per exemplar set, not once per case
            log.info("weak-edge threshold scaled by %s: the exemplars' outlines are weaker than the tuning set's",
                     {self.names.get(o, o): round(v, 2) for o, v in scales.items()})
        second = self.segment_case(volume, volume_index, sources, cancel, passes=2, evidence_scale=scales)
        if _single_image(first):
            second = self._choose_atlas(volume, volume_index, ranked, second, cancel, scales)
        if _single_image(first) or (second.confidence or 0.0) > (first.confidence or 0.0):
            log.info("%s: second pass from %s, confidence %.2f -> %.2f", volume.name,
                     ", ".join(second.sources), first.confidence or 0.0, second.confidence or 0.0)
            return second
        return first

    def _wall_atlas(self, volume: Volume, volume_index: int, ranked: Sequence[Exemplar], first: CaseOutcome,
                    cancel: threading.Event | None) -> CaseOutcome:
        """A weak case of objects carried as walls, segmented again from the first of its most similar walled
        exemplars (:data:`WALL_ATLAS_TRIES` at most) whose ring gives a wall on the case's key slice.

        One atlas at a time, not fused: rings warped from several hearts blur into a band whose hole no
        longer outlines a cavity (ACDC tuning volumes 1-10, myocardium, seeds 2 and 4: on the four cases
        where the seed's ring gave no wall, the seed and three exemplars fused gave none either, and the
        most similar exemplar alone gave the wall on all four, Dice 0.75-0.91 on the key slice).
        A case on which no wall was found takes that atlas's result; a case whose wall was found (around
        a cavity the seed's ring may have misplaced) takes it only when it is more confident, else tries
        the next. ``first`` is returned when none does."""
        wanted = first.missing_walls or tuple(self.walls)
        for ex in ranked[:WALL_ATLAS_TRIES]:
            check_cancel(cancel)
            key = self._key_slice(volume, [ex], wanted)
            if key.agreement < 0:  # a wall missing on every slice tried
                continue
            second = self.segment_case(volume, volume_index, [ex], cancel, passes=2, key=key)
            if not second.missing_walls and (first.missing_walls
                                             or (second.confidence or 0.0) > (first.confidence or 0.0)):
                log.info("%s: %s; from %s's wall, confidence %.2f -> %.2f", volume.name,
                         "no wall from the seed" if first.missing_walls else "a weak wall from the seed",
                         ex.name, first.confidence or 0.0, second.confidence or 0.0)
                return second
        return first

    def _key_slice(self, volume: Volume, sources: Sequence[Exemplar],
                   wanted: Iterable[int] | None = None) -> _KeySlice:
        """The case's key slice for ``sources``: the slice at the first source's relative position, with the
        sources' priors on it and, for each ``wanted`` object carried as a wall (default: all), the wall its
        ring gives (:func:`.wall_prior.wall_from_prior`).

        Where a wall is missing there, the slices up to :data:`WALL_KEY_SEARCH` either side are tried too, and
        the one whose walls agree best with their rings is taken (the nearest on ties)."""
        wanted = tuple(self.walls) if wanted is None else tuple(wanted)
        k0 = _slice_at(sources[0].position, volume.n_slices)
        frames = self.engine.frames(volume, self.window)

        def at(k: int) -> _KeySlice:
            gray = frames.gray(k)
            thumb = thumbnail(gray, EXEMPLAR_SIZE)
            priors, notes = self.priors(gray, sources, thumb)
            walls: dict[int, tuple | None] = {}
            agreement = 1.0
            for o in wanted:
                prior = priors.get(o)
                wall = None if prior is None else wall_from_prior(self.engine, volume, k, self.window, prior,
                                                                  self.walls[o], o)
                walls[o] = wall
                agreement = min(agreement, -1.0 if wall is None else
                                check_against_prior(wall[0], prior, wall[1], self.names[o]).confidence)
            position = sources[0].position if k == k0 else _relative_position(k, volume.n_slices)
            return _KeySlice(k, position, gray, thumb, priors, notes, walls, agreement)

        best = at(k0)
        if best.agreement >= 0:  # every wall found (or none asked for)
            return best
        on_k0 = best
        for d in range(1, WALL_KEY_SEARCH + 1):
            for k in (k0 - d, k0 + d):
                if 0 <= k < volume.n_slices:
                    cand = at(k)
                    if cand.agreement > best.agreement:
                        best = cand
        if best is not on_k0:
            log.info("%s: no wall on slice %d; taken on slice %d (agreement with the ring %.2f)", volume.name, k0,
                     best.k, best.agreement)
        return best

    def _choose_atlas(self, volume: Volume, volume_index: int, ranked: Sequence[Exemplar], fused: CaseOutcome,
                      cancel: threading.Event | None, scales: Mapping[int, float]) -> CaseOutcome:
        """A weak fused result against the results from its most similar exemplars alone (the most confident
        kept, the fused one on ties; :attr:`.config.PropagationConfig.atlas_choice_below`)."""
        cfg = self.engine.config
        if cfg.atlas_choice_below <= 0 or (fused.confidence or 0.0) >= cfg.atlas_choice_below:
            return fused
        best = fused
        for ex in ranked[:max(cfg.atlas_choice_singles, 0)]:
            alt = self.segment_case(volume, volume_index, [ex], cancel, passes=2, evidence_scale=scales)
            if (alt.confidence or 0.0) > (best.confidence or 0.0):
                best = alt
        if best is not fused:
            log.info("%s: the fused priors gave confidence %.2f, %s alone %.2f: kept that", volume.name,
                     fused.confidence or 0.0, best.sources[0], best.confidence or 0.0)
        return best

    # ------------------------------------------------------------------ one case
    def priors(self, gray: np.ndarray, sources: Sequence[Exemplar],
               thumb: np.ndarray | None = None) -> tuple[dict[int, np.ndarray | None], list[str]]:
        """Each object's prior on ``gray``: the sources' masks warped onto it and fused.

        ``thumb``: ``gray``'s thumbnail (``thumbnail(gray, EXEMPLAR_SIZE)``) when already computed;
        every source is registered to it (positions are relative) and warped onto ``gray``'s size.

        Returns:
            ``({object_id: float32 (rows, cols) prior or None}, notes)``; fusion weights are each
            registration's correlation (floored at 0.05, to the power ``FUSION_POWER``); a
            registration that did not beat the relative-position mapping still contributes
            (identity), and is noted.
        """
        notes: list[str] = []
        acc: dict[int, np.ndarray] = {}
        wsum = 0.0
        fixed = thumb if thumb is not None else thumbnail(gray, EXEMPLAR_SIZE)
        for src in sources:
            reg = register(fixed, src.image)
            if not reg.trusted:
                notes.append(f"registration to {src.name} kept the relative position ({reg.reason or 'no gain'})")
            w = max(reg.similarity, 0.05) ** FUSION_POWER
            wsum += w
            for oid, m in src.masks.items():
                warped = warp(m.astype(np.float32), reg, shape=gray.shape[:2])
                acc[oid] = acc.get(oid, 0.0) + w * warped
        out: dict[int, np.ndarray | None] = {}
        for oid in self.names:
            p = acc.get(oid)
            out[oid] = (p / wsum).astype(np.float32) if p is not None and wsum > 0 else None
        return out, notes

    def segment_case(
        self,
        volume: Volume,
        volume_index: int,
        sources: Sequence[Exemplar],
        cancel: threading.Event | None,
        passes: int,
        evidence_scale: Mapping[int, float] | None = None,
        key: _KeySlice | None = None,
    ) -> CaseOutcome:
        """Segments one case from the fused priors of ``sources`` (the seed, exemplars, or a neighbour).

        ``evidence_scale``: object id -> the scale of its weak-edge threshold (:func:`.set_check.evidence_scales`;
        1 for objects not in it).
        ``key``: the case's key slice for these sources when already found (:meth:`_key_slice`), so that its
        walls are not asked for twice."""
        scale = dict(evidence_scale or {})
        eng = self.engine
        check_cancel(cancel)
        if key is None:
            key = self._key_slice(volume, sources)
        k, gray, thumb, priors, notes, known = key.k, key.gray, key.thumb, key.priors, key.notes, key.walls
        # a single image's exemplar pass may try its own (smaller) candidate set: a speed setting, off by default
        cfg = eng.config.for_exemplar_pass() if passes == 2 and volume.n_slices == 1 else eng.config
        # the first pass (the seed alone) reaches as far past the warped seed mask as the user's box did
        reach = self.seed.reach if len(sources) == 1 and sources[0] is self.seed else {}
        seeds: dict[int, tuple[np.ndarray, float]] = {}
        cavities: dict[int, np.ndarray] = {}  # of the objects carried as walls
        doubts: dict[int, float] = {}  # objects carried as walls on which no wall was found: their confidence cap
        checks = {}
        objs = []
        base = relative_prompt(self.prompt, self.seed_volume, volume)
        for obj_src, obj_rel in zip(self.prompt.objects, base.objects):
            oid = obj_src.object_id
            # an object carried as a wall is asked for as a wall first; the ring's own answer only when none is found
            walled = None
            if oid in known:
                walled = known[oid]
            elif oid in self.walls and priors.get(oid) is not None:
                walled = wall_from_prior(eng, volume, k, self.window, priors[oid], self.walls[oid], oid)
            if walled is not None:
                mask, score, cavities[oid] = walled
                check = check_against_prior(mask, priors[oid], score, self.names[oid])
            else:
                mask, score, check = prior_guided_mask(eng, volume, k, priors.get(oid), obj_rel, self.names[oid],
                                                       self.window, reach=reach.get(oid),
                                                       evidence_scale=scale.get(oid, 1.0), config=cfg)
            if oid in self.walls and walled is None:  # kept: the box model's answer to the ring, a cavity or neighbour
                log.info("%s: no wall found around a cavity for %s", volume.name, self.names[oid])
                doubts[oid] = WALL_MISSING_CONFIDENCE
                check = replace(check, confidence=min(check.confidence, WALL_MISSING_CONFIDENCE),
                                flags=[*check.flags, wall_missing_flag(self.names[oid])])
            seeds[oid] = (mask, score)
            checks[oid] = check
        if volume.n_slices == 1 and self.paired:
            self._level_bases(volume, k, gray, priors, seeds, checks, scale)
        for obj_src, obj_rel in zip(self.prompt.objects, base.objects):
            oid = obj_src.object_id
            mask = seeds[oid][0]
            box = box_from_mask(mask, margin=0, shape=mask.shape) or obj_rel.box
            objs.append(ObjectPrompt(box=box, points=() if box is not None else obj_rel.points,
                                     object_id=oid, name=obj_src.name))
        case_prompt = SlicePrompt(tuple(objs), slice_index=k, volume_index=0)
        results: list[SliceResult] = []
        case_flags: list[str] = []
        for res in eng.segment_volume(volume, case_prompt, volume_index=volume_index, window=self.window,
                                      cancel=cancel, seed_masks=seeds, seed_cavities=cavities,
                                      seed_doubts=doubts):
            res.prompted = False  # only the user's own slice counts as prompted
            if res.slice_index == k:
                res.confidence = min((c.confidence for c in checks.values()), default=None)
                for c in checks.values():
                    res.flags.extend(c.flags)
                if len(notes) == len(sources):  # no source registered better than relative position
                    res.flags.append("registration fell back to the relative position: check this case")
                case_flags = list(res.flags)
            results.append(res)
        conf = case_confidence(r.confidence for r in results)
        labels = next((r.labels for r in results if r.slice_index == k), None)
        exemplar = None
        all_walled = bool(self.walls) and not doubts  # every object carried as a wall got its wall
        if labels is not None and conf is not None and (conf >= EXEMPLAR_MIN_CONFIDENCE or all_walled):
            exemplar = make_exemplar(volume.name, gray, labels, list(self.names), key.position, conf, thumb,
                                     evidence={oid: c.evidence for oid, c in checks.items()}, walled=all_walled)
        return CaseOutcome(volume_index, volume.name, results, conf, case_flags, exemplar, passes,
                           tuple(s.name for s in sources), tuple(sorted(doubts)))


    def _level_bases(self, volume: Volume, k: int, gray: np.ndarray, priors: dict[int, np.ndarray | None],
                     seeds: dict[int, tuple[np.ndarray, float]], checks: dict[int, ObjectCheck],
                     evidence_scale: Mapping[int, float] | None = None) -> None:
        """Two side-by-side objects on one image (the lungs): lower ends brought level where the image agrees (:mod:`.pairs`)."""
        eng = self.engine
        if eng.config.pair_base_gap <= 0:
            return

        def point_of(oid: int):
            p = priors.get(oid)
            return interior_point(p >= 0.5) if eng.backend.info.points and p is not None and (p >= 0.5).any() else None

        levelled = None
        if isinstance(eng.backend, Backend) and eng.backend.info.boxes:
            emb = eng.embedding(eng.backend, volume, k, self.window)
            levelled = level_bases(eng, emb, gray, {oid: m for oid, (m, _) in seeds.items()}, point_of)
        if levelled is not None:
            oid, mask, score = levelled
            old_end, new_end = int(np.nonzero(seeds[oid][0])[0].max()), int(np.nonzero(mask)[0].max())
            log.debug("%s: %s's lower end moved to the other object's (row %d -> %d)", volume.name,
                      self.names[oid], old_end, new_end)
            old, prior = checks[oid], priors.get(oid)
            if prior is not None:  # between the old and the new lower end the pair, not the seed, says where the object is
                below = np.zeros_like(mask)
                below[min(old_end, new_end) + 1:] = True
                prior = (np.where(mask & below, np.float32(1.0), prior) if new_end > old_end
                         else np.where(below, np.float32(0.0), prior))
            seeds[oid] = (mask, score)
            checks[oid] = with_stability(check_against_prior(mask, prior, score, self.names[oid]),
                                         [] if old.stability is None else [old.stability], self.names[oid],
                                         evidence=outline_evidence(gray, mask),
                                         evidence_scale=(evidence_scale or {}).get(oid, 1.0))
        masks = {oid: m for oid, (m, _) in seeds.items()}
        gap = base_gap(*masks.values())
        if gap is not None and gap > eng.config.pair_base_gap:
            short, other = shorter(masks)
            text = uneven_bases_flag(self.names[short], self.names[other], gap)
            log.info("%s: %s", volume.name, text)
            if pairs.FLAG_UNEVEN_BASES:
                checks[short] = replace(checks[short], flags=[*checks[short].flags, text])


def segment_dataset(
    engine: Engine,
    dataset: Dataset,
    prompt: SlicePrompt,
    seed_results: list[SliceResult],
    window: WindowSpec = None,
    strategy: Strategy = "transfer",
    cancel: threading.Event | None = None,
) -> Iterator[SliceResult]:
    """Every case of ``dataset`` except the prompted one (``prompt.volume_index``), from one prompt.

    ``transfer``: :class:`DatasetTransfer`'s first pass on every case; confident cases are yielded at
    once, weak ones after the second pass (so the cases come out in dataset order except the weak
    ones, which follow, each case's slices together). ``chain``: each case from the one before it
    (outwards from the prompted case), its previous neighbour as the only exemplar.

    ``seed_results``: the prompted case's results on its prompted slice.
    """
    v0 = prompt.volume_index
    seed_volume = dataset[v0]
    if engine.is_sequence:
        yield from dataset_sequence(engine, dataset, prompt, v0, window, strategy, cancel)
        return
    seed_labels = seed_results[0].labels if seed_results else None
    transfer = DatasetTransfer(engine, seed_volume, prompt, window, seed_labels=seed_labels)
    if strategy == "chain":
        yield from _chain(transfer, dataset, v0, cancel)
        return
    weak: list[CaseOutcome] = []
    candidates: list[Exemplar] = []
    held = _HeldCases(engine, transfer)
    try:
        for i in range(len(dataset)):
            if i == v0:
                continue
            check_cancel(cancel)
            volume = dataset[i]
            out = transfer.first_pass(volume, i, cancel)
            if out.exemplar is not None:
                candidates.append(out.exemplar)
                candidates = DatasetTransfer.select_exemplars(candidates)  # bounded memory
            if transfer.needs_second_pass(out):
                weak.append(out)
                held.keep(i, volume)
                continue
            yield from out.results
        exemplars = DatasetTransfer.select_exemplars(candidates)
        for out in weak:
            check_cancel(cancel)
            volume = held.take(out.volume_index)
            volume = dataset[out.volume_index] if volume is None else volume
            final = transfer.second_pass(volume, out.volume_index, exemplars, out, cancel) if exemplars else out
            held.release(out.volume_index)
            yield from final.results
    finally:
        held.release_all()


class _HeldCases:
    """The weak single-image cases of a dataset-scope run, held until their exemplar pass.

    A dataset read from files gives a new Volume on each access and the engine keeps few embeddings,
    so the exemplar pass of a weak case read it and encoded it again: on 40 lazily read X-rays, 23 of
    the 40 encodings were repeated (``benchmarks/README.md``, eleventh round). A weak image is now
    kept with its embedding pinned in the engine's cache, up to the cache's ``pin_limit``; past it,
    and for volumes (whose exemplar pass walks every slice again), the case is read and encoded again.
    """

    def __init__(self, engine: Engine, transfer: DatasetTransfer) -> None:
        self.engine, self.transfer = engine, transfer
        self.volumes: dict[int, Volume] = {}

    def keep(self, i: int, volume: Volume) -> None:
        backend = self.engine.backend
        if volume.n_slices == 1 and isinstance(backend, Backend) \
                and self.engine.cache.pin(backend, volume, 0, self.transfer.window) is not None:
            self.volumes[i] = volume

    def take(self, i: int) -> Volume | None:
        return self.volumes.get(i)

    def release(self, i: int) -> None:
        volume = self.volumes.pop(i, None)
        if volume is not None:
            self.engine.cache.unpin(self.engine.backend, volume, 0, self.transfer.window)

    def release_all(self) -> None:
        for i in list(self.volumes):
            self.release(i)


def _chain(transfer: DatasetTransfer, dataset: Dataset, v0: int, cancel: threading.Event | None) -> Iterator[SliceResult]:
    for order in (range(v0 + 1, len(dataset)), range(v0 - 1, -1, -1)):
        prev = transfer.seed
        for i in order:
            check_cancel(cancel)
            out = transfer.segment_case(dataset[i], i, [prev], cancel, passes=1)
            yield from out.results
            labels = next((r.labels for r in out.results if r.slice_index == _slice_at(prev.position, dataset[i].n_slices)), None)
            if labels is not None and labels.any():
                k = _slice_at(prev.position, dataset[i].n_slices)
                prev = make_exemplar(out.name, transfer.engine.frames(dataset[i], transfer.window).gray(k), labels,
                                     list(transfer.names), prev.position, out.confidence or 0.0)



def dataset_sequence(
    engine: Engine,
    dataset: Dataset,
    prompt: SlicePrompt,
    v0: int,
    window: WindowSpec,
    strategy: Strategy,
    cancel: threading.Event | None,
) -> Iterator[SliceResult]:
    """Dataset scope for memory models, after the seed volume itself was segmented.

    ``transfer``: the Prompt Once paper's "fake seed" - the prompted frame, with its prompt, is put
    before each other volume's frames and dropped from the output, so volumes are independent.
    Then the exemplar pass: a volume whose confidence stays below ``SECOND_PASS_BELOW`` is run again
    with the key frame (and masks) of its most similar confident volume as the seed frame, and the
    more confident of the two runs is kept (those volumes come out after the others).
    ``chain``: every other volume is one continuation of the sequence, seeded by the last frame of
    the volume before it (its mask), so memory carries across volume boundaries.
    """
    backend = engine.backend
    seed_frame = engine.frames(dataset[v0], window).frame(prompt.slice_index)
    names = {o.object_id: o.name or f"object {o.object_id}" for o in prompt.objects}
    position = _relative_position(prompt.slice_index, dataset[v0].n_slices)

    def run(i: int, frame: np.ndarray, seeds: list) -> list[SliceResult]:
        vol = dataset[i]
        fm = engine.frames(vol, window)
        shape = vol.shape[1:]
        monitor = SequenceMonitor(names)
        out = []
        for k, masks, scores in backend.propagate_with_seed_frame(frame, seeds, vol.n_slices, fm.frame):  # type: ignore[union-attr]
            check_cancel(cancel)
            labels = np.zeros(shape, np.uint8)
            for oid, m in masks.items():
                m = np.asarray(m, bool)
                if m.shape != shape:
                    raise InputError(f"{vol.name}: the model returned masks of shape {m.shape}, expected {shape}.")
                labels[m & (labels == 0)] = oid
            conf, flags = monitor.observe({oid: np.asarray(m, bool) for oid, m in masks.items()}, scores)
            out.append(SliceResult(volume_index=i, slice_index=k, labels=labels, scores=dict(scores), flags=flags,
                                   volume_name=vol.name, n_slices=vol.n_slices, confidence=conf))
        return out

    others = [j for j in range(len(dataset)) if j != v0]
    if strategy == "chain":
        prev: tuple[np.ndarray, SliceResult] | None = None
        for i in others:
            check_cancel(cancel)
            if prev is not None and prev[1].labels.any():
                frame, res = prev
                results = run(i, frame, [(oid, res.labels == oid) for oid in np.unique(res.labels) if oid])
            else:
                results = run(i, seed_frame, list(prompt.objects))
            yield from results
            if results:
                prev = (engine.frames(dataset[i], window).frame(results[-1].slice_index), results[-1])
        return
    # exemplar candidates: (confidence, key, name, frame, labels at the key slice, gray thumbnail)
    candidates: list[tuple[float, str, str, np.ndarray, np.ndarray, np.ndarray]] = []
    weak: list[tuple[int, list[SliceResult], float]] = []
    for i in others:
        check_cancel(cancel)
        results = run(i, seed_frame, list(prompt.objects))
        conf = case_confidence(r.confidence for r in results)
        if conf is not None and conf < SECOND_PASS_BELOW:
            weak.append((i, results, conf))
            continue
        yield from results
        vol = dataset[i]
        k = _slice_at(position, vol.n_slices)
        key = next((r for r in results if r.slice_index == k), None)
        if conf is not None and conf >= EXEMPLAR_MIN_CONFIDENCE and key is not None and key.labels.any():
            fm = engine.frames(vol, window)
            thumb = thumbnail(fm.gray(k), EXEMPLAR_SIZE)
            candidates.append((conf, exemplar_key(vol.name, thumb), vol.name, fm.frame(k), key.labels.copy(), thumb))
            candidates = sorted(candidates, key=lambda c: (-round(c[0], 6), c[1]))[:MAX_EXEMPLARS]
    for i, results, conf in weak:
        check_cancel(cancel)
        vol = dataset[i]
        if candidates:
            gray = engine.frames(vol, window).gray(_slice_at(position, vol.n_slices))
            best = max(candidates, key=lambda c: (round(image_similarity(gray, c[5]), 6), c[1]))
            seeds = [(oid, best[4] == oid) for oid in names if (best[4] == oid).any()]
            if seeds:
                again = run(i, best[3], seeds)
                conf2 = case_confidence(r.confidence for r in again)
                if conf2 is not None and conf2 > conf:
                    log.info("%s: exemplar seed frame from %s raised confidence %.2f -> %.2f", vol.name, best[2], conf, conf2)
                    results = again
        yield from results
