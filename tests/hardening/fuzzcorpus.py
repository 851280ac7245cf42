"""A deterministic corpus of malformed inputs for the readers, and a bounded runner for it.

``build_corpus(root, seed)`` writes 500+ broken, hostile or odd inputs under ``root`` and returns
the cases (JSON-able dicts). ``python fuzzcorpus.py CORPUS.json RESULT.json`` runs them in the
current process, one by one, with a per-case time limit (``signal.alarm``), and writes the counts.
The test starts that command in a subprocess whose address space is limited with
``resource.setrlimit(RLIMIT_AS)``, so a reader that tries to allocate past the bound fails there
(as a ``MemoryError``, counted as a crash) instead of exhausting the machine.

Case fields:
    id: unique name; category: family of the input (nifti, dicom, image, numpy, zip, reference, dataset).
    call: ``load`` | ``load_dataset`` | ``load_reference``.
    paths: the input path(s) given to the call; image: for ``load_reference``, the image it belongs to.
    expect: ``"error"`` when the input must be refused (a PromptOnceError), ``"any"`` when a valid
        result is acceptable too (e.g. a bit flip in a voxel value).
    sentinel: a path that must NOT exist after the run (a pickle payload's or a zip escape's target).

Outcomes per case: ``valid`` (a Volume / all volumes of a Dataset), ``error`` (a PromptOnceError with
a non-empty message), ``crash`` (any other exception, including MemoryError), ``hang`` (over the
time limit), ``bad_valid`` (accepted although it must be refused), ``empty_message``, ``escaped``
(a sentinel exists afterwards).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardsynth import (  # noqa: E402
    RawZip,
    deflate,
    dicom_dataset,
    phantom,
    png_with_header,
    save_nifti,
    write_dicom_series,
    zeros_deflated,
    zip_files,
)

Case = dict[str, Any]

# NIfTI-1 header offsets (little endian)
N1 = {
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "dim5": (50, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "qfac": (76, "<f"),
    "pixdim1": (80, "<f"), "pixdim2": (84, "<f"), "pixdim3": (88, "<f"), "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "qform_code": (252, "<h"), "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"), "quatern_c": (260, "<f"), "qoffset_x": (268, "<f"), "srow_x0": (280, "<f"),
    "srow_x3": (292, "<f"), "srow_y1": (300, "<f"), "srow_z2": (320, "<f"),
}  # fmt: skip
N2_DIM = 16  # NIfTI-2: dim[8] int64 at byte 16
N2_DATATYPE = 12


def _patch(raw: bytes, offset: int, fmt: str, value: Any) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _flip(raw: bytes, rng: np.random.Generator, n_bits: int, lo: int = 0, hi: int | None = None) -> bytes:
    b = bytearray(raw)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(n_bits):
        pos = int(rng.integers(lo, hi))
        b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None, nifti2: bool = False) -> bytes:
    import nibabel as nib

    aff = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image)(np.asarray(data), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    return img.to_bytes()


class _Builder:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.cases: list[Case] = []
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add(
        self, cid: str, category: str, paths: list[Path], *, call: str = "load", expect: str = "any",
        image: Path | None = None, sentinel: Path | None = None,
    ) -> None:
        self.cases.append({
            "id": cid, "category": category, "call": call, "paths": [str(p) for p in paths], "expect": expect,
            "image": str(image) if image is not None else None, "sentinel": str(sentinel) if sentinel else None,
        })  # fmt: skip

    def file(self, cid: str, category: str, name: str, data: bytes, **kw: Any) -> Path:
        p = self.path(f"{cid}/{name}")
        p.write_bytes(data)
        self.add(cid, category, [p], **kw)
        return p


# ------------------------------------------------------------------------------------------ NIfTI
def _nifti_cases(b: _Builder) -> None:
    bases = {
        "i16": _nifti_bytes(np.transpose(phantom((8, 16, 16)), (2, 1, 0))),
        "f32": _nifti_bytes(np.transpose(phantom((6, 12, 14)).astype(np.float32), (2, 1, 0))),
        "u8_2d": _nifti_bytes(np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)),
        "rot": _nifti_bytes(
            np.ones((10, 9, 7), np.int16),
            np.array([[0, 0, 2.0, 5], [0.7, 0.7, 0, -3], [0.7, -0.7, 0, 9], [0, 0, 0, 1]]),
        ),
    }
    # truncations and bit flips, plain and gzipped
    for name, raw in bases.items():
        gz = gzip.compress(raw, mtime=0)
        for frac in (0.0, 0.05, 0.2, 0.5, 0.9, 0.99):
            cut = max(1, int(len(raw) * frac))
            b.file(f"nifti_trunc_{name}_{cut}", "nifti", "t.nii", raw[:cut])
            gcut = max(1, int(len(gz) * frac))
            b.file(f"nifti_gz_trunc_{name}_{gcut}", "nifti", "t.nii.gz", gz[:gcut])
        for cut in (4, 100, 347, 351):
            b.file(f"nifti_trunc_hdr_{name}_{cut}", "nifti", "t.nii", raw[:cut])
        for i in range(10):
            flipped = _flip(raw, b.rng, int(b.rng.integers(1, 5)), 0, 352 if i < 7 else None)
            b.file(f"nifti_flip_{name}_{i}", "nifti", "f.nii", flipped)
        for i in range(5):
            flipped = _flip(raw, b.rng, int(b.rng.integers(1, 4)), 0, 352)
            b.file(f"nifti_gzflip_hdr_{name}_{i}", "nifti", "f.nii.gz", gzip.compress(flipped, mtime=0))
            b.file(f"nifti_gzflip_stream_{name}_{i}", "nifti", "g.nii.gz", _flip(gz, b.rng, 1 + i % 3, 10))
    # header fields with absurd values
    raw = bases["i16"]
    nan, inf = float("nan"), float("inf")
    mutations: list[tuple[str, list[tuple[str, Any]], str]] = [
        ("dim0_0", [("dim0", 0)], "any"), ("dim0_1", [("dim0", 1)], "error"), ("dim0_5", [("dim0", 5)], "any"),
        ("dim0_8", [("dim0", 8)], "any"), ("dim0_neg", [("dim0", -1)], "any"), ("dim0_9", [("dim0", 9)], "any"),
        ("dim0_100", [("dim0", 100)], "any"),
        ("dims_max", [("dim1", 32767), ("dim2", 32767), ("dim3", 32767)], "error"),
        ("dims_neg", [("dim1", -16), ("dim2", -16)], "error"),
        ("dim_zero", [("dim2", 0)], "error"), ("dim_minint", [("dim3", -32768)], "error"),
        ("dims_big_within_budget", [("dim1", 512), ("dim2", 512), ("dim3", 1000)], "error"),
        ("dims_f64_within_budget", [("dim1", 512), ("dim2", 512), ("dim3", 2000), ("datatype", 64), ("bitpix", 64)], "error"),
        ("dim4_huge", [("dim0", 4), ("dim4", 30000)], "error"),
        ("dim5", [("dim0", 5), ("dim4", 1), ("dim5", 3)], "error"),
        ("dt_0", [("datatype", 0)], "error"), ("dt_binary", [("datatype", 1), ("bitpix", 1)], "error"),
        ("dt_complex", [("datatype", 32), ("bitpix", 64)], "error"),
        ("dt_rgb", [("datatype", 128), ("bitpix", 24)], "error"),
        ("dt_rgba", [("datatype", 2304), ("bitpix", 32)], "error"),
        ("dt_f128", [("datatype", 1536), ("bitpix", 128)], "error"),
        ("dt_c256", [("datatype", 2048), ("bitpix", 256)], "error"),
        ("dt_9999", [("datatype", 9999)], "error"), ("dt_neg", [("datatype", -5)], "error"),
        ("bitpix_wrong", [("bitpix", 8)], "any"), ("bitpix_0", [("bitpix", 0)], "any"),
        ("vox_0", [("vox_offset", 0.0)], "any"), ("vox_huge", [("vox_offset", 1e12)], "error"),
        ("vox_neg", [("vox_offset", -352.0)], "any"), ("vox_frac", [("vox_offset", 353.5)], "any"),
        ("vox_nan", [("vox_offset", nan)], "any"), ("vox_past_end", [("vox_offset", 4000.0)], "error"),
        ("slope_nan", [("scl_slope", nan)], "any"), ("slope_inf", [("scl_slope", inf)], "any"),
        ("slope_0", [("scl_slope", 0.0)], "any"), ("slope_huge", [("scl_slope", -3e38)], "any"),
        ("inter_nan", [("scl_slope", 1.0), ("scl_inter", nan)], "any"),
        ("inter_inf", [("scl_slope", 1.0), ("scl_inter", inf)], "error"),
        ("pixdim_0", [("pixdim1", 0.0), ("qform_code", 0), ("sform_code", 0)], "any"),
        ("pixdim_nan", [("pixdim1", nan), ("qform_code", 0), ("sform_code", 0)], "any"),
        ("pixdim_inf", [("pixdim2", inf), ("qform_code", 0), ("sform_code", 0)], "any"),
        ("pixdim_neg", [("pixdim3", -2.5), ("qform_code", 0), ("sform_code", 0)], "any"),
        ("qfac_nan", [("qfac", nan), ("sform_code", 0)], "any"),
        ("quat_nan", [("quatern_b", nan), ("sform_code", 0)], "any"),
        ("quat_big", [("quatern_b", 2.0), ("quatern_c", 2.0), ("sform_code", 0)], "any"),
        ("qoffset_inf", [("qoffset_x", inf), ("sform_code", 0)], "any"),
        ("srow_nan", [("srow_x0", nan)], "any"), ("srow_inf", [("srow_x3", inf)], "any"),
        ("srow_zero", [("srow_x0", 0.0), ("srow_y1", 0.0), ("srow_z2", 0.0)], "any"),
        ("srow_nan_only", [("srow_x0", nan), ("qform_code", 0)], "any"),
        ("sform_99", [("sform_code", 99)], "any"), ("qform_neg", [("qform_code", -1)], "any"),
        ("no_transform", [("qform_code", 0), ("sform_code", 0)], "any"),
        ("sizeof_0", [("sizeof_hdr", 0)], "any"), ("sizeof_1000", [("sizeof_hdr", 1000)], "any"),
        ("sizeof_540", [("sizeof_hdr", 540)], "any"),
    ]  # fmt: skip
    for mid, fields, expect in mutations:
        m = raw
        for field, value in fields:
            off, fmt = N1[field]
            m = _patch(m, off, fmt, value)
        b.file(f"nifti_hdr_{mid}", "nifti", "h.nii", m, expect=expect)
        b.file(f"nifti_gz_hdr_{mid}", "nifti", "h.nii.gz", gzip.compress(m, mtime=0), expect=expect)
    for magic in (b"ni1\x00", b"xxxx", b"n+2\x00", b"\x00\x00\x00\x00"):
        b.file(f"nifti_magic_{magic[:3].hex()}", "nifti", "m.nii", raw[:344] + magic + raw[348:])
    # NaN voxels, arrays of odd rank, NIfTI-2 with absurd dims
    f = np.zeros((8, 8, 4), np.float32)
    f[2, 3, 1] = np.nan
    b.file("nifti_nan_voxel", "nifti", "n.nii", _nifti_bytes(f), expect="error")
    f[2, 3, 1] = np.inf
    b.file("nifti_inf_voxel", "nifti", "n.nii.gz", gzip.compress(_nifti_bytes(f)), expect="error")
    b.file("nifti_1d", "nifti", "a.nii", _nifti_bytes(np.arange(50, dtype=np.int16)), expect="error")
    b.file("nifti_4d", "nifti", "a.nii", _nifti_bytes(np.zeros((8, 8, 4, 3), np.int16)), expect="error")
    b.file("nifti_5d", "nifti", "a.nii", _nifti_bytes(np.zeros((4, 4, 3, 2, 2), np.int16)), expect="error")
    b.file("nifti_5d_singleton", "nifti", "a.nii", _nifti_bytes(np.zeros((4, 4, 3, 1, 1), np.int16)))
    b.file("nifti_complex", "nifti", "a.nii", _nifti_bytes(np.zeros((4, 4, 3), np.complex64)), expect="error")
    b.file("nifti_bool_like", "nifti", "a.nii", _nifti_bytes(np.ones((4, 4, 3), np.uint8)))
    b.file("nifti_empty", "nifti", "e.nii", b"", expect="error")
    b.file("nifti_text", "nifti", "readme.nii", b"this is not an image\n" * 20, expect="error")
    nan_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nan_aff[0, 3] = np.nan
    b.file("nifti_nan_affine_both", "nifti", "a.nii",
           _patch(_patch(_nifti_bytes(np.ones((4, 4, 3), np.int16)), 268, "<f", np.nan), 292, "<f", np.nan),
           expect="any")  # fmt: skip
    two = _nifti_bytes(np.ones((6, 5, 4), np.int16), nifti2=True)
    for mid, dims in {
        "1e5_cubed": (3, 100000, 100000, 100000), "neg": (3, -6, 5, 4), "huge_i64": (3, 2**40, 2**40, 1),
        "zero": (3, 6, 0, 4), "4d_huge": (4, 6, 5, 4, 2**31), "neg_huge": (3, 6, 5, -(2**63) + 4),
        "neg_pair": (3, -6, -5, 4),
    }.items():
        m = two
        for i, d in enumerate(dims):
            m = _patch(m, N2_DIM + 8 * i, "<q", d)
        b.file(f"nifti2_dims_{mid}", "nifti", "d.nii", m, expect="error")
    b.file("nifti2_valid", "nifti", "v.nii", two)
    b.file("nifti2_dt_bad", "nifti", "v.nii", _patch(two, N2_DATATYPE, "<h", 777), expect="error")
    for i in range(10):
        b.file(f"nifti2_flip_{i}", "nifti", "f.nii", _flip(two, b.rng, 2, 0, 544))
    # Analyze pair with a missing .img
    hdr_only = _patch(raw[:348], 344, "4s", b"ni1\x00")
    b.file("analyze_missing_img", "nifti", "pair.hdr", hdr_only, expect="error")


# ------------------------------------------------------------------------------------------ DICOM
def _dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_cases(b: _Builder) -> None:
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit

    px = phantom((1, 16, 16))[0]
    base = _dicom_bytes(dicom_dataset(px))
    xr = _dicom_bytes(dicom_dataset(np.abs(px), position=None, modality="DX"))
    for name, raw in (("ct", base), ("xr", xr)):
        for cut in (8, 128, 132, 140, 200, 300, len(raw) // 2, len(raw) - 300, len(raw) - 2):
            b.file(f"dicom_trunc_{name}_{cut}", "dicom", "t.dcm", raw[:cut])
        # element lengths that promise far more bytes than the file holds (pixel data, an OB value, meta group)
        pix = raw.find(b"\xe0\x7f\x10\x00OW\x00\x00")
        for length in (0xFFFFFFF0, 0x7FFFFFFF, len(raw) + 1):
            b.file(f"dicom_pixlen_{name}_{length:x}", "dicom", "l.dcm", _patch(raw, pix + 8, "<I", length))
        meta = raw.find(b"\x02\x00\x01\x00OB\x00\x00")  # FileMetaInformationVersion, 4-byte length
        b.file(f"dicom_oblen_{name}", "dicom", "l.dcm", _patch(raw, meta + 8, "<I", 0xFFFFFF00), expect="any")
        for i in range(20):
            b.file(f"dicom_flip_{name}_{i}", "dicom", "f.dcm", _flip(raw, b.rng, int(b.rng.integers(1, 6)), 128))

    def mutated(cid: str, edit: Callable[[Any], None], expect: str = "error", modality: str = "CT") -> None:
        ds = dicom_dataset(px if modality == "CT" else np.abs(px), position=(0, 0, 0) if modality == "CT" else None,
                           modality=modality)  # fmt: skip
        edit(ds)
        b.file(f"dicom_hdr_{cid}", "dicom", "h.dcm", _dicom_bytes(ds), expect=expect)

    def setter(**kv: Any) -> Callable[[Any], None]:
        def edit(ds) -> None:
            for k, v in kv.items():
                setattr(ds, k, v)

        return edit

    def deleter(*names: str) -> Callable[[Any], None]:
        def edit(ds) -> None:
            for n in names:
                delattr(ds, n)

        return edit

    def jpeg_garbage(ds) -> None:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(60)])
        ds["PixelData"].VR = "OB"

    nan = float("nan")
    for modality in ("CT", "DX"):
        m = modality.lower()
        mutated(f"{m}_rows_65535", setter(Rows=65535), modality=modality)
        mutated(f"{m}_cols_0", setter(Columns=0), modality=modality)
        mutated(f"{m}_rows_0", setter(Rows=0), modality=modality)
        mutated(f"{m}_rows_cols_max", setter(Rows=65535, Columns=65535), modality=modality)
        mutated(f"{m}_bits_7", setter(BitsAllocated=7), modality=modality)
        mutated(f"{m}_bits_0", setter(BitsAllocated=0), modality=modality)
        mutated(f"{m}_bits_64", setter(BitsAllocated=64), modality=modality)
        mutated(f"{m}_bits_1", setter(BitsAllocated=1), modality=modality, expect="any")
        mutated(f"{m}_stored_40", setter(BitsStored=40, HighBit=39), modality=modality, expect="any")
        mutated(f"{m}_stored_0", setter(BitsStored=0), modality=modality, expect="any")
        mutated(f"{m}_samples_0", setter(SamplesPerPixel=0), modality=modality)
        mutated(f"{m}_samples_3", setter(SamplesPerPixel=3), modality=modality)
        mutated(f"{m}_samples_4", setter(SamplesPerPixel=4, PhotometricInterpretation="CMYK"), modality=modality)
        mutated(f"{m}_photo_rgb", setter(PhotometricInterpretation="RGB"), modality=modality, expect="any")
        mutated(f"{m}_photo_palette", setter(PhotometricInterpretation="PALETTE COLOR"), modality=modality, expect="any")
        mutated(f"{m}_photo_ybr", setter(PhotometricInterpretation="YBR_FULL_422"), modality=modality, expect="any")
        mutated(f"{m}_photo_mono1", setter(PhotometricInterpretation="MONOCHROME1"), modality=modality, expect="any")
        mutated(f"{m}_photo_empty", setter(PhotometricInterpretation=""), modality=modality, expect="any")
        mutated(f"{m}_pixrep_2", setter(PixelRepresentation=2), modality=modality, expect="any")
        mutated(f"{m}_no_pixels", deleter("PixelData"), modality=modality)
        mutated(f"{m}_empty_pixels", setter(PixelData=b""), modality=modality)
        mutated(f"{m}_short_pixels", setter(PixelData=px.tobytes()[:100]), modality=modality)
        mutated(f"{m}_long_pixels", setter(PixelData=px.tobytes() * 2), modality=modality, expect="any")
        mutated(f"{m}_frames_1000", setter(NumberOfFrames=1000), modality=modality)
        mutated(f"{m}_frames_0", setter(NumberOfFrames=0), modality=modality, expect="any")
        mutated(f"{m}_frames_neg", setter(NumberOfFrames=-3), modality=modality, expect="any")
        mutated(f"{m}_frames_2", setter(NumberOfFrames=2), modality=modality)
        mutated(f"{m}_spacing_0", setter(PixelSpacing=[0, 0]), modality=modality, expect="any")
        mutated(f"{m}_spacing_neg", setter(PixelSpacing=[-1, -1]), modality=modality, expect="any")
        mutated(f"{m}_spacing_nan", setter(PixelSpacing=[nan, nan]), modality=modality, expect="any")
        mutated(f"{m}_spacing_one", setter(PixelSpacing=[1.0]), modality=modality, expect="any")
        mutated(f"{m}_slope_nan", setter(RescaleSlope=nan), modality=modality, expect="any")
        mutated(f"{m}_slope_inf", setter(RescaleSlope=float("inf"), RescaleIntercept=1.5), modality=modality)
        mutated(f"{m}_slope_0", setter(RescaleSlope=0.0), modality=modality, expect="any")
        mutated(f"{m}_slope_huge", setter(RescaleSlope=1e308, RescaleIntercept=0.5), modality=modality)
        mutated(f"{m}_inter_huge", setter(RescaleIntercept=1e308), modality=modality, expect="any")
        mutated(f"{m}_window_bad", setter(WindowWidth=-5, WindowCenter=nan), modality=modality, expect="any")
        mutated(f"{m}_jpeg_garbage", jpeg_garbage, modality=modality)
        raw_ts = _dicom_bytes(dicom_dataset(np.abs(px), position=None, modality=modality))
        b.file(f"dicom_hdr_{m}_ts_unknown", "dicom", "h.dcm",
               raw_ts.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1))  # fmt: skip
        mutated(f"{m}_no_rows", deleter("Rows"), modality=modality)
        mutated(f"{m}_no_sop", deleter("SOPClassUID"), modality=modality, expect="any")
    mutated("ct_iop_zero", setter(ImageOrientationPatient=[0.0] * 6))
    mutated("ct_iop_nan", setter(ImageOrientationPatient=[nan] * 6))
    mutated("ct_iop_short", setter(ImageOrientationPatient=[1.0, 0.0, 0.0]), expect="any")
    mutated("ct_iop_parallel", setter(ImageOrientationPatient=[1.0, 0, 0, 1.0, 0, 0]))
    mutated("ct_ipp_nan", setter(ImagePositionPatient=[nan, 0.0, 0.0]))
    mutated("ct_ipp_inf", setter(ImagePositionPatient=[float("inf"), 0.0, 0.0]))
    mutated("ct_ipp_short", setter(ImagePositionPatient=[1.0, 2.0]), expect="any")
    mutated("ct_thickness_nan", setter(SliceThickness=nan), expect="any")
    # a dataset without preamble / file meta (raw), and a DICOMDIR-like file without an image
    ds = dicom_dataset(px)
    buf = io.BytesIO()
    del ds.file_meta
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    b.file("dicom_raw_no_preamble", "dicom", "raw.dcm", buf.getvalue(), expect="any")
    b.file("dicom_raw_trunc", "dicom", "raw.dcm", buf.getvalue()[:150])
    ds = dicom_dataset(px)
    for n in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
              "PhotometricInterpretation", "PixelRepresentation"):  # fmt: skip
        delattr(ds, n)
    b.file("dicom_no_image", "dicom", "report.dcm", _dicom_bytes(ds), expect="error")
    b.file("dicom_only_marker", "dicom", "m.dcm", bytes(128) + b"DICM", expect="error")
    b.file("dicom_marker_garbage", "dicom", "m.dcm", bytes(128) + b"DICM" + bytes(b.rng.integers(0, 256, 400, np.uint8)))
    # series
    stack = phantom((5, 16, 16))

    def series(cid: str, expect: str = "any", edit: Callable[[list[Path]], None] | None = None, zipped: bool = False) -> None:
        folder = b.path(f"{cid}/series")
        files = write_dicom_series(folder, stack)
        if edit is not None:
            edit(files)
        if zipped:
            z = zip_files(b.path(f"{cid}/series.zip"), {f"s/{p.name}": p for p in files})
            b.add(cid, "dicom", [z], expect=expect)
        else:
            b.add(cid, "dicom", [folder], expect=expect)

    def rewrite(idx: int, **kv: Any) -> Callable[[list[Path]], None]:
        def edit(files: list[Path]) -> None:
            d = pydicom.dcmread(files[idx])
            for k, v in kv.items():
                setattr(d, k, v)
            d.save_as(files[idx])

        return edit

    series("dicom_series_valid")
    series("dicom_series_valid_zip", zipped=True)
    series("dicom_series_one_truncated", "error", lambda fs: fs[2].write_bytes(fs[2].read_bytes()[:-100]))
    series("dicom_series_one_empty", "any", lambda fs: fs[1].write_bytes(b""))
    series("dicom_series_one_garbage", "any", lambda fs: fs[3].write_bytes(b"\x00garbage" * 50))
    series("dicom_series_one_resized", "any", rewrite(1, Rows=8, PixelData=stack[1, :8].tobytes()))
    series("dicom_series_dup_position", "error", rewrite(2, ImagePositionPatient=[-12.0, -12.0, 0.0]))
    series("dicom_series_nan_position", "error", rewrite(2, ImagePositionPatient=[nan, -12.0, 5.0]))
    series("dicom_series_other_orientation", "any", rewrite(3, ImageOrientationPatient=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0]))
    series("dicom_series_one_rows_lie", "any", rewrite(0, Rows=17))
    series("dicom_series_trunc_zip", "error", lambda fs: None, zipped=True)
    # the zipped series truncated: rewrite the last case's zip
    z = Path(b.cases[-1]["paths"][0])
    z.write_bytes(z.read_bytes()[: len(z.read_bytes()) // 2])
    # many files at one position (4D without time index)
    folder = b.path("dicom_series_all_same_pos/series")
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        d = dicom_dataset(stack[k], position=(0.0, 0.0, 0.0), instance=k + 1)
        d.save_as(folder / f"IM{k}.dcm", enforce_file_format=True)
    b.add("dicom_series_all_same_pos", "dicom", [folder], expect="error")


# ------------------------------------------------------------------------------------------ images
def _image_bytes(arr: np.ndarray, fmt: str, **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _image_cases(b: _Builder) -> None:
    from PIL import Image

    g = (np.arange(32 * 40).reshape(32, 40) % 251).astype(np.uint8)
    rgb = np.stack([g, g[::-1], 255 - g], axis=-1)
    bases = {
        "png8.png": _image_bytes(g, "PNG"),
        "png16.png": _image_bytes(g.astype(np.uint16) * 200, "PNG"),
        "pngrgb.png": _image_bytes(rgb, "PNG"),
        "pngpal.png": (lambda: (lambda buf: (Image.fromarray(rgb).convert("P").save(buf, "PNG"), buf.getvalue())[1])(io.BytesIO()))(),
        "photo.jpg": _image_bytes(rgb, "JPEG", quality=80),
        "img.tif": _image_bytes(g, "TIFF"),
        "img.bmp": _image_bytes(rgb, "BMP"),
    }  # fmt: skip
    for name, raw in bases.items():
        stem = name.replace(".", "_")
        for frac in (0.02, 0.1, 0.3, 0.6, 0.95):
            cut = max(1, int(len(raw) * frac))
            b.file(f"img_trunc_{stem}_{cut}", "image", name, raw[:cut])
        for i in range(7):
            hi = 64 if i < 4 else None
            b.file(f"img_flip_{stem}_{i}", "image", name, _flip(raw, b.rng, int(b.rng.integers(1, 4)), 0, hi))
    idat = zlib.compress(bytes(1000))
    for w, h in ((20000, 20000), (100000, 100000), (9000, 9000), (0, 10), (2**31 - 1, 1), (1, 2**31 - 1)):
        expect = "error"
        b.file(f"img_png_dims_{w}x{h}", "image", "d.png", png_with_header(w, h, idat), expect=expect)
    b.file("img_png_rgb_12000", "image", "d.png", png_with_header(12000, 12000, idat, color=2), expect="error")
    b.file("img_png_bitdepth_7", "image", "d.png", png_with_header(10, 10, idat, bit_depth=7), expect="error")
    bmp = bases["img.bmp"]
    for mid, (w, h, bpp) in {
        "huge": (100000, 100000, 24), "neg_h": (40, -32, 24), "zero_w": (0, 32, 24), "bpp7": (40, 32, 7),
        "big_within": (16000, 16000, 24), "bpp0": (40, 32, 0),
    }.items():  # fmt: skip
        m = _patch(_patch(_patch(bmp, 18, "<i", w), 22, "<i", h), 28, "<H", bpp)
        b.file(f"img_bmp_{mid}", "image", "d.bmp", m, expect="any" if mid == "neg_h" else "error")
    jpg = bases["photo.jpg"]
    sof = jpg.find(b"\xff\xc0")
    if sof > 0:
        for mid, (h, w) in {"max": (65535, 65535), "zero": (0, 40), "big": (40000, 20000)}.items():
            m = _patch(_patch(jpg, sof + 5, ">H", h), sof + 7, ">H", w)
            b.file(f"img_jpg_dims_{mid}", "image", "d.jpg", m, expect="error")
    # multi-page TIFF with different page sizes; float TIFF with NaN; TIFF 3-page stack
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "TIFF", save_all=True, append_images=[Image.fromarray(g[:10, :10])])
    b.file("img_tiff_pages_differ", "image", "p.tif", buf.getvalue(), expect="error")
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "TIFF", save_all=True, append_images=[Image.fromarray(g), Image.fromarray(g)])
    b.file("img_tiff_3pages", "image", "p.tif", buf.getvalue())
    f = g.astype(np.float32)
    f[3, 3] = np.nan
    b.file("img_tiff_nan", "image", "n.tif", _image_bytes(f, "TIFF"), expect="error")
    b.file("img_empty", "image", "e.png", b"", expect="error")
    b.file("img_pdf", "image", "doc.pdf", b"%PDF-1.4\n" + bytes(200), expect="error")
    b.file("img_gif_named_png", "image", "g.png", _image_bytes(g, "GIF"), expect="any")
    b.file("img_png_named_jpg", "image", "p.jpg", bases["png8.png"])


# ------------------------------------------------------------------------------------------ NumPy
class _Boom:
    """Unpickling this runs ``os.system('touch <sentinel>')``: it must never be unpickled."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False, version: tuple[int, int] = (1, 0)) -> bytes:
    d = "{'descr': %r, 'fortran_order': %s, 'shape': %r, }" % (descr, fortran, shape)
    pad = 64 - (10 + len(d) + 1) % 64
    text = (d + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(text)) + text


