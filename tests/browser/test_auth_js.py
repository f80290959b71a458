"""A client nobody here wrote: ``@supabase/auth-js`` (npm, unmodified) mints auth links of
all five types on a real ``sidecar serve``, and Chromium signs in with each action link.

``tests/node/generate_links.cjs`` calls ``GoTrueAdminApi.generateLink`` exactly as a
backend would (body ``{type, email, password, data, new_email, redirectTo}`` and
``redirect_to`` in the query) and prints what auth-js made of the answers; the transcript
is kept in ``artifacts/auth-js/transcript.json``. Node and the package come from the cache
directory ``scripts/test`` installs into (``SIDECAR_CLIENTS_NODE``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.chromium import TIMEOUT_MS, Browser
from tests.conftest import executable, skip_or_fail
from tests.harness import Upstream, running_upstream
from tests.serve_process import ROOT, Served, running_serve

pytestmark = pytest.mark.browser

SCRIPT = ROOT / "tests" / "node" / "generate_links.cjs"
NODE_DIR = Path(os.environ.get("SIDECAR_CLIENTS_NODE", Path.home() / ".cache" / "sidecar-clients"))
ARTIFACTS = ROOT / "artifacts" / "auth-js"
AUTH_JS = "2.119.0"
ROLES = {
    "Authenticated": {
        "headers": {"X-Forwarded-User": "{user_id}", "X-Forwarded-Email": "{email}"},
    }
}


def node_modules() -> Path:
    executable("node", "node is not installed (apt-get install nodejs npm)")
    package = NODE_DIR / "node_modules" / "@supabase" / "auth-js" / "package.json"
    if not package.exists():
        skip_or_fail(f"@supabase/auth-js is not installed in {NODE_DIR} (run scripts/test)")
    installed = json.loads(package.read_text(encoding="utf-8"))["version"]
    assert installed == AUTH_JS, f"{NODE_DIR} holds auth-js {installed}, expected {AUTH_JS}"
    return NODE_DIR / "node_modules"


async def auth_js(served: Served, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the calls through auth-js in node; return its transcript."""
    env = {**os.environ, "NODE_PATH": str(node_modules())}
    request = {
        "url": served.admin,
        "key": served.admin_key,
        "verifyUrl": served.proxy + "/_sidecar",
        "calls": calls,
    }
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), json.dumps(request),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    transcript: list[dict[str, Any]] = json.loads(out)
    return transcript


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Served, Upstream]]:
    node_modules()  # skip before starting anything
    links = {
        "role": "Authenticated",
        "create_user_on_magiclink": True,
        "default_redirect": "{public_url}/",
        "redirect_allow": ["{public_url}/welcome/*"],
    }
    async with (
        running_upstream() as upstream,
        running_serve(
            tmp_path, upstream.url, roles=ROLES, default_role="Authenticated", links=links
        ) as served,
    ):
        yield served, upstream


def calls_for(public: str) -> list[dict[str, Any]]:
    def options(kind: str, **more: object) -> dict[str, object]:
        return {"redirectTo": f"{public}/welcome/{kind}", **more}

    return [
        {
            "name": "signup",
            "params": {
                "type": "signup",
                "email": "signup@example.com",
                "password": "correct horse battery",
                "options": options("signup", data={"plan": "pro"}),
            },
        },
        {
            "name": "invite",
            "params": {
                "type": "invite",
                "email": "invitee@example.com",
                "options": options("invite", data={"team": "blue"}),
            },
        },
        {
            "name": "magiclink",
            "params": {
                "type": "magiclink",
                "email": "magic@example.com",
                "options": options("magiclink"),
            },
        },
        {
            "name": "recovery",
            "params": {
                "type": "recovery",
                "email": "signup@example.com",
                "options": options("recovery"),
            },
        },
        {
            "name": "email_change",
            "params": {
                "type": "email_change_current",
                "email": "invitee@example.com",
                "newEmail": "moved@example.com",
                "options": options("email_change"),
            },
        },
    ]


LANDED_AS = {  # the address the session carries after each link
    "signup": "signup@example.com",
    "invite": "invitee@example.com",
    "magiclink": "magic@example.com",
    "recovery": "signup@example.com",
    "email_change": "moved@example.com",
}


