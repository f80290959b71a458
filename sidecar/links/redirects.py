"""The ``redirect_to`` allow-list: where an auth link may send the browser afterwards.

Patterns are absolute URLs with globs (``links.redirect_allow``)::

    https://app.example.com/**          any path on that exact origin
    https://*.example.com/welcome       one label: a.example.com, not a.b.example.com
    https://**.example.com/**           any depth of subdomain
    http://localhost:3000/callback      port compared exactly (absent = the default port)

In the host, ``*`` stays inside one label (never crosses ``.``) and ``**`` spans labels, and
every wildcard sits left of a literal registrable domain (``*.example.com``, never
``*.com``, ``*.co.uk``, ``*.github.io`` or ``exa*mple.com``: the Public Suffix List says
what can be registered); in
the path, ``*`` stays inside one segment and ``**`` crosses ``/`` (``/x/**`` also matches
``/x``, as the proxy's path rules do). The scheme is never a glob, and ``http`` never
matches an ``https`` pattern. Patterns judge the path only; the query and fragment of an
allowed URL are kept as they are, because they cannot change which origin the browser lands on.

A candidate is refused outright — before any pattern is tried — when browsers and this
parser could read it differently: user info (``@``), backslashes, whitespace or control
characters anywhere, percent escapes in the host, encoded ``/`` ``\\`` or NUL in the path,
dot segments, a path starting ``//``, relative or scheme-relative URLs, schemes other than
``http``/``https``, a trailing dot on the host. The host is lower-cased and IDNA-encoded and
the URL rebuilt from its parts; that rebuilt string is what gets bound into the link, so the
browser is sent exactly where the check looked.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote

from sidecar.proxy.paths import check_segment_globs, glob_regex

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

_SCHEME = re.compile(r"(https?)://", re.IGNORECASE)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_GLOB_LABEL = re.compile(r"\*\*|[a-z0-9*-]{1,63}")
_PORT = re.compile(r"[0-9]{1,5}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
# Printable ASCII that may stay as it is in a path, query or fragment (RFC 3986 plus '%').
_KEEP = "!#$%&'()*+,-./:;=?@[]_~"


class RedirectRejected(ValueError):
    """``redirect_to`` is unsafe or not allowed; the message is safe to show the caller."""


class RedirectPatternError(ValueError):
    """A ``links.redirect_allow`` pattern is not valid."""


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    host: str  # lower case, ASCII (IDNA), IPv6 without brackets
    port: int
    path: str
    rest: str  # "?query#fragment" as given (non-ASCII percent-encoded), or ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}{self.rest}"


@dataclass(frozen=True, slots=True)
class _Pattern:
    scheme: str
    host: re.Pattern[str]
    port: int
    path: re.Pattern[str]

    def matches(self, url: _Url) -> bool:
        return (
            url.scheme == self.scheme
            and url.port == self.port
            and self.host.fullmatch(url.host) is not None
            and self.path.fullmatch(url.path) is not None
        )


class AllowList:
    """Compiled ``redirect_allow`` patterns. Raise :class:`RedirectPatternError` if one is bad."""

    __slots__ = ("_patterns",)

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = tuple(compile_pattern(p) for p in patterns)

    def check(self, candidate: str) -> str:
        """The normalised URL if ``candidate`` is safe and allowed; else raise
        :class:`RedirectRejected`."""
        url = parse_url(candidate)
        if not any(p.matches(url) for p in self._patterns):
            raise RedirectRejected("redirect_to is not in the allow-list (links.redirect_allow)")
        return str(url)


@lru_cache(maxsize=16)
def allow_list(patterns: tuple[str, ...]) -> AllowList:
    """The compiled allow-list for a config's patterns (compiled once per pattern tuple)."""
    return AllowList(patterns)


