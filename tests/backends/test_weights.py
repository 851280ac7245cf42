"""Checkpoint resolution and download, against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptonce.backends import weights
from promptonce.backends.weights import CheckpointSpec, WeightsError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one download chunk


class _Evil:
    """A picklable object that a weights-only load must refuse."""


class _Server(http.server.ThreadingHTTPServer):
    payload: bytes = PAYLOAD
    honour_range: bool = True
    requests: list[dict[str, str]]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading early (size mismatch) is expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
        if self.path != "/ckpt.pt":
            self.send_error(404)
            return
        data = self.server.payload
        rng = self.headers.get("Range")
        if rng and self.server.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROMPTONCE_CACHE", str(cache))
    monkeypatch.delenv("PROMPTONCE_WEIGHTS", raising=False)
    monkeypatch.delenv("PROMPTONCE_OFFLINE", raising=False)
    return cache


def _register(monkeypatch: pytest.MonkeyPatch, server: _Server, *, sha: str | None = "good",
              size: int | None = None) -> CheckpointSpec:
    digest = hashlib.sha256(PAYLOAD).hexdigest() if sha == "good" else sha
    spec = CheckpointSpec(
        name="fake_ckpt", filename="ckpt.pt", url=f"http://127.0.0.1:{server.server_address[1]}/ckpt.pt",
        sha256=digest, size=size,
    )
    monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, spec.name, spec)
    return spec


def test_known_checkpoints_have_official_urls_and_hashes() -> None:
    names = {"sam_vit_b", "sam_vit_l", "sam_vit_h"} | {
        f"{fam}_hiera_{s}" for fam in ("sam2", "sam2.1") for s in ("t", "s", "b+", "l")
    }
    assert names <= set(weights.KNOWN_CHECKPOINTS)
    for spec in weights.KNOWN_CHECKPOINTS.values():
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything")
        assert spec.url.endswith("/" + spec.filename)
        assert spec.sha256 is None or (len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0)
    # Model name, file name and file stem all name the same checkpoint.
    tiny = weights.KNOWN_CHECKPOINTS["sam2.1_hiera_t"]
    assert weights.find_spec("sam2.1_hiera_tiny.pt") is tiny and weights.find_spec("sam2.1_hiera_tiny") is tiny
    assert weights.find_spec("sam2.1_hiera_tinyy") is None


def test_download_verifies_and_reports_progress(server: _Server, env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server, size=len(PAYLOAD))
    seen: list[tuple[int, int]] = []
    path = weights.resolve_checkpoint("fake_ckpt", progress=lambda d, t: seen.append((d, t)))
    assert path == env / "ckpt.pt"
    assert path.read_bytes() == PAYLOAD
    assert not (env / "ckpt.pt.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(seen) >= 3  # start + two chunks
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # A second resolution finds the cached file without a request.
    n = len(server.requests)
    assert weights.resolve_checkpoint("ckpt.pt") == path
    assert len(server.requests) == n


def test_resume_after_truncated_part(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server)
    env.mkdir(parents=True)
    (env / "ckpt.pt.part").write_bytes(PAYLOAD[:1000])
    path = weights.resolve_checkpoint("fake_ckpt")
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=1000-"


def test_resume_refused_by_server_restarts(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server)
    server.honour_range = False  # answers 200 with the whole file
    env.mkdir(parents=True)
    (env / "ckpt.pt.part").write_bytes(b"garbage that must not be kept")
    path = weights.resolve_checkpoint("fake_ckpt")
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_part(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server, sha="0" * 64)
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        weights.resolve_checkpoint("fake_ckpt")
    assert not (env / "ckpt.pt.part").exists()
    assert not (env / "ckpt.pt").exists()


def test_size_mismatch_is_refused(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server, size=len(PAYLOAD) + 1)
    with pytest.raises(WeightsError, match="announces"):
        weights.resolve_checkpoint("fake_ckpt")
    assert not (env / "ckpt.pt").exists()


def test_trust_on_first_use_records_hash(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _register(monkeypatch, server, sha=None)
    path = weights.resolve_checkpoint("fake_ckpt")
    digest, size = (env / "ckpt.pt.sha256").read_text().split()
    assert digest == hashlib.sha256(PAYLOAD).hexdigest() and int(size) == len(PAYLOAD)
    assert weights.verify_checkpoint(path, spec) == digest
    path.write_bytes(PAYLOAD[:-1])  # later truncation is caught by the recorded size
    with pytest.raises(WeightsError, match="truncated"):
        weights.resolve_checkpoint("fake_ckpt")


def test_offline_error_names_file_dirs_and_url(server: _Server, env: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _register(monkeypatch, server)
    wdir = tmp_path / "weights_dir"
    monkeypatch.setenv("PROMPTONCE_WEIGHTS", str(wdir))
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        weights.resolve_checkpoint("fake_ckpt")
    msg = str(info.value)
    assert spec.filename in msg and spec.url in msg and str(wdir) in msg and str(env) in msg
    assert server.requests == []
    with pytest.raises(WeightsError):
        weights.resolve_checkpoint("fake_ckpt", allow_download=False)
    # allow_download=True overrides the environment.
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    assert weights.resolve_checkpoint("fake_ckpt", allow_download=True).read_bytes() == PAYLOAD


def test_resolution_order(server: _Server, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, server)
    wdir = tmp_path / "weights_dir"
    wdir.mkdir()
    env.mkdir(parents=True)
    (env / "ckpt.pt").write_bytes(PAYLOAD)  # found files are hash-checked: same content, other folders
    assert weights.resolve_checkpoint("fake_ckpt") == env / "ckpt.pt"
    (wdir / "ckpt.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv("PROMPTONCE_WEIGHTS", str(wdir))
    assert weights.resolve_checkpoint("fake_ckpt") == wdir / "ckpt.pt"
    explicit = tmp_path / "elsewhere.pt"
    explicit.write_bytes(b"explicit")
    assert weights.resolve_checkpoint(explicit) == explicit
    assert server.requests == []


def test_unknown_name_and_missing_path(env: Path) -> None:
    with pytest.raises(WeightsError, match="Known names"):
        weights.resolve_checkpoint("no_such_model")
    with pytest.raises(WeightsError, match="does not exist"):
        weights.resolve_checkpoint("/nowhere/model.pt")


def test_http_error_is_a_weights_error(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _register(monkeypatch, server)
    monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, "fake_ckpt",
                        CheckpointSpec(spec.name, spec.filename, spec.url.replace("ckpt.pt", "missing.pt"),
                                       spec.sha256))
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.resolve_checkpoint("fake_ckpt")


def test_load_state_dict_is_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(2)}}, good)
    assert torch.equal(weights.load_state_dict(good)["model"]["w"], torch.ones(2))

    bad = tmp_path / "bad.pt"
    torch.save({"obj": _Evil()}, bad)
    with pytest.raises(WeightsError, match="pickled code"):
        weights.load_state_dict(bad)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:20])
    with pytest.raises(WeightsError):
        weights.load_state_dict(trunc)


def test_cli_fetch_and_path(server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    _register(monkeypatch, server)
    assert weights.main(["path", "fake_ckpt"]) == 2
    assert weights.main(["fetch", "fake_ckpt"]) == 0
    assert capsys.readouterr().out.strip() == str(env / "ckpt.pt")
    assert weights.main(["verify", "fake_ckpt"]) == 0
    assert weights.main(["list"]) == 0
    assert "sam2.1_hiera_t" in capsys.readouterr().out
