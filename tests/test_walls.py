"""A box drawn around a wall whose cavity the box model takes (:mod:`promptonce.engine.walls`).

Two stand-ins (not models) play the parts measured on ACDC: a box-only model that answers a box with
the bright region inside it (LiteMedSAM on the myocardium takes the blood pool), and a model taking
clicks and boxes that answers with the wall plus a rim of the cavity (MobileSAM with a background
click in the cavity).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from promptonce.backends.base import BackendInfo, Embedding, Prediction
from promptonce.engine import Engine, PropagationConfig, make_engine, segment
from promptonce.engine.walls import ready_cavity, wall_contrast
from promptonce.types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, Volume

SIZE, N = 64, 9


def _box_region(shape, box) -> np.ndarray:
    region = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return region


class _Stub:
    def __init__(self, name: str, points: bool) -> None:
        self.info = BackendInfo(name=name, title=name, points=points, boxes=True, input_size=0)
        self.calls = 0

    def embed(self, frame):
        return Embedding(frame[..., 0].astype(np.float32), frame.shape[:2], self.info.name)

    @staticmethod
    def _parts(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bright = gray > 0.75 * gray.max()
        return bright, (gray > 0.25 * gray.max()) & ~bright


class _CavityModel(_Stub):
    """Box only: the bright pixels inside the box (the cavity), or, without any, the core of the object."""

    def __init__(self) -> None:
        super().__init__("cavity", points=False)

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        self.calls += 1
        gray = embedding.data
        region = _box_region(gray.shape, box)
        bright, mid = self._parts(gray)
        mask = bright & region
        if not mask.any():  # a uniform object: its core only
            mask = ndi.binary_erosion(mid & region, iterations=6)
        return Prediction(mask[None], np.array([0.9], np.float32))


class _WallModel(_Stub):
    """Clicks and boxes: the mid-grey pixels in the box with a 2-pixel rim of the cavity and a 2-pixel
    band outside the box; three candidates (that, the rim alone, the wall alone) for one click, else the first."""

    def __init__(self) -> None:
        super().__init__("wall", points=True)

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        self.calls += 1
        gray = embedding.data
        region = _box_region(gray.shape, box)
        bright, mid = self._parts(gray)
        wall = mid & region
        beyond = ndi.binary_dilation(region, iterations=2) & ~region  # spills past the box, cut off
        leak = wall | (ndi.binary_dilation(wall, iterations=2) & bright & region) | beyond
        if not multimask:
            return Prediction(leak[None], np.array([0.8], np.float32))
        rim = leak & ~wall  # the best-scored candidate keeps well inside the box: never taken
        return Prediction(np.stack([leak, rim, wall]), np.array([0.8, 0.95, 0.6], np.float32))


def _rings(uniform: bool = False, thick: int = 6) -> tuple[Volume, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    walls = np.zeros((N, SIZE, SIZE), bool)
    cavities = np.zeros((N, SIZE, SIZE), bool)
    for k in range(1, N - 1):
        r = 18 - abs(k - N // 2)
        d2 = (xx - 32) ** 2 + (yy - 31) ** 2
        walls[k] = (d2 <= r * r) & (d2 > (r - thick) ** 2)
        cavities[k] = d2 <= (r - thick) ** 2
    inner = cavities.copy()  # blood spreads more than muscle; so does the middle of the uniform object
    if uniform:  # one object of one grey level (the hippocampus' case): no cavity of its own
        walls, cavities = walls | cavities, np.zeros_like(cavities)
    arr = np.full((N, SIZE, SIZE), 20.0, np.float32)
    arr[walls] = 110.0
    arr[cavities] = 240.0
    arr[:, :8, :8] = 240.0  # a bright corner on every slice: both phantoms are windowed alike
    rng = np.random.default_rng(0)
    arr += rng.normal(0, 2.0, arr.shape).astype(np.float32)
    arr[inner] += rng.normal(0, 4.0, int(inner.sum())).astype(np.float32)
    return Volume(arr, name="rings"), walls, cavities


def _dice(a, b) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def _engine(walls: bool = True, **kw) -> tuple[Engine, _CavityModel, _WallModel]:
    box_model, wall_model = _CavityModel(), _WallModel()
    eng = Engine(box_model, wall_backend=wall_model, config=PropagationConfig(box_walls=walls), **kw)
    return eng, box_model, wall_model


def _box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def test_a_box_around_a_wall_gives_the_wall_not_its_cavity():
    vol, walls, cavities = _rings()
    k = N // 2
    eng, _, wall_model = _engine()
    mask, score = eng.predict_object(vol, k, ObjectPrompt(box=_box(walls[k])))
    assert _dice(mask, walls[k]) == 1.0  # the rim of the cavity the wall model took is cut out
    assert not (mask & cavities[k]).any()
    assert score == pytest.approx(0.8)  # of the candidates that reach the box, the best-scored
    assert wall_model.calls == 2  # asked, then asked again with a click on each side of the wall
    off, _, off_wall = _engine(walls=False)
    mask, _ = off.predict_object(vol, k, ObjectPrompt(box=_box(walls[k])))
    assert _dice(mask, cavities[k]) == 1.0 and off_wall.calls == 0  # as before: the cavity


def test_a_click_inside_the_cavity_keeps_the_cavity_and_one_on_the_wall_goes_with_it():
    vol, walls, cavities = _rings()
    k = N // 2
    eng, _, wall_model = _engine()
    inside = ObjectPrompt(box=_box(walls[k]), points=(Point(32.0, 31.0),))
    mask, _ = eng.predict_object(vol, k, inside)
    assert _dice(mask, cavities[k]) == 1.0 and wall_model.calls == 0
    ys, xs = np.nonzero(walls[k])
    on_wall = ObjectPrompt(box=_box(walls[k]), points=(Point(float(xs[0]), float(ys[0])),))
    mask, _ = eng.predict_object(vol, k, on_wall)
    assert _dice(mask, walls[k]) == 1.0 and wall_model.calls == 2


def test_the_core_of_a_uniform_object_is_not_taken_for_a_cavity():
    vol, objects, _ = _rings(uniform=True)
    k = N // 2
    eng, _, wall_model = _engine()
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=_box(objects[k])))
    assert wall_model.calls == 1  # asked, then refused: the rest has the core's own grey level
    off, _, _ = _engine(walls=False)
    core, _ = off.predict_object(vol, k, ObjectPrompt(box=_box(objects[k])))
    assert core.sum() < 0.6 * objects[k].sum() and np.array_equal(mask, core)  # the box model's core, as before


def test_the_walk_carries_the_wall_through_the_volume():
    vol, walls, cavities = _rings()
    k = N // 2
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k)
    eng, _, _ = _engine()
    results = list(eng.segment_volume(vol, prompt))
    out = {r.slice_index: r.labels != 0 for r in results}
    for j in range(1, N - 1):
        assert _dice(out[j], walls[j]) > 0.95, j
    seed = next(r for r in results if r.prompted)
    assert any("taken as the wall around a cavity" in f for f in seed.flags)  # a guess: the user is told
    off, _, _ = _engine(walls=False)
    results = list(off.segment_volume(vol, prompt))
    assert not any("taken as the wall" in f for r in results for f in r.flags)
    out = {r.slice_index: r.labels != 0 for r in results}
    assert max(_dice(out[j], walls[j]) for j in range(1, N - 1)) == 0.0  # the cavity, slice after slice


def test_a_ready_wall_mask_is_walked_as_a_wall_and_a_ready_cavity_as_before():
    vol, walls, cavities = _rings()
    k = N // 2
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k)
    eng, _, _ = _engine()
    assert np.array_equal(ready_cavity(eng, vol, k, None, _box(walls[k]), walls[k]), cavities[k])
    assert ready_cavity(eng, vol, k, None, _box(walls[k]), walls[k] | cavities[k]) is None  # it holds the cavity
    results = list(eng.segment_volume(vol, prompt, seed_masks={1: walls[k]}))
    out = {r.slice_index: r.labels != 0 for r in results}
    assert all(_dice(out[j], walls[j]) > 0.95 for j in range(1, N - 1))
    assert any("taken as the wall" in f for f in next(r for r in results if r.prompted).flags)
    filled = walls[k] | cavities[k]  # a disc drawn by hand: the box model's answer touches its box
    assert ready_cavity(eng, vol, k, None, _box(filled), filled) is None


def test_wall_contrast_in_standard_deviations_of_the_wall():
    gray = np.zeros((10, 10), np.float32)
    gray[:5] = 100.0
    gray[5:] = 120.0 + 4.0 * (np.arange(10, dtype=np.float32) % 2)  # median 122, standard deviation 2
    cavity, wall = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    cavity[:5], wall[5:] = True, True
    assert wall_contrast(gray, cavity, wall) == pytest.approx(11.0)
    gray[5:] = 120.0  # no spread: one grey level is the scale
    assert wall_contrast(gray, cavity, wall) == pytest.approx(20.0)
    assert wall_contrast(np.full((10, 10), 7.0), cavity, wall) == 0.0


def test_make_engine_gives_a_box_only_model_a_wall_model_when_asked():
    from promptonce.backends.registry import get_backend

    box_prompt = SlicePrompt((ObjectPrompt(box=Box(1, 1, 9, 9)),), slice_index=0)
    try:
        mobilesam = get_backend("mobilesam")
    except Exception as exc:  # pragma: no cover - the shipped weights are part of the install
        pytest.skip(f"MobileSAM is not available here: {exc}")
    eng = make_engine(box_prompt, backend=_CavityModel())
    assert eng.click_backend is None and eng.wall_backend is mobilesam
    off = PropagationConfig(box_walls=False)
    assert make_engine(box_prompt, backend=_CavityModel(), config=off).wall_backend is None
    assert make_engine(box_prompt, backend=_CavityModel(), click_backend=None).wall_backend is None
    assert make_engine(box_prompt, backend=_WallModel()).wall_backend is None  # it takes clicks itself


def test_a_wall_keeps_its_own_tissue_and_its_thickness():
    from promptonce.engine.walls import WALL_DEPTH_SLACK, of_wall_tissue, wall_depth, within_depth

    yy, xx = np.mgrid[0:40, 0:40]
    d = np.hypot(xx - 20.0, yy - 20.0)
    cavity = d <= 8
    ring = (d > 8) & (d <= 12)  # 4 px thick
    spill = (d > 12) & (d <= 16) & (xx > 28) & (abs(yy - 20) <= 4)  # a spill beyond it on one side
    gray = np.where(cavity, 200.0, 60.0)
    gray[spill & (yy < 20)] = 190.0  # part of the spill is a neighbouring cavity's bright blood
    wall = ring | spill
    kept = of_wall_tissue(gray, cavity, wall)
    assert np.array_equal(kept, wall & ~(spill & (yy < 20)))
    depth = wall_depth(ring, cavity)
    assert 3.0 <= depth <= 5.0  # twice the median distance of an even ring: its thickness
    assert wall_depth(wall, cavity) < 1.3 * depth  # a spill on one side moves it little
    inside = within_depth(wall, cavity, depth)
    assert (inside >= ring).all()  # the ring is kept whole
    far = np.hypot(xx - 20.0, yy - 20.0) > 8 + WALL_DEPTH_SLACK * depth + 1.0
    assert not (inside & far).any() and (wall & far).any()  # what lies further out is cut
    assert not (inside & (d > 13.5)).any()  # the spill keeps no more than about a pixel beyond the ring
    assert wall_depth(ring, np.zeros_like(cavity)) == 0.0


def test_a_loose_box_around_an_object_does_not_take_its_surroundings_for_a_wall():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    blob = (xx - 32) ** 2 + (yy - 31) ** 2 <= 64
    arr = np.full((3, SIZE, SIZE), 110.0, np.float32)  # mid-grey all around: the wall model answers it
    arr[:, blob] = 240.0
    arr[:, :8, :8] = 20.0
    rng = np.random.default_rng(1)
    arr += rng.normal(0, 2.0, arr.shape).astype(np.float32)
    arr[:, blob] += rng.normal(0, 4.0, (3, int(blob.sum()))).astype(np.float32)  # the surroundings are one tissue
    vol = Volume(arr, name="blob")
    eng, _, wall_model = _engine()
    loose = Box(14.0, 13.0, 50.0, 49.0)  # 10 px around an object 17 px across
    mask, _ = eng.predict_object(vol, 1, ObjectPrompt(box=loose))
    assert wall_model.calls == 1  # asked: the answer keeps inside its box
    assert _dice(mask, blob) == 1.0  # and refused: what it gave fills the box's corners


def test_a_box_drawn_a_pixel_around_a_cavity_keeps_the_cavity():
    vol, walls, cavities = _rings()
    k = N // 2
    c = _box(cavities[k])
    around = Box(c.x0 - 1, c.y0 - 1, c.x1 + 1, c.y1 + 1)  # the LV blood pool with a margin, not the myocardium
    eng, _, wall_model = _engine()
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=around))
    assert wall_model.calls == 0 and _dice(mask, cavities[k]) == 1.0


def test_surroundings_of_two_tissues_are_no_wall():
    vol, walls, cavities = _rings()
    k = N // 2
    arr = vol.array.copy()
    left = np.zeros_like(walls)
    left[:, :, :32] = True
    arr[walls & left] -= 40.0  # 70 and 110 either side: the inner layer still differs from the cavity
    two = Volume(arr, name="two tissues")
    eng, _, wall_model = _engine()
    mask, _ = eng.predict_object(two, k, ObjectPrompt(box=_box(walls[k])))
    assert wall_model.calls == 1 and _dice(mask, cavities[k]) == 1.0  # asked, refused: the box model's answer
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=_box(walls[k])))
    assert _dice(mask, walls[k]) == 1.0  # the same ring of one tissue is taken


def test_the_app_preview_says_when_a_box_is_taken_for_a_wall():
    from promptonce.annotation import AnnotationSession

    vol, walls, cavities = _rings()
    k = N // 2
    s = AnnotationSession(vol, model="fake")
    s.engines["fake"], _, _ = _engine()
    p = s.add_box(0, k, _box(walls[k]))
    assert _dice(p.mask, walls[k]) == 1.0 and "taken as the wall around a cavity" in p.message, p.message
    s.engines["fake"], _, _ = _engine(walls=False)
    p = s.add_box(0, k, _box(walls[k]))
    assert _dice(p.mask, cavities[k]) == 1.0 and "taken as the wall" not in p.message, p.message


def test_a_background_click_in_the_cavity_asks_for_the_wall_however_close_the_box():
    vol, walls, cavities = _rings(thick=3)
    k = N // 2
    b = _box(walls[k])
    tight = Box(b.x0 + 1, b.y0 + 1, b.x1 - 1, b.y1 - 1)  # drawn a pixel inside a thin wall: the cavity 6% in
    eng, _, wall_model = _engine()
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=tight))
    assert wall_model.calls == 0 and _dice(mask, cavities[k]) == 1.0  # as close as a cavity's loose box: kept
    not_this = ObjectPrompt(box=tight, points=(Point(32.0, 31.0, 0),))
    mask, _ = eng.predict_object(vol, k, not_this)
    assert wall_model.calls == 2 and not (mask & cavities[k]).any()
    assert _dice(mask, walls[k]) > 0.9  # the wall, but for what lies outside the box


def test_a_background_click_in_the_cavity_of_a_box_cut_inside_the_wall_gets_the_wall_past_the_box(monkeypatch):
    from promptonce.engine import walls as W

    vol, walls, cavities = _rings(thick=6)
    k = N // 2 - 1
    b = _box(walls[k])
    cut = Box(b.x0 + 3, b.y0 + 3, b.x1 - 3, b.y1 - 3)  # inside the wall's outer edge: the ring fills the corners
    not_this = ObjectPrompt(box=cut, points=(Point(32.0, 31.0, 0),))
    eng, _, _ = _engine()
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=cut))
    assert _dice(mask, cavities[k]) == 1.0  # no click: the cavity, as for a box drawn loosely around it
    mask, _ = eng.predict_object(vol, k, not_this)
    assert _dice(mask, walls[k]) > 0.95 and not (mask & cavities[k]).any()  # with what lies past the box
    assert mask[~_box_region(mask.shape, cut.as_array())].any()
    eng, _, _ = _engine()
    assert W.corner_share(walls[k], cut) > W.WALL_MAX_CORNERS  # why the box alone gives no wall
    monkeypatch.setattr(W, "_wall_past_box", lambda *a: None)  # asked in the box itself only: no wall
    mask, _ = eng.predict_object(vol, k, not_this)
    assert not (mask & walls[k]).any()


def test_the_app_preview_says_how_to_ask_for_the_ring_when_the_box_is_close():
    from promptonce.annotation import AnnotationSession

    vol, walls, cavities = _rings(thick=3)
    k = N // 2
    b = _box(walls[k])
    tight = Box(b.x0 + 1, b.y0 + 1, b.x1 - 1, b.y1 - 1)  # the cavity 5.7% inside: no wall asked
    s = AnnotationSession(vol, model="fake")
    s.engines["fake"], _, _ = _engine()
    p = s.add_box(0, k, tight)
    assert _dice(p.mask, cavities[k]) == 1.0 and "add a background click inside it" in p.message, p.message
    p = s.add_box(0, k, _box(cavities[k]))  # a box close around the cavity: nothing to say
    assert "background click" not in p.message, p.message


def test_band_clicks_lie_halfway_between_the_cavity_and_its_box():
    from promptonce.engine.walls import band_clicks

    cavity = np.zeros((40, 40), bool)
    cavity[15:26, 10:21] = True  # rows 15-25, columns 10-20: centre (20, 15)
    pts = band_clicks(cavity, Box(4.0, 9.0, 21.0, 31.0))  # 6 px left, 6 above, 5 below, 1 right
    assert [(p.x, p.y, p.label) for p in pts] == [(7.0, 20.0, 1), (15.0, 12.0, 1), (15.0, 28.0, 1)]
    assert band_clicks(np.zeros((40, 40), bool), Box(4.0, 9.0, 21.0, 31.0)) == ()
    pts = band_clicks(cavity, Box(-16.0, 9.0, 21.0, 45.0))  # a box past the image's left and bottom edges
    assert [(p.x, p.y) for p in pts] == [(5.0, 20.0), (15.0, 12.0), (15.0, 32.0)]  # halfway to the edge


class _OpenWallModel(_WallModel):
    """Asked with one click, it leaves the wall's right side open; asked with clicks on every side
    (and no choice of candidates), it gives the whole wall: MobileSAM's thin or open sides."""

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        pred = super().predict(embedding, points, point_labels, box, mask_logits, multimask)
        if multimask:
            cut = np.zeros(pred.masks.shape[1:], bool)
            cut[24:40, 42:] = True
            return Prediction(pred.masks & ~cut, pred.scores)
        return pred


