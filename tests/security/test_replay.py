"""Replays and races: a one-time link makes exactly one session, whatever the attacker tries."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from sidecar.store.base import TokenState
from tests.harness import Sidecar, running_sidecar
from tests.security import casebook

RACERS = 500


async def fire(sc: Sidecar, http: aiohttp.ClientSession, token: str, method: str = "GET") -> int:
    url = sc.proxy_url + "/race"
    async with http.request(method, url, params={"refer": token}, allow_redirects=False) as r:
        await r.read()
        if r.status == 303:
            assert r.cookies.get(sc.cookie_name) is not None
        else:
            assert sc.cookie_name not in r.cookies
        return r.status


async def race(sidecars: list[Sidecar], token: str, n: int) -> Counter[int]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        statuses = await asyncio.gather(
            *(fire(sidecars[i % len(sidecars)], http, token) for i in range(n))
        )
    return Counter(statuses)


def check_one_winner(statuses: Counter[int], n: int) -> None:
    casebook.record("replay", tried=n, through=max(0, statuses[303] - 1))
    assert statuses[303] == 1, statuses
    assert statuses[410] == n - 1, statuses


async def test_concurrent_redemptions_of_a_one_time_link_make_exactly_one_session(
    sidecar: Sidecar,
) -> None:
    link = await sidecar.mint(userId="racer")
    check_one_winner(await race([sidecar], link["referString"], RACERS), RACERS)
    assert await sidecar.services.store.token_state(link["id"]) is TokenState.USED
    assert await sidecar.services.store.delete_user_sessions("racer") == 1
    assert sidecar.upstream.requests == []


@pytest.mark.redis
async def test_replicas_sharing_redis_let_exactly_one_redemption_through(
    tmp_path: Path, redis_url: str
) -> None:
    overrides: dict[str, object] = {"store": {"key_prefix": f"race-{tmp_path.name}:"}}
    async with (
        running_sidecar(tmp_path / "a", store_url=redis_url, overrides=overrides) as a,
        running_sidecar(
            tmp_path / "b", store_url=redis_url, overrides=overrides, keyset=a.keyset
        ) as b,
    ):
        link = await a.mint(userId="racer")
        check_one_winner(await race([a, b], link["referString"], RACERS), RACERS)
        assert await b.services.store.delete_user_sessions("racer") == 1


@pytest.mark.parametrize("role", ["Authenticated", "Confirm"])
async def test_head_and_other_methods_never_burn(sidecar: Sidecar, role: str) -> None:
    link = await sidecar.mint(additionalParams={"role": role})
    token = link["referString"]
    url = sidecar.proxy_url + "/"
    tried = 0
    for method in ("HEAD", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "PROPFIND"):
        async with sidecar.http.request(
            method, url, params={"refer": token}, allow_redirects=False
        ) as r:
            tried += 1
            assert r.status in (200, 405), (method, r.status)
            assert sidecar.cookie_name not in r.cookies
    if role == "Confirm":
        for _ in range(3):  # mail scanners fetch the page; only the button's POST burns
            async with sidecar.http.get(url, params={"refer": token}, allow_redirects=False) as r:
                tried += 1
                assert r.status == 200
                assert sidecar.cookie_name not in r.cookies
                assert token not in await r.text()
    assert await sidecar.services.store.token_state(link["id"]) is TokenState.UNUSED
    casebook.record("replay", tried=tried)
    method = "POST" if role == "Confirm" else "GET"
    async with sidecar.http.request(
        method, url, params={"refer": token}, allow_redirects=False
    ) as r:
        assert r.status == 303
    async with sidecar.http.request(
        method, url, params={"refer": token}, allow_redirects=False
    ) as r:
        casebook.record("replay", through=int(r.status != 410))
        assert r.status == 410


async def replay_status(sc: Sidecar, token: str, path: str = "/", **params: str) -> int:
    async with sc.http.get(
        sc.proxy_url + path, params={"refer": token, **params}, allow_redirects=False
    ) as r:
        await r.read()
        assert sc.cookie_name not in r.cookies or r.status == 303
        return r.status


async def test_a_used_link_is_refused_everywhere_and_in_every_spelling(sidecar: Sidecar) -> None:
    link = await sidecar.mint()
    token = link["referString"]
    await sidecar.redeem(token)
    spellings = [
        ("/", {}),
        ("/other/path", {}),
        ("/", {"x": "1"}),
        ("/static/app.js", {}),
        ("/_sidecar/../", {}),
    ]
    through = []
    for path, params in spellings:
        status = await replay_status(sidecar, token, path, **params)
        if status not in (400, 410):
            through.append((path, status))
    for raw in (
        f"?refer={token}/",
        f"?%72efer={token}",
        f"?refer={token}%2F",
        f"?x=1&refer={token}",
    ):
        async with sidecar.http.get(
            URL(sidecar.proxy_url + "/" + raw, encoded=True), allow_redirects=False
        ) as r:
            if r.status != 410:
                through.append((raw[:20], r.status))
    casebook.record("replay", tried=len(spellings) + 4, through=len(through))
    assert not through
    assert sidecar.upstream.requests == []


async def test_revoked_links_are_refused(sidecar: Sidecar) -> None:
    one_time = await sidecar.mint(userId="rev-1")
    reusable = await sidecar.mint(userId="rev-2", additionalParams={"role": "Reusable"})
    for link in (one_time, reusable):
        url = f"{sidecar.admin_url}/tokens/{link['id']}/revoke"
        async with sidecar.http.post(url, headers=sidecar.admin_headers) as r:
            assert r.status == 200
        async with sidecar.http.get(
            sidecar.proxy_url + "/",
            params={"refer": link["referString"]},
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as r:
            casebook.record("replay", through=int(r.status != 410))
            assert r.status == 410
            assert (await r.json())["error"] == "revoked"
            assert r.headers["Cache-Control"] == "no-store"
            assert "Set-Cookie" not in r.headers
    assert sidecar.upstream.requests == []


async def test_a_reusable_link_stops_after_revocation_but_its_sessions_end_separately(
    sidecar: Sidecar,
) -> None:
    link = await sidecar.mint(userId="multi", additionalParams={"role": "Reusable"})
    first = await sidecar.redeem(link["referString"])
    second = await sidecar.redeem(link["referString"])
    assert first != second
    async with sidecar.http.delete(
        sidecar.admin_url + "/sessions", params={"user_id": "multi"}, headers=sidecar.admin_headers
    ) as r:
        assert (await r.json())["ended"] == 2
    for cookie in (first, second):
        async with sidecar.http.get(
            sidecar.proxy_url + "/app", headers=sidecar.cookie_header(cookie)
        ) as r:
            casebook.record("replay", through=int(r.status != 401))
            assert r.status == 401
    assert sidecar.upstream.requests == []


async def test_expired_links_are_refused_and_not_burned(sidecar: Sidecar) -> None:
    link = await sidecar.mint(expireMeasure="seconds", expireOffset=30)
    sidecar.clock.advance(30)
    status = await replay_status(sidecar, link["referString"])
    casebook.record("replay", through=int(status != 410))
    assert status == 410
    assert await sidecar.services.store.token_state(link["id"]) is TokenState.UNUSED


async def test_a_logged_out_cookie_is_dead(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    async with sidecar.http.post(
        sidecar.proxy_url + "/_sidecar/logout",
        headers=sidecar.cookie_header(cookie),
        allow_redirects=False,
    ) as r:
        assert r.status == 303
    async with sidecar.http.get(
        sidecar.proxy_url + "/app", headers=sidecar.cookie_header(cookie)
    ) as r:
        casebook.record("replay", through=int(r.status != 401))
        assert r.status == 401


async def test_a_get_on_logout_does_not_end_the_session(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    async with sidecar.http.get(
        sidecar.proxy_url + "/_sidecar/logout", headers=sidecar.cookie_header(cookie)
    ) as r:
        assert r.status == 200
    async with sidecar.http.get(
        sidecar.proxy_url + "/_sidecar/session", headers=sidecar.cookie_header(cookie)
    ) as r:
        assert r.status == 200


async def test_sessions_expire_and_idle_out(sidecar: Sidecar) -> None:
    role = sidecar.config.roles["Authenticated"]
    idle = await sidecar.login()
    sidecar.clock.advance(role.idle_timeout + 1)
    lifetime = await sidecar.login()
    for _ in range(int(role.session_lifetime // (role.idle_timeout / 2)) + 2):
        sidecar.clock.advance(role.idle_timeout / 2)
        async with sidecar.http.get(
            sidecar.proxy_url + "/_sidecar/session", headers=sidecar.cookie_header(lifetime)
        ) as r:
            await r.read()
    for cookie in (idle, lifetime):
        async with sidecar.http.get(
            sidecar.proxy_url + "/_sidecar/session", headers=sidecar.cookie_header(cookie)
        ) as r:
            casebook.record("replay", through=int(r.status != 401))
            assert r.status == 401


async def test_forged_cookies_are_not_sessions(sidecar: Sidecar) -> None:
    real = await sidecar.login()
    forged = [
        "", "x", real[:-1], real + "A", real.upper(), real[::-1], "A" * 43, "../" + real,
        f'"{real}"x', real.replace(real[0], "-"), "%" + real[1:],
    ]  # fmt: skip
    for value in forged:
        if value == real:
            continue
        async with sidecar.http.get(
            sidecar.proxy_url + "/_sidecar/session", headers=sidecar.cookie_header(value)
        ) as r:
            casebook.record("replay", through=int(r.status != 401))
            assert r.status == 401, value


async def test_concurrent_verifications_of_one_auth_link_make_exactly_one_session(
    sidecar: Sidecar,
) -> None:
    link = await sidecar.generate_link(type="magiclink", email="race@example.org")
    url = URL(link["action_link"])
    target = sidecar.proxy_url + url.raw_path_qs
    for _ in range(3):  # link scanners and previews
        async with sidecar.http.head(target, allow_redirects=False) as r:
            assert sidecar.cookie_name not in r.cookies
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:

        async def one() -> int:
            async with http.get(target, allow_redirects=False) as r:
                await r.read()
                return r.status

        statuses = Counter(await asyncio.gather(*(one() for _ in range(100))))
    casebook.record("replay", tried=103, through=max(0, statuses[303] - 1))
    assert statuses[303] == 1, statuses
    assert statuses[410] == 99, statuses


async def test_a_token_is_only_accepted_where_its_kind_belongs(sidecar: Sidecar) -> None:
    refer = (await sidecar.mint(userId="kind"))["referString"]
    link = await sidecar.generate_link(type="magiclink", email="kind@example.org")
    link_token = URL(link["action_link"]).query["token"]
    attempts = [
        (sidecar.proxy_url + "/", {"refer": link_token}),
        (sidecar.proxy_url + "/_sidecar/verify", {"token": refer, "type": "magiclink"}),
        (sidecar.proxy_url + "/_sidecar/verify", {"token": link_token, "type": "recovery"}),
        (sidecar.proxy_url + "/_sidecar/verify", {"token": link_token, "type": "signup"}),
    ]
    through = []
    for url, params in attempts:
        async with sidecar.http.get(url, params=params, allow_redirects=False) as r:
            if r.status < 400 or sidecar.cookie_name in r.cookies:
                through.append((url, r.status))
    casebook.record("replay", tried=len(attempts), through=len(through))
    assert not through, through
    assert await sidecar.redeem(refer)  # neither was burned by the misuse


async def _revoke(sc: Sidecar, token_id: str) -> dict[str, object]:
    async with sc.http.post(
        f"{sc.admin_url}/tokens/{token_id}/revoke", headers=sc.admin_headers
    ) as resp:
        assert resp.status == 200
        answer: dict[str, object] = await resp.json()
        return answer


async def _proxied_status(sc: Sidecar, cookie: str) -> int:
    async with sc.http.get(sc.proxy_url + "/app", headers=sc.cookie_header(cookie)) as resp:
        return resp.status


async def test_revoking_a_link_ends_the_sessions_it_created(sidecar: Sidecar) -> None:
    """Issue #12 item 12: revoke used to stop only future redemptions; a reusable link's
    sessions (and a one-time link's one) went on. The answer says how many ended."""
    reusable = await sidecar.mint(userId="shared", additionalParams={"role": "Reusable"})
    cookies = [await sidecar.redeem(reusable["referString"]) for _ in range(3)]
    one_time = await sidecar.mint(userId="once")
    once_cookie = await sidecar.redeem(one_time["referString"])
    bystander = await sidecar.login(userId="bystander")
    for cookie in [*cookies, once_cookie, bystander]:
        assert await _proxied_status(sidecar, cookie) == 200

    answer = await _revoke(sidecar, reusable["id"])
    assert answer == {
        "id": reusable["id"],
        "previous": "unused",
        "state": "revoked",
        "sessions_ended": 3,
    }
    assert (await _revoke(sidecar, one_time["id"]))["sessions_ended"] == 1
    after = [await _proxied_status(sidecar, c) for c in [*cookies, once_cookie]]
    casebook.record("replay", tried=len(after), through=sum(s != 401 for s in after))
    assert after == [401] * len(after)
    assert await _proxied_status(sidecar, bystander) == 200
    async with sidecar.http.get(
        sidecar.proxy_url + "/", params={"refer": reusable["referString"]}, allow_redirects=False
    ) as resp:
        assert resp.status == 410