def _numpy_cases(b: _Builder) -> None:
    vol = phantom((4, 10, 12))
    good = _npy_bytes(vol)
    for frac in (0.05, 0.1, 0.5, 0.9):
        b.file(f"npy_trunc_{frac}", "numpy", "t.npy", good[: int(len(good) * frac)])
    for i in range(12):
        b.file(f"npy_flip_hdr_{i}", "numpy", "f.npy", _flip(good, b.rng, int(b.rng.integers(1, 4)), 0, 128))
    sentinel = b.root / "PICKLE_RAN"
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = _Boom(str(sentinel)), 1
    b.file("npy_object_pickle_payload", "numpy", "evil.npy", _npy_bytes(obj, allow_pickle=True), expect="error",
           sentinel=sentinel)  # fmt: skip
    b.file("npy_object_plain", "numpy", "o.npy", _npy_bytes(np.array([[1, "a"]], dtype=object), True), expect="error")
    raw_pickle = pickle.dumps(_Boom(str(sentinel)))
    b.file("npy_raw_pickle_named_npy", "numpy", "p.npy", raw_pickle, expect="error", sentinel=sentinel)
    hdrs = {
        "shape_huge": ("<i2", (10**6, 10**6, 10**6)), "shape_neg": ("<i2", (-1, 4, 4)), "shape_zero": ("<i2", (0, 4, 4)),
        "rank1": ("<i2", (2**40,)), "rank5": ("<i2", (2, 2, 2, 2, 2)), "rank0": ("<i2", ()),
        "f64_within_budget": ("<f8", (2000, 512, 512)), "i16_within_budget": ("<i2", (1000, 512, 512)),
        "complex": ("<c8", (2, 4, 4)), "string": ("<U10", (2, 4, 4)), "datetime": ("<M8[s]", (2, 4, 4)),
        "structured": ("[('a', '<i2'), ('b', '<f4')]", (2, 4, 4)), "void": ("|V8", (2, 4, 4)),
        "descr_bad": ("<q9", (2, 4, 4)), "short_data": ("<i2", (64, 64, 64)), "rank4": ("<i2", (3, 2, 4, 4)),
    }  # fmt: skip
    for mid, (descr, shape) in hdrs.items():
        if descr.startswith("["):
            d = "{'descr': %s, 'fortran_order': False, 'shape': %r, }" % (descr, shape)
            text = (d + " " * (64 - (10 + len(d) + 1) % 64) + "\n").encode("latin1")
            head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
        else:
            head = _npy_header(descr, shape)
        b.file(f"npy_hdr_{mid}", "numpy", "h.npy", head + bytes(64), expect="error")
    code = "{'descr': __import__('os').system('touch %s'), 'fortran_order': False, 'shape': (2,2)}" % sentinel
    b.file("npy_hdr_code", "numpy", "c.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(code) + 1) + code.encode() + b"\n",
           expect="error", sentinel=sentinel)  # fmt: skip
    b.file("npy_version_9", "numpy", "v.npy", b"\x93NUMPY\x09\x00" + good[8:], expect="error")
    b.file("npy_hdrlen_huge", "numpy", "v.npy", good[:8] + b"\xff\xff" + good[10:], expect="error")
    b.file("npy_magic_only", "numpy", "m.npy", b"\x93NUMPY", expect="error")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, vol, version=(2, 0))
    b.file("npy_v2", "numpy", "v2.npy", buf.getvalue())
    b.file("npy_fortran", "numpy", "fo.npy", _npy_bytes(np.asfortranarray(vol)))
    b.file("npy_nan", "numpy", "n.npy", _npy_bytes(np.full((2, 4, 4), np.nan, np.float32)), expect="error")
    b.file("npy_bool", "numpy", "b.npy", _npy_bytes(np.ones((2, 4, 4), bool)))
    b.file("npy_f16", "numpy", "h.npy", _npy_bytes(np.ones((2, 4, 4), np.float16)))
    b.file("npy_u64_big", "numpy", "u.npy", _npy_bytes(np.full((2, 4, 4), 2**63, np.uint64)))
    b.file("npy_1d", "numpy", "a.npy", _npy_bytes(np.arange(10)), expect="error")
    b.file("npy_5d", "numpy", "a.npy", _npy_bytes(np.zeros((2, 2, 2, 2, 2))), expect="error")
    b.file("npy_4d", "numpy", "a.npy", _npy_bytes(np.zeros((3, 2, 4, 4))), expect="error")
    b.file("npy_rgb", "numpy", "rgb.npy", _npy_bytes(np.zeros((10, 12, 3), np.uint8)))

    def npz(cid: str, members: dict[str, bytes], expect: str = "any", sentinel: Path | None = None) -> None:
        p = b.path(f"{cid}/a.npz")
        zip_files(p, members)
        b.add(cid, "numpy", [p], expect=expect, sentinel=sentinel)

    npz("npz_valid", {"image.npy": good, "affine.npy": _npy_bytes(np.eye(4))})
    npz("npz_two_no_image", {"x.npy": good, "y.npy": good}, "error")
    npz("npz_object_member", {"image.npy": _npy_bytes(obj, True)}, "error", sentinel)
    npz("npz_object_affine", {"image.npy": good, "affine.npy": _npy_bytes(obj, True)}, "error", sentinel)
    nan_aff = np.eye(4)
    nan_aff[0, 0] = np.nan
    npz("npz_nan_affine", {"image.npy": good, "affine.npy": _npy_bytes(nan_aff)}, "error")
    npz("npz_affine_3x3", {"image.npy": good, "affine.npy": _npy_bytes(np.eye(3))}, "error")
    npz("npz_affine_str", {"image.npy": good, "affine.npy": _npy_bytes(np.array(["a"] * 16).reshape(4, 4))}, "error")
    npz("npz_member_garbage", {"image.npy": b"not numpy at all"}, "error")
    npz("npz_member_trunc", {"image.npy": good[:60]}, "error")
    for mid, method, payload in (("deflate64", 9, deflate(good)), ("bad_stream", 8, b"\xff" * 64 + deflate(good)[64:])):
        p = b.path(f"npz_{mid}/a.npz")
        rz = RawZip(p)
        rz.add("image.npy", payload, method=method, crc=zlib.crc32(good) & 0xFFFFFFFF, file_size=len(good))
        rz.close()
        b.add(f"npz_{mid}", "numpy", [p], expect="error")
    npz("npz_empty", {}, "error")
    npz("npz_f64_within_budget", {"image.npy": _npy_header("<f8", (2000, 512, 512)) + bytes(100)}, "error")
    # a member whose header says 1000 x 512 x 512 float64 (2 GiB) while its stream holds 20 MiB of zeros
    p = b.path("npz_f64_short_stream/a.npz")
    data = _npy_header("<f8", (1000, 512, 512)) + bytes(20 << 20)
    rz = RawZip(p)
    rz.add("image.npy", deflate(data), crc=zlib.crc32(data) & 0xFFFFFFFF, file_size=len(data))
    rz.close()
    b.add("npz_f64_short_stream", "numpy", [p], expect="error")
    b.file("npz_truncated", "numpy", "t.npz", zip_files(b.path("tmp_npz.zip"), {"image.npy": good}).read_bytes()[:200],
           expect="error")  # fmt: skip


