"""The operator's commands, black-box: init, keygen's rotation steps, keys, revoke,
sessions end, mint --json, --version, check-config --offline and its sources, and the
README quick start end to end with real processes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar import __version__, compiled
from sidecar.cli import build_parser
from sidecar.cli.admin import refer_body
from sidecar.cli.keys import _retire_warning
from sidecar.tokens.keys import generate_keyset, parse_keyset
from tests.harness import Upstream, free_port, running_upstream

ROOT = Path(__file__).resolve().parent.parent
# No SIDECAR_ADMIN_KEY: every admin command must find the key through --config.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")},
    "PYTHONPATH": str(ROOT),
}


def sidecar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def sidecar_async(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """For commands talking to a server whose upstream runs in this test's event loop."""
    return await asyncio.to_thread(sidecar, *args, cwd=cwd)


def test_version(tmp_path: Path) -> None:
    result = sidecar("--version", cwd=tmp_path)
    assert result.returncode == 0
    build = compiled.state().describe()  # tests/test_compiled.py: the build itself
    assert result.stdout.strip() == f"sidecar {__version__}; hot path {build}"


def _every_action(
    parser: argparse.ArgumentParser, name: str = "sidecar"
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found.extend(_every_action(sub, f"{name} {sub_name}"))
        else:
            found.append((name, action))
    return found


def test_every_flag_has_help() -> None:
    actions = _every_action(build_parser())
    assert len(actions) > 60
    missing = [
        f"{cmd} {'/'.join(a.option_strings) or a.dest}"
        for cmd, a in actions
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("expire", "measure", "offset"),
    [("1w", "days", 7), ("1h30m", "minutes", 90), ("90s", "seconds", 90), ("2d", "days", 2)],
)
def test_mint_expire_accepts_weeks_and_compounds(expire: str, measure: str, offset: int) -> None:
    args = build_parser().parse_args(["mint", "--user", "u", "--expire", expire])
    body = refer_body(args)
    assert (body["expireMeasure"], body["expireOffset"]) == (measure, offset)


@pytest.mark.parametrize(
    ("expire", "message"), [("1y", "expected a lifetime"), ("1s500ms", "whole")]
)
def test_mint_expire_errors(tmp_path: Path, expire: str, message: str) -> None:
    result = sidecar("mint", "--user", "u", "--expire", expire, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


# -- keygen's rotation steps and keys --------------------------------------------------


def test_keygen_stage_activate_retire_and_keys(tmp_path: Path) -> None:
    assert sidecar("keygen", "ks.json", "--kid", "k-one", cwd=tmp_path).returncode == 0
    refused = sidecar("keygen", "missing.json", "--staged", cwd=tmp_path)
    assert refused.returncode == 1
    assert "create it first" in refused.stderr

    staged = sidecar("keygen", "ks.json", "--staged", "--kid", "k-two", cwd=tmp_path)
    assert staged.stdout.strip() == "ks.json: added key k-two (staged); 2 key(s) in the set"
    assert parse_keyset((tmp_path / "ks.json").read_text()).active_kid == "k-one"
    listing = sidecar("keys", "ks.json", cwd=tmp_path).stdout.splitlines()
    assert listing[0].split() == ["KID", "STATE", "CREATED", "ACTIVE", "UNTIL"]
    assert [line.split()[:2] for line in listing[1:]] == [["k-two", "staged"], ["k-one", "active"]]

    never_used = sidecar("keygen", "ks.json", "--retire", "k-two", cwd=tmp_path)
    assert never_used.returncode == 0
    assert never_used.stderr == ""  # a staged key sealed nothing: no warning
    sidecar("keygen", "ks.json", "--staged", "--kid", "k-two", cwd=tmp_path)

    activated = sidecar("keygen", "ks.json", "--activate", "k-two", cwd=tmp_path)
    assert "activated k-two (k-one still opens its links)" in activated.stdout
    rows = {
        line.split()[0]: line.split()
        for line in sidecar("keys", "ks.json", cwd=tmp_path).stdout.splitlines()[1:]
    }
    assert rows["k-one"][1] == "previous"
    assert rows["k-one"][3].endswith("Z")  # active until

    active = sidecar("keygen", "ks.json", "--retire", "k-two", cwd=tmp_path)
    assert active.returncode == 1
    assert "is the active key; activate another one first" in active.stderr
    unknown = sidecar("keygen", "ks.json", "--activate", "k-nine", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "'k-nine' is not in the keyset" in unknown.stderr

    retired = sidecar("keygen", "ks.json", "--retire", "k-one", cwd=tmp_path)
    assert retired.returncode == 0
    assert "warning: links sealed with k-one (active until " in retired.stderr
    assert "may be valid until" in retired.stderr
    assert list(parse_keyset((tmp_path / "ks.json").read_text()).keys) == ["k-two"]
    assert stat.S_IMODE((tmp_path / "ks.json").stat().st_mode) == 0o600


def test_the_retire_warning_ends_with_the_longest_link() -> None:
    keyset = generate_keyset("one", now=1000).with_new_key("two", now=2000)  # one: until 2000
    assert _retire_warning(keyset, "one", 3600, now=2000 + 3599) is not None
    assert _retire_warning(keyset, "one", 3600, now=2000 + 3600) is None
    staged = keyset.with_new_key("three", activate=False)
    assert _retire_warning(staged, "three", 3600, now=0) is None  # sealed nothing
    doc = json.loads(keyset.to_json())
    for jwk in doc["keys"]:  # a file from before key records
        del jwk["created"]
        jwk.pop("deactivated", None)
    bare = parse_keyset(json.dumps(doc))
    assert "no record of when it stopped being active" in (
        _retire_warning(bare, "one", 3600, now=10**10) or ""
    )


# -- init ------------------------------------------------------------------------------


def test_init_writes_private_files_that_check_and_refuses_to_overwrite(tmp_path: Path) -> None:
    args = ("--upstream", "http://127.0.0.1:3000", "--public-url", "http://127.0.0.1:8080")
    done = sidecar("init", "conf", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    for name in ("sidecar.yaml", "keyset.json", "admin.key"):
        assert stat.S_IMODE((conf / name).stat().st_mode) == 0o600, name
    admin_key = (conf / "admin.key").read_text()
    assert admin_key not in done.stdout
    checked = sidecar("check-config", "conf/sidecar.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "proxy       127.0.0.1:8080 -> http://127.0.0.1:3000" in checked.stdout
    assert f"store       sqlite:///{conf}/sidecar.db" in checked.stdout

    again = sidecar("init", "conf", *args, cwd=tmp_path)
    assert again.returncode == 1
    assert "sidecar.yaml, keyset.json, admin.key already there; not overwriting" in again.stderr
    assert (conf / "admin.key").read_text() == admin_key

    bad = sidecar("init", "other", "--upstream", "ftp://x", "--public-url", "nope", cwd=tmp_path)
    assert bad.returncode == 1
    assert "--public-url: got 'nope'" in bad.stderr
    assert "--upstream: got 'ftp://x'" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_init_for_a_public_https_site(tmp_path: Path) -> None:
    args = ("--upstream", "http://app:3000", "--public-url", "https://app.example.com")
    assert sidecar("init", "c", *args, cwd=tmp_path).returncode == 0
    text = (tmp_path / "c" / "sidecar.yaml").read_text()
    assert 'listen: "0.0.0.0:8080"' in text
    assert "cookie_secure: true" in text


# -- check-config ------------------------------------------------------------------------


def test_check_config_offline_on_a_fresh_clone(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidecar.yaml").write_text(
        (ROOT / "config" / "sidecar.yaml").read_text()
    )
    online = sidecar("check-config", "config/sidecar.yaml", cwd=tmp_path)
    assert online.returncode == 1  # no keyset, no SIDECAR_ADMIN_KEY
    offline = sidecar("check-config", "--offline", "config/sidecar.yaml", cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("config/sidecar.yaml: OK (offline: secrets not read)")
    assert "keys        not read (--offline)" in offline.stdout


def test_check_config_shows_where_values_came_from(tmp_path: Path) -> None:
    args = ("--upstream", "http://127.0.0.1:3000", "--public-url", "http://127.0.0.1:8080")
    sidecar("init", "conf", *args, cwd=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "conf/sidecar.yaml"],
        cwd=tmp_path,
        env={**ENV, "SIDECAR_PROXY__UPSTREAM": "http://app:9000"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sources = dict(
        line.split(None, 1)
        for line in result.stdout.split("set (everything else is a default):\n")[1].splitlines()
    )
    assert sources["proxy.upstream"] == "env SIDECAR_PROXY__UPSTREAM"
    assert sources["public_url"] == "conf/sidecar.yaml"
    assert "session.cookie_name" not in sources


# -- the README quick start, end to end ----------------------------------------------------


@pytest.fixture
async def quick_start(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path, str]]:
    """``sidecar init`` then ``sidecar serve`` as the README says (free ports instead of
    8080/9091, so parallel runs cannot collide)."""
    proxy_port, admin_port = free_port(), free_port()
    public = f"http://127.0.0.1:{proxy_port}"
    async with running_upstream() as upstream:
        done = sidecar(
            "init",
            "./sidecar-conf",
            "--upstream",
            upstream.url,
            "--public-url",
            public,
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        config = tmp_path / "sidecar-conf" / "sidecar.yaml"
        with (tmp_path / "serve.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *(
                    sys.executable,
                    "-m",
                    "sidecar",
                    "serve",
                    "--config",
                    "./sidecar-conf/sidecar.yaml",
                ),
                cwd=tmp_path,
                env=ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                while True:
                    assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                    try:
                        async with http.get(public + "/_sidecar/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            yield upstream, config, public
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        assert (tmp_path / "sidecar-conf" / "sidecar.db").exists()  # beside the config


async def test_the_quick_start_works_from_a_second_shell(
    quick_start: tuple[Upstream, Path, str], tmp_path: Path
) -> None:
    upstream, _, public = quick_start
    conf = "./sidecar-conf/sidecar.yaml"
    elsewhere = tmp_path  # the "second terminal", with no SIDECAR_ADMIN_KEY
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        minted = await sidecar_async("mint", "--config", conf, "--user", "alice", cwd=elsewhere)
        assert minted.returncode == 0, minted.stderr
        url = minted.stdout.strip()
        assert url.startswith(public + "/?refer=")
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            cookie = f"sidecar_session={response.cookies['sidecar_session'].value}"
        async with http.get(public + "/hello", headers={"Cookie": cookie}) as response:
            assert response.status == 200
        assert upstream.last.values("X-Forwarded-User") == ["alice"]

        as_json = await sidecar_async(
            "mint", "--config", conf, "--user", "bob", "--expire", "1h30m", "--json", cwd=elsewhere
        )
        answer = json.loads(as_json.stdout)
        assert set(answer) >= {"id", "url", "referString", "expiresAt"}
        revoked = await sidecar_async("revoke", "--config", conf, answer["id"], cwd=elsewhere)
        assert revoked.stdout.strip() == f"{answer['id']}: revoked (was unused)"
        async with http.get(answer["url"], allow_redirects=False) as response:
            assert response.status == 410

        magic = await sidecar_async(
            "mint",
            "--config",
            conf,
            "--type",
            "magiclink",
            "--email",
            "carol@example.com",
            cwd=elsewhere,
        )
        assert magic.returncode == 0, magic.stderr
        action_link, otp_line = magic.stdout.splitlines()
        assert action_link.startswith(public + "/_sidecar/verify?token=")
        assert otp_line.startswith("email_otp: ")
        async with http.get(action_link, allow_redirects=False) as response:
            assert response.status == 303

        ended = await sidecar_async(
            "sessions", "end", "--config", conf, "--user", "alice", cwd=elsewhere
        )
        assert ended.stdout.strip() == "alice: 1 session(s) ended"
        async with http.get(
            public + "/hello", headers={"Cookie": cookie, "Accept": "application/json"}
        ) as response:
            assert response.status == 401


def test_admin_commands_need_only_the_admin_key_from_the_config(tmp_path: Path) -> None:
    """The server may read its keyset from a variable this shell does not have."""
    args = ("--upstream", "http://127.0.0.1:3000", "--public-url", "http://127.0.0.1:8080")
    sidecar("init", "conf", *args, cwd=tmp_path)
    (tmp_path / "conf" / "keyset.json").unlink()
    result = sidecar(
        "mint",
        "--config",
        "conf/sidecar.yaml",
        "--admin-url",
        "http://127.0.0.1:9",
        "--user",
        "u",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "cannot reach the admin port at http://127.0.0.1:9" in result.stderr
    (tmp_path / "conf" / "admin.key").unlink()
    result = sidecar("revoke", "--config", "conf/sidecar.yaml", "some-id", cwd=tmp_path)
    assert "admin.key.file: cannot read" in result.stderr
