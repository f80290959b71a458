"""The ``sidecar`` command: serve, keygen, check-config, mint.

Subcommands are rows of :data:`COMMANDS` (name, help, argument setup, runner); adding one
is adding a row. Every runner returns the exit code; errors go to stderr with exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sidecar import demo
from sidecar.config import LINK_TYPES, Config, ConfigError, load_config
from sidecar.store import durability_warnings
from sidecar.tokens.keys import KeySet, KeysetError, generate_keyset, parse_keyset


class CliError(Exception):
    """A user-facing failure: printed to stderr, exit 1."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- serve -------------------------------------------------------------------------------


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the YAML config")


def _serve(args: argparse.Namespace) -> int:
    from sidecar.app import run  # imports the whole server only when serving

    return run(args.config)


# -- keygen ------------------------------------------------------------------------------


def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", metavar="FILE", help="keyset file to create or extend")
    p.add_argument("--kid", help="id of the new key (default: k-<date>-<random>)")
    p.add_argument(
        "--print", action="store_true", dest="to_stdout", help="write the keyset to stdout"
    )
    p.add_argument(
        "--admin-key", action="store_true", help="print a random admin key instead of a keyset"
    )


def _keygen(args: argparse.Namespace) -> int:
    if args.admin_key:
        print(secrets.token_urlsafe(32))
        return 0
    if args.file is None and not args.to_stdout:
        raise CliError("give a keyset FILE to create or extend, or --print")
    path = Path(args.file) if args.file else None
    existing = _read_keyset(path) if path is not None and path.exists() else None
    try:
        keyset = existing.with_new_key(args.kid) if existing else generate_keyset(args.kid)
    except KeysetError as exc:
        raise CliError(str(exc)) from None
    if args.to_stdout or path is None:
        sys.stdout.write(keyset.to_json())
        return 0
    _write_private(path, keyset.to_json(), replace=existing is not None)
    verb = "added" if existing else "created"
    print(f"{path}: {verb} key {keyset.active_kid} (active); {len(keyset.keys)} key(s) in the set")
    return 0


