"""The ``store`` section for Redis: URLs of every topology, the password never inline in
the YAML, TLS files that must exist, and ``redis_min_replicas_ack``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.store import RedisStore, check_store_url, open_store
from sidecar.store.redis_client import RedisOptions
from sidecar.store.redis_url import parse_redis_url
from tests.test_config import ENV, build_config, config_doc, errors_of, write_config


def test_cluster_and_sentinel_urls_parse() -> None:
    cluster = parse_redis_url("rediss+cluster://app@10.0.0.1:7000,[::1]:7001,redis-2:7002/")
    assert (cluster.mode, cluster.tls, cluster.username) == ("cluster", True, "app")
    assert cluster.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 7002))
    sentinel = parse_redis_url("redis+sentinel://s1:26379,s2:26379/mymaster/3")
    assert (sentinel.mode, sentinel.service, sentinel.db) == ("sentinel", "mymaster", 3)
    assert parse_redis_url("redis+sentinel://s1:26379/mymaster").db == 0
    single = parse_redis_url("rediss://user:p%40ss@h:6380/0")
    assert (single.mode, single.username, single.password) == ("single", "user", "p@ss")
    assert "p@ss" not in repr(single)
    store = open_store("redis+cluster://h:1/", prefix="p:")
    assert isinstance(store, RedisStore)
    assert repr(store) == "RedisStore(cluster, prefix='p:')"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h:1/2", "a cluster has only database 0"),
        ("redis+cluster://h/", "expected host:port, got 'h'"),
        ("redis+cluster://h:1,,h:2/", "expected host:port, got ''"),
        ("redis+cluster://h:70000/", "expected host:port, got 'h:70000'"),
        ("redis+sentinel://h:1/", "expected redis+sentinel://host:port,…/<service>/<db>"),
        ("redis+sentinel://h:1/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://h:1/svc/0/extra", "expected redis+sentinel://host:port"),
        ("redis+cluster://h:1/?db=1", "no query or fragment"),
    ],
)
def test_bad_topology_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="store URL") as info:
        check_store_url(url)
    assert message in str(info.value)
    assert "@" not in str(info.value)


def test_a_password_written_in_the_yaml_is_refused(tmp_path: Path) -> None:
    doc = config_doc(store={"url": "redis://:hunter2@redis:6379/0"})
    errors = errors_of(tmp_path, doc)
    assert any(e.startswith("store.url: a password is never written in the YAML") for e in errors)
    assert not any("hunter2" in e for e in errors)


def test_the_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("from-a-file\n")
    doc = config_doc(
        store={"url": "rediss://sidecar@redis:6380/0", "password": {"file": "redis-password"}}
    )
    cfg = build_config(tmp_path, doc)
    assert cfg.store.password is not None
    assert cfg.store.password.reveal() == "from-a-file"
    assert "from-a-file" not in repr(cfg.store)
    doc = config_doc(store={"url": "redis://redis:6379/0", "password": {"env": "REDIS_PW"}})
    cfg = load_config(write_config(tmp_path, doc), env={**ENV, "REDIS_PW": "from-env"})
    assert cfg.store.password is not None
    assert cfg.store.password.reveal() == "from-env"


def test_a_url_with_a_password_may_come_from_the_environment(tmp_path: Path) -> None:
    """A Kubernetes Secret mapped to SIDECAR_STORE__URL: the password never was in the YAML."""
    url = "rediss+cluster://sidecar:s3cret@redis-0:6379,redis-1:6379/"
    cfg = load_config(write_config(tmp_path), env={**ENV, "SIDECAR_STORE__URL": url})
    assert cfg.store.url == url
    assert "s3cret" not in repr(cfg.store)


def test_tls_files_and_ack(tmp_path: Path) -> None:
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    doc = config_doc(store={
        "url": "rediss+sentinel://s1:26379,s2:26379/main/0", "tls_ca_file": "ca.crt",
        "tls_cert_file": "client.crt", "tls_key_file": "client.key",
        "redis_min_replicas_ack": 1,
    })  # fmt: skip
    st = build_config(tmp_path, doc).store
    assert st.tls_ca_file == str(tmp_path / "ca.crt")
    assert st.tls_key_file == str(tmp_path / "client.key")
    assert st.redis_min_replicas_ack == 1


R, S = "rediss://h:1/0", "sqlite:///x.db"


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"url": R, "tls_ca_file": "missing.crt"}, "tls_ca_file: cannot read"),
        ({"url": "redis://h:1/0", "tls_ca_file": "ca.crt"}, "tls_ca_file: TLS files need a TLS"),
        ({"url": R, "tls_cert_file": "ca.crt"}, "tls_cert_file: a client certificate needs both"),
        ({"url": R, "redis_min_replicas_ack": 17}, "redis_min_replicas_ack: got 17"),
        ({"url": S, "redis_min_replicas_ack": 1}, "redis_min_replicas_ack: applies to a Redis"),
        ({"url": S, "tls_ca_file": "ca.crt"}, "tls_ca_file: applies to a Redis store only"),
        ({"url": R, "password": "inline"}, "password: the Redis password is never written"),
        ({"url": "redis+sentinel://h:1/"}, "url: store URL redis+sentinel://…: expected"),
    ],
)
def test_store_errors(tmp_path: Path, store: dict[str, object], message: str) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    errors = errors_of(tmp_path, config_doc(store=store))
    assert any(e.startswith("store." + message) for e in errors), errors


def test_options_refuse_half_a_client_certificate() -> None:
    with pytest.raises(ValueError, match="both"):
        RedisOptions(tls_cert_file="c.crt")
    assert "pw" not in repr(RedisOptions(password="pw"))
