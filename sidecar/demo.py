"""``sidecar demo``: the bundled demo app behind a real sidecar, with links ready to click.

Nothing to set up. A throw-away keyset, admin key and SQLite file live in a temporary
directory that is removed on exit. The config is written as YAML and read by the same
loader as ``sidecar serve``, the listeners are started by the same :func:`sidecar.app.serve`,
and the printed links are minted through the admin port, as a backend would mint them.
Two roles show both redemption modes: ``Viewer`` (``redeem: direct``) and ``Approver``
(``redeem: confirm``: a GET shows a button, so a mail scanner fetching the link neither logs
in nor uses it up).

The links are the last thing printed, so they stay on screen: the sidecar's JSON logs go to
``sidecar.log`` in the state directory (``--verbose`` sends them to stderr instead).

Ctrl-C or SIGTERM stops everything and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml

from sidecar.tokens.keys import generate_keyset

if TYPE_CHECKING:  # aiohttp is imported when the demo runs, not whenever the CLI starts
    from aiohttp import web

    from sidecar.config import Config

HOST = "127.0.0.1"
IDENTITY_HEADERS = {
    "X-Forwarded-User": "{user_id}",
    "X-Forwarded-Role": "{role}",
    "X-Forwarded-Tenant": "{param.tenant}",
    "X-Forwarded-Module": "{module}",
}


class DemoError(Exception):
    """The demo cannot start (a port in use, …); printed without a traceback."""


@dataclass(frozen=True, slots=True)
class Ports:
    proxy: int
    admin: int
    app: int


@dataclass(frozen=True, slots=True)
class Link:
    title: str
    note: str
    url: str


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_port, default=8080, help="proxy port (0: any free port)")
    p.add_argument("--admin-port", type=_port, default=9091, help="admin port (0: any free port)")
    p.add_argument("--app-port", type=_port, default=0, help="demo app port (default: any free)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="request and audit logs on stderr (default: sidecar.log in the state directory)",
    )


def run(args: argparse.Namespace) -> int:
    """The ``sidecar demo`` command: serve until Ctrl-C or SIGTERM; exit code 0 then."""
    try:
        asyncio.run(demo(args.port, args.admin_port, args.app_port, verbose=args.verbose))
    except DemoError as exc:
        print(f"sidecar demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the listeners took over the signal
        pass
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {port}")
    return port


def demo_config(state: Path, ports: Ports) -> dict[str, object]:
    """The demo's sidecar config: plain http on loopback, SQLite in ``state``."""
    public_url = f"http://{HOST}:{ports.proxy}"
    role = {"one_time": True, "params": ["tenant"], "headers": IDENTITY_HEADERS}
    return {
        "public_url": public_url,
        "keys": {"file": "keyset.json"},
        "admin": {"listen": f"{HOST}:{ports.admin}", "key": {"file": "admin.key"}},
        "proxy": {"listen": f"{HOST}:{ports.proxy}", "upstream": f"http://{HOST}:{ports.app}"},
        "session": {"cookie_secure": False},  # the demo is plain http on loopback
        "store": {"url": "sqlite:///" + str(state / "sidecar.db")},
        "default_role": "Viewer",
        "roles": {
            "Viewer": {**role, "redeem": "direct"},
            "Approver": {**role, "redeem": "confirm"},
        },
        "logging": {"level": "info"},
        "shutdown": {"grace_period": "5s"},
    }


def write_state(state: Path, ports: Ports) -> tuple[Path, str]:
    """Write a fresh keyset, admin key and config into ``state``; return (config, admin key)."""
    admin_key = secrets.token_urlsafe(32)
    _write_private(state / "keyset.json", generate_keyset().to_json())
    _write_private(state / "admin.key", admin_key + "\n")
    config_path = state / "sidecar.yaml"
    text = "# Written by `sidecar demo`; removed when it stops.\n"
    text += yaml.dump(demo_config(state, ports), Dumper=_PlainDumper, sort_keys=False)
    config_path.write_text(text, encoding="utf-8")
    return config_path, admin_key


