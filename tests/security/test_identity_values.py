"""Identity values that HTTP parsers rewrite are refused at mint (issue #12, item 3).

``userId: " admin "`` used to be minted; the upstream then read ``X-Forwarded-User: admin``
(RFC 9110 strips the whitespace) while ``<prefix>/session`` said ``" admin "``. Every value
rendered into an identity header must reach the upstream byte for byte as the sidecar means
it. The counterpart here is aiohttp's C parser (llhttp) in the recording upstream: what it
hands the app is what an upstream reads.
"""

from __future__ import annotations

import pytest

from tests.harness import Sidecar
from tests.security import casebook

BAD_TEXT = [
    " admin",
    "admin ",
    " admin ",
    "\tadmin",
    "admin\u00a0",  # no-break space
    "\u2003admin",  # em space
    "admin\u3000",  # ideographic space
    "adm\u202ein",  # right-to-left override
    "\u202eadmin",
    "ad\u2066min\u2069",  # isolates
    "ad\u200bmin",  # zero-width space
    "admin\u200d",  # zero-width joiner
    "ad\u200cmin",  # zero-width non-joiner
    "\ufeffadmin",  # byte-order mark
    "ad\u00admin",  # soft hyphen
    "admin\u2028",  # line separator
    "ad\u2029min",  # paragraph separator
    "ad\u061cmin",  # Arabic letter mark
    "a\x00b",
    "a\r\nX-Evil: 1",
    "a\x85b",  # C1 next line
    "a\x7fb",
]
USER_ONLY = ["admin,bob", "admin, bob", ","]
GOOD_USERS = ["José Müller", "user 1", "用户", "o'brien", "a;b", "a=b"]
GOOD_PARAMS = ["acme, corp", "grp-a,grp-b", "Ünïcode tenant", "x"]


async def _mint(sidecar: Sidecar, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with sidecar.http.post(
        sidecar.admin_url + "/referstring", json=body, headers=sidecar.admin_headers
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [({"userId": v}, "userId") for v in BAD_TEXT + USER_ONLY]
    + [
        ({"userId": "u", "additionalParams": {"tenant": v}}, "additionalParams.tenant")
        for v in BAD_TEXT
    ],
)
async def test_rewritable_values_are_refused_at_mint(
    sidecar: Sidecar, body: dict[str, object], field: str
) -> None:
    status, answer = await _mint(sidecar, body)
    casebook.record("identity", through=int(status != 400))
    assert status == 400, answer
    assert answer["field"] == field
    assert str(answer["message"]).startswith(field + ":")


async def test_accepted_values_reach_the_upstream_byte_for_byte(sidecar: Sidecar) -> None:
    """Commas: refused in userId (list-reading upstreams), kept in params (lists are how
    a groups-like header is meant to be read; the sidecar sends the one copy)."""
    for user, tenant in zip(GOOD_USERS, GOOD_PARAMS * 2, strict=False):
        cookie = await sidecar.login(userId=user, additionalParams={"tenant": tenant})
        async with sidecar.http.get(
            sidecar.proxy_url + "/_sidecar/session", headers=sidecar.cookie_header(cookie)
        ) as resp:
            said = await resp.json()
        async with sidecar.http.get(
            sidecar.proxy_url + "/app", headers=sidecar.cookie_header(cookie)
        ) as resp:
            assert resp.status == 200
        seen = sidecar.upstream.requests[-1]
        # The wire carries UTF-8; the recording upstream decodes it as latin-1.
        as_read = [v.encode("latin-1").decode() for v in seen.values("X-Forwarded-User")]
        tenant_read = [v.encode("latin-1").decode() for v in seen.values("X-Forwarded-Tenant")]
        casebook.record("identity", through=int(as_read != [said["user_id"]]))
        assert said["user_id"] == user
        assert as_read == [user]
        assert said["params"] == {"tenant": tenant}
        assert tenant_read == [tenant]
