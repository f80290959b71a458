"""Path rules against real frameworks: Flask/Werkzeug and Express behind a real sidecar.

The oracle is the framework itself, not a model of it: each app has an ``/admin/<anything>``
handler that records every request it runs for (:mod:`tests.security.frameworks`). Over a
few hundred spellings of "a path under /admin" — dot segments raw and percent-encoded in
every case, backslashes, encoded slashes, duplicate slashes, ``;params``, encodings — sent
as plain requests and as WebSocket upgrades, by a session whose role denies ``/admin/**``
and by an anonymous client (``/static/**`` is public), the admin handler must never run.
And whatever the sidecar forwards reaches the framework as exactly the target it judged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import PUBLIC_URL, Sidecar, Upstream, raw_http, running_sidecar
from tests.security import casebook
from tests.security.frameworks import FRAMEWORKS, Framework, running_framework
from tests.security.test_paths import TRICKS

HOST = PUBLIC_URL.removeprefix("https://")
DOTS = ["..", "%2e%2e", "%2E%2E", "%2e%2E", ".%2e", ".%2E", "%2e.", "%2E.", "..;", "..;x=1",
        "%2e%2e;", "..%3b", "...", "..%20", ".", "%2e", "%2E", ".;"]  # fmt: skip
SEPARATORS = ["/", "%2f", "%2F", "\\", "%5c", "%5C"]
ESCAPES = [  # from a public or allowed prefix up into /admin
    f"{prefix}/{dot}{sep}admin/x"
    for prefix, dot, sep in itertools.product(["/static", "/app"], DOTS, SEPARATORS)
] + [
    "/admin/../static/x", "/admin/..%2fstatic/x", "/admin/%2e%2e/static/x", "/admin/.%2E/static/x",
    "/admin/x/../../app", "/admin/x/%2E%2E/%2e%2e/app", "/admin/./x", "/admin/%2e/x",
    "/static/x/../../admin/x", "/static/x/..%2f..%2fadmin/x", "/favicon.ico/../admin/x",
    "/static/%2e%2e/%2e%2e/static/../admin", "/static//../admin/x", "/static/.//../admin/x",
    "/admin//x", "/admin%2f", "/admin%2F..%2Fstatic", "/ADMIN/X", "/Admin/../static/x",
    "/static/%c0%ae%c0%ae/admin/x", "/static/%ef%bc%8e%ef%bc%8e/admin/x", "/admin\\..\\static",
    "/static\\..\\admin\\x", "//admin/x", "///admin/x", "/%2Fadmin/x", "/%2e/admin/x",
]  # fmt: skip
SPELLINGS = list(dict.fromkeys(ESCAPES + TRICKS))
# What the rules let through must reach the framework, byte for byte.
PUBLIC = ["/static/logo.png", "/static/a%2Fb", "/static/caf%C3%A9"]
SIGNED_IN = [*PUBLIC, "/app/ok", "/app/a%2Fb//c"]


@dataclass
class _External(Upstream):
    """A framework process started elsewhere: the stack neither starts nor stops it."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.fixture(scope="module", params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> Iterator[Framework]:
    with running_framework(request.param) as running:
        yield running


@pytest.fixture
async def behind(framework: Framework, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path, upstream=_External(port=framework.port)) as sc:
        yield sc


def _request(target: str, cookie: str | None, websocket: bool) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {HOST}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if websocket:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Origin: {PUBLIC_URL}",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def _attack(sc: Sidecar, fw: Framework, cookie: str | None, controls: list[str]) -> list[str]:
    """Send every spelling, plain and as an upgrade; what reached the admin handler or
    reached the framework as a target other than the one sent."""
    before = await fw.hits(sc.http)
    gate = asyncio.Semaphore(8)
    statuses: dict[str, int] = {}

    async def one(target: str, websocket: bool) -> None:
        async with gate:
            resp = await raw_http(sc.proxy_port, _request(target, cookie, websocket), quiet=2.0)
            statuses[target] = resp.status

    cases = [(t, ws) for t in SPELLINGS + controls for ws in (False, True)]
    await asyncio.gather(*(one(t, ws) for t, ws in cases))
    after = await fw.hits(sc.http)
    admin = after["admin"][len(before["admin"]) :]
    other = after["other"][len(before["other"]) :]
    strays = [t for t in other if t not in SPELLINGS and t not in controls]
    casebook.record("frameworks", tried=len(cases), through=len(admin) + len(strays))
    for control in controls:
        assert control in other, (fw.name, control, statuses.get(control), other[-10:])
    return admin + [f"forwarded as {t!r}" for t in strays]


async def test_framework_admin_handler_runs_when_asked_directly(
    framework: Framework, behind: Sidecar
) -> None:
    # Without the sidecar, the framework does route these raw spellings to /admin: the
    # attack list is a real one, and the recorder records.
    before = len((await framework.hits(behind.http))["admin"])
    for target in ("/admin/../static/x", "/admin/x/../../app", "/admin/%2e%2e/app"):
        await raw_http(framework.port, _request(target, None, False))
    assert len((await framework.hits(behind.http))["admin"]) == before + 3


async def test_denied_role_never_reaches_the_admin_handler(
    framework: Framework, behind: Sidecar
) -> None:
    cookie = f"{behind.cookie_name}={await behind.login()}"
    through = await _attack(behind, framework, cookie, SIGNED_IN)
    assert not through, (framework.name, through)


async def test_anonymous_request_never_reaches_the_admin_handler(
    framework: Framework, behind: Sidecar
) -> None:
    through = await _attack(behind, framework, None, PUBLIC)
    assert not through, (framework.name, through)
