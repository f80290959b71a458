"""ClientAddresses: who the client is, from the peer and ``proxy.trusted_proxies``."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.proxy.clientaddr import ClientAddresses


class _Socket:
    """The one thing a request asks its transport for here: the peer's address."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self._peer, 40000) if name == "peername" and self._peer else default


def request(peer: str, *forwarded_for: str) -> web.Request:
    headers = [("X-Forwarded-For", value) for value in forwarded_for]
    return make_mocked_request("GET", "/", headers=headers, transport=_Socket(peer))


TRUSTED = ClientAddresses((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # An untrusted peer's X-Forwarded-For is its own words: ignored.
        ("203.0.113.9", ("198.51.100.1",), "203.0.113.9"),
        # Through a trusted proxy: the nearest hop that is not a trusted proxy.
        ("10.0.0.1", ("198.51.100.1",), "198.51.100.1"),
        ("10.0.0.1", ("192.0.2.7, 198.51.100.1, 10.1.1.1",), "198.51.100.1"),
        # Several headers read as one list, in order.
        ("10.0.0.1", ("192.0.2.7", "198.51.100.1, 10.2.2.2"), "198.51.100.1"),
        # Every hop trusted, or none given: the peer itself.
        ("10.0.0.1", ("10.3.3.3, 10.4.4.4",), "10.0.0.1"),
        ("10.0.0.1", (), "10.0.0.1"),
        ("fd00::1", ("2001:db8::5",), "2001:db8::5"),
        # Empty hops are skipped.
        ("10.0.0.1", ("198.51.100.1, , ",), "198.51.100.1"),
    ],
)
def test_client_address(peer: str, forwarded_for: tuple[str, ...], client: str) -> None:
    assert TRUSTED.of(request(peer, *forwarded_for)) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    clients = ClientAddresses(())
    assert not clients.trusts("10.0.0.1")
    assert clients.of(request("10.0.0.1", "198.51.100.1")) == "10.0.0.1"


@pytest.mark.parametrize("peer", [None, "", "not-an-address", "10.0.0.1%eth0x"])
def test_what_is_not_an_address_is_never_trusted(peer: str | None) -> None:
    assert not TRUSTED.trusts(peer)


def test_no_peer_no_client_address() -> None:
    assert TRUSTED.of(request("", "198.51.100.1")) == ""
