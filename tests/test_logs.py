"""The logs of a full flow, from a real ``sidecar serve`` process, hold no secret.

The flow: mint, redeem, proxied requests, a replay, a tampered and a malformed link, a
revoked link, an auth link (wrong OTP, right OTP, the used action link, a token_hash),
logout and ``DELETE /sessions``. Then every secret the flow used — token text and each of
its parts, cookie values, the OTP, the hashed token, the password, the admin key and the
keyset's key bytes — is searched for in every log line, and every line must be one JSON
object. The events operators rely on must be there, with token ids.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from sidecar.telemetry.access import _info_enabled
from sidecar.telemetry.audit import ACCESS, AUDIT
from sidecar.web.logsetup import set_levels
from tests.harness import Upstream, running_upstream
from tests.serve_process import Served, running_serve

COOKIE = "sidecar_session"
PASSWORD = "correct-Horse-battery-9"


class Flow:
    """Drives the sidecar like a backend and a browser would, collecting every secret."""

    def __init__(self, served: Served, http: aiohttp.ClientSession) -> None:
        self.served = served
        self.http = http
        self.secrets: dict[str, str] = {"admin key": served.admin_key}
        self.digits: dict[str, str] = {}  # short numeric secrets (OTPs): matched as whole numbers
        for kid, raw in served.keyset.keys.items():
            self.secrets[f"key {kid} (base64url)"] = (
                base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            )
            self.secrets[f"key {kid} (hex)"] = raw.hex()

    def token(self, name: str, text: str) -> None:
        self.secrets[name] = text
        for i, part in enumerate(text.split(".")):
            if len(part) >= 16:
                self.secrets[f"{name} part {i}"] = part

    async def mint(self, user: str, **body: object) -> dict[str, str]:
        async with self.http.post(
            self.served.admin + "/referstring",
            json={"userId": user, **body},
            headers=self.served.admin_headers(),
        ) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, str] = await response.json()
        self.token(f"refer token {answer['id']}", answer["referString"])
        return answer

    def cookie_from(self, response: aiohttp.ClientResponse) -> str:
        morsel = response.cookies[COOKIE]
        self.secrets[f"cookie {len(self.secrets)}"] = morsel.value
        return f"{COOKIE}={morsel.value}"

    async def open_link(self, url: str, method: str = "GET") -> tuple[int, str | None]:
        async with self.http.request(method, url, allow_redirects=False) as response:
            cookie = self.cookie_from(response) if COOKIE in response.cookies else None
            return response.status, cookie


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Served]]:
    async with running_upstream() as upstream, running_serve(tmp_path, upstream.url) as served:
        yield upstream, served


async def test_logs_of_a_full_flow_hold_no_secret(stack: tuple[Upstream, Served]) -> None:
    upstream, served = stack
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        flow = Flow(served, http)
        await run_flow(flow, upstream)
    served.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await served.proc.wait() == 0

    lines = served.logs()
    docs = []
    for number, line in enumerate(lines, 1):
        doc = json.loads(line)  # every line is one JSON object
        assert isinstance(doc, dict), f"line {number} is not a JSON object: {line}"
        docs.append(doc)
    text = "\n".join(lines)
    for name, secret in flow.secrets.items():
        assert secret not in text, f"the {name} appears in the logs"
    for name, digits in flow.digits.items():
        assert not re.search(rf"(?<!\d){digits}(?!\d)", text), f"the {name} appears in the logs"

    events = {d.get("event") for d in docs}
    assert {"mint", "redeem", "replay", "redeem_failed", "revoke", "logout", "access"} <= events
    failures = {d.get("reason") for d in docs if d.get("event") == "redeem_failed"}
    assert {"tampered", "malformed", "revoked"} <= failures
    assert all(d.get("token_id") for d in docs if d.get("event") in ("mint", "redeem", "replay"))

    access = [d for d in docs if d.get("event") == "access"]
    assert all("?" not in d["path"] for d in access), "access lines never carry the query"
    proxied = next(d for d in access if d["request_id"] == "req-logs-1")
    assert proxied["path"] == "/api/data"
    assert (proxied["method"], proxied["status"], proxied["user_id"]) == ("GET", 200, "u-logs")
    assert isinstance(proxied["duration_ms"], float)
    assert isinstance(proxied["upstream_ms"], float)
    assert proxied["listener"] == "proxy"
    assert any(d["listener"] == "admin" and d["path"] == "/referstring" for d in access)
    redeemed = [d for d in access if d["path"] == "/" and d["status"] == 303]
    assert redeemed, "the redemptions have access lines"
    assert all(d["user_id"] == "u-logs" for d in redeemed), "with the user they logged in"

    # Every line has a level and an RFC 3339 UTC timestamp with milliseconds.
    for doc in docs:
        assert doc.get("level") in ("debug", "info", "warning", "error"), doc
        assert RFC3339_MS.fullmatch(str(doc["ts"])), doc
    # Audit events name the request that caused them, so they join their access line.
    ids = {d["request_id"] for d in access}
    caused = [d for d in docs if d.get("event") in ("mint", "redeem", "replay", "revoke")]
    assert caused
    assert all(d.get("request_id") in ids for d in caused), caused
    # A malformed request is one warning with the parser's reason, never an error traceback.
    malformed = [d for d in docs if str(d.get("msg", "")).startswith("malformed request")]
    assert len(malformed) == 1, malformed
    assert malformed[0]["level"] == "warning"
    assert "nope-secret" not in text, "what the parser quotes (a cookie, a token) is not logged"
    assert not [d for d in docs if d.get("level") == "error"]


RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def send_malformed_request(url: str) -> None:
    """A request line the parser refuses; read the 400 until the server closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: nope-secret\r\n\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]


