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
