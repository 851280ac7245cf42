"""Readers (one per format behind one interface) and atomic writers.

Entry points: :func:`promptonce.io.readers.load`, :func:`~promptonce.io.readers.load_dataset`,
:func:`~promptonce.io.readers.load_reference`, :func:`~promptonce.io.readers.pair_references`,
:func:`~promptonce.io.labelnames.read_label_names`, :func:`~promptonce.io.timepoints.time_points` /
:func:`~promptonce.io.timepoints.read_time_point` (4D inputs), and the writers in :mod:`promptonce.io.writers`. Importing this package loads only numpy; nibabel,
pydicom, Pillow and highdicom are imported by the functions that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "load",
    "load_dataset",
    "load_reference",
    "pair_references",
    "SUPPORTED_FORMATS",
    "DEFAULT_MAX_VOXELS",
    "ResultWriter",
    "atomic_path",
    "write_mask_nifti",
    "write_png_masks_zip",
    "write_dicom_seg",
    "write_metrics_csv",
    "write_json",
    "write_overlay_gif",
    "read_label_names",
    "time_points",
    "read_time_point",
    "natural_key",
]

_READERS = {"load", "load_dataset", "load_reference", "pair_references", "SUPPORTED_FORMATS", "DEFAULT_MAX_VOXELS"}
_OTHERS = {"read_label_names": "labelnames", "time_points": "timepoints", "read_time_point": "timepoints"}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "natural_key":  # the package's one natural sort (img2 before img10)
        return importlib.import_module("promptonce.io._common").natural_key
    if name in _READERS:
        return getattr(importlib.import_module("promptonce.io.readers"), name)
    if name in _OTHERS:
        return getattr(importlib.import_module(f"promptonce.io.{_OTHERS[name]}"), name)
    if name in __all__:
        return getattr(importlib.import_module("promptonce.io.writers"), name)
    raise AttributeError(f"module 'promptonce.io' has no attribute {name!r}")
