"""Registration with SimpleITK: carrying masks (priors) and prompts from one image to another.

Dataset-wide transfer puts the user's prompt on every other case. Instead of moving only a box, the
seed case's *mask* of each object is warped onto the other case (atlas-style) and used as a prior:
the prompts are derived from it and the model's candidates are judged by agreement with it.

The registration is SimpleITK's (ITK's registration framework): a multi-resolution affine stage
(Mattes mutual information, so the two images may come from different scanners and windows),
followed by a deformable stage (symmetric-forces demons on histogram-matched images, with a smooth
displacement field). Both images are resampled to a small working grid first (``size`` pixels on
the longer side, 64 by default), so a pair costs about a tenth of a second on one laptop CPU core.

Defaults (working grid 64, 80 demons iterations, field smoothing 1.5 pixels) were chosen by atlas
accuracy: the Dice of a case's reference mask warped onto another case against that case's own
reference. On Shenzhen X-ray pairs (tuning images 0-39) it rose from 0.862 (grid 128, 40 iterations,
smoothing 2) to 0.891, on held-out images 300-339 from 0.897 to 0.919, on ACDC largest-label slices
from 0.520 to 0.585 and on hippocampus slices from 0.645 to 0.671, at about half the time
(``benchmarks/registration_accuracy.py``; only the tuning images were used to choose).

ITK runs on one thread while registering (``ITK_THREADS``): on a 64-pixel grid threads cost more than they
save, and ITK's multi-threaded metric sums depend on the thread count, so masks would differ between
machines and between a local run and a Ray worker.

Coordinates: every image is placed on the *relative* physical grid ``[0, 1] x [0, 1]`` (x = column
position / width, y = row position / height). The identity transform therefore is the plain
relative-position mapping between two images of any size, the natural fallback when a registration
is not trusted. Transforms map fixed (target) positions to moving (source) positions, as in ITK.

SimpleITK is imported on first use only (``import promptonce`` stays light).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PromptOnceError

__all__ = ["Registration", "register", "warp", "image_similarity", "thumbnail"]

log = logging.getLogger(__name__)

#: Physical size of every image on the relative grid (so that optimiser steps and demons smoothing are
#: in "pixels of a 128-pixel image" rather than in fractions of the image).
_UNIT = 128.0
#: Images with a side shorter than this are not registered (relative position instead).
MIN_SIDE = 16
#: ITK's threads while registering (one: faster on small grids, and results independent of the machine).
ITK_THREADS = 1
_ITK_LOCK = threading.Lock()


@dataclass(frozen=True)
class Registration:
    """A registration of a moving (source) image onto a fixed (target) image.

    Attributes:
        transform: SimpleITK transform from fixed relative positions to moving relative positions
            (None: identity, i.e. relative-position mapping).
        fixed_shape: ``(rows, cols)`` of the fixed image (full size).
        similarity: normalised correlation (-1..1) of the fixed image and the warped moving image on
            the working grid; higher is more trustworthy.
        baseline: the same correlation without registration (identity), for comparison.
        stage: ``"deformable"``, ``"affine"`` or ``"identity"`` (what was kept).
        seconds: wall time of the registration.
        reason: why a stage was dropped (empty when all went well).
    """

    transform: Any
    fixed_shape: tuple[int, int]
    similarity: float
    baseline: float
    stage: str
    seconds: float
    reason: str = ""

    @property
    def trusted(self) -> bool:
        """True when the registration improved on (or matched) the plain relative mapping."""
        return self.stage != "identity"


def _sitk():
    try:
        import SimpleITK as sitk  # noqa: N813 - the library's own spelling
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise PromptOnceError("SimpleITK is not installed; run scripts/setup.sh or `pip install SimpleITK`.") from exc
    return sitk


def _normalise(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.ndim != 2:
        raise PromptOnceError(f"Registration takes 2D images; got shape {a.shape}.")
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def _grid_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = shape
    s = size / max(h, w)
    return max(int(round(h * s)), 8), max(int(round(w * s)), 8)


def _relative_image(arr: np.ndarray, sitk):
    """A SimpleITK image on the relative grid: pixel (col, row) sits at ((col + .5)/W, (row + .5)/H)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    h, w = arr.shape
    img.SetSpacing((_UNIT / w, _UNIT / h))
    img.SetOrigin((0.5 * _UNIT / w, 0.5 * _UNIT / h))
    return img


