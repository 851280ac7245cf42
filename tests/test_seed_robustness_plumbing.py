"""benchmarks/seed_robustness.py runs end to end and writes issue 12's JSON (plumbing, not figures).

The fast test drives it with the fake backend on a synthetic tree laid out like ``../shared/data``;
the slow one runs ``--quick`` with the real models on the real data (skips without either).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "seed_robustness.py"


def synthetic_tree(root: Path, n_xray: int = 8, n_vol: int = 3) -> None:
    """cxr_shenzhen (PNG) and mri_acdc (NIfTI, label 3 = a ball) with the real sets' folder names."""
    (root / "cxr_shenzhen" / "images").mkdir(parents=True)
    (root / "cxr_shenzhen" / "masks").mkdir()
    for i in range(n_xray):
        img = np.full((64, 72), 40, np.uint8)
        m = np.zeros_like(img)
        m[14 + i % 4 : 44, 8:30] = 255
        m[14 + i % 4 : 44, 40:64] = 255
        img[m > 0] = 200
        Image.fromarray(img).save(root / "cxr_shenzhen" / "images" / f"CHNCXR_{i + 1:04d}_0.png")
        Image.fromarray(m).save(root / "cxr_shenzhen" / "masks" / f"CHNCXR_{i + 1:04d}_0_mask.png")
    (root / "mri_acdc" / "images").mkdir(parents=True)
    (root / "mri_acdc" / "labels").mkdir()
    for i in range(n_vol):
        xx, yy, zz = np.mgrid[0:40, 0:40, 0:7]  # stored (X, Y, Z)
        ball = ((xx - 20 - i) ** 2 + (yy - 18) ** 2 + ((zz - 3) * 4) ** 2) <= 90
        lab = np.where(ball, 3, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(np.where(ball, 0.8, 0.1).astype(np.float32), np.eye(4)),
                 root / "mri_acdc" / "images" / f"patient{i + 1:03d}_frame01.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "mri_acdc" / "labels" / f"patient{i + 1:03d}_frame01.nii.gz")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_doc(doc: dict, sets: tuple[str, ...], seeds: int) -> None:
    assert set(doc["sets"]) == set(sets)
    for name in sets:
        s = doc["sets"][name]
        assert "skipped" not in s, s
        for row in s["runs"]:
            assert "error" not in row, row
            assert _finite(row["seconds"]) and _finite(row["wall_seconds"]) and 0 <= row["dice_mean"] <= 1
            assert set(row["flag_counts"]) == {"case", "slice"}
    cxr = doc["sets"]["cxr_shenzhen"]
    runs = {(r["scope"], r["protocol"]): r for r in cxr["runs"]}
    sweep = runs[("dataset", "oneclick")]
    per_seed = [p["dice_mean"] for p in sweep["per_seed"]]
    assert len(per_seed) == seeds == len(sweep["seed_cases"])
    assert sweep["dice_worst"] == pytest.approx(min(per_seed), abs=1e-4)
    f = cxr["figures"]
    assert f["worst_seed_gap_points"] == pytest.approx(100 * (f["per_image_dice"] - sweep["dice_worst"]), abs=0.01)
    assert f["click_gap_points"] == pytest.approx(100 * (per_seed[0] - runs[("dataset", "click")]["dice_mean"]),
                                                  abs=0.01)
    acdc = doc["sets"]["acdc_lv"]["figures"]
    assert acdc["volume_vs_per_slice_pct"] == pytest.approx(
        100 * acdc["one_prompt_per_volume_dice"] / acdc["per_image_dice"], abs=0.01)
    pooled = doc["flags_pooled"]
    one_prompt = [r for s in doc["sets"].values() for r in s["runs"] if r["scope"] != "image"]
    assert pooled["runs"] == len(one_prompt)
    assert pooled["case"]["failures"] == sum(r["flag_counts"]["case"]["failures"] for r in one_prompt)
    t = doc["targets"]
    assert t["all_met"] is all(v["met"] for k, v in t.items() if k != "all_met")
    assert doc["command"] and doc["versions"]["python"] and len(doc["machine"]["load_avg_start"]) == 3


def test_quick_run_with_the_fake_backend_writes_the_json(tmp_path):
    data = tmp_path / "data"
    synthetic_tree(data)
    out = tmp_path / "seed.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model", "fake", "--data", str(data),
                           "--split", "tune", "--json", str(out), "--out-root", str(tmp_path / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert json.loads(proc.stdout) == doc
    _check_doc(doc, ("cxr_shenzhen", "acdc_lv"), seeds=2)
    assert doc["sets"]["cxr_shenzhen"]["n_cases"] == 6 and doc["sets"]["acdc_lv"]["n_cases"] == 2


def test_split_and_limit_choose_the_cases(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import seed_robustness as sr
    finally:
        sys.path.remove(str(SCRIPT.parent))
    data = tmp_path / "data"
    synthetic_tree(data, n_xray=8)
    spec = dict(sr.SETS["cxr_shenzhen"], tune=3)
    names = [p.name for p in sr.case_files(data, spec, "tune", 0)]
    assert names == [f"CHNCXR_{i:04d}_0.png" for i in (1, 2, 3)]
    assert [p.name for p in sr.case_files(data, spec, "report", 2)] == ["CHNCXR_0004_0.png", "CHNCXR_0005_0.png"]
    assert len(sr.case_files(data, spec, "all", 0)) == 8
    one = dict(sr.SETS["ct_liver"])
    (data / "ct_totalseg_example").mkdir()
    (data / "ct_totalseg_example" / "image.nii.gz").write_bytes(b"")
    assert [p.name for p in sr.case_files(data, one, "report", 0)] == ["image.nii.gz"]  # one volume: no split


@pytest.mark.slow
def test_quick_run_with_real_models_on_shared_data(tmp_path, shared_data):
    pytest.importorskip("onnxruntime")
    from promptonce.backends import litemedsam, mobilesam

    for mod in (litemedsam, mobilesam):
        why = mod.check_available()
        if why:
            pytest.skip(f"{mod.__name__}: {why}")
    out = tmp_path / "seed.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data", str(shared_data), "--json", str(out),
                           "--out-root", str(tmp_path / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_doc(json.loads(out.read_text()), ("cxr_shenzhen", "acdc_lv"), seeds=2)
