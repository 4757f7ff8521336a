"""Browser test of ``python -m dreamcore ui``: Debian's chromium, headless, driven by Playwright.

Starts the app on 127.0.0.1, fills the tab with a tiny job (the tiny SD1 model, three photos, 64 px, a
dozen steps, samples every 4 steps), presses Start and watches: the progress bar moves, samples appear in
the gallery, the job completes and its checkpoint is on disk. The screenshot is kept in test-artifacts/.
Needs /usr/bin/chromium (``apt-get install -y chromium``); no browser is ever downloaded.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jobs_helpers import make_photos

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,  # a browser and a training child: run by .ci/run
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install -y chromium)"),
    pytest.mark.skipif(not (REPO / "extension" / "app.py").is_file(), reason="the tab's standalone app "
                                                                             "(extension/app.py) is not here"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def app(tmp_path: Path, tiny_base: Path):
    pytest.importorskip("gradio", reason="the app needs gradio (the dev extra installs it)")
    output = tmp_path / "out"
    (output / "models").mkdir(parents=True)
    shutil.copy(tiny_base, output / "models" / tiny_base.name)  # the app lists base models from here
    port = free_port()
    log = open(tmp_path / "app.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "dreamcore", "ui", "--output", str(output), "--port", str(port)],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            get_json(f"{base}/dreamcore/v1/jobs")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("the app did not start:\n" + (tmp_path / "app.log").read_text()[-4000:])
            time.sleep(0.5)
    yield base, output, tmp_path
    process.send_signal(signal.SIGINT)  # uvicorn shuts down; a running training child gets its stop request
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_the_app_trains_a_tiny_job_with_moving_progress_samples_and_a_checkpoint(app):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra installs it)")
    base, output, tmp_path = app
    photos = make_photos(tmp_path / "photos")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        # Wide, so every group of the Advanced settings fits as a tab (narrower pages fold some into a menu).
        page = browser.new_page(viewport={"width": 2600, "height": 1400})
        try:
            page.goto(base + "/")
            page.get_by_role("button", name="Start training").wait_for(timeout=60_000)
            fill_form(page, photos)
            page.get_by_role("button", name="Start training").click()
            steps_seen, gallery_count = watch_progress(page, timeout=300)
            page.screenshot(path=str(ARTIFACTS / "jobs-browser.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "jobs-browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    moving = sorted(s for s in steps_seen if 0 < s < TOTAL_STEPS)
    assert len(moving) >= 2, f"the progress bar showed only steps {sorted(steps_seen)}"
    assert TOTAL_STEPS in steps_seen
    assert gallery_count >= 1, "no sample appeared in the gallery"
    job = get_json(f"{base}/dreamcore/v1/jobs/browser-job")
    assert job["status"] == "completed", job
    checkpoint = Path(job["outputs"]["single_file"])
    assert checkpoint.is_file() and checkpoint.stat().st_size > 0
    assert any(Path(p).is_file() for _, paths in job["samples"] for p in paths)


# Long enough that the tab's once-a-second poll sees the bar between start and end on an idle machine too
# (12 steps once finished between two polls but one: only steps 0, 8 and 12 were seen).
TOTAL_STEPS = 40


def fill_form(page, photos: Path) -> None:
    page.get_by_label("Photos: a folder of 13-20 photos of the subject", exact=True).fill(str(photos))
    page.get_by_label("Model name (also the job's name)", exact=True).fill("browser-job")
    page.get_by_text("Advanced: every training setting").click()
    settings = {
        "Concept": {"resolution": "64"},
        "Prior": {"with_prior_preservation": False},
        "Training": {"max_train_steps": str(TOTAL_STEPS), "mixed_precision": "no"},
        "Optimizer": {"use_8bit_adam": False},
        "Saving": {"save_interval": str(TOTAL_STEPS // 4), "checkpointing_steps": "0", "n_save_sample": "1",
                   "save_infer_steps": "2"},
    }
    for tab, values in settings.items():
        page.get_by_role("tab", name=tab, exact=True).click()
        for label, value in values.items():
            if isinstance(value, bool):
                page.get_by_label(label, exact=True).set_checked(value)
            elif label == "mixed_precision":
                page.get_by_label(label, exact=True).click()
                page.get_by_role("option", name=value, exact=True).click()
            else:
                text_control(page, label).fill(value)
    # Read every typed value back once all tabs have been visited, and type it again if it was lost: twice in a
    # row (2026-11-26) the resolution typed right after the Concept tab opened was back at 512 when the job
    # started, and the job failed on the 64 px photos; the 11 runs since, 3 of them on a loaded box, kept it. The
    # cause was not found (the preset's change event did not fire). A value lost twice fails here, naming it.
    for tab, values in settings.items():
        page.get_by_role("tab", name=tab, exact=True).click()
        for label, value in values.items():
            if isinstance(value, str) and label != "mixed_precision":
                control = text_control(page, label)
                if control.input_value() != value:
                    control.fill(value)
                    assert control.input_value() == value, f"the form keeps losing {label}={value}"


def text_control(page, label: str):
    control = page.get_by_label(label, exact=True)
    if control.count() == 0:  # an optional number is a text box whose label carries its help text
        control = page.locator("label", has=page.get_by_text(label, exact=True)).locator("textarea")
    return control


def watch_progress(page, timeout: float) -> tuple[set[int], int]:
    """Poll the progress bar's step until the job ends; returns the steps seen and the most samples shown."""
    steps: set[int] = set()
    gallery = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bar = page.locator(".dreamcore-progress")
        if bar.count():
            steps.add(int(bar.first.get_attribute("data-step") or 0))
            text = bar.first.inner_text()
            gallery = max(gallery, page.locator(".grid-wrap img, .gallery-item img").count())
            if "completed" in text or "failed" in text or "cancelled" in text:
                if "completed" not in text:
                    raise AssertionError(f"the job ended: {text}\n{page.inner_text('body')[-3000:]}")
                return steps, gallery
        time.sleep(0.2)
    raise AssertionError(f"the job did not complete within {timeout} s; steps seen {sorted(steps)}")
