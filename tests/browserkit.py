"""Helpers for tests that open pages in a real browser: Debian's chromium (scripts/setup.sh installs it), driven
through the playwright package (never ``playwright install``), with every request to a host other than this
machine blocked and counted."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
THIS_MACHINE = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: Debian's chromium is needed (apt-get install chromium; scripts/setup.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


REFUSED_IMAGE = re.compile(r"^Loading the image '[^']+' violates the following Content Security Policy directive")


class Visit:
    """A page of ``browser`` whose requests to hosts other than this machine are blocked and kept (``left``), with
    the requests it made (``made``) and its console errors and uncaught exceptions (``errors``), less the images
    the page's Content-Security-Policy refused to load from elsewhere (``refused``: cosmetic, such as ReDoc's
    Redocly logo; the policy kept them from leaving the machine)."""

    def __init__(self, browser, **context) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.made: list[str] = []
        self.left: list[str] = []
        self.errors: list[str] = []
        self.refused: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message) -> None:
        if message.type == "error":
            (self.refused if REFUSED_IMAGE.match(message.text) else self.errors).append(message.text)

    def _route(self, route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in THIS_MACHINE:
            self.made.append(url)
            route.continue_()
        else:
            self.left.append(url)
            route.abort()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.context.close()
