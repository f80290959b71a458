"""``sidecar check-config``: every error at once, or a summary with where values came from."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from sidecar.config import ConfigError, read_config
from sidecar.store import durability_warnings


def check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the YAML config to check")
    p.add_argument(
        "--offline",
        action="store_true",
        help="check without the secrets (keyset, admin key) being present, e.g. in CI",
    )


def check_config(args: argparse.Namespace) -> int:
    try:
        loaded = read_config(args.file, offline=args.offline)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    cfg = loaded.config
    roles = ", ".join(f"{n} (default)" if n == cfg.default_role else n for n in cfg.roles)
    for warning in durability_warnings(cfg.store.url):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK" + (" (offline: secrets not read)" if args.offline else ""))
    print(f"  public url  {cfg.public_url}")
    print(f"  admin       {cfg.admin.listen}")
    print(f"  proxy       {cfg.proxy.listen} -> {cfg.proxy.upstream}")
    if cfg.metrics_listen is not None:
        print(f"  metrics     {cfg.metrics_listen}")
    print(f"  store       {without_password(cfg.store.url)}")
    print(f"  roles       {roles}")
    if args.offline:
        print("  keys        not read (--offline)")
    else:
        print(f"  keys        {len(cfg.keyset.keys)} (active {cfg.keyset.active_kid})")
    if loaded.sources:
        width = max(len(path) for path in loaded.sources)
        print("  set (everything else is a default):")
        for path, source in loaded.sources.items():
            shown = args.file if source == "file" else source
            print(f"    {path.ljust(width)}  {shown}")
    return 0


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":****@", 1)
