"""Safe zip extraction and zipped inputs."""

from __future__ import annotations

import gc
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptonce.errors import CorruptFileError, InputError, TooLargeError
from promptonce.io.archive import extracted, safe_extract
from promptonce.io.readers import load, load_dataset


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_unsafe_member_paths_are_refused(tmp_path, member):
    z = _zip(tmp_path / "z.zip", {"ok.txt": b"x", member: b"boom"})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InputError, match="refusing|outside"):
        safe_extract(z, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []  # checked before writing anything


def test_symlink_member_is_refused(tmp_path):
    z = tmp_path / "l.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InputError, match="symbolic link"):
        safe_extract(z, dest)


def test_zip_bomb_ratio_and_budget(tmp_path):
    z = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 * 1024 * 1024)})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(TooLargeError, match="zip bomb"):
        safe_extract(z, dest)
    small = _zip(tmp_path / "small.zip", {"a.bin": b"1" * 5000, "b.bin": b"2" * 5000})
    with pytest.raises(TooLargeError, match="budget"):
        safe_extract(small, dest, max_bytes=8000)
    assert list(dest.iterdir()) == []


def test_not_a_zip_and_crc_error(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    dest = tmp_path / "o"
    dest.mkdir()
    with pytest.raises(CorruptFileError):
        safe_extract(tmp_path / "fake.zip", dest)
    z = _zip(tmp_path / "c.zip", {"a.txt": b"hello world " * 100})
    raw = bytearray(z.read_bytes())
    i = raw.find(b"PK\x01\x02")  # corrupt a byte of the compressed data
    raw[40] ^= 0xFF
    assert i > 40
    z.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        safe_extract(z, dest)


def test_macos_metadata_is_skipped_and_temp_removed(tmp_path):
    buf = tmp_path / "img.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(buf)
    z = _zip(tmp_path / "one.zip", {"__MACOSX/._img.png": b"junk", "img.png": buf.read_bytes()})
    with extracted(z) as d:
        assert [p.name for p in d.rglob("*") if p.is_file()] == ["img.png"]
        kept = d
    assert not kept.exists()
    vol = load(z)
    assert vol.shape == (1, 4, 5) and int(vol.array[0, 0, 0]) == 7


def test_load_dataset_zip_is_lazy_and_cleaned_up(tmp_path):
    members = {}
    for i in (1, 2, 10):
        p = tmp_path / f"x{i}.png"
        Image.fromarray(np.full((3, 3), i, np.uint8)).save(p)
        members[f"set/x{i}.png"] = p.read_bytes()
    z = _zip(tmp_path / "set.zip", members)
    assert load_dataset(z).names == ["x1", "x2", "x10"]  # a single top folder is entered
    flat = _zip(tmp_path / "flat.zip", {k.split("/")[1]: v for k, v in members.items()})
    dset = load_dataset(flat)
    assert dset.names == ["x1", "x2", "x10"]
    assert [int(v.array[0, 0, 0]) for v in dset] == [1, 2, 10]
    import tempfile

    tmp_root = Path(tempfile.gettempdir())
    before = {p for p in tmp_root.glob("promptonce-zip-*")}
    assert before
    del dset
    gc.collect()
    after = {p for p in tmp_root.glob("promptonce-zip-*")}
    assert len(after) < len(before)
