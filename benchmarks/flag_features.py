"""What the quality check measured on every X-ray case of a dataset-scope run, beside its Dice.

The flags' precision (of the flagged cases, the share really below Dice 0.90) is the weak part of the
quality estimate (benchmarks/README.md, "Eleventh round": 0.28 at recall 0.86). The result files of
``cxr_seed_sweep.py`` keep each case's confidence and flag texts only, so a better flag rule cannot
be looked for there: a measure appears only on cases it already flagged. This benchmark runs the same
dataset-scope sweep (one LiteMedSAM engine, every image encoded once, ``--seeds`` seed images spread
over the range) and writes, for every case, every measure the engine's check took on each object
(agreement with the prior, leak, parts missed, model score, stability, image evidence, confidence),
the side contrasts of each object's final mask, the pair's base gap and area ratio, how many passes
the case took, its flags, and its Dice with the reference; for a case the exemplar pass redid, also
its first pass's confidence and each object's Dice between the two passes' masks (``pass_agreement``).

Measurement only: the engine runs unchanged; ``DatasetTransfer.segment_case``, ``_level_bases`` and
``second_pass`` are wrapped to keep the checks they computed and the passes they compared.

``--analyse FILE`` reads such a file (no model run) and writes, beside it (``*_analysis.json``), how
well each measure alone ranks the failures (AUC for Dice < 0.85), the product's flags' recall and
precision, and what a logistic regression over the measures reaches, fitted leaving one seed out (so
each seed's cases are scored by a model that never saw them): the precision at recall 0.80 / 0.85 /
0.90 and the AUC.

    .venv/bin/python benchmarks/flag_features.py --start 0 --count 100 --seeds 10 \\
        --out benchmarks/results/flag_features_tune.json
    .venv/bin/python benchmarks/flag_features.py --analyse benchmarks/results/flag_features_tune.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptonce.engine import PropagationConfig, segment  # noqa: E402
from promptonce.engine import transfer as transfer_module  # noqa: E402
from promptonce.engine.pairs import base_gap  # noqa: E402
from promptonce.engine.quality import extent, side_band, side_contrast  # noqa: E402
from promptonce.engine import quality  # noqa: E402
from promptonce.engine.set_check import evidence_scales, proportion_flags  # noqa: E402
from promptonce.engine.transfer import EXEMPLAR_MIN_CONFIDENCE, MAX_EXEMPLARS  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.flagscore import BAD_BELOW, FAIL_BELOW, confidence_auc  # noqa: E402
from promptonce.metrics import dice  # noqa: E402
from promptonce.types import Dataset  # noqa: E402

from _xrays import add_range_args, add_seed_args, encoded_engine, load_range, seed_indices, write_result  # noqa: E402

#: shares of a mask outside its prior from which the analysis's variants raise the leak flag (1.0: never)
LEAK_FLAG_FROM = (0.15, 0.20, 0.25, 0.30, 1.0)
CHECK_FIELDS = ("agreement", "leak", "parts_missed", "score", "stability", "evidence", "confidence")


class Recorder:
    """Keeps the final object checks of every ``segment_case`` call, by case name."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.by_case: dict[str, list[dict]] = {}
        #: a case redone by the exemplar pass: its first pass's confidence, and each object's Dice
        #: between the two passes' masks (the seed's prior against the fused exemplars')
        self.passes: dict[str, dict] = {}
        self.lock = threading.Lock()

    def install(self) -> None:
        cls = transfer_module.DatasetTransfer
        seg, level = cls.segment_case, cls._level_bases
        rec = self

        def level_bases(self, volume, k, gray, priors, seeds, checks, evidence_scale=None):  # noqa: ANN001
            level(self, volume, k, gray, priors, seeds, checks, evidence_scale)
            rec.local.checks = checks  # after levelling: the checks the case's flags come from

        def segment_case(self, volume, volume_index, sources, cancel, passes, evidence_scale=None):  # noqa: ANN001
            rec.local.checks = None
            out = seg(self, volume, volume_index, sources, cancel, passes, evidence_scale)
            checks = rec.local.checks or {}
            entry = {"confidence": out.confidence, "flags": list(out.flags), "passes": passes,
                     "objects": {str(oid): {f: getattr(c, f) for f in CHECK_FIELDS} for oid, c in checks.items()}}
            with rec.lock:
                rec.by_case.setdefault(volume.name, []).append(entry)
            return out

        second = cls.second_pass

        def second_pass(self, volume, volume_index, exemplars, first, cancel=None):  # noqa: ANN001
            out = second(self, volume, volume_index, exemplars, first, cancel)
            if out is not first and first.results and out.results:
                a, b = first.results[0].labels, out.results[0].labels
                agree = {str(oid): float(dice(a == oid, b == oid)) for oid in self.names}
                with rec.lock:
                    rec.passes[volume.name] = {"first_confidence": first.confidence, "pass_agreement": agree}
            return out

        cls.segment_case, cls._level_bases, cls.second_pass = segment_case, level_bases, second_pass

    def final(self, name: str, confidence: float | None, flags: list[str]) -> dict:
        """The entry of the pass whose result was kept (same confidence and flags)."""
        entries = self.by_case.get(name, [])
        for e in reversed(entries):
            if e["confidence"] == confidence and e["flags"] == flags:
                return e
        return entries[-1] if entries else {}


