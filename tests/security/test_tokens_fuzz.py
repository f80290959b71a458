"""Property-based fuzzing of the token decoder (``sidecar.tokens.TokenCodec.open``).

The oracle is strict: every input that is not a token we sealed raises a
:class:`~sidecar.tokens.TokenError` subclass — never another exception, never claims.
Attacks that need the key (odd headers sealed with the *right* key) are built with
``cryptography``'s AES-GCM directly, so the decoder's refusal is proven independent of
the JOSE library it uses.
"""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given
from hypothesis import strategies as st

from sidecar.tokens.codec import (
    MAX_TOKEN_LENGTH,
    Claims,
    ExpiredToken,
    MalformedToken,
    TamperedToken,
    TokenCodec,
    TokenError,
    UnknownKey,
    new_token_id,
)
from sidecar.tokens.keys import KeySet, generate_keyset
from tests.security import casebook
from tests.security.fuzzing import B64URL, SEGMENTS, b64, fuzz, unb64

NOW = 1_800_000_000
KID = "k-test-1"
KEYSET = generate_keyset(KID)
CODEC = TokenCodec(KEYSET)
CLAIMS = Claims(
    token_id=new_token_id(),
    subject="user-1",
    role="Authenticated",
    issued_at=NOW,
    expires_at=NOW + 3600,
    one_time=True,
    kind="refer",
    params={"tenant": "acme"},
    module="5e9f",
)
TOKEN = CODEC.seal(CLAIMS)
OTHER_TOKEN = CODEC.seal(
    Claims(
        token_id=new_token_id(),
        subject="user-2",
        role="Authenticated",
        issued_at=NOW,
        expires_at=NOW + 60,
        one_time=True,
        kind="refer",
    )
)


def seal_raw(header: bytes, plaintext: bytes, key: bytes) -> str:
    """A compact JWE with exactly these header bytes, authenticated under ``key``."""
    protected = b64(header)
    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plaintext, protected.encode("ascii"))
    return f"{protected}..{b64(iv)}.{b64(sealed[:-16])}.{b64(sealed[-16:])}"


def valid_header(kid: str = KID) -> bytes:
    return json.dumps({"alg": "dir", "enc": "A256GCM", "kid": kid}).encode()


def refused(token: object, codec: TokenCodec = CODEC, now: float = NOW) -> TokenError | None:
    """The TokenError raised, or None if the token opened. Any other exception propagates."""
    try:
        codec.open(token, now)  # non-str inputs are part of the attack
    except TokenError as exc:
        return exc
    return None


def check_refused(token: object, codec: TokenCodec = CODEC) -> TokenError:
    exc = refused(token, codec)
    casebook.record("tokens", through=int(exc is None))
    assert exc is not None, f"accepted a forged token: {token!r:.120}"
    return exc


def test_the_genuine_token_opens() -> None:
    assert CODEC.open(TOKEN, NOW) == CLAIMS
    assert CODEC.open(OTHER_TOKEN, NOW).token_id != CLAIMS.token_id


# -- mutations of a genuine token ---------------------------------------------------


@fuzz(300)
@given(segment=st.sampled_from(SEGMENTS), data=st.data())
def test_any_bit_flip_is_refused(segment: int, data: st.DataObject) -> None:
    parts = TOKEN.split(".")
    raw = bytearray(unb64(parts[segment]))
    index = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    parts[segment] = b64(bytes(raw))
    check_refused(".".join(parts))


MUTATION_TEXT = st.text(
    st.sampled_from(B64URL + ".=+/ \t\r\n%\x00\\\"'{}é\u2028\ufeff\ud800"), min_size=1, max_size=8
)


@fuzz(300)
@given(
    op=st.sampled_from(["replace", "insert", "delete"]),
    position=st.integers(0, len(TOKEN) - 1),
    text=MUTATION_TEXT,
)
def test_any_character_edit_is_refused(op: str, position: int, text: str) -> None:
    if op == "replace":
        mutated = TOKEN[:position] + text + TOKEN[position + len(text) :]
    elif op == "insert":
        mutated = TOKEN[:position] + text + TOKEN[position:]
    else:
        mutated = TOKEN[:position] + TOKEN[position + len(text) :]
    assume(mutated != TOKEN)
    check_refused(mutated)


def test_every_truncation_is_refused() -> None:
    for n in range(len(TOKEN)):
        check_refused(TOKEN[:n])
        check_refused(TOKEN[len(TOKEN) - n :])


