"""The annotation session's typed state and rules: objects, drafts, actions, previews, progress,
the correction-range rule and the per-scope slice total (see :mod:`promptonce.annotation`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import PromptError
from ..types import Box, Dataset, ObjectPrompt, Point, Volume

__all__ = [
    "SCOPES", "STRATEGIES", "MODES", "VOLUME_CACHE_BYTES", "Scope", "Mode", "Images", "Reference",
    "ObjectInfo", "Draft", "CaseInfo", "Action", "Preview", "RunProgress", "RunInfo",
    "correction_range", "slices_in_scope",
]  # fmt: skip

#: Run scopes: the prompted image(s) only, the prompted volume, every volume of the dataset.
SCOPES = ("image", "volume", "dataset")
#: Dataset strategies (see :func:`promptonce.engine.segment`).
STRATEGIES = ("transfer", "chain")
#: What a click adds: an object click, a background click, or a box corner (two make a box).
MODES = ("positive", "negative", "box")
#: Bytes of loaded volumes kept in memory (at least one volume is always kept).
VOLUME_CACHE_BYTES = 256 * 2**20

Scope = Literal["image", "volume", "dataset"]
Mode = Literal["positive", "negative", "box"]


# ---------------------------------------------------------------------------------------------- rules
def correction_range(slice_index: int, prompted: Sequence[int], n_slices: int) -> tuple[int, int]:
    """The slices a new prompt on ``slice_index`` affects: the one correction-range rule.

    From ``slice_index`` forward to the slice before the next prompted slice (or the last slice), and
    backward to the slice after the previous prompted slice (or slice 0). Slices beyond the
    neighbouring prompted slices keep their results: propagation past them is anchored on them.

    Args:
        slice_index: the slice that got the prompt.
        prompted: the other prompted slices (``slice_index`` may be among them; out-of-range ones are ignored).
        n_slices: slices in the volume.

    Returns:
        Inclusive ``(lo, hi)`` with ``lo <= slice_index <= hi``.

    Raises:
        PromptError: ``slice_index`` is not a slice of the volume.
    """
    if not 0 <= slice_index < n_slices:
        raise PromptError(f"Slice {slice_index} does not exist; the volume has {n_slices} slices (0..{n_slices - 1}).")
    others = [p for p in prompted if p != slice_index and 0 <= p < n_slices]
    lo = max((p + 1 for p in others if p < slice_index), default=0)
    hi = min((p - 1 for p in others if p > slice_index), default=n_slices - 1)
    return lo, hi


def slices_in_scope(
    scope: str, n_slices: Callable[[int], int], n_cases: int, volume_index: int = 0, images: int = 1
) -> int:
    """How many slices a run of ``scope`` yields (for progress): the one per-scope slice total.

    Args:
        scope: ``image`` / ``volume`` / ``dataset``.
        n_slices: the slice count of case ``i`` (called only for the cases the scope covers).
        n_cases: cases in the dataset.
        volume_index: the prompted case (volume scope).
        images: prompted images (image scope).
    """
    if scope == "image":
        return int(images)
    if scope == "volume":
        return int(n_slices(volume_index))
    return int(sum(n_slices(i) for i in range(n_cases)))


# ---------------------------------------------------------------------------------------------- state
@dataclass
class ObjectInfo:
    """One object being segmented: its label id in outputs (1..255) and its name."""

    object_id: int
    name: str


@dataclass
class Draft:
    """What was put on one slice for one object, and the preview mask it gives.

    Attributes:
        points: clicks in image pixels, in the order given.
        box: a box in image pixels, or None.
        corner: first corner ``(x, y)`` of a box being drawn (the pending state of two-click boxes), or None.
        mask: bool ``(rows, cols)`` preview, or None when not predicted (yet).
        score: the model's confidence for ``mask``.
    """

    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    corner: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    score: float = 0.0

    @property
    def usable(self) -> bool:
        """True when the draft can seed a segmentation (a positive click or a box)."""
        return self.box is not None or any(p.label == 1 for p in self.points)

    def prompt(self, obj: ObjectInfo) -> ObjectPrompt:
        """The draft as an :class:`ObjectPrompt` for object ``obj``."""
        return ObjectPrompt(points=tuple(self.points), box=self.box, object_id=obj.object_id, name=obj.name)


@dataclass
class CaseInfo:
    """What a session knows about a case without holding its voxels.

    Attributes:
        name: case name.
        shape: ``(slices, rows, cols)``.
        spacing: ``(col, row, slice)`` mm.
        modality: ``CT | MR | XR | OT``.
        source_format: ``nifti | dicom | image | numpy | ...``.
    """

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    modality: str
    source_format: str

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    @classmethod
    def of(cls, vol: Volume) -> CaseInfo:
        return cls(vol.name, vol.shape, vol.spacing, str(vol.modality), str(vol.source_format))


@dataclass
class Action:
    """One undoable step: a point, a box corner or a finished box of one object on one slice, or an added object.

    Attributes:
        kind: ``point`` / ``corner`` (first corner of a box) / ``box`` (second corner) / ``same_corner``
            (a second corner on the first one's pixel: the box was dropped) / ``object`` (an object was
            added; ``case`` and ``slice_index`` are -1).
        case, slice_index, object_id: where it happened.
        before: the object's draft on that slice before the step (None: it had none).
        previous_active: for ``object``, the object that was active before.
    """

    kind: str
    case: int
    slice_index: int
    object_id: int
    before: Draft | None
    previous_active: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.case, self.slice_index


@dataclass
class Preview:
    """The answer to a prompt: the object's mask on that slice, at once.

    Attributes:
        case, slice_index, object_id: where.
        mask: bool ``(rows, cols)``, or None when the prompt cannot give one yet (a box's first
            corner, background clicks only).
        score: model confidence (0..1).
        seconds: time the prediction took.
        message: one line for a person: what happened, or what to do next.
    """

    case: int
    slice_index: int
    object_id: int
    mask: np.ndarray | None
    score: float = 0.0
    seconds: float = 0.0
    message: str = ""


@dataclass
class RunProgress:
    """One progress report of a running segmentation.

    Attributes:
        done: slices finished.
        total: slices the run covers.
        seconds: time since the run started.
        volume_index, slice_index: the slice just finished (or -1).
        message: what the run is doing.
        finished: True for the last report.
    """

    done: int
    total: int
    seconds: float
    volume_index: int = -1
    slice_index: int = -1
    message: str = ""
    finished: bool = False

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current pace, or None before the first slice."""
        if self.done <= 0 or self.total <= self.done:
            return None if self.done <= 0 else 0.0
        return self.seconds / self.done * (self.total - self.done)


@dataclass
class RunInfo:
    """The last run's figures (for a metrics panel and ``metrics.json``)."""

    model: str
    scope: str
    strategy: str
    seconds: float = 0.0
    slices: int = 0
    cancelled: bool = False
    volumes: list[int] = field(default_factory=list)


Images = Dataset | Volume | Sequence[Volume] | str | Path | Sequence[str | Path]
Reference = str | Path | np.ndarray | Volume | None
