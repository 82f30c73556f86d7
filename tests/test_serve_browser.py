"""dclnet serve's web page in a real headless browser (Debian's chromium + chromium-driver).

Upload a query, see the top-k grid, toggle the PAP mask overlay, page through the results,
add a gallery image and find it by searching again. Screenshots go to the test artefacts
folder (``$DCLNET_TEST_ARTIFACTS``, default ``build/test-artifacts``). Skipped, with the
reason, where chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from _inference_fixtures import random_images
from _serve_fixtures import Server, copy_index, files, serve_world
from PIL import Image

from dclnet.inference.index import list_images

pytest.importorskip("fastapi", reason="dclnet serve needs the extra: pip install 'dclnet[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
WAIT = 60  # s for a page action on a loaded machine


def artefacts() -> Path:
    folder = Path(os.environ.get("DCLNET_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _search(driver, query: Path, modality: str) -> list:
    """Pick ``query``, choose ``modality``, press Search; the result cards once shown."""
    before = _text(driver, "status")
    driver.find_element(By.ID, "query-file").send_keys(str(query))
    Select(driver.find_element(By.ID, "modality")).select_by_value(modality)
    driver.find_element(By.ID, "search-btn").click()
    wait = WebDriverWait(driver, WAIT)
    wait.until(lambda d: _text(d, "status").endswith("ms") and _text(d, "status") != before)
    return driver.find_elements(By.CSS_SELECTOR, "#results .card")


def test_page_search_mask_pages_and_append(tmp_path, browser):
    world = serve_world(tmp_path)
    index = copy_index(world, "index-browser")
    query = world["queries"] / list_images(world["queries"])[0]
    gallery_size = len(list_images(world["gallery"]))
    try:
        with Server(world["ckpt"], index) as server:
            api = httpx.post(server.url + "/search", **files([query], topk="48", mask="1")).json()
            want = api["queries"][0]
            browser.get(server.url + "/")
            WebDriverWait(browser, WAIT).until(lambda d: "images" in _text(d, "index-info"))
            assert f"{gallery_size} visible images" in _text(browser, "index-info")

            cards = _search(browser, query, "infrared")
            assert len(cards) == 12  # the first page of min(48, gallery) results
            for card, entry in zip(cards, want["results"]):
                assert entry["path"] in card.text and f"#{entry['rank']}" in card.text
                assert f"{entry['score']:.4f}" in card.text and entry["camera"] in card.text
            loaded = "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            WebDriverWait(browser, WAIT).until(lambda d: d.execute_script(loaded))

            canvas = browser.find_element(By.ID, "mask-canvas")
            assert not canvas.is_displayed()
            browser.find_element(By.ID, "mask-toggle").click()
            assert canvas.is_displayed()
            rows, cols = len(want["mask"]), len(want["mask"][0])
            assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (
                cols,
                rows,
            )
            browser.save_screenshot(str(artefacts() / "serve_search.png"))

            browser.find_element(By.ID, "next").click()
            assert _text(browser, "page-label").startswith(f"results 13-24 of {gallery_size}")
            page2 = browser.find_elements(By.CSS_SELECTOR, "#results .card")
            assert want["results"][12]["path"] in page2[0].text

            new = tmp_path / "newcomer.png"
            Image.fromarray(random_images(1, 21, (96, 48))[0]).save(new)
            browser.find_element(By.ID, "append-files").send_keys(str(new))
            browser.find_element(By.ID, "append-btn").click()
            WebDriverWait(browser, WAIT).until(lambda d: "added" in _text(d, "append-status"))
            assert _text(browser, "append-status") == (
                f"added 1 image; the gallery holds {gallery_size + 1}"
            )
            cards = _search(browser, new, "visible")  # the gallery's branch: it finds itself
            assert "uploads/" in cards[0].text and "newcomer" in cards[0].text
            assert cards[0].text.startswith("#1") and "1.0000" in cards[0].text
            browser.save_screenshot(str(artefacts() / "serve_append.png"))
    finally:
        shutil.rmtree(world["gallery"] / "uploads", ignore_errors=True)
