"""Tokens: round trip, tampering, expiry, header variants, the 4,096 limit, and interop
with jwcrypto (a JOSE library: the codec itself is a few lines around AES-GCM)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto import jwe as jc_jwe
from jwcrypto import jwk as jc_jwk

from sidecar.tokens.b64 import b64decode
from sidecar.tokens.codec import (
    _CANONICAL,
    MAX_TOKEN_LENGTH,
    Claims,
    ExpiredToken,
    MalformedToken,
    TamperedToken,
    TokenCodec,
    TokenError,
    TokenTooLong,
    UnknownKey,
    _claims,
    _load_claims,
    _parsed_claims,
    claims_json,
    has_control,
    new_token_id,
)
from sidecar.tokens.keys import KeySet, generate_keyset
from tests.harness.forked import made_in_a_forked_child
from tests.security.fuzzing import fuzz

NOW = 1_800_000_000
KEYSET = generate_keyset("k1")
CODEC = TokenCodec(KEYSET)


def claims(**changes: object) -> Claims:
    fields: dict[str, object] = {
        "token_id": new_token_id(),
        "subject": "0000000abc",
        "role": "Authenticated",
        "issued_at": NOW,
        "expires_at": NOW + 3600,
        "one_time": True,
        "kind": "refer",
        "params": {"tenant": "acme"},
        "module": "5e9f83275349fc020f8db299",
    }
    fields.update(changes)
    return Claims(**fields)  # type: ignore[arg-type]  # the table above has the right types


def jwcrypto_key(keyset: KeySet, kid: str = "k1") -> jc_jwk.JWK:
    jwks = json.loads(keyset.to_json())["keys"]
    return jc_jwk.JWK(**next(k for k in jwks if k["kid"] == kid))


def jwcrypto_token(header: dict[str, object], payload: dict[str, object] | bytes) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    token = jc_jwe.JWE(raw, protected=json.dumps(header))
    token.add_recipient(jwcrypto_key(KEYSET))
    return str(token.serialize(compact=True))


def b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_round_trip() -> None:
    original = claims(email="a@example.test", redirect_to="https://app.example.test/x")
    token = CODEC.seal(original)
    assert CODEC.open(token, NOW) == original
    assert len(token) < MAX_TOKEN_LENGTH
    assert token.count(".") == 4


def test_the_token_is_encrypted() -> None:
    token = CODEC.seal(claims(subject="visible-user-name"))
    assert "visible-user-name" not in token
    assert b"visible-user-name" not in base64.urlsafe_b64decode(token.split(".")[3] + "===")


def test_every_token_differs() -> None:
    same = claims()
    assert CODEC.seal(same) != CODEC.seal(same)


@pytest.mark.parametrize("part", [0, 2, 3, 4])
def test_tampering_is_detected(part: int) -> None:
    token = CODEC.seal(claims())
    parts = token.split(".")
    segment = parts[part]
    # Flip a bit in the middle of the segment (the last character may only carry padding bits).
    i = len(segment) // 2
    parts[part] = segment[:i] + ("A" if segment[i] != "A" else "B") + segment[i + 1 :]
    with pytest.raises((TamperedToken, MalformedToken, UnknownKey)):
        CODEC.open(".".join(parts), NOW)


def test_header_swapped_for_another_valid_one_fails() -> None:
    # The protected header is authenticated (it is the AAD): typ added → tag mismatch.
    token = CODEC.seal(claims())
    parts = token.split(".")
    parts[0] = b64({"alg": "dir", "enc": "A256GCM", "kid": "k1", "typ": "JWT"})
    with pytest.raises(TamperedToken):
        CODEC.open(".".join(parts), NOW)


def test_expiry_uses_the_injected_now() -> None:
    token = CODEC.seal(claims(expires_at=NOW + 60))
    assert CODEC.open(token, NOW + 59).subject == "0000000abc"
    with pytest.raises(ExpiredToken) as info:
        CODEC.open(token, NOW + 60)
    assert info.value.reason == "expired"
    assert info.value.claims.expires_at == NOW + 60


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"alg": "dir", "enc": "A256GCM"}, UnknownKey),
        ({"alg": "dir", "enc": "A256GCM", "kid": "other"}, UnknownKey),
        ({"alg": "dir", "enc": "A256GCM", "kid": 1}, UnknownKey),
        ({"alg": "dir", "enc": "A256GCM", "kid": "k1", "zip": "DEF"}, MalformedToken),
        ({"alg": "dir", "enc": "A256GCM", "kid": "k1", "crit": ["exp"], "exp": 1}, MalformedToken),
        ({"alg": "dir", "enc": "A256GCM", "kid": "k1", "jku": "https://x"}, MalformedToken),
    ],
)
def test_header_variants_made_by_jwcrypto(
    header: dict[str, object], error: type[Exception]
) -> None:
    token = jwcrypto_token(header, claims().to_json())
    with pytest.raises(error):
        CODEC.open(token, NOW)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "enc": "A256GCM", "kid": "k1"},
        {"alg": "dir", "enc": "A128GCM", "kid": "k1"},
        {"alg": "dir", "enc": "A256CBC-HS512", "kid": "k1"},
        {"alg": "A256KW", "enc": "A256GCM", "kid": "k1"},
        {"alg": "dir", "kid": "k1"},
    ],
)
def test_other_algorithms_are_refused_before_decryption(header: dict[str, object]) -> None:
    parts = CODEC.seal(claims()).split(".")
    parts[0] = b64(header)
    with pytest.raises(MalformedToken, match="unsupported alg/enc"):
        CODEC.open(".".join(parts), NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c.d",
        "a.b.c.d.e",  # an encrypted key is never present with alg dir
        "a..c.d.e.f",
        "....",
        "@@@..a.b.c",
        "W10..a.b.c",  # header is a JSON array
        "x" * MAX_TOKEN_LENGTH,
    ],
)
def test_malformed(token: str) -> None:
    with pytest.raises(MalformedToken):
        CODEC.open(token, NOW)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        {"sub": "x"},
        {**claims().to_json(), "iat": "yesterday"},
        {**claims().to_json(), "one_time": "yes"},
        {**claims().to_json(), "params": {"a": 1}},
        {**claims().to_json(), "module": 5},
        {**claims().to_json(), "exp": True},
    ],
)
def test_claims_with_the_wrong_shape(payload: dict[str, object] | bytes) -> None:
    token = jwcrypto_token({"alg": "dir", "enc": "A256GCM", "kid": "k1"}, payload)
    with pytest.raises(MalformedToken):
        CODEC.open(token, NOW)


@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_token_errors(text: str) -> None:
    with pytest.raises(TokenError):
        CODEC.open(text, NOW)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=3))
def test_arbitrary_segments_only_raise_token_errors(junk: bytes, part: int) -> None:
    parts = CODEC.seal(claims()).split(".")
    index = (0, 2, 3, 4)[part]
    parts[index] = base64.urlsafe_b64encode(junk).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        CODEC.open(".".join(parts), NOW)


def test_too_long_to_mint() -> None:
    big = claims(params={f"p{i}": "x" * 100 for i in range(30)})
    with pytest.raises(TokenTooLong) as info:
        CODEC.seal(big)
    assert info.value.length >= MAX_TOKEN_LENGTH
    assert "4096" in str(info.value)


def test_just_under_the_limit_mints() -> None:
    low, high = 0, 4000
    while low < high:  # the largest subject whose token still fits
        mid = (low + high + 1) // 2
        try:
            CODEC.seal(claims(subject="u" * mid))
            low = mid
        except TokenTooLong:
            high = mid - 1
    token = CODEC.seal(claims(subject="u" * low))
    assert MAX_TOKEN_LENGTH - 60 < len(token) < MAX_TOKEN_LENGTH
    with pytest.raises(TokenTooLong):
        CODEC.seal(claims(subject="u" * (low + 1)))


# -- the sealed payload ------------------------------------------------------------------

_TEXT = st.text(max_size=12)  # any code point: quotes, backslashes, controls, surrogates


@given(
    subject=_TEXT,
    params=st.dictionaries(_TEXT, _TEXT, max_size=3),
    module=st.none() | _TEXT,
    email=st.none() | _TEXT,
    redirect_to=st.none() | _TEXT,
    one_time=st.booleans(),
    issued_at=st.integers(0, 2**40 - 1),
)
def test_the_payload_is_what_json_dumps_writes(
    subject: str,
    params: dict[str, str],
    module: str | None,
    email: str | None,
    redirect_to: str | None,
    one_time: bool,
    issued_at: int,
) -> None:
    """claims_json is written by hand (every mint seals one): byte for byte json.dumps's."""
    c = claims(
        subject=subject, params=params, module=module, email=email, redirect_to=redirect_to,
        one_time=one_time, issued_at=issued_at, expires_at=issued_at + 60,
    )  # fmt: skip
    assert claims_json(c) == json.dumps(c.to_json(), separators=(",", ":"))


