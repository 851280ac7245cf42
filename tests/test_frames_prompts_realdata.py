"""Windows and simulated prompts on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.preprocess import WINDOW_PRESETS, FrameMaker, auto_window, looks_like_hu, lung_fraction
from promptonce.prompts import box_from_mask, nmt_prompt, prompt_from_reference, seed_slice
from promptonce.types import Volume

pytestmark = pytest.mark.realdata

nib = pytest.importorskip("nibabel")


def _nifti_volume(path, modality="OT") -> Volume:
    arr = np.asarray(nib.load(str(path)).dataobj)
    return Volume(np.transpose(arr, (2, 1, 0)), modality=modality, name=path.name)


def test_abdominal_ct_in_hu_gets_the_abdomen_window_even_untagged(shared_data):
    vol = _nifti_volume(shared_data / "ct_totalseg_example" / "image.nii.gz")
    assert looks_like_hu(vol)
    fm = FrameMaker(vol)
    assert fm.window == WINDOW_PRESETS["abdomen"]
    frame = fm.frame(vol.n_slices // 2)
    assert frame.dtype == np.uint8 and frame.shape == vol.shape[1:] + (3,)
    assert len(np.unique(frame)) > 100  # organs keep many grey levels


def test_chest_ct_slices_in_hu_get_the_lung_window(shared_data):
    for path in sorted((shared_data / "ct_covid_lung_slices" / "images").glob("coronacases*")):
        vol = _nifti_volume(path, "CT")
        assert lung_fraction(vol.array) > 0.2
        assert auto_window(vol) == WINDOW_PRESETS["lung"], path.name


def test_8bit_ct_and_mr_get_percentile_windows(shared_data):
    eight = _nifti_volume(next((shared_data / "ct_covid_lung_slices" / "images").glob("radiopaedia*")), "CT")
    assert not looks_like_hu(eight)
    w, lvl = auto_window(eight)
    assert 0 < w <= 256 and 0 <= lvl <= 255
    mr = _nifti_volume(sorted((shared_data / "mri_hippocampus" / "images").glob("*.nii*"))[0], "MR")
    assert not looks_like_hu(mr)
    assert auto_window(mr)[0] > 0


def test_simulated_user_on_chest_xray_masks(shared_data):
    from PIL import Image

    masks = sorted((shared_data / "cxr_shenzhen" / "masks").glob("*.png"))[:20]
    assert masks
    for path in masks:
        ref = (np.asarray(Image.open(path).convert("L")) > 127).astype(np.uint8)
        objs = prompt_from_reference(ref)
        assert len(objs) == 2, path.name  # two lungs, specks ignored
        for o in objs:
            (p,) = o.points
            assert ref[int(p.y), int(p.x)]
        nmt = nmt_prompt(ref)
        assert sum(q.label == 1 for q in nmt.points) == 2
        # the boxes of the two lungs cover the reference's bounding box
        full = box_from_mask(ref)
        assert min(o.box.x0 for o in objs) == full.x0 and max(o.box.x1 for o in objs) == full.x1


def test_seed_slices_on_acdc(shared_data):
    labels = sorted((shared_data / "mri_acdc" / "labels").glob("*.nii*"))[:3]
    for path in labels:
        ref = np.transpose(np.asarray(nib.load(str(path)).dataobj), (2, 1, 0)).astype(np.int32)
        k = seed_slice(ref, "centre", labels=[3])
        assert (ref[k] == 3).any()
        big = seed_slice(ref, "largest", labels=[3])
        assert (ref[big] == 3).sum() >= (ref[k] == 3).sum()