def _read_keyset(path: Path) -> KeySet:
    try:
        return parse_keyset(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {exc}") from None
    except KeysetError as exc:
        raise CliError(f"{path}: exists and is not a keyset ({exc}); not overwriting it") from None


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` readable by the owner only, atomically; never clobber a new file."""
    try:
        if not replace:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise CliError(f"{path}: cannot write: {exc.strerror}") from None


# -- check-config ------------------------------------------------------------------------


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the YAML config to check")


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    roles = ", ".join(f"{n} (default)" if n == cfg.default_role else n for n in cfg.roles)
    for warning in durability_warnings(cfg.store.url):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK")
    print(f"  public url  {cfg.public_url}")
    print(f"  admin       {cfg.admin.listen}")
    print(f"  proxy       {cfg.proxy.listen} -> {cfg.proxy.upstream}")
    if cfg.metrics_listen is not None:
        print(f"  metrics     {cfg.metrics_listen}")
    print(f"  store       {_without_password(cfg.store.url)}")
    print(f"  roles       {roles}")
    print(f"  keys        {len(cfg.keyset.keys)} (active {cfg.keyset.active_kid})")
    return 0


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":****@", 1)


# -- mint --------------------------------------------------------------------------------

_EXPIRE = re.compile(r"(\d+)\s*(s|m|h|d)")
_MEASURE = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _mint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", default="refer", choices=("refer", *LINK_TYPES), help="link kind")
    p.add_argument("--admin-url", help="admin listener (default: from --config, else :9091)")
    p.add_argument("--config", metavar="FILE", help="read the admin key and URL from here")
    p.add_argument("--admin-key-file", metavar="FILE", help="file holding the admin key")
    p.add_argument("--admin-key-env", metavar="VAR", help="env var (default SIDECAR_ADMIN_KEY)")
    refer = p.add_argument_group("refer links (--type refer)")
    refer.add_argument("--user", help="userId (required for refer links)")
    refer.add_argument("--role", help="additionalParams.role (default: the config's)")
    refer.add_argument("--module", help="bind the link to #/display/<module>")
    refer.add_argument("--expire", help="lifetime like 90s, 15m, 2h, 7d (default: config)")
    once = refer.add_mutually_exclusive_group()
    once.add_argument("--one-time", dest="one_time", action="store_true", default=None)
    once.add_argument("--reusable", dest="one_time", action="store_false")
    refer.add_argument("--param", action="append", default=[], metavar="K=V", help="repeatable")
    link = p.add_argument_group("auth links (--type signup|magiclink|recovery|invite|...)")
    link.add_argument("--email", help="the user's email (required for auth links)")
    link.add_argument("--redirect-to", help="where the link lands after verification")
    link.add_argument("--password", help="signup only: the new user's password")
    link.add_argument("--new-email", help="email_change only: the new address")


def _mint(args: argparse.Namespace) -> int:
    key, admin_url = _admin_access(args)
    if args.type == "refer":
        answer = _post(admin_url, "/referstring", key, _refer_body(args))
        print(answer.get("url", ""))
        return 0
    if not args.email:
        raise CliError("--email is required for auth links")
    body: dict[str, object] = {"type": args.type, "email": args.email}
    for name in ("redirect_to", "password", "new_email"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    answer = _post(admin_url, "/admin/generate_link", key, body)
    print(answer.get("action_link", ""))
    print(f"email_otp: {answer.get('email_otp', '')}")
    return 0


def _refer_body(args: argparse.Namespace) -> dict[str, object]:
    if not args.user:
        raise CliError("--user is required for refer links")
    body: dict[str, object] = {"userId": args.user}
    params: dict[str, object] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--param: expected NAME=VALUE, got {item!r}")
        params[name] = value
    if args.role:
        params["role"] = args.role
    if params:
        body["additionalParams"] = params
    if args.module:
        body["module"] = args.module
    if args.expire:
        match = _EXPIRE.fullmatch(args.expire.strip())
        if match is None:
            raise CliError(
                f"--expire: expected a lifetime like 90s, 15m, 2h or 7d, got {args.expire!r}"
            )
        body["expireOffset"] = int(match.group(1))
        body["expireMeasure"] = _MEASURE[match.group(2)]
    if args.one_time is not None:
        body["oneTimeUse"] = args.one_time
    return body


def _admin_access(args: argparse.Namespace) -> tuple[str, str]:
    """The admin key and URL: --admin-key-file, then --admin-key-env, then --config,
    then $SIDECAR_ADMIN_KEY."""
    cfg: Config | None = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    if args.admin_key_file:
        try:
            key = Path(args.admin_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"{args.admin_key_file}: cannot read: {exc.strerror}") from None
    elif args.admin_key_env or cfg is None:
        var = args.admin_key_env or "SIDECAR_ADMIN_KEY"
        key = os.environ.get(var, "").strip()
        if not key:
            raise CliError(f"no admin key: set {var}, or pass --admin-key-file or --config")
    else:
        key = cfg.admin.key.reveal()
    default_url = f"http://{cfg.admin.listen}" if cfg else "http://127.0.0.1:9091"
    return key, (args.admin_url or default_url).rstrip("/")


def _post(base: str, path: str, key: str, body: dict[str, object]) -> dict[str, object]:
    if urlsplit(base).scheme not in ("http", "https"):
        raise CliError(f"--admin-url: expected an http(s) URL, got {base!r}")
    request = urllib.request.Request(  # noqa: S310  # scheme checked above
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise CliError(f"{exc.code}: {_error_message(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the admin port at {base}: {reason}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise CliError("the admin port answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise CliError("the admin port answered with something that is not a JSON object")
    return answer


def _error_message(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]
    if not isinstance(doc, dict):
        return str(doc)
    if "msg" in doc:  # the auth-link API's {code, msg, details}
        return f"{doc['msg']} ({doc['details']})" if doc.get("details") else str(doc["msg"])
    return str(doc.get("message", doc))


# -- entry point -------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command("serve", "run the proxy and admin listeners", _serve_args, _serve),
    Command("keygen", "create a keyset file or add a new active key", _keygen_args, _keygen),
    Command("check-config", "validate a config; list every error", _check_args, _check_config),
    Command("mint", "mint a link through the admin port", _mint_args, _mint),
    Command("demo", "the demo app behind a sidecar, links ready", demo.configure, demo.run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="refer links into sessions")
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
