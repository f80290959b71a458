"""Minting: the POST /referstring rules as a table, then sealing and the link form."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sidecar.config import Config
from sidecar.refer.minting import MintError, iso_utc, mint_refer, parse_refer_request, refer_url
from sidecar.tokens.codec import TokenCodec, TokenTooLong
from tests.test_config import build_config, config_doc

NOW = 1_800_000_000.5


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return build_config(tmp_path)


OK: list[tuple[dict[str, object], dict[str, object]]] = [
    ({"userId": "u1"}, {"lifetime": 3600, "one_time": True, "role": "Authenticated"}),
    ({"userId": "u1", "expireMeasure": "days", "expireOffset": 7}, {"lifetime": 7 * 86400}),
    ({"userId": "u1", "expireMeasure": "Day", "expireOffset": 2}, {"lifetime": 2 * 86400}),
    ({"userId": "u1", "expireMeasure": "HOURS", "expireOffset": 5}, {"lifetime": 5 * 3600}),
    ({"userId": "u1", "expireMeasure": "minute", "expireOffset": 90}, {"lifetime": 5400}),
    ({"userId": "u1", "expireMeasure": "Seconds", "expireOffset": 1}, {"lifetime": 1}),
    ({"userId": "u1", "oneTimeUse": False}, {"one_time": False}),
    (
        {"userId": "u1", "additionalParams": {"role": "Admin"}},
        {"role": "Admin", "one_time": False},
    ),
    (
        {"userId": "u1", "additionalParams": {"role": "Admin"}, "oneTimeUse": True},
        {"role": "Admin", "one_time": True},
    ),
    (
        {"userId": "u1", "additionalParams": {"tenant": "acme", "n": 3, "locale": True}},
        {"params": {"tenant": "acme", "n": "3", "locale": "true"}},
    ),
    ({"userId": "u1", "additionalParams": {"n": 1.5}}, {"params": {"n": "1.5"}}),
    (
        {"userId": "u1", "module": "5e9f83275349fc020f8db299"},
        {"module": "5e9f83275349fc020f8db299"},
    ),
    (
        {"userId": "u1", "module": "admin-7", "additionalParams": {"role": "Admin"}},
        {"module": "admin-7"},
    ),
    ({"userId": "ü" * 256}, {}),
    (
        {
            "userId": "u1",
            "additionalParams": {"role": "Admin"},
            "expireMeasure": "hours",
            "expireOffset": 1,
        },
        {"lifetime": 3600},
    ),
]


@pytest.mark.parametrize(("body", "expected"), OK)
def test_valid_requests(
    config: Config, body: dict[str, object], expected: dict[str, object]
) -> None:
    request = parse_refer_request(body, config)
    assert request.user_id == body["userId"]
    for name, value in expected.items():
        actual = request.role.name if name == "role" else getattr(request, name)
        assert actual == value, name


BAD: list[tuple[dict[str, object], str, str]] = [
    ({}, "userId", "is required"),
    ({"userId": ""}, "userId", "expected a non-empty string, got an empty string"),
    ({"userId": 5}, "userId", "expected a non-empty string, got 5"),
    ({"userId": None}, "userId", "is required"),
    ({"userId": ["a"]}, "userId", "got an array"),
    ({"userId": "x" * 257}, "userId", "at most 256"),
    ({"userId": "a\nb"}, "userId", "control characters"),
    ({"userId": "a\x00b"}, "userId", "control characters"),
    ({"userId": "a\x85b"}, "userId", "control characters"),
    ({"userId": "a\ud800b"}, "userId", "lone surrogates"),
    ({"userId": "u", "additionalParams": {"tenant": "\udfff"}}, "additionalParams.tenant", "lone"),
    ({"userId": "u", "role": "Admin"}, "role", "unknown field; allowed: userId"),
    ({"userId": "u", "zz": 1, "aa": 2}, "aa, zz", "unknown fields"),
    ({"userId": "u", "expireMeasure": "weeks", "expireOffset": 1}, "expireMeasure", "one of"),
    ({"userId": "u", "expireMeasure": "s", "expireOffset": 1}, "expireMeasure", "one of"),
    ({"userId": "u", "expireMeasure": 3, "expireOffset": 1}, "expireMeasure", "one of"),
    ({"userId": "u", "expireMeasure": "hourss", "expireOffset": 1}, "expireMeasure", "one of"),
    ({"userId": "u", "expireMeasure": "hours"}, "expireOffset", "is required when"),
    ({"userId": "u", "expireOffset": 1}, "expireMeasure", "is required when"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": 0}, "expireOffset", "positive"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": -1}, "expireOffset", "positive"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": 1.5}, "expireOffset", "got 1.5"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": 2.0}, "expireOffset", "positive"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": "2"}, "expireOffset", "a string"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": True}, "expireOffset", "got true"),
    ({"userId": "u", "expireMeasure": "hours", "expireOffset": None}, "expireOffset", "null"),
    (
        {"userId": "u", "expireMeasure": "days", "expireOffset": 8},
        "expireOffset",
        "8 days is too long: role Authenticated allows at most 7d",
    ),
    (
        {
            "userId": "u",
            "expireMeasure": "minutes",
            "expireOffset": 61,
            "additionalParams": {"role": "Admin"},
        },
        "expireOffset",
        "role Admin allows at most 1h",
    ),
    (
        {"userId": "u", "expireMeasure": "days", "expireOffset": 10**30},
        "expireOffset",
        "too long",
    ),
    ({"userId": "u", "oneTimeUse": "yes"}, "oneTimeUse", "expected true or false"),
    ({"userId": "u", "oneTimeUse": 1}, "oneTimeUse", "expected true or false"),
    ({"userId": "u", "oneTimeUse": None}, "oneTimeUse", "expected true or false"),
    ({"userId": "u", "additionalParams": []}, "additionalParams", "expected an object"),
    ({"userId": "u", "additionalParams": None}, "additionalParams", "expected an object"),
    ({"userId": "u", "additionalParams": {"role": "Root"}}, "additionalParams.role", "one of"),
    ({"userId": "u", "additionalParams": {"role": 1}}, "additionalParams.role", "got 1"),
    ({"userId": "u", "additionalParams": {"role": "admin"}}, "additionalParams.role", "one of"),
    (
        {"userId": "u", "additionalParams": {"email": "x"}},
        "additionalParams.email",
        "not allowed for role Authenticated; allowed: locale, n, tenant",
    ),
    (
        {"userId": "u", "additionalParams": {"role": "Admin", "locale": "x"}},
        "additionalParams.locale",
        "not allowed for role Admin",
    ),
    (
        {"userId": "u", "additionalParams": {"tenant": {"a": 1}}},
        "additionalParams.tenant",
        "object",
    ),
    ({"userId": "u", "additionalParams": {"tenant": [1]}}, "additionalParams.tenant", "array"),
    ({"userId": "u", "additionalParams": {"tenant": None}}, "additionalParams.tenant", "null"),
    ({"userId": "u", "additionalParams": {"tenant": "a\rb"}}, "additionalParams.tenant", "control"),
    (
        {"userId": "u", "additionalParams": {"n": float("inf")}},
        "additionalParams.n",
        "finite",
    ),
    ({"userId": "u", "module": ""}, "module", "expected 1-128"),
    ({"userId": "u", "module": "a/b"}, "module", "expected 1-128"),
    ({"userId": "u", "module": "m" * 129}, "module", "expected 1-128"),
    ({"userId": "u", "module": 5}, "module", "expected 1-128"),
    (
        {"userId": "u", "module": "other", "additionalParams": {"role": "Admin"}},
        "module",
        "'other' is not allowed for role Admin",
    ),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD)
def test_invalid_requests(
    config: Config, body: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(MintError) as info:
        parse_refer_request(body, config)
    assert info.value.field == field
    assert message in info.value.message
    assert str(info.value).startswith(f"{field}: ")


def test_global_cap_is_named_when_the_role_has_none(tmp_path: Path) -> None:
    doc = config_doc(tokens={"max_expiry": "2d"}, roles={"Open": {}}, default_role="Open")
    cfg = build_config(tmp_path, doc)
    with pytest.raises(MintError, match="the maximum expiry is 2d"):
        parse_refer_request({"userId": "u", "expireMeasure": "hours", "expireOffset": 49}, cfg)
    ok = parse_refer_request({"userId": "u", "expireMeasure": "hours", "expireOffset": 48}, cfg)
    assert ok.lifetime == 2 * 86400


def test_default_expiry_is_shortened_to_the_role_cap(tmp_path: Path) -> None:
    doc = config_doc(tokens={"default_expiry": "2h"})
    cfg = build_config(tmp_path, doc)
    assert parse_refer_request({"userId": "u"}, cfg).lifetime == 7200
    admin = parse_refer_request({"userId": "u", "additionalParams": {"role": "Admin"}}, cfg)
    assert admin.lifetime == 3600


def test_hostile_field_names_are_not_echoed_whole(config: Config) -> None:
    key = "k\n" + "x" * 500
    with pytest.raises(MintError) as info:
        parse_refer_request({"userId": "u", "additionalParams": {key: "v"}}, config)
    assert "\n" not in info.value.field
    assert len(info.value.field) <= 120


# -- sealing -----------------------------------------------------------------------------


def test_mint_seals_the_request(config: Config) -> None:
    body: dict[str, object] = {
        "userId": "0000000abc",
        "expireMeasure": "days",
        "expireOffset": 7,
        "module": "5e9f83275349fc020f8db299",
        "additionalParams": {"tenant": "acme"},
    }
    codec = TokenCodec(config.keyset)
    link = mint_refer(
        parse_refer_request(body, config), codec, public_url=config.public_url, now=NOW
    )
    claims = codec.open(link.token, NOW)
    assert claims == link.claims
    assert claims.subject == "0000000abc"
    assert claims.role == "Authenticated"
    assert claims.kind == "refer"
    assert claims.one_time is True
    assert dict(claims.params) == {"tenant": "acme"}
    assert claims.issued_at == int(NOW)
    assert claims.expires_at == int(NOW) + 7 * 86400
    answer = link.to_json()
    assert answer["url"] == (
        f"https://app.example.test/?refer={link.token}/#/display/5e9f83275349fc020f8db299"
    )
    assert answer["referString"] == link.token
    assert answer["id"] == claims.token_id
    assert answer["expiresAt"] == "2027-01-22T08:00:00Z"


def test_two_mints_have_different_ids(config: Config) -> None:
    codec = TokenCodec(config.keyset)
    request = parse_refer_request({"userId": "u"}, config)
    first = mint_refer(request, codec, public_url=config.public_url, now=NOW)
    second = mint_refer(request, codec, public_url=config.public_url, now=NOW)
    assert first.claims.token_id != second.claims.token_id


def test_mint_too_long(config: Config) -> None:
    request = parse_refer_request(
        {"userId": "u", "additionalParams": {"tenant": "t" * 1500, "locale": "l" * 1500}}, config
    )
    with pytest.raises(TokenTooLong, match="shorter than 4096"):
        mint_refer(request, TokenCodec(config.keyset), public_url=config.public_url, now=NOW)


@pytest.mark.parametrize(
    ("base", "module", "url"),
    [
        ("https://a.test", None, "https://a.test/?refer=T/"),
        ("https://a.test/", None, "https://a.test/?refer=T/"),
        ("https://a.test/app", "m1", "https://a.test/app/?refer=T/#/display/m1"),
    ],
)
def test_refer_url(base: str, module: str | None, url: str) -> None:
    assert refer_url(base, "T", module) == url


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "public_url",
    [
        "https://app.example.com",
        'https://ex.test/"q"\\/ü\u2028',
        "http://h:1/p/",
        "https://ex.test/?refer=",  # the first "?refer=" is not the token's
    ],
)
def test_the_answer_text_is_what_json_dumps_writes(public_url: str, config: Config) -> None:
    link = mint_refer(
        parse_refer_request({"userId": "u", "module": "5e9f01"}, config),
        TokenCodec(config.keyset),
        public_url=public_url,
        now=1_800_000_000.75,
    )
    link = dataclasses.replace(link, url=link.url + "\x00\u00e9\U0001f600")
    assert link.answer_text(link.expires_at_iso) == json.dumps(link.to_json())
    assert link.expires_at_iso == "2027-01-15T09:00:00Z"  # issued 08:00:00.75, 1 h
    for url in (f"https://x.test/\u2028{link.token}", "https://x.test/?refer=\u2028"):
        other = dataclasses.replace(link, url=url)  # the token elsewhere, or nowhere
        assert other.answer_text(link.expires_at_iso) == json.dumps(other.to_json())
