"""Issue 13 on real data: image.nii.gz + labels.nii.gz pair, label names from a sidecar, liver volume
in mL, a readable overlay GIF of a 122 x 101 px CT (skips without ../shared/data)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from promptonce.io.readers import load_dataset, load_reference, pair_references
from promptonce.io.writers import write_overlay_gif
from promptonce.metrics import mask_volumes_ml


def test_totalseg_ct_pairs_names_and_sizes(shared_data, tmp_path):
    src = shared_data / "ct_totalseg_example"
    for name in ("image.nii.gz", "labels.nii.gz"):
        (tmp_path / name).symlink_to(src / name)  # a link, not a copy: the sidecar goes beside it
    (tmp_path / "labels.json").write_text(json.dumps({"1": "spleen", "5": "liver", "52": "aorta"}))
    images = load_dataset([tmp_path / "image.nii.gz"])
    (ref_path,) = pair_references(images, [tmp_path / "labels.nii.gz", tmp_path / "labels.json"])
    image = images[0]
    ref = load_reference(ref_path, image)
    assert ref.label_names.get(5) == "liver" and ref.label_names.get(1) == "spleen"
    ml = mask_volumes_ml(ref.array, image.spacing[::-1])
    # an adult liver holds about 1.0-2.5 L; the spleen 0.05-0.5 L
    assert 800 < ml[5] < 3500, ml[5]
    assert 20 < ml[1] < 800, ml[1]
    gif = write_overlay_gif(image, np.where(ref.array == 5, 1, 0).astype(np.uint8), tmp_path / "liver.gif", max_frames=6)
    with Image.open(gif) as im:
        assert max(im.size) >= 512 and im.n_frames == 6
