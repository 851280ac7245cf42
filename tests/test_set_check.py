"""The set check: cases whose objects are out of proportion with the rest of the run are flagged, in the
library function, the evaluator (dataset scope), ``quality.json`` and the annotation session."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate_seeds import xray_data

import promptonce as po
import promptonce.evaluate as ev
from promptonce.annotation import AnnotationSession
from promptonce.engine.quality import QualityReport
from promptonce.engine.set_check import (
    EVIDENCE_MIN_CASES,
    EVIDENCE_REFERENCE,
    EVIDENCE_SCALE_FLOOR,
    PROPORTION_FACTOR,
    evidence_scales,
    object_areas,
    proportion_flags,
)
from promptonce.evaluate import EvalConfig, add_set_flags, evaluate
from promptonce.types import SliceResult

NAMES = {1: "right lung", 2: "left lung"}


def pair_areas(n: int = 12, odd: dict[int, float] | None = None) -> dict[int, dict[int, int]]:
    """``n`` cases whose right lung is about 1.2x the left (+-4%), ``odd`` case -> its own ratio."""
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        ratio = (odd or {}).get(i, 1.2 * (1 + rng.uniform(-0.04, 0.04)))
        left = rng.integers(9000, 12000).item()
        out[i] = {1: round(left * ratio), 2: left}
    return out


def test_a_case_out_of_proportion_is_flagged_with_numbers_a_user_can_read():
    flags = proportion_flags(pair_areas(odd={3: 2.0, 7: 0.7}), NAMES)
    assert sorted(flags) == [3, 7]
    text = flags[3][0]
    assert text.startswith("right lung is 2.00x left lung here, 1.2") and "median of 12 cases" in text
    assert flags[7][0].startswith("right lung is 0.70x left lung here")


def test_within_the_factor_no_flag():
    just_inside = 1.2 * PROPORTION_FACTOR * 0.97
    assert proportion_flags(pair_areas(odd={3: just_inside}), NAMES) == {}
    assert list(proportion_flags(pair_areas(odd={3: 1.2 * PROPORTION_FACTOR * 1.05}), NAMES)) == [3]


def test_too_few_cases_or_one_object_gives_no_flag():
    few = pair_areas(n=12, odd={3: 3.0})
    assert proportion_flags({k: few[k] for k in range(7)} | {3: few[3]}, NAMES) == {}  # 7 cases with both objects
    assert proportion_flags({i: {1: 100 + i} for i in range(20)}) == {}
    # a case without one of the objects takes no part (losing an object is other checks' business)
    areas = pair_areas(odd={3: 3.0}) | {12: {1: 5000, 2: 0}, 13: {1: 5000}}
    assert list(proportion_flags(areas, NAMES)) == [3]


def test_flags_do_not_depend_on_the_order_of_the_cases():
    areas = pair_areas(n=15, odd={2: 1.9, 11: 0.8})
    keys = list(areas)
    rng = np.random.default_rng(1)
    for _ in range(3):
        rng.shuffle(keys)
        assert proportion_flags({k: areas[k] for k in keys}, NAMES) == proportion_flags(areas, NAMES)


def test_three_objects_one_flag_for_the_pair_furthest_off():
    areas = {i: {1: 1000, 2: 2000, 3: 500} for i in range(10)}
    areas[4] = {1: 1000, 2: 2000, 3: 1500}  # object 3 three times too large: off against 1 and against 2
    flags = proportion_flags(areas)
    assert list(flags) == [4] and len(flags[4]) == 1 and "object 3" in flags[4][0]
    with pytest.raises(ValueError, match="above 1"):
        proportion_flags(areas, factor=1.0)


def test_object_areas_counts_each_label():
    lab = np.zeros((2, 5, 5), np.uint8)
    lab[0, :2, :2] = 1
    lab[1, 3:, :] = 2
    assert object_areas(lab) == {1: 4, 2: 10}
    assert object_areas(np.zeros((3, 3), np.uint8)) == {}


def two_lungs(shape=(40, 50), right_rows=20, left_rows=20) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[5:5 + right_rows, 5:20] = 1
    lab[5:5 + left_rows, 28:41] = 2
    return lab


def test_quality_json_flags_the_case_out_of_proportion():
    q = QualityReport(NAMES)
    for i in range(10):
        lab = two_lungs(left_rows=8 if i == 6 else 20)
        q.add(SliceResult(volume_index=i, slice_index=0, labels=lab, volume_name=f"cxr{i}", n_slices=1, confidence=0.9))
    cases = {c["case"]: c for c in q.cases()}
    assert [n for n, c in cases.items() if c["flags"]] == ["cxr6"]
    assert cases["cxr6"]["flags"][0].startswith("right lung is 2.88x left lung here, 1.15x across the set")
    assert q.to_dict()["flagged_cases"] == 1


def test_evaluate_at_dataset_scope_flags_a_case_whose_lung_was_cut_short(monkeypatch):
    images, refs = xray_data(10)
    real = ev.segment

    def cut(dataset, prompt, **kw):  # case 4: the second lung loses its lower two thirds
        for res in real(dataset, prompt, **kw):
            if res.volume_index == 4:
                rows = np.nonzero(res.labels == 2)[0]
                res.labels = np.where((res.labels == 2) & (np.arange(res.labels.shape[0])[:, None] > rows.min() + 8),
                                      0, res.labels).astype(np.uint8)
            yield res

    monkeypatch.setattr(ev, "segment", cut)
    res = evaluate(images, refs, None, EvalConfig(model="fake", scope="dataset", seed_case=0))
    flagged = {c["index"]: c["flags"] for c in res["cases"] if any("across the set" in f for f in c["flags"])}
    assert list(flagged) == [4], flagged
    assert flagged[4][-1].startswith("object 1 is ")
    case4 = next(c for c in res["cases"] if c["index"] == 4)
    assert case4["dice"] < 0.85 and res["flag_quality"]["case"]["failures_flagged"] >= 1


def test_add_set_flags_only_reads_rows_with_areas():
    rows = [{"flags": [], "_areas": {1: 1200, 2: 1000}} for _ in range(9)] + [{"flags": ["x"], "_areas": {1: 3000, 2: 1000}},
                                                                             {"flags": []}]
    add_set_flags(rows)
    assert [len(r["flags"]) for r in rows] == [0] * 9 + [2, 0]


def test_the_session_flags_an_out_of_proportion_case_after_a_dataset_run():
    n = 10
    vols = [po.Volume(np.zeros((3, 40, 50), np.float32), name=f"case{i}", modality="CT") for i in range(n)]

    def planted(dataset, prompt, **kw):
        for i in range(n):
            for k in range(3):
                lab = two_lungs(left_rows=6 if (i == 2 and k == 1) else 20) if k else np.zeros((40, 50), np.uint8)
                yield SliceResult(volume_index=i, slice_index=k, labels=lab, volume_name=f"case{i}", n_slices=3,
                                  confidence=0.9)

    s = AnnotationSession(po.Dataset(vols), model="fake", segmenter=planted)
    s.add_point(0, 1, 10, 10)
    list(s.run("dataset", case=0))
    set_flags = [(v, k) for v, k, text in s.flagged() if "across the set" in text]
    # case 2: right/left ratio 1.78 over its two slices (the set's 1.15); flagged on its fullest slice
    assert set_flags == [(2, 2)]
    list(s.run("volume", case=0))  # a volume run checks no set
    assert not any("across the set" in text for v, _, text in s.flagged() if v == 0)


def test_a_distributed_run_writes_the_set_check_from_its_records(tmp_path):
    import json

    from promptonce.distributed import _case_areas, _write_quality
    from promptonce.runstore import CaseRecord

    recs = {}
    for i in range(9):
        lab = two_lungs(left_rows=7 if i == 5 else 20)
        res = SliceResult(volume_index=i, slice_index=0, labels=lab, volume_name=f"cxr{i}", n_slices=1, confidence=0.9)
        recs[i] = CaseRecord(i, f"cxr{i}", "done", slices=[[0, 0.9, []]], areas=_case_areas([res]))
    recs[9] = CaseRecord(9, "cxr9", "failed", reason="unreadable")
    assert recs[5].areas == {"1": 300, "2": 91}
    _write_quality(recs, tmp_path, NAMES)
    q = json.loads((tmp_path / "quality.json").read_text())
    assert [c["case"] for c in q["cases"] if c["flags"]] == ["cxr5"] and q["flagged_cases"] == 1
    assert CaseRecord.from_json(recs[5].to_json()).areas == recs[5].areas  # kept in the run folder


def test_a_set_with_weaker_outlines_lowers_its_weak_edge_threshold_and_only_lowers_it():
    rng = np.random.default_rng(3)
    n = 20
    typical = [{1: EVIDENCE_REFERENCE * f, 2: EVIDENCE_REFERENCE * 1.2 * f} for f in rng.uniform(0.9, 1.3, n)]
    assert evidence_scales(typical) == {1: 1.0, 2: 1.0}  # like the tuning set (or sharper): unchanged
    soft = [{o: 0.8 * v for o, v in c.items()} for c in typical]  # the same set under a softer curve
    got = evidence_scales(soft)
    want = float(np.median([c[1] for c in soft])) / EVIDENCE_REFERENCE
    assert got[1] == pytest.approx(want) and 0.8 < got[1] < 1.0
    assert got[2] == 1.0 or got[2] > got[1]  # each object against its own median
    # never below the floor; the order of the cases does not matter
    faint = [{1: 0.02 + 0.001 * i} for i in range(n)]
    assert evidence_scales(faint) == {1: EVIDENCE_SCALE_FLOOR}
    assert evidence_scales(list(reversed(soft))) == got
    # too few measured cases (None is not measured) give no scale
    few = [{1: 0.05}] * (EVIDENCE_MIN_CASES - 1) + [{1: None}] * 5
    assert evidence_scales(few) == {}
    assert evidence_scales([]) == {}
    with pytest.raises(ValueError):
        evidence_scales(soft, floor=0.0)
