"""Core value types: Volume, Dataset, prompts and per-slice results.

Axis order and display convention (the same everywhere: app, CLI outputs, exported files)
------------------------------------------------------------------------------------------
``Volume.array`` has shape ``(slices, rows, cols)``. ``volume.array[k]`` is the 2D image shown for
slice ``k``: row 0 is the top of the screen, column 0 its left edge. Points are ``(x, y)`` =
``(col, row)`` pixels of that displayed image, boxes are ``(x0, y0, x1, y1)`` in the same pixels,
inclusive of their first and last pixel, as in SAM.

``Volume.affine`` maps a voxel index ``(col, row, slice, 1)`` to patient millimetres in RAS+ (the
NIfTI world; DICOM's LPS is converted). Spacing is derived from it, never stored twice.

Readers put medical volumes in *radiological display orientation*: the slices run along the file's
last voxel axis (in file order, so slice numbers match other tools), and inside a slice the columns
run towards the patient's left / posterior and the rows towards posterior / inferior, so that an
axial slice shows anterior at the top and the patient's right on the viewer's left, as in a PACS
viewer. The reorientation applied is recorded in :class:`SourceGeometry`, so writers can put a mask
back on the input's own voxel grid with the input's own affine (``SourceGeometry.to_source``).
2D images (PNG, JPG, X-ray DICOM) are shown as stored, as one-slice volumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import DimensionError, InvalidValuesError, PromptError

__all__ = [
    "Modality",
    "Point",
    "Box",
    "ObjectPrompt",
    "SlicePrompt",
    "SourceGeometry",
    "Volume",
    "Dataset",
    "SliceResult",
    "Scope",
    "unit_name",
]

Modality = Literal["CT", "MR", "XR", "OT"]
Scope = Literal["image", "volume", "dataset"]


@dataclass(frozen=True)
class Point:
    """A click at pixel ``(x, y)`` = (column, row) of the displayed slice; ``label`` 1 = object, 0 = background."""

    x: float
    y: float
    label: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise PromptError(f"Point ({self.x}, {self.y}) is not finite; give pixel coordinates.")
        if self.label not in (0, 1):
            raise PromptError(f"Point label must be 1 (object) or 0 (background), got {self.label}.")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x0, y0, x1, y1)`` in displayed-slice pixels, first and last pixel included."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        vals = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(v) for v in vals):
            raise PromptError(f"Box {vals} is not finite; give pixel coordinates.")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise PromptError(
                f"Box {vals} has x1 < x0 or y1 < y0; give it as x0,y0,x1,y1 (top-left, bottom-right)."
            )

    def as_array(self) -> np.ndarray:
        """Returns the box as float32 array ``[x0, y0, x1, y1]``."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)

    @property
    def width(self) -> float:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> float:
        return self.y1 - self.y0 + 1