async def run_flow(flow: Flow, upstream: Upstream) -> None:
    served, http = flow.served, flow.http
    await send_malformed_request(served.proxy)

    link = await flow.mint("u-logs", module="mod1", additionalParams={"tenant": "acme"})
    status, cookie = await flow.open_link(link["url"])
    assert status == 303
    assert cookie is not None
    headers = {"Cookie": cookie, "X-Request-Id": "req-logs-1"}
    async with http.get(served.proxy + "/api/data?q=query-only", headers=headers) as response:
        assert response.status == 200
    sent = dict(upstream.last.headers)
    assert sent["X-Request-Id"] == "req-logs-1", "the request id is forwarded upstream"
    assert sent["X-Forwarded-User"] == "u-logs"
    bad_id = {"Cookie": cookie, "X-Request-Id": 'no spaces "or quotes"'}
    async with http.get(served.proxy + "/api/other", headers=bad_id) as response:
        assert response.status == 200
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    assert dict(upstream.last.headers)["X-Request-Id"] == response.headers["X-Request-Id"]

    assert (await flow.open_link(link["url"]))[0] == 410  # replay
    head, sep, tail = link["referString"].rpartition(".")
    tampered = head + sep + ("A" if tail[0] != "A" else "B") + tail[1:]
    flow.token("tampered token", tampered)
    assert (await flow.open_link(f"{served.proxy}/?refer={tampered}"))[0] == 401
    assert (await flow.open_link(f"{served.proxy}/?refer=not-a-token-{'x' * 20}"))[0] == 401

    revoked = await flow.mint("u-logs")
    async with http.post(
        f"{served.admin}/tokens/{revoked['id']}/revoke", headers=served.admin_headers()
    ) as response:
        assert response.status == 200
    assert (await flow.open_link(revoked["url"]))[0] == 410

    await auth_links(flow)

    logout = served.proxy + "/_sidecar/logout"
    async with http.post(logout, headers={"Cookie": cookie}, allow_redirects=False) as r:
        assert r.status == 303
    reusable = await flow.mint("u-logs", oneTimeUse=False)
    assert (await flow.open_link(reusable["url"]))[0] == 303
    async with http.delete(
        served.admin + "/sessions", params={"user_id": "u-logs"}, headers=served.admin_headers()
    ) as response:
        assert response.status == 200


