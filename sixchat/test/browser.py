"""
A real browser for the web UI's tests: headless Chromium driven by Selenium through
Debian's C{chromium} and C{chromium-driver} (C{.ci/run} installs them). Without the browser,
the driver or the C{selenium} package, L{skip_reason} says which, and the tests skip.

Selenium's calls block (HTTP to chromedriver), so L{Browser} runs every one in a thread and
returns a Deferred: the test's reactor keeps reading the agents' output meanwhile.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads

__all__ = ["CHROMEDRIVER", "CHROMIUM", "Browser", "skip_reason"]

CHROMIUM = os.environ.get("SIXCHAT_TEST_CHROMIUM") or shutil.which("chromium") or ""
CHROMEDRIVER = os.environ.get("SIXCHAT_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or ""


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMIUM:
        return "no chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not CHROMEDRIVER:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


class Browser:
    """One headless Chromium window (C{width} x C{height}), quit by the test's cleanup."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    @classmethod
    @defer.inlineCallbacks
    def start(cls, case: Any, width: int = 1100, height: int = 760) -> Any:
        def make() -> Any:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service

            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for argument in (
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                f"--window-size={width},{height}",
            ):
                options.add_argument(argument)
            return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)

        driver = yield threads.deferToThread(make)
        browser = cls(driver)
        case.addCleanup(lambda: threads.deferToThread(driver.quit))
        return browser

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """C{f(driver, *args)} in a thread."""
        return threads.deferToThread(f, self.driver, *args)

    def get(self, url: str) -> defer.Deferred[Any]:
        return self.call(lambda d: d.get(url))

    def script(self, source: str, *args: Any) -> defer.Deferred[Any]:
        return self.call(lambda d: d.execute_script(source, *args))

    def find(self, css: str) -> defer.Deferred[Any]:
        from selenium.webdriver.common.by import By

        return self.call(lambda d: d.find_element(By.CSS_SELECTOR, css))

    def type(self, css: str, text: str) -> defer.Deferred[Any]:
        from selenium.webdriver.common.by import By

        return self.call(lambda d: d.find_element(By.CSS_SELECTOR, css).send_keys(text))

    def keys(self, text: str) -> defer.Deferred[Any]:
        """Keystrokes to whatever has the focus (the keyboard-only path)."""
        from selenium.webdriver.common.action_chains import ActionChains

        return self.call(lambda d: ActionChains(d).send_keys(text).perform())

    def click(self, css: str) -> defer.Deferred[Any]:
        from selenium.webdriver.common.by import By

        return self.call(lambda d: d.find_element(By.CSS_SELECTOR, css).click())

    def screenshot(self, path: str) -> defer.Deferred[Any]:
        return self.call(lambda d: d.save_screenshot(path))

    def resize(self, width: int, height: int) -> defer.Deferred[Any]:
        return self.call(lambda d: d.set_window_size(width, height))

    def console_errors(self) -> defer.Deferred[Any]:
        """The page's console errors (a CSP violation shows there)."""
        return self.call(lambda d: [e for e in d.get_log("browser") if e.get("level") == "SEVERE"])

    @defer.inlineCallbacks
    def eventually(self, source: str, seconds: float, what: str, *args: Any) -> Any:
        """Evaluate C{return …} JavaScript until it is truthy (at most C{seconds})."""
        from sixchat.test.processes import eventually

        result = yield eventually(lambda: self.script(source, *args), seconds, what)
        return result
