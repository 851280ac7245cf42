"""The Shenzhen X-ray ranges the X-ray benchmarks run on: images 0-99 were the tuning set, 100 on are held out.

Shared by ``cxr_seed_sweep.py``, ``side_errors.py``, ``transfer_cost.py`` and ``candidate_choice.py``:
the data folder (``$PROMPTONCE_SHARED_DATA/cxr_shenzhen``, default ``../shared/data/cxr_shenzhen``),
the ``--start``/``--count`` options and the loading of one range of images with their reference
masks. Also :func:`write_json`, the JSON writing of benchmarks that are not about X-rays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROMPTONCE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cxr_shenzhen"


def add_range_args(ap: argparse.ArgumentParser, count: int, start: int = 100) -> None:
    """``--start`` (first image of the sorted names) and ``--count``."""
    ap.add_argument("--start", type=int, default=start, help="first image (sorted names); 0-99 were the tuning set")
    ap.add_argument("--count", type=int, default=count)


def add_seed_args(ap: argparse.ArgumentParser, seeds: int) -> None:
    """``--seeds`` (that many seed images spread evenly over the range) and ``--seed-images`` (chosen ones)."""
    ap.add_argument("--seeds", type=int, default=seeds, help="seed images spread evenly over the range")
    ap.add_argument("--seed-images", default=None, help="comma-separated seed images (indices in the range)")


def load_range(start: int, count: int) -> tuple[list[Path], list, list[np.ndarray]] | None:
    """``(image paths, Volumes, reference masks bool (rows, cols))`` of images ``start`` to ``start + count - 1``.

    None, after saying so on stderr, when the data folder is absent (the benchmark is skipped).
    """
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found", file=sys.stderr)
        return None
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from PIL import Image

    from promptonce.io.readers import load

    paths = sorted((DATA / "images").glob("*.png"))[start:start + count]
    vols = [load(p) for p in paths]
    refs = [np.asarray(Image.open(DATA / "masks" / p.name).convert("L")) > 127 for p in paths]
    return paths, vols, refs


def encoded_engine(vols: list) -> tuple:
    """``(engine, seconds)``: a LiteMedSAM engine whose cache holds every image's embedding, and the time
    encoding them took (the runs after it reuse the embeddings: each image is encoded once)."""
    import time

    from promptonce.engine import make_engine

    eng = make_engine(None, "litemedsam", None)
    eng.cache_size = len(vols) + 4
    t0 = time.perf_counter()
    for v in vols:
        eng.embedding(eng.backend, v, 0, None)
    return eng, time.perf_counter() - t0


def lungs(ref: np.ndarray) -> list[np.ndarray]:
    """The two largest connected components (8-connected) of a reference mask, largest first."""
    from scipy import ndimage

    lab, n = ndimage.label(ref, np.ones((3, 3)))
    sizes = ndimage.sum(ref, lab, range(1, n + 1))
    return [lab == (i + 1) for i in np.argsort(-np.asarray(sizes))[:2]]


def write_json(out: Path, doc: dict, newline: bool = True) -> None:
    """Writes ``doc`` to ``out`` as indented JSON (its folder created), the way every benchmark keeps its result."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + ("\n" if newline else ""))


def write_result(out: Path, argv: list[str] | None, start: int, count: int, **fields) -> None:
    """Writes a benchmark's JSON to ``out``: the command that made it, the image range, then ``fields``."""
    doc = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
           "images": f"cxr_shenzhen {start}-{start + count - 1}", **fields}
    write_json(out, doc, newline=False)


def with_overrides(config, overrides: dict):
    """``config`` (a ``PropagationConfig``) with the fields of ``overrides`` (parsed JSON: lists become tuples)."""
    import dataclasses

    return dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def first_passes(eng, vols: list, refs: list[np.ndarray], s: int) -> tuple:
    """The product's first pass from seed ``s`` (its reference box) over every other image, and the exemplar
    set it yields: ``(DatasetTransfer, {image index: CaseOutcome}, exemplars)``. The start of the exemplar
    benchmarks (``exemplar_sources``, ``second_pass_keep``, ``exemplar_rounds``, ``atlas_vote``)."""
    from promptonce.engine.transfer import DatasetTransfer
    from promptonce.evaluate import reference_prompt

    sp = reference_prompt(refs[s].astype(np.uint8), labels=None, protocol="box", slice_index=0, volume_index=s)
    transfer = DatasetTransfer(eng, vols[s], sp)
    first = {i: transfer.first_pass(vols[i], i) for i in range(len(vols)) if i != s}
    return transfer, first, DatasetTransfer.select_exemplars(o.exemplar for o in first.values())


def seed_indices(n: int, count: int, images: str | None = None) -> list[int]:
    """The seed images of a sweep over ``n`` images: ``images`` ("0,465", indices within the range) when
    given, else ``count`` spread evenly from the first to the last."""
    if images:
        return sorted({int(x) for x in images.split(",")})
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, count)})


def sweep_seeds(args: argparse.Namespace, argv: list[str] | None, run_one) -> int:
    """The seed loop of the X-ray sweeps: loads ``args.start``/``args.count``, encodes every image once,
    then for each seed (``args.seeds`` spread, or ``args.seed_images``) calls ``run_one(engine, vols,
    refs, seed)`` (a dict with a ``summary``), names the seed, prints the summary and rewrites
    ``args.out`` with every run so far. Returns the exit status (0, also when the data is absent)."""
    loaded = load_range(args.start, args.count)
    if loaded is None:
        return 0
    paths, vols, refs = loaded
    eng, t_encode = encoded_engine(vols)
    runs = []
    for s in seed_indices(len(vols), args.seeds, args.seed_images):
        run = run_one(eng, vols, refs, s)
        run["seed"] = paths[s].name
        runs.append(run)
        print(run["seed"], run["summary"], flush=True)
        write_result(args.out, argv, args.start, len(paths), encode_seconds=t_encode, runs=runs)
    return 0