class _PlainDumper(yaml.SafeDumper):
    """Writes a mapping used twice (the roles share their headers) in full both times,
    without ``&id001`` anchors and ``*id001`` aliases a reader would have to decode."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def demo(
    proxy_port: int,
    admin_port: int,
    app_port: int,
    out: TextIO = sys.stdout,
    *,
    verbose: bool = False,
) -> None:
    """Run the demo app and the sidecar in front of it until SIGINT/SIGTERM."""
    from aiohttp import web

    from sidecar.demo_app import build_demo_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app_runner = web.AppRunner(build_demo_app(logout_url="/_sidecar/logout"), access_log=None)
    await app_runner.setup()
    try:
        try:
            await web.TCPSite(app_runner, HOST, app_port).start()
        except OSError as exc:
            raise DemoError(f"cannot listen on {HOST}:{app_port}: {exc.strerror}") from None
        ports = Ports(
            proxy=proxy_port or _free_port(),
            admin=admin_port or _free_port(),
            app=_bound_port(app_runner),
        )
        with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp:
            await _run_sidecar(Path(tmp), ports, stop, out, verbose=verbose)
    finally:
        await app_runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print("sidecar demo: stopped; the temporary keys and database are gone.", file=out)
    out.flush()


async def _run_sidecar(
    state: Path, ports: Ports, stop: asyncio.Event, out: TextIO, *, verbose: bool
) -> None:
    """Serve the sidecar from a config written into ``state`` until ``stop`` is set."""
    from sidecar.config import ConfigError, load_config
    from sidecar.web.logsetup import configure_logging

    config_path, admin_key = write_state(state, ports)
    try:
        config = load_config(config_path)
    except ConfigError as exc:  # a bug in demo_config(), never the user's doing
        raise DemoError(str(exc)) from None
    log_path = state / "sidecar.log"
    with contextlib.ExitStack() as logs:
        stream = None if verbose else logs.enter_context(log_path.open("a", encoding="utf-8"))
        configure_logging(
            config.log_level,
            stream,
            access=config.access_log,
            buffer=config.access_buffer,
            flush_after=config.access_flush,
            backlog=config.log_backlog,
        )
        # Back to stderr before the file closes (whatever is logged after the serve ends).
        logs.callback(configure_logging, "warning")
        log_note = "stderr" if verbose else str(log_path)
        await _serve_and_print(config, admin_key, ports, state, stop, out, log_note)


async def _serve_and_print(
    config: Config,
    admin_key: str,
    ports: Ports,
    state: Path,
    stop: asyncio.Event,
    out: TextIO,
    log_note: str,
) -> None:
    from sidecar.app import ServeError, build_services, serve

    ready = asyncio.Event()
    server = asyncio.create_task(serve(build_services(config), ready=ready, stop=stop))
    waiters = {asyncio.ensure_future(ready.wait()), asyncio.ensure_future(stop.wait())}
    await asyncio.wait({server, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    try:
        if ready.is_set() and not stop.is_set():
            admin_url = f"http://{HOST}:{ports.admin}"
            links = await mint_links(admin_url, admin_key)
            curl = curl_command(admin_url, admin_key)
            print(banner(ports, state, links, curl, log_note), file=out)
            out.flush()
    except BaseException:
        stop.set()  # shut the sidecar down cleanly before the error goes up
        await asyncio.gather(server, return_exceptions=True)
        raise
    try:
        await server
    except ServeError as exc:
        raise DemoError(f"{exc}; pick other ports with --port and --admin-port") from None


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    port: int = address[1]
    return port


DEMO_MINTS: tuple[tuple[str, str, Mapping[str, object]], ...] = (
    (
        "One-time link (Viewer alice, module orders)",
        "works once: open it again, or in another browser, to see 'link already used'",
        {"userId": "alice", "module": "orders", "additionalParams": {"tenant": "acme"}},
    ),
    (
        "Reusable link (Viewer bob, module reports, 8 hours)",
        "works until it expires, in any browser",
        {
            "userId": "bob",
            "module": "reports",
            "oneTimeUse": False,
            "expireMeasure": "hours",
            "expireOffset": 8,
            "additionalParams": {"tenant": "globex"},
        },
    ),
    (
        "Confirm link (Approver carol, redeem: confirm)",
        "a GET only shows a button, so a mail scanner cannot use it up; the click logs in",
        {
            "userId": "carol",
            "module": "approvals",
            "additionalParams": {"role": "Approver", "tenant": "acme"},
        },
    ),
)
CURL_BODY = {"userId": "dave", "module": "orders", "additionalParams": {"tenant": "acme"}}


async def mint_links(admin_url: str, admin_key: str) -> list[Link]:
    """Mint the demo's links through the admin port, as the app's backend would."""
    import aiohttp

    headers = {"Authorization": f"Bearer {admin_key}"}
    links = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for title, note, body in DEMO_MINTS:
            async with session.post(admin_url + "/referstring", json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    raise DemoError(f"minting a demo link failed: {response.status} {answer}")
            links.append(Link(title, note, str(answer["url"])))
    return links


def curl_command(admin_url: str, admin_key: str) -> str:
    return shlex.join(
        [
            "curl",
            "-s",
            admin_url + "/referstring",
            "-H",
            f"Authorization: Bearer {admin_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(CURL_BODY),
        ]
    )


def banner(ports: Ports, state: Path, links: list[Link], curl: str, logs: str) -> str:
    """What the demo prints once it is up; the links come last, so they stay in view."""
    lines = [
        "",
        "sidecar demo is running. Ctrl-C stops it.",
        "",
        f"  proxy     http://{HOST}:{ports.proxy}   <- open the links below",
        f"  admin     http://{HOST}:{ports.admin}   (loopback only; mints links)",
        f"  demo app  http://{HOST}:{ports.app}  (the unmodified app; alone it knows no one)",
        f"  state     {state}  (throw-away keys, config and SQLite; removed on exit)",
        f"  logs      {logs}",
        "",
        "Mint another through the admin port (the throw-away admin key is in the command):",
        f"  {curl}",
        "",
    ]
    for link in links:
        lines += [f"{link.title}: {link.note}", f"  {link.url}", ""]
    return "\n".join(lines)
