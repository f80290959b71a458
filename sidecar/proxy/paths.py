"""Request paths as the path rules see them: decoded once, read every way a server might,
matched with globs.

The upstream receives the raw path, byte for byte; the rules judge *that* path. A server
reads raw bytes in one of several ways, so the judge reads them in each of those ways and
lets a path through only when every reading passes — and what servers cannot agree on at
all is refused (400) instead of guessed. Refused:

* a dot segment in any spelling: ``.``, ``..``, ``%2e``, ``.%2E``, ``..;x``, ``...``,
  ``.. ``: frameworks route the raw path without resolving them (Werkzeug, Express), so
  "/admin/../static/x" would be judged as one path and served as another. Browsers
  resolve dot segments before sending, so no browser request carries one;
* a backslash, raw or ``%5c``: a separator to some servers (IIS, Windows file servers),
  a name character to others; browsers turn ``\\`` into ``/`` before sending;
* a path starting with ``//``: parsed as ``//authority/path`` by some URL libraries;
* a ``%XX`` still present after one decoding (``%252f``): the upstream might decode again;
* bytes that are not UTF-8 once decoded (overlong ``%c0%ae`` is a dot to old decoders),
  and characters that NFKC folds into ``.``, ``/``, ``\\``, ``%``, ``;``, ``?`` or ``#``
  (``%ef%bc%8f`` is a fullwidth ``/``);
* NUL or any control character, malformed ``%`` escapes, a raw ``#``.

What remains is read two ways, and each reading must pass:

* ``strict``: decoded once, ``%2f`` a separator, ``//`` collapsed (WSGI servers decode
  ``PATH_INFO``; nginx merges slashes);
* ``literal``: split on raw ``/`` only, ``%2f`` kept as ``%2F``, empty segments kept
  (routers that match the raw pathname, e.g. Express). Only built when it differs.

``deny`` globs also match a *loose* form of each reading (lower case, ``;params`` cut from
each segment, trailing dots and spaces dropped: Windows and Java spellings of the same
file), while ``allow`` and ``public_paths`` must match every strict reading — a path is let
through only when every reading of it is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from sidecar.memo import Memo

# Segments of unreserved characters, dots only inside a segment: already normal.
_PLAIN = re.compile(r"(?=/)(?:/[A-Za-z0-9_~-]+(?:\.+[A-Za-z0-9_~-]+)*)*/?")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BACKSLASH = re.compile(r"\\|%5c", re.IGNORECASE)
_ENCODED_SLASH = re.compile(r"%2f", re.IGNORECASE)
# Characters a server might give a meaning to once NFKC has folded a look-alike into them.
_SIGNIFICANT = "./\\%;?#"


class UnsafePath(ValueError):
    """Servers could read the path differently from the rules: it is refused, not guessed."""


class GlobError(ValueError):
    """A path glob that no request path, as the rules see it, could ever match."""


@dataclass(frozen=True, slots=True)
class NormalPath:
    """The readings of one raw path.

    ``strict``: decoded, ``%2f`` split, ``//`` collapsed; ``literal``: split on raw ``/``
    only (``None`` when it equals ``strict``); ``loose``/``literal_loose``: the same, read
    the most permissive way (for ``deny``)."""

    strict: str
    loose: str
    literal: str | None = None
    literal_loose: str | None = None

    def matched_by(self, globs: GlobSet) -> bool:
        """Whether every strict reading matches (``allow``, ``public_paths``)."""
        return globs.matches(self.strict) and (self.literal is None or globs.matches(self.literal))

    def touches(self, globs: GlobSet) -> bool:
        """Whether any reading, strict or loose, matches (``deny``)."""
        if globs.matches(self.strict) or globs.matches(self.loose):
            return True
        if self.literal is None or self.literal_loose is None:
            return False
        return globs.matches(self.literal) or globs.matches(self.literal_loose)


def normalise(raw_path: str) -> NormalPath:
    """Read the raw request path (no query, no fragment); raise :class:`UnsafePath`."""
    if _PLAIN.fullmatch(raw_path):
        # Nothing to decode and no empty or dot segment (the common case, kept cheap).
        lowered = raw_path.lower()
        if len(lowered) > 1 and lowered[-1] == "/":
            lowered = lowered[:-1]
        return NormalPath(strict=raw_path, loose=lowered)
    if not raw_path.startswith("/"):
        raise UnsafePath("the path must start with /")
    if raw_path.startswith("//"):
        raise UnsafePath("a path starting with // (read as //host/path by URL parsers)")
    if "#" in raw_path:
        # Browsers never send a fragment; the upstream URL would drop everything after it,
        # so "/admin#/ok" is judged as one path and fetched as another.
        raise UnsafePath("a raw '#' in the path")
    if _BACKSLASH.search(raw_path):
        raise UnsafePath("a backslash in the path")
    decoded = raw_path
    if "%" in raw_path:
        if _BAD_PERCENT.search(raw_path):
            raise UnsafePath("malformed percent escape")
        try:
            decoded = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafePath("the decoded path is not UTF-8") from None
        if _ESCAPE.search(decoded):
            raise UnsafePath("percent escape inside a percent escape")
    if _CONTROL.search(decoded):
        raise UnsafePath("control character in the path")
    if not decoded.isascii():
        try:
            decoded.encode("utf-8")
        except UnicodeEncodeError:  # undecodable raw bytes, handed over as surrogates
            raise UnsafePath("the path is not UTF-8") from None
        folded = unicodedata.normalize("NFKC", decoded)
        if any(folded.count(c) != decoded.count(c) for c in _SIGNIFICANT):
            raise UnsafePath("a character that folds into a separator or a dot")
    segments = decoded.split("/")
    strict: list[str] = []
    loose: list[str] = []
    for seg in segments:
        if not seg:
            continue
        bare = _loose_segment(seg)
        if not bare and "." in seg.split(";", 1)[0]:
            # ".", "..", "%2e%2e", "..;x", "...", ".. ": a dot segment to some servers.
            raise UnsafePath("a dot segment")
        strict.append(seg)
        loose.append(bare)
    strict_path = "/" + "/".join(strict)
    if strict and segments[-1] == "":
        strict_path += "/"
    loose_path = "/" + "/".join(s for s in loose if s)
    if "//" not in raw_path and not _ENCODED_SLASH.search(raw_path):
        return NormalPath(strict=strict_path, loose=loose_path)
    # A router that splits on raw "/" only sees "%2F" inside a segment and keeps "//".
    literal = [
        "%2F".join(unquote(part, errors="strict") for part in _ENCODED_SLASH.split(seg))
        for seg in raw_path.split("/")
    ]
    return NormalPath(
        strict=strict_path,
        loose=loose_path,
        literal="/".join(literal),
        literal_loose="/".join(_loose_segment(seg) for seg in literal),
    )


def _loose_segment(segment: str) -> str:
    """``;params`` cut, trailing dots and spaces dropped, lower case."""
    return segment.split(";", 1)[0].rstrip(". ").lower()


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
    """A set of path globs compiled into one regular expression, once; each path's answer
    remembered (:class:`~sidecar.memo.Memo`: a role's rules ask two or three times a
    request, for the same few paths)."""

    __slots__ = ("_matches", "_regex", "patterns")

    def __init__(self, patterns: Iterable[str], *, ignore_case: bool = False) -> None:
        self.patterns = tuple(patterns)
        flags = re.IGNORECASE if ignore_case else 0
        self._regex = (
            re.compile("|".join(f"(?:{glob_regex(p)})" for p in self.patterns), flags | re.DOTALL)
            if self.patterns
            else None
        )
        self._matches: Memo[str, bool] = Memo(self._fullmatch)

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: str) -> bool:
        return self._regex is not None and self._matches(path)

    def _fullmatch(self, path: str) -> bool:
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
        """Allowed by every strict reading, and denied by none of the readings."""
        return path.matched_by(self.allow) and not path.touches(self.deny)
