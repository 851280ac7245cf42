"""Helpers shared by the model backends: frame and prompt checks, geometry, torch set-up, checkpoint loading.

Checkpoint verification and the cache folder are :mod:`promptonce.backends.weights`' job.

Importing this module does NOT import torch (the fake backend uses the frame checks); the torch
helpers import it when called.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DimensionError, InputError, ModelUnavailableError, PromptError, WeightsError

__all__ = [
    "check_frame",
    "check_embedding",
    "check_points",
    "clip_box",
    "resized_shape",
    "import_torch",
    "import_quietly",
    "configure_torch",
    "resolve_device",
    "resolve_device_light",
    "load_checkpoint_strict",
    "atomic_write",
]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_TORCH_CONFIGURED = False


# ---------------------------------------------------------------------- frames and prompts
def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validates a model frame and returns it as a C-contiguous uint8 ``(H, W, 3)`` RGB array.

    A grey ``(H, W)`` or ``(H, W, 1)`` uint8 frame is repeated to three channels.

    Raises:
        InputError: the frame is not uint8.
        DimensionError: the frame is not ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``, or is empty.
    """
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise InputError(
            f"A model frame must be uint8 RGB (H, W, 3), got dtype {arr.dtype}; "
            "window the slice first (promptonce.preprocess)."
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DimensionError(f"A model frame must be (H, W, 3) RGB, got shape {arr.shape}.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DimensionError(f"A model frame must not be empty, got shape {arr.shape}.")
    return np.ascontiguousarray(arr)


def check_embedding(embedding: Any, backend: str) -> None:
    """Refuses an embedding made by another backend.

    Raises:
        InputError: ``embedding.backend`` is not ``backend``.
    """
    made_by = getattr(embedding, "backend", None)
    if made_by != backend:
        raise InputError(
            f"This embedding was made by backend {made_by!r}, not {backend!r}; "
            f"embed the frame again with {backend!r}."
        )


def check_points(
    points: np.ndarray | None, point_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validates click prompts.

    Args:
        points: ``(N, 2)`` as ``(x, y)`` frame pixels, or None.
        point_labels: ``(N,)`` 1 = object, 0 = background; None means all 1.

    Returns:
        ``(float32 (N, 2), int32 (N,))``, or None when there are no points.

    Raises:
        PromptError: malformed shapes, non-finite coordinates or labels other than 0/1.
    """
    if points is None:
        return None
    pts = np.asarray(points, dtype=np.float32)
    if pts.size == 0:
        return None
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"Points must have shape (N, 2) as (x, y) pixels, got {pts.shape}.")
    if not np.all(np.isfinite(pts)):
        raise PromptError("Points hold NaN or inf; give pixel coordinates.")
    if point_labels is None:
        labels = np.ones(len(pts), np.int32)
    else:
        labels = np.asarray(point_labels).astype(np.int32).reshape(-1)
        if labels.shape[0] != pts.shape[0]:
            raise PromptError(f"{pts.shape[0]} points but {labels.shape[0]} labels; give one label per point.")
        if not np.all((labels == 0) | (labels == 1)):
            raise PromptError("Point labels must be 1 (object) or 0 (background).")
    return pts, labels


def clip_box(box: np.ndarray | None, frame_size: tuple[int, int]) -> np.ndarray | None:
    """Validates a box and clips it to the frame.

    Args:
        box: ``(4,)`` ``x0, y0, x1, y1`` frame pixels (inclusive), or None.
        frame_size: ``(H, W)``.

    Returns:
        float32 ``(4,)`` clipped to ``[0, W-1] x [0, H-1]``, or None.

    Raises:
        PromptError: wrong shape, not finite, inverted, or entirely outside the frame.
    """
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float32).reshape(-1)
    if b.shape != (4,):
        raise PromptError(f"A box must be 4 numbers x0, y0, x1, y1; got shape {np.asarray(box).shape}.")
    if not np.all(np.isfinite(b)):
        raise PromptError("The box holds NaN or inf; give pixel coordinates.")
    x0, y0, x1, y1 = (float(v) for v in b)
    if x1 < x0 or y1 < y0:
        raise PromptError(f"Box {tuple(b)} has x1 < x0 or y1 < y0; give it as x0, y0, x1, y1.")
    h, w = frame_size
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        raise PromptError(f"Box {tuple(b)} lies outside the {w}x{h} image; draw it on the image.")
    return np.array(
        [max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)], dtype=np.float32
    )


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the longest side ``long_side`` pixels, rounded as SAM does.

    The one resize-longest-side rule of the backends (segment-anything's
    ``ResizeLongestSide.get_preprocess_shape``; LiteMedSAM uses the same rounding).

    Args:
        h, w: the frame's size in pixels.
        long_side: the model input's side in pixels (1024 for SAM/MobileSAM, 256 for LiteMedSAM).
    """
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


# ---------------------------------------------------------------------- torch set-up
def import_torch() -> Any:
    """Imports torch, or raises ModelUnavailableError saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ModelUnavailableError(
            "torch is not installed; install the model extras (pip install -r requirements.txt)."
        ) from exc
    return torch


def import_quietly(module: str, package_hint: str) -> Any:
    """Imports a model package module, silencing its deprecation chatter (timm FutureWarnings).

    Raises:
        ModelUnavailableError: the module cannot be imported; the message names the package.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise ModelUnavailableError(
                f"{module} cannot be imported ({exc}); install {package_hint}."
            ) from exc


def cpu_threads() -> int:
    """Number of CPU threads for torch: ``$PROMPTONCE_THREADS`` or the cores this process may use."""
    env = os.environ.get("PROMPTONCE_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            logger.warning("PROMPTONCE_THREADS=%r is not an integer; ignoring it", env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_torch() -> Any:
    """Imports torch and sets its intra-op thread count once per process; returns the module."""
    global _TORCH_CONFIGURED
    torch = import_torch()
    with _LOCK:
        if not _TORCH_CONFIGURED:
            n = cpu_threads()
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            logger.debug("torch %s uses %d CPU threads", torch.__version__, torch.get_num_threads())
            _TORCH_CONFIGURED = True
    return torch


def resolve_device(device: str | None) -> str:
    """``None`` -> ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``; checks an explicit CUDA request.

    Raises:
        ModelUnavailableError: ``device`` asks for CUDA and none is available.
    """
    torch = import_torch()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = str(device).strip().lower()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} needs a CUDA GPU and none is visible; use device='cpu'.")
    return dev


def cuda_may_be_present() -> bool:
    """False when this machine certainly has no NVIDIA GPU (no driver device files), without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))


def resolve_device_light(device: str | None) -> str:
    """:func:`resolve_device` that imports torch only when a GPU may be present or CUDA is asked for.

    On a machine without an NVIDIA driver, ``None`` and ``"cpu"`` resolve to ``"cpu"`` without the
    ~0.5 GB that ``import torch`` costs.
    """
    if device is None and not cuda_may_be_present():
        return "cpu"
    if device is not None and str(device).strip().lower() == "cpu":
        return "cpu"
    return resolve_device(device)


# ---------------------------------------------------------------------- checkpoints
def load_checkpoint_strict(module: Any, path: str | os.PathLike[str]) -> None:
    """Loads a state dict into ``module`` with ``weights_only=True`` and strict key matching.

    Accepts a bare state dict or one wrapped under ``"model"`` / ``"state_dict"``.

    Raises:
        WeightsError: unreadable file, or keys / shapes that do not match the architecture.
    """
    torch = import_torch()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # torch raises these for bad pickles
        raise WeightsError(f"Cannot read checkpoint {path}: {exc}; reinstall the package that ships it.") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"Checkpoint {path} does not match the model architecture: {exc}") from exc


# ---------------------------------------------------------------------- cache files
def atomic_write(target: Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` on a temporary file beside ``target`` and renames it into place.

    Readers never see a half-written file; on failure the temporary file is removed and the error
    propagates.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
