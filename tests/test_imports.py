"""What a serving process loads: no more than its config needs.

Every module a process imports is memory it holds until it exits (code objects, module
state, shared libraries). A real ``python -m sidecar serve`` runs here with
``PYTHONPROFILEIMPORTTIME=1``: the interpreter then writes one ``import time:`` line to
stderr (the serve log) for each module at the moment it is imported, lazily or not, so the
log holds exactly what the process loaded until it exited.

* On SQLite, after start, a mint, a redemption and a proxied request: no redis-py, no Public
  Suffix List (only a wildcard in ``links.redirect_allow`` needs it), no OpenAPI document
  builder and no ``importlib.metadata`` (only ``GET /openapi.json`` needs them), and none
  of the other subcommands' modules (``sidecar demo``, ``mint``, ``keygen``, ``init``,
  ``check-config``).
* No auth-link handler either (``sidecar.links.http`` and the modules only it uses:
  generate, verify, request, passwords, with cryptography's scrypt and HKDF): their routes
  are there (:mod:`sidecar.links.edge`), their modules load at the first request to one.
* frozenlist without its C++ extension, which would map libstdc++ (~1 MiB): ``sidecar
  serve`` sets ``FROZENLIST_NO_EXTENSIONS`` before aiohttp is imported.
* The controls show the probe sees each of them when they are needed, and that the lazy
  Public Suffix List still judges the allow-list at start (a bad wildcard is a start-up
  error, not a first-request one).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.harness import running_upstream
from tests.serve_process import ROOT, START_TIMEOUT, running_serve, write_config

COOKIE = "sidecar_session"
IMPORT_LOG = {"PYTHONPROFILEIMPORTTIME": "1"}
# Loaded only when needed. What each costs a serving process (VmRSS, measured): redis-py
# ~19 MiB on its own; importlib.metadata with zipfile/csv/importlib.resources ~1.3 MiB and
# the OpenAPI builder ~0.1-0.4 MiB more; the Public Suffix List ~0.5 MiB + ~2 MiB parsed.
NOT_ON_SQLITE = ("redis", "publicsuffixlist", "importlib.metadata", "sidecar.admin.openapi")
# The auth links' handlers and what only they use (~0.3 MiB of module objects): imported at
# the first POST /admin/generate_link or <prefix>/verify (sidecar.links.edge).
AUTH_LINK_MODULES = (
    "sidecar.links.http",
    "sidecar.links.generate",
    "sidecar.links.verify",
    "sidecar.links.request",
    "sidecar.links.passwords",
    "cryptography.hazmat.primitives.kdf",
)
# The other subcommands (~0.8 MiB of a serving process, measured, with their parsers).
OTHER_COMMANDS = (
    "sidecar.demo",
    "sidecar.cli.admin",
    "sidecar.cli.keys",
    "sidecar.cli.starter",
    "sidecar.cli.check",
)


def imported(log: str) -> set[str]:
    """Module names from the ``import time:`` lines of a ``-X importtime`` log."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def loaded(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def _env() -> dict[str, str]:
    return {**os.environ, **IMPORT_LOG}


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(START_TIMEOUT):
        assert await proc.wait() == 0


