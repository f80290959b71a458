"""Rate limits: mints per admin key, failed redemptions per client, OTP guesses per email and
per client — each a 429 with ``Retry-After``, counted in the store so replicas share them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.store.base import TokenState
from tests.harness import RawResponse, Sidecar, raw_http, running_sidecar
from tests.security import casebook

LIMITS: dict[str, object] = {
    "admin": {"mint_rate": "5/1m"},
    "proxy": {"failed_redeem_rate": "5/5m"},
    "links": {"otp_rate": "5/15m", "max_otp_attempts": 100},
}


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, redis_url: str | None, count: int, extra: dict[str, object] | None = None
) -> AsyncIterator[list[Sidecar]]:
    """``count`` sidecars sharing one store (Redis when given) and one clock reading."""
    overrides = {**LIMITS, **(extra or {})}
    if redis_url is not None:
        overrides["store"] = {"key_prefix": f"rl-{tmp_path.name}:"}
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            running_sidecar(tmp_path / "r0", store_url=redis_url, overrides=overrides)
        )
        group = [first]
        for i in range(1, count):
            group.append(
                await stack.enter_async_context(
                    running_sidecar(
                        tmp_path / f"r{i}",
                        store_url=redis_url,
                        overrides=overrides,
                        keyset=first.keyset,
                    )
                )
            )
        for sc in group[1:]:
            sc.clock.now = first.clock.now
        yield group


def advance(group: list[Sidecar], seconds: float) -> None:
    for sc in group:
        sc.clock.advance(seconds)


async def mint_status(sc: Sidecar) -> tuple[int, str | None]:
    async with sc.http.post(
        sc.admin_url + "/referstring", json={"userId": "u"}, headers=sc.admin_headers
    ) as r:
        return r.status, r.headers.get("Retry-After")


async def check_mint_limit(group: list[Sidecar]) -> None:
    statuses = [await mint_status(group[i % len(group)]) for i in range(5)]
    assert all(s == 200 for s, _ in statuses), statuses
    status, retry = await mint_status(group[-1])
    async with group[0].http.post(
        group[0].admin_url + "/admin/generate_link",
        json={"type": "magiclink", "email": "m@example.org"},
        headers=group[0].admin_headers,
    ) as r:
        link_status = r.status
    casebook.record("ratelimits", tried=2, through=int(status != 429) + int(link_status != 429))
    assert status == 429
    assert retry is not None
    assert 0 < int(retry) <= 60
    assert link_status == 429
    advance(group, 61)
    assert (await mint_status(group[0]))[0] == 200


async def test_mints_are_limited_per_admin_key(tmp_path: Path) -> None:
    async with replicas(tmp_path, None, 1) as group:
        await check_mint_limit(group)


@pytest.mark.redis
async def test_the_mint_limit_is_global_across_replicas(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, redis_url, 2) as group:
        await check_mint_limit(group)


async def redeem_raw(sc: Sidecar, token: str, extra: str = "") -> RawResponse:
    data = (
        f"GET /?refer={token} HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n{extra}"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    return await raw_http(sc.proxy_port, data)


async def failed_redeem(sc: Sidecar, token: str, extra: str = "") -> tuple[int, str | None]:
    resp = await redeem_raw(sc, token, extra)
    return resp.status, resp.header("Retry-After")


def reason(resp: RawResponse) -> str:
    """The ``error`` of a JSON failure answer."""
    error: str = json.loads(resp.body)["error"]
    return error


SPOOFED_CLIENTS = [
    "",
    "X-Forwarded-For: 203.0.113.{n}\r\n",
    "X-Real-IP: 203.0.113.{n}\r\n",
    "Forwarded: for=203.0.113.{n}\r\n",
    "True-Client-IP: 203.0.113.{n}\r\n",
]


async def check_failed_redeem_limit(group: list[Sidecar]) -> None:
    good = await group[0].mint(userId="victim-of-the-limit")
    for n in range(5):
        resp = await redeem_raw(group[n % len(group)], "not-a-token")
        assert (resp.status, reason(resp)) == (401, "malformed")
    through = 0
    for n, extra in enumerate(SPOOFED_CLIENTS):
        for sc in group:
            status, retry = await failed_redeem(sc, "not-a-token", extra.format(n=n))
            through += int(status != 429 or retry is None or not 1 <= int(retry) <= 300)
    casebook.record("ratelimits", tried=len(SPOOFED_CLIENTS) * len(group), through=through)
    assert through == 0
    # The limit only slows failures: a valid link from the blocked address still redeems
    # (issue #12 item 11), and replaying it is a failure again, so 429.
    status, _ = await failed_redeem(group[-1], good["referString"])
    assert status == 303
    assert await group[0].services.store.token_state(good["id"]) is TokenState.USED
    assert (await failed_redeem(group[0], good["referString"]))[0] == 429
    advance(group, 301)
    resp = await redeem_raw(group[0], good["referString"])
    assert (resp.status, reason(resp)) == (410, "used")


async def test_failed_redemptions_are_limited_per_client(tmp_path: Path) -> None:
    async with replicas(tmp_path, None, 1) as group:
        await check_failed_redeem_limit(group)


async def test_one_address_locked_out_still_redeems_every_valid_link(tmp_path: Path) -> None:
    """Behind an ingress without ``trusted_proxies`` every user shares its address: one
    person's 5 bad links must not lock the next 20 users out of theirs."""
    extra: dict[str, object] = {"admin": {"mint_rate": "1000/1m"}}
    async with replicas(tmp_path, None, 1, extra) as (sc,):
        for _ in range(6):
            await failed_redeem(sc, "typo")
        assert (await failed_redeem(sc, "typo"))[0] == 429
        links = [await sc.mint(userId=f"user-{n}") for n in range(20)]
        statuses = [(await failed_redeem(sc, link["referString"]))[0] for link in links]
        casebook.record("ratelimits", tried=len(links), through=statuses.count(429))
        assert statuses == [303] * len(links)


