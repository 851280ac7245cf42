"""Start-up as on a Hugging Face Space: ``python app.py`` with the Space's environment, then the page and a click.

Fast tests check the start-up module's rules (Space detection, ``/data``, the warm-up state). The
slow test starts ``app.py`` in a child process as a Space does: ``SPACE_ID`` / ``SYSTEM=spaces``, a
fresh ``HOME``, the port in ``GRADIO_SERVER_PORT``, and (when the tests run as root and the
interpreter is reachable for it) as the unprivileged user ``nobody``, for whom the repository is
read-only; where Python lives under ``/root`` that is impossible and the child runs as the caller. The CPU models' ONNX exports are linked
into the child's cache from this machine's cache when they exist (as ``/data`` keeps them between
restarts of a Space); else the child exports them itself (minutes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from promptonce.ui import startup

REPO = Path(__file__).resolve().parents[2]


def test_space_detection_and_warmup_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPACE_ID", "SYSTEM", "PROMPTONCE_WARMUP"):
        monkeypatch.delenv(var, raising=False)
    assert not startup.on_space() and not startup.warmup_wanted()
    monkeypatch.setenv("SYSTEM", "spaces")
    assert startup.on_space() and startup.warmup_wanted()
    monkeypatch.setenv("PROMPTONCE_WARMUP", "0")
    assert not startup.warmup_wanted()
    monkeypatch.delenv("SYSTEM")
    monkeypatch.setenv("SPACE_ID", "someone/promptonce")
    monkeypatch.setenv("PROMPTONCE_WARMUP", "1")
    assert startup.on_space() and startup.warmup_wanted()


def test_persistent_storage_is_used_only_when_writable(tmp_path: Path) -> None:
    assert startup.persistent_cache(tmp_path / "missing") is None
    assert startup.persistent_cache(tmp_path) == tmp_path / "promptonce"


def test_warmup_state_reads_well(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "state", startup._State())
    monkeypatch.delenv("PROMPTONCE_WARMUP", raising=False)
    for var in ("SPACE_ID", "SYSTEM"):
        monkeypatch.delenv(var, raising=False)
    assert startup.prepare(models=("fake",), background=False) is False  # not a Space: nothing to do
    assert startup.state.phase == "off" and startup._text() == ""
    monkeypatch.setenv("PROMPTONCE_WARMUP", "1")
    monkeypatch.setattr(startup, "_warm", lambda models: None)  # stays "warming"
    assert startup.prepare(models=("fake",), background=False) is True
    assert "Warming up" in startup._text()
    assert startup.prepare(models=("fake",), background=False) is False  # once per process
    startup._set("failed", "Preparing the models failed (OSError); the first click will try again.")
    assert "first click will try again" in startup._text()
    startup._set("ready", "Models ready: litemedsam.")
    assert startup._text() == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _link_exports(dest: Path) -> int:
    """Links this machine's verified ONNX exports (and their .sha256) into ``dest``; returns how many."""
    from promptonce.backends.weights import cache_dir

    src = cache_dir() / "onnx"
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(src.glob("*.onnx*")) if src.is_dir() else []:
        if f.suffix == ".lock":
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
        n += f.suffix == ".onnx"
    return n


def _as_unprivileged(paths: list[Path]) -> dict:
    """Popen arguments that run the child as ``nobody`` (when we are root), owning only ``paths``."""
    if os.geteuid() != 0:
        return {}
    uid = gid = 65534
    try:  # the interpreter must be reachable for that user (not so when Python lives under /root)
        subprocess.run([sys.executable, "-c", "import promptonce"], user=uid, group=gid, extra_groups=[],  # noqa: S603
                       cwd="/", env={"PYTHONPATH": str(REPO)}, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    for p in paths:
        for root, dirs, files in os.walk(p):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
        os.chown(p, uid, gid)
    return {"user": uid, "group": gid, "extra_groups": []}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_app_starts_as_a_space_warms_up_and_answers_a_click(tmp_path: Path) -> None:
    pytest.importorskip("gradio_client")
    from promptonce.backends.registry import available_backends

    ok = {info.name for info, avail, _ in available_backends() if avail}
    if not {"litemedsam", "mobilesam"} <= ok:
        pytest.skip("the CPU models are not installed")
    home, cache, work = tmp_path / "home", tmp_path / "cache", tmp_path / "work"
    for d in (home, work):
        d.mkdir()
    linked = _link_exports(cache / "onnx")
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SPACE_ID": "promptonce/test-space",
        "SYSTEM": "spaces",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "PROMPTONCE_CACHE": str(cache),  # where /data/promptonce would be
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PROMPTONCE_THREADS": "2",
        "TMPDIR": str(work),
        "GRADIO_TEMP_DIR": str(work / "gradio"),
    }
    log_path = tmp_path / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own app
            [sys.executable, str(REPO / "app.py")], cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
            **_as_unprivileged([home, cache, work]),
        )
    t0 = time.monotonic()
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + (90 if linked >= 4 else 400)
        page = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - localhost
                break
            except OSError:
                time.sleep(0.5)
        text = log_path.read_text(errors="replace")
        assert page, f"the page never answered; app log:\n{text[-3000:]}"
        assert b"PromptOnce" in page
        t_page = time.monotonic() - t0
        while time.monotonic() < deadline and "warm-up done" not in text and "warm-up failed" not in text:
            time.sleep(0.5)
            text = log_path.read_text(errors="replace")
        assert "warm-up: litemedsam ready" in text and "warm-up: mobilesam ready" in text, text[-3000:]
        t_warm = time.monotonic() - t0

        from gradio_client import Client, handle_file
        from PIL import Image

        img = np.zeros((64, 64), np.uint8)
        img[20:44, 16:40] = 200
        png = work / "xray.png"
        Image.fromarray(img).save(png)
        client = Client(url, verbose=False, download_files=str(work / "dl"))
        client.predict([handle_file(str(png))], None, "auto", "auto", 400, 40, False, api_name="/load")
        out = client.predict(0, 1, 28 * 8.0, 32 * 8.0, "positive", "auto", "auto", 400, 40, False, api_name="/click_at")
        status = out[-1] if isinstance(out, (list, tuple)) else out
        assert "error" not in str(status).lower(), status
        summary = client.predict(api_name="/summary")
        assert summary
        assert proc.poll() is None, "the app exited"
        print(f"\nspace start-up: page after {t_page:.1f} s, models ready after {t_warm:.1f} s, "
              f"load + click + summary done after {time.monotonic() - t0:.1f} s ({linked} exports linked)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
