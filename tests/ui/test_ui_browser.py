"""End-to-end tests in headless Chromium (Debian's package) driven by Playwright.

They upload a NIfTI volume and a set of X-rays, click on the image, run dataset scope, check that the
overlay and the metrics appear and download the NIfTI; screenshots go to ``test-artifacts/``. Two
browser profiles at once must never see each other's data, and a closed page's files must go.

The model: the fake backend (deterministic, milliseconds), so that the page's plumbing is tested
fast; ``test_real_models_in_the_browser`` (marked slow) runs the same flow with the real LiteMedSAM +
MobileSAM ("auto") on the tiny phantom: about a minute on a busy 2-core CPU, mostly the encoders.
``PROMPTONCE_UI_TEST_MODEL=real`` makes every browser test use the real models.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import os

import numpy as np
import pytest

from uihelpers import REPO, real_models_available

pytestmark = [pytest.mark.browser, pytest.mark.timeout(170)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/test.sh does it when root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        yield p


class Browser:
    """One headless Chromium with a fresh profile (``--user-data-dir``), i.e. one user."""

    def __init__(self, playwright, url: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="po-chromium-")
        self.ctx = playwright.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1440, "height": 1000}, accept_downloads=True,
        )  # fmt: skip
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(30_000)
        self.page.goto(url)
        self.page.wait_for_selector("#po-run")

    def close(self) -> None:
        self.ctx.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser(playwright, app_server):
    b = Browser(playwright, app_server.url)
    yield b
    b.close()


@pytest.fixture(scope="module")
def model_label() -> str:
    if os.environ.get("PROMPTONCE_UI_TEST_MODEL", "") == "real" and real_models_available():
        return "Auto"
    return "Fake"


# ---------------------------------------------------------------------------------------------- helpers
def status(page) -> str:
    return page.inner_text("#po-status")


def wait_status(page, *needles: str, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = status(page)
        if any(n in text for n in needles):
            return text
        toast = page.locator(".toast-body")
        if toast.count():
            raise AssertionError(f"error shown: {toast.first.inner_text()}")
        time.sleep(0.2)
    raise AssertionError(f"status never showed {needles}: {text!r}")


def upload(page, elem_id: str, files: list[Path]) -> None:
    page.set_input_files(f"#{elem_id} input[type=file]", [str(f) for f in files])
    # wait until Gradio lists every uploaded file
    for f in files:
        page.wait_for_selector(f'#{elem_id} td.filename[aria-label="{f.name}"]')


def choose(page, elem_id: str, text: str) -> None:
    """Picks an option of a Gradio dropdown by (part of) its label."""
    page.click(f"#{elem_id} input")
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def view_src(page) -> str:
    return page.get_attribute("#po-view img", "src") or ""


def click_image(page, x_img: float, y_img: float, scale: float) -> None:
    """Clicks the view at image pixel (x, y) (display pixel = (x + 0.5) * scale), as Gradio maps clicks."""
    page.mouse.click(*screen_point(page, x_img, y_img, scale))


def screen_point(page, x_img: float, y_img: float, scale: float) -> tuple[float, float]:
    """The page position of image pixel (x, y) of the view (display pixel = (x + 0.5) * scale)."""
    page.wait_for_function(
        "() => { const im = document.querySelector('#po-view img'); return im && im.complete && im.naturalWidth > 0; }"
    )
    box = page.evaluate(
        """() => { const im = document.querySelector('#po-view img'); const r = im.getBoundingClientRect();
                   return {l: r.left, t: r.top, w: r.width, h: r.height, nw: im.naturalWidth, nh: im.naturalHeight}; }"""
    )
    r = min(box["w"] / box["nw"], box["h"] / box["nh"], 1.0)
    ox, oy = (box["w"] - box["nw"] * r) / 2, (box["h"] - box["nh"] * r) / 2
    X, Y = (x_img + 0.5) * scale, (y_img + 0.5) * scale
    return box["l"] + ox + X * r, box["t"] + oy + Y * r


def overlay_pixels(page, tmp_path: Path) -> np.ndarray:
    """The currently shown view image as an array (read back from the server the page got it from)."""
    from PIL import Image

    src = view_src(page)
    data = page.request.get(src).body()
    p = tmp_path / "view.png"
    p.write_bytes(data)
    return np.asarray(Image.open(p).convert("RGB"))


def coloured_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels that are not grey (an overlay colour)."""
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    return float((spread > 40).mean())


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# ---------------------------------------------------------------------------------------------- tests
def test_volume_click_run_metrics_download(browser, ct_small, model_label, tmp_path):
    volume_flow(browser.page, ct_small, model_label, tmp_path, "ct")


@pytest.mark.slow
def test_real_models_in_the_browser(browser, ct_small, tmp_path):
    if not real_models_available():
        pytest.skip("LiteMedSAM / MobileSAM are not available on this host")
    dice = volume_flow(browser.page, ct_small, "Auto", tmp_path, "real_ct")
    # the phantom's right lung (reference label 1) from one click (measured 0.70 here: the engine ends
    # the object early on the small end slices of this 8-slice phantom; the middle slices score 1.0)
    assert dice > 0.5, dice


