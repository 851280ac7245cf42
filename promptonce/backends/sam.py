"""SAM (segment-anything, Kirillov et al. 2023): ViT-B / ViT-L / ViT-H behind :class:`~.base.Backend`.

"Embed once, prompt many": :meth:`SamBackend.embed` runs the image encoder once and keeps its
features ``float32 (1, 256, 64, 64)``; :meth:`SamBackend.predict` decodes a mask from points, a box
and/or earlier low-resolution logits without re-encoding. The geometry is SamPredictor's: the frame's
longest side is resized to 1024 (``ResizeLongestSide``), normalised with SAM's pixel mean/std and
padded to 1024x1024; prompts are scaled by the same factors; masks come back at the frame's size.

This module also holds the small device helpers shared with :mod:`.sam2` (device choice, TF32, the
CPU warning) and the checks of frames and prompts common to both.

Names: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` (checkpoints in :mod:`.weights`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelUnavailableError, PromptError, WeightsError
from . import _torchutil as _tu
from .base import BackendInfo, Embedding, Prediction
from .weights import find_spec, load_state_dict, resolve_checkpoint, search_dirs

__all__ = [
    "SAM_VARIANTS",
    "SamBackend",
    "build_sam_backend",
    "sam_info",
    "sam_availability",
    "register_all",
    "resolve_device",
]

logger = logging.getLogger(__name__)

SAM_VARIANTS: dict[str, tuple[str, str]] = {
    "sam_vit_b": ("vit_b", "SAM ViT-B (Meta, 2023; 91M)"),
    "sam_vit_l": ("vit_l", "SAM ViT-L (Meta, 2023; 308M)"),
    "sam_vit_h": ("vit_h", "SAM ViT-H (Meta, 2023; 636M)"),
}

_cpu_warned: set[str] = set()


def resolve_device(device: str | None) -> str:
    """Picks the torch device (CUDA when available) and, on CUDA, enables TF32 matmuls/convolutions.

    Raises:
        ModelUnavailableError: torch is missing, or CUDA was asked for on a host without it.
    """
    dev = _tu.resolve_device(None if device == "auto" else device)
    if dev.startswith("cuda"):
        torch = _tu.import_torch()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def warn_cpu(name: str, device: str) -> None:
    """Logs once per model that it runs (slowly) on the CPU."""
    if device == "cpu" and name not in _cpu_warned:
        _cpu_warned.add(name)
        logger.warning("%s runs on the CPU in float32: expect seconds per image. A CUDA GPU is much faster.", name)


check_frame = _tu.check_frame


def check_prompts(
    frame_size: tuple[int, int],
    points: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_logits: np.ndarray | None,
    logits_size: int,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validates prompts for one object on a frame of ``(H, W)``.

    Returns:
        ``(points float32 (N, 2) | None, labels int32 (N,) | None, box float32 (4,) clipped to the
        frame | None, mask_logits float32 (1, s, s) | None)`` with ``s = logits_size``.

    Raises:
        PromptError: nothing given, mismatched shapes, a click outside the frame, a box that misses it.
    """
    h, w = frame_size
    pts = lbl = ml = None
    checked = _tu.check_points(points, point_labels)
    if checked is not None:
        pts, lbl = checked
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
        if np.any(outside):
            raise PromptError(
                f"Point {pts[outside][0].tolist()} (x, y) lies outside the {w}x{h} image; click inside it."
            )
    bx = _tu.clip_box(box, frame_size)
    if mask_logits is not None:
        ml = np.asarray(mask_logits, dtype=np.float32)
        if ml.ndim == 2:
            ml = ml[None]
        if ml.shape != (1, logits_size, logits_size):
            raise PromptError(
                f"mask_logits must be (1, {logits_size}, {logits_size}) low-res logits from an earlier "
                f"prediction of this model; got {ml.shape}."
            )
    if pts is None and bx is None and ml is None:
        raise PromptError("No prompt given: add a click, a box or mask logits.")
    return pts, lbl, bx, ml


def sort_prediction(masks: np.ndarray, scores: np.ndarray, logits: np.ndarray | None) -> Prediction:
    """Builds a :class:`Prediction` with candidates best first."""
    order = np.argsort(-scores, kind="stable")
    return Prediction(
        masks=np.ascontiguousarray(masks[order]).astype(bool),
        scores=np.clip(scores[order], 0.0, 1.0).astype(np.float32),
        logits=None if logits is None else np.ascontiguousarray(logits[order]).astype(np.float32),
    )


