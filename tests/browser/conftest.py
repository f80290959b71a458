"""The browsers shared by the browser tests: a sync Chromium per module (``browser``) and
an async one per test (``chromium``, for tests that also serve from the event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.browser.chromium import Browser, launch_options


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    options = launch_options()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**options)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium through Playwright's async API (no browser is downloaded)."""
    options = launch_options()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**options)
        try:
            yield browser
        finally:
            await browser.close()
