"""A box drawn around a wall: when the box model answers with the cavity the wall encloses.

A box drawn close around a ring (the LV myocardium around its blood pool) is answered by a box-only
medical model (LiteMedSAM) with the bright cavity inside it: on the ACDC tuning volumes 90 of 96
myocardium slices, Dice 0.03. Such an answer keeps away from every side of its box
(:func:`.quality.inside_box_gap`). Then a model that takes points and boxes together (MobileSAM) is
asked again with the same box and a background click deep inside that answer. If the part of its
answer outside the cavity reaches the box and its median intensity differs from the cavity's (a
wall of other tissue around it, not more of the same), the wall is the result, the cavity cut out.

A box model that answers only the core of a small structure (the hippocampus) also keeps away from
its box, but there the rest of the answer has the core's own intensity: the box model's answer is
kept (:data:`WALL_MIN_CONTRAST`). An organ inside a box drawn loosely around it also keeps away from
its box, and a points model asked for what surrounds it answers the surroundings (fat, neighbouring
organs): their grey levels spread more than the organ's (:data:`WALL_MAX_SPREAD`). Measured in
benchmarks/README.md ("Thirtieth round", "Thirty-first round").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .core import Engine

from ..backends.base import Backend, Embedding, Prediction
from ..preprocess import FrameMaker, WindowSpec
from ..prompts import box_from_mask, interior_point
from ..types import Box, ObjectPrompt, Point, Volume
from .clicks import contains_any
from .quality import box_gaps, inside_box_gap

__all__ = [
    "WALL_MIN_CONTRAST",
    "WALL_MIN_GAP",
    "wall_model",
    "wall_contrast",
    "wall_flag",
    "ring_hint",
    "one_tissue",
    "wall_around",
    "wall_within_depth",
    "band_clicks",
    "of_wall_tissue",
    "corner_share",
    "surround_share",
    "ready_cavity",
    "wall_depth",
    "within_depth",
]

#: The box model's answer is taken for a cavity, and a wall asked for, when it keeps this far (a
#: fraction of the box's side) inside every side of the user's box. A box drawn around a wall leaves
#: its cavity inside by the wall's thickness; a box drawn loosely around the cavity itself (the LV
#: blood pool, whose wall is the myocardium) leaves it inside by the box's margin, and the wall taken
#: there is wrong. The two are the same picture; only the distance tells them apart, and not
#: always. ACDC tuning slices (1-10): at 2%, myocardium boxes 1-2 px tight were taken (mean over
#: boxes -2..+4 px 0.625 against 0.544 at 6%), but so were 34 of 96 LV slices with a box 2 px loose
#: (3 at 6%); with 4 px, 70 and 54 of 96 (the thirtieth round's rule: 51).
WALL_MIN_GAP = 0.06
#: An answer kept at least this far inside every side of its box, but less than :data:`WALL_MIN_GAP`,
#: may be a cavity whose wall was meant: the app's preview says how to ask for the wall
#: (:func:`ring_hint`). The myocardium's dragged box in the app left its cavity 2-6% inside.
WALL_HINT_GAP = 0.02
#: The wall's inner layer (:data:`WALL_INNER` px next to the cavity) and the cavity must differ in
#: median grey level by this many standard deviations of that layer's grey levels for the wall to be
#: taken. Tuning slices (ACDC 1-10 myocardium with boxes -2..+4 px around the reference; hippocampus
#: 1-3; CT organs with loose boxes): myocardium median 9.3 (5% below 3.4), hippocampus at most 2.9.
#: The inner layer is the wall itself even where the points model's answer takes in surroundings
#: (a loosely drawn box); the whole answer's contrast fell below 3 on a third of the myocardium
#: slices with the box 4 px loose.
WALL_MIN_CONTRAST = 3.5
#: The width in pixels of the wall's inner layer that :data:`WALL_MIN_CONTRAST` measures.
WALL_INNER = 3.0
#: A wall is one tissue: the grey levels of its inner layer (:data:`WALL_INNER` px next to the cavity)
#: spread (standard deviation) at most this many times the cavity's. What surrounds an organ in a
#: loosely drawn box is several: the CT kidneys, spleen and stomach with boxes 10-30% loose, whose
#: surroundings passed the other checks (Dice 0.94-0.99 -> 0.0-0.03 when taken), spread 0.86-1.66 times
#: the organ's in that layer, all but one (0.86) above 1.0; the myocardium's inner layer 0.26 times the
#: blood pool's (median; 99% below 0.78; ACDC tuning slices, boxes -1..+4 px around the reference).
WALL_MAX_SPREAD = 1.0
#: ... and the whole wall's at most this many: a box drawn a few pixels loose takes in what lies
#: outside the wall, and a myocardium whose whole answer spread 1.01-1.32 times its blood pool's was
#: refused (ACDC tuning, 16 of 192 slices with boxes 2-4 px loose; Dice 0.04 -> 0.74). The one CT
#: surrounding whose inner layer passes spreads 1.74 times.
WALL_MAX_SPREAD_WHOLE = 1.5
#: ... on a walked slice, where the prompted slice has shown the object to be a wall, this many (of
#: the whole wall's grey levels, :func:`wall_contrast`, with no spread check): the
#: walked box holds more of the surroundings, whose spread lowers the contrast (ACDC tuning volumes:
#: 2.0 on a slice next to a seed of 5.0); it only keeps a cavity that has drifted onto the wall's
#: own tissue from being taken for one.
WALL_TRACKED_CONTRAST = 1.0
#: On the prompted slice a wall taken is asked for once more, with a click on it on each side of the
#: cavity (:func:`band_clicks`): the points model's answer to a box and one background click often
#: leaves a side of the ring thin or open. ACDC tuning slices (1-10), walls taken, boxes -1..+4 px
#: around the reference: Dice 0.792 -> 0.811 (exact box 0.820 -> 0.857, 4 px loose 0.755 -> 0.748).
WALL_BAND_CLICKS = True
#: A box the user has said was drawn around a wall (a background click in its cavity) but which gives no
#: wall is asked again grown by this fraction of its side on every side (:func:`_wall_past_box`): a box
#: drawn inside the wall's outer edge cuts the ring, and the cut ends fill the box's corners. ACDC tuning
#: files 1-10, myocardium, boxes 3/2/1 px inside the reference's, the click given where the box alone gave
#: no wall: slice Dice 0.320/0.540/0.645 -> 0.550/0.705/0.756 (benchmarks/wall_boxes.py --asked).
WALL_GROW = 0.15
#: On a walked slice, whose cavity was followed from the slice before, a wall that borders at least this
#: share of its cavity's outline is taken though it reaches fewer than :data:`WALL_MIN_SIDES` sides of its
#: box: that box is the cavity's grown by the seed wall's depth, and a wall thinner on this slice (or on
#: this case, carried from another) keeps inside it on its thin sides. Not on a carried case's key
#: slice, whose cavity is the warped ring's guess: there the sides keep a cavity that took in a
#: neighbour's from being walled. ACDC myocardium, held out files 11-40: per volume 0.611 -> 0.635, one box
#: for all 30 (three seeds) 0.526 -> 0.546 (benchmarks/README.md, "Thirty-sixth round").
WALL_FOLLOWED_SURROUND = 0.9
#: A wall smaller than this many pixels is not a wall.
WALL_MIN_PX = 5
#: A walked wall keeps within this many times the seed wall's depth of its cavity, plus a pixel
#: (:func:`within_depth`). The depth (twice the median distance) runs over the ring's thickness: its
#: outer pixels outnumber its inner ones, and the seed's answer spills. ACDC tuning volumes (1-10, per
#: volume, reference box on the largest slice): 1.5 -> 0.676, 1.0 -> 0.708, 0.75 -> 0.740, 0.5 -> 0.696;
#: at 1.5 the walked walls held 150-250 px outside the reference's epicardium on every slice.
WALL_DEPTH_SLACK = 0.75
#: A wall drawn around leaves the corners of its box empty (a ring in its square); what fills them is
#: the surroundings of an object inside a box drawn loosely around it (CT left kidney and stomach, with
#: a margin of 10-20% of the organ's size: taken for walls before the checks here, Dice 0.98 -> 0.0).
#: A ring cut by a box drawn 1-2 px inside it fills more of them (ACDC tuning, boxes 1-2 px tighter:
#: 21 walls otherwise taken filled more than 0.5, up to 0.92; 0.6 keeps 13 of them).
WALL_MAX_CORNERS = 0.6
#: A wall surrounds its cavity: it borders at least this share of the cavity's outline (a structure
#: beside an object in a loosely drawn box borders one side of it).
WALL_MIN_SURROUND = 0.5
#: The side of each corner square, a fraction of the box's side.
CORNER = 0.2
#: A wall reaches a side of its box when it keeps inside it by less than this fraction of the cavity's
#: distance from the box (a box drawn close around the wall: ~0; a walked box has a margin of a few
#: pixels) ...
REACH = 0.5
#: ... and it reaches at least this many of the four (a thin ring around an object in a loosely drawn
#: box reaches one, if any; MobileSAM's myocardium sometimes misses one side).
WALL_MIN_SIDES = 3


def wall_model(eng: Engine) -> Backend | None:
    """The engine's model that takes a box and clicks together (the backend, its click model or its
    wall model), or None when it has none."""
    for b in (eng.backend, eng.click_backend, getattr(eng, "wall_backend", None)):
        if isinstance(b, Backend) and b.info.points and b.info.boxes:
            return b
    return None


def wall_flag(name: str) -> str:
    """The flag of a prompted slice whose box was taken for a box around a wall: the reading is a guess
    (a box drawn loosely around a cavity looks the same: the ACDC LV with its box 4 px loose was read
    as its myocardium on 54 of 96 tuning slices), so the user is told and given the remedy."""
    return (f"{name}: taken as the wall around a cavity (the box model gave the inside); "
            "if the inside was meant, click inside it")


def ring_hint(name: str, mask: np.ndarray, box: Box | None) -> str | None:
    """The preview's hint for an answer kept 2-6% inside its box (:data:`WALL_HINT_GAP`): a background
    click inside it asks for the ring around it (:func:`wall_around`); None otherwise."""
    gap = inside_box_gap(mask, box)
    if gap is None or not WALL_HINT_GAP <= gap < WALL_MIN_GAP:
        return None
    return f"{name}: if the ring around it was meant (a wall, like the myocardium), add a background click inside it"


def band_clicks(cavity: np.ndarray, box: Box) -> tuple[Point, ...]:
    """Positive clicks on a wall between ``cavity`` and its ``box``: on the row and the column through the
    cavity's centre, halfway from the cavity's edge to the box's side (the side taken at the image's
    edge where the box runs past it), where that is 2 px or more."""
    ys, xs = np.nonzero(cavity)
    if ys.size == 0:
        return ()
    rows, cols = cavity.shape
    cy, cx = int(round(float(ys.mean()))), int(round(float(xs.mean())))
    row, col = np.flatnonzero(cavity[cy]), np.flatnonzero(cavity[:, cx])
    pts: list[Point] = []
    if row.size:
        for edge, side in ((row[0], max(box.x0, 0.0)), (row[-1], min(box.x1, cols - 1.0))):
            if abs(float(edge) - side) >= 2:
                pts.append(Point((float(edge) + side) / 2.0, float(cy)))
    if col.size:
        for edge, side in ((col[0], max(box.y0, 0.0)), (col[-1], min(box.y1, rows - 1.0))):
            if abs(float(edge) - side) >= 2:
                pts.append(Point(float(cx), (float(edge) + side) / 2.0))
    return tuple(pts)


def wall_contrast(gray: np.ndarray, cavity: np.ndarray, wall: np.ndarray) -> float:
    """How far apart the wall's and the cavity's median grey levels are, in standard deviations of the
    wall's grey levels (at least one grey level)."""
    g = np.asarray(gray, np.float32)
    w = g[wall]
    return abs(float(np.median(g[cavity])) - float(np.median(w))) / max(float(np.std(w)), 1.0)


