"""Every candidate the click path weighed on a slice, with its features and its Dice (issue 12, clicks).

A click on the box-only LiteMedSAM becomes a box: on a cross-section the click path boxes each guess of
the object's extent (the click model's candidates, the intensity region, boxes grown from the click,
and on a crop around one structure the boxes of :data:`promptonce.engine.click_choice.CROP_BOXES`) and
keeps one (:func:`promptonce.engine.click_choice.choose`; for a single click on a crop, the candidates
vote instead: :func:`promptonce.engine.click_choice.vote`). ``clicks.py`` scores only the kept mask;
this benchmark also records what was passed over, so a candidate source or a ranking can be judged
offline: for each chosen slice, the ``oneclick`` Dice (the reference box and its click), the ``click``
Dice (the product's choice), and every candidate (source, model score, stability, agreement with the
click's region, edge evidence, whether it holds the click, area, Dice with the reference).

The summary per set compares the product's choice with the same choice made without the crop boxes
(the candidates are built in order and the crop boxes come last, so leaving them out replays the
earlier path's choice, from features rounded to four decimals), with all of them under ``choose``'s
weights for a crop (no stability term: ``click_choice.CROP_STABILITY_WEIGHT``) and with the best
candidate (oracle), on the slices with one click (several clicks: the candidates of all objects are
recorded together). On a crop the product no longer measures stability, so a recording made since
can replay only the crop weights; since the crop vote, ``click`` there is the vote, and the crop weights'
column is the ranking it replaced. ``--replay FILE`` recomputes a recording's summary.

    .venv/bin/python benchmarks/click_candidates.py --only hippocampus --first-case 0 --cases 30 --slices 1 \\
        --out benchmarks/results/click_candidates_hippocampus_tune.json     # the largest slices, ~1 min

``--slices 1`` takes each volume's largest slice (where ``--scope volume`` puts its prompt); more
take slices spread as in ``clicks.py``. Skips with a message when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from clicks import DATA, SETS, chosen_slices, dice, iter_volumes  # noqa: E402


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per set: mean Dice of the reference box, the product's click, the choice without the crop boxes,
    and the best candidate."""
    from promptonce.engine.click_choice import ClickCandidate, choose

    def chosen(cands: list[dict], keep, crop: bool = False) -> float:  # noqa: ANN001
        """The Dice of the candidate ``choose`` keeps among those ``keep`` lets through, with ``choose``'s
        ``crop`` weights (NaN: none left, the product then keeps the click model's own mask, which is not
        recorded; or a stability the choice needs was not recorded)."""
        kept = [c for c in cands if keep(c["source"])]
        if not kept or (not crop and any(c["stability"] is None for c in kept)):
            return float("nan")
        objs = [ClickCandidate(np.zeros((1, 1), bool), c["score"], c["stability"], c["contains"], c["region"],
                               c["edge"], str(i)) for i, c in enumerate(kept)]
        return kept[int(choose(objs, crop=crop).source)]["dice"]

    def mean(values: list[float]) -> float | None:
        finite = [v for v in values if np.isfinite(v)]
        return round(float(np.mean(finite)), 4) if finite else None

    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name and r["candidates"]]
        single = [r for r in rs if r["objects"] == 1]  # one object: its candidates are the slice's
        out[name] = {
            "slices": len(rs),
            "oneclick": round(float(np.mean([r["oneclick"] for r in rs])), 4),
            "click": round(float(np.mean([r["click"] for r in rs])), 4),
            "single_object_slices": len(single),
            "without_crop_boxes": mean([chosen(r["candidates"], lambda s: not s.startswith("crop box"))
                                        for r in single]),
            "with_crop_boxes": mean([chosen(r["candidates"], lambda s: True) for r in single]),
            "with_crop_boxes_crop_weights": mean([chosen(r["candidates"], lambda s: True, crop=True)
                                                  for r in single]),
            "oracle": mean([max(c["dice"] for c in r["candidates"]) for r in single]),
        }
    return out


