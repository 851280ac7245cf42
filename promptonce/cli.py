"""Command line: ``promptonce segment | evaluate | report``.

Exit codes: 0 success, 2 bad input (a :class:`~promptonce.errors.InputError`), 1 any other
PromptOnce error (model missing, weights, cancelled), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cli_cluster import add_executor_options, wants_cluster
from .errors import InputError, PromptError, PromptOnceError
from .types import Box, Dataset, ObjectPrompt, Point, SlicePrompt

log = logging.getLogger("promptonce")

SEGMENT_EPILOG = """\
Prompts: coordinates are (x, y) pixels of the displayed image (x = column, y = row; origin top-left).
  --box X0,Y0,X1,Y1 draws a box; --point X,Y[,1|0] clicks (1 = object, 0 = background).
  Without --object, each --box is a new object (two lungs = two boxes) and the points join the first one.
  --object N starts object N: the --point/--box options after it belong to it.
  --image K is the image the prompt is on, counting every slice of every input in order (default: the
  centre slice of the first input).
examples:
  promptonce segment ct.nii.gz --box 120,80,300,260 --out out/
  promptonce segment xrays/ --scope dataset --object 1 --box 40,60,240,420 --object 2 --box 270,60,470,420 --out out/
"""


class _Ordered(argparse.Action):
    """Keeps --object/--point/--box in the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, "prompt_items", None) or []
        items.append((self.dest, values))
        namespace.prompt_items = items


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{what} {text!r} is not a list of numbers; write it like {_example(what)}.") from None
    if len(vals) not in n:
        raise InputError(f"{what} {text!r} needs {' or '.join(map(str, n))} numbers; write it like {_example(what)}.")
    return vals


def _example(what: str) -> str:
    return {"--box": "--box 10,20,110,140", "--point": "--point 64,80 or --point 10,10,0"}.get(what, what)


def build_prompt(items: Sequence[tuple[str, str]], image: int, dataset: Dataset) -> SlicePrompt:
    """Turns the ordered --object/--point/--box options into a SlicePrompt on flat image index ``image``."""
    objects: dict[int, dict[str, Any]] = {}
    explicit = any(kind == "object" for kind, _ in items)
    current = 1
    n_boxes = 0
    for kind, val in items:
        if kind == "object":
            try:
                current = int(val)
            except ValueError:
                raise InputError(f"--object {val!r} must be an integer label (1..255).") from None
            continue
        if kind == "box":
            if not explicit:
                n_boxes += 1
                current = n_boxes  # each box is its own object
            obj = objects.setdefault(current, {"points": [], "box": None})
            if obj["box"] is not None:
                raise InputError(f"object {current} has two boxes; put --object N before each object's box.")
            obj["box"] = Box(*_floats(val, (4,), "--box"))
        else:
            p = _floats(val, (2, 3), "--point")
            target = current if explicit else 1
            objects.setdefault(target, {"points": [], "box": None})["points"].append(
                Point(p[0], p[1], int(p[2]) if len(p) == 3 else 1)
            )
    objs = tuple(
        ObjectPrompt(points=tuple(o["points"]), box=o["box"], object_id=oid)
        for oid, o in sorted(objects.items())
        if o["points"] or o["box"] is not None
    )
    if not objs:
        raise PromptError("Give a prompt: --box X0,Y0,X1,Y1 and/or --point X,Y (see promptonce segment --help).")
    v, k = flat_to_index(dataset, image)
    return SlicePrompt(objs, slice_index=k, volume_index=v)


def flat_to_index(dataset: Dataset, image: int | None) -> tuple[int, int]:
    """Maps a flat image number over the whole dataset to ``(volume_index, slice_index)``.

    None -> the centre slice of the first volume.
    """
    if image is None:
        return 0, dataset[0].n_slices // 2
    if image < 0:
        raise InputError(f"--image {image} must be >= 0.")
    total = 0
    for v in range(len(dataset)):
        n = dataset[v].n_slices
        if image < total + n:
            return v, image - total
        total += n
    raise InputError(f"--image {image} does not exist: the inputs hold {total} images (0..{total - 1}).")