def _sides_reached(mask: np.ndarray, box: Box, within: float) -> int:
    """How many sides of its box a mask comes within ``within`` (a fraction of the box's side) of."""
    gaps = box_gaps(mask, box)
    return 0 if gaps is None else sum(g < within for g in gaps)


def _box_region(shape: tuple[int, ...], box: Box) -> np.ndarray:
    """The pixels whose centres lie inside the box."""
    region = np.zeros(shape, bool)
    y0, x0 = max(int(np.ceil(box.y0)), 0), max(int(np.ceil(box.x0)), 0)
    region[y0 : int(np.floor(box.y1)) + 1, x0 : int(np.floor(box.x1)) + 1] = True
    return region


def wall_around(
    eng: Engine, volume: Volume, k: int, window: WindowSpec, box: Box, cavity: np.ndarray,
    clicks: tuple[Point, ...] = (), tracked: bool = False, followed: bool = False,
) -> tuple[np.ndarray, float] | None:
    """The wall around ``cavity`` inside ``box`` on slice ``k``, or None when there is none to take.

    Args:
        box: the box the cavity came from.
        cavity: the box model's answer, bool ``(rows, cols)``, kept away from every side of ``box``
            (by ``WALL_MIN_GAP``; with ``tracked``, by anything: a walked slice's cavity,
            followed from the slice before, inside the wall's walked box).
        clicks: the user's clicks for this object. A positive one inside the cavity says the cavity
            was meant, and the answer is left as it is; a background one inside it says the wall
            was, and the wall is asked for however close the cavity comes to the box (the gap of a box
            drawn a pixel inside a wall is that of a box drawn loosely around a cavity) and, when the box
            itself gives none, in the box grown past the wall's cut edge (:func:`_wall_past_box`).
        followed: ``tracked``, and the cavity was followed from the slice before (not a carried case's
            guess): a wall around it that reaches fewer sides of the box is taken when it borders the
            cavity all round (:data:`WALL_FOLLOWED_SURROUND`).

    Returns:
        ``(wall mask, score)``: the points model's answer to the box with a background click deep in
        the cavity (of its three candidates, cut to the box, the best-scored that reaches three sides
        of the box, :data:`REACH`), minus the cavity, of the wall's tissue (:func:`of_wall_tissue`),
        when it surrounds the cavity, leaves the box's corners empty and is of one tissue
        (:func:`one_tissue`; on a walked slice, a contrast of :data:`WALL_TRACKED_CONTRAST`). On the
        prompted slice, the answer to the same question with :func:`band_clicks` added replaces it
        when that still surrounds the cavity and leaves the corners empty (:data:`WALL_BAND_CLICKS`).
    """
    model = wall_model(eng)
    gap = inside_box_gap(cavity, box)
    positive = tuple(p for p in clicks if p.label == 1)
    asked = contains_any(cavity, tuple(p for p in clicks if p.label == 0))  # "not this": the ring was meant
    if model is None or gap is None or gap < (0.0 if tracked or asked else WALL_MIN_GAP) or gap <= 0:
        return None
    if contains_any(cavity, positive):
        return None
    inside = interior_point(cavity, label=0)
    if inside is None:
        return None
    pts = (inside, *positive)
    emb = eng.embedding(model, volume, k, window)
    frames = eng.frames(volume, window)
    found = _wall_in_box(model, emb, frames, k, box, cavity, gap, pts, tracked, followed and tracked)
    if found is None and asked and not tracked:
        found = _wall_past_box(model, emb, frames, k, box, cavity, gap, pts)
    return found


