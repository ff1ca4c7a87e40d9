"""The web page end to end in headless Chromium: upload a reference, type a modification, see the
result grid, click a result to refine (multi-turn). Saves a screenshot to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from composir.service import create_app
from helpers import browser, serving

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def server(searcher):
    with serving(create_app(searcher)) as url:
        yield url


def test_page_search_and_refine(server, synth_root):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    reference = sorted((synth_root / "val").glob("*.png"))[0]
    driver = browser()
    try:
        driver.get(server + "/")
        file_input = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", file_input)
        file_input.send_keys(str(reference))
        driver.find_element(By.ID, "text").send_keys("make the red circle blue")
        driver.find_element(By.ID, "go").click()
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 12)
        assert "12 results" in driver.find_element(By.ID, "status").text
        scores = [float(c.text.split()[0]) for c in driver.find_elements(By.CSS_SELECTOR, ".card .meta")]
        assert scores == sorted(scores, reverse=True)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_page_results.png"))
        # Multi-turn: the clicked result becomes the next reference (sent by id).
        first = driver.find_elements(By.CSS_SELECTOR, ".card")[0]
        chosen = first.find_element(By.CSS_SELECTOR, ".meta").text.split()[1]
        first.click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "history"), "make the red circle blue"))
        driver.find_element(By.ID, "text").send_keys("make the background pink")
        driver.find_element(By.ID, "go").click()
        wait.until(
            lambda d: (
                "results" in d.find_element(By.ID, "status").text
                and chosen not in [m.text.split()[1] for m in d.find_elements(By.CSS_SELECTOR, ".card .meta")]
            )
        )
        driver.save_screenshot(str(ARTIFACTS / "web_page_refined.png"))
        # An error is shown on the page, not thrown away.
        driver.execute_script("document.getElementById('k').value = 1000")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "k must be between" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
