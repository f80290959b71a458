"""The admin listener's lean front (sidecar.admin.lane, sidecar.web.lean with a body).

The lane serves ``POST /referstring`` mints that succeed and hands everything else to
aiohttp's server on the same connection. These tests hold it to:

* **the same answers**: every request of a corpus (good mints, and every refusal the
  guards and the body checks make), sent byte for byte to a sidecar with the lane and to
  one without (``admin.lean_front: false``, aiohttp alone), gets the same status line,
  headers and body, ``Date``, ``X-Request-Id`` and the minted values (token, URL, id)
  aside — which must still be well-formed and open to the claims asked for;
* **the right owner**: a plain mint is served without a handover, also pipelined; the rest
  is handed over with its bytes intact, also mid-connection; a body that has not all come
  with its head is aiohttp's to read;
* **the same counts**: refused mints count against ``admin.mint_rate`` and limited ones
  are not recorded, as without the lane; every mint writes one audit line with the
  request's id and never the token.

(tests/security/test_admin_port.py and test_admin_bodies.py, which use real listeners, run
against the lane too: it is on by default. tests/test_admin.py uses aiohttp's test server,
which has no lean front.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest

from sidecar.store.base import StoreUnavailable
from sidecar.store.timed import TimedStore
from sidecar.telemetry import metrics
from tests.harness.raw import RawResponse, raw_http
from tests.harness.served import Sidecar, running_sidecar

_MASKED = (b"date", b"x-request-id")
_MINTED = ("referString", "url", "id")
_HEAD = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n")
_ROLES: dict[str, object] = {"roles": {"Authenticated": {"modules": ["5e9f*"]}}}


def _handovers() -> float:
    value = metrics.REGISTRY.get_sample_value("sidecar_lean_handovers_total")
    return 0.0 if value is None else value


def _answers(resp: RawResponse) -> list[tuple[object, ...]]:
    """Each answer's status line, headers (masked, in order) and body (the minted values
    masked, after checking them); and whatever came after the last one."""
    raw = resp.raw
    answers: list[tuple[object, ...]] = []
    pos = 0
    while match := _HEAD.match(raw, pos):
        lines = match.group().split(b"\r\n")[:-2]
        headers = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            headers.append(name + (b": *" if name.lower() in _MASKED else b":" + value))
        body = raw[match.end() : match.end() + length]
        pos = match.end() + length
        answers.append((lines[0], headers, _masked(body)))
    answers.append(("after the answers", raw[pos:]))
    return answers


def _masked(body: bytes) -> object:
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and "referString" in doc:
        token = doc["referString"]
        assert re.fullmatch(r"[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+", token), token
        assert token in doc["url"]
        assert re.fullmatch(r"[\w-]{22}", doc["id"])
        return (list(doc), {k: v for k, v in doc.items() if k not in _MINTED})
    return doc


Request = Callable[[Sidecar], bytes]


def _post(body: bytes | str, *extra: str, target: str = "/referstring", **opts: object) -> Request:
    """A request for a sidecar: the admin key, its own port in ``Host`` (unless ``extra``
    or ``opts`` say otherwise), ``body`` with its length."""
    data = body.encode() if isinstance(body, str) else body

    def build(sc: Sidecar) -> bytes:
        method = str(opts.get("method", "POST"))
        lines = [f"{method} {target} {opts.get('version', 'HTTP/1.1')}"]
        if not opts.get("no_host"):
            lines.append(f"Host: {opts.get('host', '127.0.0.1')}:{sc.admin_port}")
        if not opts.get("no_key"):
            lines.append(f"Authorization: {opts.get('scheme', 'Bearer')} {_key(sc)}")
        if not opts.get("no_type"):
            lines.append(f"Content-Type: {opts.get('type', 'application/json')}")
        if not opts.get("no_length"):
            lines.append(f"{opts.get('length_name', 'Content-Length')}: {len(data)}")
        lines += extra
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data

    return build


def _key(sc: Sidecar) -> str:
    return sc.admin_headers["Authorization"].removeprefix("Bearer ")


MINT = json.dumps({"userId": "lane-user"})
FULL = json.dumps(
    {
        "userId": "lane-user",
        "expireMeasure": "Days",
        "expireOffset": 2,
        "oneTimeUse": False,
        "module": "5e9f83275349fc020f8db299",
        "additionalParams": {"role": "Authenticated", "tenant": "acme, inc"},
    }
)

CORPUS: dict[str, Request] = {
    "plain": _post(MINT),
    "every-field": _post(FULL),
    "unicode-user": _post(json.dumps({"userId": "Zoë Ünïcode"}, ensure_ascii=False).encode()),
    "client-request-id": _post(MINT, "X-Request-Id: client-id-1"),
    "odd-case-names": _post(MINT, "X-REQUEST-ID: id-2"),
    "connection-close": _post(MINT, "Connection: close"),
    "bearer-lower-case": _post(MINT, scheme="bearer"),
    "localhost": _post(MINT, host="localhost"),
    "charset": _post(MINT, type="application/json; charset=utf-8"),
    "type-upper-case": _post(MINT, type="Application/JSON"),
    "charset-upper-case": _post(MINT, type="application/json; charset=UTF-8"),
    "charset-latin1": _post(MINT, type="application/json; charset=latin-1"),
    "json-suffix": _post(MINT, type="application/json-seq"),
    "query": _post(MINT, target="/referstring?x=1"),
    "sec-fetch-same-origin": _post(MINT, "Sec-Fetch-Site: same-origin"),
    # Refusals: every one is aiohttp's to answer.
    "no-key": _post(MINT, no_key=True),
    "wrong-key": _post(MINT, scheme="Bearer wrong"),
    "basic": _post(MINT, scheme="Basic"),
    "two-keys": _post(MINT, "Authorization: Bearer another"),
    "origin": _post(MINT, "Origin: https://evil.example"),
    "sec-fetch-cross-site": _post(MINT, "Sec-Fetch-Site: cross-site"),
    "wrong-host": _post(MINT, host="evil.example"),
    "no-host": _post(MINT, no_host=True),
    "no-type": _post(MINT, no_type=True),
    "text-type": _post(MINT, type="text/plain"),
    "not-json": _post("{nope"),
    "not-utf8": _post(b'{"userId": "\xff"}'),
    "duplicate-keys": _post('{"userId": "a", "userId": "b"}'),
    "nan": _post('{"userId": "a", "expireOffset": NaN}'),
    "array": _post("[]"),
    "unknown-field": _post('{"userId": "a", "bogus": 1}'),
    "bad-user": _post('{"userId": " padded"}'),
    "comma-user": _post('{"userId": "a,b"}'),
    "bad-role": _post('{"userId": "a", "additionalParams": {"role": "Root"}}'),
    "bad-module": _post('{"userId": "a", "module": "zzz"}'),
    "too-long-expiry": _post('{"userId": "a", "expireMeasure": "days", "expireOffset": 99}'),
    "too-long-token": _post(
        json.dumps({"userId": "a", "additionalParams": {"tenant": "x" * 5000}})
    ),
    "empty-body": _post(""),
    "too-large": _post(json.dumps({"userId": "a" * 70000})),
    "length-leading-zero": lambda sc: _post(MINT)(sc).replace(b"Length: ", b"Length: 00"),
    "content_length-spelling": _post(MINT, length_name="Content_Length"),
    "chunked": lambda sc: (
        _post(b"", "Transfer-Encoding: chunked", no_length=True)(sc)
        + b"%x\r\n%b\r\n0\r\n\r\n" % (len(MINT), MINT.encode())
    ),
    "expect-continue": _post(MINT, "Expect: 100-continue"),
    "get": _post("", method="GET", no_type=True, no_length=True),
    "http-1.0": _post(MINT, version="HTTP/1.0"),
    "other-route": _post(MINT, target="/healthz"),
    "pipelined-mints": lambda sc: _post(MINT)(sc) + _post(FULL)(sc),
    "mint-then-refused": lambda sc: _post(MINT)(sc) + _post(MINT, no_key=True)(sc),
    "refused-then-mint": lambda sc: _post(MINT, no_key=True)(sc) + _post(MINT)(sc),
}

TWO_ANSWERS = ("pipelined-mints", "mint-then-refused", "refused-then-mint")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    async with (
        running_sidecar(tmp_path / "lean", overrides=_ROLES) as lean,
        running_sidecar(
            tmp_path / "plain", overrides={**_ROLES, "admin": {"lean_front": False}}
        ) as plain,
    ):
        plain.clock.now = lean.clock.now
        assert lean.config.admin.lean_front
        assert not plain.config.admin.lean_front
        yield lean, plain


async def test_the_lane_answers_exactly_as_aiohttp_does(pair: tuple[Sidecar, Sidecar]) -> None:
    lean, plain = pair
    differ = []
    for name, build in CORPUS.items():
        answers = 2 if name in TWO_ANSWERS else 1
        got = await raw_http(lean.admin_port, build(lean), answers=answers, quiet=1.0)
        want = await raw_http(plain.admin_port, build(plain), answers=answers, quiet=1.0)
        assert want.status != 0, name
        if _answers(got) != _answers(want):
            differ.append((name, got.raw[:700], want.raw[:700]))
    assert not differ, differ


async def test_plain_mints_are_not_handed_over_and_the_rest_is(
    pair: tuple[Sidecar, Sidecar],
) -> None:
    lean, _ = pair
    before = _handovers()
    three = _post(MINT)(lean) + _post(MINT, type="application/json; charset=utf-8")(lean) * 2
    response = await raw_http(lean.admin_port, three, answers=3, quiet=1.0)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", response.raw) == [b"200"] * 3
    assert _handovers() == before  # three mints on one connection, all the lane's
    # A mint, a refusal (aiohttp's), a mint: in order, on one connection, one handover.
    data = _post(MINT)(lean) + _post(MINT, no_key=True)(lean) + _post(MINT)(lean)
    response = await raw_http(lean.admin_port, data, answers=3, quiet=1.0)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", response.raw) == [b"200", b"401", b"200"]
    assert _handovers() == before + 1


async def test_a_body_that_comes_after_its_head_is_read_by_aiohttp(
    pair: tuple[Sidecar, Sidecar],
) -> None:
    lean, _ = pair
    data = _post(MINT)(lean)
    head, body = data[: -len(MINT)], data[-len(MINT) :]
    before = _handovers()
    reader, writer = await asyncio.open_connection("127.0.0.1", lean.admin_port)
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert _handovers() == before + 1


async def test_refused_mints_count_and_limited_ones_are_not_recorded(tmp_path: Path) -> None:
    async def statuses(sc: Sidecar) -> list[int]:
        got = []
        for body in (MINT, '{"userId": ""}', MINT, MINT, MINT, '{"userId": ""}'):
            response = await raw_http(sc.admin_port, _post(body, "Connection: close")(sc))
            got.append(response.status)
            response = await raw_http(sc.admin_port, _post(body)(sc), quiet=1.0)
            got.append(response.status)
        return got

    limited: dict[str, object] = {"admin": {"mint_rate": "5/1m"}}
    async with (
        running_sidecar(tmp_path / "lean", overrides=limited) as lean,
        running_sidecar(
            tmp_path / "plain", overrides={"admin": {"mint_rate": "5/1m", "lean_front": False}}
        ) as plain,
    ):
        plain.clock.now = lean.clock.now
        got, want = await statuses(lean), await statuses(plain)
        assert got == want
        assert got == [200, 200, 400, 400, 200] + [429] * 7, got
        for sc in (lean, plain):
            assert len(await sc.store.list_user_tokens("lane-user", 100)) == 3


async def test_a_lane_mint_is_audited_once_with_its_request_id(
    pair: tuple[Sidecar, Sidecar], caplog: pytest.LogCaptureFixture
) -> None:
    lean, _ = pair
    caplog.set_level("INFO", logger="sidecar")
    response = await raw_http(lean.admin_port, _post(MINT, "X-Request-Id: audit-me-1")(lean))
    assert response.status == 200
    token = json.loads(response.body)["referString"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.audit"]
    mints = [line for line in lines if line["event"] == "mint"]
    assert len(mints) == 1
    assert mints[0]["request_id"] == "audit-me-1"
    assert mints[0]["token_id"] == json.loads(response.body)["id"]
    assert token not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "sidecar.access"]
    assert any('"request_id": "audit-me-1"' in line and '"status": 200' in line for line in access)


async def test_the_request_id_is_the_first_copy_even_empty(pair: tuple[Sidecar, Sidecar]) -> None:
    for sc in pair:  # aiohttp's headers.get() reads the first copy: "" is no id, a new one
        empty_first = _post(MINT, "X-Request-Id: ", "X-Request-Id: second-id")(sc)
        response = await raw_http(sc.admin_port, empty_first)
        assert response.status == 200
        assert response.header("X-Request-Id") not in (None, "", "second-id")
        both = _post(MINT, "X-Request-Id: first-id", "X-Request-Id: second-id")(sc)
        assert (await raw_http(sc.admin_port, both)).header("X-Request-Id") == "first-id"


async def test_a_mint_the_store_refuses_is_answered_by_the_lane_as_aiohttp_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over admin.mint_rate (429) or with the store failing as it keeps the link (503), the
    lane answers the handler's refusal byte for byte (headers in order) — and the store is
    asked once: handed over, aiohttp's handler would count again, and after a failure that
    came once the link was kept, record a second link."""
    limited: dict[str, object] = {**_ROLES, "admin": {"mint_rate": "1/1m"}}
    async with (
        running_sidecar(tmp_path / "lean", overrides=limited) as lean,
        running_sidecar(
            tmp_path / "plain",
            overrides={**_ROLES, "admin": {"mint_rate": "1/1m", "lean_front": False}},
        ) as plain,
    ):
        plain.clock.now = lean.clock.now
        shapes = []
        for sc in (lean, plain):
            before = _handovers()
            response = await raw_http(sc.admin_port, _post(MINT)(sc) * 2, answers=2, quiet=1.0)
            assert re.findall(rb"HTTP/1\.1 (\d{3})", response.raw) == [b"200", b"429"]
            assert _handovers() == before
            shapes.append(_answers(response)[1:])
        assert shapes[0] == shapes[1]

        calls: list[int] = []
        shapes = []
        for sc in (lean, plain):
            # The backend inside the timed store (a compiled class's methods cannot be
            # replaced on its instances), as a store that fails while keeping the link.
            store = cast(TimedStore, sc.store).inner

            async def failing(*args: object, **kwargs: object) -> object:
                calls.append(1)
                raise StoreUnavailable("the store fell over as it kept the link")

            monkeypatch.setattr(store, "record_counted", failing)
            calls.clear()
            before = _handovers()
            response = await raw_http(sc.admin_port, _post(MINT)(sc), quiet=1.0)
            assert response.status == 503
            assert calls == [1]  # asked once: not handed over and minted again
            assert _handovers() == before
            shapes.append(_answers(response))
        assert shapes[0] == shapes[1]


