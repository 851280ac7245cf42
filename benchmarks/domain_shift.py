"""One prompt for X-rays that look like another hospital's: the same images cropped, bordered, resized, re-curved.

The held-out sets the product is checked on come from other hospitals: other detectors, fields of
view, image sizes, borders and intensity curves. ``../shared`` holds one hospital's X-rays, all
512 x 512. This benchmark makes "other hospitals" out of them: each image (and its reference mask)
gets its own random, seeded transform, and the dataset scope (one reference box on the seed image,
transferred to every other image) is scored beside the per-image reference box on the same
transformed images, so the gap between the two says what the transfer loses under the shift.

Flags: ``flagged`` / ``flag_recall`` / ``flag_precision`` count the engine's flags of each case;
``with_set_check`` adds the set check (:func:`promptonce.engine.set_check.proportion_flags`), as
``promptonce evaluate`` and ``segment`` do.

Shifts (``--shifts``; each image draws its own parameters from a generator seeded by its index):

* ``none``: the images as they are;
* ``resize``: the longer side scaled to 384-900 pixels (aspect kept; ``--size N``: to N for every image);
* ``crop``: 0-12% cut from the top and bottom and 0-10% from the sides (never into the lungs:
  at least 3% of the image is kept around the reference), then resized as ``resize``;
* ``border``: ``crop``, then a black border of 0-8% of the size on each side, then resized;
* ``all``: ``border`` plus an intensity curve (gamma 0.6-1.6);
* ``soft`` / ``hard``: one intensity curve for the whole set, gamma 0.7 / 1.4, nothing else changed
  (a hospital whose films are processed softer or harder than these: the edges of every image weaker
  or stronger at once).

One LiteMedSAM engine, each transformed set encoded once; images 0-99 were the tuning set, 100 on
are held out.

    .venv/bin/python benchmarks/domain_shift.py --start 100 --count 60 --seed-images 0 \\
        --out benchmarks/results/domain_shift_report.json        # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _xrays import add_range_args, add_seed_args, load_range, seed_indices, write_result  # noqa: E402

SHIFTS = ("none", "resize", "crop", "border", "all", "soft", "hard")
#: the gamma of the set-wide curves
SET_GAMMA = {"soft": 0.7, "hard": 1.4}


def shifted(image: np.ndarray, ref: np.ndarray, shift: str, index: int,
            size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8, reference bool)`` of one X-ray under ``shift`` (module docstring), drawn from a
    generator seeded by ``index`` so every run transforms each image the same way; ``size``: the
    longer side of every image instead of a random one."""
    from PIL import Image

    if shift == "none":
        return image, ref
    if shift in SET_GAMMA:
        return np.round(255.0 * (image.astype(np.float32) / 255.0) ** SET_GAMMA[shift]).astype(np.uint8), ref
    rng = np.random.default_rng(1000 + index)
    img = image.astype(np.float32)
    h, w = img.shape
    if shift in ("crop", "border", "all"):
        ys, xs = np.nonzero(ref)
        keep = 0.03
        t = int(min(rng.uniform(0, 0.12) * h, max(ys.min() - keep * h, 0)))
        b = int(min(rng.uniform(0, 0.12) * h, max(h - 1 - ys.max() - keep * h, 0)))
        left = int(min(rng.uniform(0, 0.10) * w, max(xs.min() - keep * w, 0)))
        right = int(min(rng.uniform(0, 0.10) * w, max(w - 1 - xs.max() - keep * w, 0)))
        img, ref = img[t:h - b, left:w - right], ref[t:h - b, left:w - right]
    if shift in ("border", "all"):
        ph, pw = img.shape
        pad = ((int(rng.uniform(0, 0.08) * ph), int(rng.uniform(0, 0.08) * ph)),
               (int(rng.uniform(0, 0.08) * pw), int(rng.uniform(0, 0.08) * pw)))
        img, ref = np.pad(img, pad), np.pad(ref, pad)
    if shift == "all":
        img = 255.0 * (img / 255.0) ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    longer = rng.uniform(384, 900)
    s = (size or longer) / max(img.shape)
    wh = (max(int(round(img.shape[1] * s)), 8), max(int(round(img.shape[0] * s)), 8))
    img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(wh, Image.BILINEAR))
    ref = np.asarray(Image.fromarray(ref.astype(np.uint8) * 255).resize(wh, Image.NEAREST)) > 127
    return img, ref


