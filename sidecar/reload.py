"""Reloading the config and keyset while serving: on SIGHUP, or when a secret file changes.

The file is read and validated in full first (:func:`sidecar.config.read_config`); an
invalid one changes nothing and every error is logged. A valid one takes effect for new
requests, except for what cannot change in a running process (:data:`RESTART_ONLY`:
listeners, the store, the upstream pool, the parser's limits): those keep their running
values and are reported as "needs restart". Each reload logs one line saying what changed.

Secret files (``keys.file``, ``admin.key.file``) are polled every ``reload.watch_interval``
(10 s): a Kubernetes Secret update rewrites the mounted file, and the sidecar reloads by
itself. The YAML is not polled: it changes on SIGHUP only, as nginx does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard, TypeVar

from sidecar.config import Config, ConfigError, LoadedConfig, read_config
from sidecar.config.values import Secret
from sidecar.tokens.keys import KeySet

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_LOG = logging.getLogger("sidecar.reload")
T = TypeVar("T")

#: YAML paths whose new value needs a restart; the running value is kept until then.
RESTART_ONLY = (
    "admin.listen",
    "admin.allow_non_loopback",
    "admin.max_body",
    "admin.lean_front",
    "proxy.listen",
    "proxy.prefix",
    "proxy.upstream",
    "proxy.connect_timeout",
    "proxy.upstream_timeout",
    "proxy.stream_idle_timeout",
    # Bound into the forwarder and the listeners at start (sidecar.app, proxy.forward).
    "proxy.send_timeout",
    "proxy.request_head_timeout",
    "proxy.lean_front",
    "proxy.keepalive_timeout",
    "proxy.max_client_connections",
    "proxy.max_connections",
    "proxy.max_idle_connections",
    "proxy.upstream_keepalive_timeout",
    "proxy.max_header_size",
    "session.cache_size",
    "store",
    "forward_auth.envoy_path_prefix",
    "metrics.listen",
    "reload.watch_interval",
)

# Config fields whose YAML spelling differs from the attribute.
_YAML_NAMES = {
    "keyset": "keys",
    "default_expiry": "tokens.default_expiry",
    "max_expiry": "tokens.max_expiry",
    "metrics_listen": "metrics.listen",
    "log_level": "logging.level",
    "access_log": "logging.access",
    "access_buffer": "logging.buffer",
    "access_flush": "logging.flush",
    "log_backlog": "logging.backlog",
    "grace_period": "shutdown.grace_period",
    "watch_interval": "reload.watch_interval",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One option whose value differs: where it lives in :class:`Config` and in the YAML."""

    attrs: tuple[str, ...]
    path: str
    detail: str = ""

    @property
    def needs_restart(self) -> bool:
        return any(self.path == p or self.path.startswith(p + ".") for p in RESTART_ONLY)

    def __str__(self) -> str:
        return f"{self.path} ({self.detail})" if self.detail else self.path


def changes(old: Config, new: Config) -> list[Change]:
    """Every option that differs between ``old`` and ``new``, leaf by leaf (roles by name)."""
    found: list[Change] = []
    for f in fields(old):
        path = _YAML_NAMES.get(f.name, f.name)
        _compare(getattr(old, f.name), getattr(new, f.name), (f.name,), path, found)
    return found


def _compare(
    old: object, new: object, attrs: tuple[str, ...], path: str, out: list[Change]
) -> None:
    if isinstance(old, KeySet) and isinstance(new, KeySet):
        detail = _keyset_change(old, new)
        if detail:
            out.append(Change(attrs, path, detail))
    elif isinstance(old, Secret) and isinstance(new, Secret):
        if not hmac.compare_digest(old.reveal().encode(), new.reveal().encode()):
            out.append(Change(attrs, path, "replaced"))
    elif _is_section(old) and type(old) is type(new) and len(attrs) == 1:
        for f in fields(old):  # one level into the sections: admin.listen, proxy.upstream…
            sub = (getattr(old, f.name), getattr(new, f.name))
            _compare(*sub, (*attrs, f.name), f"{path}.{f.name}", out)
    elif isinstance(old, Mapping) and isinstance(new, Mapping) and len(attrs) == 1:
        for name in dict.fromkeys([*old, *new]):  # roles: added, removed or changed
            if name not in new:
                out.append(Change((*attrs, name), f"{path}.{name}", "removed"))
            elif name not in old:
                out.append(Change((*attrs, name), f"{path}.{name}", "added"))
            elif is_dataclass(old[name]):
                changed = [
                    g.name
                    for g in fields(old[name])
                    if getattr(old[name], g.name) != getattr(new[name], g.name)
                ]
                out.extend(Change((*attrs, name), f"{path}.{name}.{g}") for g in changed)
            elif old[name] != new[name]:  # pages: name -> template text
                out.append(Change((*attrs, name), f"{path}.{name}"))
    elif old != new:
        out.append(Change(attrs, path))


