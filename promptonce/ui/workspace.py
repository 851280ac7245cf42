"""One browser session's :class:`~promptonce.annotation.AnnotationSession`, with what the page adds.

A :class:`Workspace` is the library's annotation session (objects, prompts, previews, runs,
corrections, scores, exports) plus the page's needs: the browser :class:`~promptonce.ui.session.Session`
it belongs to (its folder holds the result maps, within its quota), the uploaded files, the
display scale of each case and a cache of display frames. Reads are limited to the app's voxel
budget, and a budget error is reworded for a web user (who cannot pass a command-line option).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..annotation import AnnotationSession, CaseInfo, Reference
from ..errors import InputError, TooLargeError
from ..types import Dataset, Volume
from .session import Session
from .zerogpu import segment as zerogpu_segment

__all__ = [
    "APP_MAX_VOXELS",
    "ENGINE_CACHE_SLICES",
    "DISPLAY_MIN",
    "DISPLAY_MAX",
    "VolumeMeta",
    "Workspace",
    "workspace",
    "app_max_voxels",
    "server_budget",
    "display_scale",
]

log = logging.getLogger(__name__)

#: Voxels one image may hold in the app unless ``PROMPTONCE_MAX_VOXELS`` says otherwise: 512 x 512 x 1000
#: (about 1 GB as float32); the library's own default is twice that.
APP_MAX_VOXELS = 512 * 512 * 1000
#: Slice embeddings an app engine keeps (per session; about 4 MB each).
ENGINE_CACHE_SLICES = 12
#: Display size targets: images smaller than MIN are enlarged (integer factor), larger than MAX shrunk.
DISPLAY_MIN = 512
DISPLAY_MAX = 1024

#: What the page knows of a case (the library's CaseInfo).
VolumeMeta = CaseInfo

_BUDGET_RE = re.compile(r"^(?P<what>.*): (?P<shape>\([\d, ]*\)) = (?P<n>[\d,]+) voxels exceeds the budget", re.S)


def app_max_voxels() -> int:
    """The app's voxel budget per image: ``PROMPTONCE_MAX_VOXELS`` when it is a positive number, else
    :data:`APP_MAX_VOXELS`."""
    raw = os.environ.get("PROMPTONCE_MAX_VOXELS", "").strip()
    if raw:
        try:
            value = int(float(raw))
        except (ValueError, OverflowError):
            value = 0
        if value > 0:
            return value
        log.warning("ignoring PROMPTONCE_MAX_VOXELS=%r (not a positive number)", raw)
    return APP_MAX_VOXELS


@contextmanager
def server_budget(max_voxels: int) -> Iterator[None]:
    """Rewrites a reader's voxel-budget error for the page (the reader's own advice names a
    command-line option that a web user cannot set)."""
    try:
        yield
    except TooLargeError as exc:
        m = _BUDGET_RE.match(str(exc))
        if m is None:
            raise
        depth = max(1, max_voxels // (512 * 512))
        raise TooLargeError(
            f"{m['what']}: {m['shape']} = {m['n']} voxels, more than this server reads ({max_voxels:,} voxels "
            f"per image, e.g. 512 x 512 x {depth:,}). Crop it to the region you need or downsample it, then "
            "upload it again; or run PromptOnce on your own computer, where the limit can be raised."
        ) from None


def display_scale(info: CaseInfo) -> tuple[float, float]:
    """``(sx, sy)``: display pixels per image pixel across and down.

    Small images are enlarged (integer factor) to :data:`DISPLAY_MIN`, large ones shrunk to
    :data:`DISPLAY_MAX`, and anisotropic pixels stretched so that the image keeps its physical aspect.
    """
    _, rows, cols = info.shape
    cs, rs, _ = info.spacing
    ratio = rs / cs if cs > 0 and rs > 0 and math.isfinite(rs / cs) else 1.0
    ratio = min(max(ratio, 0.2), 5.0)
    w, h = cols, rows * ratio
    big = max(w, h)
    if big < DISPLAY_MIN:
        s = float(math.ceil(DISPLAY_MIN / big))
    elif big > DISPLAY_MAX:
        s = DISPLAY_MAX / big
    else:
        s = 1.0
    return s, s * ratio


class Workspace(AnnotationSession):
    """One browser session's annotation session.

    Args:
        session: the owning browser session (its folder holds the result maps, within its quota).
        dataset: the loaded images.
        metas: the cases' :class:`CaseInfo`.
        references: per case, the path of its reference mask or None.
        input_paths: the uploaded files (inside the session folder).
        max_voxels: the voxel budget of every image and reference read for this workspace.
        first: the first case, already read (kept loaded).
    """

    def __init__(
        self,
        session: Session,
        dataset: Dataset,
        metas: list[CaseInfo],
        references: list[Reference],
        input_paths: list[Path],
        max_voxels: int = APP_MAX_VOXELS,
        first: Volume | None = None,
    ) -> None:
        super().__init__(
            dataset,
            references,
            workdir=session.path("results"),
            quota=lambda n: session.check_quota(n, max_age_s=5.0),
            max_voxels=max_voxels,
            engine_cache=ENGINE_CACHE_SLICES,
            cases=metas,
            segmenter=zerogpu_segment,  # the engine's segment; inside spaces.GPU on ZeroGPU
        )
        self.session = session
        self.input_paths = input_paths
        self._frames: dict[tuple[int, Any], Any] = {}
        self.view_counter = 0
        #: what :func:`~promptonce.ui.uploads.load_time_point` reloads from: the files read (zips
        #: unpacked), the reference files, the loading mode; and the time points of a 4D input
        self.sources: list[Path] = list(input_paths)
        self.reference_files: list[Path] = []
        self.images_as = "auto"
        self.time_points: Any = None  # promptonce.io.TimePoints of a 4D input, else None
        self.time_index: int | None = None
        if first is not None:
            self._volumes[0] = first

    # the page's names for the library's
    @property
    def metas(self) -> list[CaseInfo]:
        return self.cases

    @property
    def n_volumes(self) -> int:
        return self.n_cases

    def read_case(self, case: int) -> Volume:
        with server_budget(self.max_voxels):
            return super().read_case(case)

    def read_reference(self, source: str | Path, image: Volume) -> Volume:
        with server_budget(self.max_voxels):
            return super().read_reference(source, image)

    def volume(self, case: int) -> Volume:
        vol = super().volume(case)
        # display frames go with the volumes they were made from
        self._frames = {key: fm for key, fm in self._frames.items() if key[0] in self._volumes}
        return vol

    def frames(self, v: int, window: Any) -> Any:
        """The :class:`~promptonce.preprocess.FrameMaker` of case ``v`` for ``window`` (cached)."""
        from ..preprocess import FrameMaker

        key = (v, tuple(float(x) for x in window) if isinstance(window, list | tuple) else window)
        fm = self._frames.get(key)
        if fm is None:
            fm = FrameMaker(self.volume(v), window)
            if len(self._frames) > 8:
                self._frames.clear()
            self._frames[key] = fm
        return fm

    def display_scale(self, v: int) -> tuple[float, float]:
        """``(sx, sy)``: display pixels per image pixel of case ``v`` (see :func:`display_scale`)."""
        return display_scale(self.cases[v])


def workspace(session: Session) -> Workspace:
    """The session's workspace; raises a readable error when nothing is loaded yet."""
    ws = session.workspace
    if ws is None:
        raise InputError("Load images first: upload files or pick an example.")
    return ws
