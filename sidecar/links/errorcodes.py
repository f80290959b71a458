"""The ``error_code`` every admin API error body carries, in GoTrue's vocabulary, and the
one ``POST <prefix>/verify`` failures carry (:func:`for_verify_failure`).

``@supabase/auth-js`` reads ``error_code`` into ``AuthApiError.code`` (GoTrue's numeric
``code`` is the status), so a backend can branch on it without parsing messages. Where
GoTrue has a code for the case it is used as is; the rest (refusals GoTrue never makes: a
peer outside ``admin.allowed_peers``, a browser, a foreign ``Host``) are ours, in its style.
No HTTP here: the error-body builders (``admin.guards.admin_error``,
``links.edge.gotrue_error``, the verify route's failures) and the domain errors name codes
from this list.
"""

from __future__ import annotations

VALIDATION_FAILED = "validation_failed"
BAD_JSON = "bad_json"
EMAIL_ADDRESS_INVALID = "email_address_invalid"
USER_NOT_FOUND = "user_not_found"
USER_ALREADY_EXISTS = "user_already_exists"
EMAIL_EXISTS = "email_exists"
WEAK_PASSWORD = "weak_password"  # noqa: S105 (a code, not a password)
NO_AUTHORIZATION = "no_authorization"
NOT_ADMIN = "not_admin"
PEER_NOT_ALLOWED = "peer_not_allowed"
BROWSER_REFUSED = "browser_refused"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
REQUEST_TOO_LARGE = "request_too_large"
MISDIRECTED_REQUEST = "misdirected_request"
OVER_REQUEST_RATE_LIMIT = "over_request_rate_limit"
SERVICE_UNAVAILABLE = "service_unavailable"
UNEXPECTED_FAILURE = "unexpected_failure"
# Only on POST <prefix>/verify: GoTrue's one code for a token or code that is wrong,
# expired or used ("Token has expired or is invalid").
OTP_EXPIRED = "otp_expired"

# What an error of a status means when its raiser names nothing more precise.
_BY_STATUS = {
    400: VALIDATION_FAILED,
    401: NO_AUTHORIZATION,
    403: NOT_ADMIN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: REQUEST_TOO_LARGE,
    421: MISDIRECTED_REQUEST,
    422: VALIDATION_FAILED,
    429: OVER_REQUEST_RATE_LIMIT,
    503: SERVICE_UNAVAILABLE,
}

# The admin API's codes (its OpenAPI document lists them).
ALL = (
    VALIDATION_FAILED, BAD_JSON, EMAIL_ADDRESS_INVALID, USER_NOT_FOUND, USER_ALREADY_EXISTS,
    EMAIL_EXISTS, WEAK_PASSWORD, NO_AUTHORIZATION, NOT_ADMIN, PEER_NOT_ALLOWED,
    BROWSER_REFUSED, NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_TOO_LARGE, MISDIRECTED_REQUEST,
    OVER_REQUEST_RATE_LIMIT, SERVICE_UNAVAILABLE, UNEXPECTED_FAILURE,
)  # fmt: skip


def for_status(status: int) -> str:
    """The code of an error answered with ``status`` when nothing more precise is known."""
    return _BY_STATUS.get(status, UNEXPECTED_FAILURE)


# A failed redemption's reason (``proxy.redemptions.STATUS``) -> the verify route's code.
_BY_VERIFY_REASON = {
    **dict.fromkeys(
        ("malformed", "tampered", "unknown_key", "unknown_role", "invalid_otp", "invalid_link",
         "expired", "used", "revoked", "superseded"),
        OTP_EXPIRED,
    ),
    "bad_request": VALIDATION_FAILED,
    "redirect_mismatch": VALIDATION_FAILED,
    "email_exists": EMAIL_EXISTS,
    "weak_password": WEAK_PASSWORD,
    "rate_limited": OVER_REQUEST_RATE_LIMIT,
    # Both 503s; the body's ``error`` tells them apart (burn_unconfirmed: a retry may say
    # "used"). auth-js raises AuthRetryableFetchError for any 5xx, without a code.
    "store_unavailable": SERVICE_UNAVAILABLE,
    "burn_unconfirmed": SERVICE_UNAVAILABLE,
}  # fmt: skip


def for_verify_failure(reason: str) -> str:
    """GoTrue's ``error_code`` for a ``POST <prefix>/verify`` that failed with ``reason``."""
    return _BY_VERIFY_REASON.get(reason, OTP_EXPIRED)
