"""deploy/kubernetes: every manifest validated offline against the Kubernetes 1.30 schemas.

Strict mode makes unknown fields errors (a misspelled ``readinesProbe`` would otherwise pass
silently); the negative cases below prove that. The rest checks what the schemas cannot: the
restricted security context, the probes, the Service targeting the sidecar, and that the
sidecar YAML in each ConfigMap is a valid config for this very codebase.
"""

from __future__ import annotations

import copy
import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import Config, ConfigError, parse_config
from sidecar.tokens.keys import generate_keyset

K8S_VERSION = "1.30.0"
ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
VARIANTS = ("sqlite", "redis")
# Forward-auth behind ingress-nginx (tests/test_manifests_forward_auth.py checks its wiring).
FORWARD_AUTH = "forward-auth"
MANAGED = "managed-redis"  # a managed, clustered Redis over TLS: URL and CA from a Secret
SECRETS_DIR = "/etc/sidecar-secrets"
Doc = dict[str, Any]


def _files() -> list[Path]:
    return sorted(ROOT.glob("*/*.yaml"))


def _docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _all_docs() -> Iterator[tuple[str, Doc]]:
    for path in _files():
        for i, doc in enumerate(_docs(path)):
            yield f"{path.relative_to(ROOT)}#{i}", doc


def _variant(name: str) -> dict[str, Doc]:
    """The variant's documents keyed by ``Kind/name``."""
    docs: dict[str, Doc] = {}
    for path in sorted((ROOT / name).glob("*.yaml")):
        for doc in _docs(path):
            docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', '')}"] = doc
    return docs


def _pod_specs(docs: dict[str, Doc]) -> Iterator[tuple[str, Doc]]:
    for key, doc in docs.items():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield key, doc["spec"]["template"]["spec"]


def _container(pod: Doc, name: str) -> Doc:
    matches: list[Doc] = [c for c in pod["containers"] if c["name"] == name]
    assert len(matches) == 1, f"expected one container named {name!r}"
    return matches[0]


def _workload(docs: dict[str, Doc]) -> Doc:
    """The pod's owner: a StatefulSet of one (SQLite on a volume) or a Deployment (Redis)."""
    found = [d for k, d in docs.items() if k in ("Deployment/legacy-app", "StatefulSet/legacy-app")]
    assert len(found) == 1
    return found[0]


def _sidecar_yaml(docs: dict[str, Doc]) -> str:
    text = docs["ConfigMap/legacy-app-sidecar"]["data"]["sidecar.yaml"]
    assert isinstance(text, str)
    return text


def _parse_with_secrets(text: str, secret_dir: Path, *, keyset: str, admin_key: str) -> Config:
    """Parse the ConfigMap's YAML with the Secret's files materialised under ``secret_dir``."""
    secret_dir.mkdir(exist_ok=True)
    (secret_dir / "keyset.json").write_text(keyset, encoding="utf-8")
    (secret_dir / "admin-key").write_text(admin_key, encoding="utf-8")
    (secret_dir / "redis-password").write_text("a-redis-password", encoding="utf-8")
    text = text.replace(SECRETS_DIR, str(secret_dir))
    return parse_config(text, env={}, base_dir=secret_dir)


def _doc_id(value: object) -> str:
    return value if isinstance(value, str) else ""


def test_there_are_manifests_to_validate() -> None:
    assert {p.parent.name for p in _files()} == {*VARIANTS, FORWARD_AUTH, MANAGED}
    assert len(list(_all_docs())) >= 12


@pytest.mark.parametrize(("where", "doc"), list(_all_docs()), ids=_doc_id)
def test_manifest_validates_strictly(where: str, doc: Doc) -> None:
    if doc["kind"] == "Kustomization":
        # Not a cluster object: check it lists exactly the manifests beside it.
        directory = ROOT / where.split("/")[0]
        listed = sorted(doc["resources"])
        present = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
        assert listed == present
        return
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.30"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        pytest.param(
            lambda c: c.__setitem__("readinesProbe", c.pop("readinessProbe")),
            "readinesProbe",
            id="misspelled-readinessProbe",
        ),
        pytest.param(
            lambda c: c["securityContext"].__setitem__("readOnlyRootFilesytem", True),
            "readOnlyRootFilesytem",
            id="misspelled-readOnlyRootFilesystem",
        ),
        pytest.param(
            lambda c: c["ports"][0].__setitem__("containerPort", "8080"),
            "8080",
            id="port-as-string",
        ),
    ],
)
def test_a_broken_manifest_fails(mutate: Any, needle: str) -> None:
    deployment = copy.deepcopy(_workload(_variant("sqlite")))
    mutate(_container(deployment["spec"]["template"]["spec"], "sidecar"))
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    assert needle in str(caught.value.message)


