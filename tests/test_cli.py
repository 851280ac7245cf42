"""CLI contract: segment / evaluate on small synthetic inputs with the fake backend (plumbing, not quality)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from promptonce.cli import build_prompt, flat_to_index, main
from promptonce.errors import InputError
from promptonce.types import Dataset, Volume


def ball_nifti(path, n=11, size=48):
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:n]  # stored (X, Y, Z)
    ref = ((zz - 24) ** 2 + (yy - 22) ** 2 + ((xx - n // 2) * 3) ** 2) <= 81
    data = np.where(ref, 300, -50).astype(np.int16)
    aff = np.diag([0.8, 0.9, 2.5, 1.0])
    aff[:3, 3] = [-10, 20, 5]
    nib.save(nib.Nifti1Image(data, aff), path)
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), aff), str(path).replace(".nii.gz", "_ref.nii.gz"))
    return aff


def test_segment_nifti_with_a_box_writes_mask_on_input_geometry(tmp_path):
    src = tmp_path / "ball.nii.gz"
    aff = ball_nifti(src)
    ref = tmp_path / "ball_ref.nii.gz"
    out = tmp_path / "out"
    # display orientation flips x and y of this RAS-aligned volume: find the ball on the displayed centre slice
    from promptonce.io.readers import load

    vol = load(src)
    k = vol.n_slices // 2
    ys, xs = np.nonzero(vol.array[k] > 100)
    box = f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"
    code = main(["segment", str(src), "--box", box, "--out", str(out), "--model", "fake", "--quiet",
                 "--reference", str(ref)])
    assert code == 0
    written = nib.load(out / "masks" / "ball.nii.gz")
    assert np.allclose(written.affine, aff)
    assert written.shape == (48, 48, 11)
    ref_arr = np.asarray(nib.load(ref).dataobj) > 0
    got = np.asarray(written.dataobj) > 0
    inter = (got & ref_arr).sum()
    assert 2 * inter / (got.sum() + ref_arr.sum()) > 0.8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["prompts"] == 1 and metrics["summary"]["images"] == 11
    assert (out / "metrics.csv").exists()


def xray_set(folder, n=4):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        img = np.full((64 + 4 * i, 72), 40, np.uint8)
        m = np.zeros_like(img)
        m[16 + i : 40 + i, 10:30] = 255
        m[16 + i : 40 + i, 40:62] = 255
        img[m > 0] = 200
        Image.fromarray(img).save(folder / "images" / f"cxr{i}.png")
        Image.fromarray(m).save(folder / "masks" / f"cxr{i}.png")


@pytest.mark.parametrize("scope,prompts", [("image", 4), ("volume", 4), ("dataset", 1)])
def test_evaluate_counts_prompts_per_scope(tmp_path, scope, prompts):
    xray_set(tmp_path)
    out = tmp_path / f"eval_{scope}"
    code = main(["evaluate", "--images", str(tmp_path / "images"), "--references", str(tmp_path / "masks"),
                 "--out", str(out), "--model", "fake", "--scope", scope, "--quiet"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    s = m["summary"]
    assert s["prompts"] == prompts
    assert s["images"] == 4 and len(m["cases"]) == 4
    assert s["dice_mean"] > 0.8
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"cxr{i}.png" for i in range(4)] + ["labels.csv"]
    assert (out / "run.json").exists()


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    code = main(["segment", str(bad), "--box", "1,1,5,5", "--out", str(tmp_path / "o"), "--model", "fake"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err) > 20


def test_box_syntax_errors_are_input_errors(tmp_path):
    xray_set(tmp_path)
    code = main(["segment", str(tmp_path / "images"), "--box", "1,2,3", "--out", str(tmp_path / "o"), "--model", "fake"])
    assert code == 2


def test_build_prompt_objects():
    ds = Dataset([Volume(np.zeros((3, 10, 10))), Volume(np.zeros((1, 10, 10)))])
    sp = build_prompt([("box", "1,1,4,4"), ("box", "5,5,8,8"), ("point", "2,2")], None, ds)
    assert [o.object_id for o in sp.objects] == [1, 2]
    assert len(sp.objects[0].points) == 1 and sp.objects[1].box is not None
    sp = build_prompt([("object", "3"), ("point", "2,2,0"), ("point", "3,3")], 3, ds)
    assert sp.objects[0].object_id == 3 and sp.volume_index == 1 and sp.slice_index == 0
    assert flat_to_index(ds, None) == (0, 1)
    with pytest.raises(InputError):
        flat_to_index(ds, 4)


def _dicom_ball(folder, n=9, size=64):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "io"))
    from iosynth import write_series  # noqa: PLC0415 - test helper module of tests/io

    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    ball = ((yy - 30) ** 2 + (xx - 34) ** 2 + ((zz - n // 2) * 4) ** 2) <= 15**2
    stored = np.where(ball, 1024 + 60, 1024 - 100).astype(np.uint16)  # HU 60 in -100 after intercept -1024
    write_series(folder, stored, rng=np.random.default_rng(0))
    return ball


@pytest.mark.parametrize("prompt", [["--box", "16,12,52,48"], ["--point", "34,30"]])
def test_segment_dicom_series_with_box_and_click(tmp_path, prompt):
    folder = tmp_path / "series"
    _dicom_ball(folder)
    from promptonce.io.readers import load

    vol = load(folder)
    k = vol.n_slices // 2
    ys, xs = np.nonzero(vol.array[k] > 0)
    cx, cy = int(xs.mean()), int(ys.mean())
    if prompt[0] == "--box":
        prompt = ["--box", f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"]
    else:
        prompt = ["--point", f"{cx},{cy}"]
    out = tmp_path / "out"
    assert main(["segment", str(folder), *prompt, "--out", str(out), "--model", "fake", "--quiet"]) == 0
    written = list((out / "masks").glob("*.nii.gz"))
    assert len(written) == 1
    arr = np.asarray(nib.load(written[0]).dataobj)
    assert arr.shape == (64, 64, 9) and arr.any()


def chest_like_set(folder, n=2, h=160, w=176):
    """Radiograph-like images: a bright body with two dark, smooth 'lungs' (the objects), plus noise.

    Returns the two lung boxes of image 0 as (x0, y0, x1, y1).
    """
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    boxes = []
    for i in range(n):
        body = ((xx - w / 2) / (0.45 * w)) ** 2 + ((yy - h / 2) / (0.47 * h)) ** 2 <= 1
        lungs = np.zeros((h, w), bool)
        for cx in (0.31 * w + i, 0.69 * w + i):
            lung = ((xx - cx) / (0.13 * w)) ** 2 + ((yy - (0.45 * h + 2 * i)) / (0.3 * h)) ** 2 <= 1
            lungs |= lung
            if i == 0:
                ys, xs = np.nonzero(lung)
                boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        img = np.where(body, 170.0, 30.0)
        img[lungs] = 70.0
        from scipy import ndimage

        img = ndimage.gaussian_filter(img, 1.5) + rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"cxr{i}.png")
        Image.fromarray((lungs * 255).astype(np.uint8)).save(folder / "masks" / f"cxr{i}.png")
    return boxes


@pytest.mark.slow
@pytest.mark.parametrize("prompt_kind", ["box", "click"])
def test_real_models_segment_an_xray_and_a_volume(tmp_path, prompt_kind):
    """LiteMedSAM (+ MobileSAM for the click) on synthetic inputs: a real model, not the fake."""
    boxes = chest_like_set(tmp_path, n=2)
    out = tmp_path / f"x_{prompt_kind}"
    if prompt_kind == "box":
        prompt = [a for b in boxes for a in ("--box", ",".join(str(v) for v in b))]
    else:
        prompt = []
        for i, (x0, y0, x1, y1) in enumerate(boxes, 1):
            prompt += ["--object", str(i), "--point", f"{(x0 + x1) // 2},{(y0 + y1) // 2}"]
    code = main(["segment", str(tmp_path / "images"), *prompt, "--image", "0", "--scope", "dataset",
                 "--out", str(out), "--quiet", "--reference", str(tmp_path / "masks")])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["summary"]["dice_mean"] > 0.8, m
    src = tmp_path / "ball.nii.gz"
    ball_nifti(src)
    from promptonce.io.readers import load

    vol = load(src)
    k = vol.n_slices // 2
    ys, xs = np.nonzero(vol.array[k] > 100)
    prompt = (["--box", f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"] if prompt_kind == "box"
              else ["--point", f"{int(xs.mean())},{int(ys.mean())}"])
    out2 = tmp_path / f"v_{prompt_kind}"
    assert main(["segment", str(src), *prompt, "--out", str(out2), "--quiet",
                 "--reference", str(tmp_path / "ball_ref.nii.gz")]) == 0
    m = json.loads((out2 / "metrics.json").read_text())
    assert m["summary"]["dice_mean"] > 0.7, m


def split_lung_masks(folder, n=4):
    """The Montgomery layout: each lung of each X-ray in its own folder, under the image's name."""
    xray_set(folder, n)
    for side, cols in (("leftMask", slice(0, 36)), ("rightMask", slice(36, None))):
        (folder / side).mkdir()
        for i in range(n):
            m = np.asarray(Image.open(folder / "masks" / f"cxr{i}.png")).copy()
            keep = np.zeros_like(m)
            keep[:, cols] = m[:, cols]
            Image.fromarray(keep).save(folder / side / f"cxr{i}.png")


