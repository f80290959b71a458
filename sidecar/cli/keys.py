"""``sidecar keygen`` (create, extend, stage, activate, retire) and ``sidecar keys`` (list).

A rolling rotation is three steps, each rolled out everywhere before the next: stage a new
key (every replica can open its links), activate it (new links use it; the old key still
opens), retire the old key once the longest-lived link minted with it has expired.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sidecar.cli.base import CliError, write_private
from sidecar.config import MAX_EXPIRY
from sidecar.config.durations import format_duration, parse_duration
from sidecar.tokens.keys import KeySet, KeysetError, generate_keyset, parse_keyset


def keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", metavar="FILE", help="keyset file to create or change")
    p.add_argument("--kid", help="id of the new key (default: k-<date>-<random>)")
    p.add_argument(
        "--print", action="store_true", dest="to_stdout", help="write the keyset to stdout"
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--staged",
        action="store_true",
        help="add the new key for decryption only; activate it later (rolling rotation step 1)",
    )
    what.add_argument(
        "--activate",
        metavar="KID",
        help="make KID the key new links are sealed with (step 2; the old key still opens)",
    )
    what.add_argument(
        "--retire",
        metavar="KID",
        help="remove KID: links sealed with it stop opening (step 3; never the active key)",
    )
    what.add_argument(
        "--admin-key", action="store_true", help="print a random admin key instead of a keyset"
    )
    p.add_argument(
        "--max-expiry",
        default=format_duration(MAX_EXPIRY),
        metavar="DURATION",
        help="the longest link lifetime, for --retire's warning (default: %(default)s)",
    )


def keygen(args: argparse.Namespace) -> int:
    if args.admin_key:
        print(secrets.token_urlsafe(32))
        return 0
    if args.file is None and not args.to_stdout:
        raise CliError("give a keyset FILE to create or extend, or --print")
    path = Path(args.file) if args.file else None
    existing = read_keyset(path) if path is not None and path.exists() else None
    try:
        if args.activate or args.retire:
            if existing is None:
                raise CliError(f"{args.file}: no such keyset")
            keyset, summary = _change(existing, args)
        elif existing is not None:
            keyset = existing.with_new_key(args.kid, activate=not args.staged)
            kid = next(iter(keyset.keys))
            summary = f"added key {kid} ({keyset.state(kid)})"
        else:
            if args.staged:
                raise CliError("--staged adds to an existing keyset; create it first")
            keyset = generate_keyset(args.kid)
            summary = f"created key {keyset.active_kid} (active)"
    except KeysetError as exc:
        raise CliError(str(exc)) from None
    if args.to_stdout or path is None:
        sys.stdout.write(keyset.to_json())
        return 0
    write_private(path, keyset.to_json(), replace=existing is not None)
    print(f"{path}: {summary}; {len(keyset.keys)} key(s) in the set")
    return 0


def _change(keyset: KeySet, args: argparse.Namespace) -> tuple[KeySet, str]:
    if args.activate:
        previous = keyset.active_kid
        changed = keyset.activate(args.activate)
        if previous == args.activate:
            return changed, f"{args.activate} is already the active key"
        return changed, f"activated {args.activate} ({previous} still opens its links)"
    changed = keyset.retire(args.retire)
    try:
        max_expiry = parse_duration(args.max_expiry)
    except ValueError as exc:
        raise CliError(f"--max-expiry: {exc}") from None
    warning = _retire_warning(keyset, args.retire, max_expiry, time.time())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return changed, f"retired {args.retire}"


def _retire_warning(keyset: KeySet, kid: str, max_expiry: float, now: float) -> str | None:
    """Why retiring ``kid`` now may break links still in users' hands, if it may."""
    state, record = keyset.state(kid), keyset.record(kid)
    if state == "staged":
        return None  # never active: nothing was sealed with it
    if state == "decrypt-only":
        return (
            f"{kid} has no record of when it stopped being active; links sealed with it "
            f"may still be unexpired (for up to {format_duration(max_expiry)} after that)"
        )
    assert record.deactivated is not None  # "previous" means deactivated is known
    until = record.deactivated + max_expiry
    if until <= now:
        return None
    return (
        f"links sealed with {kid} (active until {_show(record.deactivated)}) may be valid "
        f"until {_show(until)}; they fail with 401 from now on"
    )


def keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the keyset file to list")


def keys(args: argparse.Namespace) -> int:
    keyset = read_keyset(Path(args.file))
    rows = [("KID", "STATE", "CREATED", "ACTIVE UNTIL")]
    for kid in keyset.keys:
        record = keyset.record(kid)
        rows.append(
            (
                kid,
                keyset.state(kid),
                _show(record.created) if record.created is not None else "-",
                _show(record.deactivated) if record.deactivated is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    return 0


def read_keyset(path: Path) -> KeySet:
    try:
        return parse_keyset(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {getattr(exc, 'strerror', exc)}") from None
    except KeysetError as exc:
        raise CliError(f"{path}: exists and is not a keyset ({exc}); not changing it") from None


def _show(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
