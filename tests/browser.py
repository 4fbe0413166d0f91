"""Reads the dashboard in a real browser: Debian's headless Chromium driven
by selenium through Debian's chromium-driver.

``python -m tests.browser URL SCREENSHOT`` (run inside the test's namespace,
so the browser reaches the appliance there) loads the page, waits until its
script has drawn /api/stats, and prints as JSON what the page shows: the
tiles' texts and the rows of its tables.
"""
from __future__ import annotations

import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TILES = ("total-queries", "qps-now", "cache-hit", "blocked-share", "blocked-count", "upstreams-up", "identity",
         "version", "live")
TABLES = ("top-names", "top-clients", "recent", "rcodes", "upstreams")


def read_page(url: str, screenshot: str) -> dict:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1300", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-updated"))
        shown = {tile: driver.find_element(By.ID, tile).text for tile in TILES}
        for table in TABLES:
            rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
            shown[table] = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        shown["sources"] = {label.get_attribute("data-source"): int(label.get_attribute("data-count"))
                            for label in driver.find_elements(By.CSS_SELECTOR, "#sources-legend [data-source]")}
        shown["bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#qps-chart rect"))
        driver.save_screenshot(screenshot)
        return shown
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(read_page(sys.argv[1], sys.argv[2])))