def test_a_token_is_base64url_segments_and_dots() -> None:
    """What the mint's answer writes unescaped (MintedLink.answer_text) relies on it."""
    token = CODEC.seal(claims(subject='"\\\n\u2028é', params={"q": '"\\'}))
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)


# -- interop with jwcrypto ---------------------------------------------------------------


def test_jwcrypto_opens_our_token() -> None:
    original = claims()
    token = CODEC.seal(original)
    opened = jc_jwe.JWE()
    opened.deserialize(token, key=jwcrypto_key(KEYSET))
    assert opened.jose_header == {"alg": "dir", "enc": "A256GCM", "kid": "k1"}
    doc = json.loads(opened.payload)
    assert doc["jti"] == original.token_id
    assert doc["sub"] == "0000000abc"
    assert doc["role"] == "Authenticated"
    assert doc["params"] == {"tenant": "acme"}
    assert doc["module"] == "5e9f83275349fc020f8db299"
    assert doc["iat"] == NOW
    assert doc["exp"] == NOW + 3600
    assert doc["one_time"] is True
    assert doc["kind"] == "refer"


def test_we_open_a_jwcrypto_token() -> None:
    original = claims(kind="magiclink", email="a@example.test", module=None)
    token = jwcrypto_token({"alg": "dir", "enc": "A256GCM", "kid": "k1"}, original.to_json())
    assert CODEC.open(token, NOW) == original


