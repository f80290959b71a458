"""A real browser (Debian's Chromium, driven by Playwright) clicking the demo's links.

No browser is ever downloaded: Playwright launches the system Chromium. Without it the
tests skip on a laptop and fail in CI (``tests.conftest.skip_or_fail``). Screenshots go to
``artifacts/browser/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.chromium import Browser, fresh_page, screenshot, session_cookies
from tests.demo_process import Demo, running_demo

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    # One demo for the module: each test opens a different one of its links.
    with running_demo() as running:
        yield running


def test_refer_link_lands_on_the_module_and_survives_a_reload(browser: Browser, demo: Demo) -> None:
    page = fresh_page(browser)
    try:
        page.goto(demo.one_time)
        page.locator("#user").filter(has_text="alice").wait_for()
        assert page.url == demo.proxy + "/#/display/orders", "the token left the address bar"
        assert "refer" not in page.url
        assert page.locator("#view-title").inner_text() == "Module orders"
        assert page.locator("#role").inner_text() == "Viewer"
        assert page.locator("#tenant").inner_text() == "acme"
        (cookie,) = session_cookies(page)
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert page.evaluate("document.cookie") == "", "HttpOnly: scripts cannot read it"
        screenshot(page, "refer-link-landed")

        page.reload()
        page.locator("#user").filter(has_text="alice").wait_for()
        assert page.url.endswith("/#/display/orders")
    finally:
        page.context.close()

    # The same one-time link in a fresh browser: the clear "already used" page, no session.
    other = fresh_page(browser)
    try:
        response = other.goto(demo.one_time)
        assert response is not None
        assert response.status == 410
        assert "already been used" in other.locator("body").inner_text()
        assert session_cookies(other) == []
        screenshot(other, "link-already-used")
    finally:
        other.context.close()


def test_confirm_link_logs_in_only_on_the_click(browser: Browser, demo: Demo) -> None:
    page = fresh_page(browser)
    try:
        page.goto(demo.confirm)
        button = page.get_by_role("button", name="Continue")
        button.wait_for()
        assert session_cookies(page) == [], (
            "the GET alone (what a mail scanner does) logs no one in"
        )
        screenshot(page, "confirm-button")

        button.click()
        page.locator("#user").filter(has_text="carol").wait_for()
        assert page.url == demo.proxy + "/#/display/approvals"
        assert page.locator("#role").inner_text() == "Approver"
        assert len(session_cookies(page)) == 1
    finally:
        page.context.close()


def test_logout_ends_the_session(browser: Browser, demo: Demo) -> None:
    page = fresh_page(browser)
    try:
        page.goto(demo.reusable)
        page.locator("#user").filter(has_text="bob").wait_for()
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(demo.proxy + "/_sidecar/signed-out")
        assert "You are signed out" in page.locator("body").inner_text()
        assert session_cookies(page) == []
        response = page.goto(demo.proxy + "/api/whoami")
        assert response is not None
        assert response.status == 401, "after logout the app is out of reach"
        screenshot(page, "after-logout")
    finally:
        page.context.close()
