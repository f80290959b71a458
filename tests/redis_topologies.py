"""Real Redis topologies on loopback: a Redis Cluster, a primary with replicas and three
Sentinels, and one Redis over TLS with an ACL user. Started as child processes, polled
until ready (never a fixed sleep), stopped at teardown.

Each topology says how the sidecar reaches it (``url`` + ``options``), how a test
inspects it as an administrator (``admin()``), and the key prefix it must use
(``prefix``; the TLS server's ACL user may touch nothing else).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from sidecar.store.redis_client import RedisOptions
from tests.conftest import end_process, executable
from tests.harness import free_port

READY_TIMEOUT = 20.0
ACL_PREFIX = "sidecar-acl:"
ACL_PASSWORD = "acl-" + "p" * 28
ADMIN_PASSWORD = "admin-" + "q" * 26
SERVICE = "sidecar"


def redis_exe() -> str:
    return executable("redis-server", "redis-server is not installed")


def redis_cli() -> str:
    return executable("redis-cli", "redis-cli (Debian redis-tools) is not installed")


def wait_for(what: str, check: Callable[[], object], timeout: float = READY_TIMEOUT) -> float:
    """Poll ``check`` until it is true; return the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except (RedisError, OSError):
            pass
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Node:
    """One redis-server (or sentinel) process on a loopback TCP port."""

    port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: dict[str, Any] = field(default_factory=dict)  # client TLS settings for cmd()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def cmd(self, *args: str | int, **kwargs: Any) -> Any:
        """Run one command on a fresh connection, closed afterwards."""
        with SyncRedis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=2,
            decode_responses=True,
            **{**self.tls, **kwargs},
        ) as client:
            return client.execute_command(*args)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen server cannot exit
            end_process(proc)