def _wall_in_box(
    model: Backend, emb: Embedding, frames: FrameMaker, k: int, box: Box, cavity: np.ndarray, gap: float,
    pts: tuple[Point, ...], tracked: bool, followed: bool,
) -> tuple[np.ndarray, float] | None:
    """:func:`wall_around`'s question in the box itself (``pts``: the background click in the cavity, then
    the user's positive clicks; ``frames``: the volume's, whose slice ``k`` is read only when needed)."""
    pred = _ask(model, emb, box, pts, multimask=len(pts) == 1)
    inside_box = _box_region(cavity.shape, box)  # a box says the object lies inside it
    masks = [m & inside_box for m in pred.masks]
    reach = [i for i, m in enumerate(masks) if _sides_reached(m, box, REACH * gap) >= WALL_MIN_SIDES
             or (followed and surround_share(m & ~cavity, cavity) >= WALL_FOLLOWED_SURROUND)]
    if not reach:
        return None
    best = max(reach, key=lambda i: float(pred.scores[i]))
    wall = masks[best] & ~cavity
    if not _encloses(wall, cavity, box):
        return None
    gray = frames.gray(k)
    if tracked:
        if wall_contrast(gray, cavity, wall) < WALL_TRACKED_CONTRAST:
            return None
    elif not one_tissue(gray, cavity, wall):
        return None
    score = float(pred.scores[best])
    if not tracked and WALL_BAND_CLICKS:
        wall, score = _with_band_clicks(model, emb, box, cavity, pts, inside_box, wall, score)
    return of_wall_tissue(gray, cavity, wall), score


