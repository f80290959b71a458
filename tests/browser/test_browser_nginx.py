"""The browser walk once more, with nginx in front (forward-auth mode, the shipped recipe).

Chromium opens a link minted through the admin port at nginx's address: the sidecar redeems it
(nginx hands it the ``?refer=`` request), nginx then serves the app with the identity headers
the sidecar's sub-request answers carry. Reload, log out, and the app is out of reach.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.chromium import Browser, fresh_page, screenshot, session_cookies
from tests.nginx_stack import Stack, running_stack

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("browser-nginx")) as running:
        yield running


def test_link_reload_logout_through_nginx(browser: Browser, stack: Stack) -> None:
    link = stack.mint("alice", module="orders", tenant="acme")
    page = fresh_page(browser)
    try:
        page.goto(link)
        page.locator("#user").filter(has_text="alice").wait_for()
        assert page.url == stack.nginx + "/#/display/orders", "the token left the address bar"
        assert page.locator("#view-title").inner_text() == "Module orders"
        assert page.locator("#role").inner_text() == "Viewer"
        assert page.locator("#tenant").inner_text() == "acme"
        assert page.locator("#cookies").inner_text() == "none", "nginx cuts the session cookie"
        (cookie,) = session_cookies(page)
        assert cookie["httpOnly"] is True
        screenshot(page, "nginx-refer-link-landed")

        page.reload()
        page.locator("#user").filter(has_text="alice").wait_for()
        assert page.url.endswith("/#/display/orders")

        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(stack.nginx + "/_sidecar/signed-out")
        assert "You are signed out" in page.locator("body").inner_text()
        assert session_cookies(page) == []
        response = page.goto(stack.nginx + "/api/whoami")
        assert response is not None
        assert response.status == 401, "after logout nginx lets nothing through"
        screenshot(page, "nginx-after-logout")
    finally:
        page.context.close()
