"""Identity header templates: ``X-Forwarded-User: "{user_id}"``, compiled once at start-up.

Fields: ``{user_id}``, ``{role}``, ``{email}``, ``{module}``, ``{token_id}`` and
``{param.NAME}`` for an ``additionalParams`` entry. Anything else is a config error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.tokens.identity import identity_problem

FIELDS = frozenset({"user_id", "role", "email", "module", "token_id"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Headers the sidecar cannot set for the upstream: the request's framing and target host
# (a second Host, a length no body matches, a coding the upstream must apply) and the
# connection's own options (RFC 9110 §7.6.1), in their canonical spelling.
_NOT_IDENTITY = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
     "proxy-connection", "te", "trailer", "upgrade", "expect"}
)  # fmt: skip


_COOKIES = frozenset({"cookie", "set-cookie", "cookie2", "set-cookie2"})


class TemplateError(ValueError):
    """A header name or template is not valid."""


def canonical_header(name: str) -> str:
    """The spelling two headers share when a WSGI/PHP/CGI upstream would merge them:
    lower case, ``_`` and ``.`` read as ``-`` (``X_Forwarded_User`` becomes
    ``HTTP_X_FORWARDED_USER`` there, exactly like ``X-Forwarded-User``; PHP also turns the
    ``.`` of ``HTTP_X.FORWARDED.USER``, which Caddy and Go's CGI pass on, into ``_``)."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True, slots=True)
class HeaderTemplate:
    name: str
    canonical: str
    # Alternating literal text and field names: ("", "user_id", "@corp") etc.
    parts: tuple[str, ...]

    def render(self, identity: Mapping[str, str]) -> str:
        """Fill in the fields; a header with a field value that breaks the identity rule
        (:mod:`sidecar.tokens.identity`: a session from a token minted before the rule)
        or a control character renders as empty (the caller omits empty headers), so no
        input can split or fold a header or arrive rewritten."""
        out: list[str] = []
        for i, part in enumerate(self.parts):
            if i % 2:
                field = identity.get(part, "")
                if field and identity_problem(field, commas=part != "user_id") is not None:
                    return ""
                out.append(field)
            else:
                out.append(part)
        value = "".join(out)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            return ""
        return value


def compile_header(name: str, template: str) -> HeaderTemplate:
    if not _TOKEN.fullmatch(name):
        raise TemplateError(f"{name!r} is not a valid HTTP header name")
    canonical = canonical_header(name)
    if canonical in _NOT_IDENTITY:
        raise TemplateError(
            f"{name!r} frames the request or names its connection; it cannot carry identity"
        )
    if canonical in _COOKIES:
        # Forward-auth answers with the identity headers, and never with a cookie; and the
        # upstream's own cookies are the browser's, which the sidecar forwards untouched.
        raise TemplateError(f"{name!r} is a cookie header; it cannot carry identity")
    parts: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        field = match.group(1)
        if field not in FIELDS and not re.fullmatch(r"param\.[A-Za-z0-9_.-]+", field):
            allowed = ", ".join("{" + f + "}" for f in sorted(FIELDS))
            raise TemplateError(f"unknown field {{{field}}}; allowed: {allowed}, {{param.NAME}}")
        parts += [template[pos : match.start()], field]
        pos = match.end()
    rest = template[pos:]
    if "{" in rest or "}" in rest:
        raise TemplateError(f"unbalanced brace in {template!r}")
    parts.append(rest)
    return HeaderTemplate(name=name, canonical=canonical, parts=tuple(parts))
