"""deploy/kubernetes/managed-redis: the sidecar on a managed, clustered Redis over TLS.

Strict schema validation runs in tests/test_manifests.py over every file. Here: what the
schemas cannot see — the Redis URL reaches the sidecar from a Secret (never the YAML), the
password and CA are files of a mounted Secret, the sidecar YAML with those values is a
valid config naming a TLS cluster with WAIT, and the rest of the pod is the Redis variant's.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sidecar.config import ConfigError, parse_config
from sidecar.store.redis_url import parse_redis_url
from sidecar.tokens.keys import generate_keyset
from tests.test_manifests import (
    MANAGED,
    SECRETS_DIR,
    Doc,
    _container,
    _sidecar_yaml,
    _variant,
    _workload,
)

REDIS_SECRETS = "/etc/redis-secrets"


def _pod(docs: dict[str, Doc]) -> Doc:
    pod = _workload(docs)["spec"]["template"]["spec"]
    assert isinstance(pod, dict)
    return pod


def _materialise(docs: dict[str, Doc], tmp: Path, url: str, ca: str) -> tuple[str, dict[str, str]]:
    """The ConfigMap's YAML with both Secrets' files under ``tmp``, and the pod's env."""
    (tmp / "sidecar").mkdir()
    (tmp / "redis").mkdir()
    (tmp / "sidecar" / "keyset.json").write_text(generate_keyset().to_json())
    (tmp / "sidecar" / "admin-key").write_text(secrets.token_urlsafe(32))
    (tmp / "redis" / "password").write_text("a-real-password")
    (tmp / "redis" / "ca.crt").write_text(ca)
    text = _sidecar_yaml(docs).replace(SECRETS_DIR, str(tmp / "sidecar"))
    text = text.replace(REDIS_SECRETS, str(tmp / "redis"))
    return text, {"SIDECAR_STORE__URL": url}


def test_the_url_and_tls_come_from_secrets(tmp_path: Path) -> None:
    docs = _variant(MANAGED)
    pod = _pod(docs)
    sidecar = _container(pod, "sidecar")
    env = {e["name"]: e for e in sidecar["env"]}
    ref = env["SIDECAR_STORE__URL"]["valueFrom"]["secretKeyRef"]
    redis_secret = docs[f"Secret/{ref['name']}"]
    assert ref["key"] in redis_secret["stringData"]
    assert "optional" not in ref, "no Secret, no pod: never a silent fallback"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    mounted = volumes[mounts[REDIS_SECRETS]]["secret"]
    assert mounted["secretName"] == ref["name"]
    assert (
        {i["key"] for i in mounted["items"]}
        == {"password", "ca.crt"}
        <= set(redis_secret["stringData"])
    )

    url = "rediss+cluster://sidecar@clustercfg.cache.example.com:6379/"
    text, env_values = _materialise(docs, tmp_path, url, "-----BEGIN CERTIFICATE-----\n")
    config = parse_config(text, env=env_values, base_dir=tmp_path)
    st = config.store
    assert st.url == url
    assert parse_redis_url(st.url).mode == "cluster"
    assert st.password is not None
    assert st.password.reveal() == "a-real-password"
    assert st.tls_ca_file == str(tmp_path / "redis" / "ca.crt")
    assert st.redis_min_replicas_ack == 1
    assert st.key_prefix == "legacy-app:"
    assert _workload(docs)["spec"]["replicas"] >= 2
    assert docs["PodDisruptionBudget/legacy-app"]["spec"]["minAvailable"] >= 1


def test_a_password_in_the_configmap_would_be_refused(tmp_path: Path) -> None:
    docs = _variant(MANAGED)
    text, _ = _materialise(docs, tmp_path, "", "ca")
    text = text.replace("url: rediss+cluster://set-", "url: rediss+cluster://sidecar:hunter2@set-")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={}, base_dir=tmp_path)
    assert any(e.startswith("store.url: a password is never") for e in caught.value.errors)


def test_the_pod_is_the_redis_variants_but_for_the_store_wiring() -> None:
    def pod_without_store(variant: str) -> Doc:
        pod = _pod(_variant(variant))
        sidecar = dict(_container(pod, "sidecar"))
        sidecar.pop("env", None)
        sidecar["volumeMounts"] = [
            m for m in sidecar["volumeMounts"] if m["mountPath"] != REDIS_SECRETS
        ]
        return {"sidecar": sidecar, "securityContext": pod["securityContext"]}

    assert pod_without_store(MANAGED) == pod_without_store("redis")