# ------------------------------------------------------------------------------------------ ZIP
def _zip_cases(b: _Builder) -> None:
    vol_nii = _nifti_bytes(np.transpose(phantom((6, 16, 16)), (2, 1, 0)))
    gz = gzip.compress(vol_nii, mtime=0)
    esc = b.root / "escaped"

    def z(cid: str, members: list[tuple[str, bytes, dict[str, Any]]], expect: str, sentinel: Path | None = None,
          call: str = "load") -> Path:  # fmt: skip
        p = b.path(f"{cid}/in.zip")
        rz = RawZip(p)
        for name, data, kw in members:
            crc = zlib.crc32(data) & 0xFFFFFFFF
            payload = kw.pop("payload", None) or deflate(data)
            rz.add(name, payload, crc=kw.pop("crc", crc), file_size=kw.pop("file_size", len(data)), **kw)
        rz.close()
        b.add(cid, "zip", [p], expect=expect, sentinel=sentinel, call=call)
        return p

    ok = ("ct.nii.gz", gz, {})
    for call in ("load", "load_dataset"):
        c = call[-7:]
        z(f"zip_valid_{c}", [ok], "any", call=call)
        z(f"zip_dotdot_{c}", [ok, (f"../escaped_{c}.nii.gz", gz, {})], "error", esc.parent / f"escaped_{c}.nii.gz", call)
        z(f"zip_dotdot_deep_{c}", [ok, (f"a/../../../escaped_deep_{c}.txt", b"x", {})], "error",
          b.root.parent / f"escaped_deep_{c}.txt", call)  # fmt: skip
        z(f"zip_backslash_{c}", [ok, (f"..\\escaped_bs_{c}.txt", b"x", {})], "error", esc.parent / f"escaped_bs_{c}.txt", call)
        z(f"zip_absolute_{c}", [ok, (f"{b.root}/escaped_abs_{c}.txt", b"x", {})], "error", b.root / f"escaped_abs_{c}.txt", call)
        z(f"zip_drive_{c}", [ok, ("C:/escaped.txt", b"x", {})], "error", call=call)
        z(f"zip_symlink_{c}", [ok, ("link.nii.gz", b"/etc/passwd", {"external_attr": (stat.S_IFLNK | 0o777) << 16})],
          "error", call=call)  # fmt: skip
        z(f"zip_encrypted_{c}", [("ct.nii.gz", gz, {"flags": 1})], "error", call=call)
        z(f"zip_empty_{c}", [], "error", call=call)
        z(f"zip_macosx_only_{c}", [("__MACOSX/._ct.nii.gz", gz, {}), (".hidden.nii.gz", gz, {})], "error", call=call)
        z(f"zip_bad_crc_{c}", [("ct.nii.gz", gz, {"crc": 1234})], "error", call=call)
        z(f"zip_size_lie_small_{c}", [("ct.nii.gz", gz, {"file_size": 100})], "error", call=call)
        z(f"zip_size_lie_big_{c}", [("ct.nii.gz", gz, {"file_size": 2**32 - 1})], "error", call=call)
        z(f"zip_long_name_{c}", [ok, ("n" * 300 + ".nii.gz", gz, {})], "any", call=call)
        z(f"zip_long_dir_{c}", [ok, ("d" * 300 + "/x.nii.gz", gz, {})], "any", call=call)
        z(f"zip_file_then_dir_{c}", [("a", b"plain", {}), ("a/ct.nii.gz", gz, {})], "any", call=call)
        z(f"zip_junk_only_{c}", [("readme.txt", b"hello\n" * 10, {}), ("data.bin", bytes(range(256)), {})], "error", call=call)
        z(f"zip_corrupt_member_{c}", [("ct.nii.gz", gz[: len(gz) // 2], {})], "error", call=call)
        z(f"zip_nul_name_{c}", [ok, ("bad\x00name.nii.gz", gz, {})], "any", call=call)
        z(f"zip_deflate64_{c}", [("ct.nii.gz", gz, {"method": 9})], "error", call=call)
        z(f"zip_method_99_{c}", [("ct.nii.gz", gz, {"method": 99})], "error", call=call)
        z(f"zip_bad_stream_{c}", [("ct.nii.gz", gz, {"payload": b"\xff" * 64 + deflate(gz)[64:]})], "error", call=call)
    # zip bombs: one member by ratio, many members by total size, too many members
    payload, crc = zeros_deflated(20 << 20)
    for call in ("load", "load_dataset"):
        p = b.path(f"zip_bomb_ratio_{call}/in.zip")
        rz = RawZip(p)
        rz.add("ct.nii", payload, crc=crc, file_size=20 << 20)
        rz.close()
        b.add(f"zip_bomb_ratio_{call}", "zip", [p], expect="error", call=call)
    payload15, crc15 = zeros_deflated(15 << 20)
    for call in ("load", "load_dataset"):
        p = b.path(f"zip_bomb_total_{call}/in.zip")
        rz = RawZip(p)
        for i in range(300):
            rz.add(f"part{i:03d}.nii", payload15, crc=crc15, file_size=15 << 20)
        rz.close()
        b.add(f"zip_bomb_total_{call}", "zip", [p], expect="error", call=call)
    p = b.path("zip_too_many_members/in.zip")
    rz = RawZip(p)
    empty = deflate(b"")
    for i in range(100_001):
        rz.add(f"{i}", empty, crc=0, file_size=0)
    rz.close()
    b.add("zip_too_many_members", "zip", [p], expect="error")
    # nested zips
    inner = zip_files(b.path("nest_tmp/inner.zip"), {"ct.nii.gz": gz})
    cur = inner.read_bytes()
    for depth in range(2, 7):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"level{depth}.zip", cur)
        cur = buf.getvalue()
        if depth in (2, 3, 6):
            for call in ("load", "load_dataset"):
                b.file(f"zip_nested_{depth}_{call}", "zip", "n.zip", cur, call=call)
    bomb_inner = b.path("zip_bomb_ratio_load/in.zip").read_bytes()
    for call in ("load", "load_dataset"):
        b.file(f"zip_nested_bomb_{call}", "zip", "n.zip",
               zip_files(b.path(f"nest_tmp/nb_{call}.zip"), {"inner.zip": bomb_inner}).read_bytes(), expect="error",
               call=call)  # fmt: skip
        b.file(f"zip_nested_dotdot_{call}", "zip", "n.zip",
               zip_files(b.path(f"nest_tmp/nd_{call}.zip"),
                         {"inner.zip": b.path(f"zip_dotdot_{call[-7:]}/in.zip").read_bytes()}).read_bytes(),
               expect="error", call=call)  # fmt: skip
    # truncated and bit-flipped zips of a valid volume
    raw = zip_files(b.path("nest_tmp/valid.zip"), {"ct.nii.gz": gz, "ct2.nii": vol_nii}).read_bytes()
    for frac in (0.01, 0.1, 0.5, 0.9, 0.99):
        b.file(f"zip_trunc_{frac}", "zip", "t.zip", raw[: max(4, int(len(raw) * frac))], expect="any", call="load_dataset")
    for i in range(16):
        b.file(f"zip_flip_{i}", "zip", "f.zip", _flip(raw, b.rng, int(b.rng.integers(1, 4))), call="load_dataset")


# ------------------------------------------------------------------------------------------ references
def _reference_cases(b: _Builder) -> None:
    img = phantom((8, 16, 16))
    stored = np.transpose(img, (2, 1, 0))  # (i, j, k)
    image = b.path("ref_image/image.nii.gz")
    save_nifti(image, stored)
    mask = (stored > 0).astype(np.uint8)

    def ref(cid: str, name: str, writer: Callable[[Path], Any], expect: str = "error", image_path: Path = image) -> None:
        p = b.path(f"{cid}/{name}")
        writer(p)
        b.add(cid, "reference", [p], call="load_reference", image=image_path, expect=expect)

    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    ref("ref_valid", "m.nii.gz", lambda p: save_nifti(p, mask), "any")
    ref("ref_short", "m.nii.gz", lambda p: save_nifti(p, mask[:, :, :7]))
    ref("ref_transposed", "m.nii.gz", lambda p: save_nifti(p, mask[:, :8, :].transpose(1, 0, 2)))
    ref("ref_shifted", "m.nii.gz", lambda p: save_nifti(p, mask, aff + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]])))
    ref("ref_spacing", "m.nii.gz", lambda p: save_nifti(p, mask, np.diag([1.0, 1.0, 2.5, 1.0])))
    ref("ref_flipped_same_grid", "m.nii.gz", lambda p: save_nifti(p, mask[::-1], np.diag([-0.8, 0.8, 2.5, 1.0]) + np.array([[0, 0, 0, 12.0]] + [[0] * 4] * 3)), "any")
    ref("ref_rotated", "m.nii.gz", lambda p: save_nifti(p, mask.transpose(1, 0, 2), np.array([[0, 0.8, 0, 0], [0.8, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]])), "any")
    ref("ref_nan_values", "m.nii.gz", lambda p: save_nifti(p, np.where(mask > 0, np.nan, 0).astype(np.float32)))
    ref("ref_negative", "m.nii.gz", lambda p: save_nifti(p, mask.astype(np.int16) - 2))
    ref("ref_fractional", "m.nii.gz", lambda p: save_nifti(p, mask.astype(np.float32) * 2.5))
    ref("ref_prob_0_1", "m.nii.gz", lambda p: save_nifti(p, mask.astype(np.float32) * 0.7), "any")
    ref("ref_4d", "m.nii.gz", lambda p: save_nifti(p, np.stack([mask, mask], -1)))
    ref("ref_png_for_volume", "m.png", lambda p: p.write_bytes(_image_bytes(mask[:, :, 0].T * 255, "PNG")))
    ref("ref_empty_file", "m.nii.gz", lambda p: p.write_bytes(b""))
    ref("ref_truncated", "m.nii.gz", lambda p: p.write_bytes(gzip.compress(_nifti_bytes(mask))[:80]))
    ref("ref_npy_wrong", "m.npy", lambda p: p.write_bytes(_npy_bytes(np.zeros((8, 16, 15), np.uint8))))
    ref("ref_npy_right", "m.npy", lambda p: p.write_bytes(_npy_bytes(np.zeros((8, 16, 16), np.uint8))), "any")
    ref("ref_npy_object", "m.npy", lambda p: p.write_bytes(_npy_bytes(np.empty((8, 16, 16), object), True)))
    ref("ref_huge_dims", "m.nii", lambda p: p.write_bytes(_patch(_patch(_nifti_bytes(mask), 42, "<h", 32767), 44, "<h", 32767)))
    ref("ref_nan_affine", "m.nii", lambda p: p.write_bytes(_patch(_patch(_nifti_bytes(mask), 268, "<f", np.nan), 280, "<f", np.nan)), "any")
    ref("ref_labels_big", "m.nii.gz", lambda p: save_nifti(p, mask.astype(np.int32) * 70000), "any")
    ref("ref_folder_missing", "nothing_here.nii.gz", lambda p: None)
    # a 2D picture and its mask
    g = (np.arange(30 * 20).reshape(30, 20) % 200).astype(np.uint8)
    pic = b.path("ref_pic/pic.png")
    pic.write_bytes(_image_bytes(g, "PNG"))
    ref("ref_png_size", "m.png", lambda p: p.write_bytes(_image_bytes(np.zeros((20, 30), np.uint8), "PNG")), image_path=pic)
    ref("ref_png_ok", "m.png", lambda p: p.write_bytes(_image_bytes(np.zeros((30, 20), np.uint8), "PNG")), "any", pic)
    ref("ref_png_rgb", "m.png", lambda p: p.write_bytes(_image_bytes(np.zeros((30, 20, 3), np.uint8), "PNG")), "any", pic)
    ref("ref_nifti_for_png", "m.nii.gz", lambda p: save_nifti(p, np.zeros((20, 30), np.uint8)), "any", pic)
    ref("ref_jpg_trunc", "m.jpg", lambda p: p.write_bytes(_image_bytes(np.zeros((30, 20), np.uint8), "JPEG")[:100]), image_path=pic)
    # DICOM series image with a shape-mismatched NIfTI mask
    folder = b.path("ref_dicom_image/series")
    write_dicom_series(folder, phantom((5, 16, 16)))
    ref("ref_dicom_wrong_shape", "m.nii.gz", lambda p: save_nifti(p, np.zeros((16, 16, 4), np.uint8)), image_path=folder)
    ref("ref_dicom_zip_bomb", "m.zip", lambda p: shutil.copy(b.path("zip_bomb_ratio_load/in.zip"), p), image_path=folder)