def _server(directory: Path, name: str, *extra: str, port: int | None = None) -> Node:
    port = port or free_port()
    work = directory / name
    work.mkdir(exist_ok=True)
    args = [
        redis_exe(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(work), "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0", *extra,
    ]  # fmt: skip
    return Node(port, args, directory / f"{name}.log")


@dataclass
class Topology:
    """What a test needs to use and inspect one running Redis topology."""

    name: str
    url: str
    options: RedisOptions = field(default_factory=RedisOptions)
    prefix: str = "t"  # a test's key prefix must start with this
    nodes: list[Node] = field(default_factory=list)
    admin: Callable[[], Redis | RedisCluster] = field(default=lambda: Redis())

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


# -- Redis Cluster ----------------------------------------------------------------------
def start_cluster(
    directory: Path, *, primaries: int = 3, replicas: int = 1, pki: Pki | None = None
) -> Topology:
    """``primaries`` x (1 + ``replicas``) nodes joined by ``redis-cli --cluster create``;
    with ``pki``, TLS only (clients, replication and the cluster bus)."""
    cli = redis_cli()
    cli_tls = [] if pki is None else ["--tls", "--cacert", str(pki.ca)]
    nodes = []
    for i in range(primaries * (1 + replicas)):
        port = free_port()
        tls_args = [] if pki is None else [
            "--tls-port", str(port), "--tls-cluster", "yes", "--tls-replication", "yes",
            "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip
        node = _server(
            directory, f"cluster{i}", "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / f"nodes{i}.conf"),
            "--cluster-node-timeout", "1000", "--cluster-port", str(free_port()),
            "--cluster-replica-validity-factor", "0", *tls_args, port=port,
        )  # fmt: skip
        if pki is not None:
            node.args[node.args.index("--port") + 1] = "0"
            node.tls = {"ssl": True, "ssl_ca_certs": str(pki.ca)}
        node.start()
        nodes.append(node)
    topology = Topology("cluster", "", nodes=nodes)
    try:
        for node in nodes:
            wait_for(f"cluster node {node.port}", functools.partial(node.cmd, "PING"))
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [cli, *cli_tls, "--cluster", "create", *addresses, "--cluster-replicas",
             str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for node in nodes:
            wait_for("cluster_state:ok", functools.partial(_cluster_ok, node, replicas))
    except BaseException:
        topology.stop()
        raise
    ports = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    topology.url = f"redis{'' if pki is None else 's'}+cluster://{ports}/"
    if pki is not None:
        topology.options = RedisOptions(tls_ca_file=str(pki.ca))

    def admin() -> RedisCluster:
        start = [ClusterNode("127.0.0.1", n.port) for n in nodes if n.proc is not None]
        return RedisCluster(startup_nodes=start, decode_responses=True, **nodes[0].tls)

    topology.admin = admin
    return topology


def _cluster_ok(node: Node, replicas: int) -> bool:
    if "cluster_state:ok" not in str(node.cmd("CLUSTER", "INFO")):
        return False
    role = node.cmd("INFO", "replication")
    if role["role"] == "master":
        return int(role["connected_slaves"]) >= replicas
    return bool(role["master_link_status"] == "up")


def cluster_primary_for(topology: Topology, key: str) -> Node:
    """The node that serves ``key``'s slot now."""
    live = next(n for n in topology.nodes if n.proc is not None)
    slot = int(live.cmd("CLUSTER", "KEYSLOT", key))
    for start, end, primary, *_ in live.cmd("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            port = int(primary[1])
            return next(n for n in topology.nodes if n.port == port)
    raise AssertionError(f"slot {slot} is not served")


# -- primary + replicas + 3 sentinels ---------------------------------------------------
def _tls_only(node: Node, pki: Pki) -> None:
    """Make a not yet started server speak TLS only (clients, replication)."""
    node.args[node.args.index("--port") + 1] = "0"
    node.args += [
        "--tls-port", str(node.port), "--tls-replication", "yes",
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
    ]  # fmt: skip
    node.tls = {"ssl": True, "ssl_ca_certs": str(pki.ca)}


def start_sentinel(directory: Path, *, replicas: int = 1, pki: Pki | None = None) -> Topology:
    """A primary, ``replicas`` replicas and three Sentinels (quorum 2, down after 1 s)
    that already know each other, so no gossip round is awaited. With ``pki``, every
    connection is TLS (clients, replication, Sentinels)."""
    primary = _server(directory, "primary")
    servers = [primary] + [
        _server(directory, f"replica{i}", "--replicaof", "127.0.0.1", str(primary.port))
        for i in range(replicas)
    ]
    if pki is not None:
        for server in servers:
            _tls_only(server, pki)
    sentinel_ports = [free_port() for _ in range(3)]
    ids = [f"{i + 1:040x}" for i in range(3)]
    sentinels = []
    # failover-timeout also bounds a Sentinel leader election, and a failed one is retried
    # only after twice that: three Sentinels that see the primary down within the same
    # few milliseconds can each vote for themselves (a split vote, seen in a CI run:
    # "-failover-abort-not-elected", the retry 20 s later with 10000). At 5000 one split
    # vote delays a failover by about 10 s, inside the failover tests' 20 s bound; a
    # promotion on this loopback takes about a second, far inside 5 s.
    for i, port in enumerate(sentinel_ports):
        lines = [
            f"port {port}", "bind 127.0.0.1", f"dir {directory}", f"sentinel myid {ids[i]}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} 1000",
            f"sentinel failover-timeout {SERVICE} 5000",
            f"sentinel parallel-syncs {SERVICE} {replicas}",
        ]  # fmt: skip
        lines += [
            f"sentinel known-sentinel {SERVICE} 127.0.0.1 {p} {ids[j]}"
            for j, p in enumerate(sentinel_ports)
            if j != i
        ]
        lines += [f"sentinel known-replica {SERVICE} 127.0.0.1 {s.port}" for s in servers[1:]]
        if pki is not None:
            lines[0] = "port 0"
            lines += [
                f"tls-port {port}", "tls-replication yes", f"tls-cert-file {pki.server_cert}",
                f"tls-key-file {pki.server_key}", f"tls-ca-cert-file {pki.ca}",
                "tls-auth-clients no",
            ]  # fmt: skip
        config = directory / f"sentinel{i}.conf"
        config.write_text("\n".join(lines) + "\n")
        args = [redis_exe(), str(config), "--sentinel"]
        sentinels.append(Node(port, args, directory / f"sentinel{i}.log"))
        if pki is not None:
            sentinels[-1].tls = {"ssl": True, "ssl_ca_certs": str(pki.ca)}
    topology = Topology("sentinel", "", nodes=[*servers, *sentinels])
    try:
        for node in topology.nodes:
            node.start()
        wait_for("primary with replicas", lambda: _replicated(primary, replicas))
        for node in sentinels:
            ready = functools.partial(_sentinel_ready, node, primary.port, replicas)
            wait_for("sentinel", ready)
    except BaseException:
        topology.stop()
        raise
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinel_ports)
    topology.url = f"redis{'' if pki is None else 's'}+sentinel://{hosts}/{SERVICE}/0"
    if pki is not None:
        topology.options = RedisOptions(tls_ca_file=str(pki.ca))

    def admin() -> Redis:
        host, port = sentinels[0].cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return Redis(host=host, port=int(port), decode_responses=True, **primary.tls)

    topology.admin = admin
    return topology


def _replicated(primary: Node, replicas: int) -> bool:
    return int(primary.cmd("INFO", "replication")["connected_slaves"]) >= replicas


def _sentinel_ready(node: Node, primary_port: int, replicas: int) -> bool:
    addr = node.cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
    known = node.cmd("SENTINEL", "REPLICAS", SERVICE)
    return bool(addr and int(addr[1]) == primary_port and len(known) >= replicas)


def sentinel_primary(topology: Topology) -> Node:
    """The data node the first live sentinel currently names as primary."""
    for node in topology.nodes:
        if "--sentinel" in node.args and node.proc is not None:
            _, port = node.cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return next(n for n in topology.nodes if n.port == int(port))
    raise AssertionError("no sentinel is running")


# -- TLS + ACL --------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it alone must fail


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path: Path, cert: x509.Certificate, private: ec.EllipticCurvePrivateKey) -> None:
        path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.with_suffix(".key").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        private = key()
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(private, hashes.SHA256())
        )  # fmt: skip
        return cert, private

    def leaf(
        cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        private = key()
        # Servers are clients too: of each other's cluster bus and of a primary (replication).
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[0].subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )  # fmt: skip
        if server:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer[1], hashes.SHA256()), private

    authority = ca("sidecar test CA")
    write(directory / "ca", *authority)
    write(directory / "server", *leaf("127.0.0.1", authority, server=True))
    write(directory / "client", *leaf("sidecar", authority, server=False))
    write(directory / "other-ca", *ca("unrelated CA"))
    return Pki(
        directory / "ca.crt", directory / "server.crt", directory / "server.key",
        directory / "client.crt", directory / "client.key", directory / "other-ca.crt",
    )  # fmt: skip


