"""``promptonce segment`` writes the run's quality estimate (quality.json) and puts it in metrics."""

from __future__ import annotations

import json

import numpy as np

from promptonce.cli import main
from promptonce.io.readers import load

from test_cli import ball_nifti


def test_segment_writes_quality_json_and_confidence_in_metrics(tmp_path):
    src = tmp_path / "ball.nii.gz"
    ball_nifti(src)
    out = tmp_path / "out"
    vol = load(src)
    k = vol.n_slices // 2
    ys, xs = np.nonzero(vol.array[k] > 100)
    box = f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"
    code = main(["segment", str(src), "--box", box, "--out", str(out), "--model", "fake", "--quiet",
                 "--reference", str(tmp_path / "ball_ref.nii.gz")])
    assert code == 0
    q = json.loads((out / "quality.json").read_text())
    assert q["review_first"] == ["ball"]
    case = q["cases"][0]
    assert case["slices"] == vol.n_slices and 0.0 <= case["confidence"] <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cases"][0]["confidence"] == case["confidence"]
    assert "flags" in (out / "metrics.csv").read_text().splitlines()[0]


def test_a_run_of_slices_with_one_flag_is_one_line():
    from promptonce.engine.quality import QualityReport, flag_lines
    from promptonce.types import SliceResult

    assert flag_lines({4: ["a"], 5: ["a"], 6: ["a", "b"], 9: ["a"], 10: []}) == [
        "slices 5-7: a", "slice 7: b", "slice 10: a"]  # indices from 0, numbered from 1 as in the app
    assert flag_lines({}) == [] and flag_lines({3: ["x", "x"]}) == ["slice 4: x"]
    q = QualityReport()
    lab = np.zeros((4, 4), np.uint8)
    for k in range(8):
        flags = ["lost"] if k == 2 else ["may continue here"] if 3 <= k <= 6 else []
        q.add(SliceResult(0, k, lab, {}, flags, k == 0, "vol", 8, confidence=0.3 if flags else 0.9))
    case = q.cases()[0]
    assert case["flags"] == ["slice 3: lost", "slices 4-7: may continue here"]
    assert case["slices_to_review"] == [2, 3, 4, 5, 6]
