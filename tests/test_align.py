"""Similarity alignment recovers a known scale and shift (hand-made synthetic pair)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from promptonce.align import Similarity, estimate_similarity


def phantom(h=200, w=160):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.exp(-((xx - 60) ** 2 + (yy - 90) ** 2) / 400.0)
    img += 0.7 * np.exp(-((xx - 110) ** 2 + (yy - 120) ** 2) / 200.0)
    img += 0.5 * ((xx > 20) & (xx < 140) & (yy > 30) & (yy < 180))
    return img


@pytest.mark.parametrize("s,tx,ty", [(1.0, 0, 0), (1.1, 12, -8), (0.9, -10, 6)])
def test_recovers_scale_and_shift_within_two_pixels(s, tx, ty):
    img = phantom()
    # dst(y, x) = img((y - ty) / s, (x - tx) / s): content scaled by s, then shifted by (tx, ty).
    dst = ndimage.affine_transform(img, [1 / s, 1 / s], offset=[-ty / s, -tx / s], output_shape=(220, 180), order=1)
    sim = estimate_similarity(img, dst)
    for x, y in [(60, 90), (110, 120), (40, 50)]:
        ex, ey = s * x + tx, s * y + ty
        gx, gy = sim.apply(x, y)
        assert abs(gx - ex) <= 2.5 and abs(gy - ey) <= 2.5, (gx, gy, ex, ey)
    assert sim.score > 0.9


def test_relative_mapping_scales_between_sizes():
    sim = Similarity.relative((100, 200), (50, 100))
    x, y = sim.apply(199.5, 99.5)  # the far pixel edge maps to the far edge
    assert abs(x - 99.5) < 1e-6 and abs(y - 49.5) < 1e-6
