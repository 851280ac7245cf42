"""The annotation session driven from Python, as a notebook or a plugin would: fake backend (fast), and
one slow run with the real CPU models."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import promptonce as po
from promptonce.annotation import AnnotationSession, correction_range, slices_in_scope
from promptonce.errors import InputError, PromptError, TooLargeError
from promptonce.metrics import dice, jaccard, per_slice

REPO = Path(__file__).resolve().parents[1]
MODEL = "fake"


def _make_assets():
    spec = importlib.util.spec_from_file_location("make_assets_for_annotation", REPO / "scripts" / "make_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_assets = _make_assets()


def make_phantom() -> tuple[po.Volume, np.ndarray]:
    """A 64 x 64 x 8 CT phantom: right lung (label 1) centred near (20, 30), left lung (2) near (44, 30)."""
    hu, labels = make_assets.ct_phantom(64, 8)
    return po.Volume(hu.astype(np.float32), name="phantom", modality="CT"), labels


@pytest.fixture
def phantom() -> tuple[po.Volume, np.ndarray]:
    """:func:`make_phantom` as a fixture."""
    return make_phantom()


def session(phantom, **kw) -> AnnotationSession:
    vol, labels = phantom
    return AnnotationSession(vol, references=[labels], model=MODEL, **kw)


def test_import_loads_neither_torch_nor_gradio():
    code = (
        "import sys, promptonce; s = promptonce.AnnotationSession; "
        "print('torch' in sys.modules, 'gradio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert po.AnnotationSession is AnnotationSession


def test_click_returns_the_preview_at_once(phantom):
    s = session(phantom)
    assert s.n_cases == 1 and s.cases[0].shape == (8, 64, 64)
    p = s.add_point(0, 4, 20, 30)
    assert p.mask is not None and p.mask[30, 20], p.message
    ref = phantom[1][4]
    assert (ref[p.mask] == 1).mean() > 0.8, "the preview lies in the right lung"
    assert s.drafts[(0, 4)][1].mask is p.mask
    # the slice's previews as a label map; nothing is a result yet
    assert np.array_equal(s.preview(0, 4) == 1, p.mask)
    assert not s.has_results() and np.array_equal(s.slice_labels(0, 4) == 1, p.mask)
    # points outside the image are clamped into it (image pixels, no display scale)
    s.add_point(0, 4, -10, 500, positive=False)
    assert s.drafts[(0, 4)][1].points[-1].x == 0.0 and s.drafts[(0, 4)][1].points[-1].y == 63.0


def test_background_clicks_alone_do_not_seed(phantom):
    s = session(phantom)
    p = s.add_point(0, 4, 2, 2, positive=False)
    assert p.mask is None and "positive" in p.message
    with pytest.raises(PromptError, match="Nothing to run from"):
        list(s.run("volume"))


def test_objects_have_ids_names_and_their_own_prompts(phantom):
    s = session(phantom)
    s.objects[0].name = "right lung"
    s.add_point(0, 4, 20, 30)
    oid = s.add_object("left lung")
    assert oid == 2 and s.active == 2 and s.object(2).name == "left lung"
    assert s.add_object("left lung") == 3 and s.object(3).name == "left lung (3)"
    s.set_active(2)
    s.add_point(0, 4, 44, 30)
    labels = s.preview(0, 4)
    assert labels[30, 20] == 1 and labels[30, 44] == 2
    with pytest.raises(PromptError):
        s.set_active(9)
    # a prompt for a given object, whatever is active
    s.add_point(0, 5, 20, 30, object_id=1)
    assert list(s.drafts[(0, 5)]) == [1] and s.active == 2


def test_undo_steps_back_one_action_whatever_it_was(phantom):
    s = session(phantom)
    first = s.click(0, 4, 8, 10, "box")
    assert first.mask is None and s.drafts[(0, 4)][1].corner == (8.0, 10.0)
    s.click(0, 4, 32, 50, "box")
    d = s.drafts[(0, 4)][1]
    assert (d.box.x0, d.box.y0, d.box.x1, d.box.y1) == (8, 10, 32, 50) and d.corner is None and d.mask is not None
    s.add_point(0, 4, 21, 31, positive=False)
    assert [a.kind for a in s.history] == ["corner", "box", "point"]
    assert s.undo().kind == "point" and s.drafts[(0, 4)][1].points == []
    act = s.undo()  # the second corner: the box goes, the first corner is pending again
    assert act.kind == "box" and s.drafts[(0, 4)][1].box is None and s.drafts[(0, 4)][1].corner == (8.0, 10.0)
    # the next box click completes the box from that pending corner
    s.click(0, 4, 30, 40, "box")
    assert s.drafts[(0, 4)][1].box is not None and s.drafts[(0, 4)][1].corner is None
    s.undo()
    assert s.undo().kind == "corner"
    assert (0, 4) not in s.drafts and s.undo() is None and s.prompted_slices() == []
    # add_box is two corners: undone in two steps
    s.add_box(0, 2, po.Box(8, 10, 32, 50))
    s.undo()
    s.undo()
    assert not s.drafts


def test_two_corners_on_one_pixel_drop_the_box(phantom):
    s = session(phantom)
    s.click(0, 4, 8, 10, "box")
    p = s.click(0, 4, 8.4, 10.2, "box")
    assert "same pixel" in p.message and s.drafts[(0, 4)][1].box is None and s.drafts[(0, 4)][1].corner is None
    assert s.undo().kind == "same_corner" and s.drafts[(0, 4)][1].corner == (8.0, 10.0)


def test_volume_run_reports_progress_and_scores_through_the_accumulator(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    reports = list(s.run("volume", progress_every_s=0.0))
    assert [r.done for r in reports[:-1]] == list(range(1, 9))
    assert reports[-1].finished and reports[-1].message == "done" and reports[-1].done == 8
    assert s.done[0].all() and s.run_info.scope == "volume" and not s.pending
    pred = np.asarray(s.results[0]) > 0
    ref = phantom[1] > 0
    out = s.score()
    # the same numbers as the metric functions give by hand
    assert out["cases"][0]["dice"] == pytest.approx(dice(pred, ref))
    assert out["cases"][0]["jaccard"] == pytest.approx(jaccard(pred, ref))
    assert out["dice_mean"] == pytest.approx(dice(pred, ref))
    ps = per_slice(pred, ref)
    assert [r["dice"] for r in out["per_slice"]] == pytest.approx([ps[r["slice"] - 1] for r in out["per_slice"]])
    assert out["prompts"] == 1 and out["per_slice_prompts"] == int(ref.any(axis=(1, 2)).sum())
    assert out["saved_percent"] == pytest.approx(100 * (1 - 1 / out["per_slice_prompts"]))
    # scoring one reference label: only the right lung was prompted, so it scores higher
    both = out["dice_mean"]
    assert s.set_reference_labels([1]) == (1,)
    right = s.score()
    assert right["reference_labels"] == [1] and right["dice_mean"] > both + 0.2
    assert right["dice_mean"] == pytest.approx(dice(pred, phantom[1] == 1))
    assert s.set_reference_labels(None) is None and s.score()["dice_mean"] == pytest.approx(both)
    with pytest.raises(InputError):
        s.set_reference_labels([0])


def test_image_scope_keeps_what_was_previewed(phantom):
    s = session(phantom)
    p4 = s.add_point(0, 4, 20, 30)
    p6 = s.add_point(0, 6, 44, 30)
    reports = list(s.run("image"))
    assert reports[-1].finished and reports[-1].total == 2 == reports[-1].done
    assert s.done[0].tolist() == [k in (4, 6) for k in range(8)]
    assert np.array_equal(np.asarray(s.results[0][4]) == 1, p4.mask)
    assert np.array_equal(np.asarray(s.results[0][6]) == 1, p6.mask)


def test_a_run_on_some_slices_of_a_volume_is_scored_on_those_slices(phantom):
    from promptonce.ui.messages import summary_markdown

    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    s.add_point(0, 6, 44, 30)
    list(s.run("image"))
    pred, ref = np.asarray(s.results[0]) > 0, phantom[1] > 0
    out = s.score()
    assert out["partly_segmented"] == 1
    assert out["dice_mean"] == pytest.approx(dice(pred[[4, 6]], ref[[4, 6]]))  # not the other 6 reference slices
    assert out["dice_mean"] > dice(pred, ref) + 0.3
    assert [r["slice"] for r in out["per_slice"]] == [5, 7]
    assert [r["dice"] for r in out["per_slice"]] == pytest.approx([dice(pred[k], ref[k]) for k in (4, 6)])
    assert "on the slices segmented only" in summary_markdown(out)
    list(s.run("volume"))
    assert s.score()["partly_segmented"] == 0 and "segmented only" not in summary_markdown(s.score())


def test_a_box_whose_preview_stays_inside_it_is_flagged_in_the_preview_and_the_result():
    """A box around a ring whose (fake) model takes the cavity: the preview says so, and the run flags the slice."""
    yy, xx = np.mgrid[0:64, 0:64]
    r2 = (xx - 32) ** 2 + (yy - 32) ** 2
    ring = (r2 <= 14**2) & (r2 > 8**2)
    arr = np.where(ring, 200.0, np.where(r2 <= 8**2, 20.0, 110.0))[None].repeat(4, 0).astype(np.float32)
    s = AnnotationSession(po.Volume(arr, name="ring"), model=MODEL)
    ys, xs = np.nonzero(ring)
    p = s.add_box(0, 2, po.Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    assert p.mask is not None and "stays inside its box on every side" in p.message, p.message
    list(s.run("image"))
    assert any(k == 2 and "stays inside its box" in text for _, k, text in s.flagged()), s.flagged()


def test_dataset_scope_over_three_cases(phantom):
    vols = [po.Volume(phantom[0].array, name=f"case{i}", modality="CT") for i in range(3)]
    s = AnnotationSession(po.Dataset(vols), references=[phantom[1]] * 3, model=MODEL)
    s.add_point(1, 4, 20, 30)
    final = list(s.run("dataset", strategy="transfer", case=1))[-1]
    assert final.finished and final.total == 24 and final.done == 24
    assert all(s.done[v].all() for v in range(3))
    out = s.score()
    assert [c["case"] for c in out["cases"]] == ["case0", "case1", "case2"]
    assert all(c["dice"] is not None and c["dice"] > 0.3 for c in out["cases"])
    with pytest.raises(InputError, match="strategy"):
        list(s.run("dataset", strategy="sideways"))
    with pytest.raises(InputError, match="scope"):
        list(s.run("everything"))


def test_cancel_keeps_the_slices_finished(phantom):
    s = session(phantom)
    s.add_point(0, 0, 20, 30)
    cancel = threading.Event()
    reports = []
    for p in s.run("volume", cancel=cancel, progress_every_s=0.0):
        reports.append(p)
        if p.done >= 3:
            cancel.set()
    assert reports[-1].finished and reports[-1].message == "stopped"
    n_done = int(s.done[0].sum())
    assert 3 <= n_done < 8 and s.run_info.cancelled
    assert s.score()["cancelled"] and s.score()["slices"] == n_done


def test_correction_reruns_only_its_range(phantom):
    s = session(phantom)
    s.add_point(0, 2, 20, 30)
    list(s.run("volume"))
    before = np.array(s.results[0])
    with pytest.raises(PromptError, match="No correction"):
        list(s.correct())
    # prompted slices 2 and 6 of object 1: a correction on 4 re-runs slices 3..5 only
    s.add_point(0, 6, 20, 30)
    list(s.correct())
    s.add_point(0, 4, 44, 30)  # the other lung, as object 1, on slice 4
    touched = [p.slice_index for p in s.correct() if not p.finished]
    assert sorted(touched) == [3, 4, 5] == list(range(*np.add(correction_range(4, [2, 6], 8), (0, 1))))
    after = np.asarray(s.results[0])
    np.testing.assert_array_equal(after[:3], before[:3])
    assert after[4, 30, 44] == 1 and not np.array_equal(after[4], before[4])
    assert s.correction_seconds > 0


def test_correction_keeps_other_objects(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    s.add_object("left lung")
    s.add_point(0, 4, 44, 30)
    list(s.run("volume"))
    left_before = np.asarray(s.results[0]) == 2
    s.set_active(1)
    s.add_point(0, 6, 20, 30, positive=False)
    s.add_point(0, 6, 20, 36)
    list(s.correct())
    np.testing.assert_array_equal(np.asarray(s.results[0]) == 2, left_before)


def test_correction_range_rule():
    assert correction_range(6, [2, 10], 15) == (3, 9)
    assert correction_range(6, [], 15) == (0, 14)
    assert correction_range(0, [5], 15) == (0, 4)
    assert correction_range(6, [5, 6, 7], 15) == (6, 6)
    assert correction_range(14, [3, 99, -1], 15) == (4, 14)
    with pytest.raises(PromptError):
        correction_range(15, [], 15)


def test_slices_in_scope():
    counts = [5, 7, 1]
    asked: list[int] = []

    def n(i: int) -> int:
        asked.append(i)
        return counts[i]

    assert slices_in_scope("image", n, 3, images=2) == 2 and asked == []
    assert slices_in_scope("volume", n, 3, volume_index=1) == 7 and asked == [1]
    assert slices_in_scope("dataset", n, 3) == 13


def test_reset_keeps_cases_and_objects(phantom):
    s = session(phantom)
    s.add_object("b")
    s.add_point(0, 4, 20, 30)
    list(s.run("volume"))
    s.reset()
    assert not s.drafts and not s.history and not s.has_results() and s.run_info is None
    assert [o.name for o in s.objects] == ["object 1", "b"] and s.n_cases == 1


def test_export_writes_masks_and_metrics(phantom, tmp_path):
    import json

    s = session(phantom)
    assert s.export(tmp_path / "none") == []
    s.add_point(0, 4, 20, 30)
    list(s.run("volume"))
    files = s.export(tmp_path / "out")
    names = {p.name for p in files}
    assert {"phantom_mask.nii.gz", "metrics.json", "metrics.csv", "phantom_overlay.gif"} <= names
    meta = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert meta["summary"]["dice_mean"] == pytest.approx(s.score()["dice_mean"])


def test_files_in_and_results_in_a_working_folder_within_a_quota(tmp_path):
    img, ref = make_assets.write_ct(tmp_path / "in", size=64, n_slices=6, name="ct")
    asked: list[int] = []
    s = AnnotationSession([img], references=[ref], model=MODEL, workdir=tmp_path / "work", quota=asked.append)
    assert s.cases[0].source_format == "nifti" and s.reference(0).shape == (6, 64, 64)
    s.add_point(0, 3, 20, 30)
    list(s.run("volume"))
    assert asked == [6 * 64 * 64] and (tmp_path / "work" / "0.npy").is_file()
    assert isinstance(s.results[0], np.memmap)

    def refuse(n: int) -> None:
        raise TooLargeError(f"{n} bytes do not fit")

    s2 = AnnotationSession([img], model=MODEL, workdir=tmp_path / "work2", quota=refuse)
    s2.add_point(0, 3, 20, 30)
    with pytest.raises(TooLargeError):
        list(s2.run("volume"))
    assert not s2.has_results() and not (tmp_path / "work2" / "0.npy").exists()
    assert s2.score()["has_reference"] is False


def test_bad_input_says_what_to_do(phantom):
    vol, labels = phantom
    with pytest.raises(InputError, match="one per case"):
        AnnotationSession(vol, references=[labels, labels])
    with pytest.raises(InputError, match="No image"):
        AnnotationSession(po.Dataset([]))
    with pytest.raises(InputError):
        AnnotationSession([1, 2])  # type: ignore[list-item]
    s = AnnotationSession(vol, references=[labels[:4]], model=MODEL)
    with pytest.raises(InputError, match="reference mask has shape"):
        s.reference(0)
    with pytest.raises(InputError, match="click mode"):
        s.click(0, 4, 1, 1, "lasso")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="Case 3"):
        s.add_point(2, 0, 1, 1)


@pytest.mark.slow
def test_real_cpu_models_end_to_end(tmp_path):
    """LiteMedSAM (boxes) with MobileSAM (clicks) on the shipped CT phantom: one click, the volume, a score."""
    from promptonce.backends.registry import available_backends

    ok = {info.name for info, available, _ in available_backends() if available}
    if not {"litemedsam", "mobilesam"} <= ok:
        pytest.skip("LiteMedSAM/MobileSAM are not available here")
    img = REPO / "assets" / "ct_phantom" / "ct_phantom.nii.gz"
    ref = REPO / "assets" / "ct_phantom" / "ct_phantom_mask.nii.gz"
    s = AnnotationSession([img], references=[ref], model="auto")
    n = s.cases[0].n_slices
    k = n // 2
    p = s.add_point(0, k, 40, 60)  # the right lung of the 128 px phantom
    assert p.mask is not None and p.mask[60, 40]
    final = list(s.run("volume"))[-1]
    assert final.finished and final.done == n
    s.set_reference_labels([1])
    out = s.score()
    assert out["dice_mean"] > 0.8, out
    files = s.export(tmp_path / "out")
    assert any(f.name.endswith("_mask.nii.gz") for f in files)
