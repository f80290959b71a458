"""Secrets stay secret: a full flow's logs, pages and reprs never show a token, OTP, cookie,
key or admin key, and secrets are compared in constant time."""

from __future__ import annotations

import ast
import base64
import hmac
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

import sidecar
from sidecar.config import ConfigError, parse_config
from sidecar.tokens.keys import KeysetError, parse_keyset
from tests.harness import ADMIN_KEY, Sidecar, config_doc, running_sidecar
from tests.security import casebook

SOURCE = Path(sidecar.__file__).parent


class Transcript:
    """Everything an operator or an attacker could read besides the intended deliveries."""

    def __init__(self) -> None:
        self.pages: list[str] = []

    def add(self, status: int, headers: object, body: str) -> None:
        self.pages.append(f"{status} {headers} {body}")


def secret_forms(secret: str) -> list[str]:
    if len(secret) >= 24:
        return [secret, secret[:24], secret[-24:]]
    return [secret]


def found(text: str, secret: str) -> bool:
    if secret.isdigit():  # OTPs: not as a part of a longer number (timestamps)
        return re.search(rf"(?<![0-9]){secret}(?![0-9])", text) is not None
    return any(form in text for form in secret_forms(secret))


async def full_flow(sc: Sidecar, pages: Transcript) -> dict[str, str]:
    """Mint, redeem, browse, fail, replay, revoke, log out, and the auth-link flows."""
    secrets: dict[str, str] = {"admin key": ADMIN_KEY}
    for kid, raw in sc.keyset.keys.items():
        secrets[f"key {kid}"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    http, proxy = sc.http, sc.proxy_url

    async def get(url: str, **kwargs: object) -> None:
        async with http.get(url, allow_redirects=False, **kwargs) as r:  # type: ignore[arg-type]
            pages.add(r.status, dict(r.headers) if r.status >= 400 else "", await r.text())

    link = await sc.mint(userId="flow-user", additionalParams={"tenant": "acme"}, module="5e9f")
    secrets["refer token"] = link["referString"]
    cookie = await sc.redeem(link["referString"])
    secrets["cookie"] = cookie
    await get(proxy + "/app/page", headers=sc.cookie_header(cookie))
    await get(proxy + "/admin/x", headers=sc.cookie_header(cookie))
    await get(proxy + "/", params={"refer": link["referString"]})  # replay
    tampered = link["referString"][:-3] + ("AAA" if link["referString"][-3:] != "AAA" else "BBB")
    await get(proxy + "/", params={"refer": tampered})
    await get(proxy + "/", params={"refer": tampered}, headers={"Accept": "application/json"})
    other = await sc.mint(userId="flow-user-2")
    secrets["revoked token"] = other["referString"]
    async with http.post(f"{sc.admin_url}/tokens/{other['id']}/revoke", headers=sc.admin_headers):
        pass
    await get(proxy + "/x", params={"refer": other["referString"]})
    async with http.post(
        proxy + "/_sidecar/logout", headers=sc.cookie_header(cookie), allow_redirects=False
    ) as r:
        pages.add(r.status, dict(r.headers), await r.text())
    await get(proxy + "/app/page", headers=sc.cookie_header(cookie))

    magic = await sc.generate_link(type="magiclink", email="flow@example.org")
    secrets["otp"] = magic["email_otp"]
    secrets["hashed token"] = magic["hashed_token"]
    action = urlsplit(magic["action_link"])
    secrets["link token"] = parse_qs(action.query)["token"][0]
    async with http.post(
        proxy + "/_sidecar/verify",
        json={"type": "magiclink", "email": "flow@example.org", "token": "000000"
              if magic["email_otp"] != "000000" else "111111"},
    ) as r:  # fmt: skip
        pages.add(r.status, dict(r.headers), await r.text())
    async with http.post(
        proxy + "/_sidecar/verify",
        json={"type": "magiclink", "email": "flow@example.org", "token": magic["email_otp"]},
    ) as r:
        assert r.status == 200
        secrets["otp cookie"] = r.cookies[sc.cookie_name].value
    await get(proxy + action.path + "?" + action.query)  # used by the OTP already
    recovery = await sc.generate_link(type="recovery", email="flow@example.org")
    secrets["recovery hash"] = recovery["hashed_token"]
    secrets["recovery otp"] = recovery["email_otp"]
    async with http.post(
        proxy + "/_sidecar/verify",
        json={"type": "recovery", "token_hash": recovery["hashed_token"]},
    ) as r:
        assert r.status == 200
    async with http.post(
        proxy + "/_sidecar/verify",
        json={"type": "recovery", "token_hash": recovery["hashed_token"]},
    ) as r:
        pages.add(r.status, dict(r.headers), await r.text())
    async with http.delete(
        sc.admin_url + "/sessions", params={"user_id": "flow-user"}, headers=sc.admin_headers
    ):
        pass
    async with http.post(
        sc.admin_url + "/referstring",
        json={"userId": "x", "bogus": link["referString"]},
        headers=sc.admin_headers,
    ) as r:
        pages.add(r.status, dict(r.headers), await r.text())
    async with http.post(
        sc.admin_url + "/referstring", json={"userId": "x"}, headers={"Authorization": "Bearer x"}
    ) as r:
        pages.add(r.status, dict(r.headers), await r.text())
    return secrets


async def test_a_full_flow_leaks_no_secret_into_logs_or_pages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pages = Transcript()
    async with running_sidecar(tmp_path) as sc:
        secrets = await full_flow(sc, pages)
        reprs = [repr(sc.config), repr(sc.services), repr(sc.keyset), str(sc.config.admin.key)]
    logs = [record.getMessage() for record in caplog.records]
    logs += [logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info]
    assert any('"event": "redeem"' in line for line in logs), "the audit log was not captured"
    leaks = [
        (name, where)
        for name, secret in secrets.items()
        for where, texts in (("log", logs), ("page", pages.pages), ("repr", reprs))
        if any(found(text, secret) for text in texts)
    ]
    casebook.record(
        "secrets", tried=len(secrets) * (len(logs) + len(pages.pages) + len(reprs)),
        through=len(leaks),
    )  # fmt: skip
    assert not leaks, leaks


def test_config_errors_never_show_key_material(tmp_path: Path) -> None:
    raw = base64.urlsafe_b64encode(b"k" * 31).rstrip(b"=").decode()  # one byte short
    keyset = json.dumps({"active": "a", "keys": [{"kty": "oct", "kid": "a", "k": raw}]})
    with pytest.raises(KeysetError) as caught:
        parse_keyset(keyset)
    assert raw not in str(caught.value)
    doc = config_doc(
        upstream="http://127.0.0.1:1", store_url="sqlite:///x.db", admin_port=1, proxy_port=2
    )
    env = {"SIDECAR_KEYSET": keyset, "SIDECAR_ADMIN_KEY": "short-admin-key"}
    with pytest.raises(ConfigError) as config_error:
        parse_config(yaml.safe_dump(doc), env=env, base_dir=tmp_path)
    text = str(config_error.value) + repr(config_error.value.errors)
    casebook.record("secrets", tried=2, through=int(raw in text) + int("short-admin-key" in text))
    assert raw not in text
    assert "short-admin-key" not in text


async def test_secrets_are_compared_in_constant_time(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes | str, bytes | str]] = []
    real: Callable[..., bool] = hmac.compare_digest

    def spy(a: bytes | str, b: bytes | str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    await sidecar.mint()
    assert any(ADMIN_KEY.encode() in (a, b) or ADMIN_KEY in (a, b) for a, b in compared)
    compared.clear()
    link = await sidecar.generate_link(type="magiclink", email="ct@example.org")
    async with sidecar.http.post(
        sidecar.proxy_url + "/_sidecar/verify",
        json={"type": "magiclink", "email": "ct@example.org", "token": link["email_otp"]},
    ) as r:
        assert r.status == 200
    assert compared, "the OTP was not compared with hmac.compare_digest"
    casebook.record("secrets", tried=2)


def test_no_revealed_secret_is_compared_with_eq() -> None:
    """``Secret.reveal()`` and the names that hold secrets never meet ``==``/``!=``/``in``."""
    suspicious = re.compile(r"(^|_)(otp|admin_key|password|secret|cookie_value|expected)($|_)")
    findings = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Call):
                    operand = operand.func
                    if isinstance(operand, ast.Attribute) and operand.attr == "reveal":
                        findings.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
                        continue
                name = ""
                if isinstance(operand, ast.Attribute):
                    name = operand.attr
                elif isinstance(operand, ast.Name):
                    name = operand.id
                if suspicious.search(name):
                    findings.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    casebook.record("secrets", through=len(findings))
    assert not findings, findings


