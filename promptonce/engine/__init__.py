"""Propagation engine: one prompt on one slice -> masks for a slice, a volume or a whole dataset.

The engine is a generator of :class:`~promptonce.types.SliceResult`, one slice at a time (the sam2
video predictor's idiom): the caller collects, streams to disk, reports progress or stops early.
Nothing here imports torch; models are reached through the backend protocol
(:mod:`promptonce.backends.base`).

How one prompt travels
----------------------
* Inside a volume (image models): the prompted slice is segmented from the user's prompt; each
  next slice is prompted with a box derived from the previous slice's mask (plus an interior point
  for models that take points). The box is then *refined from the slice's own mask*: the box of the
  new mask (with a margin) is fed back once more, so an organ that grows between slices is not
  clipped by the previous slice's box (clipping made stock chaining shrink and collapse on CT liver).
  An object ends in a direction when its mask vanishes or the model's confidence drops; slices whose
  area or confidence jump are flagged, never hidden.
* Across a dataset: ``strategy="transfer"`` (default) seeds every volume/image from the user's
  original prompt mapped to its own geometry (the Prompt Once paper's "fake seed" idea for image
  models), then refines that prompt from the case's own first mask. Cases are independent, so the
  order does not matter and errors cannot accumulate. ``strategy="chain"`` seeds each case from the
  previous case's result instead.
* Memory models (SAM 2, :class:`~promptonce.backends.base.SequenceBackend`) propagate with their own
  memory; the engine hands them frames lazily.

Layout: :mod:`.config` (knobs), :mod:`.cache` (embeddings), :mod:`.predict` (one slice), :mod:`.walk`
(inside a volume), :mod:`.transfer` (across a dataset), :mod:`.quality` (confidence and flags),
:mod:`.core` (the Engine and ``segment``).
"""

from __future__ import annotations

from .cache import EmbeddingCache, background_pool
from .config import PropagationConfig, Strategy
from .core import Engine, make_engine, segment
from .transfer import CaseOutcome, DatasetTransfer, Exemplar

__all__ = [
    "PropagationConfig",
    "Strategy",
    "Engine",
    "EmbeddingCache",
    "segment",
    "make_engine",
    "background_pool",
    "DatasetTransfer",
    "CaseOutcome",
    "Exemplar",
]
