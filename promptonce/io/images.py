"""2D image reader (PNG, JPEG, TIFF, BMP) with Pillow.

Images are shown as stored: ``array[0]`` is the picture, row 0 at the top. Pixel values:

* 8-bit grey (``L``) -> uint8; 16-bit grey (``I;16``, ``I``) -> uint16 when the values fit (else int32);
  float TIFF (``F``) -> float32; 1-bit -> uint8 0/255;
* RGB(A), palette, CMYK, YCbCr -> grey: one channel when R == G == B (uint8), else ITU-R 601
  luminance ``0.299 R + 0.587 G + 0.114 B`` as float32; alpha is ignored.

A multi-page TIFF is a stack of its pages. The affine is the identity (1 mm pixels, no patient
geometry) and the modality ``"OT"``: a PNG does not say whether it is an X-ray.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, DimensionError, TooLargeError, UnsupportedFormatError
from ..types import SourceGeometry, Volume
from ._common import DEFAULT_MAX_VOXELS, case_name, check_finite, check_voxels, luminance

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "image_info", "read_image_array", "read_image", "read_image_stack"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CorruptFileError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"{path}: the image is too large to open safely ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise CorruptFileError(
            f"{path}: not a readable image (Pillow cannot identify it). It may be damaged or not an image at all."
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise CorruptFileError(f"{path}: cannot open the image ({exc}); it looks damaged or truncated.") from exc


def image_info(path: str | Path) -> tuple[int, int, int]:
    """Reads only the header: ``(rows, cols, pages)``."""
    path = Path(path)
    with _open(path) as im:
        return int(im.height), int(im.width), int(getattr(im, "n_frames", 1))


def _to_array(im) -> np.ndarray:
    """One Pillow frame -> 2D array (rows, cols) following the module's pixel rules."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8) if mode == "LA" else np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if arr.ndim != 2:  # some Pillow versions give I;16 as bytes
            arr = np.asarray(im.convert("I"))
        arr = arr.astype(np.int64, copy=False)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.int32)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode not in ("RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")
    rgb = np.asarray(im)
    return luminance(rgb)


def read_image_array(path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> np.ndarray:
    """Reads an image file's pixels.

    Returns:
        Array ``(pages, rows, cols)`` (``pages`` = 1 except for multi-page TIFF), dtype per the module rules.

    Raises:
        CorruptFileError, TooLargeError, InvalidValuesError (NaN in a float TIFF).
    """
    from PIL import Image, ImageSequence

    path = Path(path)
    with _open(path) as im:
        n = int(getattr(im, "n_frames", 1))
        check_voxels((n, im.height, im.width), max_voxels, str(path))
        try:
            if n == 1:
                frames = [_to_array(im)]
            else:
                frames = [_to_array(fr.copy()) for fr in ImageSequence.Iterator(im)]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise CorruptFileError(f"{path}: the image data cannot be decoded ({exc}); the file looks truncated or damaged.") from exc
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DimensionError(f"{path}: the pages of this TIFF have different sizes {sorted(shapes)}; save them as separate images.")
    dtype = np.result_type(*[f.dtype for f in frames])
    arr = np.stack([f.astype(dtype, copy=False) for f in frames])
    check_finite(arr, str(path))
    return arr


def read_image(path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> Volume:
    """Reads one image file as a Volume (one slice; one slice per page for a multi-page TIFF).

    Returns:
        Volume ``(pages, rows, cols)``, identity affine, ``source_format="image"``, modality ``"OT"``,
        ``source.slice_names`` = the file name (outputs reuse it).
    """
    path = Path(path)
    arr = read_image_array(path, max_voxels=max_voxels)
    nm = name or case_name(path)
    if arr.shape[0] == 1:
        slice_names: tuple[str, ...] = (path.name,)
    else:
        slice_names = tuple(f"{nm}_{k:04d}" for k in range(arr.shape[0]))
    source = SourceGeometry(affine=np.eye(4), shape=(arr.shape[2], arr.shape[1], arr.shape[0]), slice_names=slice_names,
                            extra={"path": str(path)})
    return Volume(array=arr, affine=np.eye(4), name=nm, source_format="image", modality="OT", source=source)


def read_image_stack(
    paths: Sequence[str | Path], *, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None
) -> Volume:
    """Reads same-size 2D images as the slices of one volume, in the order given.

    Args:
        paths: the image files (the caller sorts them, e.g. naturally).
        max_voxels: voxel budget for the whole stack, checked on the headers first.
        name: volume name (default: the folder of the first file).

    Raises:
        DimensionError: the images differ in size (then they are a set, not a stack).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UnsupportedFormatError("No images to stack.")
    infos = [image_info(p) for p in paths]
    sizes = {(r, c) for r, c, _ in infos}
    if len(sizes) != 1:
        listing = ", ".join(f"{p.name} {r}x{c}" for p, (r, c, _) in list(zip(paths, infos))[:6])
        raise DimensionError(
            f"The {len(paths)} images differ in size ({listing}{', ...' if len(paths) > 6 else ''}), so they cannot "
            "be stacked into one volume. Load them as a set of independent images (images_as='set', "
            "load_dataset / --images-as set)."
        )
    if any(n != 1 for _, _, n in infos):
        raise DimensionError("A multi-page TIFF cannot be one slice of a stack; give single-page images.")
    rows, cols = next(iter(sizes))
    check_voxels((len(paths), rows, cols), max_voxels, f"stack of {len(paths)} images")
    frames = [read_image_array(p, max_voxels=max_voxels)[0] for p in paths]
    dtype = np.result_type(*[f.dtype for f in frames])
    arr = np.empty((len(frames), rows, cols), dtype=dtype)
    for k, f in enumerate(frames):
        arr[k] = f
    nm = name or (paths[0].parent.name or "stack")
    source = SourceGeometry(
        affine=np.eye(4), shape=(cols, rows, len(paths)), slice_names=tuple(p.name for p in paths),
        extra={"paths": [str(p) for p in paths]},
    )
    return Volume(array=arr, affine=np.eye(4), name=nm, source_format="image", modality="OT", source=source)
