"""Request paths as the path rules see them: decoded once, normalised, matched with globs.

The upstream receives the raw path; the rules judge a normalised one. Whatever the two
could disagree on is refused (400) rather than guessed, so no spelling of a path reaches
the upstream as something the rules did not check:

* a ``%XX`` still present after one decoding (``%252f``, ``%252e``): the upstream might
  decode again and see a separator or a dot segment the rules never saw;
* a dot segment spelled with ``%2e`` or carrying ``;params`` (``..;/``): servers differ on
  whether it is a dot segment (Tomcat says yes, most others no);
* ``..`` in a path that also has ``%2f``, ``%5c`` or ``\\``: whether ``..`` climbs over
  them depends on whether the server reads them as separators;
* ``..`` above the root, NUL or any control character, malformed ``%`` escapes, a raw ``#``.

What remains is read as generously as any upstream might: ``\\`` and ``%5c`` are
separators, ``%2f`` is a separator, ``//`` collapses, ``.``/``..`` resolve. ``deny`` globs
also match a *loose* form (lower case, ``;params`` cut from each segment, trailing dots and
spaces dropped: Windows and Java spellings of the same file), while ``allow`` and
``public_paths`` must match the strict form — a path is let through only when every
reading of it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# Segments of unreserved characters, dots only inside a segment: already normal.
_PLAIN = re.compile(r"(?=/)(?:/[A-Za-z0-9_~-]+(?:\.+[A-Za-z0-9_~-]+)*)*/?")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
_RAW_SEPARATOR = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)
_ODD_SEPARATOR = re.compile(r"\\|%2f|%5c", re.IGNORECASE)


class UnsafePath(ValueError):
    """The path cannot be normalised without guessing how the upstream reads it."""


class GlobError(ValueError):
    """A path glob that no request path, as the rules see it, could ever match."""


@dataclass(frozen=True, slots=True)
class NormalPath:
    """``strict``: decoded and normalised; ``loose``: the same, read the most permissive way."""

    strict: str
    loose: str


def normalise(raw_path: str) -> NormalPath:
    """Normalise the raw request path (no query, no fragment); raise :class:`UnsafePath`."""
    if _PLAIN.fullmatch(raw_path):
        # Nothing to decode, resolve or collapse (the common case, kept cheap).
        lowered = raw_path.lower()
        if len(lowered) > 1 and lowered[-1] == "/":
            lowered = lowered[:-1]
        return NormalPath(strict=raw_path, loose=lowered)
    if not raw_path.startswith("/"):
        raise UnsafePath("the path must start with /")
    if "#" in raw_path:
        # Browsers never send a fragment; the upstream URL would drop everything after it,
        # so "/admin#/ok" is judged as one path and fetched as another.
        raise UnsafePath("a raw '#' in the path")
    decoded = raw_path
    if "%" in raw_path:
        if _BAD_PERCENT.search(raw_path):
            raise UnsafePath("malformed percent escape")
        # Judged on the raw text: once decoded, "%2e%2e" is indistinguishable from "..".
        for seg in _RAW_SEPARATOR.split(raw_path):
            if _ENCODED_DOT.search(seg) and _ENCODED_DOT.sub(".", seg) in (".", ".."):
                raise UnsafePath("percent-encoded dot segment")
        decoded = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
        if _ESCAPE.search(decoded):
            raise UnsafePath("percent escape inside a percent escape")
    if _CONTROL.search(decoded):
        raise UnsafePath("control character in the path")
    strict: list[str] = []
    loose: list[str] = []
    segments = decoded.replace("\\", "/").split("/")
    if ".." in segments and _ODD_SEPARATOR.search(raw_path):
        # "/admin/%2f/.." is "/" to a server that decodes %2f and "/admin" to one that does
        # not; the same holds for "\\". Only ".." erases a segment, so only it is ambiguous.
        raise UnsafePath("'..' next to an encoded or backslash separator")
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not strict:
                raise UnsafePath("'..' above the root")
            strict.pop()
            loose.pop()
            continue
        head = seg.split(";", 1)[0]
        bare = head.rstrip(". ")
        if not bare and "." in head:
            # "..;x", "...", ".. ": a dot segment to some servers, a name to others.
            raise UnsafePath("ambiguous dot segment")
        strict.append(seg)
        loose.append(bare.lower())
    strict_path = "/" + "/".join(strict)
    if strict and segments[-1] == "":
        strict_path += "/"
    loose_path = "/" + "/".join(s for s in loose if s)
    return NormalPath(strict=strict_path, loose=loose_path)


def check_path_glob(pattern: str) -> None:
    """Refuse a path glob that could never match (raise :class:`GlobError`).

    Rules judge normalised paths: they start with ``/``, have no empty, ``.`` or ``..``
    segments, no ``\\``, and never include the query or fragment. ``*`` stays inside one
    segment and may sit among other characters (``/static/*.css``); ``**`` is a whole
    segment (``/a/**``, ``/a/**/b``). A glob written otherwise silently matches nothing,
    which for ``deny`` means no rule at all — so it is a config error instead."""
    if not pattern.startswith("/"):
        raise GlobError(f"got {pattern!r}: a path glob starts with / (paths always do)")
    if "***" in pattern:
        raise GlobError(f"got {pattern!r}: use * (within one segment) or ** (any depth)")
    bad = next((c for c in pattern if c in "?#\\" or c < " " or c == "\x7f"), None)
    if bad is not None:
        raise GlobError(
            f"got {pattern!r}: {bad!r} never appears in a path as the rules see it"
            " (the query and fragment are never matched; \\ is read as /)"
        )
    check_segment_globs(pattern, lambda why: GlobError(f"got {pattern!r}: {why}"))
    for segment in pattern.split("/")[1:-1]:
        if segment == "":
            raise GlobError(f"got {pattern!r}: an empty segment (//) never matches")


def check_segment_globs(path: str, fail: Callable[[str], Exception]) -> None:
    """``**`` only as a whole segment, no dot segments (shared with redirect patterns)."""
    for segment in path.split("/"):
        if "**" in segment and segment != "**":
            raise fail(f"** must be a whole segment, got {segment!r} (use * inside a segment)")
        if segment in (".", ".."):
            raise fail("a dot segment never matches: paths are judged after . and .. resolve")


def glob_regex(pattern: str) -> str:
    """``*`` matches within one segment, ``**`` across segments; ``/x/**`` also matches ``/x``."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        if pattern.startswith("/**", i) and (i + 3 == n or pattern[i + 3] == "/"):
            # "/**" is zero or more whole segments: "/a/**" matches "/a", "/a/", "/a/b/c".
            out.append("(?:/.*)?" if i + 3 == n else "(?:/[^/]*)*?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class GlobSet:
    """A set of path globs compiled into one regular expression, once."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str], *, ignore_case: bool = False) -> None:
        self.patterns = tuple(patterns)
        flags = re.IGNORECASE if ignore_case else 0
        self._regex = (
            re.compile("|".join(f"(?:{glob_regex(p)})" for p in self.patterns), flags | re.DOTALL)
            if self.patterns
            else None
        )

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class PathRules:
    """A role's ``allow``/``deny`` globs."""

    allow: GlobSet
    deny: GlobSet

    @classmethod
    def compile(cls, allow: Iterable[str], deny: Iterable[str]) -> PathRules:
        return cls(GlobSet(allow), GlobSet(deny, ignore_case=True))

    def permits(self, path: NormalPath) -> bool:
        """Allowed by the strict reading, and denied by neither reading."""
        if not self.allow.matches(path.strict):
            return False
        return not (self.deny.matches(path.strict) or self.deny.matches(path.loose))
