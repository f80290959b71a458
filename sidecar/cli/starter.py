"""``sidecar init DIR``: a starter config, keyset and admin key that serve as they are.

Nothing is overwritten: if any of the three files exists, nothing is written. The keyset
and the admin key are 0600, the directory (when created) 0700; an existing one that group or
others may write (and is not sticky) is refused. Every path in the config is
relative to its directory, so the directory can be moved as a whole.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.cli.base import CliError, write_private
from sidecar.config import ConfigError, parse_config
from sidecar.tokens.keys import generate_keyset

FILES = ("sidecar.yaml", "keyset.json", "admin.key")

_TEMPLATE = """\
# Written by `sidecar init` on {date}. Check it with: sidecar check-config {config}
# Every key, its default and what it does: config/sidecar.yaml in the sidecar repository.
# Relative paths are relative to this file's directory. Any scalar can be overridden from
# the environment: SIDECAR_PROXY__UPSTREAM=... (upper case, `__` between levels).

public_url: {public_url}

keys:
  file: keyset.json          # rotate: sidecar keygen keyset.json --staged, --activate, --retire

admin:
  listen: {admin_listen}     # loopback only
  key:
    file: admin.key          # `sidecar mint --config {config}` reads it from here

proxy:
  listen: {listen}
  upstream: {upstream}

session:
  cookie_secure: {cookie_secure}       # {secure_why}

store:
  url: sqlite:///sidecar.db  # beside this file

default_role: Authenticated

roles:
  Authenticated:
    max_expiry: 7d
    session_lifetime: 8h
    idle_timeout: 1h
    params: [tenant, locale]   # additionalParams a mint may set (--param tenant=acme)
    headers:                   # what the app receives; client copies are always stripped
      X-Forwarded-User: "{{user_id}}"
      X-Forwarded-Role: "{{role}}"
      X-Forwarded-Email: "{{email}}"
      X-Forwarded-Tenant: "{{param.tenant}}"

links:
  create_user_on_magiclink: true   # a magiclink for a new address creates the user

logging:
  level: info
"""


def args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory to write into (created if missing)")
    p.add_argument("--upstream", required=True, help="the app's URL, e.g. http://127.0.0.1:3000")
    p.add_argument(
        "--public-url",
        required=True,
        help="the URL users' browsers reach, e.g. https://app.example.com",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="the proxy's listener (default: 127.0.0.1 and the public URL's port for a "
        "loopback public URL, else 0.0.0.0:8080)",
    )
    p.add_argument(
        "--admin-listen",
        default="127.0.0.1:9091",
        metavar="HOST:PORT",
        help="the admin listener (default: %(default)s)",
    )


def run(ns: argparse.Namespace) -> int:
    directory = Path(ns.dir)
    config = directory / "sidecar.yaml"
    text = _TEMPLATE.format(
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        config=config,
        # JSON strings are YAML strings: a '#' or ': ' in a value stays part of it.
        public_url=json.dumps(ns.public_url),
        upstream=json.dumps(ns.upstream),
        listen=json.dumps(ns.listen or _default_listen(ns.public_url)),
        admin_listen=json.dumps(ns.admin_listen),
        cookie_secure="true" if ns.public_url.startswith("https:") else "false",
        secure_why="https: the cookie never travels over http"
        if ns.public_url.startswith("https:")
        else "the public URL is plain http",
    )
    _check(text, directory)
    existing = [name for name in FILES if (directory / name).exists()]
    if existing:
        raise CliError(f"{directory}: {', '.join(existing)} already there; not overwriting")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{directory}: cannot create: {exc.strerror}") from None
    _refuse_shared(directory)
    files = (
        (directory / "keyset.json", generate_keyset().to_json()),
        (directory / "admin.key", secrets.token_urlsafe(32) + "\n"),
        (config, text),
    )
    written: list[Path] = []
    try:
        for path, content in files:
            write_private(path, content, replace=False)
            written.append(path)
    except CliError:
        # All three or none: a half-made directory would be refused by the next try.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    print(f"{directory}: wrote sidecar.yaml, keyset.json and admin.key (0600)")
    print(f"  serve:  sidecar serve --config {config}")
    print(f"  mint:   sidecar mint --config {config} --user alice")
    return 0


def _refuse_shared(directory: Path) -> None:
    """Whoever can write ``directory`` can replace the keyset (and forge every link) or the
    admin key after they are written: refuse one writable by group or others, unless it is
    sticky (as /tmp is: others cannot replace files they do not own)."""
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise CliError(
            f"{directory}: writable by other users (mode {stat.S_IMODE(mode):o}), who could "
            "replace the keyset or the admin key; chmod go-w it or choose another directory"
        )


def _default_listen(public_url: str) -> str:
    parts = urlsplit(public_url)
    try:
        loopback = (
            parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
        )
    except ValueError:
        loopback = False
    if loopback:
        return f"127.0.0.1:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return "0.0.0.0:8080"


def _check(text: str, directory: Path) -> None:
    """The config as it will be written passes the loader (offline: no secrets yet)."""
    flags = {"public_url": "--public-url", "proxy.upstream": "--upstream"}
    flags |= {"proxy.listen": "--listen", "admin.listen": "--admin-listen"}
    try:
        parse_config(text, env={}, base_dir=directory, offline=True)
    except ConfigError as exc:
        shown = []
        for error in exc.errors:
            path, _, message = error.partition(": ")
            shown.append(f"{flags.get(path, path)}: {message}")
        raise CliError("; ".join(shown)) from None