def _wall_past_box(
    model: Backend, emb: Embedding, frames: FrameMaker, k: int, box: Box, cavity: np.ndarray, gap: float,
    pts: tuple[Point, ...],
) -> tuple[np.ndarray, float] | None:
    """The wall around ``cavity`` asked for in ``box`` grown by :data:`WALL_GROW` of its side, when the user
    has said the wall was meant (a background click in the cavity) and the box itself gave none: a box drawn
    inside the wall's outer edge cuts the ring, whose cut ends fill the box's corners. Of the answer's
    candidates (best score first), the first that has the shape of a wall around the cavity in the grown
    box (:func:`_encloses`), reaches three sides of ``box`` and is of one tissue (:func:`one_tissue`) is
    taken, with what it holds beyond ``box``; None when none is."""
    g = max(2.0, WALL_GROW * 0.5 * (box.width + box.height))
    grown = Box(box.x0 - g, box.y0 - g, box.x1 + g, box.y1 + g)
    pred = _ask(model, emb, grown, pts, multimask=len(pts) == 1)
    in_grown, in_box = _box_region(cavity.shape, grown), _box_region(cavity.shape, box)
    gray = None
    for i in np.argsort(-np.asarray(pred.scores, np.float64), kind="stable"):
        wall = pred.masks[i] & in_grown & ~cavity
        if not _encloses(wall, cavity, grown) or _sides_reached(wall & in_box, box, REACH * gap) < WALL_MIN_SIDES:
            continue
        gray = frames.gray(k) if gray is None else gray
        if one_tissue(gray, cavity, wall):
            return of_wall_tissue(gray, cavity, wall), float(pred.scores[i])
    return None


