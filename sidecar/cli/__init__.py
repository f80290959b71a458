"""The ``sidecar`` command.

Subcommands are rows of :data:`COMMANDS` (name, help, argument setup, runner); adding one
is adding a row. Every runner returns the exit code; errors go to stderr with exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sidecar import __version__, demo
from sidecar.cli import admin, check, keys, starter
from sidecar.cli.base import CliError, Command

__all__ = ["COMMANDS", "CliError", "Command", "build_parser", "main"]


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the YAML config")
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="serving processes sharing the ports (SO_REUSEPORT) under one supervisor; "
        "auto: one per core (default 1: a single process, no supervisor)",
    )


def _serve(args: argparse.Namespace) -> int:
    from sidecar.workers import parse_workers, shared_metrics_dir

    try:
        workers = parse_workers(args.workers)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if workers == 1:
        from sidecar.app import run  # imports the whole server only when serving

        return run(args.config)
    with shared_metrics_dir():  # set before anything imports prometheus-client
        from sidecar.app import run

        return run(args.config, workers)


COMMANDS: list[Command] = [
    Command("init", "write a starter config, keyset and admin key", starter.args, starter.run),
    Command("serve", "run the proxy and admin listeners", _serve_args, _serve),
    Command(
        "keygen",
        "create a keyset, or stage, activate or retire a key",
        keys.keygen_args,
        keys.keygen,
    ),
    Command("keys", "list a keyset's keys: state and dates", keys.keys_args, keys.keys),
    Command(
        "check-config", "validate a config; list every error", check.check_args, check.check_config
    ),
    Command("mint", "mint a link through the admin port", admin.mint_args, admin.mint),
    Command("revoke", "revoke a minted link by its id", admin.revoke_args, admin.revoke),
    Command("sessions", "end a user's sessions", admin.sessions_args, admin.sessions),
    Command("demo", "the demo app behind a sidecar, links ready", demo.configure, demo.run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="refer links into sessions")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"sidecar {args.command}: {exc}", file=sys.stderr)
        return 1
    return code