def test_jwcrypto_with_the_wrong_key_fails() -> None:
    token = CODEC.seal(claims())
    other = jwcrypto_key(generate_keyset("k1"))
    opened = jc_jwe.JWE()
    with pytest.raises(jc_jwe.InvalidJWEData):
        opened.deserialize(token, key=other)


def test_a_token_id_is_never_taken_for_a_command_line_option() -> None:
    """``sidecar revoke <id>``: an id beginning with ``-`` would be read as an option (one
    in 64 did, and the quick start's revoke printed nothing). 128 bits, base64url."""
    ids = [new_token_id() for _ in range(20_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_token_id_is_its_mint_time_then_80_random_bits() -> None:
    """Ids begin with their mint time (ids minted close together share their first
    characters, and the store's B-trees take them near each other): the first 48 bits are
    the time in milliseconds, the other 80 differ between ids of one millisecond. The time
    is compared decoded: base64url's alphabet is not in ASCII order ("z" comes before "0"
    in it), so the text of two ids need not sort as their times do."""
    before = int(time.time() * 1000)
    ids = [new_token_id() for _ in range(500)]
    after = int(time.time() * 1000)
    times = [int.from_bytes(b64decode(i)[:6], "big") for i in ids]
    assert times == sorted(times)
    assert before <= times[0]
    assert times[-1] <= after
    tails = [b64decode(i)[6:] for i in ids]
    assert len(set(tails)) == len(tails)
    assert all(len(t) == 10 for t in tails)
    while int(time.time() * 1000) <= after:  # the next millisecond
        pass
    later = int.from_bytes(b64decode(new_token_id())[:6], "big")
    assert later > times[-1]


def _ids_in_a_forked_child(count: int) -> list[str]:
    return made_in_a_forked_child(new_token_id, count)


def test_token_ids_drawn_before_a_fork_are_not_handed_out_by_the_child() -> None:
    """The random parts are drawn in batches: a worker forked while its supervisor holds
    some must not hand them out too (two links with one id would share a burn)."""
    new_token_id()  # this process now holds the rest of a batch
    child = _ids_in_a_forked_child(200)
    own = [new_token_id() for _ in range(200)]
    assert len(child) == 200
    tails = {b64decode(i)[6:] for i in child} | {b64decode(i)[6:] for i in own}
    assert len(tails) == 400


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    """JSON texts as json.loads takes them: any encoding it sniffs, whitespace around,
    escaped or raw non-ASCII, and sometimes a byte changed or cut."""
    text = json.dumps(draw(_JSON), ensure_ascii=draw(st.booleans()))
    space = st.sampled_from(["", " ", "\n", "\t\r "])
    text = draw(space) + text + draw(space)
    codec = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]))
    raw = text.encode(codec, "surrogatepass")
    if raw and draw(st.booleans()):
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(max_size=2)) + raw[at + 1 :]
    return raw