class SamBackend:
    """SAM behind the :class:`~.base.Backend` protocol.

    Args:
        model: a ``segment_anything.modeling.Sam`` (any size; tests use a tiny random one).
        name: backend name, e.g. ``"sam_vit_b"``.
        device: torch device string; None picks CUDA when available.
        title: human-readable title for the UI.
    """

    def __init__(self, model: Any, name: str = "sam_vit_b", device: str | None = None, title: str = "") -> None:
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.input_size = int(model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.input_size)
        # Low-res logits are 4x the embedding grid: 256x256 for the 1024-pixel models.
        self.logits_size = int(model.prompt_encoder.mask_input_size[0])
        self.info = BackendInfo(
            name=name, title=title or SAM_VARIANTS.get(name, (name, name))[1], points=True, boxes=True,
            input_size=self.input_size, medical=False, sequence=False, device=self.device,
        )
        self._torch = torch
        warn_cpu(name, self.device)

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB.

        Returns:
            An :class:`Embedding` whose ``data`` is the encoder output float32 ``(1, C, 64, 64)``
            (on the model's device) and ``extra["input_size"]`` the resized ``(h, w)`` before padding.
        """
        torch = self._torch
        img = check_frame(frame)
        h, w = img.shape[:2]
        resized = self.transform.apply_image(img)  # uint8 (h', w', 3), longest side = input_size
        with torch.inference_mode():
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            input_size = (int(x.shape[-2]), int(x.shape[-1]))
            features = self.model.image_encoder(self.model.preprocess(x.float()))
        return Embedding(data=features, frame_size=(h, w), backend=self.info.name, extra={"input_size": input_size})

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Decodes one object's masks; see :meth:`~.base.Backend.predict` for shapes.

        Returns:
            Masks bool ``(K, H, W)`` at the frame size (K = 3 with ``multimask``, else 1), best first;
            scores = SAM's predicted IoU; logits float32 ``(K, 256, 256)``.
        """
        torch = self._torch
        _tu.check_embedding(embedding, self.info.name)
        frame_size = embedding.frame_size
        pts, lbl, bx, ml = check_prompts(frame_size, points, point_labels, box, mask_logits, self.logits_size)
        with torch.inference_mode():
            pt_arg = None
            if pts is not None:
                coords = self.transform.apply_coords(pts, frame_size)
                pt_arg = (
                    torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None],
                    torch.as_tensor(lbl, dtype=torch.int32, device=self.device)[None],
                )
            box_t = None
            if bx is not None:
                box_t = torch.as_tensor(self.transform.apply_boxes(bx[None], frame_size), dtype=torch.float32,
                                        device=self.device)
            mask_t = None if ml is None else torch.as_tensor(ml, device=self.device)[None]
            sparse, dense = self.model.prompt_encoder(points=pt_arg, boxes=box_t, masks=mask_t)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=embedding.data,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            masks = self.model.postprocess_masks(low_res, embedding.extra["input_size"], frame_size)
            masks = masks > self.model.mask_threshold
            return sort_prediction(
                masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()
            )


def build_sam_backend(
    name: str = "sam_vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    *,
    allow_download: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SamBackend:
    """Builds a SAM backend with official weights.

    Args:
        name: ``sam_vit_b`` | ``sam_vit_l`` | ``sam_vit_h``.
        checkpoint: a checkpoint path; None resolves the official one (see :mod:`.weights`).
        device: torch device; None picks CUDA when available.
        allow_download: passed to :func:`.weights.resolve_checkpoint`.
        progress: download progress callback ``(bytes_done, bytes_total)``.

    Raises:
        ModelUnavailableError: segment-anything is not installed.
        WeightsError: the checkpoint is missing, corrupt or does not fit the architecture.
    """
    if name not in SAM_VARIANTS:
        raise ModelUnavailableError(f"Unknown SAM model {name!r}; choose one of {', '.join(SAM_VARIANTS)}.")
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:
        raise ModelUnavailableError(
            "segment-anything is not installed: pip install segment-anything==1.0"
        ) from e
    path = resolve_checkpoint(checkpoint if checkpoint is not None else name, allow_download=allow_download,
                              progress=progress)
    state = load_state_dict(path)
    model = sam_model_registry[SAM_VARIANTS[name][0]](checkpoint=None)
    load_strict(model, state, path, name)
    logger.info("loaded %s from %s", name, path)
    return SamBackend(model, name=name, device=device)


def load_strict(model: Any, state: dict[str, Any], path: os.PathLike[str] | str, name: str) -> None:
    """Loads ``state`` into ``model`` requiring every key and shape to match.

    Raises:
        WeightsError: naming the first missing / unexpected / mis-shaped keys.
    """
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even with strict=False
        raise WeightsError(
            f"{path} does not fit {name}: {str(e).splitlines()[1:3]}... Give the checkpoint made for {name}."
        ) from e
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit {name}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Give the checkpoint made for {name}."
        )


def sam_info(name: str) -> BackendInfo:
    """Static description of a SAM model (no torch import); ``device`` is ``"auto"`` until built."""
    return BackendInfo(name=name, title=SAM_VARIANTS[name][1], points=True, boxes=True, input_size=1024,
                       medical=False, sequence=False, device="auto")


def _weights_available(name: str) -> str | None:
    spec = find_spec(name)
    if spec is None:
        return None
    if any((d / spec.filename).is_file() for d in search_dirs()):
        return None
    if os.environ.get("PROMPTONCE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return (f"{spec.filename} is not downloaded and PROMPTONCE_OFFLINE=1; fetch it from {spec.url} "
                f"into {search_dirs()[-1]}")
    return None  # downloadable on first use


def sam_availability(name: str) -> str | None:
    """Why ``name`` cannot run on this host, or None when it can (weights may still download on first use)."""
    if importlib.util.find_spec("segment_anything") is None:
        return "segment-anything is not installed (pip install segment-anything==1.0)"
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    return _weights_available(name)


def register_all(register: Callable[..., Any]) -> None:
    """Registers the SAM models: ``register(name, builder, info, check)`` for each.

    ``builder(**kwargs)`` builds the backend (``checkpoint``, ``device``, ``allow_download``,
    ``progress``); ``check()`` returns why it is unavailable, or None.
    """
    for name in SAM_VARIANTS:
        register(
            name,
            lambda _n=name, **kw: build_sam_backend(_n, **kw),
            sam_info(name),
            lambda _n=name: sam_availability(_n),
        )