async def test_a_client_that_leaves_mid_mint_is_logged_499_and_frees_the_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client closes while its mint waits for the store: the store call is cancelled,
    the access line says 499 (nginx's "client closed"), nothing is answered or handed
    over, and the lane serves the next mint."""
    caplog.set_level("INFO", logger="sidecar")
    async with running_sidecar(tmp_path / "lean", overrides=_ROLES) as lean:
        store = cast(TimedStore, lean.store).inner  # see the test above
        original = store.record_counted
        entered, cancelled = asyncio.Event(), asyncio.Event()

        async def stuck(*args: object, **kwargs: object) -> object:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return await original(*args, **kwargs)  # type: ignore[arg-type]  # never

        monkeypatch.setattr(store, "record_counted", stuck)
        before = _handovers()
        reader, writer = await asyncio.open_connection("127.0.0.1", lean.admin_port)
        writer.write(_post(MINT, "X-Request-Id: gone-1")(lean))
        await asyncio.wait_for(entered.wait(), 5)
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
        assert await reader.read() == b""  # nothing was answered
        monkeypatch.setattr(store, "record_counted", original)
        response = await raw_http(lean.admin_port, _post(MINT, "X-Request-Id: next-1")(lean))
        assert response.status == 200
        assert _handovers() == before
    access = [r.getMessage() for r in caplog.records if r.name == "sidecar.access"]
    assert any('"request_id": "gone-1"' in line and '"status": 499' in line for line in access)
    assert any('"request_id": "next-1"' in line and '"status": 200' in line for line in access)
    assert "never retrieved" not in caplog.text


async def test_a_fault_after_the_store_call_closes_the_connection_and_leaves_no_one_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault of the lane's own once the store call is done (here a store that counts the
    mint over the limit with a window reset time that is not a number, so the refusal's
    Retry-After cannot be computed; types the compiled store checks are right): the
    client is not left waiting for an answer that
    never comes; the connection is closed at once, the fault is logged, nothing is handed
    over (aiohttp's handler would record a second link), and the lane serves the next
    mint."""
    async with running_sidecar(tmp_path / "lean", overrides=_ROLES) as lean:
        store = cast(TimedStore, lean.store).inner  # see the tests above
        original = store.record_counted

        async def garbled(*args: object, **kwargs: object) -> object:
            return (10**9, float("nan"))

        monkeypatch.setattr(store, "record_counted", garbled)
        before = _handovers()
        reader, writer = await asyncio.open_connection("127.0.0.1", lean.admin_port)
        try:
            writer.write(_post(MINT, "X-Request-Id: fault-1")(lean))
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
        finally:
            writer.close()
        monkeypatch.setattr(store, "record_counted", original)
        response = await raw_http(lean.admin_port, _post(MINT, "X-Request-Id: next-2")(lean))
        assert response.status == 200
        assert _handovers() == before
    assert "answering POST /referstring failed" in caplog.text


async def test_a_mint_the_store_fails_unexpectedly_is_answered_500_by_the_lane_as_aiohttp_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store call that fails with something other than StoreUnavailable: the lane answers
    aiohttp's handler's 500 byte for byte, and the store is asked once (handed over,
    aiohttp's handler would count and record the mint a second time)."""
    async with (
        running_sidecar(tmp_path / "lean", overrides=_ROLES) as lean,
        running_sidecar(
            tmp_path / "plain", overrides={**_ROLES, "admin": {"lean_front": False}}
        ) as plain,
    ):
        calls: list[int] = []
        shapes = []
        for sc in (lean, plain):
            store = cast(TimedStore, sc.store).inner  # see the tests above

            async def failing(*args: object, **kwargs: object) -> object:
                calls.append(1)
                raise RuntimeError("a bug in the store")

            monkeypatch.setattr(store, "record_counted", failing)
            calls.clear()
            before = _handovers()
            response = await raw_http(sc.admin_port, _post(MINT)(sc), quiet=1.0)
            assert response.status == 500
            assert calls == [1]
            assert _handovers() == before
            shapes.append(_answers(response))
        assert shapes[0] == shapes[1]