def _outcome(raw: bytes, load: Callable[[bytes], object]) -> tuple[str, str]:
    try:
        return "value", repr(load(raw))
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


@fuzz(3000)
@given(raw=_documents() | st.binary(max_size=40) | st.just(b'{"a": "\xed\xa0\x80"}'))
def test_claims_are_read_as_json_loads_reads_them(raw: bytes) -> None:
    """The claims' direct scan gives json.loads's value or error for any bytes."""
    assert _outcome(raw, _load_claims) == _outcome(raw, json.loads)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@fuzz(3000)
@given(st.text() | st.text(st.characters(max_codepoint=0x7F)) | st.text("a~ \x1f\x7f\x80\x9f"))
def test_the_control_rule_is_the_regular_expression(text: str) -> None:
    """has_control's ASCII shortcut (the unprintable characters) answers as the rule's
    regular expression does, for any text."""
    assert has_control(text) == (_CONTROL.search(text) is not None)


# Printable ASCII without a quote or backslash most often (what the canonical match
# reads), and one time in eight: quotes, backslashes, controls, non-ASCII, empty and long
# strings (what it must leave to json.loads).
_PLAIN_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    min_size=1,
    max_size=12,
)
_ODD_TEXT = (
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)
    | st.text(st.sampled_from('ab-_~ "\\\x7f\x1f\x85é'), min_size=1, max_size=6)
    | st.text(max_size=12)
    | st.sampled_from(["x" * 2048, "x" * 2049])
)
_CLAIM_TEXT = st.integers(0, 7).flatmap(lambda n: _ODD_TEXT if n == 0 else _PLAIN_TEXT)
# In range most often; the bounds of the range and of the match's 13 digits sometimes.
_NUMBER = st.integers(0, 2**40 - 1) | st.sampled_from(
    [0, 2**40 - 1, 2**40, 10**12, 10**13 - 1, 10**13, 2**41]
)
# Built once, not in every draw: hypothesis validates a strategy (and works out its
# properties) the first time it is drawn from, which cost more than the rest of an example.
# A fresh dict for each example (st.builds), not one shared by them all (st.just({})).
_OPTIONAL_TEXT = st.none() | _CLAIM_TEXT
_PARAMS: st.SearchStrategy[dict[str, str]] = st.builds(dict) | st.dictionaries(
    _CLAIM_TEXT, _CLAIM_TEXT, max_size=2
)
_ANY_CLAIMS = st.builds(
    Claims,
    token_id=_CLAIM_TEXT, subject=_CLAIM_TEXT, role=_CLAIM_TEXT,
    issued_at=_NUMBER, expires_at=_NUMBER, one_time=st.booleans(),
    kind=_CLAIM_TEXT, params=_PARAMS,
    module=_OPTIONAL_TEXT, email=_OPTIONAL_TEXT, redirect_to=_OPTIONAL_TEXT,
)  # fmt: skip


