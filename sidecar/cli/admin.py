"""Commands that talk to a running sidecar's admin port: ``mint``, ``revoke``, ``sessions``.

The admin key and URL come from, in order: ``--admin-key-file``, ``--admin-key-env``,
``--config`` (the key the server itself reads, and its ``admin.listen``), then
``$SIDECAR_ADMIN_KEY`` with ``http://127.0.0.1:9091``.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from sidecar.cli.base import CliError
from sidecar.config import LINK_TYPES, Config, ConfigError, read_config
from sidecar.config.durations import parse_duration

# The admin API's expireMeasure units, largest first: a lifetime is sent in the largest
# unit that holds it exactly (1w -> 7 days, 1h30m -> 90 minutes).
_MEASURES = (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))


def admin_args(p: argparse.ArgumentParser) -> None:
    """The options every admin-port command takes."""
    access = p.add_argument_group("reaching the admin port")
    access.add_argument(
        "--config", metavar="FILE", help="the server's config: its admin key and admin.listen"
    )
    access.add_argument("--admin-url", help="admin listener (default: from --config, else :9091)")
    access.add_argument("--admin-key-file", metavar="FILE", help="file holding the admin key")
    access.add_argument(
        "--admin-key-env", metavar="VAR", help="env var holding the admin key (SIDECAR_ADMIN_KEY)"
    )
    p.add_argument("--json", action="store_true", help="print the admin port's whole JSON answer")


# -- mint --------------------------------------------------------------------------------


def mint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type", default="refer", choices=("refer", *LINK_TYPES), help="link kind (refer)"
    )
    admin_args(p)
    refer = p.add_argument_group("refer links (--type refer)")
    refer.add_argument("--user", help="userId (required for refer links)")
    refer.add_argument("--role", help="additionalParams.role (default: the config's)")
    refer.add_argument("--module", help="bind the link to #/display/<module>")
    refer.add_argument(
        "--expire", help="lifetime like 90s, 15m, 2h, 7d, 1w or 1h30m (default: config)"
    )
    once = refer.add_mutually_exclusive_group()
    once.add_argument(
        "--one-time",
        dest="one_time",
        action="store_true",
        default=None,
        help="the link works once (default: the role's one_time)",
    )
    once.add_argument(
        "--reusable", dest="one_time", action="store_false", help="the link works until it expires"
    )
    refer.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="an additionalParams entry the role allows; repeatable",
    )
    link = p.add_argument_group("auth links (--type signup|magiclink|recovery|invite|...)")
    link.add_argument("--email", help="the user's email (required for auth links)")
    link.add_argument("--redirect-to", help="where the link lands after verification")
    link.add_argument("--password", help="signup only: the new user's password")
    link.add_argument("--new-email", help="email_change only: the new address")


def mint(args: argparse.Namespace) -> int:
    if args.type == "refer":
        body = refer_body(args)  # argument errors first, before looking for a key
        answer = AdminClient.from_args(args).call("POST", "/referstring", body)
        print(json.dumps(answer, indent=2) if args.json else answer.get("url", ""))
        return 0
    if not args.email:
        raise CliError("--email is required for auth links")
    body = {"type": args.type, "email": args.email}
    for name in ("redirect_to", "password", "new_email"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    answer = AdminClient.from_args(args).call("POST", "/admin/generate_link", body)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(answer.get("action_link", ""))
        print(f"email_otp: {answer.get('email_otp', '')}")
    return 0


def refer_body(args: argparse.Namespace) -> dict[str, object]:
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
        body["expireMeasure"], body["expireOffset"] = _lifetime(args.expire)
    if args.one_time is not None:
        body["oneTimeUse"] = args.one_time
    return body


def _lifetime(text: str) -> tuple[str, int]:
    expected = f"--expire: expected a lifetime like 90s, 15m, 2h, 7d, 1w or 1h30m, got {text!r}"
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise CliError(expected) from None
    if seconds != int(seconds):
        raise CliError(f"--expire: whole seconds only, got {text!r}")
    for measure, size in _MEASURES:
        if seconds % size == 0:
            return measure, int(seconds // size)
    raise AssertionError("seconds always divide")  # pragma: no cover


# -- revoke, sessions --------------------------------------------------------------------


def revoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "token_id",
        metavar="ID",
        help="the link's id (the mint's answer has it; an older id beginning with '-' goes "
        "after '--')",
    )
    admin_args(p)


def revoke(args: argparse.Namespace) -> int:
    answer = AdminClient.from_args(args).call(
        "POST", f"/tokens/{quote(args.token_id, safe='')}/revoke", None
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer.get('id')}: {answer.get('state')} (was {answer.get('previous')})")
    return 0


def sessions_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    end = actions.add_parser("end", help="end every session of a user, on every replica")
    end.add_argument("--user", required=True, metavar="ID", help="the user id (userId)")
    admin_args(end)


def sessions(args: argparse.Namespace) -> int:
    query = urlencode({"user_id": args.user})
    answer = AdminClient.from_args(args).call("DELETE", f"/sessions?{query}", None)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer.get('user_id')}: {answer.get('ended')} session(s) ended")
    return 0


# -- the client --------------------------------------------------------------------------


class AdminClient:
    """JSON calls to the admin port with the admin key; failures are :class:`CliError`."""

    def __init__(self, base: str, key: str) -> None:
        if urlsplit(base).scheme not in ("http", "https"):
            raise CliError(f"--admin-url: expected an http(s) URL, got {base!r}")
        self.base = base.rstrip("/")
        self._key = key

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        cfg: Config | None = None
        if args.config:
            try:
                # Only the admin key: the keyset may live where this shell cannot see it.
                cfg = read_config(args.config, offline=True, read_secrets=("admin.key",)).config
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
        return cls(args.admin_url or default_url, key)

    def call(self, method: str, path: str, body: dict[str, object] | None) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {self._key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310  # scheme checked in __init__
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise CliError(f"{exc.code}: {_error_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the admin port at {self.base}: {reason}") from None
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