def test_a_wall_left_open_on_one_side_is_closed_by_a_click_on_each_side(monkeypatch):
    import promptonce.engine.walls as walls_module

    vol, walls, cavities = _rings()
    k = N // 2
    box_model, wall_model = _CavityModel(), _OpenWallModel()
    eng = Engine(box_model, wall_backend=wall_model, config=PropagationConfig(box_walls=True))
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=_box(walls[k])))
    assert _dice(mask, walls[k]) == 1.0 and wall_model.calls == 2
    monkeypatch.setattr(walls_module, "WALL_BAND_CLICKS", False)
    mask, _ = eng.predict_object(vol, k, ObjectPrompt(box=_box(walls[k])))
    assert wall_model.calls == 3 and 0.5 < _dice(mask, walls[k]) < 0.95  # taken, but open on the right


def test_one_tissue_judges_the_inner_layer_and_allows_the_whole_wall_a_little_more():
    from promptonce.engine.walls import WALL_MAX_SPREAD_WHOLE, one_tissue

    yy, xx = np.mgrid[0:60, 0:60]
    d = np.hypot(xx - 30.0, yy - 30.0)
    cavity, inner, outer = d <= 10, (d > 10) & (d <= 13), (d > 13) & (d <= 20)
    rng = np.random.default_rng(2)
    gray = np.where(cavity, 200.0 + rng.normal(0, 4.0, d.shape), 100.0 + rng.normal(0, 2.0, d.shape))
    assert one_tissue(gray, cavity, inner | outer)  # one tissue throughout
    spill = gray.copy()  # a loose box: what lies beyond the wall spreads more, the wall's layer does not
    spill[outer] = 100.0 + rng.normal(0, 6.0, int(outer.sum()))
    s_cavity, s_whole = float(np.std(spill[cavity])), float(np.std(spill[inner | outer]))
    assert s_cavity < s_whole <= WALL_MAX_SPREAD_WHOLE * s_cavity
    assert one_tissue(spill, cavity, inner | outer)
    mixed = gray.copy()  # surroundings of several tissues
    mixed[outer] = np.where(xx[outer] < 30, 60.0, 140.0)
    assert not one_tissue(mixed, cavity, inner | outer)
    layered = gray.copy()  # the layer next to the cavity spreads more than the cavity, the whole wall less
    layered[inner] = 100.0 + rng.normal(0, 7.0, int(inner.sum()))
    assert float(np.std(layered[inner | outer])) <= WALL_MAX_SPREAD_WHOLE * float(np.std(layered[cavity]))
    assert not one_tissue(layered, cavity, inner | outer)


