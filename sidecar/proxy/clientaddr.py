"""Who the client is: the socket's peer, or — behind trusted proxies — the nearest untrusted hop.

``proxy.trusted_proxies`` lists the networks whose ``X-Forwarded-For`` the sidecar believes.
From any other peer the header is the client's own words and counts for nothing. One
:class:`ClientAddresses` per proxy app decides both questions for every user of them: the
header policy (append to or replace ``X-Forwarded-*``) and the per-client failure budgets
of refer links and auth links (:mod:`sidecar.refer.redeem`, :mod:`sidecar.links.http`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs, web

from sidecar.config import Network

# Peers seen so far and whether they are trusted; bounded so a flood of addresses cannot grow it.
_CACHE_SIZE: Final = 2048


class ClientAddresses:
    """Decides trust and the client's address from the peer and ``proxy.trusted_proxies``."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self.configure(trusted)

    def configure(self, trusted: tuple[Network, ...]) -> None:
        """Trust ``trusted`` from now on (at start and on a reload)."""
        self._trusted = trusted
        self._cache: dict[str, bool] = {}

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address as text) is in a trusted proxy network."""
        if not self._trusted or not peer:
            return False
        trusted = self._cache.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                trusted = False
            else:
                trusted = any(address in net for net in self._trusted)
            if len(self._cache) < _CACHE_SIZE:
                self._cache[peer] = trusted
        return trusted

    def of(self, request: web.BaseRequest) -> str:
        """The client's address: the peer, or through trusted proxies the nearest
        untrusted hop of ``X-Forwarded-For`` (the peer when every hop is trusted)."""
        return self.client(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()))

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """:meth:`of` for a peer and the values of its ``X-Forwarded-For`` headers."""
        peer = peer or ""
        if not self.trusts(peer):
            return peer
        hops = [h.strip() for v in forwarded_for for h in v.split(",")]
        for hop in reversed(hops):
            if hop and not self.trusts(hop):
                return hop
        return peer


CLIENT_ADDRESSES = web.AppKey("client_addresses", ClientAddresses)
