"""The ``sidecar`` command, black-box: real subprocesses (``python -m sidecar``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.admin.api import build_admin_app
from sidecar.cli import COMMANDS, build_parser
from sidecar.cli.base import _resolve
from sidecar.services import Services
from sidecar.store import open_store
from sidecar.tokens.codec import TokenCodec
from sidecar.tokens.keys import parse_keyset
from tests.test_config import ADMIN_KEY, build_config, config_doc, write_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "SIDECAR_ADMIN_KEY": ADMIN_KEY}


def sidecar(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=cwd,
        env=ENV if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def sidecar_async(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """For commands that talk to a server running in this test's event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        cwd=cwd,
        env=ENV if env is None else env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- keygen ------------------------------------------------------------------------------


def test_keygen_creates_then_extends_a_private_keyset(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    first = sidecar("keygen", "keyset.json", "--kid", "k-one", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created key k-one" in first.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyset = parse_keyset(path.read_text())
    assert keyset.active_kid == "k-one"
    key_one = keyset.keys["k-one"]
    assert key_one.hex() not in first.stdout + first.stderr

    second = sidecar("keygen", "keyset.json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "2 key(s)" in second.stdout
    rotated = parse_keyset(path.read_text())
    assert rotated.active_kid != "k-one"
    assert rotated.keys["k-one"] == key_one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyset.json"]  # no temp file left


def test_keygen_never_overwrites_another_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n")
    result = sidecar("keygen", "notes.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert "exists and is not a keyset" in result.stderr
    assert path.read_text() == "my precious notes\n"


def test_keygen_print(tmp_path: Path) -> None:
    result = sidecar("keygen", "--print", cwd=tmp_path)
    assert result.returncode == 0
    assert len(parse_keyset(result.stdout).keys) == 1
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "ks.json").write_text(result.stdout)
    extended = sidecar("keygen", "ks.json", "--print", cwd=tmp_path)
    assert len(parse_keyset(extended.stdout).keys) == 2
    assert len(parse_keyset((tmp_path / "ks.json").read_text()).keys) == 1  # untouched


def test_keygen_needs_a_file_or_print(tmp_path: Path) -> None:
    result = sidecar("keygen", cwd=tmp_path)
    assert result.returncode == 1
    assert "--print" in result.stderr


def test_keygen_admin_key(tmp_path: Path) -> None:
    result = sidecar("keygen", "--admin-key", cwd=tmp_path)
    assert result.returncode == 0
    assert len(result.stdout.strip()) >= 32


# -- check-config ------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    # A password is never in the YAML; a URL holding one comes from the environment.
    write_config(tmp_path, config_doc())
    env = {**ENV, "SIDECAR_STORE__URL": "redis://:hunter2secret@redis:6379/0"}
    result = sidecar("check-config", "sidecar.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("sidecar.yaml: OK")
    assert "127.0.0.1:9091" in out
    assert "-> http://127.0.0.1:3000" in out
    assert "roles       Admin, Authenticated (default)" in out  # YAML order (sorted by dump)
    assert "keys        1 (active k-" in out
    assert "redis://:****@redis:6379/0" in out
    assert "hunter2secret" not in out
    assert ADMIN_KEY not in out


def test_check_config_lists_every_error(tmp_path: Path) -> None:
    roles = config_doc()["roles"]
    assert isinstance(roles, dict)
    roles["Admin"]["max_expiry"] = "40d"
    doc = config_doc(
        roles=roles,
        admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "listen": "0.0.0.0:9091"},
        proxy={"upstream": "nope"},
        tokens={"default_expiry": "soon"},
    )
    write_config(tmp_path, doc)
    result = sidecar("check-config", "sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "sidecar.yaml: 4 error(s)"
    assert sorted(line.split(":")[0] for line in lines[1:]) == [
        "admin.listen",
        "proxy.upstream",
        "roles.Admin.max_expiry",
        "tokens.default_expiry",
    ]
    assert "roles.Admin.max_expiry: got '40d', at most 30d" in lines


def test_check_config_missing_env_secret(tmp_path: Path) -> None:
    write_config(tmp_path)
    env = {k: v for k, v in ENV.items() if k != "SIDECAR_ADMIN_KEY"}
    result = sidecar("check-config", "sidecar.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "admin.key.env: environment variable SIDECAR_ADMIN_KEY is not set" in result.stderr


def test_the_repo_example_passes_check_config(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "sidecar.yaml").write_text((ROOT / "config" / "sidecar.yaml").read_text())
    assert sidecar("keygen", "config/keyset.json", cwd=tmp_path).returncode == 0
    result = sidecar("check-config", "config/sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# -- mint --------------------------------------------------------------------------------


@pytest.fixture
async def admin_url(tmp_path: Path) -> AsyncIterator[str]:
    cfg = build_config(tmp_path)
    store = open_store("sqlite:///" + str(tmp_path / "store.db"))
    await store.open()
    services = Services(config=cfg, store=store, codec=TokenCodec(cfg.keyset))
    server = TestServer(build_admin_app(services), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await store.close()


async def test_mint_prints_the_link(admin_url: str, tmp_path: Path) -> None:
    code, out, err = await sidecar_async(
        "mint",
        "--admin-url",
        admin_url,
        "--user",
        "0000000abc",
        "--expire",
        "2h",
        "--module",
        "5e9f83275349fc020f8db299",
        "--param",
        "tenant=acme",
        "--reusable",
        cwd=tmp_path,
    )
    assert code == 0, err
    url = out.strip()
    assert url.startswith("https://app.example.test/?refer=")
    assert url.endswith("/#/display/5e9f83275349fc020f8db299")
    token = url.split("?refer=")[1].split("/#")[0]
    cfg = build_config(tmp_path)
    claims = TokenCodec(cfg.keyset).open(token, time.time())
    assert claims.subject == "0000000abc"
    assert claims.one_time is False
    assert dict(claims.params) == {"tenant": "acme"}
    assert claims.expires_at - claims.issued_at == 7200


async def test_mint_reads_the_key_from_a_file_or_a_config(admin_url: str, tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text(ADMIN_KEY)
    env = {k: v for k, v in ENV.items() if k != "SIDECAR_ADMIN_KEY"}
    code, out, err = await sidecar_async(
        "mint",
        "--admin-url",
        admin_url,
        "--admin-key-file",
        "admin.key",
        "--user",
        "u",
        "--role",
        "Admin",
        "--one-time",
        cwd=tmp_path,
        env=env,
    )
    assert code == 0, err
    assert "?refer=" in out

    other = tmp_path / "other"
    other.mkdir()
    (other / "admin.key").write_text(ADMIN_KEY)
    write_config(other, config_doc(admin={"key": {"file": "admin.key"}}))
    code, out, err = await sidecar_async(
        "mint",
        "--config",
        "other/sidecar.yaml",
        "--admin-url",
        admin_url,
        "--user",
        "u",
        cwd=tmp_path,
        env=env,
    )
    assert code == 0, err
    assert "?refer=" in out


async def test_mint_errors_go_to_stderr(admin_url: str, tmp_path: Path) -> None:
    code, out, err = await sidecar_async(
        "mint", "--admin-url", admin_url, "--user", "u", "--expire", "40d", cwd=tmp_path
    )
    assert code == 1
    assert out == ""
    assert "400: expireOffset: 40 days is too long" in err

    (tmp_path / "wrong.key").write_text("not-the-admin-key")
    code, _, err = await sidecar_async(
        "mint",
        "--admin-url",
        admin_url,
        "--admin-key-file",
        "wrong.key",
        "--user",
        "u",
        cwd=tmp_path,
    )
    assert code == 1
    assert "403: wrong admin key" in err


def test_mint_without_a_server(tmp_path: Path) -> None:
    result = sidecar("mint", "--admin-url", "http://127.0.0.1:9", "--user", "u", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the admin port" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expire", "2 weeks", "--user", "u"], "--expire: expected a lifetime"),
        (["--param", "novalue", "--user", "u"], "--param: expected NAME=VALUE"),
        ([], "--user is required"),
        (["--type", "magiclink"], "--email is required"),
        (["--user", "u", "--admin-url", "ftp://x"], "--admin-url: expected an http(s) URL"),
    ],
)
def test_mint_argument_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = sidecar("mint", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


def test_mint_needs_an_admin_key(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "SIDECAR_ADMIN_KEY"}
    result = sidecar("mint", "--user", "u", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "no admin key: set SIDECAR_ADMIN_KEY" in result.stderr


def test_commands_are_a_table() -> None:
    assert [c.name for c in COMMANDS] == [
        "init",
        "serve",
        "keygen",
        "keys",
        "check-config",
        "mint",
        "revoke",
        "sessions",
        "demo",
    ]
    args = build_parser().parse_args(["mint", "--type", "recovery", "--email", "a@b.test"])
    assert args.type == "recovery"
    assert args.chosen.name == "mint"
    for command in COMMANDS:  # every row names functions that exist (they load lazily)
        assert callable(_resolve(command.configure)), command.configure
        assert callable(_resolve(command.run)), command.run
    only = build_parser("keys").parse_args(["keys", "k.json"])
    assert only.chosen.name == "keys"
    with pytest.raises(SystemExit):  # the other commands are listed, not built
        build_parser("keys").parse_args(["mint", "--type", "recovery"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mint", "--type", "bogus"])


def test_serve_with_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"public_url": "nope"}))
    result = sidecar("serve", "--config", "c.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "public_url: got 'nope'" in result.stderr


# -- serve -------------------------------------------------------------------------------


async def _read_listening(stream: asyncio.StreamReader, names: set[str]) -> dict[str, str]:
    """Read JSON log lines until every listener in ``names`` announced its address."""
    found: dict[str, str] = {}
    while set(found) != names:
        line = await asyncio.wait_for(stream.readline(), timeout=30)
        assert line, f"sidecar exited before listening; got {found}"
        msg = str(json.loads(line).get("msg", ""))
        if msg.startswith("listening: "):
            name, _, address = msg.removeprefix("listening: ").partition(" on ")
            found[name] = address
    return found


async def test_serve_mints_proxies_and_shuts_down_gracefully(tmp_path: Path) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    upstream_app = web.Application()
    upstream_app.router.add_get("/slow", slow)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    doc = config_doc(
        proxy={
            "listen": "127.0.0.1:0",
            "upstream": str(upstream.make_url("")).rstrip("/"),
            "unauthenticated": "pass",
            "max_header_size": "1KiB",
            "allowed_hosts": ["127.0.0.1"],
        },
        admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "listen": "127.0.0.1:0"},
        store={"url": "sqlite:///" + str(tmp_path / "store.db")},
        shutdown={"grace_period": "20s"},
    )
    write_config(tmp_path, doc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "--config",
        "sidecar.yaml",
        cwd=tmp_path,
        env=ENV,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        urls = await _read_listening(proc.stderr, {"admin", "proxy"})
        async with aiohttp.ClientSession() as client:
            async with client.post(
                urls["admin"] + "/referstring",
                json={"userId": "u1"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as response:
                assert response.status == 200
                token = (await response.json())["referString"]
            async with client.get(
                urls["proxy"] + f"/?refer={token}/", allow_redirects=False
            ) as response:
                assert response.status == 303
            big = {"X-Big": "x" * 2048}
            async with client.get(urls["proxy"] + "/slow", headers=big) as response:
                assert 400 <= response.status < 500  # proxy.max_header_size: 1KiB
            in_flight = asyncio.ensure_future(client.get(urls["proxy"] + "/slow"))
            await asyncio.wait_for(arrived.wait(), timeout=30)
            proc.send_signal(signal.SIGTERM)
            rest = asyncio.ensure_future(proc.stderr.read())
            release.set()
            async with await in_flight as response:
                assert response.status == 200
                assert await response.text() == "finished"
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        log = (await rest).decode()
        assert '"msg": "stopped"' in log
        assert token not in log
        assert "aiohttp.access" not in log  # its line carries the query string
        assert "custom kwargs" not in log  # aiohttp ignored our handler settings
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await upstream.close()


def test_serve_refuses_an_exposed_admin_port(tmp_path: Path) -> None:
    doc = config_doc(
        admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "listen": "0.0.0.0:0"},
        store={"url": "sqlite:///" + str(tmp_path / "store.db")},
    )
    write_config(tmp_path, doc)
    result = sidecar("serve", "--config", "sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "admin.listen: got 0.0.0.0:0, which is not a loopback address" in result.stderr


async def test_mint_an_auth_link(admin_url: str, tmp_path: Path) -> None:
    code, out, err = await sidecar_async(
        "mint",
        "--admin-url",
        admin_url,
        "--type",
        "signup",
        "--email",
        "new@example.test",
        "--password",
        "correct horse battery",
        "--redirect-to",
        "https://app.example.test/x",
        cwd=tmp_path,
    )
    assert code == 0, err
    link, otp = out.splitlines()
    assert link.startswith("https://app.example.test/_sidecar/verify?token=")
    assert "type=signup" in link
    assert otp.startswith("email_otp: ")
    assert otp.removeprefix("email_otp: ").isdigit()

    code, _, err = await sidecar_async(
        "mint",
        "--admin-url",
        admin_url,
        "--type",
        "magiclink",
        "--email",
        "not-an-email",
        cwd=tmp_path,
    )
    assert code == 1
    assert err.startswith("sidecar mint: 400: ")
    assert "email" in err.lower()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("sqlite:////tmp/sidecar.db", "/tmp/sidecar.db is in a temporary directory"),
        ("sqlite:////dev/shm/sidecar.db", "/dev/shm/sidecar.db is in a temporary directory"),
        ("sqlite:////nonexistent-dir/sidecar.db", "the directory /nonexistent-dir does not exist"),
    ],
)
def test_check_config_warns_about_a_store_that_cannot_outlive_the_process(
    tmp_path: Path, url: str, needle: str
) -> None:
    write_config(tmp_path, config_doc(store={"url": url}))
    result = sidecar("check-config", "sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert f"sidecar.yaml: warning: store.url: {needle}" in result.stderr


def test_check_config_is_quiet_about_a_durable_store(tmp_path: Path) -> None:
    # tmp_path itself is under /tmp, which is exactly what the warning is about.
    with tempfile.TemporaryDirectory(dir=Path.home()) as durable:
        url = f"sqlite:///{durable}/sidecar.db"
        write_config(tmp_path, config_doc(store={"url": url}))
        result = sidecar("check-config", "sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_revoke_takes_an_id_that_begins_with_a_dash_after_the_double_dash() -> None:
    """Ids minted before they stopped beginning with ``-`` are still revocable, as the
    command's help says: after ``--``."""
    args = build_parser().parse_args(["revoke", "--config", "c.yaml", "--", "-S1ecx07_SoTrMw"])
    assert args.token_id == "-S1ecx07_SoTrMw"
    assert args.config == "c.yaml"
