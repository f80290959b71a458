"""Refer links on the lean front (sidecar.proxy.redeem_lane): the differential corpus.

As in tests/test_lean.py, every request is sent byte for byte to a sidecar with the lean
front and to one without (``proxy.lean_front: false``) and the answers must agree: status
line, headers and body, with ``Date``, ``X-Request-Id`` and the new session cookie's value
masked (each side mints its own links and sessions). Each case also says who must answer
it: the lean front (no handover) or aiohttp's handler (one handover) — so the cases the
lean front declines are proven declined, and the ones it takes proven taken.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest
from aiohttp import web

from sidecar.proxy.answers import _head_lines
from sidecar.session_cookies import session_key
from sidecar.telemetry import metrics
from tests.harness.raw import RawResponse, raw_http
from tests.harness.served import Sidecar, running_sidecar
from tests.harness.upstream import running_upstream
from tests.test_lean import _shape

_COOKIE_VALUE = re.compile(rb"(?im)^(set-cookie: [^=\r\n]+=)[A-Za-z0-9_-]{43}")


def _handovers() -> float:
    value = metrics.REGISTRY.get_sample_value("sidecar_lean_handovers_total")
    return 0.0 if value is None else value


def _masked(resp: RawResponse) -> list[tuple[object, ...]]:
    raw = _COOKIE_VALUE.sub(rb"\1*", resp.raw)
    return _shape(RawResponse(resp.status, resp.headers, resp.body, resp.responses, raw))


@dataclass(frozen=True)
class Case:
    """``build(sc)`` makes the request bytes for one side (its own links); ``lean``: the
    lean front answers it (else it is handed over); ``answers``: how many come back."""

    build: Callable[[Sidecar], Awaitable[bytes]]
    lean: bool
    answers: int = 1


def _get(
    sc: Sidecar,
    target: str,
    *extra: str,
    method: str = "GET",
    close: bool = True,
    host: str | None = None,
) -> bytes:
    host = host or f"127.0.0.1:{sc.proxy_port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *extra]
    lines += ["Connection: close"] if close else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _link(
    target: str,
    *extra: str,
    lean: bool,
    method: str = "GET",
    host: str | None = None,
    **claims: object,
) -> Case:
    """A request for ``target`` with ``{t}`` a link sealed with ``claims``."""

    async def build(sc: Sidecar) -> bytes:
        token, _ = sc.seal(**claims)  # type: ignore[arg-type]  # keyword pass-through
        return _get(sc, target.format(t=token), *extra, method=method, host=host)

    return Case(build, lean)


def _used(*extra: str, revoked: bool = False) -> Case:
    """A one-time link already redeemed (or revoked), redeemed again."""

    async def build(sc: Sidecar) -> bytes:
        token, claims = sc.seal()
        if revoked:
            await sc.store.revoke(claims.token_id, claims.expires_at)
        else:
            await sc.redeem(token)
        return _get(sc, f"/?refer={token}", *extra)

    return Case(build, lean=True)


async def _pipelined(sc: Sidecar) -> bytes:
    """A link, the same link again, then the session it started, on one connection."""
    token, _ = sc.seal()
    cookie = f"Cookie: {sc.cookie_name}={await sc.login()}"
    return (
        _get(sc, f"/app/a?refer={token}", close=False)
        + _get(sc, f"/app/b?refer={token}", close=False)
        + _get(sc, "/app/hot", cookie)
    )


async def _with_a_body(sc: Sidecar) -> bytes:
    """A link's GET with a small body (the lean front reads such bodies for forwarding)."""
    token, _ = sc.seal()
    return _get(sc, f"/?refer={token}", "Content-Length: 2") + b"ab"


async def _holding_a_session(sc: Sidecar) -> bytes:
    """A browser holding a session redeems a link: its old session ends (the next request
    with the old cookie is anonymous: 401)."""
    token, _ = sc.seal()
    old = f"Cookie: theme=dark; {sc.cookie_name}={await sc.login()}"
    return _get(sc, f"/?refer={token}", old, close=False) + _get(sc, "/app/x", old)


