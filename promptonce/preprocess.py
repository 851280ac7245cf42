"""Display and model frames: intensity windows, uint8 RGB frames and coloured label overlays.

Every model and the UI see a slice as a ``uint8 (rows, cols, 3)`` RGB frame made by mapping the
slice's values through ONE window ``(width, level)`` chosen for the whole volume, so that every slice
of a volume is scaled the same way (a per-slice stretch would make the same tissue look different on
neighbouring slices and make propagation drift).

Windows
-------
A window ``(W, L)`` maps ``L - W/2`` to 0 and ``L + W/2`` to 255, linearly, clipping outside.

* CT presets (Hounsfield units): see :data:`WINDOW_PRESETS`.
* ``"auto"`` (or None): the reader's suggested window when the volume has one, else
  :func:`auto_window`:

  - CT in Hounsfield units gets the ``lung`` preset when aerated lung fills at least
    :data:`CT_LUNG_FRACTION` (15%) of the voxels above -950 HU (body plus lungs; air outside the body
    excluded), i.e. a chest CT, and the ``abdomen`` preset otherwise. No single window serves both
    lungs and organs. Measured with LiteMedSAM and the reference box on every slice (per-slice Dice;
    ``ct_totalseg_example`` every 3rd slice for organs, 4 COVID-19 chest CT slices in HU for lungs):

    ==============  =========  =========  ===========  ===========  ==========
    structure       abdomen    lung       W1000/L-100  W1500/L-160  percentile
    ==============  =========  =========  ===========  ===========  ==========
    liver           0.872      0.645      0.702        0.661        0.653
    spleen          0.954      0.814      0.896        0.827        0.847
    kidneys (mean)  0.927      0.881      0.905        0.856        0.857
    aorta           0.939      0.907      0.922        0.884        0.869
    lung left       0.550      0.893      0.563        0.579        0.632
    lung right      0.413      0.804      0.478        0.512        0.601
    ==============  =========  =========  ===========  ===========  ==========

    Blending the two (grey = mean of lung and abdomen windows) gave liver 0.776, lungs 0.58/0.57;
    putting lung/abdomen/mediastinum windows in the R/G/B channels was worse (liver 0.701). So the
    window follows the volume's content; the volume-level lung fraction was 0.12 for the abdominal
    CT and 0.22-0.41 on chest slices. Pick a preset when the target is not the volume's usual one
    (e.g. ``abdomen`` for the liver on a chest CT).
  - everything else (MR, X-ray, 8-bit images, CT already converted to 8 bits) gets the
    0.5..99.5 percentile range of the whole volume, computed on a deterministic subsample of at most
    :data:`AUTO_SAMPLE` voxels.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import DimensionError, InputError
from .types import Volume

__all__ = [
    "WINDOW_PRESETS",
    "CT_LUNG_FRACTION",
    "lung_fraction",
    "describe_window",
    "AUTO_SAMPLE",
    "parse_window",
    "resolve_window",
    "auto_window",
    "looks_like_hu",
    "to_gray",
    "to_frame",
    "FrameMaker",
    "label_color",
    "label_colors",
    "label_palette",
    "color_hex",
    "outline_edges",
    "draw_outline",
    "overlay",
]

logger = logging.getLogger(__name__)

#: CT window presets as ``(width, level)`` in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "soft_tissue": (350.0, 50.0),  # alias of mediastinum
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 60.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}

#: A CT volume whose aerated-lung fraction (see :func:`lung_fraction`) reaches this gets the lung window.
CT_LUNG_FRACTION = 0.15

#: The most voxels :func:`auto_window` looks at (a deterministic random subsample beyond that).
AUTO_SAMPLE = 2_000_000

WindowSpec = str | tuple[float, float] | None


def _preset_list() -> str:
    return ", ".join(f"{k} (W{v[0]:g}/L{v[1]:g})" for k, v in WINDOW_PRESETS.items())


def _check_window(width: float, level: float, what: object) -> tuple[float, float]:
    if not (math.isfinite(width) and math.isfinite(level)):
        raise InputError(f"Window {what!r} is not finite; give width,level as numbers, e.g. 400,40.")
    if width <= 0:
        raise InputError(f"Window {what!r} has width {width:g} <= 0; the width must be positive, e.g. 400,40.")
    return float(width), float(level)


def parse_window(spec: WindowSpec | Sequence[float]) -> str | tuple[float, float] | None:
    """Parses a window option as given on the command line or in the UI.

    Args:
        spec: None or ``"auto"`` (automatic), a preset name from :data:`WINDOW_PRESETS`
            (case-insensitive; ``-`` and spaces count as ``_``), a ``"W,L"`` string (``"1500,-600"``),
            or a ``(width, level)`` pair.

    Returns:
        None for None, ``"auto"`` for auto, the canonical preset name (a key of
        :data:`WINDOW_PRESETS`) for a preset, or ``(width, level)`` floats.

    Raises:
        InputError: for anything else, with the list of presets; or for a width <= 0.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "auto"):
            return "auto"
        key = text.replace("-", "_").replace(" ", "_")
        if key in WINDOW_PRESETS:
            return key
        parts = [p for p in text.replace(";", ",").split(",")]
        if len(parts) == 2:
            try:
                width, level = float(parts[0]), float(parts[1])
            except ValueError:
                pass
            else:
                return _check_window(width, level, spec)
        raise InputError(
            f"Unknown window {spec!r}. Give 'auto', a preset ({_preset_list()}) "
            "or width,level in the image's units, e.g. 400,40."
        )
    if isinstance(spec, Sequence | np.ndarray) and len(spec) == 2:
        try:
            width, level = float(spec[0]), float(spec[1])
        except (TypeError, ValueError) as exc:
            raise InputError(f"Window {spec!r} must be two numbers (width, level).") from exc
        return _check_window(width, level, spec)
    raise InputError(
        f"Window {spec!r} is not understood. Give 'auto', a preset ({_preset_list()}) or (width, level)."
    )


