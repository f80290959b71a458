"""Debian's Chromium driven by Playwright: launch options and small page helpers.

No browser is ever downloaded: Playwright launches the system Chromium. Without it the
tests skip on a laptop and fail in CI (``tests.conftest.skip_or_fail``). Screenshots go to
``artifacts/browser/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tests.conftest import skip_or_fail
from tests.demo_process import ROOT

CHROMIUM = Path(os.environ.get("SIDECAR_CHROMIUM", "/usr/lib/chromium/chromium"))
ARTIFACTS = ROOT / "artifacts" / "browser"
# Quiet, deterministic Chromium: nothing phones home or updates itself during a test.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
]
TIMEOUT_MS = 15_000

# Playwright ships no type information mypy can use; the page objects are typed as Any here.
Page = Any
Browser = Any


def launch_options() -> dict[str, Any]:
    """Playwright's ``chromium.launch`` options for the system Chromium. Skips the test
    (fails under ``SIDECAR_REQUIRE_ALL=1``) when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        skip_or_fail("Playwright for Python is not installed (pip install playwright)")
    return {"executable_path": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS}


def fresh_page(browser: Browser) -> Page:
    """A page in a new browser context: no cookies, no history (a fresh browser)."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def session_cookies(page: Page) -> list[dict[str, Any]]:
    return [c for c in page.context.cookies() if c["name"] == "sidecar_session"]
