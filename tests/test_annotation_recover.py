"""The annotation session's recovery rules (issue 13): background clicks remove what they land on,
undo steps back any action (objects too), the prompt count counts what the person did, reference
labels by name, and the per-slice rows kept from a run. Fake backend: milliseconds."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest

import promptonce as po
from promptonce.annotation import AnnotationSession
from promptonce.errors import InputError

from test_annotation import MODEL, make_phantom, session


@pytest.fixture
def phantom() -> tuple[po.Volume, np.ndarray]:
    """The CT phantom of ``test_annotation`` (two lungs, labels 1 and 2)."""
    return make_phantom()


def test_background_click_on_the_preview_changes_it(phantom):
    s = session(phantom)
    p = s.add_point(0, 4, 20, 30)
    before = p.mask.copy()
    assert before[30, 22], "the preview covers the pixel the background click will land on"
    q = s.add_point(0, 4, 22, 30, positive=False)
    assert q.mask is not None and not np.array_equal(q.mask, before), q.message
    assert not q.mask[30, 22], "the pixel clicked as background is no longer in the mask"
    assert [pt.label for pt in s.drafts[(0, 4)][1].points] == [1, 0]


def test_background_click_on_a_result_slice_refines_the_result(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    list(s.run("volume"))
    k = 6  # a propagated slice: no prompt of its own
    shown = s.slice_labels(0, k).copy()
    assert shown[30, 20] == 1
    p = s.add_point(0, k, 20, 30, positive=False)
    assert p.mask is not None, p.message  # before: "background clicks only refine it" and nothing changed
    after = s.slice_labels(0, k)
    assert not np.array_equal(after, shown) and after[30, 20] == 0


def test_background_click_goes_to_the_object_it_lands_on(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)  # object 1: right lung
    s.add_object("left lung")
    s.add_point(0, 4, 44, 30)  # object 2
    assert s.active == 2
    s.add_point(0, 4, 20, 30, positive=False)  # lands on object 1 while object 2 is active
    assert [pt.label for pt in s.drafts[(0, 4)][1].points] == [1, 0]
    assert [pt.label for pt in s.drafts[(0, 4)][2].points] == [1]
    assert s.slice_labels(0, 4)[30, 20] == 0 and s.slice_labels(0, 4)[30, 44] == 2


def test_undo_after_one_corner_then_the_next_click_works(phantom):
    s = session(phantom)
    s.click(0, 4, 8, 10, "box")
    assert s.undo().kind == "corner" and (0, 4) not in s.drafts
    p = s.add_point(0, 4, 20, 30)
    assert p.mask is not None and p.mask[30, 20]
    # a click while a corner is pending ends the box being drawn; undo brings the corner back
    s.click(0, 2, 8, 10, "box")
    s.add_point(0, 2, 20, 30)
    assert s.drafts[(0, 2)][1].corner is None
    assert s.undo().kind == "point" and s.drafts[(0, 2)][1].corner == (8.0, 10.0)


def test_undo_removes_an_added_object(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    oid = s.add_object("left lung")
    s.add_point(0, 4, 44, 30)
    assert s.undo().kind == "point"
    act = s.undo()
    assert act.kind == "object" and act.object_id == oid and act.key == (-1, -1)
    assert [o.object_id for o in s.objects] == [1] and s.active == 1
    assert list(s.drafts[(0, 4)]) == [1]
    assert s.undo().kind == "point" and s.undo() is None


def test_prompt_count_counts_clicks_and_boxes(phantom):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    s.add_point(0, 4, 44, 30)  # two clicks on two lungs, one slice
    assert s.prompt_count() == 2
    s.add_box(0, 2, po.Box(8, 10, 32, 50))
    assert s.prompt_count() == 3  # a box is one prompt (its two corners are one box)
    s.undo()
    assert s.prompt_count() == 2
    list(s.run("volume"))
    assert s.score()["prompts"] == 2


def test_reference_labels_by_name(phantom):
    vol, labels = phantom
    ref = po.Volume(labels.astype(np.uint8), name="ref", label_names={1: "right lung", 2: "left lung"})
    s = AnnotationSession(vol, references=[ref], model=MODEL)
    assert s.set_reference_selection("left") == (2,)
    assert s.set_reference_selection("Right Lung, 2") == (1, 2)
    assert s.set_reference_selection("") is None and s.ref_labels is None
    assert s.set_reference_selection(None) is None
    with pytest.raises(InputError, match="left lung"):
        s.set_reference_selection("liver")


def test_export_has_per_slice_rows_and_named_png_labels(phantom, tmp_path):
    s = session(phantom)
    s.add_point(0, 4, 20, 30)
    list(s.run("volume"))
    assert s.confidence and all(0.0 <= c <= 1.0 for d in s.confidence.values() for c in d.values())
    files = s.export(tmp_path / "out")
    rows = list(csv.DictReader(open(next(f for f in files if f.name == "slices.csv"))))
    assert {r["slice"] for r in rows} == {str(k) for k in range(1, 9)}
    r = next(r for r in rows if r["slice"] == "5")
    assert r["case"] == "phantom" and r["object"] == "1" and int(r["area_px"]) > 0
    assert float(r["area_mm2"]) == pytest.approx(int(r["area_px"]) * vol_pixel_mm2(phantom))
    assert 0.0 <= float(r["dice"]) <= 1.0 and r["confidence"] != ""
    # 2D images: the PNG zip names the objects
    img = po.Volume(phantom[0].array[4:5], name="img")
    s2 = AnnotationSession([img, po.Volume(phantom[0].array[3:4], name="img2")], model=MODEL)
    s2.add_point(0, 0, 20, 30)
    s2.objects[0].name = "right lung"
    list(s2.run("dataset"))
    assert s2.score()["unit"] == "images"
    files = s2.export(tmp_path / "out2")
    with zipfile.ZipFile(next(f for f in files if f.name == "masks_png.zip")) as zf:
        table = zf.read("labels.csv").decode()
    assert "right lung" in table
    rows = list(csv.DictReader(io.StringIO(next(f for f in files if f.name == "slices.csv").read_text())))
    assert len(rows) == 2 and rows[0]["area_mm2"] == ""


def vol_pixel_mm2(phantom) -> float:
    sp = phantom[0].spacing
    return float(sp[0] * sp[1])


def test_a_dragged_box_is_one_action(phantom):
    s = session(phantom)
    s.click(0, 4, 1, 1, "box")  # a corner left pending is dropped by the drag
    p = s.drag_box(0, 4, po.Box(8, 10, 32, 50))
    d = s.drafts[(0, 4)][1]
    assert p.mask is not None and (d.box.x0, d.box.y0, d.box.x1, d.box.y1) == (8, 10, 32, 50) and d.corner is None
    assert [a.kind for a in s.history] == ["corner", "box"] and s.prompt_count() == 1
    s.undo()  # the whole box at once: back to the pending corner it replaced
    assert s.drafts[(0, 4)][1].box is None and s.drafts[(0, 4)][1].corner == (1.0, 1.0)
