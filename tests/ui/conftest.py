"""Fixtures of the web-app tests: synthetic inputs (made here, small), a session store in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uihelpers import make_assets  # tests/ui/uihelpers.py


@pytest.fixture
def ct_small(tmp_path: Path) -> tuple[Path, Path]:
    """A 64 x 64 x 8 CT phantom and its lung labels (1 = right lung, 2 = left lung) as NIfTI."""
    return make_assets.write_ct(tmp_path / "ct", size=64, n_slices=8, name="phantom")


@pytest.fixture
def xray_small(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Three 96 x 96 X-ray-like PNGs and their masks (same names, 0/255)."""
    return make_assets.write_xrays(tmp_path / "xr", n=3, size=96)


@pytest.fixture
def store(tmp_path: Path):
    from promptonce.ui.session import SessionStore

    s = SessionStore(tmp_path / "sessions", ttl_s=600)
    yield s
    s.close_all()


@pytest.fixture
def fake_models(monkeypatch):
    """Shows the fake backend in the model list (it is hidden from users)."""
    monkeypatch.setenv("PROMPTONCE_SHOW_FAKE", "1")
    return "fake"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Upload limit of the test server (bytes); uploads above it must be refused.
TEST_MAX_FILE_MB = 4


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app served on a free 127.0.0.1 port (in this process), with the fake model offered.

    Gradio's upload folder (with the served results folders) and the private session folders live in
    two separate temporary folders; the server stops at the end.
    """
    from types import SimpleNamespace

    gradio_tmp = tmp_path_factory.mktemp("gradio")
    env = {"GRADIO_TEMP_DIR": str(gradio_tmp), "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_HEARTBEAT_INTERVAL": "0.5"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from promptonce.ui.app import build_app, launch_kwargs
    from promptonce.ui.session import SessionStore

    private = tmp_path_factory.mktemp("private")
    store = SessionStore(
        private / "promptonce-sessions", results_root=gradio_tmp / "promptonce-results", ttl_s=600,
        upload_folder=gradio_tmp,
    )
    demo = build_app(store, show_fake=True)
    demo.queue(default_concurrency_limit=1)
    kw = launch_kwargs()
    kw.update(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
        max_file_size=f"{TEST_MAX_FILE_MB}mb",
    )
    demo.launch(**kw)
    try:
        yield SimpleNamespace(
            url=demo.local_url, store=store, demo=demo, gradio_tmp=gradio_tmp, max_file_mb=TEST_MAX_FILE_MB
        )
    finally:
        demo.close()
        store.close_all()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
