"""Open redirects: a corpus of payloads against every redirect the sidecar makes.

Where the browser lands is decided by a WHATWG URL parser (``ada-url``, the parser Node.js
uses), not by Python's ``urljoin``: backslashes, tabs, ``https:host`` and full-width dots
mean to a browser what they mean here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from ada_url import URL

from tests.harness import PUBLIC_URL, Sidecar, raw_http, running_sidecar
from tests.security import casebook

APP_HOST = urlsplit(PUBLIC_URL).hostname or ""
EVIL = "evil.example.net"
CORPUS = Path(__file__).with_name("open_redirects.txt")
_ESCAPE = re.compile(r"\\(t|n|r|\\|x[0-9A-Fa-f]{2})")


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    simple = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    return simple.get(code) or chr(int(code[1:], 16))


def payloads() -> list[str]:
    out = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(
                _ESCAPE.sub(_unescape, line.replace("{app}", APP_HOST).replace("{evil}", EVIL))
            )
    return out


def test_the_corpus_has_at_least_100_payloads() -> None:
    assert len(payloads()) >= 100
    assert len(set(payloads())) == len(payloads())


def landing(location: str, base: str) -> URL | None:
    """Where a browser goes for ``Location: location`` on a response to ``base``."""
    try:
        return URL(location, base=base)
    except ValueError:
        return None  # the browser shows an error; it goes nowhere


def same_origin(url: URL) -> bool:
    return (
        url.protocol == "https:" and url.hostname == APP_HOST and url.port in ("", "443")
        and not url.username and not url.password
    )  # fmt: skip


def allowed_by_links(url: URL) -> bool:
    """``links.redirect_allow``: the public origin or ``https://<label>.example.com/welcome``."""
    if same_origin(url):
        return True
    return (
        url.protocol == "https:" and url.port in ("", "443") and not url.username
        and re.fullmatch(r"[a-z0-9-]+\.example\.com", url.hostname) is not None
        and url.pathname == "/welcome"
    )  # fmt: skip


def judge(location: str | None, base: str, allowed: Callable[[URL], bool]) -> str | None:
    """None when the redirect is safe (or absent); else where it went."""
    if location is None:
        return None
    url = landing(location, base)
    if url is None or allowed(url):
        return None
    return url.href


def as_target(payload: str) -> str:
    """``payload`` as a request target: what an attacker can put on the request line."""
    text = payload if payload.startswith("/") else "/" + payload
    return quote(text, safe="/\\?#&=:@%;,.!~*'()+$[]-_")


# -- the refer landing --------------------------------------------------------------------


async def test_the_refer_landing_never_leaves_the_origin(sidecar: Sidecar) -> None:
    token = (await sidecar.mint(additionalParams={"role": "Reusable"}))["referString"]
    host = f"127.0.0.1:{sidecar.proxy_port}"
    through: list[tuple[str, object]] = []
    for payload in payloads():
        target = as_target(payload)
        target += ("&" if "?" in target.split("#")[0] else "?") + f"refer={token}"
        data = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        resp = await raw_http(sidecar.proxy_port, data)
        if resp.status >= 500:
            through.append((payload, resp.status))
        bad = judge(resp.header("Location"), PUBLIC_URL + "/", same_origin)
        if bad:
            through.append((payload, bad))
    casebook.record("redirects", tried=len(payloads()), through=len(through))
    assert not through, through


# -- logout rd / next -----------------------------------------------------------------------


async def test_the_logout_redirect_never_leaves_the_origin(sidecar: Sidecar) -> None:
    through: list[tuple[str, str, object]] = []
    url = sidecar.proxy_url + "/_sidecar/logout"
    for payload in payloads():
        for name in ("rd", "next"):
            async with sidecar.http.post(url, params={name: payload}, allow_redirects=False) as r:
                bad = judge(r.headers.get("Location"), PUBLIC_URL + "/_sidecar/logout", same_origin)
                if bad or r.status >= 500:
                    through.append((name, payload, bad or r.status))
    casebook.record("redirects", tried=2 * len(payloads()), through=len(through))
    assert not through, through


# -- auth links: redirect_to at mint and at verify -------------------------------------------


async def test_generate_link_never_binds_a_redirect_outside_the_allow_list(
    sidecar: Sidecar,
) -> None:
    through: list[tuple[str, object]] = []
    for n, payload in enumerate(payloads()):
        body = {"type": "magiclink", "email": f"r{n}@example.org", "redirect_to": payload}
        async with sidecar.http.post(
            sidecar.admin_url + "/admin/generate_link", json=body, headers=sidecar.admin_headers
        ) as r:
            answer = await r.json()
            if r.status == 400:
                continue
            if r.status != 200:
                through.append((payload, r.status))
                continue
        bad = judge(answer["redirect_to"], PUBLIC_URL + "/", allowed_by_links)
        action = urlsplit(answer["action_link"])
        bound = parse_qs(action.query).get("redirect_to", [""])[0]
        bad = bad or judge(bound, PUBLIC_URL + "/", allowed_by_links)
        async with sidecar.http.get(
            sidecar.proxy_url + action.path + "?" + action.query, allow_redirects=False
        ) as r:
            base = PUBLIC_URL + action.path
            bad = bad or judge(r.headers.get("Location"), base, allowed_by_links)
        if bad:
            through.append((payload, bad))
    casebook.record("redirects", tried=len(payloads()), through=len(through))
    assert not through, through


async def test_verify_never_follows_a_swapped_redirect_to(sidecar: Sidecar) -> None:
    through: list[tuple[str, object]] = []
    for payload in payloads():
        link = await sidecar.generate_link(type="magiclink", email="swap@example.org")
        action = urlsplit(link["action_link"])
        query = {k: v[0] for k, v in parse_qs(action.query).items()}
        query["redirect_to"] = payload
        async with sidecar.http.get(
            sidecar.proxy_url + action.path, params=query, allow_redirects=False
        ) as r:
            bad = judge(r.headers.get("Location"), PUBLIC_URL + action.path, allowed_by_links)
            if bad or r.status >= 500:
                through.append((payload, bad or r.status))
    casebook.record("redirects", tried=len(payloads()), through=len(through))
    assert not through, through


# -- the unauthenticated login redirect -----------------------------------------------------


async def test_the_login_redirect_goes_to_the_login_url_with_a_same_origin_rd(
    tmp_path: Path,
) -> None:
    login = "https://sso.example.com/login"
    overrides: dict[str, object] = {"proxy": {"unauthenticated": "redirect", "login_url": login}}
    through: list[tuple[str, object]] = []
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        host = f"127.0.0.1:{sc.proxy_port}"
        for payload in payloads():
            target = as_target(payload)
            data = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            resp = await raw_http(sc.proxy_port, data)
            location = resp.header("Location")
            if resp.status >= 500:
                through.append((payload, resp.status))
            if location is None:
                continue
            url = landing(location, PUBLIC_URL + "/")
            if url is None or url.origin != "https://sso.example.com" or url.pathname != "/login":
                through.append((payload, location))
                continue
            for rd in parse_qs(urlsplit(url.href).query).get("rd", []):
                if judge(rd, PUBLIC_URL + "/", same_origin):
                    through.append((payload, f"rd={rd}"))
    casebook.record("redirects", tried=len(payloads()), through=len(through))
    assert not through, through
