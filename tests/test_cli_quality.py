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
