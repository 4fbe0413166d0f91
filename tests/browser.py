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

TILES = ("total-queries", "qps-now", "cache-hit", "cache-sub", "blocked-share", "blocked-count", "upstreams-up", "identity",
         "version", "live")
TABLES = ("top-names", "top-clients", "recent", "rcodes", "upstreams")
READ = """
const [tiles, tables] = arguments, shown = {};
for (const id of tiles) shown[id] = document.getElementById(id).innerText.trim();
for (const id of tables) shown[id] = [...document.querySelectorAll("#" + id + " tbody tr")].map(
  row => [...row.querySelectorAll("td")].map(cell => cell.innerText.trim()));
shown.sources = Object.fromEntries([...document.querySelectorAll("#sources-legend [data-source]")].map(
  label => [label.dataset.source, Number(label.dataset.count)]));
shown.bars = document.querySelectorAll("#qps-chart rect").length;
shown.injected = document.querySelectorAll("main b, main img").length;
return shown;
"""


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
        # read in one script: the page redraws every two seconds, and element
        # handles taken across a redraw would be stale
        shown = driver.execute_script(READ, list(TILES), list(TABLES))
        driver.save_screenshot(screenshot)
        return shown
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(read_page(sys.argv[1], sys.argv[2])))