def _progress(quiet: bool, total: int, desc: str):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


def cmd_segment(args: argparse.Namespace) -> int:
    from .annotation import slices_in_scope
    from .engine import make_engine, segment
    from .engine.quality import QualityReport
    from .io.readers import load_dataset
    from .io.writers import ResultWriter, write_json, write_metrics_csv
    from .metrics import MetricAccumulator

    dataset = load_dataset(args.inputs, images_as=args.images_as, time_index=args.time_index)
    prompt = build_prompt(getattr(args, "prompt_items", None) or [], args.image, dataset)
    out = Path(args.out)
    refs = _pair(dataset, args.reference) if args.reference else None
    if wants_cluster(args):
        from .cli_cluster import segment_distributed

        return segment_distributed(args, dataset, prompt, refs)
    total = slices_in_scope(args.scope, lambda i: dataset[i].n_slices, len(dataset), prompt.volume_index)
    engine = make_engine(prompt, args.model, "auto")
    writer = ResultWriter(out, objects=[o.object_id for o in prompt.objects],
                          label_names={o.object_id: o.name for o in prompt.objects if o.name})  # fmt: skip
    bar = _progress(args.quiet, total, "segment")
    t0 = time.perf_counter()
    n_images = 0
    preds: dict[int, np.ndarray] = {}
    acc = MetricAccumulator() if refs is not None else None
    rows: list[dict[str, Any]] = []
    quality = QualityReport({o.object_id: o.name for o in prompt.objects if o.name})
    current = None
    try:
        for res in segment(dataset, prompt, scope=args.scope, engine=engine, window=args.window, strategy=args.strategy):
            vol = dataset[res.volume_index] if current is None or current[0] != res.volume_index else current[1]
            if current is None or current[0] != res.volume_index:
                if current is not None and acc is not None:
                    _score_case(acc, rows, current, refs, preds)
                current = (res.volume_index, vol)
            writer.add(res, vol)
            quality.add(res)
            if acc is not None:
                preds.setdefault(res.volume_index, np.zeros(vol.shape, np.uint8))[res.slice_index] = res.labels
            n_images += 1
            if bar is not None:
                bar.update(1)
        if current is not None and acc is not None:
            _score_case(acc, rows, current, refs, preds)
    finally:
        if bar is not None:
            bar.close()
    written = writer.close()
    seconds = time.perf_counter() - t0
    log.info("wrote %d mask files to %s in %.1f s", len(written), out / "masks", seconds)
    report = quality.to_dict()
    write_json(report, out / "quality.json")
    if report["flagged_cases"] and not args.quiet:
        print(f"{report['flagged_cases']} case(s) flagged; review first: {', '.join(report['review_first'][:5])}"
              f" (see {out / 'quality.json'})", file=sys.stderr)
    if acc is not None:
        by_name = {c["case"]: c for c in report["cases"]}
        for r in rows:
            q = by_name.get(r.get("name"), {})
            r["confidence"], r["flags"] = q.get("confidence"), q.get("flags", [])
        s = acc.summary()
        summary = {
            "model": engine.backend.info.name, "scope": args.scope, "prompts": 1, "images": n_images,
            "dice_mean": s.get("dice_mean"), "jaccard_mean": s.get("jaccard_mean"),
            "dice_slice_mean": s.get("dice_slice_mean"), "seconds": round(seconds, 3),
            "images_per_second": round(n_images / seconds, 4) if seconds else None,
        }
        write_json({"summary": summary, "review_first": report["review_first"], "cases": rows}, out / "metrics.json")
        write_metrics_csv([{**r, "flags": "; ".join(r["flags"])} for r in rows], out / "metrics.csv")
        if not args.quiet:
            print(f"dice_mean={summary['dice_mean']:.4f} jaccard_mean={summary['jaccard_mean']:.4f}", file=sys.stderr)
    return 0


