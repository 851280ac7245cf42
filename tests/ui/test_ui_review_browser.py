"""Review mode in headless Chromium (fake backend): the review list jumps to a planted failure, the
coronal view shows the mask, the mouse wheel over the image scrolls slices (not the page), ``r`` goes
to the next slice to review, the opacity / outline controls redraw the mask. Screenshots go to
``test-artifacts/`` (``review_*.png``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_ui_browser import (  # noqa: F401 - fixtures and helpers of the browser tests
    Browser,
    browser,
    choose,
    click_image,
    coloured_fraction,
    model_label,
    overlay_pixels,
    playwright,
    shot,
    upload,
    wait_status,
)
from test_ui_review import write_gap_volume

pytestmark = [pytest.mark.browser, pytest.mark.timeout(170)]


def image_pixels(page, selector: str, tmp_path) -> np.ndarray:
    from PIL import Image

    src = page.get_attribute(f"{selector} img", "src") or ""
    assert src, f"{selector} shows no image"
    p = tmp_path / "img.png"
    p.write_bytes(page.request.get(src).body())
    return np.asarray(Image.open(p).convert("RGB"))


def shown_slice(page) -> str:
    return page.inner_text("#po-info")


def wait_info(page, text: str, timeout: float = 20.0) -> str:
    deadline = time.time() + timeout
    info = ""
    while time.time() < deadline:
        info = shown_slice(page)
        if text in info:
            return info
        time.sleep(0.1)
    raise AssertionError(f"the info line never showed {text!r}: {info!r}")


def test_review_list_coronal_wheel_and_next_key(browser, model_label, tmp_path):  # noqa: F811
    page = browser.page
    vol = write_gap_volume(
        tmp_path / "gap"
    )  # the ball is missing from slice 11 (1-based)
    upload(page, "po-files", [vol])
    page.click("#po-load")
    wait_status(page, "Loaded")
    choose(page, "po-model", model_label)
    wait_info(page, "slice 8 / 15")
    click_image(page, 32, 33, scale=8.0)  # inside the ball (64 px shown at 512 px)
    wait_status(page, "preview", "nothing")
    page.click("#po-run")
    wait_status(page, "Done", "Stopped", timeout=90)
    # the review list: the planted failure is first
    first = page.locator("#po-review label").first
    first.wait_for()
    assert "slice 11" in first.inner_text() and "lost" in first.inner_text(), (
        first.inner_text()
    )
    shot(page, "review_01_list")
    first.click()
    info = wait_info(page, "slice 11 / 15")
    assert "lost mid-volume" in info, info
    # the review components follow the shown slice: measures of slice 11 (the object is lost: 0 mm²), item selected
    page.wait_for_selector("#po-measures >> text=slice 11: 0 mm²")
    page.wait_for_selector("#po-review input[value='0:10']:checked")
    shot(page, "review_02_jumped_to_failure")

    # the coronal reformat shows the mask (and the sagittal one too)
    page.wait_for_selector("#po-coronal img")
    cor = image_pixels(page, "#po-coronal", tmp_path)
    sag = image_pixels(page, "#po-sagittal", tmp_path)
    assert coloured_fraction(cor) > 0.05 and coloured_fraction(sag) > 0.05
    assert cor.shape[1] == 300 and abs(cor.shape[0] - round(300 * 45 / 64)) <= 1, (
        "physical aspect (3 mm slices)"
    )
    assert "mL" in page.inner_text("#po-measures") and "mm²" in page.inner_text(
        "#po-measures"
    )
    page.locator("#po-coronal").scroll_into_view_if_needed()
    page.locator("#po-coronal").screenshot(path=str(tmp_path / "cor.png"))
    shot(page, "review_03_coronal")

    # the wheel over the image: next slice, and the page does not scroll
    page.evaluate("() => window.scrollTo(0, 0)")
    page.locator("#po-view img").hover()
    y0 = page.evaluate("() => window.scrollY")
    page.mouse.wheel(0, 120)
    wait_info(page, "slice 12 / 15")
    assert page.evaluate("() => window.scrollY") == y0, (
        "the page scrolled under the wheel"
    )
    time.sleep(0.2)
    page.mouse.wheel(0, -120)
    wait_info(page, "slice 11 / 15")
    time.sleep(0.2)
    page.mouse.wheel(0, -120)
    wait_info(page, "slice 10 / 15")
    # "r": back to the next slice to review (the only one: slice 11)
    page.click(".po-title h1")
    page.keyboard.press("r")
    wait_info(page, "slice 11 / 15")

    # outline only: the inside of the mask is grey again on slice 10
    page.locator("#po-view img").hover()
    page.mouse.wheel(0, -120)
    wait_info(page, "slice 10 / 15")
    filled = coloured_fraction(overlay_pixels(page, tmp_path))
    page.locator("#po-mask-style label", has_text="Outline").click()
    deadline = time.time() + 20
    while time.time() < deadline:
        outlined = coloured_fraction(overlay_pixels(page, tmp_path))
        if outlined < filled * 0.7:
            break
        time.sleep(0.2)
    assert outlined < filled * 0.7, (filled, outlined)
    shot(page, "review_04_outline")


def test_image_set_thumbnails_and_window(browser, xray_small, model_label, tmp_path):  # noqa: F811
    page = browser.page
    images, masks = xray_small
    upload(page, "po-files", images)
    page.click("#po-load")
    wait_status(page, "Loaded 3 case(s)")
    # a thumbnails strip of the images; a click on one shows it
    page.wait_for_selector("#po-thumbs img")
    thumbs = page.locator("#po-thumbs button:has(img)")
    assert thumbs.count() == 3, thumbs.count()
    thumbs.nth(2).click()
    wait_info(page, "cxr_03")
    assert (
        page.locator("#po-coronal img").count() == 0
        or not page.locator("#po-coronal").is_visible()
    )
    # the window menu is there for X-rays too (automatic or custom), and custom starts from the auto window
    assert page.locator("#po-window").is_visible()
    choose(page, "po-window", "custom")
    page.wait_for_selector("#po-ww input", state="visible")
    assert float(page.input_value("#po-ww input")) > 0
    shot(page, "review_05_xray_thumbnails")
