"""Clicks: the intensity region around a click, and background clicks that always change the mask."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from promptonce.engine import Engine
from promptonce.engine.clicks import click_region, leaks, remove_negative
from promptonce.types import Box, ObjectPrompt, Point, Volume


def dumbbell(size: int = 96, left: float = 200.0, right: float = 170.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two discs (left brighter) joined by a bar of the left's grey value, on a dark background.

    Returns:
        ``(image float32 (size, size), left disc bool, right disc without the bar bool)``.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    ldisc = (xx - 28) ** 2 + (yy - 48) ** 2 <= 14**2
    rdisc = (xx - 68) ** 2 + (yy - 48) ** 2 <= 14**2
    bar = (abs(yy - 48) <= 3) & (xx >= 28) & (xx <= 68)
    img = np.full((size, size), 20.0, np.float32)
    img[ldisc | bar] = left
    img[rdisc & ~bar] = right
    img += np.random.default_rng(0).normal(0, 2, img.shape).astype(np.float32)
    return img, ldisc, rdisc & ~bar


def test_click_region_is_the_clicked_disc_not_its_neighbour() -> None:
    img, ldisc, rdisc = dumbbell(left=200, right=120)
    reg = click_region(np.clip(img, 0, 255).astype(np.uint8), [Point(28, 48, 1)])
    assert reg is not None
    assert (reg & ldisc).sum() > 0.9 * ldisc.sum()
    assert (reg & rdisc).sum() < 0.1 * rdisc.sum()  # a blurred rim where the bar meets it


def test_click_region_refuses_a_click_on_everything_and_without_positive_clicks() -> None:
    flat = np.full((64, 64), 100, np.uint8)
    assert click_region(flat, [Point(10, 10, 1)]) is None  # the whole slice: no size information
    assert click_region(flat, [Point(10, 10, 0)]) is None


def test_remove_negative_takes_the_part_around_the_background_click_only() -> None:
    img, ldisc, rdisc = dumbbell()
    gray = np.clip(img, 0, 255).astype(np.uint8)
    mask = ldisc | rdisc | (gray > 100)
    new = remove_negative(mask, gray, [Point(28, 48, 1), Point(70, 48, 0)])
    assert not new[48, 70]
    assert new[48, 28]
    assert (new & ldisc).sum() > 0.95 * ldisc.sum()
    assert (new & rdisc).sum() < 0.3 * rdisc.sum()
    assert not (new & ~mask).any()  # only removes


def test_remove_negative_keeps_the_mask_when_the_click_is_off_it_and_handles_box_only() -> None:
    img, ldisc, rdisc = dumbbell()
    gray = np.clip(img, 0, 255).astype(np.uint8)
    assert remove_negative(ldisc, gray, [Point(28, 48, 1), Point(90, 90, 0)]) is ldisc
    # no positive click (a box): the part around the background click goes, the far end stays
    mask = gray > 100
    new = remove_negative(mask, gray, [Point(70, 48, 0)])
    assert not new[48, 70] and new[48, 28]


def test_leaks_flags_a_mask_far_beyond_its_guide() -> None:
    _, ldisc, rdisc = dumbbell()
    assert leaks(ldisc | rdisc, ldisc)
    assert not leaks(ldisc, ldisc)


class BoxOnlyFake:
    """The fake backend (not a model) behind a box-only interface, like LiteMedSAM."""

    def __init__(self, tolerance: float = 80.0) -> None:
        from promptonce.backends.fake import FakeBackend

        self._fake = FakeBackend(tolerance=tolerance)
        self.info = replace(self._fake.info, name="fake-box", points=False)

    def embed(self, frame):
        return self._fake.embed(frame)

    def embed_many(self, frames):
        return [self._fake.embed(f) for f in frames]

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        assert points is None  # the engine must not hand clicks to a box-only model
        return self._fake.predict(embedding, box=box, multimask=multimask)


def _engine() -> Engine:
    from promptonce.backends.fake import FakeBackend

    return Engine(BoxOnlyFake(), click_backend=FakeBackend(tolerance=80.0))


def test_background_click_changes_a_click_result_on_a_box_only_model() -> None:
    img, ldisc, rdisc = dumbbell()
    vol = Volume(img[None], name="dumbbell", modality="CT")  # a cross-section: the click region is used
    eng = _engine()
    pos = Point(28, 48, 1)
    before, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(pos,)), window=(255, 127.5))
    assert before[48, 28] and (before & ldisc).sum() > 0.9 * ldisc.sum()
    assert (before & rdisc).sum() < 0.1 * rdisc.sum(), "one click took the neighbouring disc"
    # a background click on the mask's far end (the bar towards the other disc)
    ys, xs = np.nonzero(before)
    j = int(np.argmax((xs - 28.0) ** 2 + (ys - 48.0) ** 2))
    neg = Point(float(xs[j]), float(ys[j]), 0)
    after, _ = eng.predict_object(vol, 0, ObjectPrompt(points=(pos, neg)), window=(255, 127.5))
    assert not after[ys[j], xs[j]]
    assert after[48, 28]
    assert after.sum() < before.sum()
    assert (after & ldisc).sum() > 0.8 * ldisc.sum()


def test_background_click_changes_a_box_result_on_a_box_only_model() -> None:
    img, ldisc, _ = dumbbell()
    vol = Volume(img[None], name="dumbbell")
    eng = _engine()
    box = Box(10, 30, 86, 66)
    before, _ = eng.predict_object(vol, 0, ObjectPrompt(box=box), window=(255, 127.5))
    assert before[48, 70]
    after, _ = eng.predict_object(vol, 0, ObjectPrompt(box=box, points=(Point(70, 48, 0),)), window=(255, 127.5))
    assert not after[48, 70] and after[48, 28]
    assert after.sum() < before.sum()


@pytest.mark.slow
def test_real_models_background_click_on_ct_removes_what_it_lands_on(shared_data) -> None:
    from promptonce.engine import make_engine
    from promptonce.io.readers import load, load_reference
    from promptonce.prompts import interior_point

    vol = load(shared_data / "ct_totalseg_example" / "image.nii.gz")
    ref = load_reference(shared_data / "ct_totalseg_example" / "labels.nii.gz", vol).array
    liver = ref == 5
    k = int(np.argmax(liver.reshape(liver.shape[0], -1).sum(axis=1)))
    pos = interior_point(liver[k])
    assert pos is not None
    obj = ObjectPrompt(points=(pos,))
    from promptonce.types import SlicePrompt

    eng = make_engine(SlicePrompt((obj,), slice_index=k), "auto", "auto")
    before, _ = eng.predict_object(vol, k, obj)
    assert before[int(pos.y), int(pos.x)]
    # a background click on the mask, as far from the object click as the mask goes
    ys, xs = np.nonzero(before)
    j = int(np.argmax((ys - pos.y) ** 2 + (xs - pos.x) ** 2))
    neg = Point(float(xs[j]), float(ys[j]), 0)
    after, _ = eng.predict_object(vol, k, ObjectPrompt(points=(pos, neg)))
    assert not after[ys[j], xs[j]]
    assert after[int(pos.y), int(pos.x)]
    assert after.sum() < before.sum()
