"""Minting refer strings: the ``POST /referstring`` body checked field by field, then sealed.

Values that reach identity headers (``userId``, ``additionalParams`` values) follow
:mod:`sidecar.tokens.identity`: no surrounding whitespace, control, bidi or zero-width
characters, and no comma in ``userId``.

No HTTP here. :func:`parse_refer_request` turns the decoded JSON body into a
:class:`ReferRequest` or raises :class:`MintError` naming the offending field;
:func:`mint_refer` seals it into a token and the link users follow. The edge
(``sidecar.admin.api``) maps :class:`MintError` and
:class:`~sidecar.tokens.codec.TokenTooLong` to 400.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from json.encoder import encode_basestring_ascii as _json_str
from typing import Final

from sidecar.config import Config, RoleConfig
from sidecar.config.durations import format_duration
from sidecar.config.options import MODULE_NAME
from sidecar.tokens.codec import Claims, TokenCodec, has_control, new_token_id
from sidecar.tokens.identity import identity_problem

FIELDS = ("userId", "additionalParams", "expireMeasure", "expireOffset", "oneTimeUse", "module")
_FIELD_NAMES = frozenset(FIELDS)
_REFER_QUERY = "?refer="  # a refer link's URL: <public_url>/?refer=<token>/...
MAX_USER_ID = 256
MODULE = re.compile(MODULE_NAME)  # what a mint's "module" may be
_MEASURES = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class MintError(Exception):
    """The mint request is invalid; ``field`` names the offending body field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# The two classes below are immutable as frozen dataclasses would be, at a fraction of the
# cost per mint (see Claims): Final fields, set once by __init__.


@dataclass(slots=True, init=False)
class ReferRequest:
    """A checked mint request: every value here is allowed by the config."""

    user_id: Final[str]
    role: Final[RoleConfig]
    params: Final[Mapping[str, str]]
    module: Final[str | None]
    lifetime: Final[int]
    one_time: Final[bool]

    def __init__(
        self,
        user_id: str,
        role: RoleConfig,
        params: Mapping[str, str],
        module: str | None,
        lifetime: int,
        one_time: bool,
    ) -> None:
        self.user_id = user_id
        self.role = role
        self.params = params
        self.module = module
        self.lifetime = lifetime
        self.one_time = one_time


@dataclass(slots=True, init=False, repr=False)
class MintedLink:
    # Bearer credentials until used (token, url): never in a repr (logs, tracebacks).
    token: Final[str]
    url: Final[str]
    claims: Final[Claims]

    def __init__(self, token: str, url: str, claims: Claims) -> None:
        self.token = token
        self.url = url
        self.claims = claims

    def __repr__(self) -> str:
        return f"MintedLink(claims={self.claims!r})"

    @property
    def expires_at_iso(self) -> str:
        return iso_utc(self.claims.expires_at)

    def to_json(self) -> dict[str, str]:
        """The ``POST /referstring`` answer."""
        return {
            "referString": self.token,
            "url": self.url,
            "expiresAt": self.expires_at_iso,
            "id": self.claims.token_id,
        }

    def answer_text(self, expires_at_iso: str) -> str:
        """``json.dumps(self.to_json())``, written directly (every mint answers it);
        ``expires_at_iso`` is :attr:`expires_at_iso`, which the caller has already.

        The token is what :meth:`TokenCodec.seal` writes, base64url segments and dots,
        which JSON never escapes: its two copies (the token, and inside the URL; some 300
        characters each) are written as they are, and only the URL's text around the
        token (the same on every mint) is escaped."""
        token, url = self.token, self.url
        # The token where refer_url put it, found without searching the whole URL for it
        # (searching its 600 characters cost as much as the rest of this method).
        start = url.find(_REFER_QUERY) + len(_REFER_QUERY)
        if start < len(_REFER_QUERY) or not url.startswith(token, start):
            start = url.find(token)
        if start < 0:
            url = _json_str(url)[1:-1]
        else:
            before, after = url[:start], url[start + len(token) :]
            url = f"{_json_inner(before)}{token}{_json_inner(after)}"
        return (
            f'{{"referString": "{token}", "url": "{url}", '
            f'"expiresAt": {_json_str(expires_at_iso)}, "id": {_json_str(self.claims.token_id)}}}'
        )


def parse_refer_request(body: dict[str, object], config: Config) -> ReferRequest:
    """Check a decoded ``POST /referstring`` body against the config; raise :class:`MintError`.

    ``body`` is a dict (what the JSON decoder gives), not any mapping: compiled, each of
    the dozen lookups of a mint's fields is then the dict's own, not a method call."""
    if not _FIELD_NAMES.issuperset(body):
        unknown = sorted(set(body) - _FIELD_NAMES)
        raise MintError(
            ", ".join(unknown),
            f"unknown field{'s' if len(unknown) > 1 else ''}; allowed: {', '.join(FIELDS)}",
        )
    user_id = _user_id(body.get("userId"))
    role, params = _params(body, config)
    module = _module(body, role)
    lifetime = _lifetime(body, role, config)
    one_time = body.get("oneTimeUse", role.one_time)
    if not isinstance(one_time, bool):
        raise MintError("oneTimeUse", f"expected true or false, got {_kind(one_time)}")
    return ReferRequest(user_id, role, params, module, lifetime, one_time)


