"""Flag recall/precision, confidence AUC and review order: hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptonce.errors import InputError
from promptonce.engine.quality import case_confidence
from promptonce.flagscore import FlagScore, confidence_auc, flag_score, review_order


def test_module_docstring_example():
    s = flag_score([0.5, 0.8, 0.88, 0.95], [True, False, True, True])
    assert (s.scored, s.failures, s.failures_flagged, s.flagged, s.flagged_bad) == (4, 2, 1, 3, 2)
    assert s.recall == pytest.approx(1 / 2) and s.precision == pytest.approx(2 / 3)


def test_thresholds_are_strict_and_nan_is_skipped():
    # 0.85 is not a failure; 0.90 is not "really below 0.90"; NaN/None items are not scored
    s = flag_score([0.85, 0.90, math.nan, None, 0.2], [True, True, True, True, False])
    assert s.scored == 3 and s.failures == 1 and s.failures_flagged == 0
    assert s.flagged == 2 and s.flagged_bad == 1
    assert s.recall == 0.0 and s.precision == 0.5


def test_undefined_ratios_are_none_not_zero():
    s = flag_score([0.95, 0.97], [False, False])
    assert s.recall is None and s.precision is None
    d = s.as_dict()
    assert d["recall"] is None and d["precision"] is None and d["scored"] == 2


def test_pooling_adds_counts_not_ratios():
    a = flag_score([0.1], [True])  # recall 1, precision 1
    b = flag_score([0.1, 0.2, 0.3, 0.95], [False, False, False, True])  # recall 0, precision 0
    p = a + b
    assert p.recall == pytest.approx(1 / 4) and p.precision == pytest.approx(1 / 2)
    assert FlagScore.from_dict(p.as_dict()) == p
    with pytest.raises(InputError):
        a + flag_score([0.1], [True], fail_below=0.5)


def test_lengths_must_match():
    with pytest.raises(InputError, match="one of each"):
        flag_score([0.5, 0.6], [True])


def test_confidence_auc():
    # failures (0.2, 0.5) against good (0.7, 0.9): every failure less confident -> 1.0
    assert confidence_auc([0.9, 0.1, 0.5, 0.95], [0.9, 0.2, 0.5, 0.7]) == 1.0
    # pairs (failure, good): (0.2, 0.9) (0.2, 0.7) (0.8, 0.9) win, (0.8, 0.7) loses -> 3 / 4
    assert confidence_auc([0.9, 0.1, 0.5, 0.95], [0.9, 0.2, 0.8, 0.7]) == 0.75
    # a tie counts a half
    assert confidence_auc([0.1, 0.95], [0.5, 0.5]) == 0.5
    assert confidence_auc([0.9, 0.95], [0.1, 0.2]) is None  # no failure
    assert confidence_auc([0.1, 0.95], [None, 0.2]) is None  # the only failure has no confidence


def test_case_confidence_is_the_median_pulled_down_by_the_worst_slices():
    vals = [0.9] * 9 + [0.1]
    assert case_confidence(vals) == pytest.approx(0.5 * 0.9 + 0.5 * float(np.percentile(vals, 10)))
    assert case_confidence([0.2, None, 0.6]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.24)
    assert case_confidence([None, None]) is None


def test_review_order_lowest_confidence_first_then_flagged_first():
    cases = [{"confidence": 0.9, "flags": []}, {"confidence": 0.2, "flags": ["x"]},
             {"confidence": 0.5, "flags": []}, {"confidence": None, "flags": ["y"]}]
    assert review_order(cases) == [1, 2, 0, 3]
    no_conf = [{"flags": []}, {"flags": ["a"]}, {"flags": []}, {"flags": ["a", "b"]}]
    assert review_order(no_conf) == [3, 1, 0, 2]