@contextlib.contextmanager
def _scales_seen():
    """The weak-edge threshold scales the exemplar pass used (:func:`promptonce.engine.set_check.evidence_scales`):
    a list of the distinct ``{object id: scale}`` it returned during the ``with`` block."""
    from promptonce.engine import transfer as transfer_module

    real, seen = getattr(transfer_module, "evidence_scales", None), []
    if real is None:  # an engine from before the scaling
        yield seen
        return

    def noting(evidence):
        out = real(evidence)
        if out not in seen:
            seen.append(out)
        return out

    transfer_module.evidence_scales = noting
    try:
        yield seen
    finally:
        transfer_module.evidence_scales = real


def run_shift(vols: list, refs: list[np.ndarray], shift: str, seeds: list[int], size: int | None = None) -> dict:
    """Per-image reference box and dataset scope from each seed, on the images under ``shift``."""
    from promptonce.engine import make_engine, segment
    from promptonce.engine.set_check import object_areas, proportion_flags
    from promptonce.evaluate import reference_prompt
    from promptonce.flagscore import FAIL_BELOW, flag_score
    from promptonce.metrics import dice
    from promptonce.types import Dataset, Volume

    pairs = [shifted(v.array[0], r, shift, i, size) for i, (v, r) in enumerate(zip(vols, refs))]
    data = [Volume(img[None], name=v.name, source_format="image", modality=v.modality)
            for (img, _), v in zip(pairs, vols)]
    masks = [m for _, m in pairs]
    eng = make_engine(None, "litemedsam", None)
    eng.cache_size = len(data) + 4

    def prompt(i: int, volume_index: int):
        return reference_prompt(masks[i].astype(np.uint8), labels=None, protocol="box", slice_index=0,
                                volume_index=volume_index)

    per_image = [float(dice(next(iter(segment(Dataset([data[i]]), prompt(i, 0), scope="image", engine=eng))).labels > 0,
                            masks[i])) for i in range(len(data))]
    sides = [max(m.shape) for m in masks]
    out = {"shift": shift, "longer_side_range": [min(sides), max(sides)],
           "per_image_box_dice": float(np.mean(per_image)), "seeds": []}
    for s in seeds:
        t = time.perf_counter()
        with _scales_seen() as scales:
            results = [r for r in segment(Dataset(data), prompt(s, s), scope="dataset", engine=eng)
                       if r.volume_index != s]
        seconds = time.perf_counter() - t
        d = np.array([float(dice(r.labels > 0, masks[r.volume_index])) for r in results])
        fs = flag_score(list(d), [bool(r.flags) for r in results])
        # the set check, which `promptonce evaluate`/`segment` add to the engine's flags (quality.json)
        set_flags = proportion_flags({r.volume_name: object_areas(r.labels) for r in results})
        fs_set = flag_score(list(d), [bool(r.flags) or r.volume_name in set_flags for r in results])
        out["seeds"].append({
            "seed": data[s].name, "dice_mean": float(d.mean()), "gap_to_box_points": round(100 * (np.mean(
                [per_image[r.volume_index] for r in results]) - d.mean()), 2),
            "below_0.85": fs.failures, "flagged": fs.flagged,
            "flag_recall": fs.recall, "flag_precision": fs.precision,
            "with_set_check": {"flagged": fs_set.flagged, "flag_recall": fs_set.recall,
                               "flag_precision": fs_set.precision, "set_flags": set_flags},
            "seconds": round(seconds, 1),
            "evidence_scales": scales,
            "cases": {r.volume_name: round(float(x), 4) for r, x in zip(results, d)},
            "flags": {r.volume_name: list(r.flags) for r in results if r.flags}})
        print(f"{shift}: seed {data[s].name} Dice {d.mean():.4f} (box {out['per_image_box_dice']:.4f}), "
              f"{fs.failures} below {FAIL_BELOW}, {fs.flagged} flagged ({fs_set.flagged} with the set check)",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_range_args(ap, count=60)
    add_seed_args(ap, seeds=1)
    ap.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS))
    ap.add_argument("--size", type=int, default=None,
                    help="the longer side of every shifted image (default: 384-900, each image its own)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "domain_shift.json")
    args = ap.parse_args(argv)
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    seeds = seed_indices(len(vols), args.seeds, args.seed_images)
    runs = []
    for shift in args.shifts:
        runs.append(run_shift(vols, refs, shift, seeds, args.size))
        write_result(args.out, argv, args.start, len(paths), runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
