"""A click on a cross-section: the candidates' ranking, the box grown from the click, and the engine path."""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.engine import Engine
from promptonce.engine.click_choice import (
    ClickCandidate,
    choose,
    click_component,
    grown_box,
    is_crop,
    start_box,
    vote,
)
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
    assert cand((0.5, 0.5, None, 0.5)).merit() == pytest.approx(1.5)  # no region counts 0
    with pytest.raises(ValueError):
        choose([])


def test_choose_on_a_crop_leaves_stability_out() -> None:
    stable = cand((0.6, 1.0, 0.3, 0.1), source="stable")  # 2.0; without stability 1.0
    agrees = cand((0.7, 0.2, 0.6, 0.1), source="agrees")  # 1.6; without stability 1.4
    assert choose([stable, agrees]).source == "stable"
    assert choose([stable, agrees], crop=True).source == "agrees"
    unmeasured = cand((0.7, None, 0.6, 0.1), source="unmeasured")  # stability not measured: counts 0
    assert unmeasured.merit() == pytest.approx(1.4) and unmeasured.merit(0.0) == pytest.approx(1.4)
    assert choose([unmeasured, cand((0.5, None, 0.5, 0.1))], crop=True).source == "unmeasured"
    assert is_crop((35, 51)) and is_crop((40, 200), (1.0, 2.5)) and not is_crop((64, 64), (4.17, 4.17))
    assert not is_crop((101, 122), (3.0, 3.0))


def test_vote_keeps_the_pixels_a_share_of_the_better_ranked_click_holding_candidates_hold() -> None:
    def square(half: int, at: int = 10) -> np.ndarray:
        m = np.zeros((20, 30), bool)
        m[10 - half : 10 + half, at - half : at + half] = True
        return m

    def c(mask: np.ndarray, score: float, contains: bool = True) -> ClickCandidate:
        return ClickCandidate(mask, score, None, contains, None, 0.0)  # merit on a crop = score here

    click = Point(10, 10, 1)
    # five nested squares around the click, the smaller ranked higher: a pixel of the k-th largest is in k of them
    family = [c(square(h), s) for h, s in zip((2, 3, 4, 5, 6), (0.9, 0.8, 0.7, 0.6, 0.5))]
    mask, score = vote(family, click, share=0.2, voters=1.0)
    assert np.array_equal(mask, square(6)) and score == pytest.approx(0.7)  # all vote, 1 of 5 is enough
    assert np.array_equal(vote(family, click, share=0.6, voters=1.0)[0], square(4))  # 3 of 5
    mask, score = vote(family, click)  # the defaults: the better 3 of 5 vote, 0.3 of them (1) is enough
    assert np.array_equal(mask, square(4)) and score == pytest.approx(0.8)
    assert np.array_equal(vote(list(reversed(family)), click)[0], square(4))  # by rank, not by order
    # a neighbour that only the lower-ranked candidates take gets no vote
    both = square(3) | square(3, at=20) | (square(1, at=15))
    assert np.array_equal(vote([*family[:3], c(both, 0.4), c(both, 0.3)], click)[0], square(4))
    # a candidate that does not hold the click (or holds another object's) has no vote while others hold it
    mask, score = vote([c(np.ones((20, 30), bool), 1.0, contains=False), *family], click)
    assert np.array_equal(mask, square(4)) and score == pytest.approx(0.8)
    # only the part under the click: a blob apart from the object is dropped
    apart = [c(square(2), 0.5) for _ in range(4)]
    apart[0].mask[0:3, 0:3] = True
    assert np.array_equal(vote(apart, click)[0], square(2))
    assert vote([], click) is None
    assert vote([c(np.zeros((20, 30), bool), 0.5)], click) is None


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


class TwoDiscClicker:
    """A stand-in click model (not a model) whose preferred candidate for any click is both discs."""

    def __init__(self, both: np.ndarray, left: np.ndarray) -> None:
        from promptonce.backends.fake import FakeBackend

        self._fake = FakeBackend()
        self.info = self._fake.info
        self.both, self.left = both, left

    def embed(self, frame):
        return self._fake.embed(frame)

    def embed_many(self, frames):
        return [self._fake.embed(f) for f in frames]

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        from promptonce.backends.base import Prediction

        masks = np.stack([self.both, self.left, self.left])
        return Prediction(masks=masks, scores=np.array([0.99, 0.8, 0.7], np.float32), logits=None)


def _two_discs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:96, 0:96]
    left = (xx - 28) ** 2 + (yy - 48) ** 2 <= 14**2
    right = (xx - 68) ** 2 + (yy - 48) ** 2 <= 14**2
    img = np.full((96, 96), 20.0, np.float32)
    img[left | right] = 200.0
    return img, left, right