async def test_sqlite_serve_loads_no_redis_psl_or_metadata(tmp_path: Path) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=_env()) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            served.admin + "/referstring",
            json={"userId": "alice", "oneTimeUse": True},
            headers=served.admin_headers(),
        ) as minted:
            assert minted.status == 200
            link = (await minted.json())["referString"]
        async with http.get(f"{served.proxy}/?refer={link}", allow_redirects=False) as redeemed:
            assert redeemed.status == 303
            cookie = redeemed.cookies[COOKIE].value
        async with http.get(
            served.proxy + "/api/items", headers={"Cookie": f"{COOKIE}={cookie}"}
        ) as proxied:
            assert proxied.status == 200
        await _stop(served.proc)
        names = imported(served.log_path.read_text(encoding="utf-8"))
    # The log is read right: the serving stack is in it.
    assert {"sidecar.proxy.gateway", "sidecar.store.sqlite", "aiosqlite"} <= names
    found = {package: modules for package in NOT_ON_SQLITE if (modules := loaded(names, package))}
    assert found == {}, "a SQLite sidecar imported these"
    assert sorted(names.intersection(OTHER_COMMANDS)) == [], "serve imported other commands"
    links = {
        package: modules for package in AUTH_LINK_MODULES if (modules := loaded(names, package))
    }
    assert links == {}, "no auth link was asked for, yet these were imported"
    assert "sidecar.links.edge" in names  # their routes were registered
    # frozenlist's pure-Python class: its C++ extension would map libstdc++ (~1 MiB).
    assert "frozenlist" in names
    assert "frozenlist._frozenlist" not in names


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["keys", "--help"], "sidecar.cli.keys"),
        (["mint", "--help"], "sidecar.cli.admin"),
        (["demo", "--help"], "sidecar.demo"),
    ],
)
def test_a_command_loads_its_own_module_only(argv: list[str], module: str) -> None:
    """The control for the subcommands: the probe sees a command's module when that
    command runs, and not the others'."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", *argv],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: sidecar " + argv[0] in result.stdout
    names = imported(result.stderr)
    assert sorted(names.intersection(OTHER_COMMANDS)) == [module]


async def test_a_wildcard_allow_list_loads_the_psl_at_start(tmp_path: Path) -> None:
    """The control for the PSL: a wildcard pattern needs it, and it is judged at start."""
    links = {"create_user_on_magiclink": True, "redirect_allow": ["https://*.example.com/**"]}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=_env(), links=links) as served,
    ):
        await _stop(served.proc)
        names = imported(served.log_path.read_text(encoding="utf-8"))
    assert "publicsuffixlist" in names
    assert loaded(names, "redis") == []


def test_a_wildcard_over_a_public_suffix_still_fails_the_start(tmp_path: Path) -> None:
    """github.io is a public suffix only by the list's private section: refusing the
    pattern takes the list, and the refusal comes at start, naming the key."""
    links = {"redirect_allow": ["https://*.github.io/**"]}
    config, *_ = write_config(tmp_path, "http://127.0.0.1:9", links=links)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 1
    assert "links.redirect_allow[0]" in result.stderr
    assert "Public Suffix List" in result.stderr
    assert "publicsuffixlist" in imported(result.stderr)


async def test_the_openapi_document_is_loaded_by_its_request(tmp_path: Path) -> None:
    """The control for the lazy document: the route answers, and only then is it loaded."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=_env()) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(
            served.admin + "/openapi.json", headers=served.admin_headers()
        ) as answer:
            assert answer.status == 200
            doc = await answer.json()
        await _stop(served.proc)
        names = imported(served.log_path.read_text(encoding="utf-8"))
    assert doc["openapi"] == "3.1.0"
    assert "/referstring" in doc["paths"]
    assert {"sidecar.admin.openapi", "importlib.metadata"} <= names


async def test_the_auth_links_are_loaded_by_their_first_request(tmp_path: Path) -> None:
    """The control for the lazy links: a link is generated and followed as on any process,
    and only then are the links' modules loaded."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=_env()) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            served.admin + "/admin/generate_link",
            json={"type": "magiclink", "email": "lazy@example.com"},
            headers=served.admin_headers(),
        ) as generated:
            assert generated.status == 200, await generated.text()
            doc = await generated.json()
        assert doc["action_link"].startswith(served.proxy + "/_sidecar/verify?token=")
        async with http.get(doc["action_link"], allow_redirects=False) as followed:
            assert followed.status == 303, await followed.text()
            assert COOKIE in followed.cookies
        await _stop(served.proc)
        names = imported(served.log_path.read_text(encoding="utf-8"))
    assert all(loaded(names, package) for package in AUTH_LINK_MODULES)


@pytest.mark.redis
async def test_a_redis_store_loads_redis_py(tmp_path: Path, redis_url: str) -> None:
    """The control for redis: the probe sees redis-py when the store is Redis."""
    store = {"url": redis_url, "key_prefix": f"imports-{tmp_path.name}:"}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=_env(), store=store) as served,
    ):
        await _stop(served.proc)
        names = imported(served.log_path.read_text(encoding="utf-8"))
    assert "redis" in names


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("import time:       111 |        111 |   redis.client", "redis.client"),
        ("import time: self [us] | cumulative | imported package", None),
        ('{"msg": "import time: 3 | 4 | not a module line"}', None),
    ],
)
def test_import_lines_are_parsed(line: str, name: str | None) -> None:
    assert imported(line) == ({name} if name else set())
