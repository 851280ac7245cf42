"""Gradio's empty upload temp files: the app's upload fields make none, and the session store's
sweeper removes those other components leave (only empty, old, unopened ``tmpXXXXXXXX`` files directly
in the upload folder)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

OLD = 3600.0  # seconds: an age well past the sweep's minimum


def _touch(path: Path, data: bytes = b"", age_s: float = OLD) -> Path:
    path.write_bytes(data)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_only_old_empty_unopened_gradio_temps_are_removed(tmp_path):
    from promptonce.ui.session import UPLOAD_TEMP_MIN_AGE_S, remove_empty_upload_temps

    up = tmp_path / "gradio"
    (up / "0a1b2c").mkdir(parents=True)
    leftover = [_touch(up / "tmpab_cd9ef"), _touch(up / "tmp12345678")]
    kept = [
        _touch(up / "tmpyoung000", age_s=UPLOAD_TEMP_MIN_AGE_S / 4),  # may still be written
        _touch(up / "tmpwritten0", data=b"x"),  # not empty
        _touch(up / "tmpABCDEFGH"),  # not a tempfile name
        _touch(up / "tmpabc"),
        _touch(up / "tmpabcdefghi"),
        _touch(up / "upload.nii"),
        _touch(up / "0a1b2c" / "tmpzzzzzzzz"),  # inside an upload's own folder
    ]
    target = _touch(tmp_path / "elsewhere")
    os.symlink(target, up / "tmplink0000")  # a link, whatever it points to
    held = _touch(up / "tmpheld0000")
    with open(held, "rb"):
        n = remove_empty_upload_temps(up)
        assert held.exists() or not sys.platform.startswith("linux")  # open in this process: kept
    assert n == len(leftover) + (0 if sys.platform.startswith("linux") else 1)
    assert not any(p.exists() for p in leftover)
    assert all(p.exists() for p in kept) and (up / "tmplink0000").is_symlink() and target.exists()
    assert remove_empty_upload_temps(tmp_path / "missing") == 0
    # min_age_s and now decide what is old enough
    young = kept[0]
    assert remove_empty_upload_temps(up, min_age_s=UPLOAD_TEMP_MIN_AGE_S, now=time.time() + OLD) >= 1
    assert not young.exists()


def test_store_sweeper_removes_gradio_temps(tmp_path, monkeypatch):
    from promptonce.ui import session as S

    up = tmp_path / "gradio"
    up.mkdir()
    store = S.SessionStore(tmp_path / "sessions", ttl_s=600)
    assert store.sweep_upload_temps() == 0  # no upload folder: nothing to sweep
    store.close_all()
    monkeypatch.setattr(S, "UPLOAD_TEMP_SWEEP_S", 0.05)
    store = S.SessionStore(tmp_path / "sessions", ttl_s=600, upload_folder=up)
    try:
        left = _touch(up / "tmpqwerty12")
        store.start_sweeper()
        deadline = time.time() + 20
        while left.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not left.exists()
    finally:
        store.close_all()


def test_upload_component_makes_no_temp_file_and_checks_types(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import FileData, ListFiles

    from promptonce.ui import app
    from promptonce.ui.app import FILE_TYPES, upload_file

    cache = tmp_path / "gradio-cache"
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    comp = upload_file(file_count="multiple", file_types=FILE_TYPES)
    comp.GRADIO_CACHE = str(cache)
    plain = gr.File(file_count="multiple", file_types=FILE_TYPES)
    plain.GRADIO_CACHE = str(cache)
    assert type(comp) is gr.File and comp.type == "filepath"
    assert not Path(app.__file__).with_suffix(".pyi").exists()  # Gradio writes one for component subclasses
    up = tmp_path / "upload"
    up.mkdir()
    files = [_touch(up / "ct.nii.gz", b"data", age_s=0), _touch(up / "x.png", b"data", age_s=0)]
    payload = ListFiles(root=[FileData(path=str(f), orig_name=f.name) for f in files])
    assert [str(p) for p in comp.preprocess(payload)] == [str(f) for f in files]
    assert list(cache.iterdir()) == []
    plain.preprocess(payload)  # what gr.File itself does: one empty temp file per upload
    assert len([p for p in cache.iterdir() if p.stat().st_size == 0]) == len(files)
    bad = _touch(up / "evil.html", b"<script>", age_s=0)
    with pytest.raises(gr.Error, match="Invalid file type"):
        comp.preprocess(ListFiles(root=[FileData(path=str(bad), orig_name=bad.name)]))