def thumbnail(image: np.ndarray, size: int = 128) -> np.ndarray:
    """The image intensity-normalised (1st-99th percentile -> 0..1) and resized to ``size`` on its longer side.

    Args:
        image: 2D ``(rows, cols)`` (or RGB ``(rows, cols, 3)``), any dtype.

    Returns:
        float32 ``(rows', cols')``.
    """
    sitk = _sitk()
    a = _normalise(image)
    gh, gw = _grid_shape(a.shape, size)
    if (gh, gw) == a.shape:
        return a
    src = _relative_image(a, sitk)
    if min(a.shape) >= 4:  # ITK's recursive Gaussian needs 4 pixels along each axis
        src = sitk.SmoothingRecursiveGaussian(src, 0.5 * _UNIT / max(gh, gw))  # anti-aliasing: half a working pixel
    ref = _relative_image(np.zeros((gh, gw), np.float32), sitk)
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(out), 0.0, 1.0)  # the recursive Gaussian can overshoot a little


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a0, b0 = a - a.mean(), b - b.mean()
    d = float(np.linalg.norm(a0) * np.linalg.norm(b0))
    return float((a0 * b0).sum() / d) if d > 0 else 0.0


def image_similarity(a: np.ndarray, b: np.ndarray, size: int = 32) -> float:
    """Global normalised correlation of two images after resizing both to ``size x size`` (no registration).

    A cheap ranking of exemplars by likeness; -1..1.
    """
    sitk = _sitk()
    out = []
    for img in (a, b):
        t = _normalise(img)
        src = _relative_image(t, sitk)
        ref = _relative_image(np.zeros((size, size), np.float32), sitk)
        out.append(sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0)))
    return _ncc(out[0], out[1])


@contextmanager
def _itk_threads(sitk):
    """ITK's global default thread count set to ``ITK_THREADS`` for the duration, then restored.

    Setting each filter's threads is not enough: the v4 registration metric has a threader of its own
    that follows the global default. Registrations in concurrent Python threads take turns (each is
    single-threaded and short), so the global value is never restored under another's feet.
    """
    with _ITK_LOCK:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(ITK_THREADS)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    size: int = 64,
    deformable: bool = True,
    affine_iterations: int = 80,
    demons_iterations: int = 80,
    demons_sigma: float = 1.5,
) -> Registration:
    """Registers ``moving`` (the source) onto ``fixed`` (the target): affine, then demons.

    Never raises for a failed optimisation: a stage that fails or makes the images agree less than
    the stage before is dropped (logged), down to the identity (relative-position mapping).

    Args:
        fixed: target image ``(rows, cols)``, any intensity range.
        moving: source image ``(rows', cols')``; sizes may differ.
        size: working grid, pixels on the longer side.
        deformable: run the demons stage after the affine one.
        affine_iterations: gradient-descent iterations per resolution level.
        demons_iterations: demons iterations.
        demons_sigma: smoothing of the displacement field, in working-grid pixels.

    Returns:
        A :class:`Registration` (``transform`` maps fixed relative positions to moving ones).
    """
    sitk = _sitk()
    with _itk_threads(sitk):
        return _register(sitk, fixed, moving, size, deformable, affine_iterations, demons_iterations, demons_sigma)


