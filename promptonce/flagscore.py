"""How well a run's flags and confidence point at its failures: recall, precision, review order.

A run tells the user where it may have failed (flags such as "leaked beyond the prior", a confidence
per slice and per case). This module scores those warnings against the reference Dice, as the
evaluator sees it:

* **recall**: of the items (cases or slices) with Dice below ``fail_below`` (0.85), the share that
  carries at least one flag;
* **precision**: of the flagged items, the share whose Dice is really below ``bad_below`` (0.90).

The two thresholds differ on purpose: a flag on a 0.87 slice is not a false alarm (it is worth a
look), but a 0.87 slice is not a failure that must be caught either. Items whose Dice is NaN (no
object in the reference nor in the prediction) are not scored.

Worked example (hand-checkable): Dice ``[0.5, 0.8, 0.88, 0.95]`` with flags ``[yes, no, yes, yes]``:
failures (< 0.85) are items 0 and 1, one of them flagged -> recall 1/2; flagged items are 0, 2, 3, of
which 0 and 2 are below 0.90 -> precision 2/3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError

__all__ = ["BAD_BELOW", "FAIL_BELOW", "FlagScore", "confidence_auc", "flag_score", "review_order"]

FAIL_BELOW = 0.85
"""Dice below this is a failure the flags should catch (recall)."""
BAD_BELOW = 0.90
"""Dice below this makes a flag deserved (precision)."""


@dataclass(frozen=True)
class FlagScore:
    """Counts behind flag recall and precision; add two to pool runs.

    Attributes:
        scored: items with a finite Dice.
        failures: items with Dice < ``fail_below``.
        failures_flagged: failures that carry a flag.
        flagged: items that carry a flag.
        flagged_bad: flagged items with Dice < ``bad_below``.
        fail_below: the failure threshold used.
        bad_below: the "deserved flag" threshold used.
    """

    scored: int = 0
    failures: int = 0
    failures_flagged: int = 0
    flagged: int = 0
    flagged_bad: int = 0
    fail_below: float = FAIL_BELOW
    bad_below: float = BAD_BELOW

    @property
    def recall(self) -> float | None:
        """Share of failures flagged; None when there is no failure."""
        return self.failures_flagged / self.failures if self.failures else None

    @property
    def precision(self) -> float | None:
        """Share of flagged items that are really below ``bad_below``; None when nothing is flagged."""
        return self.flagged_bad / self.flagged if self.flagged else None

    def __add__(self, other: FlagScore) -> FlagScore:
        if (self.fail_below, self.bad_below) != (other.fail_below, other.bad_below):
            raise InputError("Flag scores made with different Dice thresholds cannot be pooled.")
        return FlagScore(
            self.scored + other.scored, self.failures + other.failures,
            self.failures_flagged + other.failures_flagged, self.flagged + other.flagged,
            self.flagged_bad + other.flagged_bad, self.fail_below, self.bad_below,
        )

    def as_dict(self) -> dict[str, Any]:
        """The counts plus ``recall`` and ``precision`` (rounded to 4 places; None when undefined)."""
        d: dict[str, Any] = asdict(self)
        d["recall"] = None if self.recall is None else round(self.recall, 4)
        d["precision"] = None if self.precision is None else round(self.precision, 4)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlagScore:
        """Inverse of :meth:`as_dict` (ignores the derived ratios)."""
        return cls(**{k: d[k] for k in ("scored", "failures", "failures_flagged", "flagged", "flagged_bad",
                                        "fail_below", "bad_below") if k in d})


def flag_score(
    dice: Sequence[float],
    flagged: Sequence[bool],
    *,
    fail_below: float = FAIL_BELOW,
    bad_below: float = BAD_BELOW,
) -> FlagScore:
    """Scores flags against Dice (module docstring).

    Args:
        dice: Dice per item (case or slice), 0..1; NaN/None items are skipped.
        flagged: whether each item carries at least one flag (same length).
        fail_below: failure threshold for recall.
        bad_below: threshold for precision.

    Raises:
        InputError: lengths differ.
    """
    if len(dice) != len(flagged):
        raise InputError(f"{len(dice)} Dice values but {len(flagged)} flag markers; give one of each per item.")
    scored = failures = failures_flagged = n_flagged = flagged_bad = 0
    for d, f in zip(dice, flagged):
        if d is None or not math.isfinite(float(d)):
            continue
        d, f = float(d), bool(f)
        scored += 1
        if d < fail_below:
            failures += 1
            failures_flagged += f
        if f:
            n_flagged += 1
            flagged_bad += d < bad_below
    return FlagScore(scored, failures, failures_flagged, n_flagged, flagged_bad, fail_below, bad_below)


def confidence_auc(
    dice: Sequence[float], confidence: Sequence[float | None], *, fail_below: float = FAIL_BELOW
) -> float | None:
    """How well a confidence ranks failures first: P(a failure's confidence < a good item's), ties 1/2.

    1.0 = every failure is less confident than every good item; 0.5 = no better than chance. Items
    whose Dice or confidence is missing are skipped. None when there are no failures or no good items.
    """
    fail, good = [], []
    for d, c in zip(dice, confidence):
        if d is None or c is None or not math.isfinite(float(d)) or not math.isfinite(float(c)):
            continue
        (fail if float(d) < fail_below else good).append(float(c))
    if not fail or not good:
        return None
    wins = sum((cf < cg) + 0.5 * (cf == cg) for cf in fail for cg in good)
    return round(wins / (len(fail) * len(good)), 4)


def review_order(cases: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``cases`` in the order a user should review them.

    Lowest ``confidence`` first when any case has one (cases without one after those with one,
    flagged before unflagged among them); otherwise flagged cases first (more flags first). Ties keep
    the given order.

    Args:
        cases: dicts with optional ``confidence`` (float) and ``flags`` (list).
    """
    has_conf = any(c.get("confidence") is not None for c in cases)

    def key(i: int) -> tuple:
        c = cases[i]
        n_flags = len(c.get("flags") or [])
        conf = c.get("confidence")
        if has_conf:
            return (conf is None, conf if conf is not None else 0.0, -n_flags, i)
        return (n_flags == 0, -n_flags, i)

    return sorted(range(len(cases)), key=key)
