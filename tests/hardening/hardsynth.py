"""Small synthetic inputs for the hardening tests (made in tmp folders; nothing real, nothing big).

Imported by name from the tests in this folder (pytest puts ``tests/hardening`` on ``sys.path``).
"""

from __future__ import annotations

import os
import socket
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Patient-identifying values written into the synthetic DICOM headers (tests look for them in outputs).
PHI: dict[str, str] = {
    "PatientName": "Zzyzx^Quintessa",
    "PatientID": "PIDQ9X7731",
    "PatientBirthDate": "19390217",
    "AccessionNumber": "ACCN55R2K8",
    "InstitutionName": "Saint Qwertyuiop Hospital",
    "ReferringPhysicianName": "Vondrak^Ilse",
    "OtherPatientIDs": "OPIDZ4471",
    "InstitutionAddress": "12 Xylophone Lane",
    "OtherPatientNames": "Yxorpa^Alias",
    "PatientAddress": "77 Quokkaville Street",
    "PatientTelephoneNumbers": "5550199771",
    "PatientMotherBirthName": "Mothzer^Maiden",
    "PatientComments": "Comment Wxyzzy",
    "InstitutionalDepartmentName": "Radiology Qwertzu",
    "StationName": "STATIONQX9",
    "OperatorsName": "Opszer^Kiri",
    "PerformingPhysicianName": "Perfzer^Doc",
    "IssuerOfPatientID": "ISSUERZQ5",
}

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def phantom(shape: tuple[int, int, int] = (6, 32, 32), value: int = 900, seed: int = 0) -> np.ndarray:
    """int16 ``(slices, rows, cols)``: CT-like noise at -1000..-900 HU with a bright disc (``value`` HU) on every slice."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    arr = rng.integers(-1000, -900, size=shape).astype(np.int16)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        r = max(2, min(h, w) // 4 - abs(k - n // 2))
        disc = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= r * r
        arr[k][disc] = value
    return arr


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Writes ``data`` (as stored, ``(i, j, k...)``) with ``affine`` (default 0.8 x 0.8 x 2.5 mm) as NIfTI-1."""
    import nibabel as nib

    aff = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else np.asarray(affine, float)
    img = nib.Nifti1Image(np.asarray(data), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    nib.save(img, str(path))
    return path


def dicom_dataset(
    pixels: np.ndarray,
    *,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    instance: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.77.2",
    modality: str = "CT",
    phi: dict[str, str] | None = None,
):
    """One single-frame DICOM dataset (pydicom) holding int16 ``pixels`` ``(rows, cols)``, with ``phi`` in its header."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[modality]
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77.3"
    ds.Modality = modality
    for k, v in (PHI if phi is None else phi).items():
        setattr(ds, k, v)
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "ST1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    ds.Manufacturer = "Synthetic"
    ds.PositionReferenceIndicator = ""
    if position is not None:
        ds.ImageOrientationPatient = list(AXIAL)
        ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.5
    pixels = np.asarray(pixels, dtype=np.int16)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if modality == "CT":
        ds.RescaleSlope = 1.0
        ds.RescaleIntercept = 0.0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_dicom_series(folder: Path, stored: np.ndarray, phi: dict[str, str] | None = None) -> list[Path]:
    """Writes ``stored`` ``(slices, rows, cols)`` int16 as an axial CT series, one file per slice, 2.5 mm apart."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(stored.shape[0]):
        ds = dicom_dataset(stored[k], position=(-12.0, -12.0, 2.5 * k), instance=k + 1, phi=phi)
        p = folder / f"IM{k:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, idat: bytes, bit_depth: int = 8, color: int = 0) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (valid CRCs) followed by the given compressed ``idat``."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


class RawZip:
    """Writes a zip archive by hand, so that headers can lie (sizes, names, attributes) and one
    compressed payload can be reused for many members without compressing it again."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.central: list[bytes] = []

    def add(
        self,
        name: str,
        payload: bytes,
        *,
        method: int = 8,
        crc: int,
        file_size: int,
        external_attr: int = 0o644 << 16,
        flags: int = 0,
    ) -> None:
        """Adds one member whose compressed bytes are ``payload`` and whose header says ``file_size`` / ``crc``."""
        offset = self.fh.tell()
        nm = name.encode("utf-8")
        local = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(payload), file_size, len(nm), 0
        )
        self.fh.write(local + nm + payload)
        cen = struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, flags, method, 0, 0x21, crc, len(payload),
            file_size, len(nm), 0, 0, 0, 0, external_attr, offset,
        )  # fmt: skip
        self.central.append(cen + nm)

    def close(self) -> None:
        start = self.fh.tell()
        body = b"".join(self.central)
        self.fh.write(body)
        n = len(self.central)
        if n > 0xFFFF:  # zip64 end records
            z64 = self.fh.tell()
            self.fh.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(body), start))
            self.fh.write(struct.pack("<IIQI", 0x07064B50, 0, z64, 1))
            n = 0xFFFF
        self.fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(body), start, 0))
        self.fh.close()


def deflate(data: bytes) -> bytes:
    """Raw deflate (zip method 8) of ``data``."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zeros_deflated(n_bytes: int) -> tuple[bytes, int]:
    """``(raw deflate of n_bytes zero bytes, their crc32)``, made in 1 MiB pieces."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = []
    crc = 0
    left = n_bytes
    while left > 0:
        piece = chunk if left >= len(chunk) else bytes(left)
        out.append(c.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    out.append(c.flush())
    return b"".join(out), crc & 0xFFFFFFFF


def zip_files(path: Path, members: dict[str, bytes | Path]) -> Path:
    """A normal zip (deflated) of ``{arcname: bytes or file}``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if isinstance(data, Path):
                zf.write(data, arcname=name)
            else:
                zf.writestr(name, data)
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_files(root: Path) -> int:
    """Regular files (and links) under ``root`` (0 when it does not exist)."""
    if not root.exists():
        return 0
    return sum(len(files) for _, _, files in os.walk(root))
