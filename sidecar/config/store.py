"""The ``store`` section: where state lives, and how to reach a Redis safely.

    store:
      url: rediss://sidecar@redis.example:6380/0   # or redis+cluster://…, redis+sentinel://…
      password: {file: /run/secrets/redis-password} # or {env: REDIS_PASSWORD}
      tls_ca_file: /run/secrets/redis-ca.crt        # the CA that signed the server's cert
      tls_cert_file: /run/secrets/client.crt        # optional client certificate...
      tls_key_file: /run/secrets/client.key         # ...and its key
      redis_min_replicas_ack: 1                     # WAIT for this many replicas
      require_persistence: true                     # not ready unless Redis persists

A password is never written in the YAML: a URL in the file that carries one is refused,
with the way out (``store.password``, or the whole URL from ``SIDECAR_STORE__URL``, e.g. a
Kubernetes Secret).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.config.env import env_name
from sidecar.config.reader import Reader
from sidecar.config.values import Secret
from sidecar.store import anchor_sqlite_url
from sidecar.store.redis_url import parse_redis_url


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = field(repr=False)  # may carry a password (from the environment)
    key_prefix: str
    purge_interval: float
    password: Secret | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    redis_min_replicas_ack: int = 0
    # Not ready (readyz 503, and no start) unless the store says it persists.
    require_persistence: bool = False

    @property
    def is_redis(self) -> bool:
        return not self.url.startswith("sqlite:")


def read_store(r: Reader) -> StoreConfig:
    st = r.root().section("store")
    url = st.string("url", "sqlite:///sidecar.db")
    try:
        url = anchor_sqlite_url(url, r.base_dir)
    except ValueError as exc:
        st.error("url", str(exc))
    redis = not url.startswith("sqlite:")
    target = None
    if redis:
        try:
            target = parse_redis_url(url)
        except ValueError:
            target = None  # already reported by anchor_sqlite_url
    if target is not None and target.password and r.sources.get("store.url") == r.origin:
        st.error(
            "url",
            "a password is never written in the YAML; give store.password (file: or env:) "
            "or the whole URL in SIDECAR_STORE__URL",
        )
    password = None
    given = st.data.get("password") is not None or any(
        env_name(f"store.password.{k}") in r.env for k in ("file", "env")
    )
    if given:
        password = st.secret("password", what="Redis password")
    else:
        st.seen.add("password")
    tls = {
        name: _readable_file(r, st, name)
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")
    }
    if any(tls.values()) and target is not None and not target.tls:
        st.error("tls_ca_file", "TLS files need a TLS URL: rediss://, rediss+cluster://, …")
    if (tls["tls_cert_file"] is None) != (tls["tls_key_file"] is None):
        st.error("tls_cert_file", "a client certificate needs both tls_cert_file and tls_key_file")
    ack = st.integer("redis_min_replicas_ack", 0, low=0, high=16)
    if not redis:
        for key, value in (("password", password), ("redis_min_replicas_ack", ack), *tls.items()):
            if value:
                st.error(key, "applies to a Redis store only")
    return StoreConfig(
        url=url,
        key_prefix=st.string("key_prefix", "sidecar:"),
        purge_interval=st.duration("purge_interval", 60.0),
        password=password,
        tls_ca_file=tls["tls_ca_file"],
        tls_cert_file=tls["tls_cert_file"],
        tls_key_file=tls["tls_key_file"],
        redis_min_replicas_ack=ack,
        require_persistence=st.boolean("require_persistence", False),
    )


def _readable_file(r: Reader, st: Reader.Node, key: str) -> str | None:
    """An absolute path (relative ones are under the config's directory) that can be read."""
    value = st.optional_string(key)
    if value is None:
        return None
    path = Path(r.base_dir, value)
    if not r.offline:
        try:
            path.read_bytes()
        except OSError as exc:
            st.error(key, f"cannot read {str(path)!r}: {exc.strerror}")
    return str(path.absolute())