def test_every_case_of_a_dataset_gets_the_wall_when_the_seed_case_did():
    vol, walls, cavities = _rings()
    k = N // 2
    shift = (0, 3, -2)  # the other case: the same heart a few pixels away
    other = Volume(np.roll(vol.array, shift, axis=(0, 1, 2)), name="other")
    walls2, cavities2 = np.roll(walls, shift, axis=(0, 1, 2)), np.roll(cavities, shift, axis=(0, 1, 2))
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k, volume_index=0)
    eng, _, _ = _engine()
    results = [r for r in segment(Dataset([vol, other]), prompt, scope="dataset", engine=eng) if r.volume_index == 1]
    out = {r.slice_index: r.labels != 0 for r in results}
    assert np.mean([_dice(out[j], walls2[j]) for j in range(2, N - 2)]) > 0.9
    assert not any((out[j] & cavities2[j]).sum() > 0.2 * cavities2[j].sum() for j in range(2, N - 2))
    assert not any("taken as the wall" in f for r in results for f in r.flags)  # said once, on the seed case
    assert not any("no wall found" in f or "carried from" in f for r in results for f in r.flags)
    off, _, _ = _engine(walls=False)  # as before: the cavity on the other case too
    results = [r for r in segment(Dataset([vol, other]), prompt, scope="dataset", engine=off) if r.volume_index == 1]
    assert max(_dice(r.labels != 0, walls2[r.slice_index]) for r in results) < 0.1


