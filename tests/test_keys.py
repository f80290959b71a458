"""Keysets: round trip, rotation (old tokens still open), removal, and strict parsing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.tokens.codec import Claims, TokenCodec, UnknownKey, new_token_id
from sidecar.tokens.keys import (
    KeyRecord,
    KeySet,
    KeysetError,
    generate_keyset,
    parse_keyset,
    parse_utc_time,
)

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


# -- record times: read as datetime.strptime reads them, without its module -------------

_ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")  # strptime's \d takes any digit


@st.composite
def _number(draw: st.DrawFn, high: int, width: int, low: int = 0) -> str:
    """A field as a record might spell it: padded, bare, space-padded or in other digits."""
    n = draw(st.integers(low, high))
    spelling = draw(st.sampled_from(["padded", "bare", "space", "arabic", "long"]))
    if spelling == "bare":
        return str(n)
    if spelling == "space":
        return " " + str(n)
    padded = f"{n:0{width}d}"
    if spelling == "arabic":
        return padded.translate(_ARABIC)
    return "0" + padded if spelling == "long" else padded


@st.composite
def _near_times(draw: st.DrawFn) -> str:
    """Strings shaped like ``2026-11-30T12:00:00Z``: each field in any spelling, in or
    somewhat out of range; now and then a separator that is not the expected one."""
    fields = [(10_000, 4), (13, 2), (32, 2), (24, 2), (60, 2), (62, 2)]
    out = []
    for (high, width), expected in zip(fields, "--T::Z", strict=True):
        out.append(draw(_number(high, width)))
        odd = st.sampled_from(["-", ":", "T", "t", "Z", "z", " ", "", "ZZ"])
        out.append(draw(st.one_of(st.just(expected), st.just(expected), odd)))
    return "".join(out)


@st.composite
def _real_times(draw: st.DrawFn) -> str:
    """Times that exist, every field in any spelling, the separators right."""
    t = draw(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
    fields = [(t.year, 4), (t.month, 2), (t.day, 2), (t.hour, 2), (t.minute, 2), (t.second, 2)]
    out = []
    for (n, width), separator in zip(fields, "--T::Z", strict=True):
        out.append(draw(_number(n, width, low=n)) + separator)
    return "".join(out)


def _strptime(value: str) -> float | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _ours(value: str) -> float | None:
    try:
        return parse_utc_time(value)
    except ValueError:
        return None


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_real_times(), _near_times(), st.text(max_size=24)))
def test_record_times_are_read_as_strptime_reads_them(value: str) -> None:
    assert _ours(value) == _strptime(value)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-30T12:00:00Z",
        "2026-1-5T1:2:3Z",  # one-digit fields
        "2026-01- 5T00:00:00Z",  # a space-padded day
        "2026-01-01t00:00:00Z",  # case ignored
        "2024-02-29T23:59:59Z",
        "٢٠٢٦-01-01T00:00:00Z",  # any Unicode digit
    ],
)
def test_record_times_strptime_reads_are_read(value: str) -> None:
    assert parse_utc_time(value) == _strptime(value) is not None


@pytest.mark.parametrize(
    "value",
    [
        "2025-02-29T00:00:00Z",  # no such day
        "2026-11-30T12:00:60Z",  # strptime's pattern takes 60 and 61, datetime does not
        "2026-13-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-11-30T12:00:00ZZ",
        "2026-11-30 12:00:00Z",
        "12026-11-30T12:00:00Z",
    ],
)
def test_record_times_strptime_refuses_are_refused(value: str) -> None:
    assert _strptime(value) is None
    with pytest.raises(ValueError, match=r"not a UTC time|out of range|must be in"):
        parse_utc_time(value)
