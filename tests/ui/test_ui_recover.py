"""Errors and recovery in the web app (issue 13), driven without a browser: every event handler gives
Gradio what it expects on every path, a failed load leaves the page usable, the reference-label box
never raises, a 4D input gets a time point control, and the downloads and wording of a run."""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from promptonce.ui import handlers as H  # noqa: E402
from promptonce.ui.events import Events  # noqa: E402
from promptonce.ui.layout import build_page  # noqa: E402

MODEL = "fake"


def disp(ws: H.Workspace, v: int, x: float, y: float) -> tuple[float, float]:
    sx, sy = ws.display_scale(v)
    return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5


@pytest.fixture
def app(store):
    """The page and its events in a Blocks (not launched), on the test's session store."""
    with gr.Blocks() as demo:
        page = build_page([("Fake", MODEL)], [])
        events = Events(page, store)
        events.wire(demo)
    return SimpleNamespace(demo=demo, page=page, events=events, store=store)


def request(sid: str = "t") -> SimpleNamespace:
    return SimpleNamespace(session_hash=sid)


def is_skip(out) -> bool:
    return isinstance(out, dict) and out.get("__type__") == "update" and len(out) == 1


def check_return(out, outputs, name: str) -> None:
    """What Gradio accepts: skip(), a dict keyed by some of the outputs, or one value per output."""
    if is_skip(out) or len(outputs) <= 1:
        return
    if isinstance(out, dict):
        ids = {id(c) for c in outputs}
        assert out, f"{name}: an empty dict (Gradio reads it as one value)"
        assert all(id(k) in ids for k in out), f"{name}: updates a component that is not among its outputs"
        return
    assert isinstance(out, list | tuple) and len(out) == len(outputs), f"{name}: returned {out!r}"


def drive(fn, inputs, outputs, values, req) -> list:
    """Calls a handler as Gradio would (request and event data by keyword) and checks every return."""
    params = inspect.signature(fn).parameters
    kw = {}
    if "request" in params:
        kw["request"] = req
    if "evt" in params:
        kw["evt"] = None
    name = getattr(fn, "__name__", repr(fn))
    try:
        out = fn(*values, **kw)
        outs = list(out) if inspect.isgenerator(out) else [out]
    except gr.Error:
        return []  # a readable message on the page is an expected outcome
    for o in outs:
        check_return(o, outputs, name)
    return outs


def last(out):
    """A generator handler's last update (what the page ends with), or a plain handler's return."""
    return list(out)[-1] if inspect.isgenerator(out) else out


def handlers(demo):
    for bf in demo.fns.values():
        if bf.fn is None or bf.name in ("on_unload",):
            continue
        yield bf


def test_every_event_handler_with_empty_and_unchanged_inputs(app, ct_small):
    req = request()
    fns = list(handlers(app.demo))
    assert len(fns) >= 20
    # nothing loaded, every input empty
    for bf in fns:
        drive(bf.fn, bf.inputs, bf.outputs, [None] * len(bf.inputs), req)
    # a case loaded: empty inputs, then every input at its component's current (initial) value
    sess = app.store.get(req.session_hash)
    H.load_inputs(sess, [ct_small[0]], [ct_small[1]])
    for bf in fns:
        if bf.name == "on_load":
            continue  # (an empty load is tested below; here the case stays loaded)
        drive(bf.fn, bf.inputs, bf.outputs, [None] * len(bf.inputs), req)
        drive(bf.fn, bf.inputs, bf.outputs, [getattr(c, "value", None) for c in bf.inputs], req)
    assert sess.workspace is not None


def test_reference_label_box_unchanged_or_empty_never_raises(app, ct_small):
    ev, p, req = app.events, app.page, request("r")
    H.load_inputs(app.store.get("r"), [ct_small[0]], [ct_small[1]])
    view = [0, 5, "auto", 400, 40, False]
    fn = ev.guard(ev.on_ref_labels)
    outputs = [p.view, p.info, *p.result_outputs]
    for text in ("", None, "", "  "):
        out = fn(text, *view, request=req)
        assert is_skip(out), out  # nothing changed: nothing to update
    out = fn("1", *view, request=req)
    check_return(out, outputs, "on_ref_labels")
    assert is_skip(fn("1", *view, request=req)), "the same text again changes nothing"
    assert not is_skip(fn("", *view, request=req)), "back to every label"
    with pytest.raises(gr.Error, match="not a label number or name"):
        fn("liver", *view, request=req)