def recording_args(ap: argparse.ArgumentParser, out: str) -> None:
    """The options :func:`record` takes (shared with ``click_fusion.py``), and ``--out`` / ``--data``."""
    ap.add_argument("--first-case", type=int, default=0, help="skip this many cases of every set")
    ap.add_argument("--cases", type=int, default=3, help="volumes per set")
    ap.add_argument("--slices", type=int, default=1, help="1: each volume's largest slice; more: spread")
    ap.add_argument("--min-frac", type=float, default=0.25, help="slices whose object is >= this of its max area")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / out))
    ap.add_argument("--data", default=str(DATA), help="the shared data folder")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="set names: " + ", ".join(s[0] for s in SETS[1:]))
    recording_args(ap, "click_candidates.json")
    ap.add_argument("--replay", default=None, help="a recorded JSON: print its summary recomputed, run nothing")
    ap.add_argument("--extra-crop-boxes", default="[]",
                    help='JSON list of (half_x, half_y) fractions tried besides CROP_BOXES, e.g. "[[0.4, 0.4]]"')
    args = ap.parse_args()
    if args.replay:
        _print(summary(json.loads(Path(args.replay).read_text())["slices"]))
        return 0
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: real data not found at {data}")
        return 0
    t0 = time.perf_counter()
    rows = list(record(data, args.only, args.first_case, args.cases, args.slices, args.min_frac,
                       extra_crop_boxes=json.loads(args.extra_crop_boxes)))
    result = {"benchmark": "benchmarks/click_candidates.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "args": vars(args), "seconds": round(time.perf_counter() - t0, 1), "summary": summary(rows),
              "slices": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    _print(result["summary"])
    return 0


def record(data: Path, only, first: int, cases: int, slices: int, min_frac: float,  # noqa: ANN001
           masks: bool = False, extra_crop_boxes=()):  # noqa: ANN001, ANN201
    """Yields one row per chosen slice: the reference box's and the click's Dice and every candidate the
    click path weighed. ``masks``: each candidate also keeps its ``mask`` and the row its ``reference``
    (bool arrays, for ``click_fusion.py``; not JSON). ``extra_crop_boxes``: ``(half_x, half_y)`` fractions
    added to the product's ``click_choice.CROP_BOXES`` while recording (a what-if; restored after)."""
    import promptonce.engine.click_choice as click_choice
    import promptonce.engine.predict as predict_module
    from promptonce.engine import make_engine, segment
    from promptonce.evaluate import reference_prompt
    from promptonce.types import Dataset

    seen: list = []
    choose, vote = predict_module.choose, predict_module.vote

    def keep(candidates, crop=False):  # noqa: ANN001, ANN202 - records what the click path weighed, then chooses
        seen.append(list(candidates))
        return choose(candidates, crop=crop)

    def keep_vote(candidates, point):  # noqa: ANN001, ANN202 - the same where the candidates vote (a crop)
        seen.append(list(candidates))
        return vote(candidates, point)

    predict_module.choose, predict_module.vote = keep, keep_vote
    crop_boxes = click_choice.CROP_BOXES
    click_choice.CROP_BOXES = crop_boxes + tuple(tuple(b) for b in extra_crop_boxes)
    try:
        eng = None
        for name, images, refs, labels, _ in SETS:
            if name == "cxr_shenzhen" or (only and name not in only):
                continue
            for vol, ref, fg in iter_volumes(data, images, refs, labels, first, cases):
                if slices == 1:
                    ks = [int(np.argmax(fg.reshape(fg.shape[0], -1).sum(axis=1)))]
                else:
                    ks = chosen_slices(fg, slices, min_frac)
                for k in ks:
                    click = reference_prompt(ref[k], labels=labels, protocol="click", slice_index=k)
                    box = reference_prompt(ref[k], labels=labels, protocol="oneclick", slice_index=k)
                    if click is None or box is None:
                        continue
                    if eng is None:
                        eng = make_engine(click, "auto", "auto")
                        eng.cache_size = 16
                    (rb,) = list(segment(Dataset([vol]), box, scope="image", engine=eng))
                    seen.clear()
                    (rc,) = list(segment(Dataset([vol]), click, scope="image", engine=eng))
                    cands = [{"source": c.source, "score": round(c.score, 4),
                              "stability": None if c.stability is None else round(c.stability, 4),
                              "contains": c.contains,
                              "region": None if c.region_agreement is None else round(c.region_agreement, 4),
                              "edge": round(c.edge, 4), "area": int(c.mask.sum()),
                              "dice": round(dice(c.mask, fg[k]), 4), **({"mask": c.mask} if masks else {})}
                             for group in seen for c in group]
                    row = {"set": name, "case": vol.name, "slice": k, "shape": list(ref.shape[1:]),
                           "pixel_mm": [round(v, 3) for v in vol.spacing[:2]], "reference_area": int(fg[k].sum()),
                           "objects": len(click.objects), "oneclick": round(dice(rb.labels != 0, fg[k]), 4),
                           "click": round(dice(rc.labels != 0, fg[k]), 4), "candidates": cands}
                    if masks:
                        row["reference"] = fg[k]
                    print(f"  {name} {vol.name}:{k} oneclick {row['oneclick']:.4f} click {row['click']:.4f} "
                          f"({len(cands)} candidates)", file=sys.stderr, flush=True)
                    yield row
    finally:
        predict_module.choose, predict_module.vote = choose, vote
        click_choice.CROP_BOXES = crop_boxes


def _print(summ: dict[str, dict]) -> None:
    print("| set | slices | oneclick | click | one object: without crop boxes | with | with, crop weights "
          "| best candidate |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summ.items():
        print(f"| {name} | {s['slices']} | {s['oneclick']} | {s['click']} | {s['without_crop_boxes']} | "
              f"{s['with_crop_boxes']} | {s['with_crop_boxes_crop_weights']} | {s['oracle']} |")


if __name__ == "__main__":
    sys.exit(main())
