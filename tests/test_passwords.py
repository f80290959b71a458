"""Password hashing: scrypt through ``cryptography``, PHC-style strings, constant-time checks."""

from __future__ import annotations

import re
import time

import pytest

from sidecar.links.passwords import (
    BadPasswordHash,
    PasswordPolicyError,
    ScryptParams,
    check_policy,
    hash_password,
    needs_rehash,
    verify_password,
)

FAST = ScryptParams(log2_n=10, r=8, p=1)


def test_hash_is_not_the_password_and_verifies() -> None:
    encoded = hash_password("correct horse battery")
    assert "correct horse battery" not in encoded
    assert re.fullmatch(r"\$scrypt\$ln=14,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", encoded)
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("correct horse batterY", encoded)
    assert not verify_password("", encoded)


def test_salt_makes_every_hash_different() -> None:
    assert hash_password("same password", FAST) != hash_password("same password", FAST)


@pytest.mark.parametrize("password", ["pässwörd-ünïcode", "🔑" * 8, "a" * 1024, "x\ud800yzabcdefg"])
def test_any_string_round_trips(password: str) -> None:
    encoded = hash_password(password, FAST)
    assert verify_password(password, encoded)
    assert not verify_password(password + "!", encoded)


def test_default_cost_is_bounded() -> None:
    start = time.perf_counter()
    hash_password("timing check")
    # ~25-50 ms on one core; generous for a shared CI machine, but catches a 10x mistake.
    assert time.perf_counter() - start < 0.5


def test_parameters_travel_with_the_hash() -> None:
    encoded = hash_password("old parameters", FAST)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_password("old parameters", encoded)  # still verifies under new defaults
    assert needs_rehash(encoded)
    assert not needs_rehash(hash_password("new parameters"))


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain text password",
        "$2b$12$abcdefghijklmnopqrstuu5vD9c1q9QbQ2bCq7fS7m0G1Xr7x8yq6",
        "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA",  # salt and hash too short
        "$scrypt$ln=30,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # 2^30: gigabytes
        "$scrypt$ln=9,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # below the floor
        "$scrypt$ln=20,r=32,p=16$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # > 256 MiB
        "$scrypt$ln=14,r=8,p=1$A!AAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # bad base64 length
    ],
)
def test_bad_stored_hashes_are_data_errors_not_wrong_passwords(encoded: str) -> None:
    with pytest.raises(BadPasswordHash):
        verify_password("whatever123", encoded)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "Password should be at least 8 characters"),
        ("1234567", "Password should be at least 8 characters"),
        ("a" * 1025, "Password should be at most 1024 characters"),
        (" " * 12, "Password should not be only whitespace"),
    ],
)
def test_policy(password: str, message: str) -> None:
    with pytest.raises(PasswordPolicyError) as caught:
        check_policy(password)
    assert str(caught.value) == message
    assert password.strip() == "" or password not in str(caught.value)


def test_policy_accepts_eight_characters() -> None:
    check_policy("12345678")