def mask_measures(gray: np.ndarray, labels: np.ndarray, seed_ratio: float | None) -> dict:
    """Side contrasts of each object's mask, its area and mean column, the pair's base gap and area ratio (to the seed's)."""
    out: dict = {"sides": {}}
    masks = {int(i): labels == i for i in (1, 2)}
    for oid, m in masks.items():
        out["sides"][str(oid)] = side_contrast(gray, m, side_band(extent(m))) if m.any() else None
    a, b = (int(m.sum()) for m in masks.values())
    out["areas"] = {str(oid): int(m.sum()) for oid, m in masks.items()}
    out["centre_cols"] = {str(oid): float(np.nonzero(m)[1].mean()) if m.any() else None for oid, m in masks.items()}
    out["base_gap"] = base_gap(masks[1], masks[2]) if a and b else None
    out["area_ratio"] = (a / b) if a and b else None
    out["area_ratio_vs_seed"] = (float(np.log(out["area_ratio"] / seed_ratio))
                                 if out["area_ratio"] and seed_ratio else None)
    return out


# ---------------------------------------------------------------------- analysis of a result file
#: measures where a low value means a doubtful case (the others: a high value does)
LOW_IS_BAD = {"confidence", "agreement", "score", "stability", "evidence", "bottom_contrast", "lowest_side_contrast",
              "pass_agreement", "first_confidence"}
FEATURE_SETS = {
    "confidence only": ["confidence"],
    "every measure": ["confidence", "agreement", "score", "stability", "evidence", "base_gap", "leak",
                      "area_ratio_vs_seed", "bottom_contrast", "lowest_side_contrast"],
    "confidence, evidence, gap, area ratio, agreement, score": ["confidence", "evidence", "base_gap",
                                                                "area_ratio_vs_seed", "agreement", "score"],
    "confidence, first-pass confidence, pass agreement": ["confidence", "first_confidence", "pass_agreement"],
}


