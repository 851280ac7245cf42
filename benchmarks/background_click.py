"""Does a background click remove what it lands on? The annotation session with the real CPU models.

On the 64 x 64 x 8 CT phantom of ``scripts/make_assets.py``, slice 5. A: an object click on the right
lung, then a background click on it. B: two objects (right lung, left lung, one click each), the
right lung active, then a background click on the left lung (it goes to the object it lands on).
Writes ``benchmarks/results/background_click.json``: preview areas and how much of each lung each
preview holds, and the prompt count of B (expected: 3).

Run: ``python benchmarks/background_click.py [--model auto]`` (about 15 s on a busy 2-core CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def state_of(s, k: int, oid: int, right: np.ndarray, left: np.ndarray) -> dict:
    d = s.drafts[(0, k)][oid]
    m = d.mask if d.mask is not None else np.zeros_like(right)
    return {"area_px": int(m.sum()), "right_lung_px": int((m & right).sum()), "left_lung_px": int((m & left).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "background_click.json"))
    args = ap.parse_args()
    import promptonce as po
    from promptonce.annotation import AnnotationSession

    spec = importlib.util.spec_from_file_location("make_assets", REPO / "scripts" / "make_assets.py")
    ma = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ma)
    hu, labels = ma.ct_phantom(64, 8)
    s = AnnotationSession(po.Volume(hu.astype(np.float32), name="phantom", modality="CT"), model=args.model)
    k, right, left = 4, labels[4] == 1, labels[4] == 2

    def state(p) -> dict:
        m = p.mask if p.mask is not None else np.zeros_like(right)
        return {"area_px": int(m.sum()), "right_lung_px": int((m & right).sum()), "left_lung_px": int((m & left).sum()),
                "seconds": round(p.seconds, 3)}  # fmt: skip

    t0 = time.perf_counter()
    out = {"model": args.model, "right_lung_ref_px": int(right.sum()), "left_lung_ref_px": int(left.sum())}
    # A: one object; a background click on it
    out["A_click_right"] = state(s.add_point(0, k, 20, 30))
    out["A_background_on_right"] = state(s.add_point(0, k, 22, 30, positive=False))
    # B: two objects (one per lung); a background click on the left lung goes to the object it lands on
    s.reset()
    s.add_point(0, k, 20, 30)
    s.add_object("left lung")
    out["B_click_left"] = state(s.add_point(0, k, 44, 30))
    s.set_active(1)
    s.add_point(0, k, 44, 30, positive=False)
    out["B_after_background_on_left"] = {
        "left_object": state_of(s, k, 2, right, left), "right_object": state_of(s, k, 1, right, left),
    }  # fmt: skip
    out["B_prompt_count"] = s.prompt_count()
    out["total_seconds"] = round(time.perf_counter() - t0, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
