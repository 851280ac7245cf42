"""Only results are ever served: an edited download URL never reaches an upload (issue 13, item 6).

User A loads a CT volume, clicks and runs; user B (a second HTTP client with no session, holding A's
download link) edits the link's last path part to ``inputs/<file name>`` (and other variants) and
must get 403/404. The uploads lie in a private folder outside everything Gradio serves, so even the
exact server path of A's upload is refused.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from test_ui_server import MODEL, WIN, click_at, load  # tests/ui/test_ui_server.py

pytestmark = pytest.mark.timeout(120)


def _file_url(base: str, server_path: str | Path) -> str:
    return f"{base.rstrip('/')}/gradio_api/file={quote(str(server_path))}"


def _server_path(url: str) -> str:
    return unquote(url.split("/file=", 1)[1])


def test_edited_download_url_never_serves_an_upload(app_server, tmp_path, ct_small):
    import httpx
    from gradio_client import Client

    a = Client(app_server.url, verbose=False, download_files=False)
    load(a, [ct_small[0]], [ct_small[1]])
    click_at(a, 20, 30, slice1=5)
    final = a.predict(0, 5, "volume", "transfer", MODEL, *WIN, False, api_name="/run")
    files = final[11]
    urls = [f["url"] for f in files]
    nii = next(u for u in urls if u.endswith("phantom_mask.nii.gz"))
    sess = next(s for s in app_server.store if s.workspace is not None and s.workspace.metas[0].name == "phantom")
    upload_name = ct_small[0].name  # phantom.nii.gz
    private_input = next(p for p in sess.directory.rglob(upload_name))
    upload_bytes = ct_small[0].read_bytes()
    assert private_input.read_bytes() == upload_bytes

    with httpx.Client(timeout=20) as b:  # user B: another client, no cookies, no session
        ok = b.get(nii)
        assert ok.status_code == 200 and ok.content[:2] == b"\x1f\x8b", "the result itself is served"
        served = Path(_server_path(nii))
        assert app_server.store.results_root.resolve() in served.resolve().parents
        head = nii.rsplit("/", 1)[0]
        attacks = {
            "last part edited": f"{head}/inputs/{upload_name}",
            "one level up": f"{head}/../inputs/{upload_name}",
            "results folder root": f"{head}/../../inputs/{upload_name}",
            "private folder by name": f"{head}/../../{sess.directory.name}/inputs/{upload_name}",
            "private path itself": _file_url(app_server.url, private_input),
            "private path, encoded dots": _file_url(app_server.url, served.parent) + f"/%2e%2e/inputs/{upload_name}",
        }
        for what, url in attacks.items():
            r = b.get(url)
            assert r.status_code in (403, 404), (what, url, r.status_code)
            assert upload_bytes[:64] not in r.content, what
        # session folders are not listable (nor is the results root)
        for folder in (served.parent, served.parent.parent, sess.results_directory, app_server.store.results_root,
                       sess.directory, app_server.store.root):  # fmt: skip
            r = b.get(_file_url(app_server.url, folder))
            assert r.status_code in (403, 404), (folder, r.status_code)
            assert "phantom" not in r.text, folder

    # nothing under the served folder holds the upload's bytes (Gradio's raw upload was removed too)
    for p in app_server.gradio_tmp.rglob("*"):
        if p.is_file() and p.stat().st_size == len(upload_bytes):
            assert p.read_bytes() != upload_bytes, f"{p} is a served copy of the upload"
    assert not any(app_server.store.root.resolve() == q or app_server.store.root.resolve() in q.parents
                   for q in [app_server.gradio_tmp.resolve()])  # fmt: skip


def test_store_keeps_uploads_out_of_the_served_folder(tmp_path):
    from promptonce.errors import PromptOnceError
    from promptonce.ui.session import SessionStore, default_roots

    served = tmp_path / "gradio"
    root, results = default_roots(served)
    assert results == served / "promptonce-results"
    assert served.resolve() not in root.resolve().parents
    with pytest.raises(PromptOnceError, match="outside"):
        default_roots(served, served / "sessions")
    with pytest.raises(PromptOnceError, match="upload folder"):
        SessionStore(served / "sessions", results_root=served / "results", upload_folder=served)
    with pytest.raises(PromptOnceError, match="separate"):
        SessionStore(tmp_path / "s", results_root=tmp_path / "s" / "results")

    store = SessionStore(tmp_path / "private", results_root=served / "results", upload_folder=served)
    try:
        s = store.get("a")
        assert s.directory.parent == store.root and s.results_directory.parent == store.results_root
        assert s.directory.name != s.results_directory.name and len(s.results_directory.name) == 32
        assert (s.results_directory.stat().st_mode & 0o777) == 0o700
        assert store.results_root in s.subdir("out").parents and store.results_root in s.subdir("view").parents
        assert s.directory in s.subdir("inputs").parents and s.directory in s.subdir("results").parents
        (s.subdir("out") / "a.bin").write_bytes(b"x" * 1000)
        (s.subdir("inputs") / "b.bin").write_bytes(b"y" * 500)
        assert s.bytes_used() == 1500, "the quota counts both folders"
        s.clear("out")
        assert not s.path("out").exists() and s.path("inputs", "b.bin").exists()
        with pytest.raises(Exception, match="not allowed"):
            s.path("out", "..", "..", s.directory.name)
    finally:
        store.close_all()
    assert not s.directory.exists() and not s.results_directory.exists()


@pytest.mark.browser
@pytest.mark.timeout(170)
def test_second_browser_context_cannot_edit_a_download_link_into_an_upload(app_server, ct_small):
    """User A runs in one browser context; user B, in another, opens A's download link (works) and
    the link edited to ``inputs/<file>`` and ``../inputs/<file>`` (403/404)."""
    from test_ui_browser import ARGS, CHROMIUM, choose, click_image, shot, upload, wait_status

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            ctx_a = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            ctx_b = browser.new_context(viewport={"width": 1440, "height": 1000})
            a = ctx_a.new_page()
            a.set_default_timeout(30_000)
            a.goto(app_server.url)
            a.wait_for_selector("#po-run")
            upload(a, "po-files", [ct_small[0]])
            a.click("#po-load")
            wait_status(a, "Loaded")
            choose(a, "po-model", "Fake")
            click_image(a, 20, 30, scale=8.0)
            wait_status(a, "preview", "nothing")
            a.click("#po-run")
            wait_status(a, "Done", "Stopped", timeout=90)
            link = a.locator('#po-downloads a[download="phantom_mask.nii.gz"]')
            link.wait_for()
            href = link.get_attribute("href") or ""
            assert "/file=" in href, href
            url = href if href.startswith("http") else app_server.url.rstrip("/") + "/" + href.lstrip("/")
            shot(a, "06_download_link_owner")

            b = ctx_b.new_page()
            ok = b.request.get(url)
            assert ok.status == 200 and ok.body()[:2] == b"\x1f\x8b", "the link itself works for whoever holds it"
            head = url.rsplit("/", 1)[0]
            upload_name = ct_small[0].name
            for edited in (f"{head}/inputs/{upload_name}", f"{head}/../inputs/{upload_name}",
                           f"{head}/../../inputs/{upload_name}", head, head.rsplit("/", 1)[0]):  # fmt: skip
                r = b.request.get(edited)
                assert r.status in (403, 404), (edited, r.status)
                resp = b.goto(edited)
                assert resp is not None and resp.status in (403, 404), (edited, resp.status if resp else None)
            shot(b, "06_download_link_edited_other_context")
        finally:
            browser.close()


def test_an_upload_is_not_served_even_before_it_is_loaded(app_server, ct_small):
    """Gradio keeps an upload in its (served) upload folder until the app takes it: the guard refuses it."""
    import httpx

    with httpx.Client(timeout=20) as http:
        with open(ct_small[0], "rb") as fh:
            r = http.post(f"{app_server.url.rstrip('/')}/gradio_api/upload", files={"files": (ct_small[0].name, fh)})
        assert r.status_code == 200, r.text
        (server_path,) = r.json()
        try:
            assert Path(server_path).is_file() and app_server.gradio_tmp.resolve() in Path(server_path).resolve().parents
            for url in (_file_url(app_server.url, server_path),
                        f"{app_server.url.rstrip('/')}/gradio_api/file/{quote(server_path.lstrip('/'))}"):  # fmt: skip
                got = http.get(url)
                assert got.status_code in (403, 404), (url, got.status_code)
                assert ct_small[0].read_bytes()[:64] not in got.content
        finally:
            Path(server_path).unlink(missing_ok=True)


def test_file_guard_rules(tmp_path):
    from promptonce.ui import fileguard
    from promptonce.ui.session import SessionStore

    up = tmp_path / "gradio"
    store = SessionStore(tmp_path / "private", results_root=up / "promptonce-results", upload_folder=up)
    try:
        fileguard.register(store)
        s = store.get("a")
        out = s.subdir("out") / "mask.nii.gz"
        out.write_bytes(b"x")
        raw = up / "abc123" / "scan.nii.gz"
        raw.parent.mkdir(parents=True)
        raw.write_bytes(b"y")
        assert fileguard.is_served(str(out))
        assert not fileguard.is_served(str(raw)), "a raw upload in Gradio's folder"
        assert not fileguard.is_served(str(s.subdir("inputs") / "scan.nii.gz")), "the private folder"
        assert not fileguard.is_served(f"{out.parent}/../../../abc123/scan.nii.gz"), "traversal out of the results"
        assert fileguard.is_served("/usr/share/somewhere/else.css"), "other paths are left to Gradio's checks"
        link = s.subdir("out") / "link.nii.gz"
        link.symlink_to(raw)
        assert not fileguard.is_served(str(link)), "a link in the results folder to an upload"
    finally:
        store.close_all()
