"""PromptOnce: segment a whole CT/MR volume, an X-ray set or a whole dataset from ONE prompt.

Public API (importing this package loads neither torch nor gradio)::

    import promptonce as po
    vol = po.load("ct.nii.gz")                               # -> Volume
    prompt = po.SlicePrompt((po.ObjectPrompt(box=po.Box(10, 20, 80, 90)),), slice_index=40)
    for result in po.segment(po.Dataset([vol]), prompt, scope="volume"):
        ...                                                   # SliceResult, one slice at a time
    s = po.AnnotationSession([vol])                           # interactive: clicks, undo, objects, run, correct

See ``promptonce.types`` for the axis and coordinate conventions.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import (
    CancelledError,
    InputError,
    ModelError,
    ModelUnavailableError,
    PromptError,
    PromptOnceError,
    WeightsError,
)
from .types import Box, Dataset, ObjectPrompt, Point, SlicePrompt, SliceResult, Volume

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "load": ("promptonce.io.readers", "load"),
    "load_dataset": ("promptonce.io.readers", "load_dataset"),
    "segment": ("promptonce.engine", "segment"),
    "run_dataset": ("promptonce.distributed", "run_dataset"),
    "Engine": ("promptonce.engine", "Engine"),
    "AnnotationSession": ("promptonce.annotation", "AnnotationSession"),
    "get_backend": ("promptonce.backends.registry", "get_backend"),
    "available_backends": ("promptonce.backends.registry", "available_backends"),
    "metrics": ("promptonce.metrics", None),
    "prompts": ("promptonce.prompts", None),
}

__all__ = [
    "Box",
    "CancelledError",
    "Dataset",
    "InputError",
    "ModelError",
    "ModelUnavailableError",
    "ObjectPrompt",
    "Point",
    "PromptError",
    "PromptOnceError",
    "SlicePrompt",
    "SliceResult",
    "Volume",
    "WeightsError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'promptonce' has no attribute {name!r}")