@dataclass(frozen=True)
class ObjectPrompt:
    """Everything the user put on one image for ONE object: clicks and/or one box.

    ``object_id`` is the label the object gets in output label maps (1..255).
    """

    points: tuple[Point, ...] = ()
    box: Box | None = None
    object_id: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if not self.points and self.box is None:
            raise PromptError("An object prompt needs at least one click or a box.")
        if not 1 <= self.object_id <= 255:
            raise PromptError(f"object_id must be in 1..255, got {self.object_id}.")

    @property
    def has_positive_point(self) -> bool:
        return any(p.label == 1 for p in self.points)

    def point_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(coords float32 (N, 2) as x, y; labels int32 (N,))``."""
        if not self.points:
            return np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
        coords = np.array([[p.x, p.y] for p in self.points], dtype=np.float32)
        labels = np.array([p.label for p in self.points], dtype=np.int32)
        return coords, labels


@dataclass(frozen=True)
class SlicePrompt:
    """One user interaction: the prompts for one or more objects placed on one slice of one volume."""

    objects: tuple[ObjectPrompt, ...]
    slice_index: int = 0
    volume_index: int = 0

    def __post_init__(self) -> None:
        if not self.objects:
            raise PromptError("A prompt needs at least one object (a click or a box).")
        ids = [o.object_id for o in self.objects]
        if len(set(ids)) != len(ids):
            raise PromptError(f"Object ids must be distinct within one prompt, got {ids}.")


@dataclass
class SourceGeometry:
    """How the input was stored, so that outputs can be written back on the input's own grid.

    Attributes:
        affine: the input file's 4x4 voxel-to-RAS+ affine (NIfTI convention).
        shape: the input's voxel array shape (spatial axes only).
        ornt: nibabel orientation array ``(3, 2)`` that takes the stored array to the display array
            ``(cols, rows, slices)`` order used before the final transpose to ``(slices, rows, cols)``;
            ``None`` when the display array is the stored array (2D images).
        header: the reader's original header object (e.g. a nibabel header), or None.
        slice_names: for image stacks, the source file name of each slice (outputs reuse them).
        extra: reader-specific data (e.g. DICOM source datasets for DICOM-SEG).
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    ornt: np.ndarray | None = None
    header: Any = None
    slice_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_source(self, display: np.ndarray) -> np.ndarray:
        """Maps an array in display order ``(slices, rows, cols)`` back to the stored voxel order.

        Args:
            display: array of shape ``(slices, rows, cols)``.

        Returns:
            Array of shape ``self.shape`` (spatial axes as stored in the input file).
        """
        xyz = np.transpose(display, (2, 1, 0))  # (cols, rows, slices)
        if self.ornt is None:
            out = xyz
        else:
            from nibabel.orientations import apply_orientation, ornt_transform  # lazy: io-level helper

            # ornt takes stored -> display, so display -> stored is identity -> ornt.
            inverse = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), self.ornt)
            out = apply_orientation(xyz, inverse)
        if out.shape != tuple(self.shape):
            out = out.reshape(self.shape)
        return out


@dataclass(eq=False)
class Volume:
    """An ordered sequence of 2D slices with its geometry. A 2D image is a one-slice volume.

    Attributes:
        array: voxel values, shape ``(slices, rows, cols)``, display orientation (module docstring).
            Integer or float; CT in Hounsfield units after rescale. RGB inputs are converted to grey.
        affine: float64 ``(4, 4)`` from ``(col, row, slice, 1)`` to RAS+ millimetres.
        name: case name (file stem), used to name outputs.
        source_format: ``"nifti" | "dicom" | "image" | "numpy" | "synthetic"``.
        modality: ``"CT" | "MR" | "XR" | "OT"``.
        window: suggested display window ``(width, level)`` or None for automatic.
        source: how the input was stored (for writing outputs on the input's grid), or None.
        label_names: for a label map (a reference), ``{label value: name}`` when the file or a
            file beside it names its labels (see :mod:`promptonce.io.labelnames`); empty otherwise.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = "volume"
    source_format: str = "synthetic"
    modality: Modality = "OT"
    window: tuple[float, float] | None = None
    source: SourceGeometry | None = None
    label_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DimensionError(
                f"{self.name}: a volume needs 3 axes (slices, rows, cols); got shape {arr.shape}."
            )
        if min(arr.shape) < 1:
            raise DimensionError(f"{self.name}: empty array of shape {arr.shape}.")
        self.array = arr
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise DimensionError(f"{self.name}: affine must be 4x4, got {aff.shape}.")
        if not np.all(np.isfinite(aff)):
            raise InvalidValuesError(f"{self.name}: the affine holds NaN or inf; the file's geometry is broken.")
        self.affine = aff

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, cols)``."""
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm as ``(col, row, slice)``, derived from the affine."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def slice(self, k: int) -> np.ndarray:
        """Returns slice ``k`` as a 2D array ``(rows, cols)`` (a view)."""
        if not -self.n_slices <= k < self.n_slices:
            raise PromptError(f"{self.name}: slice {k} does not exist; the volume has {self.n_slices} slices.")
        return self.array[k]

    def slice_name(self, k: int) -> str:
        """The name of slice ``k``: its source file name for image stacks, else ``{name}_{k:04d}``."""
        if self.source is not None and self.source.slice_names and k < len(self.source.slice_names):
            return self.source.slice_names[k]
        if self.n_slices == 1:
            return self.name
        return f"{self.name}_{k:04d}"