def test_failed_load_says_why_clears_uploads_then_a_good_load_works(app, ct_small, tmp_path):
    ev, p, req = app.events, app.page, request("f")
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not an image" * 20)
    win = ["auto", 400, 40, False]
    load = ev.guard(ev.on_load)
    out = load([str(bad)], None, "auto", *win, request=req)
    assert isinstance(out, dict) and p.load_msg in out
    assert "Not loaded" in out[p.load_msg] and "scan.nii.gz" in out[p.load_msg]
    assert str(tmp_path) not in out[p.load_msg]
    assert out[p.files] is None and out[p.refs] is None
    assert out[p.view] is None and out[p.status] == "Load images to start."
    check_return(out, [*p.view_outputs, *p.object_outputs, *p.result_outputs, p.status, p.files, p.refs, p.scope,
                       p.ref_labels, *ev.recover_outputs], "on_load")  # fmt: skip
    # the stale path of the failed upload (the server removed it) is refused the same way, not with a crash
    out = load([str(tmp_path / "gone.nii.gz")], None, "auto", *win, request=req)
    assert "Not loaded" in out[p.load_msg]
    # the next good upload in the same session works
    out = load([str(ct_small[0])], [str(ct_small[1])], "auto", *win, request=req)
    assert "Loaded **1 case(s)**" in out[p.status] and "8 slices" in out[p.status]
    assert out[p.load_msg] == "" and out[p.view]
    assert app.store.get("f").workspace.references[0] is not None


def test_one_image_and_one_reference_pair_whatever_the_names(app, ct_small, tmp_path):
    img, ref = tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz"
    img.write_bytes(Path(ct_small[0]).read_bytes())
    ref.write_bytes(Path(ct_small[1]).read_bytes())
    ws = H.load_inputs(app.store.get("p"), [img], [ref])
    assert ws.references[0] is not None and not ws.notes


def test_mismatched_reference_keeps_the_images_and_says_so(app, ct_small, xray_small):
    ev, p = app.events, app.page
    load = ev.guard(ev.on_load)
    out = load([str(ct_small[0])], [str(xray_small[1][0])], "auto", "auto", 400, 40, False, request=request("m"))
    assert "Loaded **1 case(s)**" in out[p.status]
    assert "reference masks are not used" in out[p.load_msg]


def write_4d(path: Path, t: int = 3) -> np.ndarray:
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = (rng.random((24, 20, 5, t)) * 10).astype(np.float32)
    for i in range(t):
        data[..., i] += 100 * i  # each time point tells itself apart
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    return data


def test_4d_input_offers_a_time_point_control(app, tmp_path):
    ev, p, req = app.events, app.page, request("4d")
    path = tmp_path / "cine.nii.gz"
    write_4d(path)
    out = ev.guard(ev.on_load)([str(path)], None, "auto", "auto", 400, 40, False, request=req)
    assert "time point **1 of 3**" in out[p.load_msg]
    assert out[p.time_point]["visible"] is True and out[p.time_point]["maximum"] == 3
    ws = app.store.get("4d").workspace
    assert ws.time_index == 0 and float(np.mean(ws.volume(0).array)) < 50
    H.click(ws, 0, 2, *disp(ws, 0, 10, 10), model=MODEL)
    out = ev.guard(ev.on_time_point)(3, "auto", 400, 40, False, request=req)
    ws3 = app.store.get("4d").workspace
    assert ws3 is not ws and ws3.time_index == 2 and float(np.mean(ws3.volume(0).array)) > 150
    assert not ws3.drafts and "time point **3 of 3**" in out[p.load_msg]
    assert is_skip(ev.guard(ev.on_time_point)(3, "auto", 400, 40, False, request=req)), "the same time point"
    out = ev.guard(ev.on_time_point)(9, "auto", 400, 40, False, request=req)
    assert "Time point 9 does not exist" in out[p.load_msg] and app.store.get("4d").workspace is ws3
    # a 3D input hides the control
    assert ev.recover_load_updates(ws3)[p.time_point]["visible"] is True
    H.load_example(app.store.get("4d"), "ct")
    assert ev.recover_load_updates(app.store.get("4d").workspace)[p.time_point]["visible"] is False


def test_undo_of_a_corner_and_of_an_object_through_the_page(app, ct_small):
    ev, p, req = app.events, app.page, request("u")
    ws = H.load_inputs(app.store.get("u"), [ct_small[0]], [ct_small[1]])
    H.click(ws, 0, 4, *disp(ws, 0, 8, 10), mode="box", model=MODEL)
    undo = ev.guard(ev.on_undo)
    out = last(undo(0, 5, MODEL, "auto", 400, 40, False, request=req))
    assert "first corner" in out[p.status] and (0, 4) not in ws.drafts
    msg = H.click(ws, 0, 4, *disp(ws, 0, 20, 30), mode="positive", model=MODEL)
    assert "preview" in msg
    H.add_object(ws, "left lung")
    out = last(undo(0, 5, MODEL, "auto", 400, 40, False, request=req))
    assert "Removed the object" in out[p.status] and len(ws.objects) == 1
    assert p.obj_dd in out and p.legend in out


def test_xray_run_wording_prompts_and_per_slice_csv(store, xray_small):
    images, masks = xray_small
    ws = H.load_inputs(store.get("x"), images, masks, images_as="set")
    H.click(ws, 0, 0, *disp(ws, 0, 31, 45), model=MODEL)  # right lung
    H.click(ws, 0, 0, *disp(ws, 0, 64, 45), model=MODEL)  # left lung: a second click
    final = list(H.run(ws, scope="dataset", model=MODEL))[-1]
    assert H.progress_text(final, H.unit_of(ws)).startswith("Done: 3 images in")
    s = H.results_summary(ws)
    assert s["prompts"] == 2
    assert "**3 images segmented**" in H.summary_markdown(s) and "per-image workflow" in H.summary_markdown(s)
    files = H.write_downloads(ws, s)
    rows = list(csv.DictReader(open(next(f for f in files if f.name == "slices.csv"))))
    assert [r["case"] for r in rows] == ["cxr_01", "cxr_02", "cxr_03"]
    assert all(r["dice"] != "" and r["confidence"] != "" for r in rows)
    assert {r["slice_name"] for r in rows} == {"cxr_01.png", "cxr_02.png", "cxr_03.png"}


