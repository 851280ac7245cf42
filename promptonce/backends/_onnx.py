"""ONNX Runtime path for the CPU models (image encoder AND prompt decoder), with PyTorch as fallback.

Why: on a 2-core CPU the PyTorch path of LiteMedSAM spends ~2.2 s per slice in the encoder and
~0.1 s per decoder call, and ``import torch`` alone costs ~0.5 GB of resident memory. Exported to
ONNX, the same fp32 graphs run ~2x faster (encoder) and ~2x faster (decoder, one thread), and a
process that finds the exports in its cache never imports torch at all.

Files: each graph is exported once to ``$PROMPTONCE_CACHE/onnx`` (default ``~/.cache/promptonce/onnx``)
under a name holding the checkpoint's SHA-256, written atomically, checked numerically against the
PyTorch module right after export, and reused by later processes. The file's own SHA-256 is then
recorded beside it (``.onnx.sha256``); a file whose checksum differs, or that has none, is exported
again. Exports happen under a file lock, so concurrent processes do not export twice.

Export runs in a child process (``python -m promptonce.backends.onnx_export export litemedsam``), so the
process that serves requests does not keep torch and a second copy of the model in memory; when the
child fails the caller may export in-process or stay on PyTorch. Whenever something is missing
(``onnxruntime``; ``onnx`` for the export) or fails, the loaders return None and the backend keeps
its PyTorch path.

The decoder graph (:func:`decoder_module`) is SAM's prompt encoder + mask decoder with the prompts
given as points, as in segment-anything's ``SamOnnxModel``: a box is two points labelled 2 and 3, a
missing box is a padding point labelled -1, a mask prompt comes with ``has_mask_input``. It returns
all four low-resolution masks and their IoU predictions; the caller picks (single mask: index 0,
multimask: 1..3, as ``MaskDecoder.forward``) and upsamples with :func:`upsample_logits` (numpy,
PyTorch's bilinear rule, ``align_corners=False``).

OpenVINO (optional, ``pip install openvino``): when it is installed, the exported encoder graph runs
on it instead (:class:`OpenVinoEncoder`, same outputs within 1e-5), with two throughput streams that
let the engine encode both directions of a volume at once. On the 2-core test machine it encoded
5-15% faster than ONNX Runtime, within the noise end to end, which is why it is not a requirement
(it adds ~180 MB). ``PROMPTONCE_OPENVINO=0`` switches it off.

Measured and rejected (``benchmarks/README.md``): int8 quantisation (ONNX Runtime dynamic per-tensor
or per-channel, static QDQ; OpenVINO int8 weights) moved the LiteMedSAM embeddings by 14-72% (mean
relative) and masks to Dice 0.75-0.93 against fp32, far outside issue 7's 0.005 budget; a tanh GELU
export was slower (not fused).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from . import _torchutil as tu
from .weights import CheckpointSpec, cache_dir, sha256_file, verify_checkpoint

__all__ = [
    "OnnxGraph",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "encoder_runtime",
    "openvino_available",
    "cache_path",
    "cached_graph",
    "encoder_session",
    "export_graph",
    "export_model",
    "graph_paths",
    "load_graphs",
    "export_in_subprocess",
    "onnx_available",
    "resize_matrix",
    "upsample_logits",
    "one_blas_thread",
    "decoder_feeds",
]

logger = logging.getLogger(__name__)

EXPORT_TAG = "v2"  # bump when the export recipe changes
OPSET = 17
_EXPORT_LOCK = threading.Lock()
EXPORT_TIMEOUT_S = 1800.0


def onnx_available(export: bool = False) -> bool:
    """True when ONNX Runtime (and, with ``export``, the ``onnx`` package the exporter needs) is installed."""
    ok = importlib.util.find_spec("onnxruntime") is not None
    if export:
        ok = ok and importlib.util.find_spec("onnx") is not None
    return ok


# ---------------------------------------------------------------------- sessions
class OnnxGraph:
    """An ONNX Runtime CPU session.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: the cores this process may use, see ``PROMPTONCE_THREADS``).
        spinning: let idle intra-op threads spin; off for small graphs that run beside another
            session (the decoder beside a prefetching encoder), where spinning steals a core.
    """

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or tu.cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # not "session.set_denormal_as_zero": it sets flush-to-zero on the CALLING thread too, a
        # process-wide numeric side effect on the library's users (it broke hypothesis's float checks)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class OnnxEncoder(OnnxGraph):
    """An image encoder session (input ``image`` float32 ``(1, 3, S, S)``)."""

    #: encodings worth running at once (ONNX Runtime already spreads one over every core)
    streams = 1
    runtime_name = "onnxruntime"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, 3, S, S)`` -> float32 ``(B, C, h, w)`` (frame by frame: the graph takes one)."""
        outs = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(batch[i : i + 1], np.float32)})[0]
            for i in range(batch.shape[0])
        ]
        return np.concatenate(outs, axis=0)


