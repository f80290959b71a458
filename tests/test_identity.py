"""The identity-value rule (sidecar.tokens.identity) and the renderer's use of it."""

from __future__ import annotations

import pytest

from sidecar.proxy.templates import compile_header
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
