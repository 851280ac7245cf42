"""The backend protocol: embed an image once, prompt it many times.

A backend wraps one promptable segmentation model. Only modules in ``promptonce.backends`` import
torch; everything above talks numpy through this protocol.

Coordinates: frames are ``uint8 (H, W, 3)`` RGB images in the displayed slice's pixel grid; points
are ``(x, y)`` pixels of that frame, boxes ``(x0, y0, x1, y1)``. A backend resizes internally (the
geometry of resizing frames, points and boxes together lives inside the backend, once) and returns
masks at the frame's own size.

Memory models (SAM 2) additionally implement :class:`SequenceBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedding", "Prediction", "Backend", "SequenceBackend", "BackendInfo"]


@dataclass
class Embedding:
    """An image embedding produced by :meth:`Backend.embed`; opaque to callers.

    Attributes:
        data: backend-specific payload (e.g. a torch tensor ``(1, 256, 64, 64)``).
        frame_size: ``(H, W)`` of the frame that was embedded.
        backend: name of the backend that made it (predict refuses foreign embeddings).
    """

    data: Any
    frame_size: tuple[int, int]
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """Masks for ONE object on one frame.

    Attributes:
        masks: bool ``(K, H, W)`` candidate masks at the frame size, best first when ``K > 1``.
        scores: float32 ``(K,)`` model confidence (predicted IoU) of each candidate, 0..1.
        logits: float32 ``(K, h, w)`` low-resolution logits (for SAM-style mask prompts), or None.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None = None

    @property
    def best(self) -> np.ndarray:
        """bool ``(H, W)``: the highest-scoring mask."""
        return self.masks[int(np.argmax(self.scores))]


@dataclass(frozen=True)
class BackendInfo:
    """What a backend can do, for the UI and the engine's choices."""

    name: str
    title: str
    points: bool
    boxes: bool
    input_size: int
    medical: bool = False
    sequence: bool = False
    device: str = "cpu"


@runtime_checkable
class Backend(Protocol):
    """A promptable image segmenter."""

    info: BackendInfo

    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB.

        Returns:
            The embedding, reusable for any number of :meth:`predict` calls.
        """
        ...

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Decodes one object's mask from prompts on an embedded frame.

        Args:
            embedding: from :meth:`embed`.
            points: float32 ``(N, 2)`` as ``(x, y)`` frame pixels, or None.
            point_labels: int32 ``(N,)``, 1 = object, 0 = background.
            box: float32 ``(4,)`` ``x0, y0, x1, y1`` frame pixels, or None.
            mask_logits: float32 ``(1, h, w)`` low-res logits from an earlier prediction, or None.
            multimask: return the model's 3 candidates (for ambiguous single clicks).

        Returns:
            A :class:`Prediction` at the frame size.

        Raises:
            PromptError: when the model cannot take this kind of prompt (e.g. points for a box-only model).
        """
        ...


@runtime_checkable
class SequenceBackend(Protocol):
    """A memory model that propagates prompts through a sequence of frames (SAM 2's video predictor)."""

    info: BackendInfo

    def propagate(
        self,
        n_frames: int,
        get_frame: Callable[[int], np.ndarray],
        seeds: dict[int, Sequence[Any]],
        start: int,
        reverse: bool = False,
        end: int | None = None,
    ) -> Iterator[tuple[int, dict[int, np.ndarray], dict[int, float]]]:
        """Propagates from ``start`` to ``end`` (inclusive) in one direction, yielding frame by frame.

        Args:
            n_frames: length of the sequence.
            get_frame: loads frame ``i`` as uint8 ``(H, W, 3)`` on demand (frames are never all held).
            seeds: frame index -> list of :class:`promptonce.types.ObjectPrompt` or
                ``(object_id, bool mask (H, W))`` pairs placed on that frame.
            start: first frame (must be a seeded frame or reached after one).
            reverse: go towards frame 0.
            end: last frame to process (default: the end of the sequence in that direction).

        Yields:
            ``(frame_index, {object_id: bool mask (H, W)}, {object_id: score})``.
        """
        ...