@fuzz(150)
@given(suffix=MUTATION_TEXT | st.sampled_from([".", "..", ".AAAA", "=", "==", "%3D", " "]))
def test_any_extension_is_refused(suffix: str) -> None:
    check_refused(TOKEN + suffix)
    check_refused(suffix + TOKEN)


@fuzz(60)
@given(choice=st.lists(st.booleans(), min_size=4, max_size=4))
def test_segments_spliced_from_two_tokens_are_refused(choice: list[bool]) -> None:
    assume(any(choice) and not all(choice))
    a, b = TOKEN.split("."), OTHER_TOKEN.split(".")
    spliced = [b[i] if pick else a[i] for i, pick in zip(SEGMENTS, choice, strict=True)]
    token = f"{spliced[0]}..{spliced[1]}.{spliced[2]}.{spliced[3]}"
    assume(token not in (TOKEN, OTHER_TOKEN))  # both share one header
    check_refused(token)


@pytest.mark.parametrize(
    "value",
    [None, b"", TOKEN.encode(), 0, 1.5, [TOKEN], {"token": TOKEN}, "", " ", ".", "....",
     "a.b.c.d.e", "x" * MAX_TOKEN_LENGTH, TOKEN + "A" * MAX_TOKEN_LENGTH, "é" * 100,
     TOKEN.replace(".", ".."), TOKEN.replace("..", "."), TOKEN.replace("..", ".AAAA.")],
)  # fmt: skip
def test_values_that_are_not_tokens_are_malformed(value: object) -> None:
    assert isinstance(check_refused(value), MalformedToken)


# -- other keys and key rotation ------------------------------------------------------


