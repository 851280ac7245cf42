"""The throughput and robustness benchmark scripts run end to end with the fake backend (plumbing, not figures)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def test_synthetic_data_has_the_stated_shapes_and_objects():
    tp = _script("throughput")
    images, refs = tp.xray_set(3)
    assert len(images) == 3 and images[0].shape == (1, 256, 256) and images[0].array.dtype == np.uint8
    vols, vrefs = tp.ct_volume(6)
    assert vols[0].shape == (6, 256, 256) and vols[0].array.dtype == np.int16
    areas = vrefs[0].array.reshape(6, -1).sum(axis=1)
    assert areas.min() > 0 and areas[2] > areas[0]  # lungs on every slice, growing towards the centre


def test_throughput_writes_json_with_machine_results_and_skips(tmp_path):
    tp = _script("throughput")
    out = tmp_path / "tp.json"
    code = tp.main(["--models", "fake,no_such_model", "--configs", "volume:volume,dataset:xray", "--slices", "4",
                    "--images", "3", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert {"cpu", "cores_usable", "ram_gb", "loadavg_start", "loadavg_end"} <= set(doc["machine"])
    assert doc["versions"]["numpy"] == np.__version__ and "torch" in doc["versions"]
    by = {(r["scope"], r["data"]): r for r in doc["results"]}
    assert by[("volume", "volume")]["slices"] == 4 and by[("dataset", "xray")]["slices"] == 3
    for r in doc["results"]:
        assert "error" not in r, r
        assert r["slices_per_s"] > 0 and r["peak_rss_mb"] >= r["rss_start_mb"] > 0
        assert 0 < r["dice_vs_synthetic_reference"] <= 1
    assert by[("dataset", "xray")]["dice_vs_synthetic_reference"] > 0.9  # the fake follows uniform 2D objects
    assert doc["skipped"]["no_such_model"] == "unknown backend name"


@pytest.mark.realdata
def test_robustness_on_three_xrays_with_the_fake_backend(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("PROMPTONCE_SHARED_DATA", str(shared_data))
    rb = _script("robustness")
    out = tmp_path / "rob.json"
    assert rb.main(["--model", "fake", "--cases", "3", "--jitters", "0,10", "--seeds", "0,1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    box = doc["results"]["box"]
    assert len(box["0"]["runs"]) == 1 and len(box["10"]["runs"]) == 2
    assert box["10"]["dice_cases_x_seeds"]["n"] == 6 and box["10"]["delta_vs_J0"]["n"] == 6
    assert doc["cases"] == ["CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_0"] and doc["not_run"] == []


def test_robustness_skips_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPTONCE_SHARED_DATA", str(tmp_path / "absent"))
    rb = _script("robustness")
    out = tmp_path / "rob.json"
    assert rb.main(["--out", str(out)]) == 0
    assert not out.exists() and "skipped" in capsys.readouterr().err


def test_second_pass_threshold_reads_a_run_where_every_case_had_both_passes():
    sp = _script("second_pass")
    recs = {  # hand-checkable: case a is weak and its second pass is better; b is confident; c's second is worse
        "a": {"conf1": 0.7, "dice1": 0.80, "flags1": True, "calls1": 10, "conf2": 0.9, "dice2": 0.95, "flags2": False, "calls2": 8},
        "b": {"conf1": 0.95, "dice1": 0.96, "flags1": False, "calls1": 10, "conf2": 0.97, "dice2": 0.90, "flags2": False, "calls2": 8},
        "c": {"conf1": 0.75, "dice1": 0.92, "flags1": False, "calls1": 10, "conf2": 0.6, "dice2": 0.70, "flags2": True, "calls2": 8},
    }
    none = sp.at_threshold(recs, 0.0)
    assert (none["second_passes"], none["decoder_calls_per_image"], none["dice_mean"]) == (0, 10.0, round((0.8 + 0.96 + 0.92) / 3, 4))
    assert (none["below_0.85"], none["flagged"], none["flag_recall"], none["flag_precision"]) == (1, 1, 1.0, 1.0)
    mid = sp.at_threshold(recs, 0.8)  # a and c get a second pass; only a's raises its confidence
    assert (mid["second_passes"], mid["decoder_calls_per_image"]) == (2, round((30 + 16) / 3, 1))
    assert mid["dice_mean"] == round((0.95 + 0.96 + 0.92) / 3, 4) and mid["flagged"] == 0 and mid["flag_recall"] is None
    every = sp.at_threshold(recs, 1.01)  # b's second pass raises its confidence and is taken
    assert every["dice_mean"] == round((0.95 + 0.90 + 0.92) / 3, 4) and every["second_passes"] == 3
    kept = sp.at_threshold(recs, 0.8, keep="always")  # a and c redone, both second passes taken
    assert kept["keep"] == "always" and kept["dice_mean"] == round((0.95 + 0.96 + 0.70) / 3, 4) and kept["flagged"] == 1


def test_cxr_seed_sweep_pools_flags_and_confidence_ranking_over_runs():
    sw = _script("cxr_seed_sweep")
    runs = [  # hand-checkable: one failure (0.80), one borderline (0.88), two good cases
        {"cases": [{"dice": 0.80, "confidence": 0.5, "flagged": True}, {"dice": 0.95, "confidence": 0.9, "flagged": False}]},
        {"cases": [{"dice": 0.88, "confidence": 0.95, "flagged": True}, {"dice": 0.96, "confidence": 0.7, "flagged": False}]},
    ]
    auc = sw.pooled_auc(runs)
    # Dice < 0.85: the failure (0.5) is below all three others -> 1.0
    # Dice < 0.90: failures 0.5 and 0.95 against good 0.9 and 0.7 -> (1 + 1 + 0 + 0) / 4
    assert auc == {"fail_below_0.85": 1.0, "bad_below_0.90": 0.5}
    pooled = sw.recall_precision([c for r in runs for c in r["cases"]])
    assert pooled == {"failures": 1, "flagged": 2, "recall": 1.0, "precision": 1.0}


def test_cxr_seed_sweep_reads_any_review_threshold_off_one_run():
    sw = _script("cxr_seed_sweep")
    cases = [  # a failure caught only by the review flag, a good case flagged by it, one with another flag
        {"dice": 0.80, "confidence": 0.72, "flags": ["object 1: low confidence 0.72, review"]},
        {"dice": 0.95, "confidence": 0.78, "flags": ["object 2: low confidence 0.78, review; weak edges: ..."]},
        {"dice": 0.88, "confidence": 0.90, "flags": ["object 1: leaked beyond the prior (20% of the mask outside it)"]},
        {"dice": 0.96, "confidence": 0.95, "flags": []},
    ]
    at = {r["review_below"]: r for r in sw.review_thresholds(cases, (0.80, 0.75, 0.70))}
    assert (at[0.80]["flagged"], at[0.80]["recall"], at[0.80]["precision"]) == (3, 1.0, 2 / 3)
    assert (at[0.75]["flagged"], at[0.75]["recall"], at[0.75]["precision"]) == (2, 1.0, 1.0)
    assert (at[0.70]["flagged"], at[0.70]["recall"], at[0.70]["precision"]) == (1, 0.0, 1.0)


def test_exemplar_sources_sources_and_summary_by_threshold_and_rule():
    es = _script("exemplar_sources")
    seed, pool, ranked = "S", ["e1", "e2", "e3", "e4"], ["e2", "S", "e1", "e3"]
    assert es.sources_for("seed_and_exemplars", seed, pool, ranked) == ["S", "e1", "e2", "e3"]
    assert es.sources_for("exemplars_only", seed, pool, ranked) == ["e1", "e2", "e3"]
    assert es.sources_for("ranked", seed, pool, ranked) == ["e2", "S", "e1"]
    with pytest.raises(ValueError):
        es.sources_for("other", seed, pool, ranked)
    second = {"dice": 0.95, "conf": 0.70}  # a second pass with a better Dice but a lower confidence
    cases = [{"image": "a", "dice1": 0.80, "conf1": 0.75, **{v: second for v in es.VARIANTS}},
             {"image": "b", "dice1": 0.90, "conf1": 0.88, **{v: {"dice": 0.70, "conf": 0.95} for v in es.VARIANTS}},
             {"image": "c", "dice1": 0.96, "conf1": 0.97}]  # confident: no second pass recorded
    s = es.summarise({"cases": cases})
    assert s["first_pass_only"] == round((0.80 + 0.90 + 0.96) / 3, 4) and s["redone_below_0.80"] == 1
    assert s["ranked@0.80/by_confidence"] == s["first_pass_only"]  # a's second pass is less confident: not kept
    assert s["ranked@0.80/always"] == round((0.95 + 0.90 + 0.96) / 3, 4)
    assert s["exemplars_only@0.90/by_confidence"] == round((0.80 + 0.70 + 0.96) / 3, 4)  # b's is more confident
    assert s["exemplars_only@0.90/always"] == round((0.95 + 0.70 + 0.96) / 3, 4)


def test_second_pass_keep_rules_by_threshold_margin_and_power():
    sk = _script("second_pass_keep")
    weak = {"image": "a", "dice1": 0.80, "conf1": 0.78, "p1": {"dice": 0.95, "conf": 0.70}, "p12": {"dice": 0.90, "conf": 0.80}}
    mid = {"image": "b", "dice1": 0.93, "conf1": 0.87, "p1": {"dice": 0.91, "conf": 0.90}, "p12": {"dice": 0.94, "conf": 0.85}}
    sure = {"image": "c", "dice1": 0.96, "conf1": 0.97}  # confident: no second pass recorded
    assert sk.kept(weak, weak["p1"], 0.80, "conf") == 0.80  # less confident: not kept
    assert sk.kept(weak, weak["p1"], 0.80, "m0.05") == 0.80 and sk.kept(weak, weak["p1"], 0.80, "m0.1") == 0.95
    assert sk.kept(weak, weak["p1"], 0.80, "always") == 0.95
    assert sk.kept(mid, mid["p1"], 0.85, "always") == 0.93  # above the threshold: never redone
    assert sk.kept(sure, None, 0.90, "always") == 0.96
    s = sk.summarise({"cases": [weak, mid, sure]}, (1, 12))
    assert s["first_pass_only"] == round((0.80 + 0.93 + 0.96) / 3, 4)
    assert s["p1@0.90/always"] == round((0.95 + 0.91 + 0.96) / 3, 4)
    assert s["p12@0.90/conf"] == round((0.90 + 0.93 + 0.96) / 3, 4)  # b's p12 pass is less confident
    assert (s["redone_below_0.80"], s["redone_below_0.85"], s["redone_below_0.90"]) == (1, 1, 2)


def test_exemplar_rounds_summary_keeps_the_redo_always_or_only_when_more_confident():
    er = _script("exemplar_rounds")
    weak = {"dice1": 0.70, "dice2": 0.80, "conf2": 0.60, "seed": {"dice": 0.95, "conf": 0.70},
            "noseed": {"dice": 0.84, "conf": 0.50}}
    worse = {"dice1": 0.90, "dice2": 0.97, "conf2": 0.80, "seed": {"dice": 0.66, "conf": 0.46}}  # no noseed run
    sure = {"dice1": 0.96, "dice2": 0.96, "conf2": 0.95}  # confident: not redone
    s = er.summarise({"cases": [weak, worse, sure], "seed_similarity_median": 0.9,
                      "exemplar_similarity_median": 0.95})
    assert s["first_pass"] == [round((0.70 + 0.90 + 0.96) / 3, 4), 1]
    assert s["product"] == [round((0.80 + 0.97 + 0.96) / 3, 4), 1]
    assert s["third_seed"] == [round((0.95 + 0.66 + 0.96) / 3, 4), 1]
    assert s["third_seed_if_more_confident"] == [round((0.95 + 0.97 + 0.96) / 3, 4), 0]
    assert s["third_noseed"] == [round((0.84 + 0.97 + 0.96) / 3, 4), 1]  # a case without it keeps the product's
    assert s["third_noseed_if_more_confident"] == s["product"]
    assert s["redone_third"] == 2 and s["similarity_seed_vs_exemplar"] == [0.9, 0.95]


def test_flag_features_scores_the_flag_variants_with_the_ends_above_flag_rebuilt_from_the_base_gap():
    ff = _script("flag_features")

    def case(dice, flags=(), gap=0.0, ratio=1.2):
        return {"dice": dice, "flags": list(flags), "base_gap": gap,
                "areas": {"1": int(1000 * ratio), "2": 1000}, "confidence": 0.9}

    ends = "object 1: ends 21% of its height above object 2 (side-by-side ...): check its lower end"
    leak = "object 2: leaked beyond the prior (23% of the mask outside it)"
    cases = [case(0.95) for _ in range(8)]  # a set whose lungs are 1.2x apart
    cases += [case(0.80, [ends], gap=0.21),  # a failure only the ends flag catches
              case(0.96, [ends], gap=0.30),  # a correct case it flags
              case(0.82, [leak]),  # a failure the leak flag catches
              case(0.83, ratio=2.4)]  # a failure only the set check catches (2x the set's ratio)
    rebuilt = [dict(c, flags=[f for f in c["flags"] if f != ends]) for c in cases]  # the product now
    with_text, now = ff.set_check({"runs": [{"seed": "s", "cases": cases}]}), ff.set_check({"runs": [{"seed": "s", "cases": rebuilt}]})
    assert with_text["without_instability_alone_and_set_check"] == {"recall": 1.0, "precision": 0.75, "flagged": 4}
    assert with_text["without_instability_alone_and_ends_above_with_set_check"] == {
        "recall": 2 / 3, "precision": 1.0, "flagged": 2}
    assert now["flags_now"] == {"recall": 1 / 3, "precision": 1.0, "flagged": 1}
    # with the flag's text gone, the recorded base gap gives the same cases back
    key = "without_instability_alone_with_ends_above_from_base_gap_and_set_check"
    assert now[key] == with_text[key] == with_text["without_instability_alone_and_set_check"]


def test_flag_features_raises_the_leak_flag_only_above_each_variants_share():
    ff = _script("flag_features")

    def case(dice, leak=0.0):
        flags = [f"object 1: leaked beyond the prior ({leak:.0%} of the mask outside it)"] if leak > 0.15 else []
        return {"dice": dice, "flags": flags, "areas": {"1": 1200, "2": 1000}, "confidence": 0.9,
                "objects": {"1": {"leak": leak}, "2": {"leak": 0.01}}}

    cases = [case(0.95) for _ in range(6)] + [case(0.96, 0.17), case(0.80, 0.24), case(0.88, 0.40)]
    out = ff.set_check({"runs": [{"seed": "s", "cases": cases}]})
    key = "without_instability_alone_leak_flag_from_{:.2f}_with_set_check"
    assert out[key.format(0.15)] == {"recall": 1.0, "precision": 2 / 3, "flagged": 3}
    assert out[key.format(0.20)] == {"recall": 1.0, "precision": 1.0, "flagged": 2}
    assert out[key.format(0.30)] == {"recall": 0.0, "precision": 1.0, "flagged": 1}
    assert out[key.format(1.0)] == {"recall": 0.0, "precision": 0.0, "flagged": 0}


def test_flag_features_replays_the_weak_edge_threshold_scaled_by_the_sets_exemplars():
    ff = _script("flag_features")
    from promptonce.engine.quality import EVIDENCE_FULL

    def case(dice, evidence, confidence, passes=1, flags=()):
        obj = {"evidence": evidence, "confidence": confidence, "stability": 0.97}
        return {"dice": dice, "flags": list(flags), "confidence": confidence, "passes": passes,
                "areas": {"1": 1200, "2": 1000}, "objects": {"1": obj, "2": dict(obj)}}

    weak = "object 1: low confidence 0.70, review; weak edges: its outline follows image edges weakly (contrast 0.10)"
    ev = 0.8 * EVIDENCE_FULL  # a right outline, weak only at the tuning threshold
    soft = [case(0.95, 0.13, 0.95) for _ in range(10)]  # a set whose confident outlines are all ~0.13
    soft.append(case(0.95, ev, 0.9 * 0.8, passes=2, flags=[weak]))  # 0.72: below REVIEW_BELOW
    sharp = [case(0.95, 0.30, 0.95) for _ in range(10)] + [soft[-1]]
    out = ff.evidence_replay({"runs": [{"seed": "s", "cases": soft}]}, references=(0.17,))
    assert out["recorded"]["flagged"] == out["unscaled"]["flagged"] == 1
    assert out["0.17"]["flagged"] == 0  # 0.13 / 0.17 lowers the threshold below the case's evidence
    assert ff.evidence_replay({"runs": [{"seed": "s", "cases": sharp}]}, references=(0.17,))["0.17"]["flagged"] == 1


def test_blas_threads_times_both_ways_and_reports_a_backend_it_cannot_time(tmp_path, monkeypatch):
    bt = _script("blas_threads")
    monkeypatch.setattr(bt, "SHENZHEN", tmp_path / "absent")  # synthetic frames, whether or not ../shared exists
    frames, source = bt.frames(2)
    assert source == "synthetic 512x512" and len(frames) == 2 and frames[0].shape == (512, 512, 3)
    boxes = bt.boxes((512, 512), 3)
    assert len(boxes) == 6 and all(b[0] < b[2] and b[1] < b[3] for b in boxes)
    out = tmp_path / "b.json"
    assert bt.main(["--backends", "fake", "--images", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "not on ONNX Runtime" in doc["backends"]["fake"]["skipped"]


def test_volume_second_pass_reads_each_runs_metrics_and_skips_without_acdc(tmp_path, monkeypatch):
    vs = _script("volume_second_pass")
    run = tmp_path / "metrics.json"
    run.write_text(json.dumps({"summary": {"dice_mean": 0.9, "flagged_cases": 1, "seconds": 3.0},
                               "cases": [{"dice": 0.95}, {"dice": 0.80}, {"dice": 0.95}]}))
    assert vs.summary(run) == {"dice_mean": 0.9, "worst_case": 0.80, "below_0.85": 1, "cases": 3,
                               "flagged_cases": 1, "seconds": 3.0}
    monkeypatch.setattr(vs, "ACDC", tmp_path / "absent")
    out = tmp_path / "v.json"
    assert vs.main(["--out", str(out)]) == 0 and not out.exists()
    with pytest.raises(SystemExit):
        vs.child("nonsense", [])


def test_domain_shift_transforms_each_image_its_own_way_and_never_crops_into_the_reference():
    ds = _script("domain_shift")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (512, 512)).astype(np.uint8)
    ref = np.zeros((512, 512), bool)
    ref[60:450, 40:470] = True  # reaches close to every side: the crop must stop short of it
    same, same_ref = ds.shifted(image, ref, "none", 3)
    assert same is image and same_ref is ref
    for shift in ("resize", "crop", "border", "all"):
        a, ra = ds.shifted(image, ref, shift, 3)
        b, rb = ds.shifted(image, ref, shift, 3)
        c, _ = ds.shifted(image, ref, shift, 4)
        assert np.array_equal(a, b) and np.array_equal(ra, rb)  # seeded by the image's index
        assert a.shape != c.shape or not np.array_equal(a, c)  # another image, another draw
        assert a.dtype == np.uint8 and a.shape == ra.shape and 384 <= max(a.shape) <= 900
        ys, xs = np.nonzero(ra)
        # the reference is whole: its box keeps the original's proportions (no side cut off)
        assert abs((xs.max() - xs.min()) / (ys.max() - ys.min()) - 430 / 390) < 0.03
    bordered, rb = ds.shifted(image, ref, "border", 3)
    assert (bordered[:2] == 0).all() or (bordered[:, :2] == 0).all() or (bordered[-2:] == 0).all()
    # the set-wide curves: one gamma for every image, nothing else changed
    soft, rs = ds.shifted(image, ref, "soft", 3)
    hard, _ = ds.shifted(image, ref, "hard", 3)
    assert rs is ref and soft.shape == image.shape and soft.dtype == np.uint8
    assert np.array_equal(soft, ds.shifted(image, ref, "soft", 4)[0])  # the same curve whatever the image
    assert soft.mean() > image.mean() > hard.mean()
    # the scales the exemplar pass used are noted, and the engine's function is put back
    from promptonce.engine import transfer as transfer_module

    real = transfer_module.evidence_scales
    with ds._scales_seen() as seen:
        transfer_module.evidence_scales([{1: 0.1}] * 8)
        transfer_module.evidence_scales([{1: 0.1}] * 8)
    assert transfer_module.evidence_scales is real and len(seen) == 1 and seen[0][1] < 1.0


def test_evidence_curves_measures_on_a_gamma_curved_image(tmp_path, monkeypatch, capsys):
    ec = _script("evidence_curves")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:160, :160]
    image = 150.0 + 20.0 * yy / 160 + rng.normal(0, 4, (160, 160))  # soft tissue
    lungs = [((yy - 70) / 45.0) ** 2 + ((xx - cx) / 25.0) ** 2 < 1 for cx in (50, 110)]
    image = np.where(lungs[0] | lungs[1], 95.0 + 10.0 * yy / 160 + rng.normal(0, 4, image.shape), image)
    image[:, :14] = image[:, -14:] = 8.0  # air beside the body and a bright spine: the lungs' edges span
    image[:, 76:84] = 245.0  # a part of the image's range, as on a radiograph
    image = np.clip(image, 1, 255).round()
    labels = lungs[0] + 2 * lungs[1].astype(np.uint8)
    now = ec.case_evidence(image, labels, ec.MEASURES["now"])
    for g in (0.6, 1.6):
        curved = ec.gamma(image, g)
        assert abs(ec.case_evidence(curved, labels, ec.MEASURES["now"]) - now) > 0.15 * now  # the product's moves
        for name, tol in (("ranks", 0.03), ("log", 0.12), ("standard_curve", 0.03), ("object_step", 0.05),
                          ("object_step_wide", 0.05)):  # log: its 1/255 offset
            base = ec.case_evidence(image, labels, ec.MEASURES[name])
            assert abs(ec.case_evidence(curved, labels, ec.MEASURES[name]) - base) < tol * base, name
    assert abs(float(np.median(ec.standard(image))) - ec.STANDARD_MEDIAN) < 0.01
    # an image whose median lies in the tuning images' range is left alone; a darker one is curved to it
    _, med = ec._unit(image)
    if ec.TUNING_MEDIANS[0] <= med <= ec.TUNING_MEDIANS[1]:
        assert np.array_equal(ec.curved_to_range(image), image)
    dark = np.clip(rng.normal(60, 30, (64, 64)), 0, 255)
    assert ec._unit(dark)[1] < ec.TUNING_MEDIANS[0]
    assert abs(float(np.median(ec.curved_to_range(dark))) - ec.TUNING_MEDIANS[0]) < 0.01
    evidence = {1.0: np.array([0.05, 0.2, 0.3]), 0.6: np.array([0.04, 0.1, 0.2])}
    scored = ec.score(evidence, np.array([0.8, 0.95, 0.97]), threshold=0.12)
    assert scored["under_without_curve"] == 1 and scored["auc_below_0.90"] == 1.0  # the failure is the weakest
    assert scored["gammas"]["0.6"] == {"median_ratio": 0.667, "spearman": 1.0, "under": 2, "auc_below_0.90": 1.0}
    monkeypatch.setattr(sys.modules["_xrays"], "DATA", tmp_path / "absent")
    out = tmp_path / "ec.json"
    assert ec.main(["--out", str(out)]) == 0 and not out.exists() and "skipped" in capsys.readouterr().err


def test_seed_agreement_scores_the_best_worst_and_most_confident_seed_per_image(tmp_path):
    sa = _script("seed_agreement")

    def run(seed, dice, conf):
        return {"seed": seed, "cases": [{"image": f"i{k}", "dice": d, "confidence": c}
                                        for k, (d, c) in enumerate(zip(dice, conf))]}

    # seed b is wrong on image 0 only, and more confident there: the confident choice takes its miss
    runs = [run("a", [0.96, 0.95, 0.94], [0.8, 0.9, 0.9]), run("b", [0.70, 0.97, 0.95], [0.9, 0.8, 0.8]),
            run("c", [0.95, 0.96, 0.93], [0.7, 0.7, 0.7])]
    out = sa.agreement(runs)
    assert out["images"] == 3 and out["dice_per_seed"]["b"] == round((0.70 + 0.97 + 0.95) / 3, 4)
    assert out["mean_of_best_seed_per_image"] == round((0.96 + 0.97 + 0.95) / 3, 4)
    assert out["mean_of_worst_seed_per_image"] == round((0.70 + 0.95 + 0.93) / 3, 4)
    assert out["mean_of_most_confident_seed_per_image"] == round((0.70 + 0.95 + 0.94) / 3, 4)
    b = out["per_seed"]["b"]
    assert b["cases_more_than_0.05_below"] == 1 and b["below_0.85"] == 1
    assert b["gap_from_those_cases"] == round((0.70 - 0.955) / 3, 4)
    assert out["per_seed"]["a"]["cases_more_than_0.05_below"] == 0
    files = []
    for k, r in enumerate(runs):
        files.append(tmp_path / f"s{k}.json")
        files[-1].write_text(json.dumps({"runs": [r]}))
    assert sa.main([*map(str, files), "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["seeds"] == ["a", "b", "c"]


def test_atlas_vote_takes_the_mask_the_others_agree_with():
    av = _script("atlas_vote")
    yy, xx = np.mgrid[0:40, 0:40]
    disc = lambda cx, r: (xx - cx) ** 2 + (yy - 20) ** 2 <= r**2  # noqa: E731
    masks = [disc(26, 8), disc(20, 8), disc(21, 8), disc(19, 8), disc(5, 4)]
    assert av.medoid(masks) == 1  # the middle one of three near-identical discs, not the outliers
    assert av.medoid(masks[:2]) == 0  # two cannot vote


def test_atlas_vote_replays_the_gated_choice_of_the_product_option():
    av = _script("atlas_vote")
    # dice_all / conf_all: fused, the seed alone, then the exemplars alone, most similar first
    weak = {"redone": True, "product": 0.80, "dice_all": [0.80, 0.99, 0.90, 0.95, 0.70],
            "conf_all": [0.70, 0.99, 0.75, 0.80, 0.60]}
    sure = {"redone": True, "product": 0.93, "dice_all": [0.93, 0.5, 0.5, 0.5, 0.5],
            "conf_all": [0.88, 0.99, 0.99, 0.99, 0.99]}
    kept = {"redone": False, "product": 0.96}
    rows = {(r["below"], r["singles"]): r for r in av.gated([weak, sure, kept], gates=(0.85, 0.90), singles=(1, 2))}
    assert rows[(0.85, 1)]["dice"] == round((0.90 + 0.93 + 0.96) / 3, 4)  # the seed alone is never a candidate
    assert rows[(0.85, 2)]["dice"] == round((0.95 + 0.93 + 0.96) / 3, 4)
    assert rows[(0.85, 2)]["extra_case_runs"] == 2 and rows[(0.85, 2)]["below_0.85"] == 0
    assert rows[(0.90, 1)]["dice"] == round((0.90 + 0.50 + 0.96) / 3, 4)  # the confident wrong single wins there
    assert rows[(0.90, 2)]["extra_case_runs"] == 4 and rows[(0.90, 2)]["below_0.85"] == 1
    tie = dict(weak, conf_all=[0.75, 0.0, 0.75, 0.75, 0.0])
    assert av.gated([tie], gates=(0.85,), singles=(2,))[0]["dice"] == 0.80  # ties keep the fused result


def test_click_candidates_replays_the_choice_with_and_without_the_crop_boxes():
    cc = _script("click_candidates")

    def c(source, score, dice, contains=True):
        return {"source": source, "score": score, "stability": 0.5, "contains": contains, "region": None,
                "edge": 0.0, "dice": dice}

    rows = [
        {"set": "s", "objects": 1, "oneclick": 0.8, "click": 0.7,
         "candidates": [c("grown 0.04", 0.6, 0.3), c("crop box 0", 0.9, 0.7), c("crop box 1", 0.95, 0.9, False)]},
        {"set": "s", "objects": 1, "oneclick": 0.6, "click": 0.5, "candidates": [c("crop box 0", 0.9, 0.5)]},
        {"set": "s", "objects": 2, "oneclick": 0.9, "click": 0.9, "candidates": [c("region", 0.9, 0.1)]},
    ]
    s = cc.summary(rows)["s"]
    assert s["slices"] == 3 and s["single_object_slices"] == 2
    assert s["oneclick"] == pytest.approx(0.7667, abs=1e-4)
    assert s["without_crop_boxes"] == pytest.approx(0.3)  # the second slice had nothing else: left out
    assert s["with_crop_boxes"] == pytest.approx(0.6)  # 0.7 (holds the click) and 0.5
    assert s["oracle"] == pytest.approx(0.7)
    # the crop weights leave stability out: a stable low-scoring mask no longer wins
    rows[0]["candidates"][1]["stability"] = 1.0
    rows[0]["candidates"][0].update(score=0.8, stability=0.0, region=0.6)
    s = cc.summary(rows)["s"]
    assert s["with_crop_boxes"] == pytest.approx(0.6)  # 0.9 + 1.0 beats 0.8 + 0.6
    assert s["with_crop_boxes_crop_weights"] == pytest.approx(0.4)  # 0.8 + 0.6 beats 0.9: 0.3 and 0.5
    # a recording without stability (made on a crop) replays only the crop weights
    for c in rows[1]["candidates"]:
        c["stability"] = None
    s = cc.summary(rows)["s"]
    assert s["with_crop_boxes"] == pytest.approx(0.7) and s["with_crop_boxes_crop_weights"] == pytest.approx(0.4)


def test_click_fusion_scores_each_way_of_making_one_mask_from_the_candidates():
    cf = _script("click_fusion")

    def square(r0, r1):
        m = np.zeros((20, 20), bool)
        m[r0:r1, r0:r1] = True
        return m

    ref = square(5, 15)

    def c(mask, score, contains=True):
        return {"mask": mask, "score": score, "stability": None, "contains": contains, "region": 0.5, "edge": 0.1,
                "dice": round(2 * (mask & ref).sum() / (mask.sum() + ref.sum()), 4)}

    # the best-scored candidate is small; two larger ones agree with each other; one does not hold the click
    row = {"oneclick": 0.9, "click": 0.2, "reference": ref,
           "candidates": [c(square(9, 11), 0.9), c(square(5, 15), 0.5), c(square(5, 14), 0.5),
                          c(np.ones((20, 20), bool), 1.0, contains=False)]}
    r = cf.rules(row)
    assert (r["oneclick"], r["product"]) == (0.9, 0.2)
    assert r["oracle"] == 1.0  # the exact square; the frame-wide one is out of the pool
    assert r["ranking"] == pytest.approx(2 * 4 / 104)  # the crop ranking keeps the small best-scored one
    assert r["consensus"] == pytest.approx(2 * 81 / 181)  # 9 x 9: 1.1 + 0.494 beats the small 1.5 + 0.085
    assert r["medoid"] == pytest.approx(2 * 81 / 181)
    assert r["vote 0.5"] == pytest.approx(2 * 81 / 181)  # pixels of two of the three: the 9 x 9 square
    assert r["vote 0.3"] == 1.0 and r["vote 0.7"] == pytest.approx(2 * 4 / 104)