def test_a_misspelled_top_level_field_fails() -> None:
    service = copy.deepcopy(_variant("sqlite")["Service/legacy-app"])
    service["spec"]["selecter"] = service["spec"].pop("selector")
    # Without strict mode the typo passes (and the Service would select every pod).
    kubernetes_validate.validate(service, K8S_VERSION, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", [*VARIANTS, FORWARD_AUTH, MANAGED])
def test_every_pod_is_restricted(variant: str) -> None:
    pods = list(_pod_specs(_variant(variant)))
    assert pods
    for where, pod in pods:
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        assert ctx["runAsUser"] > 0, where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            sc = container["securityContext"]
            label = f"{where} {container['name']}"
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc["readOnlyRootFilesystem"] is True, label
            assert sc["capabilities"] == {"drop": ["ALL"]}, label
            assert "privileged" not in sc, label
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{label}: /tmp must be an emptyDir"


@pytest.mark.parametrize("variant", VARIANTS)
def test_sidecar_container_is_wired(variant: str, tmp_path: Path) -> None:
    docs = _variant(variant)
    deployment = _workload(docs)
    pod = deployment["spec"]["template"]["spec"]
    sidecar = _container(pod, "sidecar")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}

    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/_sidecar/readyz", "port": "http"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/_sidecar/healthz", "port": "http"}
    service = docs["Service/legacy-app"]
    assert service["spec"]["selector"] == pod_labels(deployment)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    rules = docs["NetworkPolicy/legacy-app"]["spec"]["ingress"]
    open_to_all = [r for r in rules if "from" not in r]
    assert [p["port"] for r in open_to_all for p in r["ports"]] == [ports["http"]]
    (scraped,) = [r for r in rules if "from" in r]
    assert [p["port"] for p in scraped["ports"]] == [ports["metrics"]]
    assert scraped["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ], "metrics only to the labelled scraper"

    secret = docs["Secret/legacy-app-sidecar"]
    redis_password = {"redis-password"} if variant == "redis" else set()
    assert set(secret["stringData"]) == {"keyset.json", "admin-key"} | redis_password
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert volumes[mounts[SECRETS_DIR]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes[mounts["/etc/sidecar"]]["configMap"]["name"] == "legacy-app-sidecar"
    assert sidecar["args"] == ["--config", "/etc/sidecar/sidecar.yaml"]
    app_env = {e["name"]: e for e in _container(pod, "app")["env"]}
    assert app_env["SIDECAR_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "admin-key"

    config = _parse_with_secrets(
        _sidecar_yaml(docs),
        tmp_path / "secrets",
        keyset=generate_keyset().to_json(),
        admin_key=secrets.token_urlsafe(32),
    )
    assert config.admin.listen.is_loopback, "the admin port must stay inside the pod"
    assert str(config.admin.listen) == app_env["SIDECAR_ADMIN_URL"]["value"].removeprefix("http://")
    assert config.proxy.listen.port == ports["http"]
    assert config.metrics_listen is not None
    assert config.metrics_listen.port == ports["metrics"]
    assert config.proxy.upstream == "http://127.0.0.1:3000"
    assert config.session.cookie_secure is True
    # Behind an ingress every client shares the ingress pods' address unless their
    # X-Forwarded-For is believed (issue #12, item 11).
    ingress_pod = ipaddress.ip_address("10.244.1.7")
    assert any(ingress_pod in net for net in config.proxy.trusted_proxies)
    assert pod["terminationGracePeriodSeconds"] > config.grace_period + 5

    if config.store.url.startswith("sqlite:"):
        db_dir = str(Path(config.store.url.removeprefix("sqlite:///")).parent)
        # Burns and revocations must survive a restart: the file lives on a claim, never on
        # the pod's emptyDir (which a restarted pod loses, re-opening every used link).
        assert mounts[db_dir] not in volumes, "SQLite must not live on a pod volume"
        claims = {c["metadata"]["name"]: c for c in deployment["spec"]["volumeClaimTemplates"]}
        assert claims[mounts[db_dir]]["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert deployment["kind"] == "StatefulSet"
        assert deployment["spec"]["replicas"] == 1
    else:
        host = config.store.url.split("//", 1)[1].split(":", 1)[0]
        assert f"Service/{host}" in docs
        assert f"StatefulSet/{host}" in docs
        assert deployment["spec"]["replicas"] >= 2
        assert docs["PodDisruptionBudget/legacy-app"]["spec"]["minAvailable"] >= 1
        # Redis needs the password from the same Secret the sidecar reads it from, and
        # keeps an append-only file the sidecar insists on (require_persistence).
        assert config.store.password is not None
        assert config.store.password.reveal() == "a-redis-password"
        assert config.store.require_persistence is True
        redis_pod = docs[f"StatefulSet/{host}"]["spec"]["template"]["spec"]
        redis = _container(redis_pod, "redis")
        args = redis["args"]
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        assert args[args.index("--appendonly") + 1] == "yes"
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
        for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
            assert refs[name] == {"name": secret["metadata"]["name"], "key": "redis-password"}


def pod_labels(workload: Doc) -> dict[str, str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


@pytest.mark.parametrize("variant", [*VARIANTS, FORWARD_AUTH, MANAGED])
def test_placeholder_secret_fails_closed(variant: str, tmp_path: Path) -> None:
    docs = _variant(variant)
    placeholders = docs["Secret/legacy-app-sidecar"]["stringData"]
    with pytest.raises(ConfigError) as caught:
        _parse_with_secrets(
            _sidecar_yaml(docs),
            tmp_path / "secrets",
            keyset=placeholders["keyset.json"],
            admin_key=placeholders["admin-key"],
        )
    fields = {e.split(":", 1)[0] for e in caught.value.errors}
    assert {"keys", "admin.key"} <= fields


def test_variants_share_the_sidecar_container() -> None:
    def shared(variant: str) -> Doc:
        pod = _workload(_variant(variant))["spec"]["template"]["spec"]
        container = dict(_container(pod, "sidecar"))
        container.pop("volumeMounts")
        return {"sidecar": container, "securityContext": pod["securityContext"]}

    assert shared("sqlite") == shared("redis")
    sqlite_yaml, redis_yaml = (_sidecar_yaml(_variant(v)) for v in VARIANTS)
    differing = set(sqlite_yaml.splitlines()) ^ set(redis_yaml.splitlines())
    store_lines = ("url:", "key_prefix", "password:", "file: /etc/sidecar-secrets/redis-password",
                   "require_persistence", "# Our Redis keeps")  # fmt: skip
    assert all(any(s in line for s in store_lines) for line in differing), differing
