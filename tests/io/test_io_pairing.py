"""Pairing images with references when the names do not say it (issue 13, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
from iosynth import save_nifti
from PIL import Image

from promptonce.errors import InputError, ReferenceMismatchError
from promptonce.io.readers import load_dataset, load_reference, pair_references


def test_one_image_one_reference_pair_whatever_their_names(tmp_path):
    img = save_nifti(tmp_path / "image.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[1:3, 1:3, 2] = 1
    ref = save_nifti(tmp_path / "labels.nii.gz", lab, np.eye(4))
    images = load_dataset([img])
    assert pair_references(images, [ref]) == [ref]
    assert load_reference(ref, images[0]).array.sum() == 4


def test_unmatched_names_pair_in_the_order_given(tmp_path):
    for n in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{n}.png")
    refs = []
    for n in ("m3", "m1", "m2"):  # no name matches: the order given counts, not the names' order
        refs.append(tmp_path / f"{n}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(refs[-1])
    images = load_dataset([tmp_path / f"{n}.png" for n in ("a", "b", "c")], images_as="set")
    assert [p.name for p in pair_references(images, refs)] == ["m3.png", "m1.png", "m2.png"]


def test_a_partial_name_match_never_falls_back_to_order(tmp_path):
    for n in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{n}.png")
    refs = []
    for n in ("m1", "c_mask", "m2"):  # c pairs by name; a and b are not guessed
        refs.append(tmp_path / f"{n}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(refs[-1])
    images = load_dataset([tmp_path / f"{n}.png" for n in ("a", "b", "c")], images_as="set")
    with pytest.raises(InputError, match="2 of 3 images have no reference mask: a, b"):
        pair_references(images, refs)


def test_counts_that_do_not_match_are_still_refused(tmp_path):
    for n in ("a", "b"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{n}.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "labels.png")
    images = load_dataset([tmp_path / "a.png", tmp_path / "b.png"], images_as="set")
    with pytest.raises(InputError, match="2 of 2 images have no reference mask"):
        pair_references(images, [tmp_path / "labels.png"])


def test_order_pairing_still_checks_the_geometry(tmp_path):
    img = save_nifti(tmp_path / "image.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    ref = save_nifti(tmp_path / "labels.nii.gz", np.zeros((7, 5, 4), np.uint8), np.eye(4))
    images = load_dataset([img])
    (paired,) = pair_references(images, [ref])
    with pytest.raises(ReferenceMismatchError, match="reference shape"):
        load_reference(paired, images[0])


def _parts_layout(tmp_path, names=("x1", "x2")):
    (tmp_path / "img").mkdir()
    for side in ("leftMask", "rightMask"):
        (tmp_path / side).mkdir()
    for n in names:
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "img" / f"{n}.png")
        left = np.zeros((6, 8), np.uint8)
        left[1:5, 1:3] = 255
        right = np.zeros((6, 8), np.uint8)
        right[1:5, 5:7] = 255
        right[1, 2] = 255  # one pixel also in the left mask: the earlier part keeps it
        Image.fromarray(left).save(tmp_path / "leftMask" / f"{n}.png")
        Image.fromarray(right).save(tmp_path / "rightMask" / f"{n}.png")
    return load_dataset([tmp_path / "img"], images_as="set")


def test_same_names_in_two_folders_are_the_parts_of_one_reference(tmp_path):
    images = _parts_layout(tmp_path)
    paired = pair_references(images, [tmp_path / "leftMask", tmp_path / "rightMask"], parts=True)
    assert paired == [(tmp_path / "leftMask" / "x1.png", tmp_path / "rightMask" / "x1.png"),
                      (tmp_path / "leftMask" / "x2.png", tmp_path / "rightMask" / "x2.png")]
    ref = load_reference(paired[0], images[0])
    assert ref.array.dtype == np.uint8 and ref.array.shape == (1, 6, 8)
    assert int((ref.array == 1).sum()) == 8 and int((ref.array == 2).sum()) == 8  # 8 right pixels, 1 kept by the left
    assert ref.array[0, 1, 2] == 1
    assert ref.label_names == {1: "leftMask", 2: "rightMask"}
    # the order of the folders sets the labels
    swapped = pair_references(images, [tmp_path / "rightMask", tmp_path / "leftMask"], parts=True)
    assert load_reference(swapped[0], images[0]).label_names == {1: "rightMask", 2: "leftMask"}


def test_same_names_are_refused_without_parts_or_within_one_folder(tmp_path):
    images = _parts_layout(tmp_path)
    with pytest.raises(InputError, match="two references are both named 'x1'"):
        pair_references(images, [tmp_path / "leftMask", tmp_path / "rightMask"])
    with pytest.raises(InputError, match="two references are both named 'x1'"):  # one glob, two files of one name
        pair_references(images, [str(tmp_path / "*Mask" / "*.png")], parts=True)


def test_a_part_of_another_size_is_refused_like_any_reference(tmp_path):
    images = _parts_layout(tmp_path, names=("x1",))
    Image.fromarray(np.zeros((7, 8), np.uint8)).save(tmp_path / "rightMask" / "x1.png")
    (paired,) = pair_references(images, [tmp_path / "leftMask", tmp_path / "rightMask"], parts=True)
    with pytest.raises(ReferenceMismatchError, match="rightMask"):
        load_reference(paired, images[0])


def test_parts_stay_together_when_references_pair_in_the_order_given(tmp_path):
    for n in ("a", "b"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{n}.png")
    for side in ("L", "R"):
        (tmp_path / side).mkdir()
        for n in ("m1", "m2"):  # no name matches an image: the order given counts
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / side / f"{n}.png")
    images = load_dataset([tmp_path / "a.png", tmp_path / "b.png"], images_as="set")
    paired = pair_references(images, [tmp_path / "L", tmp_path / "R"], parts=True)
    assert paired == [(tmp_path / "L" / "m1.png", tmp_path / "R" / "m1.png"),
                      (tmp_path / "L" / "m2.png", tmp_path / "R" / "m2.png")]