def _register(sitk, fixed, moving, size, deformable, affine_iterations, demons_iterations, demons_sigma) -> Registration:
    t0 = time.perf_counter()
    fixed_shape = tuple(int(x) for x in np.asarray(fixed).shape[:2])
    if min(fixed_shape) < MIN_SIDE or min(np.asarray(moving).shape[:2]) < MIN_SIDE:
        # too small to register (an image of a few pixels): relative position it is
        _normalise(fixed), _normalise(moving)  # still reject non-2D input
        return Registration(None, fixed_shape, 0.0, 0.0, "identity", time.perf_counter() - t0,
                            f"images smaller than {MIN_SIDE} pixels are not registered")
    f_arr = thumbnail(fixed, size)
    m_arr = thumbnail(moving, size)
    f_img = _relative_image(f_arr, sitk)
    m_img = _relative_image(m_arr, sitk)

    def resampled(transform) -> np.ndarray:
        out = sitk.Resample(m_img, f_img, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    identity = sitk.AffineTransform(2)
    baseline = _ncc(f_arr, resampled(identity))
    best_t, best_s, stage, reason = None, baseline, "identity", ""
    try:
        affine = sitk.AffineTransform(2)
        affine.SetCenter((0.5 * _UNIT, 0.5 * _UNIT))
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(0.5, seed=7)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=affine_iterations, relaxationFactor=0.6
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(affine, inPlace=True)
        reg.Execute(f_img, m_img)
        s = _ncc(f_arr, resampled(affine))
        if s >= best_s - 0.01 and _plausible(affine):
            best_t, best_s, stage = affine, s, "affine"
        else:
            reason = f"affine stage dropped (correlation {s:.2f} vs {best_s:.2f}, or implausible)"
    except RuntimeError as exc:  # ITK raises RuntimeError for a failed optimisation
        reason = f"affine stage failed: {exc}".splitlines()[0]
    if deformable:
        try:
            base = best_t if best_t is not None else identity
            warped = sitk.Resample(m_img, f_img, base, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            matcher = sitk.HistogramMatchingImageFilter()
            matcher.SetNumberOfHistogramLevels(64)
            matcher.SetNumberOfMatchPoints(7)
            matcher.ThresholdAtMeanIntensityOn()
            warped = matcher.Execute(warped, f_img)
            demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
            demons.SetNumberOfIterations(demons_iterations)
            demons.SetStandardDeviations(demons_sigma)
            field = demons.Execute(f_img, warped)
            field = sitk.Cast(field, sitk.sitkVectorFloat64)
            # the field is in physical units of the relative grid; it maps fixed -> affine-warped moving
            disp = sitk.DisplacementFieldTransform(field)
            composite = sitk.CompositeTransform(2)
            composite.AddTransform(base)
            composite.AddTransform(disp)
            s = _ncc(f_arr, resampled(composite))
            if s >= best_s + 0.005:
                best_t, best_s, stage = composite, s, "deformable"
            elif not reason:
                reason = f"deformable stage dropped (correlation {s:.2f} vs {best_s:.2f})"
        except RuntimeError as exc:
            reason = (reason + "; " if reason else "") + f"deformable stage failed: {exc}".splitlines()[0]
    if reason:
        log.debug("registration: %s", reason)
    return Registration(
        transform=best_t,
        fixed_shape=fixed_shape,  # type: ignore[arg-type]
        similarity=float(best_s),
        baseline=float(baseline),
        stage=stage,
        seconds=time.perf_counter() - t0,
        reason=reason,
    )


def _plausible(affine) -> bool:
    """Rejects affine results that fold, mirror or scale wildly (an optimiser that ran away)."""
    m = np.asarray(affine.GetMatrix(), dtype=np.float64).reshape(2, 2)
    det = float(np.linalg.det(m))
    sv = np.linalg.svd(m, compute_uv=False)
    shift = np.asarray(affine.GetTranslation(), dtype=np.float64)
    return 0.3 < det < 3.0 and float(sv.max() / max(sv.min(), 1e-9)) < 2.5 and float(np.abs(shift).max()) < 0.5 * _UNIT


def warp(moving: np.ndarray, registration: Registration, *, order: int = 1,
         shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resamples an image or mask of the moving case onto the fixed case's full-size grid.

    Args:
        moving: ``(rows', cols')`` array of the moving case (a bool/0-1 mask gives a soft prior).
        registration: from :func:`register` (any moving size: positions are relative).
        order: 0 nearest neighbour, 1 linear.
        shape: ``(rows, cols)`` of the output grid (default ``registration.fixed_shape``); positions
            are relative, so the fixed case may have been registered as a thumbnail and warped onto
            its full size here.

    Returns:
        float32 ``shape`` array (0 outside the moving image).
    """
    sitk = _sitk()
    src = _relative_image(np.asarray(moving, dtype=np.float32), sitk)
    out_shape = tuple(int(x) for x in (shape if shape is not None else registration.fixed_shape))
    ref = _relative_image(np.zeros(out_shape, np.float32), sitk)
    transform = registration.transform if registration.transform is not None else sitk.Transform()
    interp = sitk.sitkLinear if order else sitk.sitkNearestNeighbor
    out = sitk.Resample(src, ref, transform, interp, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)
