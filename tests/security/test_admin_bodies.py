"""Admin request bodies: every malformed body is a precise 400 (or 413), never a mint; every
accepted body is minted exactly as asked."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from tests.harness import Sidecar, raw_http, running_sidecar
from tests.harness.config import ADMIN_KEY
from tests.security import casebook
from tests.security.fuzzing import fuzz

# -- bodies --------------------------------------------------------------------------------

J = "application/json"
MINT_BODY = b'{"userId": "attacker"}'
A = b'{"userId":"a",'  # a valid start, to which each case adds one bad field
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("text/plain", MINT_BODY, "content type"),
    ("application/x-www-form-urlencoded", b"userId=attacker", "form body"),
    (J, b"", "empty"),
    (J, b"[]", "array"),
    (J, b"null", "null"),
    (J, b'"userId"', "string"),
    (J, b"{", "truncated"),
    (J, b'{"userId":"a"} {"userId":"b"}', "two documents"),
    (J, A + b'"userId":"b"}', "duplicate key"),
    (J, A + b'"expireOffset":NaN,"expireMeasure":"days"}', "NaN"),
    (J, A + b'"expireOffset":Infinity,"expireMeasure":"days"}', "inf"),
    (J, b"[" * 100_00 + b"]" * 100_00, "deep nesting"),
    (J, b'{"userId":"\xff"}', "not UTF-8"),
    (J, b'\xef\xbb\xbf{"userId":"a"}', "BOM"),
    (J, '{"userId":"a"}'.encode("utf-16"), "UTF-16"),
    (J, b'{"userId":"\\ud800"}', "lone surrogate userId"),
    (J, b'{"userId":"a\\u0000b"}', "NUL in userId"),
    (J, b'{"userId":"a\\r\\nX-Forwarded-Role: Admin"}', "CRLF in userId"),
    (J, b'{"userId":"a\\u0085b"}', "NEL in userId"),
    (J, A + b'"additionalParams":{"tenant":"\\ud83d"}}', "surrogate param"),
    (J, A + b'"additionalParams":{"tenant":"x\\ny"}}', "LF in param"),
    (J, A + b'"additionalParams":{"role":"Nope"}}', "unknown role"),
    (J, A + b'"additionalParams":{"role":["Reusable"]}}', "role list"),
    (J, A + b'"additionalParams":{"isAdmin":"true"}}', "param not allowed"),
    (J, A + b'"additionalParams":{"tenant":{"a":1}}}', "object param"),
    (J, A + b'"module":"../admin"}', "module traversal"),
    (J, A + b'"module":"x#/display/y"}', "module fragment"),
    (J, A + b'"expireMeasure":"years","expireOffset":1}', "years"),
    (J, A + b'"expireMeasure":"days","expireOffset":31}', "too long"),
    (J, A + b'"expireMeasure":"days","expireOffset":1e400}', "1e400"),
    (J, A + b'"expireMeasure":"seconds","expireOffset":' + b"9" * 4000 + b"}", "huge int"),
    (J, A + b'"expireMeasure":"days","expireOffset":1.5}', "float offset"),
    (J, A + b'"expireMeasure":"days","expireOffset":true}', "bool offset"),
    (J, A + b'"expireMeasure":"days","expireOffset":0}', "zero offset"),
    (J, A + b'"expireMeasure":"days","expireOffset":-1}', "negative"),
    (J, A + b'"expireMeasure":"days","expireOffset":"1"}', "string offset"),
    (J, A + b'"expireMeasure":"days"}', "measure only"),
    (J, A + b'"oneTimeUse":"false"}', "string bool"),
    (J, A + b'"oneTimeUse":0}', "int bool"),
    (J, A + b'"admin":true}', "unknown field"),
    (J, b'{"userId":""}', "empty userId"),
    (J, b'{"userId":1}', "int userId"),
    (J, b'{"userId":"' + b"u" * 5000 + b'"}', "long userId"),
    (J, A + b'"additionalParams":{"tenant":"' + b"t" * 6000 + b'"}}', "long token"),
]  # fmt: skip


async def test_malformed_mint_bodies_are_a_precise_400(sidecar: Sidecar) -> None:
    through = []
    for content_type, body, name in BAD_BODIES:
        headers = {**sidecar.admin_headers, "Content-Type": content_type}
        async with sidecar.http.post(
            sidecar.admin_url + "/referstring", data=body, headers=headers
        ) as r:
            answer = await r.json(content_type=None)
            if r.status != 400 or "referString" in answer:
                through.append((name, r.status, answer))
            else:
                assert isinstance(answer.get("message"), str)
                assert answer["message"]
    casebook.record("admin", tried=len(BAD_BODIES), through=len(through))
    assert not through, through


async def test_bodies_above_the_limit_are_413_whether_announced_or_chunked(
    sidecar: Sidecar,
) -> None:
    big = b'{"userId":"' + b"u" * (sidecar.config.admin.max_body + 10) + b'"}'
    url = sidecar.admin_url + "/referstring"
    headers = {**sidecar.admin_headers, "Content-Type": "application/json"}
    async with sidecar.http.post(url, data=big, headers=headers) as r:
        assert r.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    async with sidecar.http.post(url, data=chunks(), headers=headers) as r:
        assert r.status == 413
    casebook.record("admin", tried=2)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_VALUES = {
    "userId": st.text(min_size=0, max_size=40) | JSON_VALUES,
    "additionalParams": st.dictionaries(
        st.sampled_from(["role", "tenant", "other", ""]),
        st.sampled_from(["Authenticated", "Confirm", "Reusable", "Nope", "acme"]) | JSON_VALUES,
        max_size=3,
    ) | JSON_VALUES,
    "expireMeasure": st.sampled_from(["seconds", "Minute", "HOURS", "day", "days ", "weeks", ""])
    | JSON_VALUES,
    "expireOffset": st.integers(-5, 10**7) | JSON_VALUES,
    "oneTimeUse": st.booleans() | JSON_VALUES,
    "module": st.text(max_size=20) | JSON_VALUES,
    "extra": JSON_VALUES,
}  # fmt: skip


@st.composite
def mint_bodies(draw: st.DrawFn) -> dict[str, object]:
    names = draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), max_size=5))
    return {name: draw(FIELD_VALUES[name]) for name in names}


@fuzz(120)
@given(body=mint_bodies())
async def test_any_mint_body_is_minted_faithfully_or_refused_with_400(
    sidecar: Sidecar, body: dict[str, object]
) -> None:
    url = sidecar.admin_url + "/referstring"
    async with sidecar.http.post(url, json=body, headers=sidecar.admin_headers) as r:
        answer = await r.json(content_type=None)
        ok = r.status == 400 or (r.status == 200 and _faithful(sidecar, body, answer))
        casebook.record("admin", through=int(not ok))
        assert ok, (r.status, body, answer)


def _faithful(sc: Sidecar, body: dict[str, object], answer: dict[str, str]) -> bool:
    claims = sc.services.codec.open(answer["referString"], sc.clock())
    params = body.get("additionalParams", {})
    assert isinstance(params, dict)
    role = params.get("role", sc.config.default_role)
    return (
        claims.subject == body["userId"]
        and isinstance(body["userId"], str)
        and str(body["userId"]).encode("utf-8", "strict") is not None
        and claims.role == role
        and set(claims.params) <= set(sc.config.roles[claims.role].params)
        and claims.module == body.get("module")
        and answer["id"] == claims.token_id
        and claims.expires_at - claims.issued_at <= sc.config.roles[claims.role].max_expiry
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [("POST", "/tokens/..%2f..%2fsessions/revoke", 400),
     ("POST", "/tokens/" + "a" * 200 + "/revoke", 400), ("POST", "/tokens/a%00b/revoke", 400),
     ("POST", "/tokens/%F0%9F%92%A9/revoke", 400),
     ("DELETE", "/sessions", 400), ("DELETE", "/sessions?user_id=", 400),
     ("GET", "/referstring", 405), ("GET", "/no-such-route", 404)],
)  # fmt: skip
async def test_other_admin_inputs_are_precise_4xx(
    sidecar: Sidecar, method: str, path: str, expected: int
) -> None:
    url = URL(sidecar.admin_url + path, encoded=True)
    async with sidecar.http.request(method, url, headers=sidecar.admin_headers) as r:
        casebook.record("admin", through=int(r.status != expected))
        assert r.status == expected, await r.text()
        assert r.content_type == "application/json"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "GZIP"])
@pytest.mark.parametrize("compressed", [True, False], ids=["coded", "plain"])
async def test_a_mint_body_with_a_content_encoding_is_a_400_through_either_front(
    tmp_path: Path, coding: str, compressed: bool
) -> None:
    """The admin port reads bodies as they came (no listener decodes them): a JSON body
    that says it is coded is refused, not minted from bytes the header calls something
    else — and the admin lean front (which would have minted a plain one) hands it over."""
    document = json.dumps({"userId": "u-coded"}).encode()
    body = gzip.compress(document) if compressed else document
    answers = []
    for lean in (True, False):
        overrides: dict[str, object] = {"admin": {"lean_front": lean}}
        async with running_sidecar(tmp_path / str(lean), overrides=overrides) as sc:
            request = (
                f"POST /referstring HTTP/1.1\r\nHost: 127.0.0.1:{sc.admin_port}\r\n"
                f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            response = await raw_http(sc.admin_port, request)
            answers.append((response.status, json.loads(response.body)))
    casebook.record("admin", through=int(answers[0][0] == 200))
    assert answers[0] == answers[1]
    status, refusal = answers[0]
    assert (status, refusal["error_code"]) == (400, "bad_json"), refusal
