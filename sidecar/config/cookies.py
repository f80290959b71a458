"""The session cookie's name: prefixed by default, so browsers enforce where it comes from.

Checked in Chromium (tests/browser/test_cookies.py): a page on a sibling host
(``evil.site.example`` beside ``app.site.example``) can set ``sidecar_session`` and
``__Secure-sidecar_session`` for ``Domain=site.example``, and the app's host then receives
them ("cookie tossing"); it cannot set ``__Host-sidecar_session`` at all. Secure cookies,
prefixed ones included, are accepted over plain http from ``127.0.0.1`` and ``localhost``
(potentially trustworthy origins) and dropped from any other http host.
"""

from __future__ import annotations


def default_cookie_name(*, secure: bool, domain: str | None) -> str:
    """``__Host-sidecar_session`` when the cookie is Secure and host-only: browsers then
    refuse it from any other host (a sibling subdomain cannot toss one in), and from
    plain-http pages. ``__Secure-`` when it has a Domain (``__Host-`` forbids one)."""
    if not secure:
        return "sidecar_session"
    return ("__Secure-" if domain else "__Host-") + "sidecar_session"


def cookie_prefix_problem(name: str, secure: bool, domain: str | None) -> str | None:
    """Browsers silently drop a prefixed cookie whose attributes break the prefix's rule."""
    lower = name.lower()  # browsers match the prefixes case-insensitively
    if lower.startswith("__host-") and (not secure or domain):
        return f"got {name!r}: a __Host- cookie needs cookie_secure: true and no cookie_domain"
    if lower.startswith("__secure-") and not secure:
        return f"got {name!r}: a __Secure- cookie needs cookie_secure: true"
    return None
