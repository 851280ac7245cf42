#!/usr/bin/env python
"""Builds the app's example inputs in ``assets/`` from SYNTHETIC data only (no patient data).

* ``assets/ct_phantom/ct_phantom.nii.gz``: a CT-like chest phantom in Hounsfield units, int16,
  ``(cols, rows, slices) = (128, 128, 16)`` stored with an LPS affine (1.5 x 1.5 x 4 mm), so that
  the stored grid already is the radiological display grid (anterior at the top, the patient's right
  on the viewer's left). Air -1000, body +40, two lungs about -850 that grow and shrink along the
  slices (two ellipsoids), a contrast-filled heart (+150) between them, a vertebra (+700) behind.
* ``assets/ct_phantom/ct_phantom_mask.nii.gz``: its reference label map (1 = right lung, 2 = left lung).
* ``assets/xray/images/cxr_XX.png`` and ``assets/xray/masks/cxr_XX.png``: chest-X-ray-like 8-bit
  grey images (256 x 256) with two dark lung fields, ribs and noise, each a little different (shift,
  scale, lung size), and their reference masks (0 = background, 255 = lung) with the same file names.

Run ``python scripts/make_assets.py`` (deterministic: a fixed seed). Tests import
:func:`ct_phantom` and :func:`xray_image` to make smaller inputs of their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: LPS voxel axes: columns towards the patient's left, rows towards posterior, slices superior.
def lps_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """A ``(4, 4)`` affine from ``(col, row, slice, 1)`` to RAS+ mm for an LPS-stored grid."""
    sx, sy, sz = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    return aff


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """bool ``(rows, cols)``: pixels inside the ellipse centred at (cy, cx) with radii (ry, rx)."""
    if ry <= 0 or rx <= 0:
        return np.zeros(shape, bool)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def ct_phantom(size: int = 128, n_slices: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like chest phantom and its lung labels.

    Args:
        size: rows = cols.
        n_slices: number of axial slices.
        seed: noise seed.

    Returns:
        ``(hu int16 (slices, rows, cols), labels uint8 (slices, rows, cols))`` in display orientation
        (row 0 anterior, col 0 the patient's right). Labels: 1 = right lung (viewer's left), 2 = left lung.
    """
    rng = np.random.default_rng(seed)
    s = size / 128.0
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    labels = np.zeros((n_slices, size, size), np.uint8)
    shape = (size, size)
    for k in range(n_slices):
        t = (k + 0.5) / n_slices  # 0..1 along the slices
        # lungs are ellipsoids: largest a little above the middle, vanishing at both ends
        lung_scale = max(0.0, 1.0 - ((t - 0.55) / 0.5) ** 2) ** 0.5
        body = _ellipse(shape, 64 * s, 64 * s, 46 * s, 58 * s)
        hu[k][body] = 40.0
        right = _ellipse(shape, 60 * s, 40 * s, 30 * s * lung_scale, 16 * s * lung_scale)
        left = _ellipse(shape, 60 * s, 88 * s, 28 * s * lung_scale, 15 * s * lung_scale)
        heart = _ellipse(shape, 58 * s, 66 * s, 16 * s, 12 * s) & (t > 0.2)
        right &= ~heart
        left &= ~heart
        hu[k][right] = -850.0
        hu[k][left] = -850.0
        hu[k][heart] = 150.0  # contrast-enhanced blood pool
        spine = _ellipse(shape, 98 * s, 64 * s, 8 * s, 8 * s)
        hu[k][spine] = 700.0
        labels[k][right] = 1
        labels[k][left] = 2
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    hu = np.clip(hu, -1024, 3071)
    return hu.astype(np.int16), labels


def xray_image(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A chest-X-ray-like grey image and its lung mask.

    Args:
        size: rows = cols.
        seed: varies the placement, the lung sizes and the noise.

    Returns:
        ``(image uint8 (rows, cols), mask uint8 (rows, cols) with 0 / 255)``.
    """
    rng = np.random.default_rng(1000 + seed)
    s = size / 256.0
    dx, dy = rng.uniform(-10, 10) * s, rng.uniform(-8, 8) * s
    grow = rng.uniform(0.9, 1.1)
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 60.0 + 40.0 * np.exp(-(((xx - size / 2) / (0.45 * size)) ** 2))  # soft background
    body = _ellipse(shape, 140 * s + dy, 128 * s + dx, 120 * s, 112 * s)
    img[body] = 190.0
    right = _ellipse(shape, 120 * s + dy, 82 * s + dx, 72 * s * grow, 34 * s * grow)
    left = _ellipse(shape, 122 * s + dy, 174 * s + dx, 68 * s * grow, 32 * s * grow)
    heart = _ellipse(shape, 165 * s + dy, 140 * s + dx, 34 * s, 30 * s)
    right &= ~heart
    left &= ~heart & (xx > 140 * s + dx)
    lungs = right | left
    img[lungs] = 70.0
    # ribs: brighter arcs over the lungs
    for i in range(7):
        cy = (62 + 22 * i) * s + dy
        arc = np.abs(yy - cy - 0.0025 * (xx - 128 * s - dx) ** 2 / s) < 2.5 * s
        img[arc & body] += 14.0
    img[heart] = 205.0
    img += rng.normal(0.0, 4.0, shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    mask = np.where(lungs, 255, 0).astype(np.uint8)
    return img, mask


def write_ct(out_dir: Path, size: int = 128, n_slices: int = 16, name: str = "ct_phantom") -> tuple[Path, Path]:
    """Writes the CT phantom and its mask as gzipped NIfTI; returns ``(image path, mask path)``."""
    import nibabel as nib

    hu, labels = ct_phantom(size, n_slices)
    aff = lps_affine((1.5 * 128 / size, 1.5 * 128 / size, 4.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    # display (slices, rows, cols) -> stored (cols, rows, slices)
    img = nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), aff)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"PromptOnce synthetic CT phantom"
    msk = nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), aff)
    msk.header.set_xyzt_units("mm")
    p_img, p_msk = out_dir / f"{name}.nii.gz", out_dir / f"{name}_mask.nii.gz"
    nib.save(img, p_img)
    nib.save(msk, p_msk)
    return p_img, p_msk


def write_xrays(out_dir: Path, n: int = 4, size: int = 256, prefix: str = "cxr") -> tuple[list[Path], list[Path]]:
    """Writes ``n`` X-ray-like PNGs to ``out_dir/images`` and masks of the same names to ``out_dir/masks``."""
    from PIL import Image

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i in range(n):
        img, mask = xray_image(size, seed=i)
        p_i = out_dir / "images" / f"{prefix}_{i + 1:02d}.png"
        p_m = out_dir / "masks" / f"{prefix}_{i + 1:02d}.png"
        Image.fromarray(img, mode="L").save(p_i, optimize=True)
        Image.fromarray(mask, mode="L").save(p_m, optimize=True)
        images.append(p_i)
        masks.append(p_m)
    return images, masks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "assets")
    args = ap.parse_args(argv)
    write_ct(args.out / "ct_phantom")
    write_xrays(args.out / "xray")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")  # noqa: T201 - a script
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
