"""Keysets: round trip, rotation (old tokens still open), removal, and strict parsing."""

from __future__ import annotations

import base64
import json
from types import MappingProxyType

import pytest

from sidecar.tokens.codec import Claims, TokenCodec, UnknownKey, new_token_id
from sidecar.tokens.keys import KeyRecord, KeySet, KeysetError, generate_keyset, parse_keyset

NOW = 1_800_000_000


def _claims() -> Claims:
    return Claims(
        token_id=new_token_id(),
        subject="user-1",
        role="Authenticated",
        issued_at=NOW,
        expires_at=NOW + 3600,
        one_time=True,
        kind="refer",
    )


def _kid_of(token: str) -> str:
    header = token.split(".")[0]
    doc = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    return str(doc["kid"])


def test_round_trip() -> None:
    keyset = generate_keyset("k1")
    again = parse_keyset(keyset.to_json())
    assert again.active_kid == "k1"
    assert dict(again.keys) == dict(keyset.keys)
    assert all(len(raw) == 32 for raw in again.keys.values())
    # What the written keyset seals, the read one opens: the same key is active.
    claims = _claims()
    assert TokenCodec(again).open(TokenCodec(keyset).seal(claims), NOW) == claims


def test_rotation_keeps_old_tokens_working() -> None:
    old = generate_keyset("old")
    old_token = TokenCodec(old).seal(_claims())
    rotated = parse_keyset(old.with_new_key("new").to_json())
    assert rotated.active_kid == "new"
    assert set(rotated.keys) == {"old", "new"}
    codec = TokenCodec(rotated)
    assert codec.open(old_token, NOW).subject == "user-1"
    new_token = codec.seal(_claims())
    assert _kid_of(new_token) == "new"
    # A replica still on the old keyset cannot open the new key's tokens…
    with pytest.raises(UnknownKey):
        TokenCodec(old).open(new_token, NOW)


def test_removed_key_is_unknown() -> None:
    keyset = generate_keyset("old").with_new_key("new")
    old_token = TokenCodec(keyset).seal(_claims())  # sealed with "new"
    assert _kid_of(old_token) == "new"
    only_old = KeySet(active_kid="old", keys=MappingProxyType({"old": keyset.keys["old"]}))
    with pytest.raises(UnknownKey):
        TokenCodec(only_old).open(old_token, NOW)


def test_new_kid_must_be_new() -> None:
    with pytest.raises(KeysetError, match="already in the keyset"):
        generate_keyset("a").with_new_key("a")


def test_generated_kids_are_unique() -> None:
    keyset = generate_keyset()
    for _ in range(5):
        keyset = keyset.with_new_key()
    assert len(keyset.keys) == 6


def test_repr_hides_key_material() -> None:
    keyset = generate_keyset("k1")
    k = json.loads(keyset.to_json())["keys"][0]["k"]
    assert k not in repr(keyset)
    assert "k1" in repr(keyset)


GOOD_K = "A" * 43  # base64url of 32 zero bytes


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "not valid JSON"),
        ([], "non-empty 'keys' list"),
        ({"keys": []}, "non-empty 'keys' list"),
        ({"keys": [{"kty": "RSA", "kid": "a", "k": GOOD_K}]}, "keys[0]: expected a symmetric"),
        ({"keys": [{"kty": "oct", "kid": "a b", "k": GOOD_K}]}, "keys[0].kid"),
        ({"keys": [{"kty": "oct", "kid": 7, "k": GOOD_K}]}, "keys[0].kid"),
        (
            {
                "keys": [
                    {"kty": "oct", "kid": "a", "k": GOOD_K},
                    {"kty": "oct", "kid": "a", "k": GOOD_K},
                ]
            },
            "keys[1].kid: 'a' appears twice",
        ),
        ({"keys": [{"kty": "oct", "kid": "a", "k": GOOD_K, "alg": "A128KW"}]}, "keys[0].alg"),
        ({"keys": [{"kty": "oct", "kid": "a", "k": "AAAA"}]}, "keys[0].k: expected base64url"),
        ({"keys": [{"kty": "oct", "kid": "a", "k": "A+/="}]}, "keys[0].k: expected base64url"),
        ({"keys": [{"kty": "oct", "kid": "a", "k": GOOD_K}]}, "active: expected the kid"),
        ({"active": "b", "keys": [{"kty": "oct", "kid": "a", "k": GOOD_K}]}, "active: expected"),
        ({"active": ["a"], "keys": [{"kty": "oct", "kid": "a", "k": GOOD_K}]}, "active: expected"),
    ],
)
def test_parse_errors(doc: object, message: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(KeysetError) as info:
        parse_keyset(text)
    assert message in str(info.value)
    assert GOOD_K not in str(info.value)


# -- the rotation lifecycle --------------------------------------------------------------


def test_staged_keys_open_but_never_seal() -> None:
    old = generate_keyset("one", now=NOW)
    staged = old.with_new_key("two", activate=False, now=NOW + 10)
    assert staged.active_kid == "one"
    assert [staged.state(k) for k in ("one", "two")] == ["active", "staged"]
    token = TokenCodec(old.with_new_key("x").retire("one")).seal(_claims())  # unrelated key
    with pytest.raises(UnknownKey):
        TokenCodec(staged).open(token, NOW)
    new_side = staged.activate("two", now=NOW + 20)
    sealed_new = TokenCodec(new_side).seal(_claims())
    assert _kid_of(sealed_new) == "two"
    assert TokenCodec(staged).open(sealed_new, NOW).subject == "user-1"  # old side opens it
    assert _kid_of(TokenCodec(staged).seal(_claims())) == "one"


def test_activate_and_retire_keep_records() -> None:
    keyset = generate_keyset("one", now=NOW).with_new_key("two", activate=False, now=NOW + 60)
    active = parse_keyset(keyset.activate("two", now=NOW + 120).to_json())
    assert active.state("one") == "previous"
    assert active.record("one") == KeyRecord(created=NOW, deactivated=NOW + 120)
    assert active.record("two") == KeyRecord(created=NOW + 60, deactivated=None)
    with pytest.raises(KeysetError, match="is the active key"):
        active.retire("two")
    with pytest.raises(KeysetError, match="not in the keyset"):
        active.retire("three")
    retired = active.retire("one")
    assert list(retired.keys) == ["two"]
    assert "one" not in retired.to_json()


def test_old_files_without_records_still_load() -> None:
    keyset = generate_keyset("one").with_new_key("two")
    doc = json.loads(keyset.to_json())
    for jwk in doc["keys"]:
        jwk.pop("created", None)
        jwk.pop("deactivated", None)
    bare = parse_keyset(json.dumps(doc))
    assert bare.state("two") == "active"
    assert bare.state("one") == "decrypt-only"


@pytest.mark.parametrize("value", ["yesterday", "2026-11-30T12:00:00", 5])
def test_bad_record_times_are_refused(value: object) -> None:
    doc = json.loads(generate_keyset("one").to_json())
    doc["keys"][0]["created"] = value
    with pytest.raises(KeysetError, match=r"keys\[0\]\.created: expected a UTC time"):
        parse_keyset(json.dumps(doc))