def case_measures(c: dict) -> dict[str, float]:
    """One case's measures, over its objects (the worst object's value)."""
    objs = list(c["objects"].values())

    def worst(key: str, low_is_bad: bool, default: float) -> float:
        vals = [o[key] for o in objs if o.get(key) is not None]
        return (min(vals) if low_is_bad else max(vals)) if vals else default

    sides = [s for s in (c.get("sides") or {}).values() if s]
    bottoms = [s["bottom"] for s in sides if s.get("bottom") is not None]
    every = [v for s in sides for v in s.values() if v is not None]
    return {
        "confidence": c["confidence"] if c["confidence"] is not None else 0.0,
        "agreement": worst("agreement", True, 1.0), "score": worst("score", True, 1.0),
        "stability": worst("stability", True, 1.0), "evidence": worst("evidence", True, 0.0),
        "leak": worst("leak", False, 0.0),
        "base_gap": c["base_gap"] if c["base_gap"] is not None else 1.0,
        "area_ratio_vs_seed": abs(c["area_ratio_vs_seed"]) if c["area_ratio_vs_seed"] is not None else 2.0,
        "bottom_contrast": min(bottoms) if bottoms else 0.0,
        "lowest_side_contrast": min(every) if every else 0.0,
        # a case the exemplar pass did not redo: its one pass agrees with itself
        "pass_agreement": min((c.get("pass_agreement") or {"-": 1.0}).values()),
        "first_confidence": c["first_confidence"] if c.get("first_confidence") is not None else (c["confidence"] or 0.0),
    }


