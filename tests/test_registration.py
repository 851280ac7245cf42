"""Registration (SimpleITK): masks carried between synthetic images with known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.metrics import dice
from promptonce.registration import image_similarity, register, thumbnail, warp


def scene(shape=(120, 100), centre=(50.0, 60.0), radii=(22.0, 14.0), seed=0):
    """A bright ellipse beside a darker disc on a textured background; returns (image, ellipse mask).

    The whole scene (texture included) is placed by ``centre`` and scaled by ``radii`` (relative to
    the default 22 x 14 ellipse), as when a patient sits elsewhere in the field of view.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = centre
    sx, sy = radii[0] / 22.0, radii[1] / 14.0
    u, v = (xx - cx) / sx, (yy - cy) / sy  # canonical coordinates
    ell = (u / 22.0) ** 2 + (v / 14.0) ** 2 <= 1
    disc = (u - 32.0) ** 2 + (v + 20.0) ** 2 <= 64
    rng = np.random.default_rng(seed)
    img = 40 + 30 * np.sin(u / 7.0) * np.cos(v / 9.0) + rng.normal(0, 2, shape)
    img = np.where(ell, 200.0, img)
    img = np.where(disc, 120.0, img)
    return img.astype(np.float32), ell


def test_warping_a_mask_onto_a_shifted_and_scaled_image_recovers_its_position():
    fixed, fixed_mask = scene(centre=(58.0, 66.0), radii=(25.0, 16.0), seed=1)
    moving, moving_mask = scene(seed=2)
    baseline = dice(moving_mask, fixed_mask)
    reg = register(fixed, moving)
    prior = warp(moving_mask.astype(np.float32), reg) >= 0.5
    assert reg.stage in ("affine", "deformable")
    assert reg.similarity > reg.baseline
    assert dice(prior, fixed_mask) > 0.85 > baseline + 0.1, (dice(prior, fixed_mask), baseline)


def test_images_of_different_sizes_map_by_relative_position():
    fixed, fixed_mask = scene(shape=(240, 200), centre=(100.0, 120.0), radii=(44.0, 28.0), seed=3)
    moving, moving_mask = scene(seed=4)
    reg = register(fixed, moving)
    prior = warp(moving_mask.astype(np.float32), reg)
    assert prior.shape == fixed.shape
    assert dice(prior >= 0.5, fixed_mask) > 0.85


def test_identical_images_keep_the_mask():
    img, mask = scene()
    reg = register(img, img)
    assert dice(warp(mask.astype(np.float32), reg) >= 0.5, mask) > 0.97


def test_unrelated_images_fall_back_without_error():
    img, _ = scene()
    noise = np.random.default_rng(5).normal(0, 1, (90, 70)).astype(np.float32)
    reg = register(img, noise)
    out = warp(np.ones((90, 70), np.float32), reg)
    assert out.shape == img.shape and np.isfinite(out).all()
    assert reg.stage in ("identity", "affine", "deformable")


def test_flat_and_nan_images_do_not_crash():
    flat = np.zeros((50, 50), np.float32)
    nan = np.full((50, 50), np.nan, np.float32)
    reg = register(flat, nan)
    assert np.isfinite(reg.similarity)


def test_thumbnail_and_similarity():
    img, _ = scene(shape=(300, 250))
    t = thumbnail(img, 128)
    assert max(t.shape) == 128 and t.dtype == np.float32 and 0 <= t.min() <= t.max() <= 1
    other, _ = scene(shape=(300, 250), seed=9)
    assert image_similarity(img, other) > image_similarity(img, np.random.default_rng(1).normal(size=(60, 60)))


def test_registration_rejects_3d_input():
    from promptonce.errors import PromptOnceError

    with pytest.raises(PromptOnceError, match="2D"):
        register(np.zeros((4, 5, 6, 7)), np.zeros((5, 5)))


def test_tiny_images_are_not_registered_but_still_warp():
    reg = register(np.ones((3, 5)), np.ones((1, 1)))
    assert reg.stage == "identity" and "smaller" in reg.reason
    assert warp(np.ones((1, 1), np.float32), reg).shape == (3, 5)
    assert thumbnail(np.arange(6.0).reshape(2, 3), 128).shape[0] >= 1


def test_result_does_not_depend_on_itk_thread_count(shared_data):
    """ITK's multi-threaded metric sums depend on the thread count (on this pair of X-rays the prior
    differs by 1e-4 between 1 and 2 threads when the filters follow the global default); registration
    runs ITK on one thread while it works, so a laptop, a 16-core host and a one-thread Ray worker agree."""
    sitk = pytest.importorskip("SimpleITK")
    from PIL import Image

    paths = sorted((shared_data / "cxr_shenzhen" / "images").glob("*.png"))[40:43]
    if len(paths) < 3:
        pytest.skip("Shenzhen X-rays not found in the shared data")
    fixed, moving = (np.asarray(Image.open(p).convert("L")) for p in (paths[2], paths[0]))
    moving_thumb = thumbnail(moving, 256)
    mask = (moving_thumb > 0.5).astype(np.float32)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    priors = []
    try:
        for n in (1, 2):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
            priors.append(warp(mask, register(fixed, moving_thumb)))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert np.array_equal(priors[0], priors[1])


def test_warp_onto_another_grid_size_uses_relative_positions():
    fixed, fixed_mask = scene(centre=(58.0, 66.0), radii=(25.0, 16.0), seed=1)
    moving, moving_mask = scene(seed=2)
    reg = register(thumbnail(fixed, 64), moving)  # registered as a thumbnail ...
    prior = warp(moving_mask.astype(np.float32), reg, shape=fixed.shape) >= 0.5  # ... warped at full size
    assert prior.shape == fixed.shape
    assert dice(prior, fixed_mask) > 0.85
