"""Auth links, domain side: generate_link bodies, users, minting, and verification effects.

Real SQLite store, real token codec, injected clock. HTTP status codes and bodies are in
``test_links_http.py``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.config import Config
from sidecar.links.generate import (
    GeneratedLink,
    generate,
    lookup_key,
    otp_hash,
    otp_matches,
)
from sidecar.links.passwords import verify_password
from sidecar.links.request import (
    INVALID_TYPE_DETAILS,
    InvalidLinkRequest,
    LinkRequestError,
    UnprocessableLink,
    UserNotFound,
    normalise_email,
    parse_link_request,
)
from sidecar.links.verify import (
    VerifyFailed,
    check_token,
    redeem_token,
    verify_otp,
    verify_token_hash,
)
from sidecar.services import Services
from sidecar.store.base import TokenState, User
from sidecar.store.ratelimit import RateLimited
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens.codec import TokenCodec
from tests.harness import Clock, make_config

LINKS = {
    "default_redirect": "http://app.test/home",
    "redirect_allow": ["http://app.test/**", "https://*.example.com/welcome"],
    "otp_rate": "5/15m",
    "max_otp_attempts": 3,
}


def config_for(tmp: Path, **links: object) -> Config:
    return make_config(tmp, "http://127.0.0.1:9", links={**LINKS, **links})


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    config = config_for(tmp_path)
    store = SQLiteStore(str(tmp_path / "links.db"))
    await store.open()
    try:
        yield Services(config=config, store=store, codec=TokenCodec(config.keyset), clock=Clock())
    finally:
        await store.close()


async def mint(services: Services, **body: object) -> GeneratedLink:
    return await generate(services, parse_link_request(body, services.config))


async def add_user(services: Services, email: str, *, confirmed: bool = True) -> User:
    now = services.clock()
    user = User(
        id=f"id-{email}", email=email, created_at=now, confirmed_at=now if confirmed else None
    )
    await services.store.create_user(user)
    return user


def token_of(link: GeneratedLink) -> str:
    return parse_qs(urlsplit(link.action_link).query)["token"][0]


# -- request parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [None, "", "MagicLink", "refer", "email_change_old", 5, ["signup"]]
)
def test_invalid_type_is_the_seeds_exact_error(tmp_path: Path, kind: object) -> None:
    with pytest.raises(InvalidLinkRequest) as caught:
        parse_link_request({"type": kind, "email": "a@b.co"}, config_for(tmp_path))
    assert (caught.value.msg, caught.value.details) == ("Invalid link type", INVALID_TYPE_DETAILS)
    assert INVALID_TYPE_DETAILS == (
        "Link type must be one of: signup, magiclink, recovery, invite, email_change"
    )


@pytest.mark.parametrize(
    ("body", "error", "msg", "details"),
    [
        ({"userId": "x"}, InvalidLinkRequest, "Invalid request", "unknown field(s): userId"),
        ({"email": None}, InvalidLinkRequest, "Invalid email", "email is required"),
        ({"email": 5}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "no-at-sign"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "a@b@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "a..b@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": ".a@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "a b@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "a@-c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "ü@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        ({"email": "a" * 65 + "@c.co"}, InvalidLinkRequest, "Invalid email", "invalid format"),
        (
            {"email": "a@" + "b" * 62 + "." + "c" * 62 + "." + "d" * 62 + "." + "e" * 62 + ".co"},
            InvalidLinkRequest,
            "Invalid email",
            "invalid format",
        ),
        (
            {"redirect_to": "https://evil.com/"},
            InvalidLinkRequest,
            "Invalid redirect_to",
            "not in the allow-list",
        ),
        (
            {"redirect_to": "http://app.test.evil.com/"},
            InvalidLinkRequest,
            "Invalid redirect_to",
            "not in the allow-list",
        ),
        ({"redirect_to": "//evil.com/"}, InvalidLinkRequest, "Invalid redirect_to", "absolute"),
        ({"redirect_to": 7}, InvalidLinkRequest, "Invalid redirect_to", "must be a string"),
        ({"data": [1]}, InvalidLinkRequest, "Invalid data", "must be a JSON object"),
        ({"data": {"x": "y" * 5000}}, InvalidLinkRequest, "Invalid data", "larger than 4096"),
        ({"password": "longenough"}, InvalidLinkRequest, "Invalid request", "signup and invite"),
        ({"new_email": "n@b.co"}, InvalidLinkRequest, "Invalid request", "email_change links only"),
    ],
)
def test_bad_magiclink_requests(
    tmp_path: Path, body: dict[str, object], error: type, msg: str, details: str
) -> None:
    with pytest.raises(LinkRequestError) as caught:
        parse_link_request({"type": "magiclink", "email": "a@b.co", **body}, config_for(tmp_path))
    assert type(caught.value) is error
    assert caught.value.msg == msg
    assert details in caught.value.details


@pytest.mark.parametrize(
    ("kind", "body", "error", "msg"),
    [
        ("signup", {}, UnprocessableLink, "Signup requires a valid password"),
        (
            "signup",
            {"password": "short"},
            UnprocessableLink,
            "Password should be at least 8 characters",
        ),
        ("signup", {"password": 12345678}, InvalidLinkRequest, "Invalid request"),
        ("recovery", {"password": "longenough"}, InvalidLinkRequest, "Invalid request"),
        ("recovery", {"data": {"a": 1}}, InvalidLinkRequest, "Invalid data"),
        ("email_change", {"new_email": "bad"}, InvalidLinkRequest, "Invalid new_email"),
        ("email_change", {"new_email": " A@B.co "}, UnprocessableLink, "Email address unchanged"),
    ],
)
def test_bad_requests_per_type(
    tmp_path: Path, kind: str, body: dict[str, object], error: type, msg: str
) -> None:
    with pytest.raises(LinkRequestError) as caught:
        parse_link_request({"type": kind, "email": "a@b.co", **body}, config_for(tmp_path))
    assert type(caught.value) is error
    assert caught.value.msg == msg


def test_email_normalised_and_redirect_defaults(tmp_path: Path) -> None:
    request = parse_link_request(
        {"type": "magiclink", "email": "  Ann.Lee+x@Example.COM \n"}, config_for(tmp_path)
    )
    assert request.email == "ann.lee+x@example.com"
    assert request.redirect_to == "http://app.test/home"
    assert normalise_email("a@" + "b" * 63 + ".co") is not None
    assert normalise_email("x" * 64 + "@" + ("b" * 62 + ".") * 3 + "co") is None  # > 254


def test_redirect_is_normalised_and_empty_means_default(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    request = parse_link_request(
        {"type": "magiclink", "email": "a@b.co", "redirect_to": "HTTPS://Team.Example.com/welcome"},
        config,
    )
    assert request.redirect_to == "https://team.example.com/welcome"
    blank = parse_link_request({"type": "magiclink", "email": "a@b.co", "redirect_to": ""}, config)
    assert blank.redirect_to == "http://app.test/home"


def test_password_never_in_repr(tmp_path: Path) -> None:
    request = parse_link_request(
        {"type": "signup", "email": "a@b.co", "password": "s3cret-passw0rd"}, config_for(tmp_path)
    )
    assert "s3cret" not in repr(request)


# -- generate ----------------------------------------------------------------------------


async def test_signup_creates_an_unconfirmed_user_with_a_real_password_hash(
    services: Services,
) -> None:
    link = await mint(
        services, type="signup", email="New@Example.com", password="pa55word!", data={"plan": "pro"}
    )
    user = await services.store.get_user_by_email("new@example.com")
    assert user is not None
    assert user.confirmed_at is None
    assert user.invited_at is None
    assert user.metadata == {"plan": "pro"}
    assert user.password_hash is not None
    assert "pa55word!" not in user.password_hash
    assert user.password_hash.startswith("$scrypt$")
    assert verify_password("pa55word!", user.password_hash)
    assert not verify_password("pa55word?", user.password_hash)

    assert link.to_json()["id"] == user.id
    doc = link.properties()
    assert set(doc) == {
        "action_link",
        "email_otp",
        "hashed_token",
        "verification_type",
        "redirect_to",
    }
    assert doc["verification_type"] == "signup"
    assert doc["redirect_to"] == "http://app.test/home"
    assert re.fullmatch(r"[0-9]{6}", doc["email_otp"])
    parts = urlsplit(doc["action_link"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://app.test/_sidecar/verify"
    query = parse_qs(parts.query)
    assert query["type"] == ["signup"]
    assert query["redirect_to"] == ["http://app.test/home"]
    token = query["token"][0]
    assert doc["hashed_token"] == hashlib.sha256(token.encode()).hexdigest()

    claims = services.codec.open(token, services.clock())
    assert (claims.kind, claims.subject, claims.email) == ("signup", user.id, "new@example.com")
    assert claims.redirect_to == "http://app.test/home"
    assert claims.one_time
    assert claims.role == services.config.links.role
    assert claims.expires_at - claims.issued_at == 3600

    pending = await services.store.get_link(user.id, "signup")
    assert pending is not None
    assert pending.token_id == claims.token_id
    # The store holds no usable secret: neither the OTP nor the hashed_token itself.
    assert doc["email_otp"] not in pending.otp_hash
    assert pending.hashed_token != doc["hashed_token"]
    assert pending.hashed_token == lookup_key(doc["hashed_token"])
    assert pending.expires_at == claims.expires_at


async def test_signup_again_while_unconfirmed_replaces_password(services: Services) -> None:
    await mint(services, type="signup", email="a@b.co", password="first-password")
    await mint(services, type="signup", email="a@b.co", password="second-password")
    user = await services.store.get_user_by_email("a@b.co")
    assert user is not None
    assert user.password_hash is not None
    assert verify_password("second-password", user.password_hash)


@pytest.mark.parametrize("kind", ["signup", "invite"])
async def test_confirmed_user_is_already_registered(services: Services, kind: str) -> None:
    await add_user(services, "a@b.co")
    body: dict[str, object] = {"password": "long-enough"} if kind == "signup" else {}
    with pytest.raises(UnprocessableLink) as caught:
        await mint(services, type=kind, email="a@b.co", **body)
    assert caught.value.msg == "User already registered"


async def test_invite_creates_an_invited_user(services: Services) -> None:
    await mint(services, type="invite", email="i@b.co", data={"first_name": "John"})
    user = await services.store.get_user_by_email("i@b.co")
    assert user is not None
    assert user.invited_at == services.clock()
    assert user.confirmed_at is None
    assert user.metadata == {"first_name": "John"}
    assert user.password_hash is None


@pytest.mark.parametrize("kind", ["magiclink", "recovery", "email_change"])
async def test_types_that_need_a_user(services: Services, kind: str) -> None:
    body: dict[str, object] = {"new_email": "n@b.co"} if kind == "email_change" else {}
    with pytest.raises(UserNotFound) as caught:
        await mint(services, type=kind, email="nobody@b.co", **body)
    assert caught.value.msg == "User not found"
    assert await services.store.get_user_by_email("nobody@b.co") is None


async def test_magiclink_can_create_the_user_when_configured(
    services: Services, tmp_path: Path
) -> None:
    services = replace(services, config=config_for(tmp_path, create_user_on_magiclink=True))
    await mint(services, type="magiclink", email="fresh@b.co", data={"src": "crm"})
    user = await services.store.get_user_by_email("fresh@b.co")
    assert user is not None
    assert user.confirmed_at is None
    assert user.metadata == {"src": "crm"}


async def test_magiclink_data_for_an_existing_user_is_refused(services: Services) -> None:
    await add_user(services, "a@b.co")
    with pytest.raises(InvalidLinkRequest, match="data"):
        await mint(services, type="magiclink", email="a@b.co", data={"x": 1})


async def test_email_change_new_address_must_be_free(services: Services) -> None:
    await add_user(services, "a@b.co")
    await add_user(services, "taken@b.co")
    with pytest.raises(UnprocessableLink) as caught:
        await mint(services, type="email_change", email="a@b.co", new_email="Taken@b.co")
    assert caught.value.msg == "Email address already registered"


async def test_email_change_seed_form_reissues_the_pending_change(services: Services) -> None:
    user = await add_user(services, "a@b.co")
    with pytest.raises(UnprocessableLink) as caught:
        await mint(services, type="email_change", email="a@b.co")
    assert caught.value.msg == "No email change pending"
    first = await mint(services, type="email_change", email="a@b.co", new_email="n@b.co")
    again = await mint(services, type="email_change", email="a@b.co")
    pending = await services.store.get_link(user.id, "email_change")
    assert pending is not None
    assert pending.new_email == "n@b.co"
    assert pending.token_id != services.codec.open(token_of(first), services.clock()).token_id
    assert pending.token_id == services.codec.open(token_of(again), services.clock()).token_id


async def test_otp_length_is_configurable(services: Services, tmp_path: Path) -> None:
    services = replace(services, config=config_for(tmp_path, otp_length=10))
    await add_user(services, "a@b.co")
    link = await mint(services, type="magiclink", email="a@b.co")
    assert re.fullmatch(r"[0-9]{10}", link.email_otp)


def test_otp_hash_is_keyed_and_survives_rotation(tmp_path: Path) -> None:
    keyset = config_for(tmp_path).keyset
    stored = otp_hash(keyset, "tid", "123456")
    assert stored.startswith(keyset.active_kid + ":")
    assert stored != otp_hash(keyset.with_new_key(), "tid", "123456")  # another key
    assert stored != otp_hash(keyset, "other-tid", "123456")  # bound to the link
    from sidecar.store.base import PendingLink

    link = PendingLink("u", "magiclink", "tid", "h", stored, 0.0)
    assert otp_matches(keyset.with_new_key(), link, "123456")  # old kid still verifies
    assert not otp_matches(keyset, link, "123457")
    assert not otp_matches(keyset, replace(link, otp_hash="gone:" + stored.split(":")[1]), "123456")


# -- verification ------------------------------------------------------------------------


async def test_each_type_applies_its_effect(services: Services) -> None:
    signup = await mint(services, type="signup", email="s@b.co", password="password-1")
    verified = await redeem_token(services, token_of(signup), "signup", None)
    assert verified.user.confirmed_at == services.clock()
    assert verified.redirect_to == "http://app.test/home"

    invite = await mint(services, type="invite", email="i@b.co")
    verified = await redeem_token(services, token_of(invite), "invite", "http://app.test/home")
    assert verified.user.confirmed_at is not None
    assert verified.user.invited_at is not None

    await add_user(services, "m@b.co", confirmed=False)
    magic = await mint(services, type="magiclink", email="m@b.co")
    assert (await redeem_token(services, token_of(magic), "magiclink", None)).user.confirmed_at

    recovery = await mint(services, type="recovery", email="s@b.co")
    verified = await verify_otp(
        services, "recovery", "S@b.co", recovery.email_otp, client="c", password="new-password"
    )
    assert verified.password_changed
    assert verified.user.password_hash is not None
    assert verify_password("new-password", verified.user.password_hash)

    change = await mint(services, type="email_change", email="s@b.co", new_email="s2@b.co")
    verified = await verify_token_hash(services, "email_change", change.hashed_token)
    assert verified.user.email == "s2@b.co"
    assert await services.store.get_user_by_email("s@b.co") is None
    assert (await services.store.get_user_by_email("s2@b.co")) == verified.user


async def test_one_time_and_newer_link_kills_older(services: Services) -> None:
    await add_user(services, "a@b.co")
    old = await mint(services, type="magiclink", email="a@b.co")
    new = await mint(services, type="magiclink", email="a@b.co")
    with pytest.raises(VerifyFailed, match="superseded"):
        await redeem_token(services, token_of(old), "magiclink", None)
    with pytest.raises(VerifyFailed, match="invalid_link"):
        await verify_token_hash(services, "magiclink", old.hashed_token)
    with pytest.raises(VerifyFailed, match="invalid_otp"):
        await verify_otp(services, "magiclink", "a@b.co", old.email_otp, client="c")
    await redeem_token(services, token_of(new), "magiclink", None)
    with pytest.raises(VerifyFailed, match="used"):
        await redeem_token(services, token_of(new), "magiclink", None)
    assert await services.store.get_link("id-a@b.co", "magiclink") is None


async def test_a_link_of_another_type_is_independent(services: Services) -> None:
    await add_user(services, "a@b.co")
    magic = await mint(services, type="magiclink", email="a@b.co")
    await mint(services, type="recovery", email="a@b.co")
    await redeem_token(services, token_of(magic), "magiclink", None)


async def test_token_checks(services: Services) -> None:
    await add_user(services, "a@b.co")
    link = await mint(services, type="magiclink", email="a@b.co", redirect_to="http://app.test/x")
    token = token_of(link)
    for kind in ("recovery", "refer", "bogus"):
        with pytest.raises(VerifyFailed, match="malformed"):
            await check_token(services, token, kind, None)
    for swapped in ("http://app.test/y", "https://evil.com/", "not a url"):
        with pytest.raises(VerifyFailed, match="redirect_mismatch"):
            await check_token(services, token, "magiclink", swapped)
    await check_token(services, token, "magiclink", "HTTP://APP.test/x")  # same URL
    with pytest.raises(VerifyFailed, match="tampered"):
        await check_token(
            services, token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB"), "magiclink", None
        )
    await services.store.revoke(
        services.codec.open(token, services.clock()).token_id, services.clock() + 3600
    )
    with pytest.raises(VerifyFailed, match="revoked"):
        await redeem_token(services, token, "magiclink", None)


async def test_expiry(services: Services) -> None:
    assert isinstance(services.clock, Clock)
    await add_user(services, "a@b.co")
    link = await mint(services, type="magiclink", email="a@b.co")
    services.clock.advance(3600)
    with pytest.raises(VerifyFailed, match="expired"):
        await redeem_token(services, token_of(link), "magiclink", None)
    with pytest.raises(VerifyFailed, match="expired"):
        await verify_otp(services, "magiclink", "a@b.co", link.email_otp, client="c")
    with pytest.raises(VerifyFailed, match="expired"):
        await verify_token_hash(services, "magiclink", link.hashed_token)
    # A wrong code gets the answer an address without any link gets: no enumeration.
    wrong = "0" * len(link.email_otp) if link.email_otp != "0" * len(link.email_otp) else "1" * 6
    with pytest.raises(VerifyFailed, match="invalid_otp"):
        await verify_otp(services, "magiclink", "a@b.co", wrong, client="c")
    with pytest.raises(VerifyFailed, match="invalid_otp"):
        await verify_otp(services, "magiclink", "nobody@b.co", wrong, client="c")


async def test_redirect_removed_from_the_allow_list_is_refused(
    services: Services, tmp_path: Path
) -> None:
    await add_user(services, "a@b.co")
    link = await mint(
        services, type="magiclink", email="a@b.co", redirect_to="https://team.example.com/welcome"
    )
    services = replace(
        services,
        config=replace(
            services.config,
            links=replace(services.config.links, redirect_allow=("http://app.test/**",)),
        ),
    )
    with pytest.raises(VerifyFailed, match="redirect_mismatch"):
        await check_token(services, token_of(link), "magiclink", None)


async def test_wrong_otps_lock_the_link(services: Services) -> None:
    await add_user(services, "a@b.co")
    link = await mint(services, type="magiclink", email="a@b.co")
    wrong = "000000" if link.email_otp != "000000" else "111111"
    for attempt in range(3):  # max_otp_attempts: 3
        with pytest.raises(VerifyFailed, match="invalid_otp"):
            await verify_otp(services, "magiclink", "a@b.co", wrong, client=f"c{attempt}")
    assert await services.store.get_link("id-a@b.co", "magiclink") is None
    token_id = services.codec.open(token_of(link), services.clock()).token_id
    assert await services.store.token_state(token_id) is TokenState.REVOKED
    with pytest.raises(VerifyFailed, match="invalid_otp"):  # the right code is dead too
        await verify_otp(services, "magiclink", "a@b.co", link.email_otp, client="c9")
    with pytest.raises(VerifyFailed, match="revoked"):
        await redeem_token(services, token_of(link), "magiclink", None)


async def test_malformed_codes_count_as_wrong(services: Services) -> None:
    await add_user(services, "a@b.co")
    await mint(services, type="magiclink", email="a@b.co")
    for code in ("", "12345", "abcdef", "1234567890123"):
        with pytest.raises(VerifyFailed, match="invalid_otp"):
            await verify_otp(services, "magiclink", "a@b.co", code, client=code)
    assert await services.store.get_link("id-a@b.co", "magiclink") is None


async def test_otp_guesses_are_rate_limited_per_email_and_per_client(services: Services) -> None:
    assert isinstance(services.clock, Clock)
    for n in range(7):
        await add_user(services, f"u{n}@b.co")
    for n in range(5):  # otp_rate: 5/15m from one client, across emails
        with pytest.raises(VerifyFailed):
            await verify_otp(services, "magiclink", f"u{n}@b.co", "123456", client="10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        await verify_otp(services, "magiclink", "u5@b.co", "123456", client="10.0.0.1")
    assert 0 < caught.value.retry_after <= 900
    for n in range(5):  # one email, from many clients
        with pytest.raises(VerifyFailed):
            await verify_otp(services, "magiclink", "u6@b.co", "123456", client=f"10.1.0.{n}")
    link = await mint(services, type="magiclink", email="u6@b.co")
    with pytest.raises(RateLimited):  # even the right code waits
        await verify_otp(services, "magiclink", "U6@b.co", link.email_otp, client="10.2.0.1")
    services.clock.advance(900)
    verified = await verify_otp(services, "magiclink", "u6@b.co", link.email_otp, client="10.2.0.1")
    assert verified.user.email == "u6@b.co"


async def test_verify_password_rules(services: Services) -> None:
    await add_user(services, "a@b.co")
    magic = await mint(services, type="magiclink", email="a@b.co")
    with pytest.raises(VerifyFailed, match="bad_request"):
        await verify_token_hash(services, "magiclink", magic.hashed_token, password="long-enough")
    recovery = await mint(services, type="recovery", email="a@b.co")
    with pytest.raises(VerifyFailed, match="weak_password"):
        await verify_token_hash(services, "recovery", recovery.hashed_token, password="short")
    # Neither failure used the links up.
    await verify_token_hash(services, "magiclink", magic.hashed_token)
    await verify_token_hash(services, "recovery", recovery.hashed_token)


async def test_email_change_to_an_address_taken_meanwhile(services: Services) -> None:
    await add_user(services, "a@b.co")
    link = await mint(services, type="email_change", email="a@b.co", new_email="n@b.co")
    await add_user(services, "n@b.co")
    with pytest.raises(VerifyFailed, match="email_exists"):
        await redeem_token(services, token_of(link), "email_change", None)
    assert (await services.store.get_user("id-a@b.co")) is not None


async def test_token_hash_must_be_a_sha256_hex(services: Services) -> None:
    for bad in ("", "z" * 64, "A" * 64, "a" * 63):
        with pytest.raises(VerifyFailed, match="malformed"):
            await verify_token_hash(services, "magiclink", bad)