# ------------------------------------------------------------------------------------------ datasets
def _dataset_cases(b: _Builder) -> None:
    gz = gzip.compress(_nifti_bytes(np.transpose(phantom((4, 12, 12)), (2, 1, 0))), mtime=0)
    folder = b.path("ds_mixed/data")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.nii.gz").write_bytes(gz)
    (folder / "README.txt").write_text("notes\n")
    (folder / "b.nii.gz").write_bytes(gz[:50])
    (folder / "sub").mkdir()
    (folder / "sub" / "x.nii.gz").write_bytes(gz)
    b.add("ds_mixed_folder", "dataset", [folder], call="load_dataset", expect="error")
    folder2 = b.path("ds_clean/data")
    folder2.mkdir(parents=True, exist_ok=True)
    (folder2 / "a.nii.gz").write_bytes(gz)
    (folder2 / "notes.txt").write_text("hello")
    (folder2 / ".DS_Store").write_bytes(bytes(100))
    b.add("ds_clean_folder", "dataset", [folder2], call="load_dataset")
    pdf = b.path("ds_list/doc.pdf")
    pdf.write_bytes(b"%PDF-1.5\n" + bytes(100))
    b.add("ds_list_with_pdf", "dataset", [folder2 / "a.nii.gz", pdf], call="load_dataset", expect="error")
    b.add("ds_glob_nothing", "dataset", [b.root / "ds_list" / "*.nii.gz"], call="load_dataset", expect="error")
    b.add("ds_missing", "dataset", [b.root / "does_not_exist.nii"], call="load_dataset", expect="error")
    b.add("ds_empty_folder", "dataset", [b.path("ds_empty/sub")], call="load_dataset", expect="error")
    b.path("ds_empty/sub").mkdir(parents=True, exist_ok=True)
    imgs = b.path("ds_imgs/x")
    imgs.mkdir(parents=True, exist_ok=True)
    g = (np.arange(400).reshape(20, 20) % 200).astype(np.uint8)
    (imgs / "a.png").write_bytes(_image_bytes(g, "PNG"))
    (imgs / "b.png").write_bytes(_image_bytes(g, "PNG")[:40])
    (imgs / "c.jpg").write_bytes(_image_bytes(g[:10], "JPEG"))
    for call in ("load", "load_dataset"):
        b.add(f"ds_images_one_broken_{call}", "dataset", [imgs], call=call, expect="error")


