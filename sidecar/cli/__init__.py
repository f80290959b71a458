"""The ``sidecar`` command.

Subcommands are rows of :data:`COMMANDS` (name, help, argument setup, runner); adding one
is adding a row. Every runner returns the exit code; errors go to stderr with exit 1.
:func:`main` imports only the module of the command it runs (:class:`Command`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sidecar import __version__, compiled
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
    # Before anything imports aiohttp: frozenlist's C++ extension (aiohttp's signal and
    # cleanup lists) maps libstdc++ into the process, 1.1 MiB of RSS measured, for lists
    # read a few times per request on aiohttp's path only; the pure-Python FrozenList is
    # the same API over a list. An operator's own setting of the variable wins.
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
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
    Command(
        "init",
        "write a starter config, keyset and admin key",
        "sidecar.cli.starter:args",
        "sidecar.cli.starter:run",
    ),
    Command(
        "serve",
        "run the proxy and admin listeners",
        "sidecar.cli:_serve_args",
        "sidecar.cli:_serve",
    ),
    Command(
        "keygen",
        "create a keyset, or stage, activate or retire a key",
        "sidecar.cli.keys:keygen_args",
        "sidecar.cli.keys:keygen",
    ),
    Command(
        "keys",
        "list a keyset's keys: state and dates",
        "sidecar.cli.keys:keys_args",
        "sidecar.cli.keys:keys",
    ),
    Command(
        "check-config",
        "validate a config; list every error",
        "sidecar.cli.check:check_args",
        "sidecar.cli.check:check_config",
    ),
    Command(
        "mint",
        "mint a link through the admin port",
        "sidecar.cli.admin:mint_args",
        "sidecar.cli.admin:mint",
    ),
    Command(
        "revoke",
        "revoke a minted link by its id",
        "sidecar.cli.admin:revoke_args",
        "sidecar.cli.admin:revoke",
    ),
    Command(
        "sessions",
        "end a user's sessions",
        "sidecar.cli.admin:sessions_args",
        "sidecar.cli.admin:sessions",
    ),
    Command(
        "demo",
        "the demo app behind a sidecar, links ready",
        "sidecar.demo:configure",
        "sidecar.demo:run",
    ),
]


def version_line() -> str:
    """``sidecar 0.1.0; hot path compiled with mypyc (21 modules)``: the version and the build
    (:mod:`sidecar.compiled`)."""
    return f"sidecar {__version__}; hot path {compiled.state().describe()}"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the other commands are listed but not built
    (their modules are not imported)."""
    parser = argparse.ArgumentParser(prog="sidecar", description="refer links into sessions")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if only is None or command.name == only:
            command.add_arguments(p)
        p.set_defaults(chosen=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first word that is not an option (only -h and --version come
    # before it); anything else builds the whole parser, which then explains.
    word = next((a for a in argv if not a.startswith("-")), None)
    only = word if any(c.name == word for c in COMMANDS) else None
    args = build_parser(only).parse_args(argv)
    command: Command = args.chosen
    try:
        code = command.invoke(args)
    except CliError as exc:
        print(f"sidecar {args.command}: {exc}", file=sys.stderr)
        return 1
    return code