class Dataset(Sequence[Volume]):
    """An ordered list of named volumes (an X-ray set is a Dataset of one-slice volumes).

    Volumes may be given ready or as ``(name, loader)`` pairs loaded on access, so that a dataset of
    many cases does not have to sit in memory at once.
    """

    def __init__(self, items: Sequence[Volume | tuple[str, Callable[[], Volume]]] = ()) -> None:
        self._items: list[Volume | tuple[str, Callable[[], Volume]]] = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Dataset(self._items[i])
        item = self._items[i]
        if isinstance(item, Volume):
            return item
        return item[1]()

    def __iter__(self) -> Iterator[Volume]:
        for i in range(len(self)):
            yield self[i]

    @property
    def names(self) -> list[str]:
        return [it.name if isinstance(it, Volume) else it[0] for it in self._items]

    def append(self, item: Volume | tuple[str, Callable[[], Volume]]) -> None:
        self._items.append(item)

    def __repr__(self) -> str:
        return f"Dataset({len(self)} volumes: {self.names[:5]}{'...' if len(self) > 5 else ''})"


@dataclass
class SliceResult:
    """The engine's output for one slice of one volume.

    Attributes:
        volume_index: index of the volume in the dataset.
        slice_index: index of the slice in the volume.
        labels: uint8 label map ``(rows, cols)``; 0 = background, else the object's ``object_id``.
        scores: model confidence per object id (predicted IoU or similar, 0..1).
        flags: human-readable warnings for this slice (e.g. ``"area jump 2.4x"``), empty when fine.
        prompted: True when this slice got the user's own prompt (not a propagated one).
        volume_name: name of the volume.
        n_slices: number of slices in the volume (for progress and writers).
        confidence: the engine's quality estimate for this slice, 0..1 (higher is better; see
            :mod:`promptonce.engine.quality`); None when not estimated (e.g. an empty slice).
    """

    volume_index: int
    slice_index: int
    labels: np.ndarray
    scores: dict[int, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    prompted: bool = False
    volume_name: str = ""
    n_slices: int = 1
    confidence: float | None = None


def unit_name(subject: Volume | Dataset | int | Sequence[int], n: int = 2) -> str:
    """What one "slice" of ``subject`` is called on screen: ``"image(s)"`` for 2D images, else ``"slice(s)"``.

    An X-ray set is a dataset of one-slice volumes, so its items are images, not slices: "Done: 8
    images", not "8 slice(s)".

    Args:
        subject: a :class:`Volume`, a :class:`Dataset` (only its ready volumes are looked at; lazily
            loaded items count as volumes), a volume's slice count, or the slice count of every case.
        n: how many; 1 gives the singular.

    Returns:
        ``"image"``, ``"images"``, ``"slice"`` or ``"slices"``.
    """
    if isinstance(subject, Volume):
        images = subject.n_slices == 1 or subject.modality == "XR"
    elif isinstance(subject, Dataset):
        ready = [it for it in subject._items if isinstance(it, Volume)]  # noqa: SLF001 - same module
        images = len(subject) > 0 and len(ready) == len(subject) and all(v.n_slices == 1 for v in ready)
    elif isinstance(subject, (int, np.integer)):
        images = int(subject) == 1
    else:
        counts = [int(c) for c in subject]
        images = bool(counts) and all(c == 1 for c in counts)
    word = "image" if images else "slice"
    return word if int(n) == 1 else word + "s"

