"""What each way of levelling a pair of lung bases would give, at every levelling a dataset-scope run triggers.

When a transferred pair of lungs ends more than ``config.pair_base_gap`` of their height apart,
:func:`promptonce.engine.pairs.level_bases` tries the shorter lung reaching down to the other's lower
end and the longer one ending at the shorter one's (``up``). This benchmark runs the product's dataset
scope over a range of Shenzhen X-rays from a few seeds, with the *earlier* rule in force (reaching down
only, so every run takes the same path whatever rule is studied), and at each levelling records every
try: the lung's Dice against the reference lung on its side of the image before and after, the change in
edge evidence (:func:`promptonce.engine.quality.boundary_evidence`) and in the lower side's contrast,
plus a third try ending the longer lung halfway (``up_half``). Then it scores acceptance rules offline:
the summed change in lung Dice, and how many levellings each rule helps and hurts (by more than 0.01).

    .venv/bin/python benchmarks/level_tries.py --start 0 --count 100 --seed-images 0,11 \\
        --out benchmarks/results/level_tries_tune.json        # ~10 minutes on 2 cores

A levelling's immediate effect is what is measured; the case's final mask also goes through the
exemplar pass. Tuning was done on images 0-99; report on images >= 100.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, encoded_engine, load_range, write_result  # noqa: E402

from promptonce.engine import pairs, segment  # noqa: E402
from promptonce.engine import transfer as transfer_module  # noqa: E402
from promptonce.engine.predict import predict  # noqa: E402
from promptonce.engine.quality import boundary_evidence, extent, side_band, side_contrast  # noqa: E402
from promptonce.evaluate import reference_prompt  # noqa: E402
from promptonce.metrics import dice  # noqa: E402
from promptonce.prompts import box_from_mask  # noqa: E402
from promptonce.types import Dataset, ObjectPrompt  # noqa: E402

#: (name, tries considered, extra evidence gain a raise needs) scored offline.
RULES = [("down only (earlier rule)", ("down",), 0.0)] + [
    (f"down or up, raise gain >= {m}", ("down", "up"), m) for m in (0.0, 0.005, 0.01, 0.02, 0.03, 0.05)
] + [(f"down or up_half, raise gain >= {m}", ("down", "up_half"), m) for m in (0.0, 0.01)]


def _side_reference(mask: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The reference on the same side of the image's middle column as ``mask``'s centre."""
    mid = ref.shape[1] // 2
    out = ref.copy()
    if np.nonzero(mask)[1].mean() < mid:
        out[:, mid:] = False
    else:
        out[:, :mid] = False
    return out


def _bottom_contrast(gray: np.ndarray, mask: np.ndarray) -> float | None:
    return side_contrast(gray, mask, side_band(extent(mask)))["bottom"] if mask.any() else None


def choose(tries: list[dict], kinds, raise_gain: float) -> dict | None:
    """The try a rule keeps: the largest evidence gain among ``kinds`` that reaches 0 (``raise_gain`` for raises)."""
    best = None
    for t in tries:
        if t["kind"] not in kinds:
            continue
        gain = t["evidence_new"] - t["evidence_old"]
        if gain >= (raise_gain if t["kind"].startswith("up") else 0.0) and (best is None or gain > best[0]):
            best = (gain, t)
    return None if best is None else best[1]


def score_rules(records: list[dict]) -> list[dict]:
    out = []
    for name, kinds, m in RULES:
        changes = []
        for r in records:
            t = choose(r["tries"], kinds, m)
            changes.append(0.0 if t is None else t["dice_new"] - t["dice_old"])
        c = np.array(changes) if changes else np.zeros(0)
        out.append({"rule": name, "summed_lung_dice_change": float(c.sum()), "helped": int((c > 0.01).sum()),
                    "hurt": int((c < -0.01).sum()), "levellings": len(records)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=100, start=0)
    ap.add_argument("--seed-images", default="0,11", help="comma-separated seed images (indices within the range)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "level_tries.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    by_name = {v.name: i for i, v in enumerate(vols)}
    eng, _ = encoded_engine(vols)
    current: dict = {}
    records: list[dict] = []
    real_level = transfer_module.DatasetTransfer._level_bases

    def noting_case(self, volume, *a, **k):
        current["case"] = by_name[volume.name]
        return real_level(self, volume, *a, **k)

    def probe(eng, emb, gray, masks, point_of):
        gap = pairs.base_gap(*masks.values())
        if gap is None or gap <= eng.config.pair_base_gap:
            return None
        ref = refs[current["case"]]
        short_id, long_id = pairs.shorter(masks)
        short_end, long_end = (float(np.nonzero(masks[o])[0].max()) for o in (short_id, long_id))
        tries, down = [], None
        for kind, oid, end in (("down", short_id, long_end), ("up", long_id, short_end),
                               ("up_half", long_id, 0.5 * (short_end + long_end))):
            old = masks[oid]
            pad = 0.02 * extent(old)
            box = replace(box_from_mask(old, margin=pad, shape=old.shape), y1=min(end + pad, old.shape[0] - 1.0))
            pred = predict(eng, eng.backend, emb, ObjectPrompt(box=box, object_id=oid))
            new, r = pred.best, _side_reference(old, ref)
            tries.append({"kind": kind, "object_id": oid, "dice_old": float(dice(old, r)),
                          "dice_new": float(dice(new, r)) if new.any() else 0.0,
                          "evidence_old": boundary_evidence(gray, old), "evidence_new": boundary_evidence(gray, new),
                          "bottom_contrast_old": _bottom_contrast(gray, old), "bottom_contrast_new": _bottom_contrast(gray, new)})
            if kind == "down":
                down = (oid, new, float(np.max(pred.scores)))
        records.append({"seed": current["seed"], "case": paths[current["case"]].name, "gap": gap,
                        "reference_gap": pairs.base_gap(*[_side_reference(m, ref) for m in masks.values()]),
                        "tries": tries})
        t = tries[0]  # the earlier rule: reach down when the evidence does not fall
        return down if down[1].any() and t["evidence_new"] >= t["evidence_old"] else None

    transfer_module.DatasetTransfer._level_bases = noting_case
    transfer_module.level_bases = probe
    try:
        for s in (int(x) for x in args.seed_images.split(",")):
            current["seed"] = paths[s].name
            sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
            for _ in segment(Dataset(vols), sp, scope="dataset", engine=eng):
                pass
            print(f"seed {paths[s].name}: {len(records)} levellings so far", flush=True)
    finally:
        transfer_module.DatasetTransfer._level_bases = real_level
        transfer_module.level_bases = pairs.level_bases
    rules = score_rules(records)
    for r in rules:
        print(f"{r['rule']:40s} {r['summed_lung_dice_change']:+.3f} (helped {r['helped']}, hurt {r['hurt']})")
    write_result(args.out, argv, args.start, len(paths), rules=rules, records=records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
