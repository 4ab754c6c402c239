"""The web page in a real headless Chromium (Debian's, driven by Playwright): submit a prompt, watch frames arrive,
download the mp4. MIGA_SCREENSHOT=PATH saves a screenshot there (bench/results/service/page.png was made so)."""

import os
import shutil

import imageio.v3 as iio
import pytest

from .conftest import Server

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")


def test_page_renders_streams_and_downloads(tmp_path):
    srv = Server("default", tmp_path / "state").start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(srv.url + "/")
            page.fill("#prompt", "a red circle moving left on a striped blue background")
            page.fill("#frames", "24")
            page.click("#render")
            page.wait_for_function("Number(document.querySelector('#frame').dataset.index || -1) >= 3",
                                   timeout=120_000)  # frames arrive while the job runs
            assert page.eval_on_selector("#frame", "img => img.naturalWidth") == 32
            page.wait_for_selector("#download:not([hidden])", timeout=120_000)
            assert page.text_content("#status") == "completed"
            assert float(page.get_attribute("#progress", "value") or page.eval_on_selector(
                "#progress", "p => p.value")) == 1.0
            with page.expect_download() as download:
                page.click("#download")
            path = tmp_path / "page.mp4"
            download.value.save_as(path)
            assert iio.imread(path).shape[0] == 24
            assert page.locator("#jobs tr").count() == 1 and "completed" in page.text_content("#jobs")
            if os.environ.get("MIGA_SCREENSHOT"):
                page.screenshot(path=os.environ["MIGA_SCREENSHOT"], full_page=True)
            browser.close()
    finally:
        srv.stop()