def _sample(array: np.ndarray, max_voxels: int | None = None) -> np.ndarray:
    """Finite float64 values of ``array``: all of them, or a seeded random subsample of ``max_voxels``."""
    if max_voxels is None:
        max_voxels = AUTO_SAMPLE
    if array.size <= max_voxels:
        values = np.asarray(array, dtype=np.float64).ravel()
    else:
        rng = np.random.default_rng(0)
        flat = rng.integers(0, array.size, size=max_voxels)
        idx = np.unravel_index(np.sort(flat), array.shape)
        values = np.asarray(array[idx], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        values = values[np.isfinite(values)]
    return values


def looks_like_hu(volume: Volume, values: np.ndarray | None = None) -> bool:
    """Whether the volume's values are CT Hounsfield units.

    True when the 0.5th percentile is <= -500 (air) and the 99.5th >= 300 (bone or contrast), or
    when ``volume.modality == "CT"`` and the 0.5th percentile is <= -500 (a CT without much bone
    in view). CT already converted to 8 bits (no negative values) is not HU.

    Args:
        volume: the volume.
        values: a precomputed sample of its finite values (see :func:`auto_window`), optional.
    """
    if values is None:
        values = _sample(volume.array)
    if values.size == 0:
        return False
    lo, hi = np.percentile(values, [0.5, 99.5])
    if lo > -500:
        return False
    return bool(hi >= 300 or volume.modality == "CT")


def lung_fraction(values: np.ndarray) -> float:
    """Fraction of voxels in -950..-500 HU (aerated lung) among the voxels above -950 HU.

    Args:
        values: HU values (any shape); air outside the body (about -1000 HU) is left out of both counts.

    Returns:
        0..1; 0 when no voxel is above -950 HU.
    """
    v = np.asarray(values)
    above = np.count_nonzero(v > -950)
    if above == 0:
        return 0.0
    return float(np.count_nonzero((v > -950) & (v <= -500)) / above)


def describe_window(window: tuple[float, float]) -> str:
    """A short label: the preset name when the window is a preset (``"lung W1500/L-600"``), else ``"W../L.."``."""
    w, lvl = float(window[0]), float(window[1])
    text = f"W{w:.6g}/L{lvl:.6g}"
    for name, preset in WINDOW_PRESETS.items():
        if preset == (w, lvl):
            return f"{name} {text}"
    return text


def auto_window(volume: Volume) -> tuple[float, float]:
    """Chooses one window for the whole volume from its values (see the module docstring).

    Args:
        volume: any volume; its ``window`` attribute is NOT consulted here (see :class:`FrameMaker`).

    Returns:
        ``(width, level)`` with width > 0: the lung or abdomen preset for CT in HU, else the 0.5..99.5
        percentile range. A constant volume gets width 1 centred on its value (mid-grey).
    """
    values = _sample(volume.array)
    if values.size == 0:
        logger.warning("%s: no finite voxel values; using window 1/0.", volume.name)
        return (1.0, 0.0)
    if looks_like_hu(volume, values):
        frac = lung_fraction(values)
        preset = "lung" if frac >= CT_LUNG_FRACTION else "abdomen"
        logger.debug("%s: CT, lung fraction %.3f -> %s window", volume.name, frac, preset)
        return WINDOW_PRESETS[preset]
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:  # sparse data (e.g. a small bright object on black): fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return (1.0, lo)
    return (hi - lo, (hi + lo) / 2.0)


def resolve_window(spec: WindowSpec | Sequence[float], volume: Volume) -> tuple[float, float]:
    """Turns any window option into ``(width, level)`` for ``volume``.

    None/``"auto"`` use ``volume.window`` when the reader suggested one, else :func:`auto_window`.
    """
    parsed = parse_window(spec)
    if parsed is None or parsed == "auto":
        if volume.window is not None:
            return _check_window(float(volume.window[0]), float(volume.window[1]), volume.window)
        return auto_window(volume)
    if isinstance(parsed, str):
        return WINDOW_PRESETS[parsed]
    return parsed


def to_gray(image2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Maps a 2D image through a window to uint8 grey.

    Args:
        image2d: ``(rows, cols)`` numbers (any real dtype or bool); NaN maps to 0.
        window: ``(width, level)``, width > 0, in the image's units.

    Returns:
        uint8 ``(rows, cols)``: ``level - width/2`` -> 0, ``level + width/2`` -> 255.
    """
    img = np.asarray(image2d)
    if img.ndim != 2:
        raise DimensionError(f"Expected a 2D image (rows, cols), got shape {img.shape}.")
    width, level = _check_window(float(window[0]), float(window[1]), window)
    low = level - width / 2.0
    out = (img.astype(np.float32) - np.float32(low)) * np.float32(255.0 / width)
    np.clip(out, 0.0, 255.0, out=out)
    out = np.nan_to_num(out, nan=0.0)
    return np.rint(out).astype(np.uint8)


def to_frame(image2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Maps a 2D image through a window to a uint8 RGB frame ``(rows, cols, 3)`` (three equal channels)."""
    gray = to_gray(image2d, window)
    return np.repeat(gray[:, :, None], 3, axis=2)


class FrameMaker:
    """Makes the uint8 frames of one volume with one window for all its slices.

    Args:
        volume: the volume.
        window: None/``"auto"`` (the reader's suggestion, else :func:`auto_window`), a preset name,
            a ``"W,L"`` string or a ``(width, level)`` pair.

    Attributes:
        volume: the volume.
        window: ``(width, level)`` used for every slice.
        window_name: ``"auto"``, the preset name, or ``"custom"``.
    """

    def __init__(self, volume: Volume, window: WindowSpec | Sequence[float] = None) -> None:
        parsed = parse_window(window)
        self.volume = volume
        self.window: tuple[float, float] = resolve_window(parsed, volume)
        if parsed is None or parsed == "auto":
            self.window_name = "auto"
        elif isinstance(parsed, str):
            self.window_name = parsed
        else:
            self.window_name = "custom"
        logger.debug("%s: window %s (%s)", volume.name, describe_window(self.window), self.window_name)

    def __len__(self) -> int:
        return self.volume.n_slices

    def gray(self, k: int) -> np.ndarray:
        """Slice ``k`` as uint8 ``(rows, cols)``."""
        return to_gray(self.volume.slice(k), self.window)

    def frame(self, k: int) -> np.ndarray:
        """Slice ``k`` as uint8 RGB ``(rows, cols, 3)``, the input of every backend."""
        return to_frame(self.volume.slice(k), self.window)

    __call__ = frame

    def describe(self) -> str:
        """The window as text for the UI and reports, e.g. ``"auto: lung W1500/L-600"``."""
        return f"{self.window_name}: {describe_window(self.window)}"


# ---------------------------------------------------------------------------------------- overlays

# Distinct, colour-blind-friendly first colours (Okabe-Ito and Tableau), then golden-ratio hues.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # 1 red
    (60, 180, 75),  # 2 green
    (0, 130, 200),  # 3 blue
    (255, 225, 25),  # 4 yellow
    (245, 130, 48),  # 5 orange
    (145, 30, 180),  # 6 purple
    (70, 240, 240),  # 7 cyan
    (240, 50, 230),  # 8 magenta
    (210, 245, 60),  # 9 lime
    (0, 128, 128),  # 10 teal
)


def label_color(i: int) -> tuple[int, int, int]:
    """The display colour of label id ``i`` (stable across runs and views); 0 is black.

    Ids 1..10 get a fixed distinct palette, higher ids golden-ratio spaced hues.
    """
    i = int(i)
    if i <= 0:
        return (0, 0, 0)
    if i <= len(_PALETTE):
        return _PALETTE[i - 1]
    hue = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def label_colors(ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """``{id: (r, g, b)}`` for the given label ids, each from :func:`label_color` (distinct for ids 1..10)."""
    return {int(i): label_color(int(i)) for i in ids}


def label_palette() -> list[int]:
    """A 256-entry palette for a palette ("P" mode) PNG/GIF of a label map, flattened ``[r0, g0, b0, r1, ...]``.

    Entry ``i`` is :func:`label_color` ``(i)`` (entry 0, the background, is black), so a label map saved
    with this palette keeps its label ids as pixel values and shows each label in its display colour.
    """
    out: list[int] = []
    for i in range(256):
        out.extend(label_color(i))
    return out


def color_hex(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` as ``"#rrggbb"``."""
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def outline_edges(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The inner boundary of every label, ``thickness`` pixels wide.

    Args:
        labels: ``(H, W)`` integer label map or bool mask (0 / False = nothing).
        thickness: boundary width in pixels (>= 1), grown inwards (never outside the label).

    Returns:
        bool ``(H, W)``: True on labelled pixels within ``thickness`` pixels (4-neighbour steps) of
        another label or of the image edge.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise DimensionError(f"outline_edges() needs an (H, W) label map, got shape {lab.shape}.")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    edge = _boundary(lab)
    for _ in range(max(1, int(thickness)) - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown & (lab != 0)
    return edge


def draw_outline(
    rgb: np.ndarray,
    labels: np.ndarray,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """Draws each label's outline in its own colour (e.g. a reference map over the image).

    Args:
        rgb: uint8 ``(H, W, 3)`` image (not changed).
        labels: ``(H, W)`` integer label map or bool mask (True = label 1).
        colors: optional ``{label id: (r, g, b)}`` overriding :func:`label_color`.
        thickness: outline width in pixels, drawn inwards.

    Returns:
        uint8 ``(H, W, 3)``, a new array.
    """
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"draw_outline() needs a uint8 (H, W, 3) image, got {img.dtype} {img.shape}.")
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.shape != img.shape[:2]:
        raise DimensionError(f"Label map shape {lab.shape} differs from the image's {img.shape[:2]}.")
    out = img.copy()
    edge = outline_edges(lab, thickness)
    for i in (int(v) for v in np.unique(lab[edge])):
        out[edge & (lab == i)] = (colors or {}).get(i, label_color(i))
    return out


def _boundary(labels: np.ndarray) -> np.ndarray:
    """bool ``(H, W)``: labelled pixels with a 4-neighbour of another label (image edge counts as 0)."""
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    diff = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return diff & (centre != 0)


def overlay(
    gray_or_rgb: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.45,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    outline: bool = True,
) -> np.ndarray:
    """Draws a label map over an image: a translucent fill plus an opaque contour per label.

    Args:
        gray_or_rgb: uint8 ``(H, W)`` or ``(H, W, 3)`` (e.g. from :func:`to_frame`).
        labels: ``(H, W)`` integer label map or bool mask (True = label 1); 0 = nothing drawn.
        alpha: opacity of the fill, 0..1.
        colors: optional ``{label id: (r, g, b)}`` overriding :func:`label_color`.
        outline: draw each label's boundary pixels in its full colour.

    Returns:
        uint8 ``(H, W, 3)``, a new array.
    """
    img = np.asarray(gray_or_rgb)
    if img.dtype != np.uint8:
        raise InputError(
            f"overlay() needs a uint8 image, got {img.dtype}; make one with to_frame(image, window) first."
        )
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 3:
        rgb = img.copy()
    else:
        raise DimensionError(f"overlay() needs an (H, W) or (H, W, 3) image, got shape {img.shape}.")
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise DimensionError(f"Label map shape {lab.shape} differs from the image's {rgb.shape[:2]}.")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in 0..1, got {alpha}.")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    ids = [int(v) for v in np.unique(lab) if v != 0]
    if not ids:
        return rgb
    lut_ids = np.array(ids)
    lut = np.array([(colors or {}).get(i, label_color(i)) for i in ids], dtype=np.float32)
    fg = lab != 0
    idx = np.searchsorted(lut_ids, lab[fg])
    blended = (1.0 - alpha) * rgb[fg].astype(np.float32) + alpha * lut[idx]
    rgb[fg] = np.rint(blended).astype(np.uint8)
    if outline:
        edge = _boundary(lab)
        rgb[edge] = lut[np.searchsorted(lut_ids, lab[edge])].astype(np.uint8)
    return rgb
