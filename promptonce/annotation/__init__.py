"""An interactive annotation session: objects, prompts, undo, preview, run, correct, score, export.

:class:`AnnotationSession` is the library object any front end drives (the web app in
:mod:`promptonce.ui`, a notebook, a napari or 3D Slicer plugin, a REST server), in the manner of
SAM 2's video predictor and nnInteractive's ``InferenceSession``::

    import promptonce as po

    s = po.AnnotationSession(["ct.nii.gz"], references=["ct_mask.nii.gz"], model="auto")
    s.add_point(0, 40, x=120, y=88)              # image pixels of case 0, slice 40 -> Preview (mask at once)
    s.add_object("spleen"); s.add_box(0, 40, po.Box(60, 70, 110, 130))
    for p in s.run(scope="volume"):              # RunProgress reports; pass cancel=threading.Event()
        print(p.done, "/", p.total)
    s.add_point(0, 55, x=118, y=90, positive=False)   # a correction on a result slice ...
    list(s.correct())                            # ... re-runs only the range it affects
    s.score()["dice_mean"], s.export("out/")

State is typed (dataclasses), in image pixels only: no display coordinates, no GUI types, no
session folder. Results live in memory, or as memory-mapped ``.npy`` files in ``workdir`` when one
is given; ``quota(n_bytes)`` is called before such a file is created (raise to refuse it).

Coordinates: points are ``(x, y)`` = (column, row) image pixels of the slice, boxes XYXY inclusive
pixels, as in SAM; ``case`` indexes the dataset, ``slice_index`` the case's slices (0-based).

Modules: :mod:`.state` (the typed state and the rules: correction range, slices per scope),
:mod:`.session` (the session: cases, objects, prompts, undo, previews, runs, corrections) and
:mod:`.results` (scoring through :class:`~promptonce.metrics.MetricAccumulator`, export).
"""

from __future__ import annotations

from .results import export, score
from .session import AnnotationSession
from .state import (
    MODES,
    SCOPES,
    STRATEGIES,
    Action,
    CaseInfo,
    Draft,
    ObjectInfo,
    Preview,
    Reference,
    RunInfo,
    RunProgress,
    correction_range,
    slices_in_scope,
)

__all__ = [
    "SCOPES",
    "STRATEGIES",
    "MODES",
    "ObjectInfo",
    "Draft",
    "CaseInfo",
    "Action",
    "Preview",
    "Reference",
    "RunProgress",
    "RunInfo",
    "AnnotationSession",
    "correction_range",
    "slices_in_scope",
    "score",
    "export",
]