def risk(measures: list[dict], keys: list[str]) -> np.ndarray:
    """``(cases, keys)``, each column turned so that a larger value is a more doubtful case."""
    return np.array([[-m[k] if k in LOW_IS_BAD else m[k] for k in keys] for m in measures], float)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> tuple:
    """L2-penalised logistic regression (Newton steps) on standardised columns: ``(w, mean, sd)``."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mu) / sd]
    w = np.zeros(z.shape[1])
    pen = l2 * np.r_[0.0, np.ones(len(w) - 1)]
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        w -= np.linalg.solve((z * (p * (1 - p))[:, None]).T @ z + np.diag(pen), z.T @ (p - y) + pen * w)
    return w, mu, sd


def logistic_p(model: tuple, x: np.ndarray) -> np.ndarray:
    w, mu, sd = model
    return 1.0 / (1.0 + np.exp(-(np.c_[np.ones(len(x)), (x - mu) / sd] @ w)))


def at_recall(p: np.ndarray, dice_: np.ndarray, target: float) -> dict:
    """Flag the cases with the highest ``p`` until ``target`` of the failures are flagged: recall, precision."""
    fail = dice_ < FAIL_BELOW
    if not fail.any():  # nothing to catch: no recall, no threshold
        return {"recall": None, "precision": None, "flagged": 0}
    ranked = np.sort(p[fail])[::-1]
    cut = ranked[max(int(np.ceil(target * len(ranked))) - 1, 0)]
    flag = p >= cut
    return {"recall": float((flag & fail).sum() / max(fail.sum(), 1)),
            "precision": float((flag & (dice_ < BAD_BELOW)).sum() / max(flag.sum(), 1)), "flagged": int(flag.sum())}


def flag_kind(text: str) -> str:
    """A flag's kind: its sentence without the object's name and numbers ("low confidence" split by reason)."""
    t = re.sub(r"^[^:]*: ", "", text, count=1)
    if t.startswith("low confidence"):
        reasons = [r for r in ("unstable", "weak edges") if r in t]
        return "low confidence (" + (" + ".join(reasons) or "no reason given") + ")"
    return re.sub(r"\d+(\.\d+)?%?", "#", t).split(" (")[0].split(":")[0]


def flags_by_kind(cases: list[dict]) -> dict:
    """Per flag kind: cases it fires on, of them below 0.90 / 0.85 / at least 0.94, failures only it caught."""
    out: dict[str, dict[str, int]] = {}
    for c in cases:
        kinds = {flag_kind(f) for f in c["flags"]}
        for k in kinds:
            row = out.setdefault(k, {"cases": 0, "below_0.90": 0, "below_0.85": 0, "only_flag_of_a_failure": 0,
                                     "at_least_0.94": 0})
            row["cases"] += 1
            row["below_0.90"] += c["dice"] < BAD_BELOW
            row["below_0.85"] += c["dice"] < FAIL_BELOW
            row["at_least_0.94"] += c["dice"] >= 0.94
            row["only_flag_of_a_failure"] += c["dice"] < FAIL_BELOW and len(kinds) == 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cases"]))


def recall_precision(flag: np.ndarray, dice_: np.ndarray) -> dict:
    fail = dice_ < FAIL_BELOW
    return {"recall": float((flag & fail).sum() / max(fail.sum(), 1)),
            "precision": float((flag & (dice_ < BAD_BELOW)).sum() / max(flag.sum(), 1)), "flagged": int(flag.sum())}


def _set_areas(cases: list[dict]) -> dict[int, dict[int, int]]:
    """Each case's object areas for the set check (files recorded before the areas were kept: the pair's ratio)."""
    areas = {}
    for i, c in enumerate(cases):
        if c.get("areas"):
            areas[i] = {int(k): int(v) for k, v in c["areas"].items()}
        elif c.get("area_ratio"):
            areas[i] = {1: int(round(c["area_ratio"] * 1_000_000)), 2: 1_000_000}
    return areas


def set_check(doc: dict) -> dict:
    """The product's set check (:func:`promptonce.engine.set_check.proportion_flags`) on each seed's run, and
    the flags with it: as they are, without a low confidence whose only reason is instability, and
    without that and the "ends ... above" flag.

    Each run's cases are checked against each other (the seed image itself is not among the recorded
    cases). Files recorded before the areas were kept give the pair's area ratio only, which is all the
    check reads. The "ends above" flag is off in the product (``engine.pairs.FLAG_UNEVEN_BASES``); one
    variant adds it back from each case's recorded base gap."""
    cases, set_flagged, seed_of = [], [], []
    for r in doc["runs"]:
        seed_of += [r["seed"]] * len(r["cases"])
        flagged = proportion_flags(_set_areas(r["cases"]))
        cases += r["cases"]
        set_flagged += [i in flagged for i in range(len(r["cases"]))]
    d = np.array([c["dice"] for c in cases])
    setf = np.array(set_flagged, bool)
    now = np.array([bool(c["flags"]) for c in cases])
    unstable = "low confidence (unstable)"
    without = np.array([any(flag_kind(f) != unstable for f in c["flags"]) for c in cases])
    ends = "ends # of its height above object #"
    without_ends = np.array([any(flag_kind(f) not in (unstable, ends) for f in c["flags"]) for c in cases])
    # the "ends above" flag as the engine raised it before pairs.FLAG_UNEVEN_BASES (a final base gap over
    # the config's pair_base_gap; on the files that kept the flag's text, the same cases exactly)
    gap = PropagationConfig().pair_base_gap
    ends_gap = np.array([c.get("base_gap") is not None and c["base_gap"] > gap for c in cases])
    variants = {"set_check_alone": setf, "flags_now": now, "flags_and_set_check": now | setf,
                "without_instability_alone": without, "without_instability_alone_and_set_check": without | setf,
                "without_instability_alone_and_ends_above_with_set_check": without_ends | setf,
                "without_instability_alone_with_ends_above_from_base_gap_and_set_check": without_ends | ends_gap | setf}
    # the "leaked beyond the prior" flag raised only above a higher share of the mask outside the prior: a case
    # keeps the flag when its leakiest object is over t. Variants can only take flags away: files recorded
    # before the eighteenth round flag from 15%, later ones from quality.LEAK_FLAG_FRACTION (20%).
    leak_kind = "leaked beyond the prior"
    most_leak = np.array([max((o.get("leak") or 0.0 for o in c.get("objects", {}).values()), default=0.0)
                          for c in cases])
    without_leak = np.array([any(flag_kind(f) not in (unstable, ends, leak_kind) for f in c["flags"])
                             for c in cases])
    has_leak = np.array([any(flag_kind(f) == leak_kind for f in c["flags"]) for c in cases])
    for t in LEAK_FLAG_FROM:
        variants[f"without_instability_alone_leak_flag_from_{t:.2f}_with_set_check"] = (
            without_leak | (has_leak & (most_leak > t)) | setf)
    out: dict = {k: recall_precision(v, d) for k, v in variants.items()}
    seeds = np.array(seed_of)
    out["per_seed"] = {s: {k: recall_precision(v[seeds == s], d[seeds == s]) for k, v in variants.items()}
                       for s in dict.fromkeys(seed_of)}
    return out


