"""The identity-value rule (sidecar.tokens.identity) and the renderer's use of it."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.proxy.templates import compile_header
from sidecar.tokens.codec import has_control
from sidecar.tokens.identity import identity_problem


@pytest.mark.parametrize("value", ["admin", "José Müller", "a b", "用户", "x,y", ""])
def test_values_an_upstream_reads_unchanged(value: str) -> None:
    assert identity_problem(value) is None


@pytest.mark.parametrize(
    "value", [" a", "a ", "a\u00a0", "a\u202eb", "a\u200bb", "\ufeffa", "a\u2028b", "a\x01"]
)
def test_values_a_parser_rewrites_or_hides(value: str) -> None:
    assert identity_problem(value) is not None


def test_commas_only_where_asked() -> None:
    assert identity_problem("a,b") is None
    assert identity_problem("a,b", commas=False) is not None


def test_a_session_minted_before_the_rule_sends_no_rewritable_header() -> None:
    user = compile_header("X-Forwarded-User", "{user_id}")
    groups = compile_header("X-Forwarded-Groups", "{param.groups}")
    assert user.render({"user_id": " admin "}) == ""
    assert user.render({"user_id": "admin,bob"}) == ""
    assert user.render({"user_id": "admin"}) == "admin"
    assert groups.render({"param.groups": "a,b"}) == "a,b"
    assert groups.render({"param.groups": "a\u200b"}) == ""


def _rule(value: str, commas: bool) -> str | None:
    """The rule as it was written before the ASCII shortcut: the reference."""
    if has_control(value):
        return "must not contain control characters or lone surrogates"
    if value and any(
        ch.isspace() or unicodedata.category(ch) == "Zs" for ch in (value[0], value[-1])
    ):
        return "must not start or end with whitespace (HTTP parsers strip it)"
    if any(unicodedata.category(ch) in ("Cf", "Zl", "Zp") for ch in value if ord(ch) > 0x7E):
        return (
            "must not contain invisible formatting characters (bidi overrides, "
            "zero-width characters, line separators)"
        )
    if not commas and "," in value:
        return "must not contain a comma (upstreams may read the header as a list)"
    return None


@given(
    value=st.text(st.characters(max_codepoint=0x7F), max_size=12)
    | st.text(
        st.sampled_from(" \t\x0b\x0c\x1f\x7f\x80\x85\xa0,a\u200b\u2028\ufeff\u3000"), max_size=6
    )
    | st.text(max_size=8),
    commas=st.booleans(),
)
@example(value=" ", commas=True)
@example(value="a ", commas=True)
@example(value=" a", commas=True)
@example(value="\x0b", commas=True)
@example(value="a,b", commas=False)
@example(value="a\x7f", commas=True)
def test_the_ascii_shortcut_answers_as_the_rule(value: str, commas: bool) -> None:
    assert identity_problem(value, commas=commas) == _rule(value, commas)
