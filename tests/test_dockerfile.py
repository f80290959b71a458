"""The Dockerfile and .dockerignore, checked statically (no Docker engine is needed).

This does not build the image. It parses the Dockerfile into stages and checks what the
issue asks of it (slim base, multi-stage, non-root user, no compilers in the final stage,
HEALTHCHECK, ``sidecar serve`` entrypoint), runs the HEALTHCHECK command itself against a
real server, runs a real ``sidecar serve`` in the runtime stage's environment (``python
-OO``), and applies the .dockerignore rules to the tree the way the Docker CLI does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.harness import running_upstream
from tests.serve_process import running_serve

ROOT = Path(__file__).resolve().parent.parent
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "python3-dev", "libffi-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(OPCODE, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    result = []
    for line in logical:
        op, _, args = line.partition(" ")
        result.append((op.upper(), args.strip()))
    return result


def _parse() -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for op, rest in _instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert op == "ARG", f"only ARG may precede the first FROM, got {op}"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected the JSON exec form, got {args}"
    return [str(v) for v in value]


def test_multi_stage_on_a_slim_python_base() -> None:
    args, stages = _parse()
    assert len(stages) >= 2
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage.base)
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    final = stages[-1]
    assert any(f"--from={stages[0].name}" in c for c in final.all("COPY"))


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    _, stages = _parse()
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert int(uid) > 0
    assert gid == "" or (gid.isdigit() and int(gid) > 0)
    workloads = (ROOT / "deploy/kubernetes/sqlite/statefulset.yaml").read_text(encoding="utf-8")
    assert f"runAsUser: {uid}" in workloads


def test_no_compilers_in_the_final_stage() -> None:
    _, stages = _parse()
    build, final = stages[0], stages[-1]
    assert any("build-essential" in r for r in build.all("RUN")), "the build stage compiles"
    for command in final.all("RUN"):
        words = set(shlex.split(command.replace("\\", " ")))
        assert not words & set(COMPILERS), command
        assert "apt-get" not in words or "install" not in words, command
        assert "pip" not in words, "the final stage only copies the finished venv"


def test_healthcheck_entrypoint_and_cmd() -> None:
    _, stages = _parse()
    final = stages[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "--interval=" in healthcheck
    assert "--timeout=" in healthcheck
    env = " ".join(final.all("ENV"))
    assert "SIDECAR_HEALTHCHECK_URL=http://127.0.0.1:8080/_sidecar/healthz" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only in Kubernetes"
    # One malloc arena shared by the threads (SQLite, executor, libuv) instead of one each.
    assert "MALLOC_ARENA_MAX=2" in env
    assert _exec_form(final.all("ENTRYPOINT")[-1]) == ["sidecar", "serve"]
    assert _exec_form(final.all("CMD")[-1]) == ["--config", "/etc/sidecar/sidecar.yaml"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert scripts["sidecar"] == "sidecar.cli:main"


def _healthcheck_argv() -> list[str]:
    _, stages = _parse()
    (healthcheck,) = stages[-1].all("HEALTHCHECK")
    argv = _exec_form(healthcheck.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"]
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
async def test_healthcheck_command_against_a_real_server(
    aiohttp_server: AiohttpServer, status: int, healthy: bool
) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_get("/_sidecar/healthz", healthz)
    server = await aiohttp_server(app, host="127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        *_healthcheck_argv(),
        env={"SIDECAR_HEALTHCHECK_URL": str(server.make_url("/_sidecar/healthz"))},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert (await asyncio.wait_for(proc.wait(), 30) == 0) is healthy


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def test_dockerignore_sends_what_copy_needs_and_no_secrets() -> None:
    rules = _dockerignore()
    _, stages = _parse()
    sources = [
        src
        for stage in stages
        for copy in stage.all("COPY")
        if not copy.startswith("--from")
        for src in copy.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _ignored(src, rules), f"{src} is COPY'd but .dockerignore drops it"
    assert not _ignored("sidecar/demo_app/index.html", rules)
    for secret_or_junk in (
        ".git/config",
        ".venv/bin/python",
        "config/keyset.json",
        "keyset.json",
        "sidecar/__pycache__/app.cpython-311.pyc",
        "sidecar/web/lean.cpython-311-x86_64-linux-gnu.so",  # scripts/compile's, in place
        "sidecar.db",
        "sidecar.db-wal",
        "tests/test_app.py",
        "admin.key",
        "artifacts/browser/demo.png",
    ):
        assert _ignored(secret_or_junk, rules), secret_or_junk


def test_the_build_stage_compiles_the_hot_path_and_checks_it() -> None:
    """``SIDECAR_COMPILE=1`` unless the build says otherwise: the hot path compiled with
    mypyc (sidecar/compiled.py) from the files setup.py needs, and the build fails unless
    the installed package (not /src) runs it compiled."""
    _, stages = _parse()
    build = stages[0]
    assert "SIDECAR_COMPILE=1" in build.all("ARG")
    copied = {src for copy in build.all("COPY") for src in copy.split()[:-1]}
    assert {"pyproject.toml", "setup.py", "build_support", "sidecar"} <= copied
    install = next(run for run in build.all("RUN") if "pip install" in run)
    assert "cd / && python -P -c" in install
    assert "compiled.state()" in install
    assert '"mypyc"' in install


def _runtime_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` settings, but ``PATH`` and the healthcheck's URL."""
    _, stages = _parse()
    settings = {}
    for env in stages[-1].all("ENV"):
        for word in shlex.split(env):
            name, sep, value = word.partition("=")
            if sep and name not in ("PATH", "SIDECAR_HEALTHCHECK_URL"):
                settings[name] = value
    return settings