def volume_flow(page, ct_small, model_label: str, tmp_path: Path, tag: str) -> float:
    """Upload a NIfTI volume + reference, click, run dataset scope, check overlay/metrics, download.

    Returns:
        The mean Dice the page shows (right lung = reference label 1).
    """
    upload(page, "po-files", [ct_small[0]])
    upload(page, "po-refs", [ct_small[1]])
    page.click("#po-load")
    wait_status(page, "Loaded")
    choose(page, "po-model", model_label)
    shot(page, f"01_{tag}_loaded")
    before = overlay_pixels(page, tmp_path)
    assert coloured_fraction(before) < 0.001
    click_image(page, 20, 30, scale=8.0)  # the right lung of the 64 px phantom, middle slice
    wait_status(page, "preview", "nothing")
    assert "preview" in status(page), status(page)
    assert coloured_fraction(overlay_pixels(page, tmp_path)) > 0.01, "the preview mask is drawn"
    shot(page, f"02_{tag}_preview")
    page.locator("#po-scope label", has_text="Whole dataset").click()
    page.click("#po-run")
    wait_status(page, "Done", "Stopped", timeout=90)
    page.wait_for_selector("#po-metrics >> text=Dice")
    metrics = page.inner_text("#po-metrics")
    assert "Prompts: 1" in metrics and "fewer" in metrics
    assert "8 slices segmented" in metrics
    # score the right lung only (the one clicked): reference label 1
    page.fill("#po-ref-labels textarea, #po-ref-labels input", "1")
    page.press("#po-ref-labels textarea, #po-ref-labels input", "Enter")
    page.wait_for_selector("#po-metrics >> text=reference label(s) 1")
    dice = float(page.inner_text("#po-metrics").split("Dice ")[1].split()[0])
    # keyboard: the left arrow (outside text fields) goes one slice back, and that slice has its result
    page.click(".po-title h1")
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector("#po-info >> text=slice 4 / 8")
    assert "result" in page.inner_text("#po-info")
    shot(page, f"03_{tag}_result")
    if tag == "ct":
        # a correction on a result slice: a click on the other lung, then re-propagate that range only
        click_image(page, 44, 30, scale=8.0)
        wait_status(page, "preview", "nothing")
        page.click("#po-correct")
        wait_status(page, "Corrections applied")
    link = page.locator('#po-downloads a[download="phantom_mask.nii.gz"]')
    with page.expect_download() as dl:
        link.click()
    saved = tmp_path / "downloaded.nii.gz"
    dl.value.save_as(saved)
    import nibabel as nib

    out, inp = nib.load(str(saved)), nib.load(str(ct_small[0]))
    np.testing.assert_allclose(out.affine, inp.affine)
    assert out.shape == inp.shape and np.asarray(out.dataobj).any()
    return dice


def test_xray_set_dataset_scope(browser, xray_small, model_label, tmp_path):
    page = browser.page
    images, masks = xray_small
    upload(page, "po-files", images)
    upload(page, "po-refs", masks)
    page.click("#po-load")
    wait_status(page, "Loaded 3 case(s)")
    choose(page, "po-model", model_label)
    click_image(page, 31, 45, scale=6.0)  # 96 px X-rays are shown at 576 px
    wait_status(page, "preview", "nothing")
    # a second object, named, prompted with a box (two opposite corners)
    page.fill("#po-controls textarea[placeholder='e.g. left lung'], #po-controls input[placeholder='e.g. left lung']",
              "left lung")
    page.click("#po-add-object")
    page.wait_for_selector("#po-legend >> text=left lung")
    page.locator("#po-mode label", has_text="Box").click()
    click_image(page, 56, 22, scale=6.0)
    wait_status(page, "first corner")
    click_image(page, 78, 68, scale=6.0)
    wait_status(page, "left lung: preview", "left lung: the model found nothing")
    page.locator("#po-scope label", has_text="Whole dataset").click()
    page.click("#po-run")
    wait_status(page, "Done", "Stopped", timeout=90)
    page.wait_for_selector("#po-metrics >> text=Dice")
    assert "3 images segmented" in page.inner_text("#po-metrics")
    # the per-case table has the three images
    table = page.inner_text("#po-table")
    assert all(n in table for n in ("cxr_01", "cxr_02", "cxr_03"))
    # browse to the next image: its overlay is there too
    page.click("#po-next")
    page.wait_for_selector("#po-info >> text=cxr_02")
    assert coloured_fraction(overlay_pixels(page, tmp_path)) > 0.01
    shot(page, "04_xray_result")
    assert page.locator('#po-downloads a[download="masks_png.zip"]').count() == 1


def test_two_browsers_never_see_each_other(playwright, app_server):
    a = Browser(playwright, app_server.url)
    b = Browser(playwright, app_server.url)
    try:
        a.page.click("#po-ex-ct")
        b.page.click("#po-ex-xray")
        wait_status(a.page, "Loaded")
        wait_status(b.page, "Loaded")
        assert "ct_phantom" in a.page.inner_text("#po-info")
        assert "cxr_01" in b.page.inner_text("#po-info")
        src_a, src_b = view_src(a.page), view_src(b.page)
        dir_a = src_a.split("promptonce-results/")[1].split("/")[0]
        dir_b = src_b.split("promptonce-results/")[1].split("/")[0]
        assert dir_a != dir_b and len(dir_a) == 32
        # B stepping through its images never shows A's case
        b.page.click("#po-next")
        b.page.wait_for_selector("#po-info >> text=cxr_02")
        assert "ct_phantom" not in b.page.inner_text("#po-info") + b.page.inner_text("#po-status")
        assert "cxr" not in a.page.inner_text("#po-info") + a.page.inner_text("#po-status")
        shot(a.page, "05_two_sessions_a")
        shot(b.page, "05_two_sessions_b")
        folder_a = app_server.store.results_root / dir_a
        assert folder_a.is_dir()
    finally:
        a.close()
    # the closed page's session folder is removed (demo.unload after the heartbeat stops)
    deadline = time.time() + 30
    while folder_a.exists() and time.time() < deadline:
        time.sleep(0.25)
    try:
        assert not folder_a.exists(), "the closed session's files were removed"
        assert (app_server.store.results_root / dir_b).is_dir(), "the other session is untouched"
    finally:
        b.close()