def build_corpus(root: Path, seed: int = 20240607) -> list[Case]:
    """Writes the corpus under ``root`` (deterministic for a given ``seed``) and returns its cases."""
    import pydicom.config

    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    b = _Builder(Path(root), seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nifti_cases(b)
        _dicom_cases(b)
        _image_cases(b)
        _numpy_cases(b)
        _zip_cases(b)
        _reference_cases(b)
        _dataset_cases(b)
    ids = [c["id"] for c in b.cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RuntimeError(f"duplicate case ids: {sorted(dupes)[:5]}")
    return b.cases


# ------------------------------------------------------------------------------------------ runner
class Hang(BaseException):
    """Raised by the SIGALRM handler when a case runs past its time limit."""


def _check_volume(vol: Any) -> str | None:
    from promptonce.types import Volume

    if not isinstance(vol, Volume):
        return f"returned {type(vol).__name__}, not a Volume"
    a = vol.array
    if a.ndim != 3 or min(a.shape) < 1:
        return f"volume array of shape {a.shape}"
    if not np.all(np.isfinite(vol.affine)):
        return "volume affine is not finite"
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        return "volume holds NaN/inf"
    if a.dtype.kind not in "biuf":
        return f"volume dtype {a.dtype}"
    return None


def run_case(case: Case) -> tuple[str, str]:
    """Runs one case; returns ``(outcome, detail)`` (see the module docstring)."""
    import traceback

    from promptonce.errors import PromptOnceError
    from promptonce.io.readers import load, load_dataset, load_reference

    paths = case["paths"]
    src: Any = paths[0] if len(paths) == 1 else paths
    try:
        if case["call"] == "load":
            bad = _check_volume(load(src))
        elif case["call"] == "load_dataset":
            ds = load_dataset(src)
            bad = None
            for i in range(len(ds)):
                bad = bad or _check_volume(ds[i])
            del ds
        else:
            image = load(case["image"])
            bad = _check_volume(load_reference(src, image))
    except PromptOnceError as exc:
        if not str(exc).strip():
            return "empty_message", type(exc).__name__
        return "error", f"{type(exc).__name__}: {str(exc)[:300]}"
    except Hang:
        return "hang", ""
    except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        tb = traceback.format_exc(limit=-4)
        return "crash", f"{type(exc).__name__}: {str(exc)[:300]}\n{tb[-1500:]}"
    if bad is not None:
        return "crash", f"invalid result: {bad}"
    if case["expect"] == "error":
        return "bad_valid", "accepted although it must be refused"
    return "valid", ""


def run_corpus(cases: list[Case], per_case_s: int = 10) -> dict[str, Any]:
    """Runs every case with ``signal.alarm(per_case_s)``; returns counts, failures and timings."""
    import gc
    import logging
    import resource
    import signal
    import tempfile
    import time

    logging.disable(logging.CRITICAL)

    def on_alarm(signum, frame):  # noqa: ARG001
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    tmp = Path(tempfile.gettempdir())
    temp_before = sorted(p.name for p in tmp.glob("promptonce-*"))
    counts: dict[str, int] = {}
    per_category: dict[str, dict[str, int]] = {}
    failures: list[dict[str, str]] = []
    slowest: list[tuple[float, str]] = []
    t_all = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        signal.alarm(per_case_s)
        try:
            outcome, detail = run_case(case)
        except Hang:
            outcome, detail = "hang", ""
        finally:
            signal.alarm(0)
        dt = time.perf_counter() - t0
        slowest.append((dt, case["id"]))
        gc.collect()
        if case.get("sentinel") and Path(case["sentinel"]).exists():
            outcome, detail = "escaped", f"{case['sentinel']} exists"
        counts[outcome] = counts.get(outcome, 0) + 1
        cat = per_category.setdefault(case["category"], {})
        cat[outcome] = cat.get(outcome, 0) + 1
        if outcome not in ("valid", "error"):
            failures.append({"id": case["id"], "outcome": outcome, "detail": detail})
    gc.collect()
    temp_after = sorted(p.name for p in tmp.glob("promptonce-*"))
    slowest.sort(reverse=True)
    return {
        "inputs": len(cases),
        "counts": counts,
        "per_category": per_category,
        "failures": failures,
        "seconds": round(time.perf_counter() - t_all, 2),
        "slowest": [(round(t, 3), i) for t, i in slowest[:8]],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "temp_leftovers": sorted(set(temp_after) - set(temp_before)),
    }


def main(argv: list[str]) -> int:
    corpus, out = Path(argv[0]), Path(argv[1])
    per_case_s = int(argv[2]) if len(argv) > 2 else 10
    cases = json.loads(corpus.read_text())
    result = run_corpus(cases, per_case_s)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
