"""Command line that exports the CPU models to ONNX (once per machine)::

    python -m promptonce.backends.onnx_export export litemedsam
    python -m promptonce.backends.onnx_export export mobilesam

The backends run it as a child process on first use (so the serving process never holds torch and a
second copy of the model), ``scripts/setup.sh`` runs it at install, and a Space runs it at start-up.
The graphs land in ``$PROMPTONCE_CACHE/onnx`` (default ``~/.cache/promptonce/onnx``), verified
against PyTorch; an export already there is reused. Exit code 0 when both graphs of the model are
cached, 1 when the export failed (the backend then stays on PyTorch), 2 for a bad command line.

It lives apart from :mod:`promptonce.backends._onnx` so that the ONNX runtime module does not import
the model modules that import it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ._torchutil import cpu_threads

__all__ = ["MODELS", "export", "main"]

MODELS: tuple[str, ...] = ("litemedsam", "mobilesam")
"""The models that have ONNX graphs."""


def _exporter(model: str) -> Callable[[], bool]:
    if model == "litemedsam":
        from .litemedsam import export_onnx as lite_export

        return lite_export
    from .mobilesam import export_onnx as mobile_export

    return mobile_export


def export(model: str) -> bool:
    """Exports (once) and verifies ``model``'s encoder and decoder graphs in this process.

    Args:
        model: one of :data:`MODELS`.

    Returns:
        True when both graphs are in the cache (exported now or before).

    Raises:
        ValueError: ``model`` has no ONNX export.
    """
    if model not in MODELS:
        raise ValueError(f"No ONNX export for {model!r}; choose one of {', '.join(MODELS)}.")
    return bool(_exporter(model)())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m promptonce.backends.onnx_export export MODEL``; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m promptonce.backends.onnx_export",
                                 description="Export a CPU model to ONNX (once; reused afterwards).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="export and verify a model's encoder and decoder graphs")
    ex.add_argument("model", choices=list(MODELS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return 0 if export(args.model) else 1


if __name__ == "__main__":
    os.environ.setdefault("PROMPTONCE_THREADS", str(cpu_threads()))
    sys.exit(main())
