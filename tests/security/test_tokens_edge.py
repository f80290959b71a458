"""Forged tokens at the HTTP edge: a clean 401, no session, no burn, nothing forwarded; key
rotation and removal seen from the proxy port."""

from __future__ import annotations

from pathlib import Path

from hypothesis import assume, given
from hypothesis import strategies as st

from sidecar.store.base import TokenState
from sidecar.tokens.keys import KeySet
from tests.harness import Sidecar, running_sidecar
from tests.security import casebook
from tests.security.fuzzing import B64URL, SEGMENTS, b64, fuzz, unb64

# -- the HTTP edge ----------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    if draw(st.booleans()):
        segment = draw(st.sampled_from(SEGMENTS))
        raw = bytearray(unb64(parts[segment]))
        raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
        parts[segment] = b64(bytes(raw))
        return ".".join(parts)
    position = draw(st.integers(0, len(token) - 1))
    text = draw(st.text(st.sampled_from(B64URL + "."), min_size=1, max_size=4))
    mutated = token[:position] + text + token[position + draw(st.integers(0, 4)) :]
    assume(mutated != token)
    return mutated


@fuzz(100)
@given(data=st.data())
async def test_forged_tokens_are_a_clean_401_at_the_proxy_with_no_session(
    sidecar: Sidecar, data: st.DataObject
) -> None:
    if "token" not in sidecar.memo:
        link = await sidecar.mint(userId="fuzz-victim")
        sidecar.memo |= {"token": link["referString"], "id": link["id"]}
    forged = data.draw(mutations(sidecar.memo["token"]), label="forged")
    async with sidecar.http.get(
        sidecar.proxy_url + "/app",
        params={"refer": forged},
        headers={"Accept": "application/json"},
        allow_redirects=False,
    ) as r:
        body = await r.json()
        ok = (
            r.status == 401
            and body.get("error") in ("malformed", "tampered", "unknown_key")
            and sidecar.cookie_name not in r.cookies
            and forged not in await r.text()
        )
        casebook.record("tokens", through=int(not ok))
        assert ok, (r.status, body)
    store = sidecar.services.store
    assert await store.token_state(sidecar.memo["id"]) is TokenState.UNUSED
    assert await store.delete_user_sessions("fuzz-victim") == 0
    assert sidecar.upstream.requests == []


async def test_a_removed_key_rejects_its_links_at_the_proxy(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as old:
        link = await old.mint(userId="rotated")
        old_keyset = old.keyset
    rotated = old_keyset.with_new_key("k-sec-2")
    async with running_sidecar(tmp_path / "rotated", keyset=rotated) as new:
        # rotation: the old link still works on a replica holding old and new keys
        assert await new.redeem(link["referString"])
        fresh = await new.mint(userId="rotated")
    retired = KeySet(active_kid="k-sec-2", keys={"k-sec-2": rotated.keys["k-sec-2"]})
    async with running_sidecar(tmp_path / "retired", keyset=retired) as last:
        async with last.http.get(
            last.proxy_url + "/",
            params={"refer": link["referString"]},
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as r:
            casebook.record("tokens", through=int(r.status != 401))
            assert r.status == 401
            assert (await r.json())["error"] == "unknown_key"
        assert await last.redeem(fresh["referString"])