@pytest.mark.parametrize("modality", ["", "CT"])
def test_a_clicked_object_does_not_take_another_objects_click(modality: str) -> None:
    from promptonce.engine import segment
    from promptonce.types import Dataset, SlicePrompt

    img, left, right = _two_discs()
    vol = Volume(img[None], name="discs", modality=modality)  # "" = a projection image (an X-ray)
    eng = Engine(BoxOnlyFake(), click_backend=TwoDiscClicker(left | right, left))
    lclick, rclick = Point(28, 48, 1), Point(68, 48, 1)
    if not modality:  # on CT the click's intensity region already ranks the left disc first
        alone, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(lclick,)), window=(255, 127.5))
        assert alone[48, 68], "without the other object's click the click model's favourite (both discs) stays"
    kept, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(lclick,)), window=(255, 127.5), avoid=(rclick,))
    assert kept[48, 28] and not kept[48, 68]
    assert (kept & left).sum() > 0.95 * left.sum()
    prompt = SlicePrompt((ObjectPrompt(points=(lclick,), object_id=1), ObjectPrompt(points=(rclick,), object_id=2)), 0)
    (res,) = list(segment(Dataset([vol]), prompt, scope="image", engine=eng, window=(255, 127.5)))
    assert res.labels[48, 28] == 1 and res.labels[48, 68] == 2


def test_a_click_model_used_directly_also_passes_over_another_objects_click() -> None:
    img, left, right = _two_discs()
    vol = Volume(img[None], name="discs")
    eng = Engine(TwoDiscClicker(left | right, left))  # a model that takes clicks itself (SAM, MobileSAM)
    lclick, rclick = Point(28, 48, 1), Point(68, 48, 1)
    alone, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(lclick,)), window=(255, 127.5))
    assert alone[48, 68]
    kept, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(lclick,)), window=(255, 127.5), avoid=(rclick,))
    assert kept[48, 28] and not kept[48, 68]


def test_crop_boxes_are_tried_only_on_a_slice_cropped_around_its_structure() -> None:
    from promptonce.engine.click_choice import CROP_BOXES, crop_boxes

    boxes = crop_boxes(Point(20, 24, 1), (48, 40))  # rows 48, cols 40: the shorter side is 40 px
    assert len(boxes) == len(CROP_BOXES)
    assert boxes[0] == Box(16, 20, 24, 28)  # 0.1 of 40 px each way around the click
    assert boxes[7] == Box(8, 18, 32, 30)  # 0.3 x 0.15
    assert boxes[-1] == Box(4, 16, 36, 32)  # 0.4 x 0.2, the largest
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= 39 and b.y1 <= 47 for b in crop_boxes(Point(2, 46, 1), (48, 40)))
    assert crop_boxes(Point(20, 24, 1), (48, 40), (2.0, 2.0)) == boxes  # 80 x 96 mm: still a crop
    assert crop_boxes(Point(20, 24, 1), (48, 40), (4.2, 4.2)) == []  # 168 mm: a whole cross-section
    assert crop_boxes(Point(20, 24, 1), (101, 200)) == []


class RecordingBoxFake(BoxOnlyFake):
    """:class:`BoxOnlyFake` that keeps every box it was asked about (a stand-in, not a model)."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[Box] = []

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        if box is not None:
            self.boxes.append(Box(*[float(v) for v in np.asarray(box, float).ravel()[:4]]))
        return super().predict(embedding, points, point_labels, box, mask_logits, multimask)


@pytest.mark.parametrize("size", [40, 128])  # pixels of 1 mm
def test_a_click_on_a_small_cropped_slice_also_asks_the_crop_boxes(size: int, monkeypatch) -> None:
    import promptonce.engine.predict as predict_module
    from promptonce.backends.fake import FakeBackend
    from promptonce.engine.click_choice import crop_boxes

    weighed: list[tuple[list[ClickCandidate], bool]] = []
    voted: list[tuple[np.ndarray, float]] = []

    def recording_choose(candidates, crop=False):
        weighed.append((list(candidates), crop))
        return choose(candidates, crop=crop)

    def recording_vote(candidates, point):
        weighed.append((list(candidates), True))
        voted.append(vote(candidates, point))
        return voted[-1]

    monkeypatch.setattr(predict_module, "choose", recording_choose)
    monkeypatch.setattr(predict_module, "vote", recording_vote)

    yy, xx = np.mgrid[0:size, 0:size]
    c, r = size / 2, size * 0.2
    blob = (xx - c) ** 2 + ((yy - c) / 1.5) ** 2 <= r * r
    img = np.where(blob, 200.0, 30.0).astype(np.float32)
    vol = Volume(img[None], name="crop", modality="MR")
    box_model = RecordingBoxFake()
    eng = Engine(box_model, click_backend=FakeBackend(tolerance=80.0, radius=2.0))
    click = Point(c, c, 1)
    mask, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(click,)), window=(255, 127.5))
    asked = {(round(b.x0), round(b.y0), round(b.x1), round(b.y1)) for b in box_model.boxes}
    # the crop boxes of this slice's geometry, as if its pixels were small enough for a crop
    crop = {(round(b.x0), round(b.y0), round(b.x1), round(b.y1)) for b in crop_boxes(click, (size, size), (0.5, 0.5))}
    assert len(crop) == 12
    (candidates, as_crop), = weighed
    if size <= 100:
        assert crop <= asked
        # a crop: the candidates vote, and their stability is not measured (its model call saved)
        assert as_crop and all(c.stability is None for c in candidates)
        assert len(voted) == 1 and np.array_equal(mask, voted[0][0])
    else:
        assert not crop & asked
        assert not as_crop and all(c.stability is not None for c in candidates) and not voted
    d = 2 * (mask & blob).sum() / (mask.sum() + blob.sum())
    assert d > 0.9  # the object either way
