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


def test_page_sample_queries_grid(searcher, synth_root):
    """The page's result grid: each sample query's reference, text and top 5, the ground truth
    framed (and only it), a missed target said in words."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from composir.data import load_benchmark
    from composir.service.examples import sample_examples

    bench = load_benchmark("synthetic", synth_root, "val")
    index = searcher.index
    examples = sample_examples(bench, searcher.media_root, lambda key: index.key_to_id(key) is not None, 3)
    # One query whose "ground truth" is known to be the second result: the marking is checked on it.
    reference, text = examples[0]["reference"], "make the background pink"
    second = searcher.search(reference, text, k=5)[1].id
    examples.append({**examples[0], "query_id": "made-up", "text": text, "targets": [second]})
    with serving(create_app(searcher, examples=examples)) as url:
        driver = browser()
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 30)
            button = driver.find_element(By.ID, "show-examples")
            wait.until(lambda d: button.is_displayed())
            button.click()
            wait.until(lambda d: "sample queries have the target" in d.find_element(By.ID, "status").text)
            rows = driver.find_elements(By.CSS_SELECTOR, ".example")
            assert len(rows) == len(examples)
            hits = 0
            for row, ex in zip(rows, examples):
                cards = row.find_elements(By.CSS_SELECTOR, ".card:not(.truth)")
                assert cards[0].get_attribute("data-id") == ex["reference"] and len(cards) == 6
                shown = [c.get_attribute("data-id") for c in cards[1:]]
                marked = [c.get_attribute("data-id") for c in row.find_elements(By.CSS_SELECTOR, ".card.target")]
                assert marked == [i for i in shown if i in ex["targets"]]
                assert f"“{ex['text']}”" in row.find_element(By.CSS_SELECTOR, ".ask").text
                missed = row.find_elements(By.CSS_SELECTOR, ".missed")
                truth = [c.get_attribute("data-id") for c in row.find_elements(By.CSS_SELECTOR, ".card.truth")]
                assert bool(missed) == (not marked) and truth == ([] if marked else ex["targets"][:1])
                hits += bool(marked)
            assert [c.get_attribute("data-id") for c in rows[-1].find_elements(By.CSS_SELECTOR, ".card.target")] == [
                second
            ]
            assert rows[-1].find_elements(By.CSS_SELECTOR, ".card")[2].get_attribute("data-id") == second
            status = driver.find_element(By.ID, "status").text
            assert status.startswith(f"{hits} of {len(examples)} sample queries"), status
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "web_page_sample_queries.png"))
        finally:
            driver.quit()