async def test_behind_a_trusted_ingress_each_user_has_their_own_budget(tmp_path: Path) -> None:
    """With ``proxy.trusted_proxies`` naming the ingress (as the shipped manifests do), the
    limit counts the address the ingress saw, not the ingress's own."""
    proxy = {"failed_redeem_rate": "5/5m", "trusted_proxies": ["127.0.0.1/32"]}
    extra: dict[str, object] = {"proxy": proxy}
    async with replicas(tmp_path, None, 1, extra) as (sc,):
        attacker = "X-Forwarded-For: 203.0.113.9\r\n"
        for _ in range(6):
            await failed_redeem(sc, "guess", attacker)
        assert (await failed_redeem(sc, "guess", attacker))[0] == 429
        status, _ = await failed_redeem(sc, "typo", "X-Forwarded-For: 198.51.100.7\r\n")
        casebook.record("ratelimits", through=int(status == 429))
        assert status == 401


@pytest.mark.redis
async def test_the_failed_redemption_limit_is_global_across_replicas(
    tmp_path: Path, redis_url: str
) -> None:
    async with replicas(tmp_path, redis_url, 2) as group:
        await check_failed_redeem_limit(group)


async def guess(sc: Sidecar, email: str, otp: str) -> tuple[int, str | None]:
    async with sc.http.post(
        sc.proxy_url + "/_sidecar/verify",
        json={"type": "magiclink", "email": email, "token": otp},
        headers={"Accept": "application/json"},
    ) as r:
        return r.status, r.headers.get("Retry-After")


def wrong(otp: str, n: int) -> str:
    """The n-th wrong code for ``otp`` (never ``otp`` itself for n < 10**len(otp) - 1)."""
    return f"{(int(otp) + n + 1) % 10 ** len(otp):0{len(otp)}d}"


async def check_otp_limit(group: list[Sidecar]) -> None:
    link = await group[0].generate_link(type="magiclink", email="guess@example.org")
    otp = link["email_otp"]
    for n in range(5):
        status, _ = await guess(group[n % len(group)], "guess@example.org", wrong(otp, n))
        assert status == 401
    through = 0
    for sc in group:
        status, retry = await guess(sc, "guess@example.org", otp)  # even the right code
        through += int(status != 429 or retry is None)
        status, _ = await guess(sc, "GUESS@example.org", otp)  # another spelling, same email
        through += int(status != 429)
    casebook.record("ratelimits", tried=2 * len(group), through=through)
    assert through == 0
    advance(group, 15 * 60 + 1)
    assert (await guess(group[-1], "guess@example.org", otp))[0] == 200


async def test_otp_guesses_are_limited_per_email(tmp_path: Path) -> None:
    async with replicas(tmp_path, None, 1) as group:
        await check_otp_limit(group)


@pytest.mark.redis
async def test_the_otp_limit_is_global_across_replicas(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, redis_url, 2) as group:
        await check_otp_limit(group)


async def test_otp_guesses_are_limited_per_client_across_emails(tmp_path: Path) -> None:
    extra: dict[str, object] = {"admin": {"mint_rate": "1000/1m"}}
    async with replicas(tmp_path, None, 1, extra) as (sc,):
        links = [
            await sc.generate_link(type="magiclink", email=f"spray{i}@example.org")
            for i in range(7)
        ]
        statuses = [
            (await guess(sc, f"spray{i}@example.org", wrong(link["email_otp"], 0)))[0]
            for i, link in enumerate(links)
        ]
        casebook.record("ratelimits", through=int(statuses[-1] != 429))
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429, 429]


async def test_a_link_dies_after_max_otp_attempts_even_for_the_right_code(
    tmp_path: Path,
) -> None:
    extra: dict[str, object] = {"links": {"otp_rate": "1000/15m", "max_otp_attempts": 3}}
    async with replicas(tmp_path, None, 1, extra) as (sc,):
        link = await sc.generate_link(type="magiclink", email="lock@example.org")
        for n in range(3):
            assert (await guess(sc, "lock@example.org", wrong(link["email_otp"], n)))[0] == 401
        status, _ = await guess(sc, "lock@example.org", link["email_otp"])
        casebook.record("ratelimits", through=int(status == 200))
        assert status in (401, 410)
