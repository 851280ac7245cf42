"""Prompt-position robustness: how Dice moves when the simulated user's box or click is off by J pixels.

After the SAM medical-imaging studies that jittered the prompts derived from the reference masks: for
every jitter size ``J`` (pixels, default 0, 5, 10, 20) and RNG seed, each point coordinate and each
box corner moves by an independent uniform shift in ``[-J, +J]`` (:func:`promptonce.prompts.jitter`),
and :func:`promptonce.evaluate.evaluate` scores the result against the reference masks.

Data: the first ``--cases`` (default 10) Shenzhen chest X-rays of ``../shared/data/cxr_shenzhen``
(512 x 512; both lungs one label, so the box protocol draws one box per lung), scope ``image`` (a
prompt on every image), protocols ``box`` and ``click``. Without the data folder the script says so
and exits 0 without writing anything. ``$PROMPTONCE_SHARED_DATA`` points elsewhere.

Speed: the images are read once and one engine is shared by every run, so each image is embedded once
per model ("embed once, prompt many"); the jittered runs cost only the prompt decoder. ``J = 0`` is
deterministic and run once. A time budget (``--budget-s``, default 540 s) keeps the script under 10
minutes on a busy CPU: runs go J = 0 first, then seed by seed over every J and protocol, so a cut
leaves every J with at least its first seed; what was left out is listed under ``not_run``.

Output (``benchmarks/results/robustness.json``): per protocol and ``J``, the runs (seed, Dice mean,
Jaccard mean), and over all case x seed Dice values ``mean``, ``std``, ``min``, ``max``, ``median``,
the spread of the per-seed means (``seed_mean_std``) and the mean paired change from ``J = 0``
(``delta_vs_J0``), with the machine, versions and date.

Usage::

    .venv/bin/python benchmarks/robustness.py                # auto model (LiteMedSAM, MobileSAM for clicks)
    .venv/bin/python benchmarks/robustness.py --cases 20 --seeds 0,1,2,3,4 --jitters 0,5,10,20,40
    # the click-only figures in results/robustness_click.json (a click costs ~10x a box on CPU here):
    .venv/bin/python benchmarks/robustness.py --protocols click --cases 5 --jitters 0,10,20 --seeds 0,1 \
        --budget-s 480 --out benchmarks/results/robustness_click.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SHARED = Path(os.environ.get("PROMPTONCE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _stats(values: list[float]) -> dict[str, Any]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not a.size:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "median": None}
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)), 4) if a.size > 1 else None,
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4), "median": round(float(np.median(a)), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10, help="first N Shenzhen images")
    p.add_argument("--jitters", default="0,5,10,20", help="jitter sizes J in pixels")
    p.add_argument("--seeds", default="0,1,2", help="RNG seeds for J > 0")
    p.add_argument("--protocols", default="box,click", help="simulated-user protocols (box, click, oneclick)")
    p.add_argument("--model", default="auto")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="skip the runs that would end after this many seconds (the JSON lists those left out)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "robustness.json"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    folder = SHARED / "cxr_shenzhen"
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        print(f"robustness: skipped, the real data is not at {folder} (set PROMPTONCE_SHARED_DATA to the folder "
              "holding cxr_shenzhen/images and cxr_shenzhen/masks); nothing written.", file=sys.stderr)
        return 0

    from throughput import machine_info, versions

    from promptonce.engine import Engine, make_engine
    from promptonce.evaluate import EvalConfig, evaluate
    from promptonce.io.readers import load_dataset, load_reference, pair_references
    from promptonce.types import Dataset

    jitters = [float(v) for v in args.jitters.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    protocols = [v.strip() for v in args.protocols.split(",") if v.strip()]
    started = _dt.datetime.now(_dt.timezone.utc)
    t_all = time.perf_counter()

    ds = load_dataset(folder / "images")
    n = min(args.cases, len(ds))
    vols = [ds[i] for i in range(n)]  # held, so the engine's embedding cache (keyed by volume) hits
    images = Dataset(vols)
    ref_paths = pair_references(images, [folder / "masks"])
    refs = [load_reference(rp, v) for rp, v in zip(ref_paths, vols)]
    built = make_engine(None, args.model, "auto")  # a box model gets its click model here
    # cache every image's embeddings, for both models, across all runs
    engine = Engine(built.backend, click_backend=built.click_backend, config=built.config, cache_size=4 * n + 8)

    # Run order: J = 0 of every protocol, then seed by seed, J by J, protocols interleaved, so that when the
    # time budget runs out every J already has its first seed in every protocol.
    plan = [(proto, 0.0, seeds[0]) for proto in protocols if 0.0 in jitters]
    plan += [(proto, j, seed) for seed in seeds for j in jitters if j != 0 for proto in protocols]
    done: dict[tuple[str, float], list[tuple[int, dict[str, Any], float]]] = {}
    not_run = []
    last_secs: dict[str, float] = {}  # a protocol's latest run time predicts its next one
    for proto, j, seed in plan:
        if time.perf_counter() - t_all + last_secs.get(proto, 0.0) > args.budget_s:
            not_run.append({"protocol": proto, "jitter_px": j, "seed": seed})
            continue
        t0 = time.perf_counter()
        cfg = EvalConfig(model=args.model, scope="image", protocol=proto, jitter_px=j, rng_seed=seed,  # type: ignore[arg-type]
                         write_masks=False)
        res = evaluate(images, refs, None, cfg, engine=engine)
        secs = last_secs[proto] = time.perf_counter() - t0
        done.setdefault((proto, j), []).append((seed, res, secs))
        print(f"{proto:>8} J={j:>4g} seed={seed}: Dice {res['summary']['dice_mean']:.4f} ({secs:.0f} s)",
              file=sys.stderr, flush=True)
    if not_run:
        print(f"robustness: time budget of {args.budget_s:.0f} s reached; {len(not_run)} runs left out "
              "(listed in the JSON under not_run)", file=sys.stderr)

    results: dict[str, Any] = {}
    for proto in protocols:
        base = done.get((proto, 0.0))
        base_cases = {c["name"]: c["dice"] for c in base[0][1]["cases"]} if base else None
        per_j: dict[str, Any] = {}
        for j in jitters:
            entries = done.get((proto, j))
            if not entries:
                continue
            case_dice, deltas, runs = [], [], []
            for seed, res, secs in entries:
                by_case = {c["name"]: c["dice"] for c in res["cases"]}
                case_dice += list(by_case.values())
                if base_cases is not None and j != 0:
                    deltas += [by_case[k] - base_cases[k] for k in by_case
                               if by_case[k] is not None and base_cases.get(k) is not None]
                runs.append({"seed": seed, "dice_mean": round(res["summary"]["dice_mean"], 4),
                             "jaccard_mean": round(res["summary"]["jaccard_mean"], 4), "seconds": round(secs, 1)})
            seed_means = [r["dice_mean"] for r in runs]
            per_j[f"{j:g}"] = {
                "jitter_px": j,
                "runs": runs,
                "dice_cases_x_seeds": _stats(case_dice),
                "seed_mean_std": round(float(np.std(seed_means, ddof=1)), 4) if len(seed_means) > 1 else None,
                "delta_vs_J0": _stats(deltas) if deltas else None,
            }
        results[proto] = per_j

    model_name = engine.backend.info.name + (f" (+ {engine.click_backend.info.name} for clicks)"
                                             if engine.click_backend is not None else "")
    doc = {
        "benchmark": "prompt robustness (jittered simulated prompts)",
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "data": f"first {n} images of {folder.name} (512x512 chest X-rays, lung masks)",
        "cases": [v.name for v in vols],
        "scope": "image",
        "model": model_name,
        "jitter": "uniform, each point coordinate and box corner independently in [-J, +J] px, clipped to the image",
        "results": results,
        "not_run": not_run,
        "budget_s": args.budget_s,
        "machine": machine_info(),
        "versions": versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} ({doc['total_seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
