"""Review mode driven directly (no browser): the ranked review list finds a planted failure, the
reformats show the mask in physical aspect, the measures give mL and mm², display options apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptonce.ui import handlers as H
from promptonce.ui import review as R
from promptonce.ui.view import display_options

MODEL = "fake"


def write_gap_volume(folder: Path, gap: int = 10) -> Path:
    """A 15-slice 64 x 64 volume (1 x 1 x 3 mm) with a bright ball that is missing from slice ``gap``."""
    import nibabel as nib

    n, size = 15, 64
    zz, yy, xx = np.mgrid[0:n, 0:size, 0:size]
    ball = (xx - 32) ** 2 + (yy - 30) ** 2 <= 100
    arr = np.where(ball, 200.0, 20.0) + np.random.default_rng(0).normal(
        0, 2, ball.shape
    )
    arr[gap] = 20.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gap.nii.gz"
    img = nib.Nifti1Image(
        np.transpose(arr.astype(np.float32), (2, 1, 0)), np.diag([1.0, 1.0, 3.0, 1.0])
    )
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def disp(ws, v, x, y):
    sx, sy = ws.display_scale(v)
    return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5


@pytest.fixture
def gap_ws(store, tmp_path):
    sess = store.get("review")
    ws = H.load_inputs(sess, [write_gap_volume(tmp_path / "gap")], [])
    H.click(ws, 0, 7, *disp(ws, 0, 32, 30), mode="positive", model=MODEL)
    list(
        H.run(
            ws,
            scope="volume",
            strategy="transfer",
            model=MODEL,
            window="auto",
            v_current=0,
        )
    )
    return ws


def test_review_list_ranks_the_planted_failure_first(gap_ws):
    ws = gap_ws
    items = R.review_items(ws)
    assert items, "the lost object must be listed for review"
    first = items[0]
    assert (first.case, first.slice_index) == (0, 10), items
    assert any("object lost mid-volume" in f for f in first.flags)
    # the engine's confidence of the slice (a session that keeps it per object has none for a lost object)
    assert first.confidence is None or first.confidence < 0.5
    # lowest confidence first
    confs = [
        it.confidence if it.confidence is not None else R.REVIEW_BELOW for it in items
    ]
    assert confs == sorted(confs)
    labels = R.review_choices(ws, items)
    assert (
        labels[0][1] == "0:10" and "slice 11" in labels[0][0] and "lost" in labels[0][0]
    )
    assert "lowest confidence first" in R.review_heading(ws, items)
    # next: from anywhere not listed -> the first; then on through the list, wrapping round
    assert R.next_to_review(
        ws, 0, 0 if (0, 0) not in {(i.case, i.slice_index) for i in items} else 1
    ) == (0, 10)
    keys = [(it.case, it.slice_index) for it in items]
    assert R.next_to_review(ws, *keys[-1]) == keys[0]
    assert (
        R.parse_choice("0:10") == (0, 10)
        and R.parse_choice("x") is None
        and R.parse_choice(None) is None
    )


def test_nothing_to_review_before_a_run(store, tmp_path):
    ws = H.load_inputs(store.get("r2"), [write_gap_volume(tmp_path / "g2")], [])
    assert R.review_items(ws) == [] and R.next_to_review(ws, 0, 0) is None
    assert "after a run" in R.review_heading(ws)
    assert R.measures_markdown(ws, 0, 7) == ""


def test_coronal_reformat_shows_the_mask_in_physical_aspect(gap_ws):
    ws = gap_ws
    row, col = R.reformat_position(ws, 0, 7)
    ys, xs = np.nonzero(
        ws.volume(0).array[7] > 100
    )  # the ball as read (the reader may flip the rows)
    assert abs(row - ys.mean()) <= 1 and abs(col - xs.mean()) <= 1, (
        "the cut goes through the object"
    )
    cor = R.reformat(ws, 0, 7, "coronal")
    sag = R.reformat(ws, 0, 7, "sagittal")
    # 64 columns of 1 mm across, 15 slices of 3 mm down: 300 px wide, 300 * 45 / 64 px high
    assert cor.shape == (round(300 * 45 / 64), 300, 3) and sag.shape == cor.shape
    spread = cor.max(axis=2).astype(int) - cor.min(axis=2).astype(int)
    coloured_rows = np.flatnonzero((spread[:, 20:-20] > 40).any(axis=1))
    assert coloured_rows.size > 0, "the mask is drawn on the coronal cut"
    # slice 0 at the bottom: the gap (slice 10) is a band without mask 10/15 of the way up
    h = cor.shape[0]
    gap_band = slice(int(h * (15 - 11) / 15) + 1, int(h * (15 - 10) / 15) - 1)
    below = slice(int(h * (15 - 9) / 15) + 1, int(h * (15 - 8) / 15) - 1)
    assert not (spread[gap_band, 20:-20] > 40).any(), (
        "no mask on the slice where the object is missing"
    )
    assert (spread[below, 20:-20] > 40).any(), "mask on the slices before the gap"
    # the shown slice is marked (yellow ticks at the edge)
    y = int((15 - 1 - 7 + 0.5) * h / 15)
    assert tuple(cor[y, 2]) == (255, 214, 10)


def test_measures_give_millilitres_and_square_millimetres(gap_ws):
    ws = gap_ws
    text = R.measures_markdown(ws, 0, 7)
    res = np.asarray(ws.results[0])
    ml = (res == 1).sum() * 1.0 * 1.0 * 3.0 / 1000
    mm2 = (res[7] == 1).sum() * 1.0
    assert f"{ml:.1f} mL" in text and f"slice 8: {mm2:.0f} mm²" in text, text


def test_opacity_and_outline_change_the_rendering(gap_ws):
    ws = gap_ws
    opts = display_options(ws.session)
    filled = H.render(ws, 0, 7)
    opts.opacity = 0.9
    stronger = H.render(ws, 0, 7)
    opts.fill = False
    outline = H.render(ws, 0, 7)
    ys, xs = np.nonzero(ws.volume(0).array[7] > 100)
    inside = (
        int(xs.mean()) * 8 + 4,
        int(ys.mean()) * 8 + 4,
    )  # display pixel inside the ball (8x display scale)
    r0, r1, r2 = (
        int(a[inside[1], inside[0], 0]) - int(a[inside[1], inside[0], 2])
        for a in (filled, stronger, outline)
    )
    assert abs(r1) > abs(r0), "more opacity, more colour"
    assert r2 == 0, "outline only: the inside stays grey"
    opts.opacity, opts.fill = 0.45, True


def test_reference_labels_each_in_their_colour(store, ct_small):
    from promptonce.preprocess import label_color

    ws = H.load_inputs(store.get("ref"), [ct_small[0]], [ct_small[1]])
    rgb = H.render(ws, 0, 4, "auto", show_reference=True)
    cols = {tuple(int(c + (255 - c) * 0.45) for c in label_color(i)) for i in (1, 2)}
    found = {tuple(int(x) for x in px) for px in rgb.reshape(-1, 3)}
    assert cols <= found, "both reference labels are outlined, each in its own colour"
    legend = R.reference_legend(ws, 0)
    assert legend.startswith("Reference:") and " 1" in legend and " 2" in legend


def test_window_choices_for_every_modality(store, ct_small, xray_small):
    ct = H.load_inputs(store.get("w1"), [ct_small[0]], [])
    assert "lung" in R.window_choices(ct, ["auto", "lung", "custom"])
    xr = H.load_inputs(store.get("w2"), xray_small[0], [])
    assert R.window_choices(xr, ["auto", "lung", "custom"]) == ["auto", "custom"]
    w, level = R.auto_window_numbers(xr, 0)
    assert w > 0


def test_reference_legend_names_labels_from_a_sidecar(store, tmp_path):
    import json

    from uihelpers import make_assets

    img, ref = make_assets.write_ct(
        tmp_path / "named", size=64, n_slices=8, name="phantom"
    )
    side = tmp_path / "named" / "phantom_mask.json"
    side.write_text(json.dumps({"1": "right lung", "2": "left lung"}))
    ws = H.load_inputs(store.get("names"), [img], [ref, side])
    legend = R.reference_legend(ws, 0)
    assert "1 right lung" in legend and "2 left lung" in legend, legend
    ws.set_reference_labels([1])
    assert "2 left lung (not scored)" in R.reference_legend(ws, 0)


def test_image_set_thumbnails(store, xray_small):
    ws = H.load_inputs(store.get("thumbs"), xray_small[0], [])
    assert R.is_image_set(ws)
    key = R.thumbnails_key(ws)
    thumbs = R.thumbnails(ws, ws.session)
    assert [c for _, c in thumbs] == ["cxr_01", "cxr_02", "cxr_03"]
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p, _ in thumbs)
    from PIL import Image

    assert max(Image.open(thumbs[0][0]).size) <= R.THUMBNAIL_SIZE
    H.click(ws, 0, 0, 31 * 6, 45 * 6, mode="positive", model=MODEL)
    list(
        H.run(
            ws,
            scope="dataset",
            strategy="transfer",
            model=MODEL,
            window="auto",
            v_current=0,
        )
    )
    assert R.thumbnails_key(ws) != key, "a run redraws the thumbnails"
    captions = [c for _, c in R.thumbnails(ws, ws.session)]
    assert all("cxr_0" in c for c in captions)
    # the old thumbnails are removed, only the new ones stay
    assert len(list(ws.session.subdir("view").glob("thumb_*.png"))) == 3


def test_cases_ranked_by_confidence(store, tmp_path):
    """Two volumes, one with the planted gap: the broken one is ranked first."""
    import nibabel as nib

    good = write_gap_volume(tmp_path / "good", gap=10)
    arr = np.asarray(nib.load(str(good)).dataobj)
    whole = tmp_path / "whole"
    whole.mkdir()
    arr = arr.copy()
    arr[:, :, 10] = arr[:, :, 9]  # the ball on every slice: nothing lost
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0]))
    nib.save(img, whole / "whole.nii.gz")
    ws = H.load_inputs(store.get("rank"), [whole / "whole.nii.gz", good], [])
    names = [m.name for m in ws.metas]
    gap_case = names.index("gap")
    H.click(ws, gap_case, 7, *disp(ws, gap_case, 32, 33), mode="positive", model=MODEL)
    list(H.run(ws, scope="dataset", strategy="transfer", model=MODEL, window="auto", v_current=gap_case))
    ranked = R.case_ranking(ws)
    assert len(ranked) == 2 and [v for v, _c, _n in ranked][0] == gap_case, ranked
    assert "cases first to check: gap" in R.review_heading(ws)


def test_per_object_confidences_count_as_their_lowest(gap_ws):
    """A session may keep ``{object id: confidence}`` per slice: the slice ranks by its worst object."""
    ws = gap_ws
    ws.confidence = {(0, k): {1: 0.9, 2: 0.95} for k in range(15)}
    ws.confidence[(0, 10)] = {1: 0.2, 2: 0.9}
    items = R.review_items(ws)
    assert (items[0].case, items[0].slice_index, items[0].confidence) == (0, 10, 0.2)
    ws.confidence[(0, 3)] = {1: 0.95, 2: 0.1}
    assert [(it.case, it.slice_index) for it in R.review_items(ws)][:2] == [(0, 3), (0, 10)]


def test_a_run_of_slices_with_the_same_flags_is_one_item(gap_ws):
    """Slices walked from a flagged seed all carry its flag: one review item for the run, not one per slice."""
    ws = gap_ws
    ws.flags = {(0, k): ["wall: carried from the prompted slice, whose mask was flagged"] for k in range(2, 7)}
    ws.flags[(0, 9)] = ["wall: disagrees with its neighbours"]
    ws.confidence = {(0, k): 0.9 for k in range(15)} | {(0, k): 0.5 for k in range(2, 7)} | {(0, 4): 0.4, (0, 9): 0.6}
    items = R.review_items(ws)
    assert [(it.slice_index, it.last_slice, it.confidence) for it in items] == [(2, 6, 0.4), (9, None, 0.6)]
    labels = R.review_choices(ws, items)
    assert "slices 3-7" in labels[0][0] and labels[0][1] == "0:2" and "slice 10" in labels[1][0]
    assert "Review: 6 slices in 1 case(s) (2 items)" in R.review_heading(ws, items)
    assert R.next_to_review(ws, 0, 4) == (0, 9)  # from inside the run to the next item
    assert R.next_to_review(ws, 0, 9) == (0, 2)
    # the flagged prompted slice comes first among slices at its confidence, though others carry more flags
    ws.flags[(0, 1)] = ["wall: the model is unsure of its outline on the prompted slice (score 0.40); check that slice first"]
    ws.flags[(0, 4)] = ws.flags[(0, 4)] + ["wall: disagrees with its neighbours"]
    ws.confidence[(0, 1)] = 0.4
    assert [it.slice_index for it in R.review_items(ws)][:2] == [1, 4]
