"""Report: tables, plots, paired test and thumbnails from synthetic run folders (and one headless-browser check)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptonce.cli import main
from promptonce.errors import CorruptFileError, InputError
from promptonce.metrics import dice, jaccard
from promptonce.report import load_run, paired_tests, summary_rows, write_report

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_run(root: Path, label: str, shifts: dict[str, int], *, model: str = "fake", scope: str = "image",
             thumbs: bool = True, prompts: int | None = None) -> Path:
    """A run folder like `promptonce evaluate` writes, for 2D cases: one disc per case, prediction shifted.

    The Dice written to metrics.json is computed from the masks written, so thumbnails and numbers agree.
    """
    run = root / label
    (run / "masks").mkdir(parents=True)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "refs").mkdir(exist_ok=True)
    cases, ref_paths = [], {}
    for name, shift in shifts.items():
        ref = disc((48, 56), 24, 26, 12)
        pred = disc((48, 56), 24, 26 + shift, 12)
        img = np.where(ref, 190, 50).astype(np.uint8)
        Image.fromarray(img).save(data / "images" / f"{name}.png")
        Image.fromarray(ref.astype(np.uint8) * 255).save(data / "refs" / f"{name}.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(run / "masks" / f"{name}.png")
        ref_paths[name] = str(data / "refs" / f"{name}.png")
        case = {"name": name, "dice": dice(pred, ref), "jaccard": jaccard(pred, ref), "images": 1, "prompts": 1,
                "flags": [], "slices_with_object": 1}
        if thumbs:
            case["image_path"] = str(data / "images" / f"{name}.png")
        cases.append(case)
    n = len(cases)
    summary = {
        "model": model, "scope": scope, "strategy": None, "protocol": "oneclick",
        "prompts": n if prompts is None else prompts, "images": n, "cases": n,
        "dice_mean": float(np.mean([c["dice"] for c in cases])),
        "jaccard_mean": float(np.mean([c["jaccard"] for c in cases])),
        "dice_pooled": None, "hd95_mean_mm": 3.5, "seconds": 0.5 * n, "images_per_second": 2.0,
        "prompts_per_slice_workflow": n,
    }
    (run / "metrics.json").write_text(json.dumps({"summary": summary, "cases": cases}))
    if thumbs:
        (run / "run.json").write_text(json.dumps({"images": [str(data / "images")], "reference_paths": ref_paths}))
    return run


def data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture
def two_runs(tmp_path):
    names = [f"case{i}" for i in range(8)]
    a = make_run(tmp_path, "litemedsam_image", {n: 1 for n in names})  # shift 1 px: Dice ~0.97
    b = make_run(tmp_path, "mobilesam_image", {n: 2 + (i % 3) for i, n in enumerate(names)})  # worse, varied
    return a, b


def test_report_has_table_plots_wilcoxon_and_no_external_urls(tmp_path, two_runs):
    a, b = two_runs
    path = write_report([a, b], tmp_path / "rep")
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "rep" / "report.html"
    assert "<table>" in page and "litemedsam_image" in page and "mobilesam_image" in page
    assert "0.9494" in page and "0.9319" in page and "literature" in page.lower()
    # every run B case is worse than A: 8 negative differences -> W = 0, exact two-sided p = 2 / 2**8
    m = re.search(r"Wilcoxon signed-rank, litemedsam_image vs mobilesam_image: n=8, statistic=([\d.]+), p=([\d.e-]+)",
                  page)
    assert m, "Wilcoxon line missing"
    assert float(m.group(1)) == 0.0 and float(m.group(2)) == pytest.approx(2 / 256, rel=1e-3)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    pngs = data_uris(page)
    # box plot, prompts, time, thumbnails of both runs (single images: no per-slice plot)
    assert len(pngs) == 5
    for png in pngs:
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert "Per-slice Dice not available" in page
    md = (tmp_path / "rep" / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5 and all((tmp_path / "rep" / f).is_file() for f in links)
    assert "| litemedsam_image | fake | image |" in md
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["paired_tests"][0]["n"] == 8


def test_thumbnails_show_prediction_and_reference_of_best_and_worst(tmp_path):
    shifts = {f"c{i}": s for i, s in enumerate([0, 1, 2, 6, 8, 10, 3, 4])}
    run = make_run(tmp_path, "r", shifts)
    write_report([run], tmp_path / "rep")
    thumb = np.asarray(Image.open(tmp_path / "rep" / "cases_0_r.png").convert("RGB")).astype(int)
    green = (np.abs(thumb - [40, 230, 90]).sum(axis=2) < 40).sum()
    reddish = ((thumb[..., 0] - thumb[..., 1] > 60) & (thumb[..., 0] > 120)).sum()
    assert green > 200 and reddish > 500
    assert "No thumbnails" not in (tmp_path / "rep" / "report.md").read_text()
    drawn = json.loads((tmp_path / "rep" / "report.json").read_text())["thumbnails"]["r"]
    assert drawn == {"best": ["c0", "c1", "c2"], "worst": ["c5", "c4", "c3"]}  # shifts 0,1,2 and 10,8,6


def test_thumbnails_skipped_when_inputs_unknown(tmp_path):
    run = make_run(tmp_path, "r", {f"c{i}": i for i in range(3)}, thumbs=False)
    write_report([run], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "No thumbnails" in md
    assert not list((tmp_path / "rep").glob("cases_*.png"))


def test_paired_test_needs_six_shared_cases(tmp_path):
    a = make_run(tmp_path, "a", {f"c{i}": 1 for i in range(5)}, thumbs=False)
    b = make_run(tmp_path, "b", {f"c{i}": 3 for i in range(5)}, thumbs=False)
    (t,) = paired_tests([load_run(a), load_run(b)])
    assert t.n == 5 and t.p_value is None and "not enough paired cases" in t.note
    page = write_report([a, b], tmp_path / "rep").read_text()
    assert "not enough paired cases" in page


def test_paired_test_matches_cases_by_name_only(tmp_path):
    a = make_run(tmp_path, "a", {f"c{i}": 1 for i in range(8)}, thumbs=False)
    b = make_run(tmp_path, "b", {f"c{i}": 0 for i in range(4, 12)}, thumbs=False)  # shares c4..c7
    (t,) = paired_tests([load_run(a), load_run(b)])
    assert t.n == 4
    assert t.median_diff == pytest.approx(1.0 - dice(disc((48, 56), 24, 27, 12), disc((48, 56), 24, 26, 12)))


def test_identical_runs_are_not_tested(tmp_path):
    a = make_run(tmp_path, "a", {f"c{i}": 1 for i in range(7)}, thumbs=False)
    b = make_run(tmp_path, "b", {f"c{i}": 1 for i in range(7)}, thumbs=False)
    (t,) = paired_tests([load_run(a), load_run(b)])
    assert t.n == 7 and t.p_value is None and "identical" in t.note


def test_slice_dice_plot_when_cases_carry_it(tmp_path):
    run = make_run(tmp_path, "vol", {"v0": 1, "v1": 2}, thumbs=False)
    m = json.loads((run / "metrics.json").read_text())
    m["cases"][0]["slice_dice"] = [1.0, 0.5, 0.9, 0.95, 0.2]
    m["cases"][1]["slice_dice"] = [0.8, None, 0.7]
    (run / "metrics.json").write_text(json.dumps(m))
    write_report([run], tmp_path / "rep")
    assert (tmp_path / "rep" / "slice_dice.png").is_file()
    assert "Per-slice Dice not available" not in (tmp_path / "rep" / "report.md").read_text()


def test_missing_fields_and_prompt_savings(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    cases = [{"name": f"v{i}", "dice": d, "prompts": 1 if i == 0 else 0, "slices_with_object": 20}
             for i, d in enumerate([0.9, 0.8, None])]
    (run / "metrics.json").write_text(json.dumps({"cases": cases}))
    (row,) = summary_rows([load_run(run)])
    assert row["prompts"] == 1 and row["prompts_per_slice"] == 60
    assert row["prompts_saved_pct"] == pytest.approx(100 * (1 - 1 / 60))
    assert row["dice_mean"] == pytest.approx(0.85) and row["model"] is None and row["ms_per_slice"] is None
    page = write_report([run], tmp_path / "rep").read_text()
    assert "98.3" in page and "Timing not recorded" in page


def test_errors_name_the_bad_run(tmp_path, two_runs):
    a, _ = two_runs
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(InputError, match="empty_run"):
        write_report([a, empty], tmp_path / "rep")
    with pytest.raises(InputError, match="nope"):
        write_report([tmp_path / "nope"], tmp_path / "rep")
    with pytest.raises(InputError, match="No run folder"):
        write_report([], tmp_path / "rep")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="bad"):
        write_report([bad], tmp_path / "rep")
    assert main(["report", str(empty), "--out", str(tmp_path / "rep2"), "--quiet"]) == 2


def test_cli_evaluate_then_report_end_to_end(tmp_path):
    """A real evaluate run folder (fake backend, synthetic volume) gives per-slice Dice and thumbnails."""
    import nibabel as nib

    zz, yy, xx = np.mgrid[0:40, 0:40, 0:9]
    ref = ((zz - 20) ** 2 + (yy - 18) ** 2 + ((xx - 4) * 4) ** 2) <= 100
    nib.save(nib.Nifti1Image(np.where(ref, 300, -50).astype(np.int16), np.eye(4)), tmp_path / "ball.nii.gz")
    (tmp_path / "refs").mkdir()
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), np.eye(4)), tmp_path / "refs" / "ball.nii.gz")
    out = tmp_path / "run"
    assert main(["evaluate", "--images", str(tmp_path / "ball.nii.gz"), "--references", str(tmp_path / "refs"),
                 "--out", str(out), "--model", "fake", "--scope", "volume", "--quiet"]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    rep = tmp_path / "rep"
    assert (rep / "slice_dice.png").is_file() and (rep / "cases_0_run.png").is_file()
    assert len(data_uris((rep / "report.html").read_text())) == 5  # box, per-slice, prompts, time, thumbnails


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_report_renders_in_headless_chromium(tmp_path, two_runs):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    path = write_report(list(two_runs), tmp_path / "rep")
    profile = tempfile.mkdtemp(prefix="po-report-chromium-")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    try:
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=args,
                viewport={"width": 1200, "height": 900},
            )
            requests: list[str] = []
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            heading = page.inner_text("h1")
            cells = page.eval_on_selector_all("table tr", "els => els.length")
            out = REPO / "test-artifacts"
            out.mkdir(exist_ok=True)
            page.screenshot(path=str(out / "report.png"), full_page=True)
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert heading == "PromptOnce evaluation report"
    assert len(widths) == 5 and all(w > 0 for w in widths), widths
    assert cells > 5
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
