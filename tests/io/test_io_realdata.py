"""Smoke tests on the real data in ../shared/data (skipped with a reason when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.io._common import natural_sorted
from promptonce.io.readers import load, load_dataset, load_reference, pair_references

pytestmark = pytest.mark.realdata

# folder -> (images sub-folder, references sub-folder)
FOLDERS = {
    "cxr_shenzhen": ("images", "masks"),
    "ct_covid_lung_slices": ("images", "masks"),
    "ct_covid_infection_slices/test": ("images", "masks"),
    "mri_hippocampus": ("images", "labels"),
    "mri_acdc": ("images", "labels"),
}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_first_case_reads_pairs_and_matches(shared_data, folder):
    img_dir, ref_dir = (shared_data / folder / sub for sub in FOLDERS[folder])
    if not img_dir.is_dir():
        pytest.skip(f"{img_dir} not present")
    first = natural_sorted([p for p in img_dir.iterdir() if not p.name.startswith(".")])[0]
    dset = load_dataset([first])
    vol = dset[0]
    assert vol.n_slices >= 1 and min(vol.shape[1:]) >= 16
    assert np.isfinite(vol.array).all()
    refs = pair_references(dset, [ref_dir])
    ref = load_reference(refs[0], vol)
    assert ref.shape == vol.shape
    assert ref.array.dtype == np.uint8
    assert ref.array.max() >= 1, "the first case's reference is not empty"
    if folder.startswith("cxr") or "infection" in folder:
        assert set(np.unique(ref.array).tolist()) <= {0, 1}


def test_ct_slice_in_hu(shared_data):
    path = shared_data / "ct_covid_lung_slices" / "images" / "coronacases_001_slice110.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    vol = load(path)
    assert vol.array.min() < -500 and vol.modality == "CT"
    ref = load_reference(shared_data / "ct_covid_lung_slices" / "masks" / path.name, vol)
    assert set(np.unique(ref.array).tolist()) == {0, 1, 2}
    # lungs are air: the median HU inside the lung labels is far below soft tissue
    assert float(np.median(vol.array[ref.array > 0])) < -500


def test_ct_volume_with_label_map(shared_data):
    d = shared_data / "ct_totalseg_example"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    vol = load(d / "image.nii.gz")
    assert vol.shape == (112, 101, 122) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0), atol=1e-4)
    ref = load_reference(d / "labels.nii.gz", vol)
    assert ref.shape == vol.shape
    labels = set(np.unique(ref.array).tolist())
    assert {0, 1, 5} <= labels  # background, spleen, liver
    # liver voxels are soft tissue in HU
    assert 0 < float(np.median(vol.array[ref.array == 5])) < 150


def test_xray_set_reads_as_independent_images(shared_data):
    d = shared_data / "cxr_shenzhen" / "images"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    files = natural_sorted(list(d.glob("*.png")))[:3]
    dset = load_dataset(files)
    assert dset.names == [f.stem for f in files]
    assert all(v.n_slices == 1 for v in dset)
