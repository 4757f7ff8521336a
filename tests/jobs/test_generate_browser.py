"""Browser test of the standalone app's Generate panel: train a tiny job in the tab, then draw from its model
in the Generate panel and see the image and its parameters. Same needs and markers as test_jobs_browser."""

from __future__ import annotations

import time

import pytest

from jobs_helpers import make_photos
from test_jobs_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, app, fill_form, get_json,  # noqa: F401
                               pytestmark, watch_progress)


def test_the_generate_panel_draws_from_a_trained_job(app):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra installs it)")
    base, output, tmp_path = app
    photos = make_photos(tmp_path / "photos")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 2600, "height": 1400})
        try:
            page.goto(base + "/")
            page.get_by_role("button", name="Start training").wait_for(timeout=60_000)
            fill_form(page, photos)
            page.get_by_role("button", name="Start training").click()
            watch_progress(page, timeout=300)
            page.get_by_role("tab", name="Generate", exact=True).click()
            page.get_by_role("button", name="Refresh models").click()
            prompt = page.locator("#dreamcore_generate_prompt textarea")
            deadline = time.monotonic() + 30
            while "sks" not in prompt.input_value() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "sks" in prompt.input_value(), "the prompt was not filled with the job's instance prompt"
            page.locator("#dreamcore_generate_seed textarea, #dreamcore_generate_seed input").first.fill("77")
            page.locator("#dreamcore_generate_button").click()
            parameters = page.locator("#dreamcore_generate_parameters textarea")
            deadline = time.monotonic() + 180
            while "Seed: 77" not in parameters.input_value() and time.monotonic() < deadline:
                time.sleep(0.3)
            text = parameters.input_value()
            shown = page.locator("#dreamcore_generate_gallery img").count()
            page.screenshot(path=str(ARTIFACTS / "generate-browser.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "generate-browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert "Seed: 77" in text and "Model: browser-job" in text and "Sampler: DPM++ 2M" in text, text
    assert shown >= 1, "no image appeared in the Generate panel's gallery"
    assert list((output / "generated").glob("00000-77.png"))
