"""Well-known identity headers that never reach the upstream from a client.

The sidecar strips every header a role injects. But a legacy app may read an identity header
the config does not inject — one its previous front end set (oauth2-proxy, Authelia,
Cloudflare Access, IAP, an Azure App Service or AWS ALB) — and then any client is one header
away from impersonation. So these are always dropped from requests, in every spelling
(:func:`~sidecar.proxy.templates.canonical_header`: case, ``_`` and ``.`` for ``-``), whether
the request has a session or not; ``proxy.strip_headers`` adds more. A name ending in ``*``
is a prefix (``X-Amzn-Oidc-*``).

Besides identities, the list holds headers that make an upstream read a request differently
from how the sidecar judged it: path and method overrides (``X-Forwarded-Path``,
``X-Envoy-Original-Path``, ``X-HTTP-Method-Override``), host overrides (``X-Host``,
``X-Original-Host``) and client-address claims (``True-Client-IP``, ``CF-Connecting-IP``):
the sidecar sets ``X-Forwarded-For``/``-Host`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sidecar.proxy.templates import canonical_header

DEFAULT_STRIP_HEADERS: tuple[str, ...] = (
    # generic and reverse-proxy auth (Apache, nginx, Authelia, Grafana, oauth2-proxy)
    "Remote-User", "Remote-Email", "Remote-Groups", "Remote-Name",
    "X-Remote-User", "X-Remote-Email", "X-Remote-Groups",
    "X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username", "X-Auth-Request-Access-Token",
    "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Role",
    "X-Forwarded-Preferred-Username", "X-Forwarded-Access-Token",
    "X-WEBAUTH-USER", "X-WEBAUTH-EMAIL", "X-WEBAUTH-NAME",
    "X-Authenticated-User", "X-Authenticated-Userid", "X-User", "X-Email",
    # cloud front ends
    "X-Ms-Client-Principal", "X-Ms-Client-Principal-Name", "X-Ms-Client-Principal-Id",
    "X-Ms-Client-Principal-Idp", "X-Ms-Token-*",
    "Cf-Access-Authenticated-User-Email", "Cf-Access-Jwt-Assertion",
    "X-Goog-Authenticated-User-Email", "X-Goog-Authenticated-User-Id",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Amzn-Oidc-*",
    # what the request is: path, method and host overrides
    "X-Forwarded-Path", "X-Envoy-Original-Path", "X-HTTP-Method-Override", "X-HTTP-Method",
    "X-Method-Override", "X-Host", "X-Original-Host",
    # who the client is
    "True-Client-IP", "CF-Connecting-IP", "X-Client-IP", "X-Cluster-Client-IP",
    "Fastly-Client-IP",
)  # fmt: skip

_NAME = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+\*?")


def check_strip_name(name: str) -> str:
    """A ``proxy.strip_headers`` entry as given; raise ValueError if it is no header name."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"got {name!r}, expected a header name (a trailing * makes it a prefix)")
    return name


class StripList:
    """Compiled strip list: exact canonical names and canonical prefixes."""

    __slots__ = ("_names", "_prefixes")

    def __init__(self, names: Iterable[str]) -> None:
        names = tuple(names)
        self._names = frozenset(canonical_header(n) for n in names if not n.endswith("*"))
        self._prefixes = tuple(canonical_header(n[:-1]) for n in names if n.endswith("*"))

    def __contains__(self, canonical: object) -> bool:
        """Whether a canonical header name (see ``canonical_header``) is stripped."""
        if not isinstance(canonical, str):
            return False
        return canonical in self._names or canonical.startswith(self._prefixes)
