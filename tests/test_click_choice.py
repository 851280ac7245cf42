"""A click on a cross-section: the candidates' ranking, the box grown from the click, and the engine path."""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.engine import Engine
from promptonce.engine.click_choice import ClickCandidate, choose, click_component, grown_box, start_box
from promptonce.engine.predict import _grow_from_click
from promptonce.types import Box, ObjectPrompt, Point, Volume
from tests.test_clicks import BoxOnlyFake


def cand(merit_parts=(0.5, 0.5, 0.5, 0.5), contains=True, source="") -> ClickCandidate:
    score, stab, region, edge = merit_parts
    return ClickCandidate(np.zeros((4, 4), bool), score, stab, contains, region, edge, source)


def test_choose_wants_the_clicks_first_then_the_highest_sum() -> None:
    outside = cand((1.0, 1.0, 1.0, 1.0), contains=False, source="outside")
    low = cand((0.5, 0.5, 0.5, 0.5), source="low")
    high = cand((0.9, 0.9, 0.2, 0.3), source="high")  # 2.3 > 2.0
    assert choose([outside, low, high]).source == "high"
    assert choose([outside]).source == "outside"  # nothing holds the clicks: the best of the rest
    assert choose([low, cand(source="same")]).source == "low"  # a tie keeps the earlier one
    assert cand((0.5, 0.5, None, 0.5)).merit == pytest.approx(1.5)  # no region counts 0
    with pytest.raises(ValueError):
        choose([])


def test_grown_box_moves_only_the_sides_the_mask_touches() -> None:
    m = np.zeros((100, 100), bool)
    m[40:60, 40:70] = True  # reaches the box's right side only
    box = Box(30, 30, 69, 70)
    new = grown_box(box, m)
    assert new is not None
    assert (new.x0, new.y0, new.y1) == (30, 30, 70)
    assert new.x1 == pytest.approx(69 + 0.5 * 39)
    assert grown_box(Box(20, 20, 80, 80), m) is None  # enclosed: done
    edge = np.zeros((100, 100), bool)
    edge[0:10, 0:10] = True
    assert grown_box(Box(0, 0, 30, 30), edge) is None  # at the slice's border nothing can move
    assert grown_box(box, np.zeros((100, 100), bool)) is None


def test_click_component_takes_the_part_under_the_click_or_the_nearest() -> None:
    m = np.zeros((50, 50), bool)
    m[5:10, 5:10] = True
    m[30:40, 30:40] = True
    under = click_component(m, Point(35, 35, 1))
    assert under is not None and under[35, 35] and not under[7, 7]
    near = click_component(m, Point(12, 12, 1))
    assert near is not None and near[7, 7] and not near[35, 35]
    assert click_component(np.zeros((5, 5), bool), Point(1, 1, 1)) is None
    assert start_box(Point(2, 48, 1), 5, (50, 50)) == Box(0, 43, 7, 49)


def _disc(size: int = 128, r: int = 30) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (xx - 64) ** 2 + (yy - 64) ** 2 <= r * r
    img = np.where(disc, 200.0, 30.0).astype(np.float32)
    img += np.random.default_rng(1).normal(0, 2, img.shape).astype(np.float32)
    return img, disc


def test_a_box_grown_from_a_click_reaches_the_whole_object() -> None:
    img, disc = _disc()
    vol = Volume(img[None], name="disc", modality="CT")
    eng = Engine(BoxOnlyFake())
    emb = eng.embedding(eng.backend, vol, 0, (255, 127.5))
    start = Point(64, 64, 1)
    grown = _grow_from_click(eng, eng.backend, emb, start, 4.0, (128, 128), 1)
    assert grown is not None
    assert (grown & disc).sum() > 0.97 * disc.sum() and (grown & ~disc).sum() == 0


def test_a_click_whose_click_model_sees_a_fragment_gives_the_whole_object_on_ct() -> None:
    from promptonce.backends.fake import FakeBackend

    img, disc = _disc()
    vol = Volume(img[None], name="disc", modality="CT")
    eng = Engine(BoxOnlyFake(), click_backend=FakeBackend(tolerance=80.0, radius=3.0))  # sees a 3 px disc
    mask, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(Point(70, 60, 1),)), window=(255, 127.5))
    d = 2 * (mask & disc).sum() / (mask.sum() + disc.sum())
    assert d > 0.95
