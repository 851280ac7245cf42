"""Patient data: DICOM-derived outputs carry no identifying tags; nothing identifying is logged; uploads go with the session.

A synthetic CT series is written with PatientName, PatientID, PatientBirthDate, AccessionNumber,
InstitutionName (and a few more, see ``hardsynth.PHI``) set to unusual strings, loaded, segmented with
the fake backend, and written in every output format. Every output's bytes (and the bytes inside
its zip / gzip layers) are searched for those strings. See docs/PRIVACY.md.
"""

from __future__ import annotations

import gzip
import io
import logging
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hardsynth import PHI, phantom, write_dicom_series

pytestmark = pytest.mark.timeout(120)


#: Parts of the identifying values that are ordinary words (searched only as part of the whole value).
_GENERIC = {"saint", "hospital", "street", "comment", "radiology", "alias", "maiden"}


def _words() -> list[str]:
    """Every identifying value and its parts (DICOM PN uses ^), in three cases."""
    out: set[str] = set()
    for v in PHI.values():
        out.add(v)
        out.update(p for p in v.replace("^", " ").split() if len(p) >= 5 and p.lower() not in _GENERIC)
    return sorted({w for s in out for w in (s, s.upper(), s.lower())})


WORDS = _words()
#: The words as they could appear in bytes.
NEEDLES = [w.encode(enc) for w in WORDS for enc in ("utf-8", "utf-16-le")]


def _layers(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The file's bytes, plus those of its gzip / zip content (recursively)."""
    out = [(name, data)]
    if data[:2] == b"\x1f\x8b":
        out += _layers(name + "|gunzip", gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                out.append((f"{name}|{info.filename}|name", info.filename.encode()))
                out += _layers(f"{name}|{info.filename}", zf.read(info))
    return out


def _leaks(path: Path) -> list[str]:
    found = []
    for where, data in _layers(path.name, path.read_bytes()):
        for n in NEEDLES:
            if n in data:
                found.append(f"{where}: {n!r}")
    return found


@pytest.fixture
def dicom_series(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    write_dicom_series(folder, phantom((6, 32, 32), value=900))
    return folder


def _run_fake(vol):
    from promptonce.backends.fake import FakeBackend
    from promptonce.engine import segment
    from promptonce.types import Box, ObjectPrompt, SlicePrompt

    k = vol.n_slices // 2
    prompt = SlicePrompt((ObjectPrompt(box=Box(8, 8, 23, 23), object_id=1, name="disc"),), slice_index=k)
    labels = np.zeros(vol.shape, np.uint8)
    for res in segment(vol, prompt, scope="volume", backend=FakeBackend(), click_backend=None):
        labels[res.slice_index] = res.labels
    return labels


def test_the_needles_are_in_the_input(dicom_series):
    """The check can fail: the identifying strings ARE in the uploaded files."""
    assert all(_leaks(p) for p in dicom_series.iterdir())


def test_outputs_carry_no_patient_identifiers(dicom_series, tmp_path, caplog):
    import nibabel as nib
    import pydicom

    from promptonce.io import writers
    from promptonce.io.readers import load
    from promptonce.metrics import MetricAccumulator

    caplog.set_level(logging.DEBUG)
    vol = load(dicom_series)
    assert vol.source_format == "dicom" and vol.shape == (6, 32, 32)
    labels = _run_fake(vol)
    assert labels.any()
    out = tmp_path / "out"
    out.mkdir()
    nii = writers.write_mask_nifti(labels, vol, out / f"{vol.name}_mask.nii.gz")
    seg = writers.write_dicom_seg(labels, vol, out / f"{vol.name}_seg.dcm", segment_names={1: "disc"})
    pngs = writers.write_png_masks_zip([(vol.slice_name(k), labels[k]) for k in range(vol.n_slices)], out / "png.zip")
    acc = MetricAccumulator()
    acc.add(vol.name, labels, labels, spacing=vol.spacing[::-1], prompts=1)
    csv_path = writers.write_metrics_csv(acc.rows(), out / "metrics.csv")
    json_path = writers.write_json({"summary": acc.summary(), "cases": acc.rows()}, out / "metrics.json")
    gif = writers.write_overlay_gif(vol, labels, out / "overlay.gif")
    files = [nii, seg, pngs, csv_path, json_path, gif]
    leaks = {p.name: _leaks(p) for p in files}
    assert not any(leaks.values()), leaks
    # NIfTI header text fields and extensions
    hdr = nib.load(str(nii)).header
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        if field in hdr:
            text = bytes(np.asarray(hdr[field]).tobytes())
            assert not any(n in text for n in NEEDLES), field
    assert all(not any(n in ext.get_content() for n in NEEDLES) for ext in hdr.extensions)
    # DICOM-SEG: identifying attributes are emptied or ANONYMOUS, and no element holds a patient value
    ds = pydicom.dcmread(seg)
    assert str(ds.get("PatientName", "")) in ("", "ANONYMOUS")
    assert str(ds.get("PatientID", "")) in ("", "ANONYMOUS")
    assert not ds.get("PatientBirthDate") and not ds.get("AccessionNumber") and "InstitutionName" not in ds
    values = []
    ds.walk(lambda _d, elem: values.append(str(elem.value)) if elem.VR not in ("OB", "OW", "SQ") else None)
    phi_values = [v for v in PHI.values()]
    assert not [v for v in values if any(p.split("^")[0] in v for p in phi_values)]
    # nothing identifying was logged while reading, segmenting and writing
    assert not [w for w in WORDS if w in caplog.text]


def test_app_downloads_and_logs_carry_no_identifiers_and_uploads_go_with_the_session(dicom_series, tmp_path, caplog):
    """The same through the app's handlers: upload a zip of the series, click, run, download; then close."""
    from hardsynth import count_files, zip_files

    from promptonce.ui import handlers as H
    from promptonce.ui.session import SessionStore

    caplog.set_level(logging.DEBUG)
    upload = zip_files(tmp_path / "upload.zip", {f"s/{p.name}": p for p in sorted(dicom_series.iterdir())})
    store = SessionStore(tmp_path / "sessions", ttl_s=600)
    try:
        sess = store.get("privacy-session")
        ws = H.load_inputs(sess, [upload])
        sx, sy = ws.display_scale(0)
        H.click(ws, 0, 3, (16 + 0.5) * sx - 0.5, (16 + 0.5) * sy - 0.5, "positive", "fake")
        progress = list(H.run(ws, "volume", "transfer", "fake", "auto", 0, threading.Event()))
        assert progress[-1].finished
        files = H.write_downloads(ws, H.results_summary(ws))
        names = {p.name for p in files}
        assert any(n.endswith(".nii.gz") for n in names) and any(n.endswith("_seg.dcm") for n in names), names
        leaks = {p.name: _leaks(p) for p in files}
        assert not any(leaks.values()), leaks
        # the session folder holds the upload while the session lives ...
        assert count_files(sess.directory) > 0
        held = list(sess.directory.rglob("*"))
        assert any(_leaks(p) for p in held if p.is_file())
    finally:
        store.close_all()
    # ... and nothing once it is closed
    assert not sess.directory.exists() and not sess.results_directory.exists()
    assert count_files(tmp_path / "sessions") == 0 and count_files(store.results_root) == 0
    assert not [w for w in WORDS if w in caplog.text]
    # the log does not carry file contents either (a slice's raw bytes would show up as a long repr)
    assert len(caplog.text) < 20_000, len(caplog.text)
