"""Knobs of image-model propagation (one frozen dataclass)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..errors import InputError

__all__ = ["PropagationConfig", "Strategy"]

Strategy = Literal["transfer", "chain"]


@dataclass(frozen=True)
class PropagationConfig:
    """Knobs of image-model propagation. Defaults were chosen by measurement (see benchmarks/README.md).

    Attributes:
        margin_frac: box margin as a fraction of the mask's box size (each side).
        margin_px: minimum box margin in pixels.
        margin_model_px: ... but at most this many pixels of the box model's input (``info.input_size``
            on the longer side): on a small image the model sees each pixel enlarged, and 3 pixels of a
            51-pixel MR crop are 15 of LiteMedSAM's 256. None: no cap. Binds only below
            ``margin_px * input_size / margin_model_px`` pixels a side (77 for LiteMedSAM): in
            ``../shared`` the hippocampus crops and the 64-pixel CIP chest CT. 10 was chosen on
            hippocampus tuning volumes (benchmarks/README.md, "Twenty-ninth round").
        refine: how many times a side of a slice's box that the mask reaches is pushed out by the
            margin and the slice predicted again (lets an object grow without inflating every box:
            boxes with generous margins made masks leak and snowball slice after slice).
        use_points: add the previous mask's interior point as a positive click (point-capable models).
        stop_on_vanish: end an object's propagation in a direction once it vanishes.
        min_area_frac: an object "vanishes" when its area falls below this fraction of its seed area.
        min_area_px: ... or below this many pixels.
        min_score: ... or when the model's confidence falls below this.
        jump_ratio: flag a slice whose area changes by more than this factor from the previous slice.
        min_consistency: an object "vanishes" when its Dice with the neighbouring slice's mask falls
            below this (the model jumped to another structure).
        max_intensity_z: ... or when the median voxel value under its mask moves more than this many
            robust standard deviations away from the seed mask's (an organ keeps its intensity; past
            its end the box lands on a neighbour: on CT liver the last true slices stayed within
            z 1.3 and the first slices beyond it jumped to z 2.4-2.8).
        max_intensity_step_z: the intensity rule does not end an object whose median moved at most
            this many robust standard deviations (the seed's) from the previous slice's: a gradual
            drift rather than a jump onto a neighbour. None (default): off. Measured off: at 1.0 it
            gave the ACDC RV two apex slices (+0.25 points) but walked the hippocampus onto a
            smoothly drifting neighbour (-2.2 points; benchmarks/README.md, "Twenty-fourth round").
        walk_registration: inside a volume, carry each slice's mask to the next slice by 2D
            registration (affine + demons) before deriving the next box; off by default (measured
            within noise on the CT/MR sets here, at ~0.1-0.3 s per slice: benchmarks/README.md).
        walk_registration_size: working grid of that registration (pixels, longer side).
        steady_area_frac, steady_overlap: the intensity rule does not end an object whose area is
            still at least ``steady_area_frac`` of its peak and whose mask overlaps the previous
            slice's by at least this Dice (a large, shape-consistent object whose contents drift).
        regrow_ratio, regrow_trough: ... or when, after its area has shrunk below ``regrow_trough``
            of its peak (a tip), the area grows again by ``regrow_ratio`` (a new structure).
        max_growth: a propagated mask larger than this factor of the previous one is treated as a leak
            and the unrefined prediction is kept instead.
        prior_margins: dataset scope: box margins (fraction of the prior's size) tried around each
            object's registration prior; the image chooses among them, the prior only vetoes
            (:func:`.prior_mask.choose_candidate`).
        soft_side_contrast: dataset scope: a side of the chosen mask whose boundary contrast
            (:func:`.quality.side_contrast`) is below this looks cut short by its box rather than
            ended by an image edge; the box is extended on that side in steps of
            ``soft_side_extend`` of the mask's size and the longer mask kept when it ends inside
            the extension with a boundary there sharper by at least ``soft_side_gain``
            (:func:`.prior_mask.extend_soft_sides`). 0 turns this off.
        side_search, side_search_offsets: dataset scope, single images (X-ray sets): these sides
            of each transferred mask are tried at these offsets (fractions of the mask's size, out
            when positive) and the placement whose boundary follows image edges best is kept
            (:func:`.prior_mask.search_sides`); the lung base is where a seed's shape misleads most.
            ``()`` turns this off.
        exemplar_prior_margins, exemplar_side_search_offsets: dataset scope, single images: when
            given, the exemplar pass (:meth:`.transfer.DatasetTransfer.second_pass`) tries these
            margins and these placements of the searched sides instead of ``prior_margins`` and
            ``side_search_offsets``; ``None`` (default): the first pass's. Volumes keep the first
            pass's on both passes. A speed setting, off by default: ``(0.0, 0.05)`` and
            ``(-0.05, 0.15)`` asked the decoder 12-14% less often on Shenzhen X-rays and held Dice
            for typical seeds (four tuning and three held-out seeds: -0.08 to +0.18 points), but
            cost 0.45 points for a seed unlike the set (a child's film, tuning image 0074), whose
            too-small prior needs the wider candidates (benchmarks/README.md, "Twenty-second round").
        atlas_choice_below: dataset scope, single images: when the exemplar pass's fused result is
            less confident than this, the case is also segmented from each of its
            ``atlas_choice_singles`` most similar exemplars alone and the most confident of those
            results is kept (the fused one on ties); a case's choice depends only on the exemplar
            set. 0 (default) turns it off. Measured off: replayed on tuning images, 2 singles below
            0.85 raised a seed unlike the set (a child's film) 0.9211 -> 0.9306; held out (Shenzhen
            366-565, seeds 0435 / 0662) they gave 0.9458 / 0.9459 -> 0.9461 / 0.9442, and 1 single
            below 0.90 0.9461 / 0.9457, at 35-55% more decoder calls: held out the confidence picks
            the best atlas no better than chance (benchmarks/README.md, "Twenty-fifth round").
        atlas_choice_singles: how many single-exemplar results that choice tries.
        pair_base_gap: dataset scope, single images: when two side-by-side objects (the lungs) end
            further apart than this fraction of their height, the shorter one is tried down to the
            other's lower end and the longer one up to the shorter one's, the image choosing, and the
            pair is flagged if the gap remains (:mod:`.pairs`). 0 turns it off.
        transfer_scales: (no usable prior) a transferred box is tried at these sizes (relative, about its centre) and
            the masks vote (pixel majority); box models are sensitive to box size, and a vote over
            sizes is steadier than any single guess. Centred above 1 because box models were trained
            with boxes somewhat larger than the object (MedSAM adds 0-20 px).
        transfer_refine: how many times a transferred prompt is re-derived from the case's own mask.
        transfer_margin_frac: box margin (fraction of the mask size) used in that refinement.
        box_walls: a box the user drew whose answer keeps away from every side of it, in a region of
            other intensity, is taken as drawn around a wall (the LV myocardium around its blood
            pool): a model taking clicks asks again with a background click in that region, and the
            walk carries the wall (:mod:`.walls`; benchmarks/README.md, "Thirtieth round").
    """

    margin_frac: float = 0.02
    margin_px: float = 3.0
    margin_model_px: float | None = 10.0
    refine: int = 1
    use_points: bool = False
    stop_on_vanish: bool = True
    min_area_frac: float = 0.02
    min_area_px: int = 12
    min_score: float = 0.35
    jump_ratio: float = 2.0
    max_growth: float = 3.0
    min_consistency: float = 0.2
    max_intensity_z: float = 2.0
    max_intensity_step_z: float | None = None
    walk_registration: bool = False
    walk_registration_size: int = 96
    steady_area_frac: float = 0.5
    steady_overlap: float = 0.85
    regrow_ratio: float = 1.5
    regrow_trough: float = 0.3
    prior_margins: tuple[float, ...] = (0.0, 0.05, 0.10)
    soft_side_contrast: float = 0.05
    soft_side_extend: float = 0.2
    soft_side_gain: float = 0.03
    side_search: tuple[str, ...] = ("bottom",)
    side_search_offsets: tuple[float, ...] = (-0.05, 0.10, 0.20)
    exemplar_prior_margins: tuple[float, ...] | None = None
    exemplar_side_search_offsets: tuple[float, ...] | None = None
    atlas_choice_below: float = 0.0
    atlas_choice_singles: int = 2
    pair_base_gap: float = 0.15
    transfer_scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3)
    transfer_refine: int = 2
    transfer_margin_frac: float = 0.05
    box_walls: bool = True

    def __post_init__(self) -> None:
        if self.margin_model_px is not None and not self.margin_model_px > 0:
            raise InputError(
                f"margin_model_px must be > 0 model pixels (or None for no cap), got {self.margin_model_px}."
            )
        bad = [s for s in self.side_search if s not in ("left", "top", "right", "bottom")]
        if bad:
            raise InputError(f"side_search names unknown sides {bad}; use left, top, right or bottom.")
        for name in ("prior_margins", "exemplar_prior_margins"):
            if getattr(self, name) is not None and len(getattr(self, name)) == 0:
                raise InputError(f"{name} is empty; give at least one box margin (e.g. 0.0).")

    def for_exemplar_pass(self) -> PropagationConfig:
        """The knobs of a single image's exemplar pass: its own candidate set where one is given (else ``self``)."""
        over = {k: v for k, v in (("prior_margins", self.exemplar_prior_margins),
                                  ("side_search_offsets", self.exemplar_side_search_offsets)) if v is not None}
        return replace(self, **over) if over else self
