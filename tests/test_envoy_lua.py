"""deploy/envoy/ext-authz.yaml's Lua filter, which cuts the sidecar's session cookie from the
Cookie the app gets. No Envoy here: the script runs in a real Lua (lupa) against an object with
the part of Envoy's header-map API it calls (getNumValues, getAtIndex, remove, add — as in
Envoy's Lua filter docs, HTTP/2 may bring several cookie headers); its place in the filter chain
and its per-route switch are checked by field name.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.conftest import skip_or_fail
from tests.nginx_stack import ROOT

try:
    import lupa  # type: ignore[import-untyped]  # no stubs
except ImportError:  # an older venv: pip install -e '.[test]'
    lupa = None

ENVOY = ROOT / "deploy/envoy/ext-authz.yaml"
LUA = "envoy.filters.http.lua"


def _hcm() -> dict[str, Any]:
    doc = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    (listener,) = doc["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    config: dict[str, Any] = hcm["typed_config"]
    return config


class _Headers:
    """Envoy's request header map, as the Lua filter sees it (0-based getAtIndex)."""

    def __init__(self, cookies: list[str]) -> None:
        self.cookies = list(cookies)

    def getNumValues(self, name: str) -> int:  # Envoy's names
        return len(self.cookies) if name == "cookie" else 0

    def getAtIndex(self, name: str, index: int) -> str:
        assert name == "cookie"
        return self.cookies[index]

    def remove(self, name: str) -> None:
        assert name == "cookie"
        self.cookies = []

    def add(self, name: str, value: str) -> None:
        assert name == "cookie"
        self.cookies.append(value)


class _Handle:
    def __init__(self, headers: _Headers) -> None:
        self._headers = headers

    def headers(self) -> _Headers:
        return self._headers


def _run(cookies: list[str]) -> list[str]:
    if lupa is None:
        skip_or_fail("lupa is not installed (pip install -e '.[test]')")
    (lua,) = [f for f in _hcm()["http_filters"] if f["name"] == LUA]
    source = lua["typed_config"]["default_source_code"]["inline_string"]
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.execute(source)
    headers = _Headers(cookies)
    runtime.globals().envoy_on_request(_Handle(headers))
    return headers.cookies


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ([], []),
        (["sidecar_session=s"], []),
        (["sidecar_session=s; a=1"], ["a=1"]),
        (["a=1;sidecar_session=s"], ["a=1"]),
        (["a=1; mysidecar_session=2; sidecar_session=s"], ["a=1; mysidecar_session=2"]),
        (["sidecar_session=s; a=1; sidecar_session=old; b=2"], ["a=1; b=2"]),
        (["sidecar_session=s; a=1; __Host-sidecar_session=new"], ["a=1"]),
        (["__Secure-sidecar_session=x; sidecar_session=s; b=2"], ["b=2"]),
        (["theme=dark", "sidecar_session=s", "lang=en"], ["theme=dark; lang=en"]),
        (["theme=dark; lang=en"], ["theme=dark; lang=en"]),
    ],
)
def test_the_lua_filter_cuts_the_session_cookie(sent: list[str], kept: list[str]) -> None:
    assert _run(sent) == kept


def test_the_lua_filter_runs_after_ext_authz_and_not_on_the_sidecars_routes() -> None:
    hcm = _hcm()
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.ext_authz", LUA, "envoy.filters.http.router"]
    (lua,) = [f for f in hcm["http_filters"] if f["name"] == LUA]
    typed = lua["typed_config"]
    assert typed["@type"] == "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
    assert set(typed) == {"@type", "default_source_code"}
    assert set(typed["default_source_code"]) == {"inline_string"}
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    *sidecar_routes, app = vhost["routes"]
    assert app["route"]["cluster"] == "app"
    for route in sidecar_routes:
        per_route = route["typed_per_filter_config"][LUA]
        assert per_route == {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "disabled": True,
        }
