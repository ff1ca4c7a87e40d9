"""Acceptance helper: the served page in headless Chromium answers an upload + text with results,
and (served with --benchmark) draws the sample queries' result grid with the ground truth marked.

python scripts/acceptance_page.py URL REFERENCE_IMAGE SCREENSHOT [GRID_SCREENSHOT]
"""

from __future__ import annotations

import shutil
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    url, reference, screenshot = sys.argv[1:4]
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(url + "/")
        file_input = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", file_input)
        file_input.send_keys(reference)
        driver.find_element(By.ID, "text").send_keys("make it night")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card"))
        print(f"page: {len(driver.find_elements(By.CSS_SELECTOR, '.card'))} results shown")
        driver.save_screenshot(screenshot)
        if len(sys.argv) > 4:  # the sample queries' grid
            button = driver.find_element(By.ID, "show-examples")
            WebDriverWait(driver, 30).until(lambda d: button.is_displayed())
            button.click()
            WebDriverWait(driver, 300).until(lambda d: "sample queries have" in d.find_element(By.ID, "status").text)
            print(f"page grid: {driver.find_element(By.ID, 'status').text}")
            driver.save_screenshot(sys.argv[4])
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
