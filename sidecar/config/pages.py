"""``pages.dir``: the operator's own templates for the pages the sidecar answers with.

A template is an HTML file named for the page it replaces, with ``$name`` placeholders
(:class:`string.Template`); every value put in is HTML-escaped. Pages without a file keep
the built-in one. Files are read and checked once, with the rest of the config: an unknown
file name or placeholder is a config error naming both, so a typo never silently falls back.

==================== ================================= ====================================
file                 page                              placeholders
==================== ================================= ====================================
``failure.html``     every failure (401, 410, 503, …)  ``$status $title $message $reason``
``<reason>.html``    one failure reason (``used``,     the same
                     ``expired``, ``revoked``, …)
``confirm.html``     the "Continue" button of          ``$title $form`` (the form that
                     ``redeem: confirm`` links         posts; keep it in the page)
``logout.html``      the "Sign out" button             ``$title $form``
``signed_out.html``  after logging out                 ``$title``
==================== ================================= ====================================
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

# The failure reasons the sidecar answers with, and the built-in text of each page.
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
    "burn_unconfirmed": (
        "The service did not confirm this sign-in in time, so you are not signed in. Try the "
        "link again in a moment. If it then says the link was already used, this attempt "
        "used it up: ask for a new one."
    ),
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
    "misdirected": "This address is not served here.",
    "cross_origin": "This request came from another site and was refused.",
    "method_not_allowed": "This method is not allowed here.",
    # auth links (sidecar.links.verify)
    "invalid_otp": "The code is wrong or has expired. Check it, or ask for a new one.",
    "invalid_link": "This link is not valid or has expired. Ask for a new one.",
    "redirect_mismatch": "This link is not valid. Check that it was copied completely.",
    "email_exists": "This email address already belongs to another account.",
    "weak_password": "The new password is too short: use at least 8 characters.",
}

FAILURE_FIELDS = frozenset({"status", "title", "message", "reason"})
FORM_FIELDS = frozenset({"title", "form"})
FIXED_PAGES: Mapping[str, frozenset[str]] = {
    "failure": FAILURE_FIELDS,
    "confirm": FORM_FIELDS,
    "logout": FORM_FIELDS,
    "signed_out": frozenset({"title"}),
}
MAX_TEMPLATE = 256 * 1024


class PageTemplateError(ValueError):
    """One problem with one template file; the message names the file."""


def load_page_templates(directory: Path) -> tuple[dict[str, str], list[str]]:
    """The templates in ``directory`` (page name -> text) and the problems found."""
    if not directory.is_dir():
        return {}, [f"{directory} is not a directory"]
    templates: dict[str, str] = {}
    problems: list[str] = []
    allowed = {**FIXED_PAGES, **dict.fromkeys(MESSAGES, FAILURE_FIELDS)}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # editors' and Kubernetes' (..data) entries
        name = path.name.removesuffix(".html")
        if path.suffix != ".html" or name not in allowed:
            problems.append(
                f"{path.name}: not a page; expected <page>.html for one of: "
                + ", ".join(sorted(allowed))
            )
            continue
        try:
            templates[name] = _check(path, allowed[name])
        except PageTemplateError as exc:
            problems.append(f"{path.name}: {exc}")
    return templates, problems


def _check(path: Path, fields: frozenset[str]) -> str:
    raw = path.read_bytes()
    if len(raw) > MAX_TEMPLATE:
        raise PageTemplateError(f"{len(raw)} bytes, at most {MAX_TEMPLATE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PageTemplateError("not UTF-8") from None
    template = string.Template(text)
    if not template.is_valid():
        raise PageTemplateError("a $ that is not a placeholder (write $$ for a dollar sign)")
    unknown = set(template.get_identifiers()) - fields
    if unknown:
        raise PageTemplateError(
            f"unknown placeholder ${sorted(unknown)[0]}; this page has: "
            + " ".join(f"${f}" for f in sorted(fields))
        )
    if "form" in fields and "form" not in template.get_identifiers():
        raise PageTemplateError("the page must contain $form (the button that posts)")
    return text
