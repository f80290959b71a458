"""sidecar.refer.redeem's query reading: the lean front's must be aiohttp's.

The lean front reads a plain query's ``refer`` values itself
(:func:`~sidecar.refer.redeem.plain_refer_values`); whatever it returns must be what
aiohttp's handler reads (``request.query.getall("refer")``, yarl's parser), and it must
step aside (None) for every query it is not sure to read the same.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from sidecar.refer.minting import MODULE
from sidecar.refer.redeem import landing_url, plain_refer_values
from sidecar.tokens.codec import Claims
from tests.security.fuzzing import fuzz

_PARTS = st.sampled_from(
    ["refer", "=", "&", "a", "Z", "0", "-", "_", ".", "~", "/", "eyJ", "%", "%72", "+", ";",
     "#", " ", "?", "é", "referrer", "xrefer", "==", "&&"]
)  # fmt: skip


def _aiohttp_reads(query: str) -> list[str]:
    return URL.build(path="/", query_string=query, encoded=True).query.getall("refer", [])


@fuzz(2000)
@given(query=st.lists(_PARTS, max_size=12).map("".join))
def test_a_plain_query_is_read_as_aiohttp_reads_it(query: str) -> None:
    values = plain_refer_values(query)
    if values is not None:
        assert values == _aiohttp_reads(query)


def test_what_is_and_is_not_read() -> None:
    token = "eyJhbGc.abc-_~/"
    assert plain_refer_values(f"refer={token}") == [token]
    assert plain_refer_values(f"&&a&refer={token}&b=c=d&") == [token]
    assert plain_refer_values("refer=a&refer=b") == ["a", "b"]
    assert plain_refer_values("refer") == [""]
    assert plain_refer_values("referrer=1&xrefer=2") is None  # no refer: not a link
    for query in ("refer=a%2Fb", "r%65fer=a", "refer=a+b", "refer=a;b", "refer=a#b", "a=é&refer=x"):
        assert plain_refer_values(query) is None, query  # aiohttp's handler reads these


_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~/=&-]*")


def _reference(query: str) -> list[str] | None:
    """plain_refer_values as it was written first (a regular expression, then the split):
    the faster one must read every query exactly as this did."""
    if not _PLAIN_QUERY.fullmatch(query):
        return None
    values = [
        value
        for name, _, value in (part.partition("=") for part in query.split("&") if part)
        if name == "refer"
    ]
    return values or None


@fuzz(3000)
@given(
    query=st.one_of(
        st.lists(_PARTS, max_size=12).map("".join),
        st.text(max_size=40),  # any character, ASCII or not
        st.text(alphabet="refr=&a-_./~%+#;\x00\x7f\x80é", max_size=30),
    )
)
def test_the_plain_reading_is_the_first_one(query: str) -> None:
    assert plain_refer_values(query) == _reference(query)


def _landing_reference(target: str, module: str | None) -> str:
    """landing_url as it was written first (every name through unquote_plus)."""
    path, _, query = target.partition("?")
    path = "/" + path.lstrip("/\\")
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != "refer"
    ]
    location = path + ("?" + "&".join(kept) if kept else "")
    if module is not None and MODULE.fullmatch(module):
        location += "#/display/" + module
    return location


@fuzz(2000)
@given(
    path=st.text(alphabet="/\\a%", max_size=6),
    query=st.lists(_PARTS, max_size=10).map("".join),
    module=st.none() | st.sampled_from(["abc", "5e9f01", "a b", ""]),
)
def test_the_landing_url_is_the_first_ones(path: str, query: str, module: str | None) -> None:
    claims = Claims(
        token_id="t", subject="u", role="r", issued_at=1, expires_at=2, one_time=True,
        kind="refer", module=module,
    )  # fmt: skip
    target = path + "?" + query
    assert landing_url(target, claims) == _landing_reference(target, module)


def test_a_links_usual_query_lands_on_its_path() -> None:
    """ "refer=<token>" alone (the usual link, read without splitting the query) keeps
    nothing; any other parameter beside it is kept, as the general reading keeps it."""
    claims = Claims(
        token_id="t", subject="u", role="r", issued_at=1, expires_at=2, one_time=True,
        kind="refer", module="m1",
    )  # fmt: skip
    assert landing_url("/?refer=eyJ.a-b_c/", claims) == "/#/display/m1"
    assert landing_url("//app?refer=x", claims) == "/app#/display/m1"
    assert landing_url("/?refer=x&a=1", claims) == "/?a=1#/display/m1"
    assert landing_url("/?referrer=x", claims) == "/?referrer=x#/display/m1"
    assert landing_url("/?refer", claims) == "/#/display/m1"
