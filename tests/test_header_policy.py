"""HeaderPolicy and RequestCookies: the Cookie headers are read once, and the policy sends
upstream only what that one reading left — never a Cookie header it was not given."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.headers import Action, HeaderPolicy
from sidecar.session_cookies import NO_COOKIES, RequestCookies, read_cookies
from tests.harness import make_config

OWN = "sidecar_session"
GOOD = "A" * 43


def request(*headers: tuple[str, str]) -> web.Request:
    return make_mocked_request("GET", "/", headers=list(headers))


@pytest.fixture
def policy(tmp_path: Path) -> HeaderPolicy:
    config = make_config(tmp_path, "http://127.0.0.1:9")
    assert config.session.cookie_name == OWN
    return HeaderPolicy(config, ClientAddresses(()))


def test_no_cookie_header_reads_as_no_cookies() -> None:
    assert read_cookies(request(("Accept", "*/*")), OWN) == NO_COOKIES


def test_the_sidecar_cookie_and_the_rest_per_header() -> None:
    cookies = read_cookies(
        request(("Cookie", f"theme=dark; {OWN}={GOOD}; x=1"), ("cookie", f"{OWN}=zzz; y=2")),
        OWN,
    )
    # Every well-formed copy is kept for the lookup; every copy is cut from every header.
    assert cookies == RequestCookies((GOOD,), (b"theme=dark; x=1", b"y=2"))


def test_a_malformed_copy_is_skipped_not_decisive() -> None:
    """Cookie tossing: a garbage copy sent first must not hide the user's own."""
    cookies = read_cookies(
        request(("Cookie", f"{OWN}=short; a=1"), ("Cookie", f"{OWN}={GOOD}")), OWN
    )
    assert cookies == RequestCookies((GOOD,), (b"a=1", b""))
    only_bad = read_cookies(request(("Cookie", f"{OWN}=short; a=1")), OWN)
    assert only_bad == RequestCookies((), (b"a=1",))


def test_other_cookies_pass_byte_for_byte() -> None:
    raw = "caf\xe9=cr\xe8me; spaced = yes"  # sent as UTF-8; odd spacing inside a pair
    cookies = read_cookies(request(("Cookie", f"{raw}; {OWN}={GOOD}")), OWN)
    assert cookies.others == (raw.encode("utf-8"),)


def test_upstream_gets_what_the_reading_left(policy: HeaderPolicy) -> None:
    req = request(
        ("Cookie", f"a=1; {OWN}={GOOD}"), ("X-Other", "kept"), ("Cookie", f"{OWN}={GOOD}")
    )
    headers, _ = policy.request_headers(req, read_cookies(req, OWN), ())
    assert [v for n, v in headers if n.lower() == b"cookie"] == [b"a=1"]
    assert (b"X-Other", b"kept") in headers


def test_cookie_headers_never_pass_unread(policy: HeaderPolicy) -> None:
    """Given no reading (or a shorter one), the policy sends no Cookie header rather than
    the client's: the sidecar's cookie cannot reach the upstream by a missed reading."""
    req = request(("Cookie", f"a=1; {OWN}={GOOD}"))
    headers, _ = policy.request_headers(req, NO_COOKIES, ())
    assert not [v for n, v in headers if n.lower() == b"cookie"]


def test_identity_headers_are_replaced(policy: HeaderPolicy) -> None:
    req = request(("X_Forwarded_User", "mallory"), ("x-forwarded-user", "mallory"))
    headers, _ = policy.request_headers(req, NO_COOKIES, (("X-Forwarded-User", "alice"),))
    assert [v for n, v in headers if n.lower().replace(b"_", b"-") == b"x-forwarded-user"] == [
        b"alice"
    ]


def test_actions_compare_by_value() -> None:
    assert isinstance(Action.KEEP, int)
    assert len({int(a) for a in Action}) == len(Action)
