"""Recovery in headless Chromium (issue 13): a failed upload followed by a good one in the same tab,
undo after one box corner, a background click that changes the mask, and the 4D time point control.
Screenshots go to ``test-artifacts/`` (as in test_ui_browser.py, whose fixtures these reuse)."""

# ruff: noqa: F811 - the fixtures are imported from test_ui_browser.py and used as arguments

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from test_ui_browser import (  # noqa: F401 - fixtures (playwright, browser, model_label) and helpers
    Browser,
    browser,
    choose,
    click_image,
    coloured_fraction,
    model_label,
    overlay_pixels,
    playwright,
    screen_point,
    shot,
    status,
    upload,
    wait_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(170)]


def wait_text(page, selector: str, needle: str, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        loc = page.locator(selector)
        text = loc.inner_text() if loc.count() else ""
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{selector} never showed {needle!r}: {text!r}")


def error_badges(page) -> int:
    """Components showing Gradio's red error state."""
    return page.locator(".error, [data-testid='status-tracker'] .error").count()


def test_failed_upload_then_a_good_one_in_the_same_tab(browser, ct_small, model_label, tmp_path):
    page = browser.page
    # an event that cannot work yet (undo before loading) says why once, with no error badges
    page.click("#po-undo")
    wait_text(page, "#po-status", "Load images first")
    assert error_badges(page) == 0
    assert "Load images first" in page.locator(".toast-body").first.inner_text()  # a warning, not an error
    page.locator(".toast-body").first.wait_for(state="detached", timeout=20_000)
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not an image at all" * 20)
    upload(page, "po-files", [bad])
    page.click("#po-load")
    msg = wait_text(page, "#po-load-msg", "Not loaded")
    assert "scan.nii.gz" in msg and str(tmp_path) not in msg
    shot(page, "10_failed_upload")
    assert page.locator("#po-files td.filename").count() == 0, "the failed file left the upload field"
    assert page.locator(".toast-body").count() == 0 and error_badges(page) == 0, "one message, no error badges"
    # every other control still works: the next good upload in the same tab loads
    upload(page, "po-files", [ct_small[0]])
    upload(page, "po-refs", [ct_small[1]])
    page.click("#po-load")
    wait_status(page, "Loaded")
    # the old failure message is cleared (Gradio may still show its progress text there for a moment)
    deadline = time.time() + 30
    while page.inner_text("#po-load-msg").strip() and time.time() < deadline:
        time.sleep(0.2)
    assert page.inner_text("#po-load-msg").strip() == ""
    choose(page, "po-model", model_label)
    click_image(page, 20, 30, scale=8.0)
    wait_status(page, "preview", "nothing")
    shot(page, "11_good_upload_after_failure")


def test_undo_after_one_corner(browser, ct_small, model_label, tmp_path):
    page = browser.page
    upload(page, "po-files", [ct_small[0]])
    page.click("#po-load")
    wait_status(page, "Loaded")
    choose(page, "po-model", model_label)
    page.locator("#po-mode label", has_text="Box").click()
    click_image(page, 8, 10, scale=8.0)
    wait_status(page, "first corner")
    page.click("#po-undo")
    wait_status(page, "Undone the box's first corner")
    shot(page, "12_undo_after_one_corner")
    # the next prompt works at once (no corner is left pending)
    page.locator("#po-mode label", has_text="Object click").click()
    click_image(page, 20, 30, scale=8.0)
    wait_status(page, "preview")
    assert coloured_fraction(overlay_pixels(page, tmp_path)) > 0.01


def test_background_click_changes_the_mask(browser, ct_small, model_label, tmp_path):
    page = browser.page
    upload(page, "po-files", [ct_small[0]])
    page.click("#po-load")
    wait_status(page, "Loaded")
    choose(page, "po-model", model_label)
    click_image(page, 20, 30, scale=8.0)
    wait_status(page, "preview")
    before = poll_view(page, tmp_path, lambda rgb: coloured_fraction(rgb) > 0.01)
    shot(page, "13_before_background_click")
    page.locator("#po-mode label", has_text="Background").click()
    click_image(page, 22, 30, scale=8.0)  # inside the preview
    after = poll_view(page, tmp_path, lambda rgb: coloured_fraction(rgb) < coloured_fraction(before) - 0.005)
    shot(page, "14_after_background_click")
    assert not np.array_equal(before, after), "the background click changed the mask"
    assert "prompted here (2 click(s)" in page.inner_text("#po-info")


def poll_view(page, tmp_path: Path, ok, timeout: float = 30.0) -> np.ndarray:
    """The shown view once ``ok(rgb)`` holds (the image element updates a moment after the status)."""
    deadline = time.time() + timeout
    rgb = overlay_pixels(page, tmp_path)
    while not ok(rgb) and time.time() < deadline:
        time.sleep(0.3)
        rgb = overlay_pixels(page, tmp_path)
    assert ok(rgb), f"the view never changed as expected (status: {status(page)!r})"
    return rgb


def write_4d(path: Path, t: int = 3) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = (rng.random((48, 40, 6, t)) * 10).astype(np.float32)
    for i in range(t):
        data[8 + 4 * i : 30 + 4 * i, 10:30, :, i] += 300  # a bright square that moves with time
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))


def test_4d_time_point_control(browser, tmp_path):
    page = browser.page
    path = tmp_path / "cine.nii.gz"
    write_4d(path)
    upload(page, "po-files", [path])
    page.click("#po-load")
    wait_status(page, "Loaded")
    wait_text(page, "#po-load-msg", "time point 1 of 3")
    assert page.locator("#po-time").is_visible()
    first = page.get_attribute("#po-view img", "src")
    shot(page, "15_4d_time_point_1")
    box = page.locator("#po-time input[type=range]").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # the last time point
    wait_text(page, "#po-load-msg", "time point 3 of 3")
    assert page.get_attribute("#po-view img", "src") != first
    shot(page, "16_4d_time_point_3")


def test_box_by_drag(browser, ct_small, model_label, tmp_path):
    page = browser.page
    upload(page, "po-files", [ct_small[0]])
    page.click("#po-load")
    wait_status(page, "Loaded")
    choose(page, "po-model", model_label)
    a, b, c = (screen_point(page, x, y, 8.0) for x, y in ((10, 14), (20, 30), (31, 47)))
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=4)
    page.mouse.move(*c, steps=4)
    page.mouse.up()
    wait_status(page, "preview", "nothing")
    info = page.inner_text("#po-info")
    assert "0 click(s), 1 box(es)" in info, info  # a drag is a box, not a click
    shot(page, "17_box_by_drag")
    page.click("#po-undo")
    wait_status(page, "Undone the box")
    assert "box" not in page.inner_text("#po-info"), "one undo removes the whole dragged box"
