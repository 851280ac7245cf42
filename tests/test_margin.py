"""The box margin's floor, capped in pixels of the box model's input (``PropagationConfig.margin_model_px``)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from promptonce.backends.fake import FakeBackend
from promptonce.engine import PropagationConfig, segment
from promptonce.engine.predict import margin, margin_floor
from promptonce.errors import InputError
from promptonce.prompts import box_from_mask
from promptonce.types import Box, ObjectPrompt, SlicePrompt, Volume


def _engine(cap: float | None, input_size: int = 256) -> SimpleNamespace:
    return SimpleNamespace(config=PropagationConfig(margin_model_px=cap),
                           backend=SimpleNamespace(info=SimpleNamespace(input_size=input_size)))


def test_the_floor_is_capped_in_model_pixels_on_small_images_only():
    assert margin_floor(_engine(10.0), (51, 35)) == pytest.approx(10.0 * 51 / 256)  # an MR crop: ~2 px
    assert margin_floor(_engine(10.0), (64, 64)) == pytest.approx(2.5)  # a 64 px CT slice
    assert margin_floor(_engine(10.0), (80, 60)) == 3.0  # from 77 px a side on, the 3 px floor as before
    assert margin_floor(_engine(10.0), (512, 512)) == 3.0
    assert margin_floor(_engine(None), (51, 35)) == 3.0  # no cap
    assert margin_floor(_engine(10.0, input_size=0), (51, 35)) == 3.0  # a backend without an input size
    small = np.zeros((51, 35), bool)
    small[10:30, 10:25] = True
    assert margin(_engine(10.0), small) == pytest.approx(10.0 * 51 / 256)
    large = np.zeros((600, 600), bool)
    large[100:500, 100:500] = True
    assert margin(_engine(10.0), large) == pytest.approx(0.02 * 400)  # margin_frac of a large mask still wins


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_a_cap_that_is_not_positive_is_refused(bad):
    with pytest.raises(InputError, match="margin_model_px must be > 0"):
        PropagationConfig(margin_model_px=bad)


class _BoxRecordingFake:
    """The fake backend (not a model) with a 256-pixel input size, recording the boxes it is asked for."""

    def __init__(self) -> None:
        self._be = FakeBackend()
        self.info = replace(self._be.info, input_size=256)
        self.boxes: list[Box] = []

    def embed(self, frame):
        return self._be.embed(frame)

    def predict(self, embedding, points=None, point_labels=None, box=None, mask_logits=None, multimask=False):
        if box is not None:
            self.boxes.append(Box(*(float(v) for v in box)))
        return self._be.predict(embedding, points, point_labels, box, mask_logits, multimask)


@pytest.mark.parametrize("cap", [None, 10.0, "default"])
def test_the_walk_boxes_the_previous_mask_with_the_capped_margin(cap):
    n, size = 9, 48
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (xx - 24) ** 2 + (yy - 22) ** 2 <= 36
    arr = np.where(np.broadcast_to(disc, (n, size, size)), 200.0, 20.0).astype(np.float32)
    vol = Volume(arr, name="small")
    backend = _BoxRecordingFake()
    prompt = SlicePrompt((ObjectPrompt(box=Box(18.0, 16.0, 30.0, 28.0)),), slice_index=4)
    config = PropagationConfig(refine=0) if cap == "default" else PropagationConfig(margin_model_px=cap, refine=0)
    out = list(segment(vol, prompt, backend=backend, click_backend=None, config=config))
    seed = next(r for r in out if r.prompted).labels != 0
    assert seed.sum() == disc.sum()
    floor = 3.0 if cap is None else (10.0 if cap == "default" else cap) * size / 256  # 1.875 px
    # the first walked slice (forward, k0 + 1) is asked with the seed mask's box and the floor as its margin
    assert backend.boxes[1] == box_from_mask(seed, margin=floor, shape=(size, size))
    assert all(r.labels.any() for r in out)