def test_a_case_on_which_no_wall_is_found_is_flagged_and_every_slice_walked_from_it_doubted(monkeypatch):
    import promptonce.engine.transfer as transfer

    vol, walls, cavities = _rings()
    k = N // 2
    other = Volume(np.roll(vol.array, (0, 3, -2), axis=(0, 1, 2)), name="other")
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k, volume_index=0)
    monkeypatch.setattr(transfer, "wall_from_prior", lambda *a, **kw: None)  # no wall around any cavity there
    eng, _, _ = _engine()
    results = [r for r in segment(Dataset([vol, other]), prompt, scope="dataset", engine=eng) if r.volume_index == 1]
    key = next(r for r in results if r.slice_index == k)
    assert any("no wall found around a cavity on this case" in f for f in key.flags)
    walked = [r for r in results if r.slice_index != k and (r.labels != 0).any()]
    assert walked and all(any(f"carried from slice {k}, whose mask was flagged" in f for f in r.flags) for r in walked)
    assert all(r.confidence is not None and r.confidence <= 0.1 for r in [key, *walked])


def _three_hearts() -> tuple[Volume, Volume, Volume, np.ndarray, np.ndarray, SlicePrompt]:
    """The rings phantom and two cases of it a few pixels away ("a", "b"), prompted on the first's middle slice."""
    vol, walls, _ = _rings()
    k = N // 2
    shift_a, shift_b = (0, 3, -2), (0, -2, 3)
    a = Volume(np.roll(vol.array, shift_a, axis=(0, 1, 2)), name="a")
    b = Volume(np.roll(vol.array, shift_b, axis=(0, 1, 2)), name="b")
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k, volume_index=0)
    return vol, a, b, walls, np.roll(walls, shift_b, axis=(0, 1, 2)), prompt


