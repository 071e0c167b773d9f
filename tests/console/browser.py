"""Headless Chromium for the console's browser tests: the driver, a staff login, and the API asked alike."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.helpers import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# As the machine's notes require: no network chatter, no sandbox as root, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,2400",
)
PASSWORD = "browser-test-password-3"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driver, quit and its profile removed afterwards; skipped (failed in CI) without one."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    require(webdriver is not None, "selenium (requirements-dev.txt)")
    require(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "Chromium and chromedriver (Debian packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="mlops-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def log_in(driver: Any, service: Any, username: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    # A loaded machine (CI runs two suites side by side) can leave the first load without the form: load it
    # again, and say what came instead if it never shows.
    for _attempt in range(3):
        driver.get(f"{service.url}/admin/login/")
        try:
            WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.NAME, "username"))
            break
        except TimeoutException:
            continue
    else:
        raise AssertionError(f"no login form at {driver.current_url}: {driver.title!r}: {driver.page_source[:500]}")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # Wait for the login to land (the admin's user tools), or the next page load would cut it short.
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "user-tools"))


def api(service: Any, driver: Any, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """The API's answer for the same filters, asked with the browser's staff session."""
    session = driver.get_cookie("sessionid")["value"]
    status, _, body = service.request("GET", f"{path}?{urlencode(params)}", headers={"Cookie": f"sessionid={session}"})
    assert status == 200, body
    return body
