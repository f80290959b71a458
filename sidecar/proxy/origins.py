"""The public origin is the only origin: which ``Host`` and ``Origin`` the proxy listener accepts.

* **Host** (:meth:`PublicOrigin.host_allowed`): the host name of ``public_url`` or one of
  ``proxy.allowed_hosts``, compared without the port (the listener's port is rarely the
  public one behind an ingress). An app that builds links from ``Host`` (password resets,
  redirects, canonical URLs) would otherwise build them for whatever name the client sent.
  A request without ``Host`` (HTTP/1.0) names nothing and is let through: the upstream gets
  its own authority.
* **Origin** (:meth:`PublicOrigin.origin_allowed`): ``public_url``'s origin (scheme, host
  and port, as browsers send it) or one of ``proxy.allowed_origins``. ``Origin: null``
  (sandboxed frames, some redirects) is never allowed.
* **Same-origin requests** (:meth:`PublicOrigin.same_origin`, for state-changing
  endpoints: logout, and the POSTs that sign a browser in — a confirm button, ``POST
  <prefix>/verify`` — so no other site can sign a visitor in as someone else): an
  allowed ``Origin``, or else ``Sec-Fetch-Site: same-origin``/``none`` (Chromium sends
  ``Origin: null`` for a ``POST`` from a page with ``Referrer-Policy: no-referrer``, as the
  sidecar's own pages are). Any other ``Origin`` or
  ``Sec-Fetch-Site`` is refused; a request with neither comes from no browser (every
  current browser sends ``Origin`` on a ``POST``) and cannot be a cross-site forgery.

No aiohttp here: the config checks its lists with :func:`parse_origin` and
:func:`parse_host`, the gateway asks :class:`PublicOrigin`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from sidecar.memo import Memo

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_host(text: str) -> str:
    """A host name or IP address as the check compares it (lower case, IPv6 bracketed);
    raise ValueError for anything else (a port, a scheme, a path, a wildcard)."""
    host = text.strip().lower()
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        return f"[{address}]" if address.version == 6 else str(address)
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"got {text!r}, expected a host name or IP address (no port)")
    return host


def parse_origin(text: str) -> str:
    """``scheme://host[:port]`` as browsers serialise it (default port left out); raise
    ValueError for anything else (a path, credentials, a wildcard, another scheme)."""
    parts = urlsplit(text.strip())
    bad = (
        parts.scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    )
    try:
        port = parts.port
    except ValueError:
        bad = True
    if bad:
        raise ValueError(f"got {text!r}, expected an origin like https://app.example.com")
    host = parse_host(parts.hostname or "")
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


_PORT = re.compile(r"(?::[0-9]{1,5})?")


def forwarded_hosts(value: str) -> list[str]:
    """Every ``host=`` of an RFC 7239 ``Forwarded`` value, unquoted. Quotes are not honoured
    when splitting at ``,`` and ``;``: a quoted ``,`` only yields more candidates to check,
    never hides one a stricter parser would read."""
    hosts = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, sep, given = pair.partition("=")
            if sep and name.strip().lower() == "host":
                hosts.append(given.strip().strip('"'))
    return hosts


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` value, lower case (``[::1]:8080`` -> ``[::1]``); ``""``
    (which no allowed host equals) when what follows it is not ``:<port>`` or nothing.

    The port is left out of the comparison, so it must be a port: an app building
    ``https://{Host}/reset`` from ``app.example.com:@evil.example`` links to evil.example."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        name += bracket
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    return name if _PORT.fullmatch(rest) else ""


class PublicOrigin:
    """The listener's accepted hosts and origins, compiled from the config at start and
    again on every reload (:meth:`configure`: one object shared by every check)."""

    __slots__ = ("_allowed", "_hosts", "_origins")

    def __init__(
        self, public_url: str, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]
    ) -> None:
        self.configure(public_url, allowed_hosts, allowed_origins)

    def configure(
        self, public_url: str, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]
    ) -> None:
        parts = urlsplit(public_url)
        public = parse_origin(f"{parts.scheme}://{parts.netloc}")
        self._origins = frozenset({public, *allowed_origins})
        self._hosts = frozenset({host_name(public.split("://", 1)[1]), *allowed_hosts})
        self._allowed = Memo(self._read_host, 1024)  # per Host value, as clients repeat it

    def host_allowed(self, host_header: str | None) -> bool:
        return host_header is None or self._allowed(host_header)

    def _read_host(self, host_header: str) -> bool:
        return host_name(host_header) in self._hosts

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None or origin.strip().lower() == "null":
            return False
        try:
            return parse_origin(origin) in self._origins
        except ValueError:
            return False

    def websocket_origin_allowed(self, origin: str | None) -> bool:
        """An upgrade's ``Origin``: allowed, or absent (no browser sent the upgrade)."""
        return origin is None or self.origin_allowed(origin)

    def same_origin_request(self, headers: Mapping[str, str]) -> bool:
        """:meth:`same_origin` for a request's ``Origin`` and ``Sec-Fetch-Site`` headers."""
        return self.same_origin(headers.get("Origin"), headers.get("Sec-Fetch-Site"))

    def same_origin(self, origin: str | None, fetch_site: str | None) -> bool:
        if origin is not None and origin.strip().lower() != "null":
            return self.origin_allowed(origin)
        if fetch_site is not None:
            # Chromium sends "Origin: null" for a POST from a page whose Referrer-Policy is
            # no-referrer (the sidecar's own logout page): fetch metadata still tells.
            return fetch_site.strip().lower() in ("same-origin", "none")
        return origin is None


def hosts_allowed(
    public: PublicOrigin,
    hosts: Sequence[str],
    forwarded_hosts_: Iterable[str],
    forwarded: Iterable[str],
) -> bool:
    """The host check of :func:`host_check`: at most one ``Host``, and it, every host of a
    trusted proxy's ``X-Forwarded-Host`` values and every ``host=`` of its ``Forwarded``
    values (RFC 7239's; Rack 3 and Spring read it before ``X-Forwarded-Host``) allowed.
    (Pass no forwarded values for an untrusted peer: the header policy drops them.)"""
    if len(hosts) > 1 or not public.host_allowed(hosts[0] if hosts else None):
        return False
    for value in forwarded_hosts_:
        if not all(public.host_allowed(h) for h in value.split(",")):
            return False
    return all(all(public.host_allowed(h) for h in forwarded_hosts(v)) for v in forwarded)