def test_a_case_without_a_wall_is_segmented_again_from_a_case_whose_wall_was_found(monkeypatch):
    import promptonce.engine.transfer as transfer

    vol, a, b, walls, walls_b, prompt = _three_hearts()
    k = N // 2
    real, missed = transfer.wall_from_prior, []

    def not_from_the_seed_on_b(eng, volume, *args, **kw):  # on b, the seed's ring gives no wall
        if volume.name == "b" and not missed:
            missed.append(True)
            return None
        return real(eng, volume, *args, **kw)

    monkeypatch.setattr(transfer, "wall_from_prior", not_from_the_seed_on_b)
    monkeypatch.setattr(transfer, "WALL_KEY_SEARCH", 0)  # not from b's other slices (the test after next)
    eng, _, _ = _engine()
    results = [r for r in segment(Dataset([vol, a, b]), prompt, scope="dataset", engine=eng) if r.volume_index == 2]
    assert missed  # the first pass on b found no wall ...
    out = {r.slice_index: r.labels != 0 for r in results}
    assert np.mean([_dice(out[j], walls_b[j]) for j in range(2, N - 2)]) > 0.9  # ... a's wall gave it
    assert not any("no wall found" in f or "carried from slice" in f for r in results for f in r.flags)
    # a walled exemplar is kept whatever its confidence; another of that confidence is not
    ex = transfer.make_exemplar("w", walls[k].astype(np.float32), walls[k].astype(np.uint8), [1], 0.5, 0.4,
                                walled=True)
    assert [e.name for e in transfer.DatasetTransfer.select_exemplars([ex])] == ["w"]
    assert transfer.DatasetTransfer.select_exemplars([replace(ex, walled=False)]) == []