def wall_within_depth(
    eng: Engine, volume: Volume, k: int, window: WindowSpec, cavity: np.ndarray, depth: float, pad: float,
    followed: bool = False,
) -> tuple[np.ndarray, float, Box] | None:
    """The wall around a ``cavity`` found on slice ``k`` (walked from the slice before, or carried from
    another case), when the object is known to be a wall: asked for inside the cavity's box grown by
    ``depth`` (the seed wall's, :func:`wall_depth`) plus ``pad`` pixels, judged as on a walked slice
    (:func:`wall_around`, ``tracked``; ``followed``: the cavity was walked from the slice before), and kept
    within ``depth`` of the cavity (:func:`within_depth`).

    Returns:
        ``(wall, score, the box asked)``, or None when no wall is found there.
    """
    box = box_from_mask(cavity, margin=depth + pad, shape=cavity.shape)
    if box is None:
        return None
    found = wall_around(eng, volume, k, window, box, cavity, tracked=True, followed=followed)
    return None if found is None else (within_depth(found[0], cavity, depth), found[1], box)


def _with_band_clicks(
    model: Backend, emb: Embedding, box: Box, cavity: np.ndarray, pts: tuple[Point, ...], inside_box: np.ndarray,
    wall: np.ndarray, score: float,
) -> tuple[np.ndarray, float]:
    """The wall asked for again with :func:`band_clicks` added to ``pts`` (:data:`WALL_BAND_CLICKS`);
    ``(wall, score)`` as they were when there are none or the answer is no wall around the cavity."""
    band = band_clicks(cavity, box)
    if not band:
        return wall, score
    pred = _ask(model, emb, box, (*pts, *band), multimask=False)
    again = pred.best & inside_box & ~cavity
    return (again, float(np.max(pred.scores))) if _encloses(again, cavity, box) else (wall, score)


def _ask(model: Backend, emb: Embedding, box: Box, pts: tuple[Point, ...], multimask: bool) -> Prediction:
    """The points model's answer to ``box`` with the clicks ``pts``."""
    coords, labels = ObjectPrompt(points=pts, box=box).point_arrays()
    return model.predict(emb, points=coords, point_labels=labels, box=box.as_array(), multimask=multimask)


def _encloses(wall: np.ndarray, cavity: np.ndarray, box: Box) -> bool:
    """Whether ``wall`` has the shape of a wall around ``cavity`` in ``box``: big enough
    (:data:`WALL_MIN_PX`), leaving the box's corners empty (:data:`WALL_MAX_CORNERS`) and bordering most
    of the cavity (:data:`WALL_MIN_SURROUND`)."""
    if int(wall.sum()) < WALL_MIN_PX or corner_share(wall, box) > WALL_MAX_CORNERS:
        return False
    return surround_share(wall, cavity) >= WALL_MIN_SURROUND


