"""Label names of reference maps: sidecars, NIfTI header, DICOM-SEG, dataset.json (issue 13, item 3)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from iosynth import save_nifti
from PIL import Image

from promptonce.io.labelnames import parse_label_table, read_label_names
from promptonce.io.readers import load, load_dataset, load_reference, pair_references


def _pair(tmp_path, labels=(0, 1, 2)):
    img = save_nifti(tmp_path / "image.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    lab = np.zeros((6, 5, 4), np.uint8)
    for i, v in enumerate(labels):
        lab[i, 0, 0] = v
    ref = save_nifti(tmp_path / "labels.nii.gz", lab, np.eye(4))
    return img, ref


def test_json_sidecar_names_the_reference_and_is_not_a_reference(tmp_path):
    img, ref = _pair(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen", "9": "gone"}))
    images = load_dataset([img])
    (paired,) = pair_references(images, [ref, tmp_path / "labels.json"])
    assert paired == ref, "the sidecar is never taken for a reference"
    vol = load_reference(paired, images[0])
    assert vol.label_names == {1: "liver", 2: "spleen"}, "values not in the map are dropped"
    assert load(img).label_names == {}


@pytest.mark.parametrize(
    "name, text",
    [
        ("labels.csv", "value,name\n1,liver\n2,spleen\n"),
        ("labels.tsv", "1\tliver\t255\t0\t0\n2\tspleen\t0\t255\t0\n"),
        # ITK-SNAP label description file
        ("labels.txt", '# ITK-SNAP Label Description File\n    0     0    0    0        0  0  0    "Clear Label"\n'
                       '    1   255    0    0        1  1  1    "liver"\n    2     0  255    0        1  1  1    "spleen"\n'),
        # 3D Slicer colour table
        ("labels.ctbl", "# Color table file\n0 Background 0 0 0 0\n1 liver 255 0 0 255\n2 spleen 0 255 0 255\n"),
        ("labels.nii.gz.json", json.dumps([{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"}])),
    ],
)
def test_sidecar_formats(tmp_path, name, text):
    _, ref = _pair(tmp_path)
    (tmp_path / name).write_text(text)
    assert read_label_names(ref) == {1: "liver", 2: "spleen"}


def test_dataset_json_of_msd_and_nnunet(tmp_path):
    _, ref = _pair(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert read_label_names(ref) == {1: "liver", 2: "spleen"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "spleen"}}))
    assert read_label_names(ref) == {1: "liver", 2: "spleen"}
    (tmp_path / "labels.csv").write_text("1,kidney\n")  # the file's own sidecar wins
    assert read_label_names(ref) == {1: "kidney"}


def test_nifti_header_label_table_and_intent_name(tmp_path):
    lab = np.zeros((4, 4, 2), np.uint8)
    lab[0, 0, 0], lab[1, 1, 1] = 1, 2
    img = nib.Nifti1Image(lab, np.eye(4))
    xml = '<LabelTable><Label Key="1" Red="1" Green="0" Blue="0">liver</Label><Label Key="2">spleen</Label></LabelTable>'
    img.header.extensions.append(nib.nifti1.Nifti1Extension(32, xml.encode()))
    nib.save(img, tmp_path / "a.nii.gz")
    assert read_label_names(tmp_path / "a.nii.gz") == {1: "liver", 2: "spleen"}
    single = nib.Nifti1Image((lab == 1).astype(np.uint8), np.eye(4))
    single.header.set_intent("label", (), name="tumour")
    nib.save(single, tmp_path / "b.nii.gz")
    assert read_label_names(tmp_path / "b.nii.gz", values=[1]) == {1: "tumour"}
    assert read_label_names(tmp_path / "b.nii.gz", values=[1, 2]) == {}, "intent_name names a single label only"


def test_dicom_seg_segment_labels(tmp_path):
    from iosynth import AXIAL
    from test_io_dicom import _series  # tests/io/test_io_dicom.py

    from promptonce.io.writers import write_dicom_seg

    vol = load(_series(tmp_path, AXIAL))
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:3, 2:5, 2:5] = 1
    labels[2, 0:2, 0:2] = 2
    out = write_dicom_seg(labels, vol, tmp_path / "seg.dcm", segment_names={1: "lesion", 2: "vessel"})
    assert read_label_names(out) == {1: "lesion", 2: "vessel"}


def test_unreadable_or_unrelated_sidecars_give_no_names(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "m.json").write_text("{not json")
    assert read_label_names(tmp_path / "m.png") == {}
    (tmp_path / "m.json").write_text(json.dumps({"foo": [1, 2]}))
    assert read_label_names(tmp_path / "m.png") == {}
    assert parse_label_table("name,value\nliver,1\n") == {1: "liver"}
    assert parse_label_table("structure;colour\nliver;red\n") == {}
    assert parse_label_table("") == {}


@pytest.mark.parametrize("oblique", [False, True])
def test_dicom_seg_reads_back_as_a_named_reference(tmp_path, oblique):
    from iosynth import AXIAL, oblique_iop
    from test_io_dicom import _series  # tests/io/test_io_dicom.py

    from promptonce.io.writers import write_dicom_seg

    vol = load(_series(tmp_path, oblique_iop(10, 20) if oblique else AXIAL))
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:3, 2:5, 2:7] = 1  # asymmetric, so that a flipped or transposed read would not match
    labels[2, 0:2, 0:3] = 2
    seg = write_dicom_seg(labels, vol, tmp_path / "seg.dcm", segment_names={1: "lesion", 2: "vessel"})
    ref = load_reference(seg, vol)
    np.testing.assert_array_equal(ref.array, labels)
    assert ref.label_names == {1: "lesion", 2: "vessel"} and ref.source_format == "dicom-seg"


def test_dicom_seg_of_another_series_is_refused(tmp_path):
    from iosynth import AXIAL
    from test_io_dicom import _series  # tests/io/test_io_dicom.py

    from promptonce.errors import ReferenceMismatchError
    from promptonce.io.writers import write_dicom_seg

    a = load(_series(tmp_path, AXIAL, name="a"))
    b = load(_series(tmp_path, AXIAL, name="b"))  # new UIDs: another series
    labels = np.zeros(a.shape, np.uint8)
    labels[2, 2:4, 2:4] = 1
    seg = write_dicom_seg(labels, a, tmp_path / "seg.dcm")
    with pytest.raises(ReferenceMismatchError, match="another series"):
        load_reference(seg, b)
    png = tmp_path / "img.png"
    Image.fromarray(np.zeros(a.shape[1:], np.uint8)).save(png)
    with pytest.raises(ReferenceMismatchError, match="DICOM series"):
        load_reference(seg, load(png))


def test_label_selection_by_number_or_name():
    from promptonce.errors import InputError
    from promptonce.io.labelnames import format_label_selection, parse_label_selection

    names = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
    assert parse_label_selection("", names) is None and parse_label_selection(None) is None
    assert parse_label_selection("5", names) == (5,)
    assert parse_label_selection("1 2, 3", names) == (1, 2, 3)
    assert parse_label_selection("Liver; spleen", names) == (1, 5)
    assert parse_label_selection("liv, 52", names) == (5, 52)
    with pytest.raises(InputError, match="several names"):
        parse_label_selection("kidney", names)
    with pytest.raises(InputError, match="5 liver"):
        parse_label_selection("heart", names)
    with pytest.raises(InputError, match="from 1 up"):
        parse_label_selection("0", names)
    assert format_label_selection((52, 5), names) == "5 liver, 52" and format_label_selection(None) == "all"