@st.composite
def _claims_texts(draw: st.DrawFn) -> bytes:
    """claims_json's text of claims of any field values (sometimes a byte changed): what
    the canonical reading sees, and what it must leave to the general one."""
    raw = claims_json(draw(_ANY_CLAIMS)).encode()
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(max_size=2)) + raw[at + 1 :]
    return raw


def _read(raw: bytes, read: Callable[[bytes], Claims]) -> tuple[str, object]:
    try:
        return "claims", read(raw)
    except MalformedToken as exc:
        return "malformed", str(exc)  # the same refusal, to its message


@fuzz(3000)
@given(raw=_claims_texts() | st.just(b'{"jti":"a","sub":"b","role":"c","iat":01'))
def test_canonical_claims_are_read_as_the_general_reader_reads_them(raw: bytes) -> None:
    """The canonical text's one match gives the claims, or the refusal, that json.loads
    and the checks of each field give (claims_json of any claims, some of them damaged).

    Its strategy is built once, outside the draw: this test took 20-25 s compiled at load
    6, and at load 12 or more pytest-timeout's alarm (120 s) interrupted hypothesis in the
    middle of drawing an example; the replay of that example, uninterrupted, drew more and
    hypothesis reported FlakyStrategyDefinition."""
    assert _read(raw, _claims) == _read(raw, _parsed_claims)


def test_a_usual_link_is_read_by_the_canonical_match() -> None:
    plain = claims(params={}, module=None)
    assert _CANONICAL.fullmatch(claims_json(plain))
    assert _CANONICAL.fullmatch(claims_json(claims(params={}, email="a@example.test")))
    assert CODEC.open(CODEC.seal(plain), NOW) == plain
    for odd in (claims(params={}, subject='say "hi"'), claims(params={}, role="Rôle")):
        assert not _CANONICAL.fullmatch(claims_json(odd))
        assert CODEC.open(CODEC.seal(odd), NOW) == odd


_SEGMENT = st.text(st.sampled_from("AZaz09-_+/=*. é"), max_size=24)


@fuzz(1000)
@given(iv=st.text(st.sampled_from("AZaz09-_+/=*. é"), min_size=16, max_size=16), rest=_SEGMENT)
def test_the_iv_decoded_with_the_ciphertext_refuses_what_each_alone_would(
    iv: str, rest: str
) -> None:
    """open decodes a 16-character IV segment together with the ciphertext's: the same
    bytes, or a refusal, as decoding each."""

    def apart() -> bytes:
        return b64decode(iv) + b64decode(rest)

    def together() -> bytes:
        return b64decode(iv + rest)

    assert _decoded(together) == _decoded(apart)


def _decoded(decode: Callable[[], bytes]) -> bytes | None:
    try:
        return decode()
    except ValueError:
        return None


@pytest.mark.parametrize("iv", ["A" * 15, "A" * 17, "A" * 15 + "=", "A" * 15 + "+", "A" * 15 + "é"])
def test_an_iv_segment_of_another_length_or_alphabet_is_tampered(iv: str) -> None:
    header, _, _, ciphertext, tag = CODEC.seal(claims(params={})).split(".")
    with pytest.raises(TamperedToken):
        CODEC.open(".".join((header, "", iv, ciphertext, tag)), NOW)