def test_the_bench_runs_the_sidecar_in_the_images_environment() -> None:
    """scripts/bench measures the sidecar as the image runs it: its runtime settings are
    bench.procs.IMAGE_RUNTIME_ENV (but PYTHONDONTWRITEBYTECODE: the image's bytecode was
    compiled in its build stage, the bench's first start writes it)."""
    from bench.procs import IMAGE_RUNTIME_ENV

    settings = _runtime_env()
    del settings["PYTHONDONTWRITEBYTECODE"]
    assert settings == IMAGE_RUNTIME_ENV


def test_the_image_runs_without_docstrings_and_has_their_bytecode() -> None:
    """``PYTHONOPTIMIZE=2`` (``python -OO``): the docstrings of every module loaded (~1.2
    MiB, most of them the standard library's) are not kept in the process. The venv's
    bytecode is compiled for that level too (``-o 2``), and for the default (``-o 0``):
    without it, every start on the read-only root filesystem would compile the sources."""
    _, stages = _parse()
    assert _runtime_env()["PYTHONOPTIMIZE"] == "2"
    (compiling,) = [run for run in stages[0].all("RUN") if "compileall" in run]
    words = shlex.split(compiling.split("python -m compileall", 1)[1])
    levels = {words[i + 1] for i, word in enumerate(words[:-1]) if word == "-o"}
    assert levels == {"0", "2"}
    assert "/opt/venv/lib" in words


def test_the_runtime_stage_gives_the_standard_library_its_bytecode(tmp_path: Path) -> None:
    """The official python images delete every ``.pyc``; with ``PYTHONDONTWRITEBYTECODE``
    on a read-only root, each start would compile the standard library modules it imports
    (0.34 s of CPU a start). The runtime stage's ``compileall`` is run as written (into a
    ``PYTHONPYCACHEPREFIX``, not over this machine's standard library), then a process in
    the runtime environment imports what ``sidecar serve`` and the HEALTHCHECK import:
    ``python -v`` names each module it compiles from source, and none may be the standard
    library's."""
    _, stages = _parse()
    (compiling,) = [run for run in stages[-1].all("RUN") if "compileall" in run]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    cache = tmp_path / "pycache"
    env = {
        **os.environ,
        **_runtime_env(),
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPYCACHEPREFIX": str(cache),
    }
    subprocess.run(["sh", "-c", compiling], env=env, check=True, timeout=300)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    imports = "import sidecar.app, sidecar.cli, sidecar.workers, urllib.request"
    run = subprocess.run(
        [sys.executable, "-v", "-c", imports], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    stdlib = sysconfig.get_path("stdlib")
    from_source = re.findall(r"^# code object from '?(.+?\.py)'?$", run.stderr, re.MULTILINE)
    from_bytecode = re.findall(r"^# code object from '?(.+?\.pyc)'?$", run.stderr, re.MULTILINE)
    assert [p for p in from_bytecode if p.startswith(str(cache))], "nothing read from the cache"
    compiled_at_start = [
        p for p in from_source if p.startswith(stdlib) and "site-packages" not in p
    ]
    assert compiled_at_start == []


async def test_a_real_serve_in_the_runtime_environment(tmp_path: Path) -> None:
    """The runtime stage's environment (no docstrings, no assert statements; the threads'
    shared malloc arena) on a real ``sidecar serve``: a mint, its redemption, a proxied
    request, an auth link generated and followed, the OpenAPI document; and the CLI's help.
    """
    env = {**os.environ, **_runtime_env()}
    assert env["PYTHONOPTIMIZE"] == "2"
    help_text = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", "--help", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(help_text.communicate(), 30)
    assert help_text.returncode == 0
    assert b"--workers" in out
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, env=env) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            served.admin + "/referstring",
            json={"userId": "alice", "oneTimeUse": True},
            headers=served.admin_headers(),
        ) as minted:
            assert minted.status == 200, await minted.text()
            link = (await minted.json())["referString"]
        async with http.get(f"{served.proxy}/?refer={link}", allow_redirects=False) as redeemed:
            assert redeemed.status == 303
            cookie = redeemed.cookies["sidecar_session"].value
        async with http.get(
            served.proxy + "/api/items", headers={"Cookie": f"sidecar_session={cookie}"}
        ) as proxied:
            assert proxied.status == 200
        assert upstream.last.raw_path == "/api/items"
        assert upstream.last.values("X-Forwarded-User") == ["alice"]
        async with http.get(f"{served.proxy}/?refer={link}", allow_redirects=False) as again:
            assert again.status != 303  # burned: a one-time link redeems once
        async with http.post(
            served.admin + "/admin/generate_link",
            json={"type": "magiclink", "email": "oo@example.com"},
            headers=served.admin_headers(),
        ) as generated:
            assert generated.status == 200, await generated.text()
            action = (await generated.json())["action_link"]
        async with http.get(action, allow_redirects=False) as followed:
            assert followed.status == 303, await followed.text()
        async with http.get(served.admin + "/openapi.json", headers=served.admin_headers()) as api:
            assert api.status == 200
            assert (await api.json())["openapi"].startswith("3.1")