def mint_refer(
    request: ReferRequest, codec: TokenCodec, *, public_url: str, now: float
) -> MintedLink:
    """Seal ``request`` into a refer string; raises :class:`~sidecar.tokens.codec.TokenTooLong`."""
    issued_at = int(now)
    claims = Claims(
        token_id=new_token_id(),
        subject=request.user_id,
        role=request.role.name,
        issued_at=issued_at,
        expires_at=issued_at + request.lifetime,
        one_time=request.one_time,
        kind="refer",
        params=dict(request.params),
        module=request.module,
    )
    token = codec.seal(claims)
    return MintedLink(token=token, url=refer_url(public_url, token, request.module), claims=claims)


def refer_url(public_url: str, token: str, module: str | None) -> str:
    """The Unqork link form: ``<public_url>/?refer=<token>/#/display/<module>``."""
    url = f"{public_url.rstrip('/')}/{_REFER_QUERY}{token}/"
    return f"{url}#/display/{module}" if module else url


@functools.lru_cache(maxsize=64)  # a link's URL around its token: one or two per module
def _json_inner(text: str) -> str:
    """``text`` as a JSON string, without its quotes."""
    return _json_str(text)[1:-1]


def iso_utc(epoch: float) -> str:
    return _iso_second(int(epoch))


@functools.lru_cache(maxsize=64)  # a mint's expiry repeats within a second per lifetime
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def _user_id(value: object) -> str:
    if value is None:
        raise MintError("userId", "is required")
    if not isinstance(value, str) or not value:
        raise MintError("userId", f"expected a non-empty string, got {_kind(value)}")
    if len(value) > MAX_USER_ID:
        raise MintError("userId", f"is {len(value)} characters long; at most {MAX_USER_ID}")
    problem = identity_problem(value, commas=False)
    if problem is not None:
        raise MintError("userId", problem)
    return value


def _params(body: dict[str, object], config: Config) -> tuple[RoleConfig, dict[str, str]]:
    raw = body.get("additionalParams", {})
    if not isinstance(raw, dict):
        raise MintError("additionalParams", f"expected an object, got {_kind(raw)}")
    role_name = raw.get("role", config.default_role)
    if not isinstance(role_name, str) or role_name not in config.roles:
        shown = repr(role_name) if isinstance(role_name, str) else _kind(role_name)
        raise MintError(
            "additionalParams.role",
            f"got {shown[:80]}; expected one of: {', '.join(sorted(config.roles))}",
        )
    role = config.roles[role_name]
    params: dict[str, str] = {}
    for key, value in raw.items():
        if key == "role":
            continue
        field = f"additionalParams.{key}"
        if key not in role.params:
            allowed = ", ".join(sorted(role.params)) or "none besides role"
            raise MintError(
                _printable(field), f"not allowed for role {role.name}; allowed: {allowed}"
            )
        params[key] = _param_value(field, value)
    return role, params


def _param_value(field: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MintError(field, "expected a finite number")
        return repr(value)
    if isinstance(value, str):
        problem = identity_problem(value)
        if problem is not None:
            raise MintError(field, problem)
        return value
    raise MintError(field, f"expected a string, number or boolean, got {_kind(value)}")


def _module(body: dict[str, object], role: RoleConfig) -> str | None:
    if "module" not in body:
        return None
    module = body["module"]
    if not isinstance(module, str) or not MODULE.fullmatch(module):
        raise MintError("module", "expected 1-128 of A-Z a-z 0-9 _ -")
    if not any(fnmatchcase(module, pattern) for pattern in role.modules):
        raise MintError("module", f"{module!r} is not allowed for role {role.name}")
    return module


def _lifetime(body: dict[str, object], role: RoleConfig, config: Config) -> int:
    limit = min(role.max_expiry, config.max_expiry)
    has_measure, has_offset = "expireMeasure" in body, "expireOffset" in body
    if not has_measure and not has_offset:
        # The configured default, shortened to the role's cap: only explicit asks are refused.
        return int(min(config.default_expiry, limit))
    if not has_offset:
        raise MintError("expireOffset", "is required when expireMeasure is given")
    if not has_measure:
        raise MintError("expireMeasure", "is required when expireOffset is given")
    measure, offset = body["expireMeasure"], body["expireOffset"]
    unit = _MEASURES.get(measure.lower().removesuffix("s")) if isinstance(measure, str) else None
    if unit is None:
        raise MintError("expireMeasure", "expected one of: seconds, minutes, hours, days")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 1:
        raise MintError("expireOffset", f"expected a positive integer, got {_kind(offset)}")
    lifetime = offset * unit
    # Against whole seconds (the same answer for an int): compiled, an int compared with a
    # float is converted to one, and a huge expireOffset would raise OverflowError (a 500).
    if lifetime > int(limit):
        which = (
            f"role {role.name} allows at most {format_duration(limit)}"
            if role.max_expiry < config.max_expiry
            else f"the maximum expiry is {format_duration(limit)}"
        )
        raise MintError("expireOffset", f"{offset} {measure} is too long: {which}")
    return lifetime


def _printable(text: str) -> str:
    return "".join("?" if has_control(c) else c for c in text)[:120]


def _kind(value: object) -> str:
    """Describe a rejected value without echoing it (it may be long or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 20 else "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    return "an array" if isinstance(value, list) else "an object"
