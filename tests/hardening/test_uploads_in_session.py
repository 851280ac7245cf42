"""Uploads stay inside the session folder and its quota: zips of one folder, zips inside zips, zipped
references, the app's voxel budget (the gaps found by the hardening review, issue 8)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hardsynth import RawZip, phantom, save_nifti, write_dicom_series, zeros_deflated, zip_files

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    from promptonce.ui.session import SessionStore

    s = SessionStore(tmp_path / "sessions", ttl_s=600, max_session_bytes=8 * 2**20)
    yield s
    s.close_all()


@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    """Folders made in the system temp folder (redirected to an empty folder) during the test, whether
    or not they are removed afterwards: the loads below must make none."""
    d = tmp_path / "system-tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    made: list[Path] = []
    real = tempfile.mkdtemp

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        made.append(Path(out))
        return out

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    yield made
    assert _files_under(d) == []


def _nii(folder: Path, name: str, seed: int, shape=(6, 24, 24)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return save_nifti(folder / f"{name}.nii.gz", phantom(shape, seed=seed).transpose(2, 1, 0))


def _files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs]


def test_zip_of_one_folder_loads_its_files(tmp_path, store, system_tmp):
    """"Compress folder" zips (everything inside one top folder) load like the folder itself."""
    from promptonce.ui import handlers as H

    src = tmp_path / "src"
    a, b = _nii(src, "case_a", 1), _nii(src, "case_b", 2)
    z = zip_files(tmp_path / "scans.zip", {"scans/case_a.nii.gz": a, "scans/case_b.nii.gz": b})
    sess = store.get("onefolder")
    ws = H.load_inputs(sess, [z])
    assert [m.name for m in ws.metas] == ["case_a", "case_b"]
    assert ws.metas[0].shape == (6, 24, 24) and ws.metas[1].shape == (6, 24, 24)
    # a DICOM series zipped as one folder (two levels deep) is one case named after its folder
    write_dicom_series(tmp_path / "dcm" / "study" / "series1", phantom((5, 20, 20), seed=3))
    zd = tmp_path / "study.zip"
    with zipfile.ZipFile(zd, "w") as zf:
        for f in sorted((tmp_path / "dcm").rglob("*.dcm")):
            zf.write(f, arcname=str(f.relative_to(tmp_path / "dcm")))
    ws = H.load_inputs(sess, [zd])
    assert ws.n_volumes == 1 and ws.metas[0].shape == (5, 20, 20) and ws.metas[0].source_format == "dicom"
    assert system_tmp == []


def test_nested_zips_are_opened_inside_the_session_folder(tmp_path, store, system_tmp):
    """Zips inside the upload are extracted in the session folder (nothing in the system temp folder, no
    zip left for a reader to open), and read as load_dataset reads them: a zip next to images gives its
    own cases; a zipped DICOM series inside a sub-folder is read with that sub-folder."""
    from promptonce.ui import handlers as H

    src = tmp_path / "src"
    c, d, e = _nii(src, "c", 1), _nii(src, "d", 2), _nii(src, "e", 3)
    more = zip_files(tmp_path / "more.zip", {"d.nii.gz": d, "e.nii.gz": e})
    series = write_dicom_series(tmp_path / "series", phantom((4, 16, 16), seed=4))
    series_zip = zip_files(tmp_path / "series.zip", {f.name: f for f in series})
    outer = zip_files(
        tmp_path / "outer.zip",
        {"top/c.nii.gz": c, "top/more.zip": more, "top/ct_series/series.zip": series_zip},
    )
    sess = store.get("nested-ok")
    ws = H.load_inputs(sess, [outer])
    assert [m.name for m in ws.metas] == ["c", "ct_series", "d", "e"]
    assert ws.metas[1].shape == (4, 16, 16) and ws.metas[1].source_format == "dicom"
    for v in range(ws.n_volumes):
        ws.volume(v)  # every case reads
    assert system_tmp == []
    unzipped = _files_under(sess.directory / "unzipped")
    assert unzipped and not [f for f in unzipped if f.suffix == ".zip"]
    assert all(sess.directory in f.parents for f in unzipped)
    assert sess.bytes_used() <= sess.max_bytes


def test_zips_nested_too_deep_are_refused(tmp_path, store, system_tmp):
    from promptonce.errors import InputError
    from promptonce.ui import handlers as H

    inner = zip_files(tmp_path / "l3.zip", {"x.nii.gz": _nii(tmp_path / "src", "x", 1)})
    for level in (2, 1):
        inner = zip_files(tmp_path / f"l{level}.zip", {inner.name: inner})
    sess = store.get("deep")
    ws = H.load_inputs(sess, [inner])  # three levels: read
    assert [m.name for m in ws.metas] == ["x"]
    too_deep = zip_files(tmp_path / "l0.zip", {inner.name: inner})
    with pytest.raises(InputError, match=f"more than {H.MAX_ZIP_DEPTH} levels deep"):
        H.load_inputs(sess, [too_deep])
    assert system_tmp == []
    assert not (sess.directory / "unzipped").exists()  # a refused upload leaves nothing behind


def test_too_many_zips_in_one_upload_are_refused(tmp_path, store, monkeypatch):
    from promptonce.errors import InputError
    from promptonce.ui import handlers as H

    src = tmp_path / "src"
    inner = {f"z{i}.zip": zip_files(tmp_path / f"z{i}.zip", {f"n{i}.nii.gz": _nii(src, f"n{i}", i)}) for i in range(3)}
    outer = zip_files(tmp_path / "outer.zip", inner)
    from promptonce.ui import uploads

    sess = store.get("many")
    monkeypatch.setattr(uploads, "MAX_ZIPS", 4)  # the upload and its three zips: read
    assert [m.name for m in H.load_inputs(sess, [outer]).metas] == ["n0", "n1", "n2"]
    monkeypatch.setattr(uploads, "MAX_ZIPS", 3)
    with pytest.raises(InputError, match="more than 3 zip archives"):
        H.load_inputs(sess, [outer])
    assert not (sess.directory / "unzipped").exists()


def test_zip_in_a_subfolder_counts_against_the_quota(tmp_path, system_tmp):
    """A zip bomb one folder down (where load_dataset would read it through a DICOM sub-folder) is
    extracted with the session's free space as its budget, so it is refused before it is written."""
    from promptonce.errors import TooLargeError
    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    payload, crc = zeros_deflated(1 << 20)
    bomb = tmp_path / "bomb.zip"
    rz = RawZip(bomb)
    for i in range(6):
        rz.add(f"part{i}.dcm", payload, crc=crc, file_size=1 << 20)
    rz.close()
    series = write_dicom_series(tmp_path / "series", phantom((3, 16, 16), seed=5))
    outer = zip_files(
        tmp_path / "outer.zip",
        {"top/a.nii.gz": _nii(tmp_path / "src", "a", 1), "top/sub/bomb.zip": bomb,
         **{f"top/sub/deeper/{f.name}": f for f in series}},
    )  # fmt: skip
    store = SessionStore(tmp_path / "sessions", ttl_s=600, max_session_bytes=2 * 2**20)
    sess = store.get("bomb")
    try:
        with pytest.raises(TooLargeError, match="does not fit in this session"):
            H.load_inputs(sess, [outer])
        assert sess.bytes_used() <= sess.max_bytes
        assert system_tmp == []
    finally:
        store.close_all()


