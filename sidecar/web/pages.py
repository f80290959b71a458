"""The pages the sidecar itself answers with: failures, the confirm button, the logout button.

Every page is ``no-store`` (it may sit on a URL that carries a token), sends no referrer,
cannot be framed (the two button pages would otherwise be click-jackable) and loads
nothing. A client that prefers ``application/json`` gets ``{"code", "error", "message"}``.
Nothing request-controlled is echoed, so no page can carry a token, a cookie or markup.
"""

from __future__ import annotations

import html
import string
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import hdrs, web

from sidecar.config.pages import MESSAGES
from sidecar.web.appkeys import SERVICES
from sidecar.web.listener import error_document

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

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.4rem}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
)


def wants_json(request: web.BaseRequest) -> bool:
    """True when ``Accept`` ranks ``application/json`` above ``text/html``."""
    return prefers_json(request.headers.get(hdrs.ACCEPT, ""))


def prefers_json(accept: str) -> bool:
    """:func:`wants_json` for the value of an ``Accept`` header."""
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
    """The clear failure page for ``status`` and the short ``reason`` code (the operator's
    template when ``pages.dir`` has one), or :func:`failure_json` when the client prefers
    JSON."""
    accept = request.headers.get(hdrs.ACCEPT, "")
    return failure_for(accept, _templates(request), status, reason, retry_after=retry_after)


def failure_for(
    accept: str,
    templates: Mapping[str, str],
    status: int,
    reason: str,
    *,
    retry_after: int | None = None,
) -> web.Response:
    """:func:`failure` for a request's ``Accept`` header and the operator's ``templates``."""
    if prefers_json(accept):
        return failure_json(status, reason, retry_after=retry_after)
    phrase = _phrase(status)
    message = MESSAGES.get(reason, phrase + ".")
    headers = _failure_headers(retry_after)
    title = f"{status} {phrase}"
    own = templates.get(reason) or templates.get("failure")
    if own is not None:
        values = {"status": str(status), "title": title, "message": message, "reason": reason}
        return _own_html(status, headers, own, values)
    return _html(status, headers, title, f"<p>{html.escape(message)}</p>")


def failure_json(
    status: int, reason: str, *, retry_after: int | None = None, error_code: str | None = None
) -> web.Response:
    """The proxy listener's JSON failure ``{"code", "error", "message"}`` (failure pages,
    ``<prefix>/verify``, ``<prefix>/session``), with ``error_code`` when given (GoTrue's, for
    the verify API). The document itself comes from
    :func:`~sidecar.web.listener.error_document`, which also writes the answers aiohttp's
    server gives before any handler runs, so the shape has one author."""
    message = MESSAGES.get(reason, _phrase(status) + ".")
    return web.Response(
        status=status,
        body=error_document(status, reason, message, error_code),
        content_type="application/json",
        charset="utf-8",
        headers=_failure_headers(retry_after),
    )


def _failure_headers(retry_after: int | None) -> dict[str, str]:
    headers = dict(SECURITY_HEADERS)
    if retry_after is not None:
        headers[hdrs.RETRY_AFTER] = str(retry_after)
    return headers


def method_not_allowed(request: web.BaseRequest, allow: str) -> web.Response:
    """The 405 page, with the ``Allow`` header RFC 9110 requires."""
    response = failure(request, 405, "method_not_allowed")
    response.headers[hdrs.ALLOW] = allow
    return response


# The forms post to the very URL the page was served from (no ``action``): for a confirm
# page that URL holds the token, which so never appears in the page itself.
_CONFIRM_FORM = '<form method="post"><button type="submit">Continue</button></form>'
_LOGOUT_FORM = '<form method="post"><button type="submit">Sign out</button></form>'


def confirm_page(request: web.BaseRequest) -> web.Response:
    """The button that turns a scanned-safe ``GET`` into the ``POST`` that redeems."""
    body = "<p>Press the button to sign in. This link works once.</p>" + _CONFIRM_FORM
    return _page(request, "confirm", "Sign in", body, form=_CONFIRM_FORM)


def logout_page(request: web.BaseRequest) -> web.Response:
    """The button that signs out: a ``GET`` alone never ends a session."""
    body = "<p>Do you want to sign out?</p>" + _LOGOUT_FORM
    return _page(request, "logout", "Sign out", body, form=_LOGOUT_FORM)


def signed_out_page(request: web.BaseRequest) -> web.Response:
    """Where a logout lands when it names no other place."""
    body = '<p>You are signed out.</p><p><a href="/">Back to the start page</a></p>'
    return _page(request, "signed_out", "Signed out", body)


def _page(
    request: web.BaseRequest, name: str, title: str, body: str, *, form: str | None = None
) -> web.Response:
    own = _templates(request).get(name)
    if own is None:
        return _html(200, dict(SECURITY_HEADERS), title, body)
    values = {"title": title} if form is None else {"title": title, "form": form}
    return _own_html(200, dict(SECURITY_HEADERS), own, values, trusted=("form",))


def _templates(request: web.BaseRequest) -> Mapping[str, str]:
    """The operator's templates (``pages.dir``) of the app serving ``request``."""
    app = request.app if isinstance(request, web.Request) else None
    if app is None or SERVICES not in app:
        return {}
    return app[SERVICES].config.pages


def _own_html(
    status: int,
    headers: dict[str, str],
    template: str,
    values: Mapping[str, str],
    trusted: tuple[str, ...] = (),
) -> web.Response:
    """An operator's template filled in; every value is escaped but the forms we built."""
    filled = {k: v if k in trusted else html.escape(v) for k, v in values.items()}
    text = string.Template(template).safe_substitute(filled)
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


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