def openvino_available() -> bool:
    """True when OpenVINO is installed and not switched off (``PROMPTONCE_OPENVINO=0``)."""
    if os.environ.get("PROMPTONCE_OPENVINO", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("openvino") is not None


class OpenVinoEncoder:
    """The exported encoder graph on OpenVINO's CPU plugin, for one caller at a time or two at once.

    Two compilations of the same graph: one for latency (one request on every core), used when it is
    the only encoding in flight, and one for throughput (``streams`` requests of one core each), used
    by a second encoding that starts while another runs: the engine encodes the two directions of a
    volume at once (:attr:`streams` tells it that this pays). On a 2-core AMD EPYC the throughput
    compilation encoded LiteMedSAM slices in 0.85-0.97 s each against 1.07-1.18 s for ONNX Runtime
    fp32 and 1.02-1.07 s for OpenVINO latency mode (same outputs within 3e-6).

    Args:
        path: the ``.onnx`` file (input float32 ``(1, 3, S, S)``).
        threads: cores to use (default: the cores this process may use).
    """

    runtime_name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        n = threads or tu.cpu_threads()
        core = ov.Core()
        model = core.read_model(str(path))
        common = {"INFERENCE_NUM_THREADS": n}
        self.path = Path(path)
        self.streams = max(1, min(2, n))
        self._latency = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **common})
        self._idle_latency = [self._latency.create_infer_request()]
        self._idle_tput: list[Any] = []
        if self.streams > 1:
            tput = core.compile_model(
                model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams, **common}
            )
            self._idle_tput = [tput.create_infer_request() for _ in range(self.streams)]
            self._tput = tput
        self._lock = threading.Condition()
        self._running = 0

    def _take(self) -> tuple[list[Any], Any]:
        with self._lock:
            while True:
                if self._running == 0 and self._idle_latency:  # alone: every core on one request
                    pool = self._idle_latency
                elif self._idle_tput:  # beside another encoding: one stream each
                    pool = self._idle_tput
                else:
                    self._lock.wait()
                    continue
                self._running += 1
                return pool, pool.pop()

    def _give(self, pool: list[Any], req: Any) -> None:
        with self._lock:
            pool.append(req)
            self._running -= 1
            self._lock.notify_all()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, 3, S, S)`` -> float32 ``(B, C, h, w)`` (frame by frame); thread-safe."""
        outs = []
        for i in range(batch.shape[0]):
            pool, req = self._take()
            try:
                res = req.infer({0: np.ascontiguousarray(batch[i : i + 1], np.float32)})
                outs.append(np.array(res[0], copy=True))
            finally:
                self._give(pool, req)
        return np.concatenate(outs, axis=0)


def encoder_runtime(path: Path) -> Any:
    """The fastest encoder session available for an exported graph: OpenVINO, else ONNX Runtime."""
    if openvino_available():
        try:
            return OpenVinoEncoder(path)
        except Exception as exc:  # noqa: BLE001 - any OpenVINO failure: ONNX Runtime runs the same graph
            logger.warning("OpenVINO cannot run %s (%s); using ONNX Runtime", path.name, exc)
    return OnnxEncoder(path)


# ---------------------------------------------------------------------- cache files
def cache_path(name: str, key: str, input_size: int) -> Path:
    """The cache file of an exported graph (its folder is created if needed)."""
    return cache_dir("onnx") / f"{name}_{key[:16]}_{input_size}_{EXPORT_TAG}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_ok(path: Path) -> bool:
    """True when ``path`` has the SHA-256 recorded right after its export was checked against PyTorch."""
    try:
        recorded = _sidecar(path).read_text().strip()
        verify_checkpoint(path, CheckpointSpec(path.stem, path.name, "", sha256=recorded))
    except (OSError, WeightsError):
        return False
    return True


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (``fcntl.flock`` on ``<path>.lock``); a no-op where unsupported."""
    with _EXPORT_LOCK:
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        lock = path.with_name(path.name + ".lock")
        with open(lock, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_graph(path: Path) -> Path | None:
    """``path`` when it holds a verified export; an unverified or altered file is removed (None)."""
    if not path.exists():
        return None
    if _recorded_ok(path):
        return path
    logger.warning("%s is not the verified export (checksum differs or missing); removing it", path)
    _remove(path)
    return None


def _torch_export(
    module: Any,
    inputs: tuple[Any, ...],
    tmp: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    torch = tu.import_torch()
    # the legacy TorchScript exporter handles TinyViT without onnxscript; its deprecation and tracer
    # warnings are expected (every graph is checked against PyTorch after export)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(tmp),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
        )


def export_graph(
    module: Any,
    inputs: tuple[Any, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    tol: float = 1e-3,
) -> Path | None:
    """Exports ``module`` to ``path`` once (under a cross-process lock) and verifies it.

    The exported graph is run on ``inputs`` and every output compared with PyTorch's (max absolute
    difference <= ``tol``); only then is its SHA-256 recorded. Returns the path, or None when the
    export or the check failed (the caller stays on PyTorch).
    """
    if not onnx_available(export=True):
        logger.info("onnxruntime/onnx are not installed; cannot export %s", path.name)
        return None
    torch = tu.import_torch()
    with _file_lock(path):
        if cached_graph(path) is not None:
            return path  # another process exported it meanwhile
        logger.info("exporting %s (once)", path)
        try:
            tu.atomic_write(
                path, lambda tmp: _torch_export(module, inputs, tmp, input_names, output_names, dynamic_axes)
            )
            graph = OnnxGraph(path)
            with torch.inference_mode():
                ref = module(*inputs)
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            got = graph(**{n: np.ascontiguousarray(x.detach().cpu().numpy()) for n, x in zip(input_names, inputs)})
        except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure means: stay on PyTorch
            logger.warning("ONNX export of %s failed (%s)", path.name, exc)
            _remove(path)
            return None
        for r, g in zip(ref, got):
            r = r.float().cpu().numpy()
            diff = float(np.max(np.abs(g - r))) if g.shape == r.shape else float("inf")
            if diff > tol:
                logger.warning("the ONNX export %s disagrees with PyTorch (max diff %.3g); removing it", path.name, diff)
                _remove(path)
                return None
        digest = sha256_file(path)
        tu.atomic_write(_sidecar(path), lambda tmp: tmp.write_text(digest + "\n"))
    return path


def export_in_subprocess(model: str, timeout: float = EXPORT_TIMEOUT_S) -> bool:
    """Runs ``python -m promptonce.backends.onnx_export export <model>`` in a child process; True on success.

    The child inherits the environment (so ``PROMPTONCE_CACHE`` and ``PROMPTONCE_THREADS``); its log
    goes to this process's log when it fails.
    """
    cmd = [sys.executable, "-m", "promptonce.backends.onnx_export", "export", model]
    logger.info("exporting %s to ONNX in a child process (once; takes a minute)", model)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("the ONNX export child for %s could not run (%s)", model, exc)
        return False
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-5:]
        logger.warning("the ONNX export child for %s failed (exit %d): %s", model, done.returncode, " | ".join(tail))
        return False
    return True


def encoder_session(module: Any, name: str, key: str, input_size: int) -> OnnxEncoder | None:
    """An ONNX Runtime session for an image encoder (exported in-process once), or None to stay on PyTorch.

    Args:
        module: the PyTorch image encoder (eval mode, on CPU), input float32 ``(1, 3, S, S)``.
        name: file name stem, e.g. ``"litemedsam_encoder"``.
        key: the checkpoint's SHA-256 (names the cache file, so other weights never reuse it).
        input_size: ``S``.
    """
    if not onnx_available():
        logger.info("onnxruntime is not installed; %s runs on PyTorch", name)
        return None
    try:
        path = cache_path(name, key, input_size)
    except OSError as exc:
        logger.warning("cannot create the ONNX cache folder (%s); %s runs on PyTorch", exc, name)
        return None
    if cached_graph(path) is None:
        torch = tu.import_torch() if importlib.util.find_spec("torch") else None
        if torch is None or not onnx_available(export=True):
            return None
        example = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        if export_graph(module, (example,), path, ["image"], ["embedding"]) is None:
            return None
    try:
        return OnnxEncoder(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file must not break the backend
        logger.warning("cannot load %s (%s); removing it, %s runs on PyTorch", path, exc, name)
        _remove(path)
        return None


def _export(module: Any, input_size: int, target: Path) -> None:
    """Exports an image encoder to ``target`` without verification (benchmarks time raw exports)."""
    torch = tu.import_torch()
    example = torch.zeros(1, 3, input_size, input_size)
    tu.atomic_write(target, lambda tmp: _torch_export(module, (example,), tmp, ["image"], ["embedding"]))


# ---------------------------------------------------------------------- the decoder graph
def decoder_module(prompt_encoder: Any, mask_decoder: Any, input_size: int) -> Any:
    """SAM's prompt encoder + mask decoder as one traceable module (the ``SamOnnxModel`` recipe).

    Inputs: ``image_embeddings`` (1, 256, 64, 64); ``point_coords`` float32 (1, N, 2) in model-input
    pixels; ``point_labels`` float32 (1, N) (-1 padding, 0 background, 1 object, 2/3 box corners);
    ``mask_input`` (1, 1, 256, 256); ``has_mask_input`` (1,). Outputs: ``low_res_masks`` (1, 4, 256,
    256) and ``iou_predictions`` (1, 4).
    """
    torch = tu.import_torch()

    class SamDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe = prompt_encoder
            self.md = mask_decoder
            self.size = float(input_size)

        def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):  # noqa: ANN001
            pe = self.pe
            coords = (point_coords + 0.5) / self.size
            emb = pe.pe_layer._pe_encoding(coords)
            labels = point_labels.unsqueeze(-1).expand_as(emb)
            emb = emb * (labels != -1)
            emb = emb + pe.not_a_point_embed.weight * (labels == -1)
            for i in range(pe.num_point_embeddings):
                emb = emb + pe.point_embeddings[i].weight * (labels == i)
            dense = pe.mask_downscaling(mask_input) * has_mask_input
            dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            masks, iou = self.md.predict_masks(
                image_embeddings=image_embeddings,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=emb,
                dense_prompt_embeddings=dense,
            )
            return masks, iou

    return SamDecoder().eval()


def export_decoder(prompt_encoder: Any, mask_decoder: Any, input_size: int, path: Path) -> Path | None:
    """Exports and verifies :func:`decoder_module` (a variable number of points)."""
    torch = tu.import_torch()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 256, 64, 64, generator=g) * 0.1
    coords = torch.tensor([[[40.0, 50.0], [0.3 * input_size, 0.3 * input_size], [0.7 * input_size, 0.8 * input_size]]])
    labels = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.randn(1, 1, 256, 256, generator=g)
    has_mask = torch.tensor([1.0])
    return export_graph(
        decoder_module(prompt_encoder, mask_decoder, input_size),
        (emb, coords, labels, mask, has_mask),
        path,
        ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
        ["low_res_masks", "iou_predictions"],
        dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}},
    )