# What the sidecar needs, and only under its prefix: no FLUSHALL, CONFIG, KEYS, DEBUG...
ACL_RULES = (
    f"on >{ACL_PASSWORD} ~{ACL_PREFIX}* resetchannels -@all +@read +@write +@scripting "
    "+@connection +@transaction +time +wait -@dangerous"
)


def start_tls(directory: Path) -> Topology:
    """One Redis that speaks only TLS, wants a client certificate, and lets user
    ``sidecar`` touch only ``sidecar-acl:*``. The default user is an administrator with
    its own password (for the tests' inspection)."""
    pki = make_pki(directory)
    port = free_port()
    node = _server(
        directory, "tls", "--tls-port", str(port), "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca),
        "--tls-auth-clients", "yes", "--requirepass", ADMIN_PASSWORD,
        "--user", "sidecar", *ACL_RULES.split(), port=port,
    )  # fmt: skip
    node.args[node.args.index("--port") + 1] = "0"  # TLS only: no plain-text port at all
    tls: dict[str, Any] = {
        "ssl": True, "ssl_ca_certs": str(pki.ca), "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }  # fmt: skip
    node.start()
    topology = Topology("tls", "", nodes=[node], prefix=ACL_PREFIX)
    try:
        wait_for("TLS redis", lambda: bool(node.cmd("PING", password=ADMIN_PASSWORD, **tls)))
    except BaseException:
        topology.stop()
        raise
    topology.url = f"rediss://sidecar@127.0.0.1:{port}/0"
    topology.options = RedisOptions(
        password=ACL_PASSWORD,
        tls_ca_file=str(pki.ca),
        tls_cert_file=str(pki.client_cert),
        tls_key_file=str(pki.client_key),
    )
    topology.admin = lambda: Redis(
        host="127.0.0.1", port=port, password=ADMIN_PASSWORD, decode_responses=True, **tls
    )
    return topology


def pki_of(topology: Topology) -> Pki:
    """The PKI files of a topology started by :func:`start_tls`."""
    assert topology.options.tls_ca_file is not None
    directory = Path(topology.options.tls_ca_file).parent
    return Pki(*(directory / f for f in (
        "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "other-ca.crt",
    )))  # fmt: skip