def _is_section(value: object) -> TypeGuard[DataclassInstance]:
    """A config section (``AdminConfig``…), compared option by option."""
    kind = type(value)
    return (
        is_dataclass(value)
        and kind.__module__.startswith("sidecar.config")
        and kind.__name__.endswith("Config")
    )


def _keyset_change(old: KeySet, new: KeySet) -> str:
    """What changed in a keyset, by kid (never key material)."""
    parts = []
    if old.active_kid != new.active_kid:
        parts.append(f"active {new.active_kid}, was {old.active_kid}")
    added = [kid for kid in new.keys if kid not in old.keys]
    removed = [kid for kid in old.keys if kid not in new.keys]
    replaced = [
        kid
        for kid in new.keys
        if kid in old.keys and not hmac.compare_digest(old.keys[kid], new.keys[kid])
    ]
    for label, kids in (("added", added), ("removed", removed), ("key replaced", replaced)):
        if kids:
            parts.append(f"{label} {', '.join(kids)}")
    return "; ".join(parts)


def keep_running(old: Config, new: Config, restart: Sequence[Change]) -> Config:
    """``new`` with the running (``old``) value of every option in ``restart``."""
    for change in restart:
        running: object = old
        for attr in change.attrs:
            running = getattr(running, attr)
        new = _with(new, change.attrs, running)
    return new


def _with(obj: T, attrs: tuple[str, ...], value: object) -> T:
    """A copy of the frozen dataclass ``obj`` with ``value`` at ``attrs``."""
    head, rest = attrs[0], attrs[1:]
    return replace(obj, **{head: _with(getattr(obj, head), rest, value) if rest else value})  # type: ignore[type-var]  # T is always a dataclass here


Apply = Callable[[Config], None]


class Reloader:
    """Re-reads ``path`` and hands a valid, changed config to ``apply``.

    ``apply`` gets the new config with the restart-only options kept at their running
    values. Reloads never raise: an invalid file is logged and ignored."""

    def __init__(self, path: str | Path, loaded: LoadedConfig, apply: Apply) -> None:
        self._path = path
        self._current = loaded.config
        self._apply = apply
        self._files, self._fingerprint = self._watch(loaded.secret_files)

    @property
    def config(self) -> Config:
        return self._current

    def reload(self, trigger: str) -> bool:
        """Reload now; True when a new config took effect."""
        try:
            loaded = read_config(self._path)
        except ConfigError as exc:
            # Not retried until a file changes again: one error line per bad edit.
            self._fingerprint = self._watch(self._files)[1]
            _LOG.error(
                "reload (%s) refused, still serving the previous configuration: %d error(s): %s",
                trigger,
                len(exc.errors),
                "; ".join(exc.errors),
            )
            return False
        self._files, self._fingerprint = self._watch(loaded.secret_files)
        found = changes(self._current, loaded.config)
        restart = [c for c in found if c.needs_restart]
        live = [c for c in found if not c.needs_restart]
        if not found:
            _LOG.info("reload (%s): no change", trigger)
            return False
        summary = ", ".join(map(str, live)) or "nothing that applies live"
        if restart:
            summary += "; needs restart (running value kept): " + ", ".join(map(str, restart))
        if not live:
            _LOG.warning("reload (%s): %s", trigger, summary)
            return False
        config = keep_running(self._current, loaded.config, restart)
        self._apply(config)
        self._current = config
        _LOG.info("reload (%s): changed %s", trigger, summary)
        return True

    async def watch(self, interval: float) -> None:
        """Reload whenever a secret file's content changes; checked every ``interval`` s."""
        while True:
            await asyncio.sleep(interval)
            if self._watch(self._files)[1] != self._fingerprint:
                self.reload("secret file changed: " + ", ".join(str(f) for f in self._files))

    @staticmethod
    def _watch(files: Sequence[Path]) -> tuple[tuple[Path, ...], str]:
        """The files and one hash of their contents (an unreadable file hashes as such)."""
        digest = hashlib.sha256()
        for file in files:
            try:
                digest.update(hashlib.sha256(file.read_bytes()).digest())
            except OSError as exc:
                digest.update(f"unreadable {exc.errno}".encode())
        return tuple(files), digest.hexdigest()
