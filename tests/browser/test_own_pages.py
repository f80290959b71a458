"""``pages.dir``: the operator's own pages, seen in Chromium against a real ``sidecar serve``.

A one-time link opened twice shows the operator's "used" page; the confirm page is theirs,
and its button (the ``$form`` we fill in) still signs in; a 502 falls back to their
``failure.html``; a page they did not replace is the built-in one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser.chromium import Browser, fresh_page, screenshot, session_cookies
from tests.serve_process import ROOT, write_config

pytestmark = pytest.mark.browser

UNREACHABLE_UPSTREAM = "http://127.0.0.1:9"
OWN = {
    "used.html": "<!doctype html><title>$title</title><h1>ACME</h1><p id=own>Spent: $message</p>",
    "failure.html": "<!doctype html><title>$title</title><p id=failure>ACME $status ($reason)</p>",
    "confirm.html": "<!doctype html><title>$title</title><p id=confirm>ACME sign-in</p>$form",
}


@dataclass
class Running:
    proxy: str
    admin: str
    admin_key: str

    def mint(self, user: str) -> str:
        request = urllib.request.Request(  # noqa: S310  # our own loopback admin port
            self.admin + "/referstring",
            data=json.dumps({"userId": user}).encode(),
            headers={
                "Authorization": f"Bearer {self.admin_key}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return str(json.load(response)["url"])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("own-pages")
    (state / "pages").mkdir()
    for name, text in OWN.items():
        (state / "pages" / name).write_text(text, encoding="utf-8")
    roles = {
        "Member": {"redeem": "confirm", "headers": {"X-Forwarded-User": "{user_id}"}},
    }
    config, admin_key, _, proxy_port, admin_port = write_config(
        state, UNREACHABLE_UPSTREAM, pages={"dir": "pages"}, roles=roles
    )
    log = (state / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    served = Running(f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{admin_port}", admin_key)
    try:
        _wait_ready(proc, served.proxy + "/_sidecar/healthz", state / "sidecar.log")
        yield served
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("sidecar serve exited:\n" + log.read_text(encoding="utf-8"))
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310  # loopback
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # polling a starting process
    pytest.fail("sidecar serve did not start")


def test_the_operators_pages_are_served_and_still_work(browser: Browser, running: Running) -> None:
    link = running.mint("u-own-pages")
    page = fresh_page(browser)
    try:
        page.goto(link)
        assert page.locator("#confirm").inner_text() == "ACME sign-in"
        assert session_cookies(page) == [], "a GET of a confirm link signs no one in"
        page.get_by_role("button", name="Continue").click()
        # Signed in, then sent on to an upstream that is down: their failure.html for 502.
        page.locator("#failure").wait_for()
        assert page.locator("#failure").inner_text() == "ACME 502 (bad_gateway)"
        assert len(session_cookies(page)) == 1, "the $form button redeemed the link"
        screenshot(page, "own-failure-page")

        other = fresh_page(browser)
        try:
            other.goto(link)  # already used: no button, the used page at once
            other.locator("#own").wait_for()
            text = other.locator("#own").inner_text()
            assert text == "Spent: This link has already been used. Ask for a new one."
            assert other.title() == "410 Gone"
            screenshot(other, "own-used-page")
        finally:
            other.context.close()

        page.goto(running.proxy + "/_sidecar/logout")
        assert "Do you want to sign out?" in page.locator("body").inner_text(), "built-in"
    finally:
        page.context.close()
