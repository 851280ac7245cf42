"""The app through its HTTP API with gradio_client, against a server on 127.0.0.1 (fake model)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)

MODEL = "fake"
WIN = ("auto", 400, 40)  # window dropdown, custom width, custom level


def client(app_server, tmp_path: Path, name: str):
    from gradio_client import Client

    dl = tmp_path / f"downloads-{name}"
    dl.mkdir(exist_ok=True)
    return Client(app_server.url, verbose=False, download_files=str(dl))


def load(c, images, refs=(), images_as="auto"):
    from gradio_client import handle_file

    return c.predict(
        [handle_file(str(p)) for p in images], [handle_file(str(p)) for p in refs] or None, images_as, *WIN, False,
        api_name="/load",
    )


def click_at(c, x_img: float, y_img: float, case: int = 0, slice1: int = 1, scale: float = 8.0, mode="positive"):
    x, y = (x_img + 0.5) * scale - 0.5, (y_img + 0.5) * scale - 0.5
    return c.predict(case, slice1, x, y, mode, MODEL, *WIN, False, api_name="/click_at")


def summary(c) -> dict:
    return json.loads(c.predict(api_name="/summary"))


def test_load_click_run_download_over_http(app_server, tmp_path, ct_small):
    import nibabel as nib

    c = client(app_server, tmp_path, "a")
    out = load(c, [ct_small[0]], [ct_small[1]])
    assert any("Loaded" in str(o) for o in out)
    view_path = Path(out[0])
    assert view_path.is_file()
    # the upload itself is not kept in Gradio's shared upload folder: only the session has a copy
    leftovers = list(app_server.gradio_tmp.rglob("phantom*.nii.gz"))
    assert leftovers == [], "the upload is nowhere in the served folder (only the private session folder has it)"
    msg = click_at(c, 20, 30, slice1=5)[-1]
    assert "preview" in msg, msg
    final = c.predict(0, 5, "volume", "transfer", MODEL, *WIN, False, api_name="/run")
    s = summary(c)
    assert s["slices"] == 8 and s["prompts"] == 1 and s["cases"][0]["dice"] is not None
    downloads = final[11]
    paths = [Path(d) for d in (downloads or [])]
    nii = [p for p in paths if p.name.endswith(".nii.gz")]
    assert nii, paths
    img = nib.load(str(nii[0]))
    np.testing.assert_allclose(img.affine, nib.load(str(ct_small[0])).affine)
    assert any(p.name == "metrics.json" for p in paths)
    # the served files come from this session's own results folder, which the store knows
    sessions = list(app_server.store)
    assert any(s.workspace is not None and (s.results_directory / "out" / nii[0].name).is_file() for s in sessions)


def test_two_clients_never_see_each_other(app_server, tmp_path, ct_small, xray_small):
    a, b = client(app_server, tmp_path, "a2"), client(app_server, tmp_path, "b2")

    def flow_a():
        load(a, [ct_small[0]])
        click_at(a, 20, 30, slice1=5)
        a.predict(0, 5, "volume", "transfer", MODEL, *WIN, False, api_name="/run")
        return summary(a)

    def flow_b():
        load(b, xray_small[0], images_as="set")
        click_at(b, 31, 45, scale=6.0)  # 96 px images are shown at 576 px
        b.predict(0, 1, "dataset", "transfer", MODEL, *WIN, False, api_name="/run")
        return summary(b)

    with ThreadPoolExecutor(2) as ex:
        fa, fb = ex.submit(flow_a), ex.submit(flow_b)
        sa, sb = fa.result(timeout=90), fb.result(timeout=90)
    assert [c["case"] for c in sa["cases"]] == ["phantom"]
    assert sorted(c["case"] for c in sb["cases"]) == ["cxr_01", "cxr_02", "cxr_03"]
    dirs = {s.directory.name for s in app_server.store}
    assert len(dirs) == len(list(app_server.store)), "every session has its own folder"


def test_bad_upload_is_a_readable_error_and_server_keeps_serving(app_server, tmp_path, ct_small):

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip" * 20)
    c = client(app_server, tmp_path, "bad")
    # a failed load is not an error of the event (that would put an error badge on every output): its
    # one message comes back in the load panel, and the upload fields are emptied
    out = load(c, [bad])
    text = next(str(o) for o in out if "Not loaded" in str(o))
    assert "broken.nii.gz" in text
    assert str(app_server.gradio_tmp) not in text and "Traceback" not in text
    # a click before anything is loaded says what to do
    # (for the page, not an event error: the status line says it, no error badge on the outputs)
    assert "Load images first" in str(click_at(c, 1, 1)[-1])
    # the same client can go on
    out = load(c, [ct_small[0]])
    assert any("Loaded" in str(o) for o in out)


def test_upload_over_the_size_limit_is_refused(app_server, tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.zeros(app_server.max_file_mb * 2**20 // 2 + 1000, np.int16))  # just over the limit
    c = client(app_server, tmp_path, "big")
    with pytest.raises(Exception, match="(?i)(too large|exceeds|maximum|size)"):
        load(c, [big])
    assert not any(s.workspace is not None and s.workspace.input_paths[0].name == "big.npy" for s in app_server.store)


def test_summary_before_loading_is_an_error(app_server, tmp_path):
    from gradio_client.exceptions import AppError

    c = client(app_server, tmp_path, "empty")
    with pytest.raises(AppError, match="Load images first"):
        summary(c)


def test_stop_keeps_what_is_done(app_server, tmp_path, monkeypatch):
    """Stop during a run: the run ends between slices, the finished slices are kept and shown."""
    import time

    from promptonce.backends.fake import FakeBackend
    from uihelpers import make_assets

    img, _ = make_assets.write_ct(tmp_path / "long", size=64, n_slices=120, name="long")
    slow = FakeBackend.embed

    def slow_embed(self, frame):  # the fake model at a real model's pace (in this process's server)
        time.sleep(0.05)
        return slow(self, frame)

    monkeypatch.setattr(FakeBackend, "embed", slow_embed)
    c = client(app_server, tmp_path, "stop")
    load(c, [img])
    click_at(c, 20, 30, slice1=60)
    job = c.submit(0, 60, "volume", "transfer", MODEL, *WIN, False, api_name="/run")
    deadline = time.time() + 30
    while time.time() < deadline:
        sess = [s for s in app_server.store if s.workspace is not None and s.workspace.metas[0].name == "long"]
        if sess and sess[0].workspace.done and sess[0].workspace.done[0].sum() >= 5:
            break
        time.sleep(0.05)
    out = c.predict(0, 60, *WIN, False, api_name="/stop")
    assert "Stopped" in out[-1], out[-1]
    try:
        job.result(timeout=30)
    except Exception:  # noqa: BLE001 - a cancelled job may end with an error on the client side
        pass
    s = summary(c)
    assert s["cancelled"] and 5 <= s["slices"] < 120
    assert not sess[0].running.is_set(), "the run has ended"
    # the next run starts normally
    c.predict(0, 60, "image", "transfer", MODEL, *WIN, False, api_name="/run")
    assert summary(c)["slices"] == 1
