"""A reload that narrows the public origin takes effect at once, or says it needs a restart.

``public_url``, ``proxy.allowed_hosts`` and ``proxy.allowed_origins`` are not restart-only
(:data:`sidecar.reload.RESTART_ONLY`): the reload line reports them as changed. So the
running listener must answer by the new values — an operator who drops a host or a
partner origin on SIGHUP must not keep serving it silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from sidecar.reload import changes
from sidecar.store.sqlite import SQLiteStore
from tests.harness import raw_http, running_sidecar
from tests.security import casebook

PARTNER = "https://partner.example.com"
WIDE: dict[str, object] = {
    "proxy": {"allowed_hosts": ["127.0.0.1", "old.example.com"], "allowed_origins": [PARTNER]}
}


def _get(host: str) -> bytes:
    return f"GET /static/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def _logout(origin: str) -> bytes:
    return (
        "POST /_sidecar/logout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        f"Origin: {origin}\r\nConnection: close\r\n\r\n"
    ).encode()


def _auth(host: str) -> bytes:
    return (
        "GET /_sidecar/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Original-URI: /static/x\r\n"
        f"X-Forwarded-Host: {host}\r\nConnection: close\r\n\r\n"
    ).encode()


async def test_narrowing_hosts_and_origins_on_a_reload_applies_at_once(tmp_path: Path) -> None:
    overrides = {**WIDE, "proxy": {**WIDE["proxy"], "trusted_proxies": ["127.0.0.1/32"]}}  # type: ignore[dict-item]
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        port = sc.proxy_port
        assert (await raw_http(port, _get("old.example.com"))).status == 200
        assert (await raw_http(port, _logout(PARTNER))).status == 303
        assert (await raw_http(port, _auth("old.example.com"))).status == 200

        old = sc.services.config
        new = dataclasses.replace(
            old,
            proxy=dataclasses.replace(old.proxy, allowed_hosts=("127.0.0.1",), allowed_origins=()),
        )
        reported = {c.path: c.needs_restart for c in changes(old, new)}
        assert reported == {"proxy.allowed_hosts": False, "proxy.allowed_origins": False}
        sc.services.reconfigure(new)  # what a SIGHUP's reload applies

        still = []
        if (status := (await raw_http(port, _get("old.example.com"))).status) != 421:
            still.append(("Host old.example.com", status))
        if (status := (await raw_http(port, _logout(PARTNER))).status) != 403:
            still.append(("logout from the partner origin", status))
        if (status := (await raw_http(port, _auth("old.example.com"))).status) != 403:
            still.append(("forward-auth for old.example.com", status))
        assert (await raw_http(port, _get("127.0.0.1"))).status == 200  # what stays, stays
    casebook.record("hosts", tried=3, through=len(still))
    assert not still, still


async def test_options_bound_at_start_are_reported_as_needing_a_restart(tmp_path: Path) -> None:
    """The forwarder and the listeners take these once; a reload that called them changed
    would leave the old bound in force while the log says the new one is."""
    async with running_sidecar(tmp_path) as sc:
        old = sc.services.config
        bound = {
            "send_timeout": 7.0,
            "request_head_timeout": 3.0,
            "keepalive_timeout": 2.0,
            "max_client_connections": 17,
        }
        new = dataclasses.replace(old, proxy=dataclasses.replace(old.proxy, **bound))  # type: ignore[arg-type]
        reported = {c.path: c.needs_restart for c in changes(old, new)}
    live = [path for path, restart in reported.items() if not restart]
    casebook.record("config", tried=len(bound), through=len(live))
    assert set(reported) == {f"proxy.{name}" for name in bound}
    assert not live, live


class _ReloadDuringTouch(SQLiteStore):
    """A real SQLite store that runs ``during_touch`` while a session's last_seen is being
    written: a reload landing in the middle of a request's session lookup."""

    during_touch: Callable[[], None] | None = None

    async def touch_session(self, key: str, now: float) -> None:
        if self.during_touch is not None:
            self.during_touch()
            self.during_touch = None
        await super().touch_session(key, now)


async def test_a_role_removed_while_a_request_looks_up_its_session_is_refused(
    tmp_path: Path,
) -> None:
    """The session was read under the old roles, the rules are the new ones: the request
    must be refused (403), never a 500 from a rule table without the role."""
    store = _ReloadDuringTouch(str(tmp_path / "race.db"))
    overrides: dict[str, object] = {"proxy": {"trusted_proxies": ["127.0.0.1/32"]}}
    async with running_sidecar(tmp_path, store=store, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login(additionalParams={'role': 'Narrow'})}"
        old = sc.services.config
        without = dataclasses.replace(
            old, roles={k: v for k, v in old.roles.items() if k != "Narrow"}
        )
        answers: list[tuple[str, int, int]] = []
        for target, extra in (
            ("/app/x", ""),
            ("/_sidecar/auth", "X-Original-URI: /app/x\r\nX-Forwarded-Host: app.example.com\r\n"),
        ):
            sc.services.reconfigure(old)  # drops the session cache
            sc.clock.advance(120)  # last_seen is due to be written: the lookup awaits it
            store.during_touch = lambda: sc.services.reconfigure(without)
            data = (
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n{extra}"
                "Connection: close\r\n\r\n"
            ).encode()
            before = len(sc.upstream.requests)
            answer = await raw_http(sc.proxy_port, data)
            assert store.during_touch is None, "the reload ran inside the lookup"
            answers.append((target, answer.status, len(sc.upstream.requests) - before))
    casebook.record("config", tried=2, through=sum(a[1] != 403 for a in answers))
    assert answers == [("/app/x", 403, 0), ("/_sidecar/auth", 403, 0)]