@fuzz(25)
@given(kid=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
def test_tokens_sealed_with_another_key_are_refused(kid: str) -> None:
    stranger = TokenCodec(KeySet(active_kid=kid, keys={kid: os.urandom(32)}))
    exc = check_refused(stranger.seal(CLAIMS))
    assert isinstance(exc, TamperedToken if kid == KID else UnknownKey)


def test_rotated_keys_keep_older_tokens_valid() -> None:
    rotated = KEYSET.with_new_key("k-test-2").with_new_key("k-test-3")
    codec = TokenCodec(rotated)
    assert codec.open(TOKEN, NOW) == CLAIMS
    fresh = codec.seal(CLAIMS)
    assert json.loads(unb64(fresh.split(".")[0]))["kid"] == "k-test-3"
    assert codec.open(fresh, NOW) == CLAIMS
    casebook.record("tokens", tried=2)
    # a replica that has not yet loaded the new key refuses the new token cleanly
    assert isinstance(check_refused(fresh, CODEC), UnknownKey)


def test_a_removed_key_rejects_its_tokens() -> None:
    rotated = KEYSET.with_new_key("k-test-2")
    keys = {kid: raw for kid, raw in rotated.keys.items() if kid != KID}
    retired = TokenCodec(KeySet(active_kid="k-test-2", keys=keys))
    assert isinstance(check_refused(TOKEN, retired), UnknownKey)


# -- headers sealed with the right key ------------------------------------------------

ODD_VALUES = st.sampled_from(
    [None, 0, 1, True, "", "none", "None", "NONE", "dir ", " dir", "DIR", "A256GCM ", "a256gcm",
     "A128GCM", "A192GCM", "A256CBC-HS512", "A128CBC-HS256", "A256KW", "A256GCMKW", "RSA-OAEP",
     "ECDH-ES", "PBES2-HS256+A128KW", "HS256", ["dir"], {"alg": "dir"}, KID + " ", KID.upper(),
     "../" + KID, "unknown", "k" * 5000, 2**64, 1e308, -1]
)  # fmt: skip
EXTRA_MEMBERS = st.sampled_from(
    ["zip", "crit", "jku", "jwk", "x5u", "x5c", "p2c", "p2s", "epk", "b64", "iv", "tag", "apu",
     "nonce", "url", "Alg", "ALG", "kid ", "enc\x00", "__proto__"]
)  # fmt: skip
ALLOWED = {"alg": "dir", "enc": "A256GCM", "kid": KID}


@st.composite
def headers(draw: st.DrawFn) -> dict[str, object]:
    header: dict[str, object] = dict(ALLOWED)
    for name in draw(st.sets(st.sampled_from(["alg", "enc", "kid"]), max_size=3)):
        if draw(st.booleans()):
            del header[name]
        else:
            header[name] = draw(ODD_VALUES)
    for name in draw(st.sets(EXTRA_MEMBERS | st.sampled_from(["typ", "cty"]), max_size=3)):
        header[name] = draw(st.sampled_from(["DEF", ["exp"], "JWT", "https://evil.test/k", 1]))
    return header


def acceptable(header: dict[str, object]) -> bool:
    return (
        {k: header.get(k) for k in ALLOWED} == ALLOWED
        and header.keys() <= {*ALLOWED, "typ", "cty"}
        and all(isinstance(header.get(k, ""), str) for k in ("typ", "cty"))
    )


@fuzz(300)
@given(header=headers())
def test_only_the_one_header_shape_opens_even_with_the_right_key(header: dict[str, object]) -> None:
    token = seal_raw(
        json.dumps(header).encode(), json.dumps(CLAIMS.to_json()).encode(), KEYSET.keys[KID]
    )
    assume(len(token) < MAX_TOKEN_LENGTH)
    if acceptable(header):
        assert CODEC.open(token, NOW) == CLAIMS
    else:
        check_refused(token)


RAW_HEADERS = [
    b"", b"null", b"[]", b"0", b'"dir"', b"{", b"}", b"{}", b"\xff\xfe", b"\xc3\x28",
    b'{"alg":"dir","enc":"A256GCM","kid":"k-test-1"',  # unterminated
    b'{"alg":"dir","enc":"A256GCM","kid":"k-test-1","zip":"DEF"}',
    b'{"alg":"dir","enc":"A256GCM","kid":"k-test-1","crit":["exp"],"exp":1}',
    b'{"alg":"dir","enc":"A256GCM","kid":["k-test-1"]}',
    b'{"alg":"dir","enc":"A256GCM","kid":"k-test-1","typ":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b"[" * 2500 + b"]" * 2500,
    b'{"a":' * 1200 + b"1" + b"}" * 1200,
    b'{"alg":"dir","enc":"A256GCM","kid":' + b"9" * 2500 + b"}",
    b'{"alg":"dir","enc":"A256GCM","kid":1e999999}',
    b'{"alg":"dir","enc":"A256GCM","kid":NaN}',
    b'{"alg":"dir","enc":"A256GCM","kid":"\\ud800"}',
    b'{"alg":"none","enc":"A256GCM","kid":"k-test-1"}',
    b'{"alg":"dir","enc":"A128GCM","kid":"k-test-1"}',
    b'{"alg":"dir","enc":"A256GCM","kid":"\xff\xfe"}',
    '{"alg":"dir","enc":"A256GCM","kid":"k-test-1","zip":"DEF"}'.encode("utf-16"),
]  # fmt: skip


@pytest.mark.parametrize("header", RAW_HEADERS, ids=range(len(RAW_HEADERS)))
def test_raw_headers_are_refused(header: bytes) -> None:
    parts = TOKEN.split(".")
    check_refused(".".join([b64(header), *parts[1:]]))
    token = seal_raw(header, json.dumps(CLAIMS.to_json()).encode(), KEYSET.keys[KID])
    if len(token) < MAX_TOKEN_LENGTH:
        check_refused(token)


def test_alg_none_without_ciphertext_is_refused() -> None:
    for alg in ("none", "None", "NONE", "nOnE"):
        header = b64(json.dumps({"alg": alg, "enc": "A256GCM", "kid": KID}).encode())
        payload = b64(json.dumps(CLAIMS.to_json()).encode())
        for token in (
            f"{header}..{payload}..",
            f"{header}.{payload}.",
            f"{header}..AAAA.{payload}.AAAA",
        ):
            check_refused(token)


def test_zip_sealed_by_another_jose_library_is_refused() -> None:
    jwk = pytest.importorskip("jwcrypto.jwk")
    jwe = pytest.importorskip("jwcrypto.jwe")
    key = jwk.JWK(kty="oct", k=b64(KEYSET.keys[KID]), kid=KID)
    header = {"alg": "dir", "enc": "A256GCM", "kid": KID, "zip": "DEF"}
    token = jwe.JWE(json.dumps(CLAIMS.to_json()).encode(), json.dumps(header))
    token.add_recipient(key)
    assert isinstance(check_refused(token.serialize(compact=True)), MalformedToken)


# -- claims sealed with the right key and the right header ---------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_NAMES = ["jti", "sub", "role", "iat", "exp", "one_time", "kind", "params", "module", "email",
               "redirect_to"]  # fmt: skip