async def test_auth_js_generates_all_five_links_and_each_signs_a_browser_in(
    served: tuple[Served, Upstream], chromium: Browser
) -> None:
    server, upstream = served
    public = server.proxy
    transcript = await auth_js(server, calls_for(public))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "transcript.json").write_text(json.dumps(transcript, indent=2), "utf-8")

    for entry in transcript:
        kind, data = entry["name"], entry["data"]
        assert entry["error"] is None, entry
        props, user = data["properties"], data["user"]
        landing = f"{public}/welcome/{kind}"
        assert props["verification_type"] == kind
        assert props["redirect_to"] == landing
        assert len(props["email_otp"]) == 6
        assert props["email_otp"].isdigit()
        link = urlsplit(props["action_link"])
        assert f"{link.scheme}://{link.netloc}{link.path}" == f"{public}/_sidecar/verify"
        query = parse_qs(link.query)
        assert query["type"] == [kind]
        assert query["redirect_to"] == [landing]
        assert props["hashed_token"] == hashlib.sha256(query["token"][0].encode()).hexdigest()
        # auth-js put the rest of the answer in `user`: GoTrue's user fields, nothing else.
        assert user["email"] == entry["params"]["email"]
        assert set(user) >= {"id", "email", "created_at", "user_metadata"}
        assert not set(user) & {"action_link", "email_otp", "hashed_token"}
    signup = transcript[0]["data"]["user"]
    assert signup["user_metadata"] == {"plan": "pro"}
    assert transcript[3]["data"]["user"]["id"] == signup["id"]  # recovery: the same user

    for entry in transcript:  # in order: the recovery after the signup it recovers, ...
        kind = entry["name"]
        context = await chromium.new_context()
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        await page.goto(entry["data"]["properties"]["action_link"])
        assert page.url == f"{public}/welcome/{kind}", kind
        [reached] = [r for r in upstream.requests if r.raw_path == f"/welcome/{kind}"]
        assert reached.values("X-Forwarded-User") == [entry["data"]["user"]["id"]], kind
        assert reached.values("X-Forwarded-Email") == [LANDED_AS[kind]], kind
        assert any(c["httpOnly"] for c in await context.cookies()), kind
        await context.close()


async def test_auth_js_reads_the_sidecars_errors_as_auth_api_errors(
    served: tuple[Served, Upstream],
) -> None:
    server, _ = served
    calls = [
        {"name": "unknown user", "params": {"type": "recovery", "email": "nobody@example.com"}},
        {"name": "bad type", "params": {"type": "phone_change", "email": "a@example.com"}},
        {
            "name": "weak password",
            "params": {"type": "signup", "email": "weak@example.com", "password": "short"},
        },
    ]
    transcript = await auth_js(server, calls)
    (ARTIFACTS / "errors.json").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "errors.json").write_text(json.dumps(transcript, indent=2), "utf-8")
    errors = {entry["name"]: entry["error"] for entry in transcript}
    for name, entry in zip(errors, transcript, strict=True):
        assert entry["data"] == {"properties": None, "user": None}, name
    # auth-js reads GoTrue's error_code into the error's code, and a weak password (with
    # GoTrue's weak_password.reasons) into its own error class.
    assert [(e["name"], e["status"], e["code"], e["message"]) for e in errors.values()] == [
        ("AuthApiError", 404, "user_not_found", "User not found"),
        ("AuthApiError", 400, "validation_failed", "Invalid link type"),
        ("AuthWeakPasswordError", 422, "weak_password", "Password should be at least 8 characters"),
    ]
    assert errors["unknown user"]["isAuthApiError"] is True
    assert errors["weak password"]["reasons"] == ["length"]


async def test_supabase_verify_otp_with_type_email(served: tuple[Served, Upstream]) -> None:
    """supabase-js's ``verifyOtp({email, token, type: "email"})`` against ``<prefix>/verify``:
    the user comes back (the session is the cookie, so auth-js sees none). Its failures
    carry GoTrue's ``error_code``, which auth-js reads into ``AuthApiError.code``."""
    server, _ = served
    [minted] = await auth_js(
        server, [{"name": "mint", "params": {"type": "magiclink", "email": "otp@example.com"}}]
    )
    code = minted["data"]["properties"]["email_otp"]
    wrong = "000000" if code != "000000" else "111111"
    transcript = await auth_js(
        server,
        [
            {
                "name": "wrong code",
                "op": "verifyOtp",
                "params": {"email": "otp@example.com", "token": wrong, "type": "email"},
            },
            {
                "name": "right code",
                "op": "verifyOtp",
                "params": {"email": "otp@example.com", "token": code, "type": "email"},
            },
            {
                "name": "used code",
                "op": "verifyOtp",
                "params": {"email": "otp@example.com", "token": code, "type": "email"},
            },
            {
                "name": "unknown token_hash",
                "op": "verifyOtp",
                "params": {"token_hash": "0" * 64, "type": "magiclink"},
            },
            {
                "name": "bad body",
                "op": "verifyOtp",
                "params": {"email": "otp@example.com", "type": "email"},
            },
        ],
    )
    (ARTIFACTS / "verify_otp.json").write_text(json.dumps(transcript, indent=2), "utf-8")
    refused, accepted, again, unknown, bad = transcript
    assert accepted["error"] is None, accepted
    assert accepted["data"]["user"]["id"] == minted["data"]["user"]["id"]
    assert accepted["data"]["user"]["email"] == "otp@example.com"
    assert accepted["data"]["session"] is None
    for failed, status, error_code in [
        (refused, 401, "otp_expired"),
        (again, 401, "otp_expired"),
        (unknown, 401, "otp_expired"),
        (bad, 400, "validation_failed"),
    ]:
        assert failed["error"]["name"] == "AuthApiError", failed
        assert failed["error"]["isAuthApiError"] is True, failed
        assert (failed["error"]["status"], failed["error"]["code"]) == (status, error_code)
        assert failed["data"] == {"user": None, "session": None}
