"""Reload: what changed, what needs a restart, invalid files, and the secret-file watch.

In-process, against the real loader and real files; tests/test_reload_process.py sends
SIGHUP to a real ``sidecar serve``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sidecar.config import Config, read_config
from sidecar.reload import Reloader, changes, keep_running
from sidecar.tokens.keys import generate_keyset, parse_keyset
from tests.test_config import ENV, config_doc, write_config


def edit(path: Path, **changes: object) -> None:
    """Set dotted ``changes`` (``proxy__listen`` for proxy.listen) in the YAML at ``path``."""
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = doc
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return write_config(tmp_path)


def test_changes_name_yaml_paths_and_keys_by_kid(config_path: Path) -> None:
    old = read_config(config_path).config
    keyset = parse_keyset((config_path.parent / "keyset.json").read_text())
    (config_path.parent / "keyset.json").write_text(keyset.with_new_key("k-new").to_json())
    edit(
        config_path,
        proxy__listen="127.0.0.1:1",
        roles__Admin__max_expiry="30m",
        roles__Extra={"max_expiry": "1h"},
        tokens__default_expiry="30m",
        logging={"level": "debug"},
    )
    new = read_config(config_path).config
    found = {str(c): c.needs_restart for c in changes(old, new)}
    assert found == {
        f"keys (active k-new, was {keyset.active_kid}; added k-new)": False,
        "proxy.listen": True,
        "roles.Admin.max_expiry": False,
        "roles.Extra (added)": False,
        "tokens.default_expiry": False,
        "logging.level": False,
    }
    assert "k-new" not in repr(new.keyset.keys["k-new"])  # (kids only: no key material)


def test_keep_running_restores_restart_only_values(config_path: Path) -> None:
    old = read_config(config_path).config
    edit(config_path, proxy__listen="127.0.0.1:1", store__url="sqlite:///other.db")
    edit(config_path, session__cookie_secure=False)
    new = read_config(config_path).config
    restart = [c for c in changes(old, new) if c.needs_restart]
    assert sorted(c.path for c in restart) == ["proxy.listen", "store.url"]
    kept = keep_running(old, new, restart)
    assert kept.proxy.listen == old.proxy.listen
    assert kept.store == old.store
    assert kept.session.cookie_secure is False  # the live change stays


async def until(check: Callable[[], bool]) -> None:
    """Poll the watch task's effect (it runs on its own clock) for up to 10 s."""
    async with asyncio.timeout(10):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


class Applied:
    def __init__(self) -> None:
        self.configs: list[Config] = []

    def __call__(self, config: Config) -> None:
        self.configs.append(config)