#: reference evidences the replay of the set-relative weak-edge threshold tries
EVIDENCE_REFERENCES = (0.16, 0.17, 0.175, 0.18, 0.19)


def _reflagged(obj: dict, oid: int, scale: float) -> list[str]:
    """An object's "low confidence" flag as :func:`.quality.with_stability` raises it with the weak-edge
    ``scale``, from its recorded check: the confidence before the stability and evidence factors is
    recovered from the recorded one, then scored again by the product's own rule."""
    ev, stab = obj.get("evidence"), obj.get("stability")
    factor = min(1.0, stab / quality.MIN_STABILITY) if stab is not None else 1.0
    if ev is not None and quality.EVIDENCE_FULL > 0:
        factor *= min(1.0, max(ev, 1e-9) / quality.EVIDENCE_FULL)
    raw = quality.ObjectCheck(None, 0.0, 0, 1.0, obj["confidence"] / factor if factor > 0 else 0.0)
    return quality.with_stability(raw, [] if stab is None else [stab], f"object {oid}", evidence=ev,
                                  evidence_scale=scale).flags


def evidence_replay(doc: dict, references=EVIDENCE_REFERENCES) -> dict:
    """The flags (with the set check) had the exemplar pass judged weak edges against the set's exemplars.

    Replays the recorded checks, no model run: per seed's run, the exemplar set is the cases of
    confidence >= ``EXEMPLAR_MIN_CONFIDENCE``, the ``MAX_EXEMPLARS`` most confident
    (:func:`promptonce.engine.set_check.evidence_scales` of their evidence, with each reference);
    each object of a case the exemplar pass redid (``passes`` 2) has its weak-edge term and "low
    confidence" flag computed again with the scaled threshold (as :func:`.quality.with_stability`).
    The recorded evidence of an exemplar is its final pass's: the first pass's for the cases of
    confidence >= 0.90, which the exemplar pass does not redo. ``"recorded"``: the flags as recorded;
    ``"unscaled"``: rebuilt the same way without a scale (a file recorded under older flag rules
    differs from its recorded flags there; compare the references with it)."""
    out: dict = {}
    for ref in ("recorded", "unscaled", *references):
        flag, dice_ = [], []
        for r in doc["runs"]:
            cases = r["cases"]
            good = [c for c in cases if c.get("objects") and (c.get("confidence") or 0) >= EXEMPLAR_MIN_CONFIDENCE]
            top = sorted(good, key=lambda c: -c["confidence"])[:MAX_EXEMPLARS]
            scales = {} if isinstance(ref, str) else evidence_scales(
                [{int(k): o.get("evidence") for k, o in c["objects"].items()} for c in top], reference=ref)
            setf = proportion_flags(_set_areas(cases))
            for i, c in enumerate(cases):
                flags = list(c["flags"])
                if ref != "recorded" and c.get("passes") == 2 and c.get("objects"):
                    flags = [f for f in flags if "low confidence" not in f]
                    for k, o in c["objects"].items():
                        if o.get("confidence") is not None:
                            flags += _reflagged(o, int(k), scales.get(int(k), 1.0))
                flag.append(bool(flags) or i in setf)
                dice_.append(c["dice"])
        out[str(ref)] = recall_precision(np.array(flag), np.array(dice_))
    return out


