"""A deterministic FAKE backend for plumbing tests. It is NOT a model and learns nothing.

It imports neither torch nor any model package, so tests of the engine, the CLI and the UI can run
anywhere in milliseconds. Its "segmentation" is a simple intensity rule that is good enough to follow
a bright or dark object of roughly uniform intensity through synthetic slices:

* the *search region* is the box (clipped to the frame), or, for clicks only, the union of discs of
  radius ``radius`` around the positive clicks;
* the *reference intensity* is the median grey value of the seed pixels: the positive clicks (a 3x3
  patch each) when given, else the central half of the box;
* the mask is the search-region pixels within ``tolerance`` grey levels of the reference, restricted
  to the connected components (8-connectivity) that touch a seed pixel; components holding a
  negative click are removed.

With ``multimask`` it returns three candidates made with ``tolerance / 2``, ``tolerance`` and
``2 * tolerance``, ordered by a deterministic score: ``1 - mean(|grey - ref|) / (2 * tolerance)``
over the mask (0 for an empty mask), so more uniform masks score higher.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError, PromptError
from . import _torchutil as tu
from .base import BackendInfo, Embedding, Prediction

__all__ = ["FakeBackend", "INFO"]

NAME = "fake"
INFO = BackendInfo(
    name=NAME,
    title="Fake (plumbing tests; not a model)",
    points=True,
    boxes=True,
    input_size=0,
    medical=False,
    sequence=False,
    device="cpu",
)


class FakeBackend:
    """The fake backend (see the module docstring). Thread-safe: it keeps no per-call state.

    Args:
        tolerance: grey levels (0..255) around the reference intensity that count as the object.
        radius: disc radius in pixels around each click (None: a quarter of the frame's short side).

    Attributes:
        encoder_calls: number of :meth:`embed` calls (frames "encoded"), for tests of caching.
    """

    def __init__(self, tolerance: float = 40.0, radius: float | None = None, device: str | None = None) -> None:
        if not tolerance > 0:
            raise InputError(f"tolerance must be > 0 grey levels, got {tolerance}.")
        self.tolerance = float(tolerance)
        self.radius = radius
        self.info = INFO
        self.encoder_calls = 0

    def embed(self, frame: np.ndarray) -> Embedding:
        """Stores the frame's grey values.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB (grey ``(H, W)`` accepted).

        Returns:
            Embedding with ``data`` = float32 ``(H, W)`` grey image (channel mean).
        """
        f = tu.check_frame(frame)
        self.encoder_calls += 1
        grey = f.astype(np.float32).mean(axis=2)
        return Embedding(data=grey, frame_size=(int(f.shape[0]), int(f.shape[1])), backend=NAME)

    def embed_many(self, frames: Sequence[np.ndarray]) -> list[Embedding]:
        """:meth:`embed` for each frame, in order."""
        return [self.embed(f) for f in frames]

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Applies the intensity rule (module docstring). ``mask_logits`` is ignored.

        Returns:
            Prediction with ``masks`` bool ``(K, H, W)`` (K = 3 with ``multimask``, else 1), ``scores``
            float32 ``(K,)`` in [0, 1], best first, and ``logits`` None.

        Raises:
            PromptError: no positive click and no box.
        """
        tu.check_embedding(embedding, NAME)
        grey: np.ndarray = embedding.data
        h, w = embedding.frame_size
        pts = tu.check_points(points, point_labels)
        b = tu.clip_box(box, (h, w))
        pos = np.zeros((0, 2), np.float32)
        neg = np.zeros((0, 2), np.float32)
        if pts is not None:
            pos, neg = pts[0][pts[1] == 1], pts[0][pts[1] == 0]
        if b is None and len(pos) == 0:
            raise PromptError("The fake backend needs a box or a positive click; none was given.")
        yy, xx = np.mgrid[0:h, 0:w]
        seed = np.zeros((h, w), bool)
        if b is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            region = np.zeros((h, w), bool)
            region[y0 : y1 + 1, x0 : x1 + 1] = True
        else:
            r = self.radius if self.radius is not None else max(2.0, min(h, w) / 4.0)
            region = np.zeros((h, w), bool)
            for x, y in pos:
                region |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        if len(pos):
            for x, y in pos:
                cx = min(max(int(round(x)), 0), w - 1)
                cy = min(max(int(round(y)), 0), h - 1)
                seed[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = True
            seed &= region
        else:
            bw, bh = x1 - x0 + 1, y1 - y0 + 1
            seed[y0 + bh // 4 : y1 + 1 - bh // 4, x0 + bw // 4 : x1 + 1 - bw // 4] = True
        if not seed.any():
            seed = region.copy()
        ref = float(np.median(grey[seed]))
        tols = (self.tolerance, self.tolerance / 2, self.tolerance * 2) if multimask else (self.tolerance,)
        masks, scores = [], []
        for tol in tols:
            m = self._component_mask(grey, region, seed, neg, ref, tol)
            masks.append(m)
            scores.append(self._score(grey, m, ref, self.tolerance))
        order = np.argsort(-np.asarray(scores), kind="stable")
        return Prediction(
            masks=np.stack(masks)[order],
            scores=np.asarray(scores, np.float32)[order],
            logits=None,
        )

    @staticmethod
    def _component_mask(
        grey: np.ndarray, region: np.ndarray, seed: np.ndarray, neg: np.ndarray, ref: float, tol: float
    ) -> np.ndarray:
        from scipy import ndimage  # scipy is a core dependency; imported here to keep import light

        cand = region & (np.abs(grey - ref) <= tol)
        lab, n = ndimage.label(cand, structure=np.ones((3, 3), bool))
        if n == 0:
            return cand
        keep = np.zeros(n + 1, bool)
        keep[np.unique(lab[seed & cand])] = True
        h, w = grey.shape
        for x, y in neg:
            cx = min(max(int(round(x)), 0), w - 1)
            cy = min(max(int(round(y)), 0), h - 1)
            keep[lab[cy, cx]] = False
        keep[0] = False
        return keep[lab]

    @staticmethod
    def _score(grey: np.ndarray, mask: np.ndarray, ref: float, tol: float) -> float:
        if not mask.any():
            return 0.0
        dev = float(np.mean(np.abs(grey[mask] - ref)))
        return float(np.clip(1.0 - dev / (2.0 * tol), 0.0, 1.0))