def test_evaluate_reads_a_reference_kept_in_one_folder_per_lung(tmp_path):
    split_lung_masks(tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out, refs in ((whole, [tmp_path / "masks"]), (parts, [tmp_path / "leftMask", tmp_path / "rightMask"])):
        code = main(["evaluate", "--images", str(tmp_path / "images"), "--references", *map(str, refs),
                     "--out", str(out), "--model", "fake", "--scope", "dataset", "--quiet"])
        assert code == 0
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((parts / "metrics.json").read_text())
    assert [c["dice"] for c in b["cases"]] == [c["dice"] for c in a["cases"]]  # both lungs count, as one mask
    run = json.loads((parts / "run.json").read_text())
    assert run["reference_paths"]["cxr0"] == [str(tmp_path / "leftMask" / "cxr0.png"),
                                              str(tmp_path / "rightMask" / "cxr0.png")]
    one = tmp_path / "one_lung"  # --labels picks one part: the left lung only
    assert main(["evaluate", "--images", str(tmp_path / "images"), "--references", str(tmp_path / "leftMask"),
                 str(tmp_path / "rightMask"), "--labels", "1", "--out", str(one), "--model", "fake",
                 "--scope", "image", "--quiet"]) == 0
    c = json.loads((one / "metrics.json").read_text())
    assert c["summary"]["dice_mean"] > 0.8