def test_reload_applies_a_valid_change_and_logs_one_line(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    reloader = Reloader(config_path, read_config(config_path), applied)
    edit(config_path, roles__Admin__max_expiry="30m", proxy__listen="127.0.0.1:1")
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is True
    [config] = applied.configs
    assert config.roles["Admin"].max_expiry == 1800
    assert str(config.proxy.listen) == "127.0.0.1:0"  # the running value, not 127.0.0.1:1
    [line] = caplog.messages
    assert line == (
        "reload (SIGHUP): changed roles.Admin.max_expiry; "
        "needs restart (running value kept): proxy.listen"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is False  # same file again: still waiting
    assert caplog.messages == [
        "reload (SIGHUP): nothing that applies live; "
        "needs restart (running value kept): proxy.listen"
    ]
    edit(config_path, proxy__listen="127.0.0.1:0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is False
    assert caplog.messages == ["reload (SIGHUP): no change"]


def test_an_invalid_file_changes_nothing_and_every_error_is_logged(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    reloader = Reloader(config_path, read_config(config_path), applied)
    edit(config_path, roles__Admin__max_expiry="40d", proxy__upstream="ftp://x", surprise=1)
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is False
    assert applied.configs == []
    [record] = caplog.records
    assert record.levelname == "ERROR"
    message = record.getMessage()
    assert message.startswith("reload (SIGHUP) refused, still serving the previous")
    assert "3 error(s)" in message
    for error in ("roles.Admin.max_expiry: got '40d'", "proxy.upstream: got 'ftp://x'"):
        assert error in message
    assert "surprise: unknown key" in message


def test_restart_only_changes_alone_are_not_applied(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    reloader = Reloader(config_path, read_config(config_path), applied)
    edit(config_path, admin__listen="127.0.0.1:1")
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is False
    assert applied.configs == []
    assert caplog.messages == [
        "reload (SIGHUP): nothing that applies live; "
        "needs restart (running value kept): admin.listen"
    ]


def test_secrets_never_reach_the_reload_line(
    config_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloader = Reloader(config_path, read_config(config_path), Applied())
    monkeypatch.setenv("SIDECAR_ADMIN_KEY", "n" * 40)
    with caplog.at_level(logging.INFO, logger="sidecar.reload"):
        assert reloader.reload("SIGHUP") is True
    assert caplog.messages == ["reload (SIGHUP): changed admin.key (replaced)"]


async def test_a_changed_keyset_file_is_picked_up_without_a_signal(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    reloader = Reloader(config_path, read_config(config_path), applied)
    keyset_file = config_path.parent / "keyset.json"
    watcher = asyncio.create_task(reloader.watch(0.02))
    try:
        with caplog.at_level(logging.INFO, logger="sidecar.reload"):
            await asyncio.sleep(0.1)
            assert applied.configs == []  # nothing changed: no reload at all
            keyset = parse_keyset(keyset_file.read_text())
            keyset_file.write_text(keyset.with_new_key("k2", activate=False).to_json())
            await until(lambda: bool(applied.configs))
            keyset_file.write_text("{not json")  # a half-written file: refused, once
            await until(lambda: any(r.levelname == "ERROR" for r in caplog.records))
            await asyncio.sleep(0.1)  # five more ticks of the watch: no second error line
    finally:
        watcher.cancel()
    [config] = applied.configs
    assert set(config.keyset.keys) == {keyset.active_kid, "k2"}
    assert config.keyset.active_kid == keyset.active_kid  # staged, not active
    assert caplog.messages[0] == (
        f"reload (secret file changed: {keyset_file}): changed keys (added k2)"
    )
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


def test_own_pages_changes_are_named_by_page(config_path: Path) -> None:
    pages = config_path.parent / "pages"
    pages.mkdir()
    (pages / "signed_out.html").write_text("<p>bye</p>")
    edit(config_path, pages={"dir": "pages"})
    old = read_config(config_path).config
    (pages / "signed_out.html").write_text("<p>see you</p>")
    (pages / "confirm.html").write_text("<p>sure?</p>$form")
    found = {str(c): c.needs_restart for c in changes(old, read_config(config_path).config)}
    assert found == {"pages.signed_out": False, "pages.confirm (added)": False}


async def test_a_kubernetes_style_secret_update_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet writes a new timestamped directory and swaps the ``..data`` symlink;
    ``keyset.json`` is a symlink through it and never changes itself."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    secrets = tmp_path / "secrets"
    (secrets / "..v1").mkdir(parents=True)
    first = generate_keyset("k-1")
    (secrets / "..v1" / "keyset.json").write_text(first.to_json())
    (secrets / "..data").symlink_to("..v1")
    (secrets / "keyset.json").symlink_to("..data/keyset.json")
    config_path = write_config(tmp_path, config_doc(keys={"file": "secrets/keyset.json"}))
    applied = Applied()
    reloader = Reloader(config_path, read_config(config_path), applied)
    watcher = asyncio.create_task(reloader.watch(0.02))
    try:
        (secrets / "..v2").mkdir()
        (secrets / "..v2" / "keyset.json").write_text(first.with_new_key("k-2").to_json())
        (secrets / "..data_tmp").symlink_to("..v2")
        (secrets / "..data_tmp").rename(secrets / "..data")  # atomic, as the kubelet does
        await until(lambda: bool(applied.configs))
    finally:
        watcher.cancel()
    assert applied.configs[0].keyset.active_kid == "k-2"