def test_a_case_whose_seed_ring_gave_a_weak_wall_takes_a_more_confident_one_from_a_walled_case(monkeypatch):
    import promptonce.engine.transfer as transfer

    vol, a, b, walls, walls_b, prompt = _three_hearts()
    k = N // 2
    real, asked = transfer.wall_from_prior, []

    def misplaced_from_the_seed_on_b(eng, volume, *args, **kw):  # on b, the seed's ring gives a wall 9 px off
        found = real(eng, volume, *args, **kw)
        if volume.name == "b":
            asked.append(found is not None)
            if len(asked) == 1 and found is not None:
                wall, score, cavity = found
                return np.roll(wall, 9, axis=1), score, np.roll(cavity, 9, axis=1)
        return found

    monkeypatch.setattr(transfer, "wall_from_prior", misplaced_from_the_seed_on_b)
    eng, _, _ = _engine()

    def dice_on_b() -> float:
        asked.clear()
        results = [r for r in segment(Dataset([vol, a, b]), prompt, scope="dataset", engine=eng) if r.volume_index == 2]
        key = next(r for r in results if r.slice_index == k)
        return _dice(key.labels != 0, walls_b[k])

    assert dice_on_b() > 0.9  # the weak wall from the seed was redone from a's
    assert asked == [True, True]  # once in each pass (the exemplar pass reuses its probe); a weak wall: no search
    monkeypatch.setattr(transfer, "WALL_ATLAS_WEAK_BELOW", 0.0)
    assert dice_on_b() < 0.7  # as before: the misplaced wall kept


