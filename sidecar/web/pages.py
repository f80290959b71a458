"""The pages the sidecar itself answers with: failures, the confirm button, the logout button.

Every page is ``no-store`` (it may sit on a URL that carries a token), sends no referrer,
cannot be framed (the two button pages would otherwise be click-jackable) and loads
nothing. A client that prefers ``application/json`` gets ``{"code", "error", "message"}``.
Nothing request-controlled is echoed, so no page can carry a token, a cookie or markup.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus

from aiohttp import hdrs, web

# Every answer the sidecar makes itself about a link or a session: never cached, and the
# URL (it may carry a token) never sent on as a Referer.
NO_STORE = {hdrs.CACHE_CONTROL: "no-store", "Referrer-Policy": "no-referrer"}
SECURITY_HEADERS = {
    hdrs.CACHE_CONTROL: "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

MESSAGES = {
    "malformed": "This link is not valid. Check that it was copied completely.",
    "tampered": "This link is not valid. Check that it was copied completely.",
    "unknown_key": "This link is no longer valid. Ask for a new one.",
    "unknown_role": "This link is no longer valid. Ask for a new one.",
    "expired": "This link has expired. Ask for a new one.",
    "used": "This link has already been used. Ask for a new one.",
    "revoked": "This link has been withdrawn. Ask for a new one.",
    "superseded": "A newer link has been sent; use that one instead.",
    "store_unavailable": "The service is temporarily unavailable. Try again in a moment.",
    "rate_limited": "Too many failed attempts. Wait a while before trying again.",
    "forbidden": "You do not have access to this page.",
    "unauthenticated": "You need to sign in with a valid link to see this page.",
    "bad_path": "This address is not valid.",
    "bad_request": "The request is not valid.",
    "uri_too_long": "This address is too long.",
    "headers_too_large": "The request carries too much header data (often: too many cookies).",
    "bad_gateway": "The application is not reachable right now. Try again in a moment.",
    "gateway_timeout": "The application took too long to answer. Try again in a moment.",
    "not_found": "There is nothing here.",
    "method_not_allowed": "This method is not allowed here.",
    # auth links (sidecar.links.verify)
    "invalid_otp": "The code is wrong or has expired. Check it, or ask for a new one.",
    "invalid_link": "This link is not valid or has expired. Ask for a new one.",
    "redirect_mismatch": "This link is not valid. Check that it was copied completely.",
    "email_exists": "This email address already belongs to another account.",
    "weak_password": "The new password is too short: use at least 8 characters.",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.4rem}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
)


def wants_json(request: web.BaseRequest) -> bool:
    """True when ``Accept`` ranks ``application/json`` above ``text/html``."""
    accept = request.headers.get(hdrs.ACCEPT, "")
    if "json" not in accept:
        return False
    best = {"json": -1.0, "html": -1.0}
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        kind = (
            "json"
            if media == "application/json" or media.endswith("+json")
            else "html"
            if media in ("text/html", "text/*", "*/*")
            else None
        )
        if kind is None:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in ("text/*", "*/*"):
            q -= 0.001  # a wildcard never outranks an explicit application/json
        best[kind] = max(best[kind], q)
    return best["json"] > 0 and best["json"] >= best["html"]


def failure(
    request: web.BaseRequest, status: int, reason: str, *, retry_after: int | None = None
) -> web.Response:
    """The clear failure page (or JSON) for ``status`` and the short ``reason`` code."""
    phrase = _phrase(status)
    message = MESSAGES.get(reason, phrase + ".")
    headers = dict(SECURITY_HEADERS)
    if retry_after is not None:
        headers[hdrs.RETRY_AFTER] = str(retry_after)
    if wants_json(request):
        body = json.dumps({"code": status, "error": reason, "message": message})
        return web.Response(
            status=status, text=body, content_type="application/json", headers=headers
        )
    return _html(status, headers, f"{status} {phrase}", f"<p>{html.escape(message)}</p>")


def method_not_allowed(request: web.BaseRequest, allow: str) -> web.Response:
    """The 405 page, with the ``Allow`` header RFC 9110 requires."""
    response = failure(request, 405, "method_not_allowed")
    response.headers[hdrs.ALLOW] = allow
    return response


def confirm_page() -> web.Response:
    """The button that turns a scanned-safe ``GET`` into the ``POST`` that redeems.

    The form has no ``action``, so it posts to the very URL it was served from, token
    included: the token never appears in the page itself."""
    body = (
        "<p>Press the button to sign in. This link works once.</p>"
        '<form method="post"><button type="submit">Continue</button></form>'
    )
    return _html(200, dict(SECURITY_HEADERS), "Sign in", body)


def logout_page() -> web.Response:
    """The button that signs out: a ``GET`` alone never ends a session."""
    body = (
        "<p>Do you want to sign out?</p>"
        '<form method="post"><button type="submit">Sign out</button></form>'
    )
    return _html(200, dict(SECURITY_HEADERS), "Sign out", body)


def signed_out_page() -> web.Response:
    """Where a logout lands when it names no other place."""
    body = '<p>You are signed out.</p><p><a href="/">Back to the start page</a></p>'
    return _html(200, dict(SECURITY_HEADERS), "Signed out", body)


def _html(status: int, headers: dict[str, str], title: str, body: str) -> web.Response:
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
