"""The inspection page in a real browser: Debian's chromium, headless, driven by chromedriver.

Skipped where chromium, chromedriver or selenium is missing; CI (.ci/run) installs them."""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pytest
from deploy_helpers import running_service, split_images, write_pngs

from skipganomaly.deploy.detector import Detector

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="skipganomaly-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the page did not get there in time")


def test_the_page_scores_a_normal_and_an_abnormal_image(browser, digits_run, digits_onnx, tmp_path):
    from selenium.webdriver.common.by import By

    detector = Detector.from_onnx(digits_onnx, threads=2)
    images, labels = split_images(digits_run)
    scores = np.array([p.score for p in detector.score(list(images), with_maps=False)])
    normal = int(np.flatnonzero(labels == 0)[np.argmin(scores[labels == 0])])  # the clearest of each
    abnormal = int(np.flatnonzero(labels == 1)[np.argmax(scores[labels == 1])])
    assert scores[normal] < detector.threshold <= scores[abnormal], (scores[normal], scores[abnormal])
    [normal_file] = write_pngs(tmp_path, images[[normal]], "normal")
    [abnormal_file] = write_pngs(tmp_path, images[[abnormal]], "abnormal")

    with running_service(detector) as url:
        browser.get(url + "/")
        wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        assert browser.find_element(By.ID, "m-threshold").text == f"{detector.threshold:.3f}"
        browser.find_element(By.ID, "files").send_keys(f"{normal_file}\n{abnormal_file}")
        rows = wait_for(
            lambda: (
                (r := browser.find_elements(By.CSS_SELECTOR, "#rows tr[data-state=done]"))
                and len(r) == 2
                and r
            )
        )
        verdicts = {
            row.find_element(By.CSS_SELECTOR, "td.file").text.split("\n")[0]: row.get_attribute(
                "data-verdict"
            )
            for row in rows
        }
        assert verdicts == {"normal_0.png": "normal", "abnormal_0.png": "anomalous"}, verdicts
        # Sorted by score, highest first: the anomaly leads; its gauge is red and past the mark.
        assert rows[0].find_element(By.CSS_SELECTOR, ".verdict").text == "ANOMALOUS"
        assert "anomalous" in rows[0].find_element(By.CSS_SELECTOR, ".gauge").get_attribute("class")
        for row in rows:  # the heatmap (and the other pictures) decoded and drawn
            for picture in row.find_elements(By.CSS_SELECTOR, "img"):
                loaded = browser.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", picture
                )
                assert loaded == 16, picture.get_attribute("class")
            heat = row.find_element(By.CSS_SELECTOR, ".overlay img.heat")
            assert heat.size["width"] > 40 and float(heat.value_of_css_property("opacity")) > 0
            # The score's terms by name with their shares (as /v1/model declares them), the leading
            # one bold, and the heatmap says whose map it is.
            terms = row.find_elements(By.CSS_SELECTOR, "ul.terms li")
            names = [t.find_element(By.CSS_SELECTOR, ".term-name").text for t in terms]
            assert names == ["reconstruction", "latent"], names
            shares = [int(t.find_element(By.CSS_SELECTOR, ".term-value").text.split("%")[0]) for t in terms]
            assert 98 <= sum(shares) <= 102 and max(shares) > 0, shares
            leading = row.find_element(By.CSS_SELECTOR, "ul.terms li.leading .term-name").text
            assert row.find_element(By.CSS_SELECTOR, ".map-term").text == "map of reconstruction"
            assert leading in names
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000
        # Clicking the score column sorts the other way.
        browser.find_element(By.CSS_SELECTOR, "th[data-sort=score]").click()
        first = browser.find_element(By.CSS_SELECTOR, "#rows tr td.file").text
        assert first.startswith("normal_0.png")
        summary = browser.find_element(By.ID, "summary").text
        assert "2 scored" in summary and "1 anomalous" in summary
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
