"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver: the
web console's tests and screenshots.

The browser gets a fake microphone that plays a WAV file (looped) and grants it
without asking, so the console's test phone can call an agent with no human.
``deploy/local/install-test-deps.sh`` installs ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from loadtest.baresip import write_wav
from media.resample import upsample_8k_to_16k
from media.tts import EspeakSynthesizer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class BrowserError(RuntimeError):
    pass


def chromium(*, microphone: Path | None = None, width: int = 1400, height: int = 900) -> WebDriver:
    """A headless Chromium; ``microphone``: a 16-bit PCM WAV its fake microphone plays."""
    binary = shutil.which("chromium") or CHROMIUM
    driver_path = shutil.which("chromedriver") or CHROMEDRIVER
    if not Path(binary).exists() or not Path(driver_path).exists():
        raise BrowserError("chromium/chromedriver missing: deploy/local/install-test-deps.sh")
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        # Host candidates as addresses, not mDNS names the node's ICE would resolve.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ):  # fmt: skip
        options.add_argument(arg)
    if microphone is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
    return webdriver.Chrome(service=Service(driver_path), options=options)


def question_microphone(path: Path, question: str, lead_s: float = 2.0) -> Path:
    """A WAV for Chromium's fake microphone (16 kHz; it loops the file): ``lead_s`` of
    silence, ``question`` said by espeak-ng at 150 wpm, 10 s of silence."""
    speech = asyncio.run(EspeakSynthesizer(rate_wpm=150).synthesize(question))
    lead, tail = np.zeros(round(16000 * lead_s), np.int16), np.zeros(16000 * 10, np.int16)
    return write_wav(path, np.concatenate([lead, upsample_8k_to_16k(speech), tail]), 16000)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """``check()``'s first truthy value within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except Exception:  # the page is changing under us: ask again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise BrowserError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Console:
    """The console in a browser: log in, go to a page, read what it shows."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")

    def open(self) -> None:
        self.driver.get(f"{self.base_url}/console/")
        wait_for("the console", lambda: self.driver.title == "voxswitch console")

    def log_in(self, key: str) -> None:
        wait_for("the login form", lambda: self.visible("login"))
        field = self.driver.find_element(By.ID, "api-key")
        field.send_keys(key)
        self.driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for("the calls page", lambda: self.visible("page-calls"))

    def go(self, hash_path: str, page: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", hash_path)
        wait_for(f"page {page}", lambda: self.visible(page))

    def visible(self, element_id: str) -> bool:
        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def rows(self, table_id: str) -> list[WebElement]:
        found = self.driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr[data-call-id]")
        return list(found)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