CORPUS: dict[str, Case] = {
    "valid": _link("/?refer={t}", lean=True),
    "valid, another path": _link("/app/page/?refer={t}", lean=True),
    "module": _link("/?refer={t}", lean=True, module="m-1"),
    "module, Unqork's trailing slash": _link("/?refer={t}/", lean=True, module="m-1"),
    "other parameters kept": _link("/app/p?a=1&refer={t}&b&c=", lean=True),
    "empty parameters": _link("/?&&refer={t}&&", lean=True),
    "parameters named alike": _link("/?referrer=1&refer={t}&xrefer=2", lean=True),
    "client request id": _link("/?refer={t}", "X-Request-Id: client-id-1", lean=True),
    "json accept": _link("/?refer={t}", "Accept: application/json", lean=True),
    "reusable link": _link("/?refer={t}", lean=True, role="Reusable", one_time=False),
    "params in the link": _link("/?refer={t}", lean=True, params={"tenant": "t-1"}),
    "replayed": _used(),
    "replayed, json": _used("Accept: application/json"),
    # aiohttp reads the first copy of a header, even an empty one
    "replayed, empty Accept then json": _used("Accept: ", "Accept: application/json"),
    "revoked": _used(revoked=True),
    "pipelined: link, replay, session": Case(_pipelined, lean=True, answers=3),
    # (The redemption and the anonymous request after it: both the lean front's.)
    "holding a session": Case(_holding_a_session, lean=True, answers=2),
    # Declined before anything is read or written: aiohttp's handler answers.
    "expired": _link("/?refer={t}", lean=False, ttl=-60),
    "wrong role": _link("/?refer={t}", lean=False, role="Gone"),
    "auth link token": _link("/?refer={t}", lean=False, kind="magiclink"),
    "confirm role": _link("/?refer={t}", lean=False, role="Confirm"),
    "malformed": Case(lambda sc: _async(_get(sc, "/?refer=not-a-token")), lean=False),
    "malformed, json": Case(
        lambda sc: _async(_get(sc, "/?refer=x.y", "Accept: application/json")), lean=False
    ),
    "empty": Case(lambda sc: _async(_get(sc, "/?refer=")), lean=False),
    "bare name": Case(lambda sc: _async(_get(sc, "/?a=1&refer")), lean=False),
    "two links": _link("/?refer={t}&refer={t}", lean=False),
    "HEAD": _link("/?refer={t}", lean=False, method="HEAD"),
    "POST from elsewhere": _link(
        "/?refer={t}",
        "Origin: https://evil.example",
        "Content-Length: 0",
        lean=False,
        method="POST",
    ),
    "DELETE": _link("/?refer={t}", lean=False, method="DELETE"),
    "GET with a body": Case(_with_a_body, lean=False),
    "percent-encoded name": _link("/?r%65fer={t}", lean=False),
    "percent in another parameter": _link("/?a=%41&refer={t}", lean=False),
    "plus in another parameter": _link("/?a=b+c&refer={t}", lean=False),
    "semicolon": _link("/?a=1;refer={t}", lean=False),
    "leading //": _link("//evil.example/?refer={t}", lean=False),
    "backslash": _link("/\\evil.example/?refer={t}", lean=False),
    "dot segments": _link("/a/../?refer={t}", lean=False),
    "own route": _link("/_sidecar/session?refer={t}", lean=False),
    "another host": _link("/?refer={t}", lean=False, host="evil.example"),
    # Odd spellings of a link: the lean front's plain reading and aiohttp's must agree
    "name in capitals: not a link": _link("/?REFER={t}", lean=True),
    "fragment sent on the wire": _link("/?refer={t}/#/display/m-1", lean=False, module="m-1"),
    "plus before the token": _link("/?refer=+{t}", lean=False),
    "encoded trailing slash": _link("/?refer={t}%2F", lean=False),
    "two links, one with the trailing slash": _link("/?refer={t}&refer={t}/", lean=False),
    "escape that is not UTF-8": _link("/?a=%E9&refer={t}", lean=False),
    "truncated token": Case(
        lambda sc: _async(_get(sc, "/?refer=" + sc.seal()[0][:-9])), lean=False
    ),
    # UTF-8 on the wire (aiohttp's parser refuses it, and logs the request line: no token)
    "non-ASCII path": Case(lambda sc: _async(_get(sc, "/caf\u00c3\u00a9?refer=x")), lean=False),
}


async def _async(data: bytes) -> bytes:
    return data


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    async with running_upstream() as upstream:
        upstream.respond = lambda request: web.Response(text="ok " + request.raw_path)
        async with (
            running_sidecar(tmp_path / "lean", upstream=upstream) as lean,
            running_sidecar(
                tmp_path / "plain", upstream=upstream, overrides={"proxy": {"lean_front": False}}
            ) as plain,
        ):
            plain.clock.now = lean.clock.now  # the same expiry, Max-Age and windows
            yield lean, plain


async def _differ(lean: Sidecar, plain: Sidecar, corpus: dict[str, Case]) -> list[object]:
    differ: list[object] = []
    for name, case in corpus.items():
        lean_request, plain_request = await case.build(lean), await case.build(plain)
        before = _handovers()
        got = await raw_http(lean.proxy_port, lean_request, answers=case.answers, quiet=1.0)
        handed_over = _handovers() - before
        want = await raw_http(plain.proxy_port, plain_request, answers=case.answers, quiet=1.0)
        assert want.status != 0, name
        assert want.responses == case.answers, name
        if _masked(got) != _masked(want):
            differ.append((name, got.raw[:700], want.raw[:700]))
        if (handed_over == 0) != case.lean:
            differ.append((name, "answered by the lean front" if case.lean else "handed over"))
    return differ