def test_a_case_without_a_wall_on_its_key_slice_takes_the_neighbouring_slice_whose_wall_agrees(monkeypatch):
    import promptonce.engine.transfer as transfer

    vol, a, b, walls, walls_b, prompt = _three_hearts()
    k = N // 2
    real, asked = transfer.wall_from_prior, []

    def none_on_b_key_slice(eng, volume, j, *args, **kw):  # on b's key slice the seed's ring gives no wall
        asked.append((volume.name, j))
        return None if volume.name == "b" and j == k else real(eng, volume, j, *args, **kw)

    monkeypatch.setattr(transfer, "wall_from_prior", none_on_b_key_slice)
    monkeypatch.setattr(transfer, "WALL_ATLAS_TRIES", 0)  # no other case's wall to fall back on

    def run() -> list:
        asked.clear()
        eng, _, _ = _engine()
        return [r for r in segment(Dataset([vol, a, b]), prompt, scope="dataset", engine=eng) if r.volume_index == 2]

    results = run()
    assert [j for name, j in asked if name == "b"] == [k, k - 1, k + 1, k - 2, k + 2]  # near slices first
    assert [j for name, j in asked if name == "a"] == [k]  # a wall found on the key slice: no search
    out = {r.slice_index: r.labels != 0 for r in results}
    assert np.mean([_dice(out[j], walls_b[j]) for j in range(2, N - 2)]) > 0.9  # walked from a neighbour
    assert not any("no wall found" in f for r in results for f in r.flags)
    monkeypatch.setattr(transfer, "WALL_KEY_SEARCH", 0)
    results = run()
    assert [j for name, j in asked if name == "b"] == [k]
    assert max(_dice(r.labels != 0, walls_b[r.slice_index]) for r in results) < 0.1  # as before: b's cavity
    assert any("no wall found" in f for r in results for f in r.flags)