def decoder_feeds(
    embedding: np.ndarray,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_logits: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder graph's inputs; ``points`` and ``box`` already in model-input pixels.

    Reproduces ``PromptEncoder.forward``: clicks first, then a padding point when there is no box,
    then the box corners.
    """
    coords: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if points is not None and len(points):
        coords.append(np.asarray(points, np.float32).reshape(-1, 2))
        labs.append(np.asarray(labels, np.float32).reshape(-1))
        if box is None:
            coords.append(np.zeros((1, 2), np.float32))
            labs.append(np.array([-1.0], np.float32))
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 2))
        labs.append(np.array([2.0, 3.0], np.float32))
    if mask_logits is None:
        mask = np.zeros((1, 1, 256, 256), np.float32)
        has = np.zeros(1, np.float32)
    else:
        mask = np.asarray(mask_logits, np.float32).reshape(1, 1, 256, 256)
        has = np.ones(1, np.float32)
    return {
        "image_embeddings": np.ascontiguousarray(embedding, np.float32),
        "point_coords": np.concatenate(coords)[None],
        "point_labels": np.concatenate(labs)[None],
        "mask_input": mask,
        "has_mask_input": has,
    }


# ---------------------------------------------------------------------- mask upsampling (numpy)
@functools.lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64 ``(n_out, n_in)``: PyTorch's 1-D bilinear resize (``align_corners=False``, no antialias)."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)  # PyTorch computes the source index in float32 for float32 input
    src = np.maximum(scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5), f32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(f32)).astype(np.float64)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


@functools.lru_cache(maxsize=64)
def _axis_map(low: int, padded: int | None, content: int, out: int) -> np.ndarray:
    """float32 ``(out, low)``: low-res axis -> [upsample to ``padded``] -> crop ``content`` -> ``out``."""
    if padded is None:  # crop the low-res logits directly, then resize
        m = resize_matrix(content, out) @ np.eye(low)[:content]
    else:
        m = resize_matrix(content, out) @ resize_matrix(low, padded)[:content]
    return np.ascontiguousarray(m, np.float32)


_BLAS_LOCK = threading.Lock()
_blas_state: dict[str, Any] = {"users": 0, "limiter": None, "controller": None}  # controller False: unavailable


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Runs the block with numpy's BLAS (OpenBLAS) on one thread, then restores its setting.

    Why: on a small CPU the upsampling matrix products below are large enough for OpenBLAS to start
    its worker threads, which then busy-wait for a while and take cores from the next ONNX Runtime
    decoder call: on the 2-core test machine a ``predict`` took 47.6 ms with them and 36.6 ms without
    (LiteMedSAM; MobileSAM 86.4 / 36.0 ms), the masks identical (``benchmarks/blas_threads.py``). The
    setting is process-wide, so nested and concurrent users are counted and the original limit comes
    back when the last one leaves. Without ``threadpoolctl`` installed this does nothing (and the import is tried once).
    """
    with _BLAS_LOCK:
        if _blas_state["users"] == 0 and _blas_state["controller"] is not False:
            try:
                if _blas_state["controller"] is None:
                    from threadpoolctl import ThreadpoolController

                    _blas_state["controller"] = ThreadpoolController()
                _blas_state["limiter"] = _blas_state["controller"].limit(limits=1, user_api="blas")
            except Exception as exc:  # noqa: BLE001 - a speed setting must never break a prediction
                logger.debug("cannot limit the BLAS threads (%s); upsampling with its default", exc)
                if _blas_state["controller"] is None:
                    _blas_state["controller"] = False  # not installed: not tried again on every call
                _blas_state["limiter"] = None
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def upsample_logits(
    logits: np.ndarray, content: tuple[int, int], out: tuple[int, int], padded: int | None = None
) -> np.ndarray:
    """Low-res logits ``(K, h, w)`` -> logits ``(K, *out)`` at the frame size.

    With ``padded`` (SAM/MobileSAM): bilinear up to ``padded x padded``, crop to ``content``, bilinear
    to ``out`` (``Sam.postprocess_masks``). Without (LiteMedSAM): crop the low-res logits to
    ``content`` and resize to ``out``. Both resizes are linear maps per axis, composed into one matrix
    each, so this costs two small matrix products per mask, run on one BLAS thread
    (:func:`one_blas_thread`).
    """
    k, h, w = logits.shape
    ry = _axis_map(h, padded, content[0], out[0])
    rx = _axis_map(w, padded, content[1], out[1])
    with one_blas_thread():
        return np.stack([ry @ logits[i].astype(np.float32) @ rx.T for i in range(k)])


# ---------------------------------------------------------------------- a model's two graphs
def graph_paths(model: str, key: str, input_size: int) -> tuple[Path, Path]:
    """The cache files of a model's exported encoder and decoder (e.g. ``model="litemedsam"``)."""
    return cache_path(f"{model}_encoder", key, input_size), cache_path(f"{model}_decoder", key, input_size)


def export_model(model: str, key: str, input_size: int, torch_model: Callable[[], Any]) -> bool:
    """Exports (once) and verifies a SAM-style model's encoder and decoder; True when both are cached.

    ``torch_model`` returns the PyTorch model (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``); it is called only when something must be exported.
    """
    enc_path, dec_path = graph_paths(model, key, input_size)
    if cached_graph(enc_path) is not None and cached_graph(dec_path) is not None:
        return True
    net = torch_model()
    torch = tu.import_torch()
    if cached_graph(enc_path) is None:
        example = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        if export_graph(net.image_encoder, (example,), enc_path, ["image"], ["embedding"]) is None:
            return False
    if cached_graph(dec_path) is None:
        if export_decoder(net.prompt_encoder, net.mask_decoder, input_size, dec_path) is None:
            return False
    return True


def load_graphs(
    model: str,
    key: str,
    input_size: int,
    torch_model: Callable[[], Any],
    decoder_threads: int | None = None,
    decoder_spinning: bool = True,
) -> tuple[Any, OnnxGraph] | None:
    """A model's encoder session (:func:`encoder_runtime`) and decoder session, or None to stay on PyTorch.

    Missing or unverified graphs are exported first: in a child process, else in-process with
    ``torch_model()``. A graph that fails to load is removed from the cache.
    """
    if not onnx_available():
        logger.info("onnxruntime is not installed; %s runs on PyTorch", model)
        return None
    try:
        enc_path, dec_path = graph_paths(model, key, input_size)
    except OSError as exc:
        logger.warning("cannot create the ONNX cache folder (%s); %s runs on PyTorch", exc, model)
        return None
    if cached_graph(enc_path) is None or cached_graph(dec_path) is None:
        if not export_in_subprocess(model) and not export_model(model, key, input_size, torch_model):
            return None
    try:
        enc = encoder_runtime(enc_path)
        dec = OnnxGraph(dec_path, threads=decoder_threads, spinning=decoder_spinning)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file must not break the backend
        logger.warning("cannot load the %s ONNX graphs (%s); removing them, using PyTorch", model, exc)
        for p in (enc_path, dec_path):
            _remove(p)
        return None
    return enc, dec