@st.composite
def claim_documents(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    doc: dict[str, object] = dict(CLAIMS.to_json())
    for name in draw(st.sets(st.sampled_from(CLAIM_NAMES), min_size=1, max_size=4)):
        if draw(st.booleans()):
            doc.pop(name, None)
        else:
            doc[name] = draw(JSON)
    return doc


def well_formed(claims: Claims) -> bool:
    strings = [claims.token_id, claims.subject, claims.role, claims.kind,
               *claims.params.keys(), *claims.params.values()]  # fmt: skip
    strings += [s for s in (claims.module, claims.email, claims.redirect_to) if s is not None]
    return (
        all(isinstance(s, str) and s for s in strings[:4])
        and all(isinstance(s, str) for s in strings)
        and all(type(n) is int for n in (claims.issued_at, claims.expires_at))
        and isinstance(claims.one_time, bool)
    )


@fuzz(300)
@given(doc=claim_documents())
def test_authentic_claims_of_any_shape_open_well_formed_or_are_malformed(doc: object) -> None:
    text = json.dumps(doc, allow_nan=True).encode()
    assume(len(text) < 2500)
    token = seal_raw(valid_header(), text, KEYSET.keys[KID])
    refused_as: TokenError | None = None
    try:
        claims = CODEC.open(token, NOW)
    except ExpiredToken as exc:  # opened fine; only the time is past
        claims = exc.claims
    except TokenError as exc:
        refused_as = exc
    if refused_as is not None:
        casebook.record("tokens", through=int(not isinstance(refused_as, MalformedToken)))
        assert isinstance(refused_as, MalformedToken)
        return
    casebook.record("tokens", through=int(not well_formed(claims)))
    assert well_formed(claims), claims


CLAIMS_OK = b'{"jti":"x","sub":"u","role":"r","iat":1,'  # + one bad member, then the rest
REST = b'"one_time":true,"kind":"refer"}'
BOMBS = [
    b"[" * 1400 + b"]" * 1400,
    b'{"a":' * 450 + b"1" + b"}" * 450,
    CLAIMS_OK + b'"exp":' + b"9" * 2400 + b"," + REST,
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":1e999,"one_time":true,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":Infinity,"one_time":true,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":NaN,"one_time":true,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":2000000000.5,"one_time":true,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":2000000000,"one_time":1,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":true,"exp":2000000000,"one_time":true,"kind":"refer"}',
    b'{"jti":"x","sub":"u","role":"r","iat":-1,"exp":2000000000,"one_time":true,"kind":"refer"}',
    b'{"jti":"","sub":"u","role":"r","iat":1,"exp":2000000000,"one_time":true,"kind":"refer"}',
    CLAIMS_OK + b'"exp":2000000000,"params":{"a":[1]},' + REST,
    b'{"jti":"x","sub":"u","role":"r","iat":1,"exp":2000000000,"one_time":true,"kind":"refer","params":[]}',
    b'{"jti":"\xff","sub":"u","role":"r","iat":1,"exp":2000000000,"one_time":true,"kind":"refer"}',
    b"\xff\xfe\x00\x00",
    b"\xef\xbb\xbf{}",
    b"",
    b"null",
    b'"' + b"a" * 2400 + b'"',
    b'{"jti":"x","sub":"' + b"u" * 2100 + b'","role":"r","iat":1,"exp":2000000000,' + REST,
]  # fmt: skip


@pytest.mark.parametrize("plaintext", BOMBS, ids=range(len(BOMBS)))
def test_json_bombs_and_odd_numbers_are_malformed(plaintext: bytes) -> None:
    token = seal_raw(valid_header(), plaintext, KEYSET.keys[KID])
    assert len(token) < MAX_TOKEN_LENGTH
    assert isinstance(check_refused(token), MalformedToken)


@fuzz(50)
@given(late=st.integers(0, 10**9))
def test_expired_tokens_are_refused_as_expired(late: int) -> None:
    exc = refused(TOKEN, now=CLAIMS.expires_at + late)
    casebook.record("tokens", through=int(exc is None))
    assert isinstance(exc, ExpiredToken)
    assert exc.claims == CLAIMS