def test_a_ready_wall_with_its_cavity_is_walked_as_a_wall_without_asking_again(monkeypatch):
    import promptonce.engine.walk as walk_module

    vol, walls, cavities = _rings()
    k = N // 2
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k)
    monkeypatch.setattr(walk_module, "ready_cavity", lambda *a, **kw: None)  # the box model no longer says so
    eng, _, _ = _engine()
    told = list(eng.segment_volume(vol, prompt, seed_masks={1: walls[k]}, seed_cavities={1: cavities[k]}))
    assert all(_dice(r.labels != 0, walls[r.slice_index]) > 0.95 for r in told if 0 < r.slice_index < N - 1)
    asked = list(eng.segment_volume(vol, prompt, seed_masks={1: walls[k]}))
    assert max(_dice(r.labels != 0, walls[r.slice_index]) for r in asked if r.slice_index != k) < 0.1


def test_a_wall_not_found_from_the_rings_hole_is_asked_again_from_the_hole_grown_by_its_depth(monkeypatch):
    import promptonce.engine.wall_prior as wall_prior

    vol, walls, cavities = _rings()
    k = N // 2
    eng, _, _ = _engine()
    prior = walls[k].astype(np.float32)
    hole = wall_prior.ring_hole(prior)
    assert np.array_equal(hole, cavities[k])
    priors, answers = [], [None, (walls[k], 0.8, _box(walls[k]))]  # the first wall asked for is not found
    monkeypatch.setattr(wall_prior, "wall_within_depth", lambda *a, **kw: answers.pop(0))
    real = wall_prior.prior_guided_mask

    def recorded(e, v, kk, p, *a, **kw):
        priors.append(p > 0)
        return real(e, v, kk, p, *a, **kw)

    monkeypatch.setattr(wall_prior, "prior_guided_mask", recorded)
    wall, score, cavity = wall_prior.wall_from_prior(eng, vol, k, None, prior, depth=4.0)
    assert np.array_equal(priors[0], hole) and priors[1].sum() > hole.sum()
    assert np.array_equal(priors[1], ndi.binary_dilation(hole, iterations=4))
    assert score == 0.8 and np.array_equal(cavity, cavities[k]) and wall.any()
    assert wall_prior.wall_from_prior(eng, vol, k, None, np.zeros_like(prior), depth=4.0) is None  # no ring: no hole


def _thinning_rings() -> tuple[Volume, np.ndarray, np.ndarray]:
    """Rings 6 px thick on the middle slice; on the others the cavity sits 4 px up and to the right, so
    the wall is 2 px thick on those sides and 10 px on the other two (a wall thinner on a neighbour
    slice, or on a case carried from another, than on the prompted slice)."""
    vol, walls, cavities = _rings()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    arr = np.asarray(vol.array).copy()
    for j in range(1, N - 1):
        if j == N // 2:
            continue
        r = 18 - abs(j - N // 2)
        outer = (xx - 32) ** 2 + (yy - 31) ** 2 <= r * r
        cavities[j] = (xx - 36) ** 2 + (yy - 27) ** 2 <= (r - 6) ** 2
        walls[j] = outer & ~cavities[j]
        arr[j][outer] = 110.0
        arr[j][cavities[j]] = 240.0
    return Volume(arr, name="thinning"), walls, cavities


def test_a_walked_wall_thinner_than_the_prompted_slices_on_two_sides_is_still_taken(monkeypatch):
    import promptonce.engine.walls as walls_module

    vol, walls, cavities = _thinning_rings()
    k = N // 2
    prompt = SlicePrompt((ObjectPrompt(box=_box(walls[k])),), slice_index=k)
    eng, _, _ = _engine()
    out = {r.slice_index: r.labels != 0 for r in eng.segment_volume(vol, prompt)}
    for j in (k - 1, k + 1):  # the thin sides keep inside the wall's walked box, the wall is taken all round
        assert _dice(out[j], walls[j]) > 0.7, j
        assert not (out[j] & cavities[j]).any()
    monkeypatch.setattr(walls_module, "WALL_FOLLOWED_SURROUND", 2.0)  # only walls reaching three sides
    eng, _, _ = _engine()
    out = {r.slice_index: r.labels != 0 for r in eng.segment_volume(vol, prompt)}
    assert max(_dice(out.get(j, np.zeros_like(walls[j])), walls[j]) for j in (k - 1, k + 1)) < 0.3