def analyse(path: Path) -> dict:
    """The measures' power to find failures, from a result file of this benchmark."""
    doc = json.loads(path.read_text())
    cases = [dict(c, seed=r["seed"]) for r in doc["runs"] for c in r["cases"]]
    measures = [case_measures(c) for c in cases]
    d = np.array([c["dice"] for c in cases])
    seeds = np.array([c["seed"] for c in cases])
    flagged = np.array([bool(c["flags"]) for c in cases])
    fail = d < FAIL_BELOW
    out = {"file": path.name, "cases": len(cases), "failures_below_0.85": int(fail.sum()),
           "below_0.90": int((d < BAD_BELOW).sum()),
           "product_flags": {"recall": float((flagged & fail).sum() / max(fail.sum(), 1)),
                             "precision": float((flagged & (d < BAD_BELOW)).sum() / max(flagged.sum(), 1)),
                             "flagged": int(flagged.sum())},
           "flags_by_kind": flags_by_kind(cases),
           "auc_each_measure": {k: confidence_auc(list(d), list(-risk(measures, [k])[:, 0]))
                                for k in measures[0]},
           "set_check": set_check(doc),
           "evidence_reference_replay": evidence_replay(doc),
           "logistic_leave_one_seed_out": {}}
    for name, keys in FEATURE_SETS.items():
        x, y = risk(measures, keys), fail.astype(float)
        p = np.zeros(len(d))
        for s in np.unique(seeds):
            held = seeds == s
            p[held] = logistic_p(fit_logistic(x[~held], y[~held]), x[held])
        out["logistic_leave_one_seed_out"][name] = {
            "auc": confidence_auc(list(d), list(-p)),
            **{f"at_recall_{t:.2f}": at_recall(p, d, t) for t in (0.80, 0.85, 0.90)}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    add_seed_args(ap, seeds=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flag_features.json")
    ap.add_argument("--analyse", type=Path, default=None, help="analyse a result file of this benchmark (no model run)")
    args = ap.parse_args(argv)
    if args.analyse is not None:
        result = analyse(args.analyse)
        target = args.analyse.with_name(args.analyse.stem + "_analysis.json")
        target.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    ds = Dataset(vols)
    eng, t_encode = encoded_engine(vols)
    rec = Recorder()
    rec.install()
    seeds = seed_indices(len(vols), args.seeds, args.seed_images)
    runs = []
    for s in seeds:
        sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
        rec.by_case.clear()
        rec.passes.clear()
        t = time.perf_counter()
        results = [r for r in segment(ds, sp, scope="dataset", engine=eng)]
        seconds = time.perf_counter() - t
        seed_labels = next(r.labels for r in results if r.volume_index == s)
        sa, sb = int((seed_labels == 1).sum()), int((seed_labels == 2).sum())
        seed_ratio = sa / sb if sa and sb else None
        rows = []
        for r in results:
            if r.volume_index == s:
                continue
            v = vols[r.volume_index]
            gray = eng.frames(v, None).gray(0)
            e = rec.final(v.name, r.confidence, list(r.flags))
            rows.append({"image": paths[r.volume_index].name, "dice": float(dice(r.labels > 0, refs[r.volume_index])),
                         "confidence": r.confidence, "flags": list(r.flags), "passes": e.get("passes"),
                         "objects": e.get("objects", {}), **rec.passes.get(v.name, {}),
                         **mask_measures(gray, r.labels, seed_ratio)})
        dd = np.array([x["dice"] for x in rows])
        runs.append({"seed": paths[s].name, "seed_index": args.start + s, "dice_mean": float(dd.mean()),
                     "below_0.85": int((dd < 0.85).sum()), "seconds": seconds, "cases": rows})
        print(f"seed {paths[s].name}: Dice {dd.mean():.4f}, {int((dd < 0.85).sum())} below 0.85, "
              f"{sum(bool(x['flags']) for x in rows)} flagged, {seconds:.0f} s", flush=True)
    write_result(args.out, argv, args.start, len(paths), encode_seconds=t_encode, runs=runs)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
