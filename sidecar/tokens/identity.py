"""What a value rendered into an identity header may be: exactly what the upstream will read.

An upstream reads ``X-Forwarded-User`` through an HTTP parser, and parsers rewrite some
values: RFC 9110 §5.5 strips leading and trailing whitespace (``" admin "`` arrives as
``admin``, while ``<prefix>/session`` still says ``" admin "``), control characters split or
fold headers, and bidi overrides or zero-width characters make two different ids look the
same to the people reading logs and admin screens. So every such value a caller chooses —
``userId`` and ``additionalParams`` values — is refused at mint when it has:

* leading or trailing whitespace (any Unicode space, not only ASCII);
* a control character (C0, DEL, C1) or a lone surrogate;
* a format character (Unicode category Cf: bidi embeddings, overrides and isolates,
  zero-width space/joiners, the BOM, soft hyphen) or a line/paragraph separator.

Commas: a ``userId`` may not contain one. Several upstream stacks read identity headers as
comma-separated lists (a second copy of the header is merged with ``,``; some take the first
or last item, as they do for ``X-Forwarded-For``), so ``"admin,bob"`` could be read as
``admin``. ``additionalParams`` values *may* contain commas: a list is how a header such as
``X-Forwarded-Groups: a,b`` is meant to be read, and the sidecar sends one copy only
(client copies are always stripped).

E-mail addresses (auth links) are normalised instead, as GoTrue does: trimmed and
lower-cased, then held to an ASCII address rule with no space, comma or control character.
The stored address is the normalised one, so ``<prefix>/session`` and
``X-Forwarded-Email`` always agree.

No aiohttp here: minting, auth links and the template renderer share this one rule.
"""

from __future__ import annotations

import unicodedata

from sidecar.tokens.codec import has_control

_CONTROL = "must not contain control characters or lone surrogates"
_SPACES = "must not start or end with whitespace (HTTP parsers strip it)"
_INVISIBLE = (
    "must not contain invisible formatting characters (bidi overrides, "
    "zero-width characters, line separators)"
)
_COMMA = "must not contain a comma (upstreams may read the header as a list)"


def identity_problem(value: str, *, commas: bool = True) -> str | None:
    """Why ``value`` cannot be an identity header value, or None when it can."""
    if value.isascii():
        # What the general rule (_problem) answers for ASCII, without its Unicode lookups
        # (every mint checks its userId): the control characters are exactly the
        # unprintable ones, the one printable space is " ", and no ASCII character is a
        # format character or a line/paragraph separator.
        if not value.isprintable():
            return _CONTROL
        if value[:1] == " " or value[-1:] == " ":
            return _SPACES
        if not commas and "," in value:
            return _COMMA
        return None
    return _problem(value, commas)


def _problem(value: str, commas: bool) -> str | None:
    """:func:`identity_problem` for any text."""
    if has_control(value):
        return _CONTROL
    if value and (_space(value[0]) or _space(value[-1])):
        return _SPACES
    if any(unicodedata.category(ch) in ("Cf", "Zl", "Zp") for ch in value if ord(ch) > 0x7E):
        return _INVISIBLE
    if not commas and "," in value:
        return _COMMA
    return None


def _space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Zs"