def parse_url(candidate: str) -> _Url:
    """Split and normalise an absolute http(s) URL; raise :class:`RedirectRejected`."""
    if not isinstance(candidate, str) or not candidate:
        raise RedirectRejected("redirect_to must be a non-empty string")
    if len(candidate) > MAX_URL_LENGTH:
        raise RedirectRejected(f"redirect_to is longer than {MAX_URL_LENGTH} characters")
    if any(_invisible(ch) for ch in candidate):
        raise RedirectRejected("redirect_to contains whitespace or control characters")
    if "\\" in candidate:
        raise RedirectRejected("redirect_to contains a backslash")
    scheme_match = _SCHEME.match(candidate)
    if scheme_match is None:
        raise RedirectRejected("redirect_to must be an absolute http:// or https:// URL")
    scheme = scheme_match.group(1).lower()
    rest = candidate[scheme_match.end() :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    host, port = _authority(authority, scheme)
    cut = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    path, tail = rest[:cut] or "/", rest[cut:]
    _check_path(path)
    if _BAD_ESCAPE.search(tail):
        raise RedirectRejected("redirect_to has a malformed percent escape")
    return _Url(scheme, host, port, _encode(path), _encode(tail))


def compile_pattern(pattern: str) -> _Pattern:
    """Compile one allow-list pattern; raise :class:`RedirectPatternError`."""

    def fail(why: str) -> RedirectPatternError:
        return RedirectPatternError(f"{pattern!r}: {why}")

    if any(_invisible(ch) for ch in pattern) or any(c in pattern for c in "\\@%?#"):
        raise fail("a pattern is a plain URL glob: no whitespace, \\, @, %, ? or #")
    scheme_match = _SCHEME.match(pattern)
    if scheme_match is None:
        raise fail("expected http://… or https://…")
    scheme = scheme_match.group(1).lower()
    authority, slash, path = pattern[scheme_match.end() :].partition("/")
    try:
        if "*" in authority:
            hostpart, colon, port_text = authority.rpartition(":")
            if not colon:
                hostpart, port_text = authority, ""
            host = _host_glob(hostpart, fail)
            _, port = _authority("x" + (":" + port_text if colon else ""), scheme)
        else:
            literal, port = _authority(authority, scheme)
            host = re.escape(literal)
    except RedirectRejected as exc:
        raise fail(str(exc).replace("redirect_to has", "it has")) from None
    if "***" in path:
        raise fail("use * (within one segment) or ** (any depth)")
    check_segment_globs("/" + path, fail)
    return _Pattern(
        scheme=scheme,
        host=re.compile(host),
        port=port,
        path=re.compile(glob_regex(_encode("/" + path if slash else "/")), re.DOTALL),
    )


def _host_glob(host: str, fail: Callable[[str], RedirectPatternError]) -> str:
    labels = host.lower().split(".")
    globbed = [i for i, label in enumerate(labels) if "*" in label]
    if globbed:
        fixed = ".".join(labels[globbed[-1] + 1 :])
        if not _registrable(fixed):
            # "https://**", "https://*.com", "https://*.co.uk", "https://*.github.io",
            # "https://exa*mple.com": anyone can register a host these match.
            raise fail(
                "a wildcard must stay left of a registrable domain (as in *.example.com); "
                f"{fixed or 'nothing'!r} is not one (Public Suffix List)"
            )
    parts: list[str] = []
    for label in labels:
        if not _GLOB_LABEL.fullmatch(label) or ("**" in label and label != "**"):
            raise fail(f"bad host label {label!r}: use letters, digits, -, * or a whole **")
        if label == "**":
            parts.append(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")
        else:
            parts.append("".join("[a-z0-9-]+" if c == "*" else re.escape(c) for c in label))
    return r"\.".join(parts)


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # Only a wildcard pattern needs the list: imported and parsed on first use, so a
    # config without one never holds it (the result of every check is the same).
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _registrable(domain: str) -> bool:
    """``domain`` contains a registrable domain (``example.com``, not ``co.uk``)."""
    if not domain or domain.rpartition(".")[2].isdigit():
        return False
    return _psl().privatesuffix(domain) is not None


def _authority(authority: str, scheme: str) -> tuple[str, int]:
    if not authority:
        raise RedirectRejected("redirect_to has no host")
    if "@" in authority:
        raise RedirectRejected("redirect_to must not contain user info (@)")
    if "%" in authority:
        raise RedirectRejected("redirect_to has percent escapes in the host")
    if authority.startswith("["):
        host, bracket, port_part = authority[1:].partition("]")
        if not bracket:
            raise RedirectRejected("redirect_to has an unterminated IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise RedirectRejected("redirect_to has an invalid IPv6 address") from None
        if port_part and not port_part.startswith(":"):
            raise RedirectRejected("redirect_to has a malformed host")
        port_text = port_part[1:] if port_part else None
    else:
        host, colon, port_text_raw = authority.partition(":")
        port_text = port_text_raw if colon else None
        host = _normal_host(host)
    port = DEFAULT_PORTS[scheme]
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise RedirectRejected("redirect_to has an invalid port")
        port = int(port_text)
    return host, port


def _normal_host(host: str) -> str:
    """Lower case, IDNA (punycode) for non-ASCII labels; refuse anything else odd."""
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise RedirectRejected("redirect_to has a host that is not a valid domain name") from None
    ascii_host = ascii_host.lower()
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RedirectRejected("redirect_to has a host that is not a valid domain name")
    return ascii_host


def _check_path(path: str) -> None:
    if path.startswith("//"):
        raise RedirectRejected("redirect_to has a path starting with //")
    if _BAD_ESCAPE.search(path):
        raise RedirectRejected("redirect_to has a malformed percent escape")
    if _ENCODED_SEPARATOR.search(path):
        raise RedirectRejected("redirect_to has an encoded /, \\ or NUL in the path")
    for segment in path.split("/"):
        if _ENCODED_DOT.sub(".", segment) in (".", ".."):
            raise RedirectRejected("redirect_to has a dot segment (. or ..) in the path")


def _encode(text: str) -> str:
    """Percent-encode what is not printable ASCII, keep everything else byte for byte."""
    return quote(text, safe=_KEEP)


def _invisible(ch: str) -> bool:
    return ch <= " " or ch == "\x7f" or unicodedata.category(ch)[0] in "CZ"
