"""The web app's logic driven directly (no browser, no server), with the fake backend."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from promptonce.errors import InputError, PromptError, PromptOnceError, TooLargeError
from promptonce.ui import handlers as H
from promptonce.ui.session import SessionStore

MODEL = "fake"


def disp(ws: H.Workspace, v: int, x: float, y: float) -> tuple[float, float]:
    """Display pixel of image pixel (x, y) (the inverse of to_image_xy)."""
    sx, sy = ws.display_scale(v)
    return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5


def load_ct(store: SessionStore, ct_small, sid: str = "a") -> H.Workspace:
    sess = store.get(sid)
    img, ref = ct_small
    return H.load_inputs(sess, [img], [ref])


def test_display_mapping_round_trip(store, ct_small):
    ws = load_ct(store, ct_small)
    assert ws.metas[0].shape == (8, 64, 64)
    sx, sy = ws.display_scale(0)
    assert sx == sy == 8.0  # 64 px shown at 512 px
    for x, y in [(0, 0), (20, 30), (63, 63), (10.5, 40)]:
        X, Y = disp(ws, 0, x, y)
        assert H.to_image_xy(ws, 0, X, Y) == pytest.approx((x, y), abs=0.06)
    # clicks outside the picture are clamped into it
    assert H.to_image_xy(ws, 0, -50, 10_000) == (0.0, 63.0)


def test_upload_click_preview_run_volume_downloads(store, ct_small):
    import nibabel as nib

    ws = load_ct(store, ct_small)
    sess = ws.session
    k = 4
    # the right lung (viewer's left) of the phantom is centred at image pixel (20, 30)
    msg = H.click(ws, 0, k, *disp(ws, 0, 20, 30), mode="positive", model=MODEL)
    d = ws.drafts[(0, k)][1]
    assert d.mask is not None and d.mask.any(), msg
    assert d.mask[30, 20], "the preview contains the clicked pixel"
    ref = ws.reference(0)
    # the preview mostly lies in the right lung (label 1 of the reference)
    assert (ref[k][d.mask] == 1).mean() > 0.6
    rgb = H.render(ws, 0, k, "auto", show_reference=True)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    # the object colour shows where the preview is
    gray = H.render(ws, 0, 0, "auto")
    assert not np.array_equal(rgb, gray)

    reports = list(H.run(ws, scope="volume", strategy="transfer", model=MODEL, window="auto", v_current=0))
    assert reports[-1].finished and reports[-1].message == "done"
    assert ws.done[0].all(), "every slice of the volume has a result"
    assert reports[-1].done == 8
    summary = H.results_summary(ws)
    assert summary["has_reference"] and summary["prompts"] == 1
    assert summary["cases"][0]["dice"] is not None
    assert summary["per_slice_prompts"] >= 1

    files = H.write_downloads(ws, summary)
    names = {p.name for p in files}
    assert "phantom_mask.nii.gz" in names and "metrics.json" in names and "metrics.csv" in names
    assert any(n.endswith(".gif") for n in names)
    for p in files:
        assert p.is_file() and sess.results_directory in p.parents, "downloads live in the session's results folder"
        assert sess.directory not in p.parents, "downloads never lie beside the uploads"
    out = nib.load(str(next(p for p in files if p.name.endswith(".nii.gz"))))
    inp = nib.load(str(ct_small[0]))
    np.testing.assert_allclose(out.affine, inp.affine)
    assert out.shape == inp.shape
    data = np.asarray(out.dataobj)
    # stored (cols, rows, slices) -> display (slices, rows, cols)
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), np.asarray(ws.results[0]))


def test_reference_labels_choose_what_is_scored(store, ct_small):
    ws = load_ct(store, ct_small)
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), model=MODEL)  # the right lung only (reference label 1)
    list(H.run(ws, scope="volume", model=MODEL))
    both = H.results_summary(ws)["dice_mean"]
    assert H.set_reference_labels(ws, "1") == (1,)
    right = H.results_summary(ws)
    assert right["reference_labels"] == [1] and right["dice_mean"] > both + 0.2
    # scored against the other lung it is (almost) no overlap
    H.set_reference_labels(ws, " 2 ")
    assert H.results_summary(ws)["dice_mean"] < 0.1
    assert H.set_reference_labels(ws, "") is None and H.results_summary(ws)["dice_mean"] == pytest.approx(both)
    for bad in ("a", "0", "1,,x"):
        with pytest.raises(InputError):
            H.set_reference_labels(ws, bad)


def test_box_mode_undo_and_reset(store, ct_small):
    ws = load_ct(store, ct_small)
    msg = H.click(ws, 0, 4, *disp(ws, 0, 8, 10), mode="box", model=MODEL)
    assert "first corner" in msg and ws.drafts[(0, 4)][1].box is None
    H.click(ws, 0, 4, *disp(ws, 0, 32, 50), mode="box", model=MODEL)
    box = ws.drafts[(0, 4)][1].box
    assert box is not None and (box.x0, box.y0, box.x1, box.y1) == pytest.approx((8, 10, 32, 50), abs=0.06)
    assert ws.drafts[(0, 4)][1].mask is not None
    H.click(ws, 0, 4, *disp(ws, 0, 21, 31), mode="negative", model=MODEL)
    assert [p.label for p in ws.drafts[(0, 4)][1].points] == [0]
    assert H.undo(ws, MODEL) == (0, 4)
    assert ws.drafts[(0, 4)][1].points == [] and ws.drafts[(0, 4)][1].box is not None
    H.undo(ws, MODEL)  # the second corner
    H.undo(ws, MODEL)  # the first corner
    assert (0, 4) not in ws.drafts and H.undo(ws, MODEL) is None
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), model=MODEL)
    list(H.run(ws, scope="image", model=MODEL))
    assert ws.has_results()
    H.reset_prompts(ws)
    assert not ws.drafts and not ws.has_results() and ws.run_info is None


def test_two_objects_with_names_and_colours(store, ct_small):
    ws = load_ct(store, ct_small)
    ws.objects[0].name = "right lung"
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), model=MODEL)
    oid = H.add_object(ws, "left lung")
    assert oid == 2 and ws.active == 2
    H.click(ws, 0, 4, *disp(ws, 0, 44, 30), model=MODEL)
    list(H.run(ws, scope="volume", model=MODEL))
    labels = np.asarray(ws.results[0][4])
    assert labels[30, 20] == 1 and labels[30, 44] == 2
    assert "right lung" in H.slice_info(ws, 0, 4) and "left lung" in H.slice_info(ws, 0, 4)
    with pytest.raises(PromptError):
        H.set_active(ws, 9)


def test_run_without_prompt_says_what_to_do(store, ct_small):
    ws = load_ct(store, ct_small)
    with pytest.raises(PromptError, match="click on the object"):
        list(H.run(ws, scope="volume", model=MODEL))
    # a background click alone cannot seed a run
    msg = H.click(ws, 0, 4, *disp(ws, 0, 2, 2), mode="negative", model=MODEL)
    assert "positive" in msg
    with pytest.raises(PromptError):
        list(H.run(ws, scope="volume", model=MODEL))


def test_correction_repropagates_only_its_range(store, ct_small):
    ws = load_ct(store, ct_small)
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), model=MODEL)
    list(H.run(ws, scope="volume", model=MODEL))
    before = np.array(ws.results[0])
    # a second prompted slice bounds the range: a correction on slice 6 re-runs slices 5..7 only
    H.click(ws, 0, 6, *disp(ws, 0, 44, 30), model=MODEL)  # the other lung, as object 1, on slice 6
    touched: list[int] = []
    for p in H.apply_corrections(ws, MODEL):
        if not p.finished:
            touched.append(p.slice_index)
    assert set(touched) <= {5, 6, 7} and 6 in touched
    after = np.asarray(ws.results[0])
    np.testing.assert_array_equal(after[:5], before[:5])
    assert after[6, 30, 44] == 1 and not np.array_equal(after[6], before[6])
    with pytest.raises(PromptError, match="No correction"):
        list(H.apply_corrections(ws, MODEL))


def test_cancel_keeps_finished_slices(store, ct_small):
    ws = load_ct(store, ct_small)
    H.click(ws, 0, 0, *disp(ws, 0, 20, 30), model=MODEL)
    cancel = threading.Event()
    reports = []
    old = H.PROGRESS_EVERY_S
    H.PROGRESS_EVERY_S = 0.0
    try:
        for p in H.run(ws, scope="volume", model=MODEL, cancel=cancel):
            reports.append(p)
            if p.done >= 3:
                cancel.set()
    finally:
        H.PROGRESS_EVERY_S = old
    assert reports[-1].finished and reports[-1].message == "stopped"
    n_done = int(ws.done[0].sum())
    assert 3 <= n_done < 8
    assert ws.run_info is not None and ws.run_info.cancelled
    s = H.results_summary(ws)
    assert s["cancelled"] and s["slices"] == n_done


def test_xray_set_dataset_scope_with_metrics(store, xray_small):
    images, masks = xray_small
    sess = store.get("x")
    ws = H.load_inputs(sess, images, masks, images_as="set")
    assert ws.n_volumes == 3 and all(m.n_slices == 1 for m in ws.metas)
    assert all(r is not None for r in ws.references)
    # click on the right lung field of the first image (96 px image: lung centre about (31, 45))
    H.click(ws, 0, 0, *disp(ws, 0, 31, 45), model=MODEL)
    final = list(H.run(ws, scope="dataset", strategy="transfer", model=MODEL))[-1]
    assert final.finished and final.done == 3
    assert all(ws.done[v].all() for v in range(3))
    s = H.results_summary(ws)
    assert len(s["cases"]) == 3 and all(c["dice"] is not None for c in s["cases"])
    assert s["prompts"] == 1 and s["saved_percent"] == pytest.approx(100 * (1 - 1 / 3))
    files = H.write_downloads(ws, s)
    png_zip = next(p for p in files if p.name == "masks_png.zip")
    with zipfile.ZipFile(png_zip) as zf:
        assert sorted(zf.namelist()) == ["cxr_01.png", "cxr_02.png", "cxr_03.png", "labels.csv"]
    assert "masks" not in " ".join(p.name for p in files if p.suffix == ".gz")


def test_bad_upload_gives_readable_error_without_server_paths(store, tmp_path):
    bad = tmp_path / "upload" / "scan.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not an image at all" * 10)
    sess = store.get("bad")
    with pytest.raises(PromptOnceError) as err:
        H.load_inputs(sess, [bad])
    text = H.user_message(err.value, sess)
    assert "scan.nii.gz" in text
    assert str(tmp_path) not in text and sess.directory.name not in text and "inputs/" not in text
    with pytest.raises(InputError):
        H.load_inputs(sess, [])
    # the session keeps working after a bad upload
    assert store.get("bad") is sess


def test_user_message_hides_unexpected_errors():
    assert "logged" in H.user_message(RuntimeError("/secret/path/file.py line 3"))
    assert "/secret" not in H.user_message(InputError("cannot read /srv/data/x/img.png: truncated"))
    assert "img.png" in H.user_message(InputError("cannot read /srv/data/x/img.png: truncated"))


def test_sessions_are_isolated_and_cleaned(tmp_path, ct_small, xray_small):
    store = SessionStore(tmp_path / "root", ttl_s=60)
    a, b = store.get("sess-a"), store.get("sess-b")
    assert a.directory != b.directory and a.directory.parent == b.directory.parent == store.root
    assert "sess-a" not in a.directory.name and len(a.directory.name) == 32
    assert (a.directory.stat().st_mode & 0o777) == 0o700
    wa = H.load_inputs(a, [ct_small[0]])
    wb = H.load_inputs(b, xray_small[0], images_as="set")
    assert wa is not wb and a.workspace is wa and b.workspace is wb
    assert all(a.directory in p.parents for p in wa.input_paths)
    assert all(b.directory in p.parents for p in wb.input_paths)
    H.click(wa, 0, 4, *disp(wa, 0, 20, 30), model=MODEL)
    assert not wb.drafts, "a click in one session does not reach the other"
    with pytest.raises(InputError):
        a.path("..", b.directory.name)
    # page closed: the session and its folder go
    assert store.close("sess-a")
    assert not a.directory.exists() and "sess-a" not in store
    assert b.directory.exists()
    # idle past the TTL: swept
    b.last_seen -= 120
    assert store.sweep() == 1
    assert not b.directory.exists() and len(store) == 0
    assert list(store.root.iterdir()) == [] and list(store.results_root.iterdir()) == []


def test_running_session_is_not_swept(tmp_path):
    store = SessionStore(tmp_path / "root", ttl_s=1)
    s = store.get("busy")
    s.running.set()
    s.last_seen -= 100
    assert store.sweep() == 0 and s.directory.exists()
    s.running.clear()
    assert store.sweep() == 1


def test_session_quota(tmp_path, ct_small):
    store = SessionStore(tmp_path / "root", max_session_bytes=10_000)
    sess = store.get("q")
    with pytest.raises(TooLargeError, match="limit"):
        H.load_inputs(sess, [ct_small[0]])  # about 60 KB


def test_orphans_of_a_dead_process_are_removed(tmp_path):
    import os
    import time

    root = tmp_path / "root"
    root.mkdir()
    old = root / ("a" * 32)
    old.mkdir()
    (old / "x.bin").write_bytes(b"1")
    t = time.time() - 10_000
    os.utime(old, (t, t))
    keep = root / "not-a-session"
    keep.mkdir()
    SessionStore(root, ttl_s=60)
    assert not old.exists() and keep.exists()


def test_examples_load(store):
    ws = H.load_example(store.get("ex"), "xray")
    assert ws.n_volumes == 4 and all(r is not None for r in ws.references)
    ws = H.load_example(store.get("ex"), "ct")
    assert ws.n_volumes == 1 and ws.metas[0].modality == "CT" and ws.references[0] is not None
    with pytest.raises(InputError):
        H.load_example(store.get("ex"), "nope")


def test_assets_are_small():
    total = sum(p.stat().st_size for p in H.ASSETS.rglob("*") if p.is_file())
    assert 0 < total < 2 * 2**20


def test_dicom_series_gives_dicom_seg_without_patient_data(store, tmp_path):
    import importlib.util
    import sys

    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    iosynth_path = Path(__file__).resolve().parents[1] / "io" / "iosynth.py"
    if not iosynth_path.is_file():
        pytest.skip("tests/io/iosynth.py (DICOM writer) is not there")
    spec = importlib.util.spec_from_file_location("iosynth_for_ui", iosynth_path)
    iosynth = importlib.util.module_from_spec(spec)
    sys.modules["iosynth_for_ui"] = iosynth
    spec.loader.exec_module(iosynth)
    from uihelpers import make_assets

    hu, _ = make_assets.ct_phantom(64, 6)
    files = iosynth.write_series(tmp_path / "series", (hu.astype(np.int32) + 1024).astype(np.uint16))
    for f in files:  # put identifying data in, to check that none comes out
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.InstitutionName = "Doe^Jane", "ID12345", "General Hospital"
        ds.save_as(f)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, arcname=f"series/{f.name}")
    sess = store.get("dcm")
    ws = H.load_inputs(sess, [archive])
    assert ws.metas[0].source_format == "dicom" and ws.metas[0].n_slices == 6
    assert all(sess.directory in p.parents or p.parent == sess.directory for p in (sess.directory / "unzipped").rglob("*"))
    _, rows, cols = ws.metas[0].shape
    H.click(ws, 0, 3, *disp(ws, 0, 20, 30), model=MODEL)
    list(H.run(ws, scope="volume", model=MODEL))
    files_out = H.write_downloads(ws)
    seg = next(p for p in files_out if p.name.endswith("_seg.dcm"))
    ds = pydicom.dcmread(seg)
    assert ds.Modality == "SEG"
    text = " ".join(str(ds.get(t, "")) for t in ("PatientName", "PatientID", "InstitutionName"))
    assert "Doe" not in text and "12345" not in text and "General" not in text
    assert any(p.name.endswith("_mask.nii.gz") for p in files_out)


def test_shown_slices_are_encoded_ahead_once_a_model_is_in_use(store, ct_small, monkeypatch):
    from promptonce.engine import background_pool

    def settle() -> None:  # the warm-up task queues the encodings behind itself on the same thread
        for _ in range(3):
            background_pool("warm").submit(lambda: None).result(timeout=60)

    ws = load_ct(store, ct_small)
    H.warm_view(ws, 0, 2)
    settle()
    assert ws.engines == {}, "browsing before any click must not load a model"
    H.click(ws, 0, 4, *disp(ws, 0, 20, 30), mode="positive", model=MODEL)
    eng = ws.engines[MODEL]
    H.warm_view(ws, 0, 6, "auto")
    settle()
    assert any(key[2] == 6 for key in eng.cache.keys()), "the shown slice was not encoded ahead"
    calls = eng.backend.encoder_calls
    H.click(ws, 0, 6, *disp(ws, 0, 20, 30), mode="positive", model=MODEL)
    assert eng.backend.encoder_calls == calls, "the click on a warmed slice encoded it again"
    assert ws.drafts[(0, 6)][1].mask.any()
    monkeypatch.setenv("PROMPTONCE_WARM_VIEW", "0")
    H.warm_view(ws, 0, 1, "auto")
    settle()
    assert not any(key[2] == 1 for key in eng.cache.keys())
