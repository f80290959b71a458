"""sidecar.refer.redeem's query reading: the lean front's must be aiohttp's.

The lean front reads a plain query's ``refer`` values itself
(:func:`~sidecar.refer.redeem.plain_refer_values`); whatever it returns must be what
aiohttp's handler reads (``request.query.getall("refer")``, yarl's parser), and it must
step aside (None) for every query it is not sure to read the same.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from sidecar.refer.redeem import plain_refer_values
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
