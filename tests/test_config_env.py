"""Config from the environment (``SIDECAR_<PATH>``), offline checks, relative paths, sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, read_config
from sidecar.config.env import env_name
from sidecar.store import anchor_sqlite_url, open_store
from tests.test_config import ENV, config_doc, write_config


def errors_with(
    tmp_path: Path, env: dict[str, str], doc: dict[str, object] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, doc), env={**ENV, **env})
    return info.value.errors


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("public_url", "SIDECAR_PUBLIC_URL"),
        ("proxy.upstream", "SIDECAR_PROXY__UPSTREAM"),
        ("session.cookie_secure", "SIDECAR_SESSION__COOKIE_SECURE"),
        ("roles.Admin.max_expiry", "SIDECAR_ROLES__ADMIN__MAX_EXPIRY"),
        ("roles.read-only.one_time", "SIDECAR_ROLES__READ_ONLY__ONE_TIME"),
    ],
)
def test_env_names(path: str, name: str) -> None:
    assert env_name(path) == name


def test_the_environment_beats_the_file_for_every_kind(tmp_path: Path) -> None:
    env = {
        "SIDECAR_PUBLIC_URL": "https://other.example.test",
        "SIDECAR_PROXY__UPSTREAM": "http://app:3000",  # url
        "SIDECAR_PROXY__LISTEN": "127.0.0.1:18080",  # host:port
        "SIDECAR_SESSION__COOKIE_SECURE": "false",  # boolean
        "SIDECAR_SESSION__CACHE_SIZE": "5",  # integer
        "SIDECAR_TOKENS__DEFAULT_EXPIRY": "1h30m",  # duration
        "SIDECAR_ADMIN__MAX_BODY": "1MiB",  # size
        "SIDECAR_LINKS__OTP_RATE": "3/1w",  # rate
        "SIDECAR_PROXY__UNAUTHENTICATED": "pass",  # choice
        "SIDECAR_ROLES__ADMIN__MAX_EXPIRY": "30m",  # a role's option
        "SIDECAR_PROXY__TRUSTED_PROXIES": "[10.0.0.0/8, 192.168.1.1]",  # a list, as YAML
        "SIDECAR_STORE__URL": "redis://redis:6379/0",
    }
    loaded = read_config(write_config(tmp_path), env={**ENV, **env})
    cfg = loaded.config
    assert cfg.public_url == "https://other.example.test"
    assert cfg.proxy.upstream == "http://app:3000"
    assert str(cfg.proxy.listen) == "127.0.0.1:18080"
    assert cfg.session.cookie_secure is False
    assert cfg.session.cache_size == 5
    assert cfg.default_expiry == 5400
    assert cfg.admin.max_body == 1024**2
    assert (cfg.links.otp_rate.limit, cfg.links.otp_rate.window) == (3, 7 * 86400)
    assert cfg.proxy.unauthenticated == "pass"
    assert cfg.roles["Admin"].max_expiry == 1800
    assert [str(n) for n in cfg.proxy.trusted_proxies] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert cfg.store.url == "redis://redis:6379/0"
    assert loaded.sources["proxy.upstream"] == "env SIDECAR_PROXY__UPSTREAM"
    assert loaded.sources["roles.Admin.max_expiry"] == "env SIDECAR_ROLES__ADMIN__MAX_EXPIRY"
    assert loaded.sources["default_role"] == "file"
    assert "session.cookie_name" not in loaded.sources  # a default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SIDECAR_SESSION__COOKIE_SECURE": "maybe"},
            "SIDECAR_SESSION__COOKIE_SECURE (session.cookie_secure): got 'maybe', "
            "expected true or false",
        ),
        (
            {"SIDECAR_SESSION__CACHE_SIZE": "lots"},
            "SIDECAR_SESSION__CACHE_SIZE (session.cache_size): got 'lots', expected an integer",
        ),
        (
            {"SIDECAR_PROXY__UPSTREAM": "ftp://x"},
            "SIDECAR_PROXY__UPSTREAM (proxy.upstream): got 'ftp://x', expected an absolute",
        ),
        (
            {"SIDECAR_ROLES__ADMIN__MAX_EXPIRY": "40d"},
            "SIDECAR_ROLES__ADMIN__MAX_EXPIRY (roles.Admin.max_expiry): got '40d', at most 30d",
        ),
        (
            {"SIDECAR_PROXY__TRUSTED_PROXIES": "[unclosed"},
            "SIDECAR_PROXY__TRUSTED_PROXIES (proxy.trusted_proxies): expected a list",
        ),
        ({"SIDECAR_PROXY__UPSTRAEM": "http://x"}, "SIDECAR_PROXY__UPSTRAEM: names no option"),
        ({"SIDECAR_ROLES__NOBODY__ONE_TIME": "true"}, "SIDECAR_ROLES__NOBODY__ONE_TIME: names"),
    ],
)
def test_environment_errors_name_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    errors = errors_with(tmp_path, env)
    assert any(e.startswith(message) for e in errors), errors
    assert len(errors) == 1, errors


def test_other_sidecar_variables_are_not_options(tmp_path: Path) -> None:
    # Secrets' own variables and the test switch have no "__": never taken for options.
    env = {"SIDECAR_KEYSET": "x", "SIDECAR_REQUIRE_ALL": "1"}
    assert load_config(write_config(tmp_path), env={**ENV, **env}).default_role


def test_a_secret_can_be_named_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text("k" * 40)
    env = {"SIDECAR_ADMIN__KEY__FILE": "admin.key"}  # replaces the file's `env:` as a whole
    cfg = load_config(write_config(tmp_path), env={**ENV, **env})
    assert cfg.admin.key.reveal() == "k" * 40


# -- offline -----------------------------------------------------------------------------


def test_offline_needs_no_secrets(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "keyset.json").unlink()
    with pytest.raises(ConfigError):
        load_config(path, env={})
    cfg = load_config(path, env={}, offline=True)
    assert cfg.admin.key.reveal() == ""
    assert cfg.keyset.active_kid == "offline"


def test_offline_still_checks_everything_else(tmp_path: Path) -> None:
    doc = config_doc(keys={"file": "a", "env": "B"}, tokens={"max_expiry": "31d"})
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, doc), env={}, offline=True)
    assert sorted(info.value.errors) == [
        "keys: give exactly one of file: or env: for the keyset",
        "tokens.max_expiry: got '31d', at most 30d",
    ]


# -- relative paths ----------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "admin.key").write_text("a" * 40)
    doc = config_doc(admin={"key": {"file": "admin.key"}}, store={"url": "sqlite:///data/s.db"})
    write_config(conf, doc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "conf" / "sidecar.yaml", env={})
    assert cfg.admin.key.reveal() == "a" * 40
    assert cfg.store.url == f"sqlite:///{conf}/data/s.db"


@pytest.mark.parametrize(
    ("url", "anchored"),
    [
        ("sqlite:///s.db", "sqlite:////base/dir/s.db"),
        ("sqlite:////abs/s.db", "sqlite:////abs/s.db"),
        ("redis://r:6379/0", "redis://r:6379/0"),
    ],
)
def test_anchor_sqlite_url(url: str, anchored: str) -> None:
    assert anchor_sqlite_url(url, "/base/dir") == anchored


def test_anchored_paths_survive_odd_characters(tmp_path: Path) -> None:
    odd = tmp_path / "a dir%20#x"
    odd.mkdir()
    write_config(odd, config_doc(store={"url": "sqlite:///s.db"}))
    store = load_config(odd / "sidecar.yaml", env=ENV).store
    assert repr(open_store(store.url)) == f"SQLiteStore({str(odd / 's.db')!r})"


def test_weeks_and_compound_durations_in_yaml(tmp_path: Path) -> None:
    roles = {"R": {"max_expiry": "1w", "session_lifetime": "1h30m", "idle_timeout": "45m"}}
    cfg = load_config(write_config(tmp_path, config_doc(roles=roles, default_role="R")), env=ENV)
    assert cfg.roles["R"].max_expiry == 7 * 86400
    assert cfg.roles["R"].session_lifetime == 5400
