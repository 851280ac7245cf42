"""Optional ONNX Runtime path for image encoders (CPU), with automatic fallback to PyTorch.

An encoder is exported once to ``$PROMPTONCE_CACHE/onnx`` (default ``~/.cache/promptonce/onnx``), in a
file named after the checkpoint's SHA-256, written atomically, checked numerically against the
PyTorch encoder right after export, and reused by later processes. The file's own SHA-256 is then
recorded beside it (``.onnx.sha256``); a file whose checksum differs, or that has none, is exported
again. Whenever something is missing
(``onnxruntime``, or ``onnx`` for the export) or fails, :func:`encoder_session` returns None and the
caller keeps its PyTorch encoder.

TinyViT's patch merging bakes the batch size into the traced graph, so the exported graph takes
one frame; :meth:`OnnxEncoder.run` loops over a batch.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import _torchutil as tu

__all__ = ["OnnxEncoder", "cache_path", "encoder_session", "onnx_available"]

logger = logging.getLogger(__name__)

EXPORT_TAG = "v1"  # bump when the export recipe changes
OPSET = 17
_EXPORT_LOCK = threading.Lock()


def onnx_available(export: bool = False) -> bool:
    """True when ONNX Runtime (and, with ``export``, the ``onnx`` package the exporter needs) is installed."""
    ok = importlib.util.find_spec("onnxruntime") is not None
    if export:
        ok = ok and importlib.util.find_spec("onnx") is not None
    return ok


class OnnxEncoder:
    """An ONNX Runtime session for a one-frame image encoder.

    Args:
        path: the ``.onnx`` file (input ``image`` float32 ``(1, 3, S, S)``).
        threads: intra-op threads (default: the cores this process may use).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or tu.cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, 3, S, S)`` -> float32 ``(B, C, h, w)`` (frame by frame)."""
        outs = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(batch[i : i + 1], np.float32)})[0]
            for i in range(batch.shape[0])
        ]
        return np.concatenate(outs, axis=0)


def _export(module: Any, input_size: int, target: Path) -> None:
    torch = tu.import_torch()
    example = torch.zeros(1, 3, input_size, input_size)

    def write(tmp: Path) -> None:
        # the legacy TorchScript exporter is the one that handles TinyViT without onnxscript; its
        # deprecation and tracer warnings are expected (the graph is checked against PyTorch after export)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["image"],
                output_names=["embedding"],
                opset_version=OPSET,
            )

    tu.atomic_write(target, write)


def _matches_torch(module: Any, enc: OnnxEncoder, input_size: int, tol: float = 1e-3) -> bool:
    torch = tu.import_torch()
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, input_size, input_size), dtype=np.float32)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).float().numpy()
    got = enc.run(x)
    diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
    logger.debug("ONNX export check: max |onnx - torch| = %.3g", diff)
    return diff <= tol


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_ok(path: Path) -> bool:
    """True when ``path`` has the SHA-256 recorded right after its export was checked against PyTorch."""
    try:
        recorded = _sidecar(path).read_text().strip()
        tu.verify_checkpoint(path, None, recorded)
    except (OSError, tu.WeightsError):
        return False
    return True


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def cache_path(name: str, key: str, input_size: int) -> Path:
    """The cache file of an exported encoder (its folder is created if needed)."""
    return tu.cache_dir("onnx") / f"{name}_{key[:16]}_{input_size}_{EXPORT_TAG}.onnx"


def encoder_session(module: Any, name: str, key: str, input_size: int) -> OnnxEncoder | None:
    """Returns an ONNX Runtime session for ``module`` (exporting it once), or None to stay on PyTorch.

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
    with _EXPORT_LOCK:
        if path.exists() and not _recorded_ok(path):
            logger.warning("%s is not the verified export (checksum differs or missing); exporting again", path)
            _remove(path)
        fresh = False
        if not path.exists():
            if not onnx_available(export=True):
                logger.info("the onnx package is not installed, cannot export %s; it runs on PyTorch", name)
                return None
            logger.info("exporting %s to %s (once)", name, path)
            try:
                _export(module, input_size, path)
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: stay on PyTorch
                logger.warning("ONNX export of %s failed (%s); it runs on PyTorch", name, exc)
                _remove(path)
                return None
            fresh = True
        try:
            enc = OnnxEncoder(path)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file must not break the backend
            logger.warning("cannot load %s (%s); removing it, %s runs on PyTorch", path, exc, name)
            _remove(path)
            return None
        if fresh:
            if not _matches_torch(module, enc, input_size):
                logger.warning("the ONNX export of %s disagrees with PyTorch; removing it", name)
                _remove(path)
                return None
            digest = tu.file_sha256(path)
            tu.atomic_write(_sidecar(path), lambda tmp: tmp.write_text(digest + "\n"))
    return enc
