"""A ``POST /admin/generate_link`` body, checked: :func:`parse_link_request`.

GoTrue's field names and messages (``{msg, details}`` at the edge), plus what
``@supabase/auth-js`` sends (``redirectTo`` in the body, ``redirect_to`` in the query,
``email_change_current``/``_new`` types). Errors (domain; the edge maps them to statuses)::

    LinkRequestError (.msg, .details)   generate_link refused
     ├── InvalidLinkRequest             400 bad type, field, email, redirect_to, data
     ├── UserNotFound                   404 the type needs an existing user
     └── UnprocessableLink              422 already registered, weak password, email taken
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.config import LINK_TYPES, Config
from sidecar.links import errorcodes as codes
from sidecar.links.passwords import PasswordPolicyError, check_policy
from sidecar.links.redirects import RedirectRejected, allow_list

# redirectTo: @supabase/auth-js spreads its options ({redirectTo, data}) into the body.
FIELDS = ("type", "email", "redirect_to", "redirectTo", "data", "password", "new_email")
# GoTrue's secure email change is two links (current and new address); here it is one
# verification, so both of auth-js's names ask for that one link.
TYPE_ALIASES = {"email_change_current": "email_change", "email_change_new": "email_change"}
MAX_EMAIL = 254
MAX_DATA = 4096  # bytes of user metadata, as compact JSON
INVALID_TYPE_DETAILS = "Link type must be one of: " + ", ".join(LINK_TYPES)
# WHATWG's "valid email address" (what <input type=email> accepts), ASCII only.
_EMAIL = re.compile(
    r"[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


class LinkRequestError(Exception):
    """``error_code`` is GoTrue's code for the refusal (:mod:`sidecar.links.errorcodes`)."""

    default_code = codes.VALIDATION_FAILED

    def __init__(self, msg: str, details: str, *, error_code: str | None = None) -> None:
        super().__init__(f"{msg}: {details}")
        self.msg = msg
        self.details = details
        self.error_code = error_code or self.default_code


class InvalidLinkRequest(LinkRequestError):
    pass


class UserNotFound(LinkRequestError):
    default_code = codes.USER_NOT_FOUND


class UnprocessableLink(LinkRequestError):
    pass


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A checked ``generate_link`` body."""

    link_type: str
    email: str
    redirect_to: str
    data: dict[str, object] | None = None
    password: str | None = field(default=None, repr=False)
    new_email: str | None = None


def normalise_email(value: object) -> str | None:
    """Trimmed, lower-cased address if it is a sane one (RFC 5321 lengths), else None."""
    if not isinstance(value, str):
        return None
    if not value.isascii():  # before lower(): "\u212a".lower() is an ASCII "k"
        return None
    email = value.strip(" \t\r\n").lower()  # not str.strip(): it also eats \x1c-\x1f
    local = email.partition("@")[0]
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        return None
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    return email


def parse_link_request(
    body: Mapping[str, object], config: Config, *, query_redirect: str | None = None
) -> LinkRequest:
    """Check a decoded ``generate_link`` body; raise :class:`LinkRequestError`.

    ``query_redirect`` is the query string's ``redirect_to`` (GoTrue reads it there, and
    ``@supabase/auth-js`` sends it there *and* as ``redirectTo`` in the body): every copy
    given must be the same URL."""
    link_type = body.get("type")
    if isinstance(link_type, str):
        link_type = TYPE_ALIASES.get(link_type, link_type)
    if not isinstance(link_type, str) or link_type not in LINK_TYPES:
        raise InvalidLinkRequest("Invalid link type", INVALID_TYPE_DETAILS)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidLinkRequest(
            "Invalid request",
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(FIELDS)}",
        )
    if body.get("email") is None:
        raise InvalidLinkRequest(
            "Invalid email", "email is required", error_code=codes.EMAIL_ADDRESS_INVALID
        )
    email = normalise_email(body["email"])
    if email is None:
        raise InvalidLinkRequest(
            "Invalid email",
            "Unable to validate email address: invalid format",
            error_code=codes.EMAIL_ADDRESS_INVALID,
        )
    return LinkRequest(
        link_type=link_type,
        email=email,
        redirect_to=_redirect(_one_redirect(body, query_redirect), config),
        data=_data(body.get("data"), link_type),
        password=_password(body.get("password"), link_type),
        new_email=_new_email(body.get("new_email"), link_type, email),
    )


def _one_redirect(body: Mapping[str, object], query_redirect: str | None) -> object:
    given = [body.get("redirect_to"), body.get("redirectTo"), query_redirect]
    present = [value for value in given if value is not None]
    if any(value != present[0] for value in present[1:]):
        raise InvalidLinkRequest(
            "Invalid redirect_to",
            "redirect_to (body), redirectTo (body) and redirect_to (query) name different URLs",
        )
    return present[0] if present else None


def _redirect(value: object, config: Config) -> str:
    if value is None or value == "":
        return config.links.default_redirect
    if not isinstance(value, str):
        raise InvalidLinkRequest("Invalid redirect_to", "redirect_to must be a string")
    try:
        return allow_list(config.links.redirect_allow).check(value)
    except RedirectRejected as exc:
        raise InvalidLinkRequest("Invalid redirect_to", str(exc)) from None


def _data(value: object, link_type: str) -> dict[str, object] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidLinkRequest("Invalid data", "data must be a JSON object")
    if link_type not in ("signup", "invite", "magiclink"):
        raise InvalidLinkRequest(
            "Invalid data", "data (user metadata) is used by signup, invite and magiclink links"
        )
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_DATA:
        raise InvalidLinkRequest("Invalid data", f"data is larger than {MAX_DATA} bytes as JSON")
    return dict(value)


def _password(value: object, link_type: str) -> str | None:
    if value is None:
        if link_type == "signup":
            raise UnprocessableLink(
                "Signup requires a valid password",
                "send password (at least 8 characters)",
                error_code=codes.WEAK_PASSWORD,
            )
        return None
    if link_type not in ("signup", "invite"):
        raise InvalidLinkRequest(
            "Invalid request",
            "password is used by signup and invite links; a recovery sets the new password "
            "when the link is verified (POST <prefix>/verify with password)",
        )
    if not isinstance(value, str):
        raise InvalidLinkRequest("Invalid request", "password must be a string")
    try:
        check_policy(value)
    except PasswordPolicyError as exc:
        raise UnprocessableLink(
            str(exc), "weak_password: choose a longer password", error_code=codes.WEAK_PASSWORD
        ) from None
    return value


def _new_email(value: object, link_type: str, email: str) -> str | None:
    if value is None:
        return None
    if link_type != "email_change":
        raise InvalidLinkRequest("Invalid request", "new_email is used by email_change links only")
    new_email = normalise_email(value)
    if new_email is None:
        raise InvalidLinkRequest(
            "Invalid new_email",
            "Unable to validate email address: invalid format",
            error_code=codes.EMAIL_ADDRESS_INVALID,
        )
    if new_email == email:
        raise UnprocessableLink("Email address unchanged", "new_email is the current address")
    return new_email
