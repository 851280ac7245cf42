"""Checkpoints from the model hub, against a local HTTP server playing the hub (``HF_ENDPOINT``), no internet.

The fake hub answers ``/{repo}/resolve/{revision}/{file}`` as the hub does (``X-Repo-Commit``,
``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, a redirect to a CDN path for large files, 404 with
``X-Error-Code: EntryNotFound``); the same server plays the authors' download site at ``/authors/``.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

from promptonce.backends import hub, weights  # noqa: E402
from promptonce.backends.weights import CheckpointSpec, WeightsError  # noqa: E402

GOOD = bytes(range(256)) * 2048 + b"end"  # 512 KiB + 3 bytes
SHA = hashlib.sha256(GOOD).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.ThreadingHTTPServer):
    requests: list[str]
    authors_ok: bool = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the "cut" repository drops connections on purpose


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool, cut: bool = False) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        if cut:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        cdn = f"http://localhost:{self.server.server_address[1]}"  # another host name, as the hub's CDN is
        if self.path.startswith("/authors/"):
            if self.server.authors_ok:
                self._send(200, GOOD, {}, head)
            else:
                self._send(404, b"not found", {}, head)
            return
        if self.path.startswith("/cdn/"):
            self._send(200, GOOD, {"ETag": f'"{SHA}"'}, head)
            return
        parts = self.path.split("/")  # '', org, repo, 'resolve', revision, file
        if len(parts) != 6 or parts[3] != "resolve":
            self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)
            return
        repo, revision = parts[2], parts[4]
        meta = {"X-Repo-Commit": COMMIT, "ETag": f'"{SHA}"', "Accept-Ranges": "bytes"}
        if revision not in ("main", COMMIT):
            self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
        elif repo == "missing":
            self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, head)
        elif repo == "redirect":
            self._send(302, b"", {**meta, "X-Linked-Etag": f'"{SHA}"', "X-Linked-Size": str(len(GOOD)),
                                  "Location": f"{cdn}/cdn/{SHA}"}, head)
        elif repo == "broken":  # the right size and the announced hash, other bytes
            self._send(200, bytes(reversed(GOOD)), meta, head)
        elif repo == "cut":
            self._send(200, GOOD, meta, head, cut=not head)
        else:
            self._send(200, GOOD, meta, head)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server API
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._answer(head=False)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hub]:
    srv = _Hub(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path / "cache"))
    for var in ("PROMPTONCE_WEIGHTS", "PROMPTONCE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def _spec(srv: _Hub, monkeypatch: pytest.MonkeyPatch, repo: str, revision: str = "main") -> CheckpointSpec:
    url = f"http://127.0.0.1:{srv.server_address[1]}/authors/ckpt.pt"
    spec = CheckpointSpec("hubtest", "ckpt.pt", url, SHA, len(GOOD), hub_repo=f"promptonce-test/{repo}",
                          hub_revision=revision)
    monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, spec.name, spec)
    return spec


def _leftovers(cache: Path) -> list[str]:
    """Files under the cache other than the verified checkpoint, its sidecars and hub metadata."""
    return sorted(
        str(p.relative_to(cache)) for p in cache.rglob("*")
        if p.is_file() and p.name not in ("ckpt.pt", "ckpt.pt.sha256", "ckpt.pt.sha256-verified")
        and not p.name.endswith((".metadata", ".lock", ".gitignore", "CACHEDIR.TAG"))
    )


@pytest.mark.parametrize("repo", ["plain", "redirect"])
def test_hub_download_is_verified_and_lands_in_the_cache(fake_hub: _Hub, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, repo: str) -> None:
    _spec(fake_hub, monkeypatch, repo, revision=COMMIT)
    path = weights.resolve_checkpoint("hubtest")
    assert path == tmp_path / "cache" / "ckpt.pt"
    assert path.read_bytes() == GOOD
    assert path.with_name("ckpt.pt.sha256").read_text().split() == [SHA, str(len(GOOD))]
    assert not any(r.startswith("GET /authors/") for r in fake_hub.requests), fake_hub.requests
    assert any(f"/promptonce-test/{repo}/resolve/{COMMIT}/ckpt.pt" in r for r in fake_hub.requests)
    if repo == "redirect":
        assert any(r.startswith("GET /cdn/") for r in fake_hub.requests), fake_hub.requests
    assert _leftovers(tmp_path / "cache") == []
    # found in the cache afterwards, without asking anyone
    fake_hub.requests.clear()
    assert weights.resolve_checkpoint("hubtest", allow_download=False) == path
    assert fake_hub.requests == []


def test_a_broken_hub_file_is_deleted_and_the_authors_url_used(fake_hub: _Hub, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _spec(fake_hub, monkeypatch, "broken")
    path = weights.resolve_checkpoint("hubtest")
    assert path.read_bytes() == GOOD  # from the authors' URL
    assert any(r.startswith("GET /authors/") for r in fake_hub.requests)
    assert _leftovers(tmp_path / "cache") == []


def test_a_broken_hub_file_and_no_authors_file_is_a_clear_error(fake_hub: _Hub, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _spec(fake_hub, monkeypatch, "broken")
    fake_hub.authors_ok = False
    with pytest.raises(WeightsError) as exc:
        weights.resolve_checkpoint("hubtest")
    msg = str(exc.value)
    assert "promptonce-test/broken" in msg and "not the expected file" in msg and "HTTP 404" in msg
    assert not (tmp_path / "cache" / "ckpt.pt").exists()
    assert _leftovers(tmp_path / "cache") == []  # nothing half-written, no .part of a 404


@pytest.mark.parametrize("repo, revision", [("missing", "main"), ("plain", "no-such-revision")])
def test_a_missing_hub_file_falls_back_to_the_authors_url(fake_hub: _Hub, monkeypatch: pytest.MonkeyPatch,
                                                          repo: str, revision: str) -> None:
    _spec(fake_hub, monkeypatch, repo, revision)
    assert weights.resolve_checkpoint("hubtest").read_bytes() == GOOD
    assert any(r.startswith("GET /authors/") for r in fake_hub.requests)


def test_hub_download_error_names_the_repository(fake_hub: _Hub, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "ckpt.pt"
    with pytest.raises(WeightsError, match=r"promptonce-test/missing@main/ckpt.pt.*(404|EntryNotFound)"):
        hub.download("promptonce-test/missing", "ckpt.pt", "main", dest, lambda p: None)
    assert not dest.exists()


def test_a_cut_transfer_leaves_nothing_under_the_final_name(fake_hub: _Hub, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "ckpt.pt"
    with pytest.raises(WeightsError, match="promptonce-test/cut"):
        hub.download("promptonce-test/cut", "ckpt.pt", "main", dest, lambda p: None)
    assert not dest.exists()
    assert not (dest.parent / hub.STAGING / "ckpt.pt").exists()


def _preload(tmp_path: Path, data: bytes) -> Path:
    """Lays a file out as ``preload_from_hub`` / ``hf_hub_download`` leave it in the hub cache."""
    repo = tmp_path / "hf-hub" / "models--promptonce-test--plain"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snap / "ckpt.pt").write_bytes(data)
    return snap / "ckpt.pt"


def test_a_preloaded_hub_file_is_used_offline_and_verified(fake_hub: _Hub, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _spec(fake_hub, monkeypatch, "plain")
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    pre = _preload(tmp_path, GOOD)
    assert weights.resolve_checkpoint("hubtest") == pre
    assert fake_hub.requests == []
    pre.write_bytes(bytes(reversed(GOOD)))  # altered in place (same size)
    with pytest.raises(WeightsError, match="sha256"):
        weights.resolve_checkpoint("hubtest")


def test_offline_error_names_the_hub_cache(fake_hub: _Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    _spec(fake_hub, monkeypatch, "plain")
    with pytest.raises(WeightsError, match=r"hub cache .*promptonce-test/plain"):
        weights.resolve_checkpoint("hubtest", allow_download=False)
    assert fake_hub.requests == []


def test_hf_hub_offline_skips_the_hub(fake_hub: _Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    _spec(fake_hub, monkeypatch, "plain")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.resolve_checkpoint("hubtest").read_bytes() == GOOD
    assert all(r.startswith(("GET /authors/", "HEAD /authors/")) for r in fake_hub.requests), fake_hub.requests


def test_sam2_checkpoints_name_their_authors_hub_repositories() -> None:
    tiny = weights.KNOWN_CHECKPOINTS["sam2.1_hiera_t"]
    assert (tiny.hub_repo, tiny.filename) == ("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")
    assert weights.KNOWN_CHECKPOINTS["sam2_hiera_b+"].hub_repo == "facebook/sam2-hiera-base-plus"
    assert weights.KNOWN_CHECKPOINTS["sam_vit_b"].hub_repo is None  # not on the hub in its original format