async def test_refer_answers_are_no_store_and_no_referrer(sidecar: Sidecar) -> None:
    link = await sidecar.mint()
    token = link["referString"]
    bad = []
    for params in ({"refer": token}, {"refer": token}, {"refer": "x"}, {"refer": token[:-2]}):
        async with sidecar.http.get(
            sidecar.proxy_url + "/", params=params, allow_redirects=False
        ) as r:
            if (
                r.headers.get("Cache-Control") != "no-store"
                or r.headers.get("Referrer-Policy") != "no-referrer"
            ):
                bad.append((r.status, dict(r.headers)))
    casebook.record("secrets", tried=4, through=len(bad))
    assert not bad, bad


async def test_the_session_cookie_is_httponly_lax_and_secure_by_default(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, overrides={"session": {"cookie_secure": True}}) as sc:
        link = await sc.mint()
        async with sc.http.get(
            sc.proxy_url + "/", params={"refer": link["referString"]}, allow_redirects=False
        ) as r:
            header = r.headers["Set-Cookie"]
    flags = {part.strip().split("=")[0].lower(): part for part in header.split(";")}
    ok = (
        "httponly" in flags
        and "secure" in flags
        and flags.get("samesite", "").lower().endswith("lax")
    )
    casebook.record("secrets", through=int(not ok))
    assert ok, header
    assert flags.get("path", "").strip().lower() == "path=/"