def test_zipped_reference_is_extracted_in_the_session(tmp_path, store, system_tmp):
    from promptonce.ui import handlers as H

    data = phantom((6, 24, 24), seed=7)
    img = save_nifti(tmp_path / "ct.nii.gz", data.transpose(2, 1, 0))
    mask = save_nifti(tmp_path / "ct_mask.nii.gz", (data > 0).astype(np.uint8).transpose(2, 1, 0))
    ref_zip = zip_files(tmp_path / "ct_mask.zip", {"ct_mask.nii.gz": mask})
    sess = store.get("refzip")
    ws = H.load_inputs(sess, [img], [ref_zip])
    assert ws.references[0] is not None and sess.directory in Path(ws.references[0]).parents
    ref = ws.reference(0)
    assert ref is not None and ref.shape == ws.metas[0].shape
    assert int(ref.sum()) == int((data > 0).sum())
    assert system_tmp == []


# ------------------------------------------------------------------------------------------ voxel budget
def test_app_voxel_budget_from_the_environment(monkeypatch):
    from promptonce.ui import handlers as H

    monkeypatch.delenv("PROMPTONCE_MAX_VOXELS", raising=False)
    assert H.app_max_voxels() == H.APP_MAX_VOXELS == 512 * 512 * 1000
    monkeypatch.setenv("PROMPTONCE_MAX_VOXELS", "5e6")
    assert H.app_max_voxels() == 5_000_000
    for junk in ("lots", "0", "-3"):
        monkeypatch.setenv("PROMPTONCE_MAX_VOXELS", junk)
        assert H.app_max_voxels() == H.APP_MAX_VOXELS


def test_images_over_the_app_voxel_budget_are_refused_readably(tmp_path, store, monkeypatch):
    from promptonce.errors import TooLargeError
    from promptonce.ui import handlers as H

    img = _nii(tmp_path / "src", "big", 1, shape=(6, 32, 32))  # 6,144 voxels
    sess = store.get("voxels")
    with pytest.raises(TooLargeError) as err:
        H.load_inputs(sess, [img], max_voxels=5_000)
    msg = H.user_message(err.value, sess)
    assert "6,144 voxels" in msg and "more than this server reads (5,000 voxels" in msg, msg
    assert "--max-voxels" not in msg and "max_voxels=" not in msg and str(tmp_path) not in msg, msg
    # the environment sets the budget when the caller does not
    monkeypatch.setenv("PROMPTONCE_MAX_VOXELS", "6000")
    with pytest.raises(TooLargeError, match="6,000 voxels per image"):
        H.load_inputs(sess, [img])
    monkeypatch.setenv("PROMPTONCE_MAX_VOXELS", "6144")
    ws = H.load_inputs(sess, [img])
    assert ws.max_voxels == 6144 and ws.metas[0].shape == (6, 32, 32)