async def test_redemptions_get_the_answers_aiohttp_gives(pair: tuple[Sidecar, Sidecar]) -> None:
    lean, plain = pair
    assert not await _differ(lean, plain, CORPUS)


async def test_a_link_redeemed_on_the_lean_front_burns_once_and_starts_a_working_session(
    pair: tuple[Sidecar, Sidecar],
) -> None:
    lean, _ = pair
    token, claims = lean.seal(user="u-lean")
    before = _handovers()
    first = await raw_http(lean.proxy_port, _get(lean, f"/app/x?refer={token}"))
    again = await raw_http(lean.proxy_port, _get(lean, f"/app/x?refer={token}"))
    assert _handovers() == before
    assert (first.status, first.header("Location")) == (303, "/app/x")
    assert again.status == 410
    cookie = first.header("Set-Cookie")
    assert cookie is not None
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    record = await lean.store.get_session(session_key(value))
    assert record is not None
    assert (record.user_id, record.token_id) == ("u-lean", claims.token_id)
    served = await raw_http(
        lean.proxy_port, _get(lean, "/app/y", f"Cookie: {lean.cookie_name}={value}")
    )
    assert served.status == 200
    assert lean.upstream.last.values("X-Forwarded-User") == ["u-lean"]


async def test_past_the_failure_limit_the_lean_front_answers_the_same_429(
    tmp_path: Path,
) -> None:
    limit: dict[str, object] = {"proxy": {"failed_redeem_rate": "2/5m"}}
    plain_limit: dict[str, object] = {"proxy": {"failed_redeem_rate": "2/5m", "lean_front": False}}
    async with (
        running_sidecar(tmp_path / "lean", overrides=limit) as lean,
        running_sidecar(tmp_path / "plain", overrides=plain_limit) as plain,
    ):
        plain.clock.now = lean.clock.now  # the windows, and so Retry-After, agree
        replays = {name: _used() for name in ("first", "second", "third", "fourth")}
        valid = {"a usable link is still redeemed": _link("/?refer={t}", lean=True)}
        assert not await _differ(lean, plain, {**replays, **valid})
        third = await raw_http(lean.proxy_port, await _used().build(lean))
        assert third.status == 429
        assert third.header("Retry-After") is not None


async def test_with_the_store_down_the_lean_front_answers_the_same_503(
    pair: tuple[Sidecar, Sidecar],
) -> None:
    lean, plain = pair
    for sc in pair:
        await sc.store.close()
    corpus = {
        "one-time": _link("/?refer={t}", lean=True),
        "one-time, json": _link("/?refer={t}", "Accept: application/json", lean=True),
        "reusable": _link("/?refer={t}", lean=True, role="Reusable", one_time=False),
    }
    assert not await _differ(lean, plain, corpus)
    down = await raw_http(lean.proxy_port, await corpus["one-time"].build(lean))
    assert down.status == 503
    assert down.header("Set-Cookie") is None


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_one_link_redeemed_at_once_through_both_fronts_burns_once(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """Half the requests are the lean front's (a plain query), half aiohttp's (a percent
    escape in another parameter hands them over), all at once: one 303, one cookie."""
    overrides: dict[str, object] = {}
    if store == "redis":
        url: str = request.getfixturevalue("redis_url")
        overrides = {"store": {"url": url, "key_prefix": f"lean-race-{uuid.uuid4().hex[:8]}:"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        token, _ = sc.seal()
        targets = [f"/?refer={token}" if i % 2 else f"/?x=%41&refer={token}" for i in range(40)]
        before = _handovers()
        answers = await asyncio.gather(*(raw_http(sc.proxy_port, _get(sc, t)) for t in targets))
        assert _handovers() - before == 20
        statuses = sorted(a.status for a in answers)
        assert (statuses.count(303), statuses.count(410)) == (1, 39), statuses
        assert sum(a.header("Set-Cookie") is not None for a in answers) == 1


@pytest.mark.parametrize("reason", [None, "Custom Reason", "Ünïcode", "OK", "Not Found", ""])
def test_a_status_line_is_formatted_as_before(reason: str | None) -> None:
    """The own answers' status lines, formatted once per standard status, are the lines
    formatted per answer (every status a line can carry, standard or not)."""
    reasons = {s.value: s.phrase for s in HTTPStatus}
    for status in range(100, 1000):
        phrase = reasons.get(status, "") if reason is None else reason
        expected = b"HTTP/1.1 %d %b\r\n" % (status, phrase.encode("latin-1", "replace"))
        assert _head_lines(status, reason, [("A", "b")]) == [expected, b"A: b\r\n"]
