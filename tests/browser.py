"""Headless Chromium from Debian (`chromium`, `chromium-driver`), driven by Selenium.

`make setup` installs both; Selenium is pointed at Debian's chromedriver, so nothing
is downloaded at run time. Used by the dashboard's browser tests and its benchmark.
"""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

# Chromium's own places on Debian, should PATH lack them.
DEBIAN_PATHS = "/usr/bin:/usr/lib/chromium"


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or shutil.which(name, path=DEBIAN_PATHS)
        if path:
            return path
    raise RuntimeError(f"{names[0]} is not installed: run `make setup` (it installs it)")


def headless_chromium(width: int = 1400, height: int = 900) -> webdriver.Chrome:
    """A new headless Chromium; the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root (CI), Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        # The crash alert's sound plays without a click first, as on a kiosk.
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(argument)
    service = ChromeService(executable_path=_binary("chromedriver"))
    return webdriver.Chrome(options=options, service=service)