def one_tissue(gray: np.ndarray, cavity: np.ndarray, wall: np.ndarray) -> bool:
    """Whether ``wall`` is a wall of one tissue around ``cavity``: its inner layer differs from the cavity
    (:data:`WALL_MIN_CONTRAST`) and spreads no more than the cavity (:data:`WALL_MAX_SPREAD`), and the
    whole wall not much more (:data:`WALL_MAX_SPREAD_WHOLE`)."""
    g = np.asarray(gray, np.float32)
    inner = wall & (ndimage.distance_transform_edt(~cavity) <= WALL_INNER)
    if int(inner.sum()) < WALL_MIN_PX or wall_contrast(g, cavity, inner) < WALL_MIN_CONTRAST:
        return False
    spread = max(float(np.std(g[cavity])), 1.0)
    if float(np.std(g[inner])) > WALL_MAX_SPREAD * spread:
        return False
    return float(np.std(g[wall])) <= WALL_MAX_SPREAD_WHOLE * spread


def surround_share(wall: np.ndarray, cavity: np.ndarray) -> float:
    """The share of the pixels just outside the cavity's outline that the wall (grown by a pixel) holds."""
    rim = ndimage.binary_dilation(cavity) & ~cavity
    if not rim.any():
        return 0.0
    return float((rim & ndimage.binary_dilation(wall)).sum()) / float(rim.sum())


def corner_share(mask: np.ndarray, box: Box) -> float:
    """The share of the box's four corner squares (``CORNER`` of its sides) that ``mask`` covers."""
    region = _box_region(mask.shape, box)
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0.0
    ch, cw = max(int(round(CORNER * rows.size)), 1), max(int(round(CORNER * cols.size)), 1)
    corners = np.zeros(mask.shape, bool)
    for r in (slice(rows[0], rows[0] + ch), slice(rows[-1] - ch + 1, rows[-1] + 1)):
        for c in (slice(cols[0], cols[0] + cw), slice(cols[-1] - cw + 1, cols[-1] + 1)):
            corners[r, c] = True
    return float((mask & corners).sum()) / float(corners.sum())


def of_wall_tissue(gray: np.ndarray, cavity: np.ndarray, wall: np.ndarray) -> np.ndarray:
    """The wall's pixels whose grey level is nearer the wall's median than the cavity's: a wall is
    of other tissue than what its cavity holds, and a points model's answer takes neighbouring
    cavities too (the RV's blood beside the LV's septum)."""
    g = np.asarray(gray, np.float32)
    mc, mw = float(np.median(g[cavity])), float(np.median(g[wall]))
    return wall & (np.abs(g - mw) <= np.abs(g - mc))


def ready_cavity(
    eng: Engine, volume: Volume, k: int, window: WindowSpec, box: Box, mask: np.ndarray
) -> np.ndarray | None:
    """The cavity of a ready mask for ``box`` that is a wall (a preview shown in the app, a corrected
    slice), or None when the mask is no wall.

    It is a wall when the box model answers ``box`` with a region kept away from every side of it
    (the cavity), the mask reaches the box (:data:`REACH`), and it holds at most half of that region.
    """
    backend = eng.backend
    m = np.asarray(mask, bool)
    gap = inside_box_gap(m, box)
    if wall_model(eng) is None or not isinstance(backend, Backend) or not backend.info.boxes or gap is None:
        return None
    answer = backend.predict(eng.embedding(backend, volume, k, window), box=box.as_array()).best
    inner = inside_box_gap(answer, box)
    if inner is None or inner < WALL_MIN_GAP or gap >= REACH * inner:
        return None
    return answer if int((m & answer).sum()) <= 0.5 * int(answer.sum()) else None


def wall_depth(wall: np.ndarray, cavity: np.ndarray) -> float:
    """How thick a wall is: twice its pixels' median distance to the cavity (a ring of even thickness
    T has distances spread evenly over 0..T; a spill of a few pixels further out moves it little)."""
    if not wall.any() or not cavity.any():
        return 0.0
    return 2.0 * float(np.median(ndimage.distance_transform_edt(~cavity)[wall]))


def within_depth(wall: np.ndarray, cavity: np.ndarray, depth: float) -> np.ndarray:
    """The part of a walked wall within ``WALL_DEPTH_SLACK`` times ``depth`` (the seed wall's) of its
    cavity, plus a pixel: a wall keeps its thickness from slice to slice, and a points model asked
    for it inside a walked box spills into what lies around it (ACDC tuning volumes: the walked
    myocardium grew to 1.7-2.4 times the reference's area within five slices)."""
    return wall & (ndimage.distance_transform_edt(~cavity) <= WALL_DEPTH_SLACK * depth + 1.0)