async def auth_links(flow: Flow) -> None:
    """Signup with a password, a wrong then the right OTP, the used link, a token_hash."""
    served, http = flow.served, flow.http
    flow.secrets["password"] = PASSWORD
    email = "erin@example.com"
    async with http.post(
        served.admin + "/admin/generate_link",
        json={"type": "signup", "email": email, "password": PASSWORD},
        headers=served.admin_headers(),
    ) as response:
        assert response.status == 200, await response.text()
        signup = await response.json()
    action_token = parse_qs(urlsplit(signup["action_link"]).query)["token"][0]
    flow.token("action link token", action_token)
    flow.secrets["hashed token"] = signup["hashed_token"]
    otp = signup["email_otp"]
    flow.digits["OTP"] = otp
    wrong = "0" * len(otp) if otp != "0" * len(otp) else "1" * len(otp)
    verify = served.proxy + "/_sidecar/verify"
    async with http.post(verify, json={"type": "signup", "email": email, "token": wrong}) as r:
        assert r.status == 401
    async with http.post(verify, json={"type": "signup", "email": email, "token": otp}) as r:
        assert r.status == 200, await r.text()
        flow.cookie_from(r)
    assert (await flow.open_link(signup["action_link"]))[0] == 410

    async with http.post(
        served.admin + "/admin/generate_link",
        json={"type": "magiclink", "email": email},
        headers=served.admin_headers(),
    ) as response:
        assert response.status == 200, await response.text()
        magic = await response.json()
    flow.token("magic link token", parse_qs(urlsplit(magic["action_link"]).query)["token"][0])
    flow.secrets["magic hashed token"] = magic["hashed_token"]
    flow.digits["magic OTP"] = magic["email_otp"]
    body = {"type": "magiclink", "token_hash": magic["hashed_token"]}
    async with http.post(verify, json=body) as r:
        assert r.status == 200, await r.text()
        flow.cookie_from(r)


@pytest.mark.parametrize(
    ("trusted", "remote"), [("[127.0.0.1/32]", "203.0.113.7"), ("[10.0.0.0/8]", "127.0.0.1")]
)
async def test_access_remote_is_the_real_client_behind_a_trusted_proxy(
    tmp_path: Path, trusted: str, remote: str
) -> None:
    env = {**os.environ, "SIDECAR_PROXY__TRUSTED_PROXIES": trusted}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=env) as served,
        aiohttp.ClientSession() as http,
    ):
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Request-Id": "req-remote"}
        async with http.get(served.proxy + "/anything", headers=headers) as response:
            assert response.status == 401
        served.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await served.proc.wait()
    (line,) = [json.loads(x) for x in served.logs() if "req-remote" in x]
    assert line["remote"] == remote


def test_logging_access_false_silences_access_lines_only() -> None:
    """``logging.access: false``: no access line, and the other loggers keep the level."""
    root = logging.getLogger()
    level = root.level
    try:
        set_levels("info", access=False)
        assert not ACCESS.isEnabledFor(logging.INFO)
        assert AUDIT.isEnabledFor(logging.INFO)
        set_levels("info", access=True)
        assert ACCESS.isEnabledFor(logging.INFO)
    finally:
        root.setLevel(level)
        ACCESS.setLevel(logging.NOTSET)


def test_the_access_lines_info_check_follows_every_level_change() -> None:
    """The access line's INFO check reads ``logging``'s per-logger cache: it must answer as
    the logger's levels say after each change that empties that cache (a level set on the
    logger or a parent, ``logging.disable``, a logger disabled), cached or not."""
    parent = logging.getLogger("sidecar.test_levels")
    logger = logging.getLogger("sidecar.test_levels.access")
    root = logging.getLogger()
    saved = root.level

    def expected() -> bool:
        return (
            not logger.disabled
            and logging.root.manager.disable < logging.INFO
            and logger.getEffectiveLevel() <= logging.INFO
        )

    steps: list[Callable[[], None]] = [
        lambda: root.setLevel(logging.INFO),
        lambda: logger.setLevel(logging.WARNING),
        lambda: logger.setLevel(logging.NOTSET),
        lambda: parent.setLevel(logging.ERROR),
        lambda: parent.setLevel(logging.DEBUG),
        lambda: logging.disable(logging.INFO),
        lambda: logging.disable(logging.NOTSET),
        lambda: setattr(logger, "disabled", True),
        lambda: setattr(logger, "disabled", False),
        lambda: root.setLevel(logging.WARNING),
    ]
    seen = set()
    try:
        for step in steps:
            step()
            for _ in range(2):  # the first call may fill the cache, the second reads it
                assert _info_enabled(logger) is expected()
            seen.add(expected())
    finally:
        logging.disable(logging.NOTSET)
        root.setLevel(saved)
        parent.setLevel(logging.NOTSET)
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    assert seen == {True, False}