def test_a_click_waiting_for_another_users_run_hears_its_place_and_can_stop(app, ct_small):
    """While another session holds the model, a click says it waits (place, estimate); Stop leaves the line."""
    import threading

    ev, p = app.events, app.page
    ws = H.load_inputs(app.store.get("w"), [ct_small[0]], [ct_small[1]])
    holder = ev.line.join("run")  # another user's run holds the model
    assert ev.line.running(holder)
    ev.line.report(holder, 40.0)
    sess = app.store.get("w")
    gen = ev.guard(ev.on_click_at)(0, 5, *disp(ws, 0, 20, 30), "positive", MODEL, "auto", 400, 40, False,
                                   request=request("w"))  # fmt: skip
    first = next(gen)
    text = first[p.status]
    assert "Waiting for another user's model work" in text and "number 1 in line" in text
    assert "about 40 s" in text or "about 39 s" in text
    assert ev.line.busy() == 2
    # Stop while waiting: the click leaves the line, nothing was done
    stop = threading.Thread(target=ev.guard(ev.on_stop), args=(0, 5, "auto", 400, 40, False),
                            kwargs={"request": request("w")})  # fmt: skip
    stop.start()
    rest = list(gen)
    stop.join(10)
    assert "Stopped while waiting" in rest[-1][p.status]
    assert not ws.drafts and ev.line.busy() == 1
    # once the model is free, the next click goes through at once
    ev.line.leave(holder)
    sess.cancel.clear()
    out = last(ev.guard(ev.on_click_at)(0, 5, *disp(ws, 0, 20, 30), "positive", MODEL, "auto", 400, 40, False,
                                        request=request("w")))  # fmt: skip
    assert "preview" in out[p.status] and ev.line.busy() == 0


def test_a_run_waits_in_line_then_runs(app, ct_small):
    ev, p = app.events, app.page
    ws = H.load_inputs(app.store.get("q"), [ct_small[0]], [ct_small[1]])
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), model=MODEL)
    holder = ev.line.join("click")
    gen = ev.guard(ev.on_run)(0, 5, "volume", "transfer", MODEL, "auto", 400, 40, False, request=request("q"),
                              progress=lambda *a, **k: None)  # fmt: skip
    assert "number 1 in line" in next(gen)[p.status]
    ev.line.leave(holder)
    outs = list(gen)
    assert outs[-1][p.status].startswith("Done: 8 slices") and ws.done[0].all()
    assert ev.line.busy() == 0


def test_reference_label_names_are_offered_and_typed(app, ct_small, tmp_path):
    import json

    ev, p = app.events, app.page
    ref = tmp_path / "refs" / Path(ct_small[1]).name
    ref.parent.mkdir()
    ref.write_bytes(Path(ct_small[1]).read_bytes())
    side = ref.parent / (ref.name.removesuffix(".nii.gz") + ".json")  # a sidecar named after the mask
    side.write_text(json.dumps({"1": "right lung", "2": "left lung"}))
    ws = H.load_inputs(app.store.get("n"), [ct_small[0]], [ref, side])
    hint = ev.recover_load_updates(ws)[p.ref_labels]["placeholder"]
    assert "1 right lung" in hint and "2 left lung" in hint
    assert H.set_reference_labels(ws, "left") == (2,)


def test_an_unexpected_load_error_is_generic_and_still_clears_the_uploads(app, ct_small, monkeypatch):
    ev, p = app.events, app.page

    def broken(*a, **k):
        raise OSError("disk trouble at /srv/secret/path")

    monkeypatch.setattr(H, "load_inputs", broken)
    out = ev.guard(ev.on_load)([str(ct_small[0])], None, "auto", "auto", 400, 40, False, request=request("e"))
    assert "Something went wrong on the server" in out[p.load_msg] and "/srv/secret" not in out[p.load_msg]
    assert out[p.files] is None and out[p.refs] is None


def test_a_run_ends_by_refreshing_the_review_list(app):
    """The review list follows the shown image's change events. A run that ends on the image it already
    showed (a dataset run showing its seed case) fires none, and the list kept only the cases done by
    then (the app, four ACDC volumes at dataset scope: "2 slices in 1 case(s)"). Each run and
    re-propagation is now followed by a refresh of the review components."""
    fns = list(app.demo.fns.values())
    for name in ("on_run", "on_correct"):
        ev = next(bf for bf in fns if bf.name == name)
        after = [bf for bf in fns if bf.trigger_after == ev._id]
        assert any(bf.name == "on_review_refresh" and app.page.review in bf.outputs for bf in after), name