def _score_case(acc, rows, current, refs, preds) -> None:
    from .io.readers import load_reference

    i, vol = current
    ref = load_reference(refs[i], vol)
    pred = preds.pop(i)
    c, r, s = vol.spacing
    row = dict(acc.add(vol.name, pred != 0, ref.array != 0, spacing=(s, r, c)))
    row.update({"images": int(vol.n_slices), "prompts": 1 if i == 0 else 0, "flags": []})
    rows.append(row)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, evaluate, write_summary_line
    from .io.readers import load_dataset, load_reference, reference_paths_json

    images = load_dataset(args.images, images_as=args.images_as, time_index=args.time_index)
    if args.limit:
        images = images[: args.limit]
    ref_paths = _pair(images, args.references)
    refs = [(lambda p=p, i=i: load_reference(p, images[i])) for i, p in enumerate(ref_paths)]
    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",")]
        except ValueError:
            raise InputError(f"--labels {args.labels!r} must be integers like 1,2.") from None
    if wants_cluster(args):
        from .cli_cluster import evaluate_distributed

        return evaluate_distributed(args, images, ref_paths, labels)
    seed_case, sweep = _seed_options(args, len(images))
    cfg = EvalConfig(
        model=args.model, scope=args.scope, labels=labels, seed=args.seed, protocol=args.protocol,
        strategy=args.strategy, window=args.window, jitter_px=args.jitter, rng_seed=args.rng_seed,
        write_masks=not args.no_masks, seed_case=seed_case, seed_sweep=sweep,
    )
    total = sum(images[i].n_slices for i in range(len(images))) if len(images) < 2000 else 0
    total *= max(sweep, 1)
    bar = _progress(args.quiet, total, f"evaluate {args.scope}")
    last = [0]

    def progress(done: int, _total: int, _name: str) -> None:
        if bar is not None:
            bar.update(done - last[0])
            last[0] = done

    try:
        result = evaluate(images, refs, args.out, cfg, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    from .io.writers import write_json

    write_json(
        {
            "command": "evaluate",
            "images": [str(p) for p in args.images],
            "references": [str(p) for p in args.references],
            "reference_paths": reference_paths_json(images.names, ref_paths),
            "config": {k: v for k, v in vars(args).items() if k not in ("func",) and _jsonable(v)},
        },
        Path(args.out) / "run.json",
    )
    if not args.quiet:
        print(write_summary_line(result), file=sys.stderr)
    return 0


def _seed_options(args: argparse.Namespace, n_cases: int) -> tuple[int, int]:
    """Checks --seed-case / --seed-sweep against the scope and the number of cases; returns (seed_case, sweep)."""
    seed_case = 0 if args.seed_case is None else args.seed_case
    sweep = args.seed_sweep or 0
    if (args.seed_case is not None or sweep) and args.scope != "dataset":
        used = "--seed-case" if args.seed_case is not None else "--seed-sweep"
        raise InputError(
            f"{used} chooses which case is prompted for the whole dataset; it needs --scope dataset "
            f"(got --scope {args.scope}: every {'image' if args.scope == 'image' else 'volume'} gets its own prompt)."
        )
    if not 0 <= seed_case < n_cases:
        raise InputError(
            f"--seed-case {seed_case} is out of range: the dataset has {n_cases} case(s) after --limit, "
            f"numbered 0..{n_cases - 1} in load order; choose one of them."
        )
    if sweep < 0 or sweep > n_cases:
        raise InputError(
            f"--seed-sweep {sweep} must be between 1 and the number of cases ({n_cases}); "
            "it runs once per seed case, spread evenly over the dataset."
        )
    return seed_case, sweep


def _pair(images: Dataset, references: Sequence[str]) -> list[Path | tuple[Path, ...]]:
    """Pairs references with images by file name; falls back to the given order when every
    reference is a file and the counts match (e.g. ``image.nii.gz`` with ``labels.nii.gz``).

    Files of one name in different ``--references`` folders are parts of one reference (a left-lung
    and a right-lung folder): labels 1, 2, ... in the order the folders were given."""
    from .io.readers import pair_references

    try:
        return pair_references(images, references, parts=True)
    except InputError:
        paths = [Path(r) for r in references]
        if len(paths) == len(images) and all(p.is_file() for p in paths):
            log.warning("references paired with images in the order given (their names differ)")
            return paths
        raise


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list))


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from .report import write_report
    except ImportError:
        raise PromptOnceError("The report module is not available in this build.") from None
    path = write_report([Path(p) for p in args.runs], Path(args.out))
    if not args.quiet:
        print(f"report written to {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptonce", description="Segment whole volumes and datasets from one prompt.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="auto", help="auto | litemedsam | mobilesam | sam_vit_b|l|h | sam2.1_hiera_t ...")
        sp.add_argument("--scope", choices=["image", "volume", "dataset"], default="volume")
        sp.add_argument("--window", default=None, help="CT window: lung | mediastinum | abdomen | bone | brain | W,L | auto")
        sp.add_argument("--strategy", choices=["transfer", "chain"], default="transfer", help="dataset-scope strategy")
        sp.add_argument("--images-as", choices=["auto", "stack", "set"], default="auto",
                        help="2D images: a set of independent images (default) or one stack (a volume)")
        sp.add_argument("--time-index", type=int, default=None, help="time point to use from a 4D input")
        sp.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")

    s = sub.add_parser("segment", help="segment inputs from one prompt", epilog=SEGMENT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("inputs", nargs="+", help="NIfTI, DICOM folder/zip/files, images, .npy/.npz")
    s.add_argument("--out", required=True, help="output folder (masks/ and metrics go there)")
    s.add_argument("--point", action=_Ordered, dest="point", metavar="X,Y[,1|0]")
    s.add_argument("--box", action=_Ordered, dest="box", metavar="X0,Y0,X1,Y1")
    s.add_argument("--object", action=_Ordered, dest="object", metavar="N")
    s.add_argument("--image", type=int, default=None, metavar="K", help="flat index of the prompted image")
    s.add_argument("--reference", nargs="+", default=None, help="reference masks (paired by name) for metrics")
    common(s)
    add_executor_options(s)
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="simulate a user from reference masks and score")
    e.add_argument("--images", nargs="+", required=True)
    e.add_argument("--references", nargs="+", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--labels", default=None, help="reference labels forming the foreground, e.g. 1,2 (default: all)")
    e.add_argument("--seed", choices=["largest", "centre", "first"], default="largest", help="seed slice in a volume")
    e.add_argument("--protocol", choices=["oneclick", "box", "click", "nmt"], default="oneclick")
    e.add_argument("--jitter", type=float, default=0.0, help="simulated prompt imprecision in pixels")
    e.add_argument("--rng-seed", type=int, default=0)
    e.add_argument("--limit", type=int, default=0, help="evaluate only the first N cases")
    e.add_argument("--seed-case", type=int, default=None, metavar="N",
                   help="dataset scope: the case the simulated user prompts (0-based, load order; default 0)")
    e.add_argument("--seed-sweep", type=int, default=0, metavar="K",
                   help="dataset scope: run once for each of K seed cases spread evenly over the dataset (from "
                        "--seed-case on) and report the mean, worst and spread of the Dice; images are encoded once")
    e.add_argument("--no-masks", action="store_true", help="do not write predicted masks")
    common(e)
    add_executor_options(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="HTML/Markdown report from evaluate run folders")
    r.add_argument("runs", nargs="+")
    r.add_argument("--out", required=True)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PromptOnceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
