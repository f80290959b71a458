"""A typed walk over the raw YAML that collects every error with its path.

Each accessor returns a usable default after recording an error, so one pass finds every
problem at once (like oauth2-proxy's validation). Keys nobody read are reported as unknown
by :meth:`Reader.finish`, which catches typos such as ``idle_timout``.

Every scalar (and list) option can also come from the environment: ``proxy.upstream`` from
``SIDECAR_PROXY__UPSTREAM`` (``__`` between levels, upper case; see :mod:`sidecar.config.env`). The
environment beats the file; its errors name the variable (``SIDECAR_PROXY__UPSTREAM
(proxy.upstream): got …``). :attr:`Reader.sources` records where every value that is not a
default came from. An ``offline`` reader checks secrets' shape but never reads them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.config.durations import format_duration, parse_duration, parse_size
from sidecar.config.env import ENV_PREFIX, Kind, env_name, from_env
from sidecar.config.values import HostPort, Network, RateLimit, Secret
from sidecar.proxy.paths import GlobError, check_path_glob


class Reader:
    def __init__(
        self,
        raw: object,
        *,
        env: Mapping[str, str],
        base_dir: Path,
        offline: bool = False,
        read_secrets: frozenset[str] = frozenset(),
        origin: str = "file",
    ) -> None:
        self.errors: list[str] = []
        self.env = env
        self.base_dir = base_dir
        self.offline = offline
        self.read_secrets = read_secrets  # read even offline
        self.origin = origin
        #: YAML path -> where its value came from (``origin`` or ``env NAME``), for every
        #: option that was given rather than defaulted.
        self.sources: dict[str, str] = {}
        self._consulted: set[str] = set()
        #: Files the secrets were read from, in order.
        self.secret_files: list[Path] = []
        self._nodes: list[Reader.Node] = []
        if not isinstance(raw, dict):
            self.error("(file)", f"expected a mapping at the top level, got {type(raw).__name__}")
            raw = {}
        self._root = self.Node(self, "", raw)

    def root(self) -> Reader.Node:
        return self._root

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def finish(self) -> None:
        """Report every key that no accessor asked for, and every ``SIDECAR_…__…``
        variable that names no option (a ``__`` says it was meant as one)."""
        for node in self._nodes:
            for key in node.data:
                if key not in node.seen and node.strict:
                    known = ", ".join(sorted(node.seen)) or "nothing"
                    self.error(node.join(str(key)), f"unknown key; expected one of: {known}")
        for name in sorted(self.env):
            if name.startswith(ENV_PREFIX) and "__" in name and name not in self._consulted:
                self.error(
                    name,
                    "names no option (SIDECAR_<SECTION>__<KEY>, e.g. "
                    "SIDECAR_PROXY__UPSTREAM for proxy.upstream)",
                )

    def asked(self) -> set[str]:
        """The YAML path of every key an accessor asked for, given or not (sections
        included): what a complete reference file has to document."""
        return {node.join(key) for node in self._nodes for key in node.seen}

    def lookup(self, path: str, value: object, kind: Kind) -> tuple[object, str]:
        """The value for ``path`` (the environment's if set, else ``value`` from the file)
        and the place to name in an error about it."""
        name = env_name(path)
        self._consulted.add(name)
        text = self.env.get(name)
        if text is not None:
            self.sources[path] = f"env {name}"
            return from_env(text, kind), f"{name} ({path})"
        if value is not None:
            self.sources[path] = self.origin
        return value, path

    class Node:
        def __init__(self, reader: Reader, path: str, data: dict[object, object]) -> None:
            self.reader = reader
            self.path = path
            self.data = data
            self.seen: set[str] = set()
            self.strict = True
            self.children: dict[str, Reader.Node] = {}
            reader._nodes.append(self)

        def join(self, key: str) -> str:
            return f"{self.path}.{key}" if self.path else key

        def error(self, key: str, message: str) -> None:
            self.reader.error(self.join(key), message)

        def fail(self, message: str) -> None:
            self.reader.error(self.path or "(file)", message)

        # -- navigation -----------------------------------------------------------------
        def section(self, key: str) -> Reader.Node:
            head, _, rest = key.partition(".")
            node = self.children.get(head)
            if node is None:
                self.seen.add(head)
                value = self.data.get(head)
                if value is not None and not isinstance(value, dict):
                    self.error(head, f"expected a mapping, got {_show(value)}")
                data = value if isinstance(value, dict) else {}
                node = Reader.Node(self.reader, self.join(head), data)
                self.children[head] = node
            return node.section(rest) if rest else node

        def _get(self, key: str, kind: Kind = "text") -> tuple[str, object]:
            """(where to point an error, value) for ``key`` below this node."""
            parent, _, leaf = key.rpartition(".")
            node = self.section(parent) if parent else self
            node.seen.add(leaf)
            value, where = self.reader.lookup(node.join(leaf), node.data.get(leaf), kind)
            return where, value

        def mapping_of(self, key: str) -> Iterator[tuple[str, Reader.Node]]:
            node = self.section(key)
            for name in list(node.data):
                node.seen.add(str(name))
                yield str(name), node.section(str(name))

        # -- scalars --------------------------------------------------------------------
        def string(self, key: str, default: str, *, pattern: str | None = None) -> str:
            where, value = self._get(key)
            if value is None:
                return default
            if not isinstance(value, str) or not value:
                self.reader.error(where, f"expected a non-empty string, got {_show(value)}")
                return default
            if pattern and not re.fullmatch(pattern, value):
                self.reader.error(where, f"got {value!r}, expected to match {pattern}")
                return default
            return value

        def optional_string(self, key: str) -> str | None:
            where, value = self._get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                self.reader.error(where, f"expected a non-empty string, got {_show(value)}")
                return None
            return value

        def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
            where, value = self._get(key)
            if value is None:
                return default
            if value not in allowed:
                self.reader.error(
                    where, f"got {_show(value)}, expected one of: {', '.join(allowed)}"
                )
                return default
            return str(value)

        def boolean(self, key: str, default: bool) -> bool:
            where, value = self._get(key, "bool")
            if value is None:
                return default
            if not isinstance(value, bool):
                self.reader.error(where, f"got {_show(value)}, expected true or false")
                return default
            return value

        def integer(self, key: str, default: int, *, low: int, high: int) -> int:
            where, value = self._get(key, "int")
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                self.reader.error(
                    where, f"got {_show(value)}, expected an integer from {low} to {high}"
                )
                return default
            return value

        def duration(self, key: str, default: float, *, at_most: float | None = None) -> float:
            where, value = self._get(key)
            if value is None:
                return default if at_most is None else min(default, at_most)
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                self.reader.error(where, str(exc))
                return default
            if at_most is not None and seconds > at_most:
                self.reader.error(where, f"got {value!r}, at most {format_duration(at_most)}")
                return at_most
            return seconds

        def size(
            self, key: str, default: int, *, zero_ok: bool = False, at_most: int | None = None
        ) -> int:
            where, value = self._get(key)
            if value is None:
                return default
            try:
                size = parse_size(value, zero_ok=zero_ok)
            except ValueError as exc:
                self.reader.error(where, str(exc))
                return default
            if at_most is not None and size > at_most:
                self.reader.error(where, f"got {value!r}, at most {at_most} bytes")
                return default
            return size

        def rate(self, key: str, default: str) -> RateLimit:
            where, value = self._get(key)
            text = default if value is None else value
            match = (
                re.fullmatch(r"(\d+)\s*/\s*(\S+)", text.strip()) if isinstance(text, str) else None
            )
            try:
                if match is None or int(match.group(1)) < 1:
                    raise ValueError
                return RateLimit(int(match.group(1)), parse_duration(match.group(2)))
            except ValueError:
                self.reader.error(
                    where, f"got {_show(value)}, expected a rate like 5/15m (count/window)"
                )
                return RateLimit(1, 1.0)

        def url(self, key: str, *, required: bool, relative_ok: bool = False) -> str | None:
            where, value = self._get(key)
            if value is None:
                if required:
                    self.reader.error(where, "is required")
                return None
            if not isinstance(value, str):
                self.reader.error(where, f"got {_show(value)}, expected an absolute http(s) URL")
                return None
            if relative_ok and value.startswith("/") and not value.startswith(("//", "/\\")):
                return value
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.reader.error(where, f"got {_show(value)}, expected an absolute http(s) URL")
                return None
            if parts.username or parts.password or parts.fragment:
                self.reader.error(where, "must not contain credentials or a fragment")
                return None
            return value

        def hostport(self, key: str, default: str) -> HostPort:
            where, value = self._get(key)
            parsed = _hostport(default if value is None else value)
            if parsed is None:
                self.reader.error(
                    where, f"got {_show(value)}, expected host:port like 127.0.0.1:9091"
                )
                return _hostport(default) or HostPort("127.0.0.1", 0)
            return parsed

        def optional_hostport(self, key: str) -> HostPort | None:
            where, value = self._get(key)
            if value is None:
                return None
            parsed = _hostport(value)
            if parsed is None:
                self.reader.error(
                    where, f"got {_show(value)}, expected host:port like 127.0.0.1:9100"
                )
            return parsed

        # -- collections ----------------------------------------------------------------
        def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            where, value = self._get(key, "list")
            if value is None:
                return default
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                self.reader.error(
                    where, f"expected a list of non-empty strings, got {_show(value)}"
                )
                return default
            return tuple(value)

        def path_globs(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
            """Path globs, each one able to match (:func:`~sidecar.proxy.paths.check_path_glob`)."""
            globs = self.strings(key, default)
            for i, pattern in enumerate(globs):
                try:
                    check_path_glob(pattern)
                except GlobError as exc:
                    self.error(f"{key}[{i}]", str(exc))
            return globs

        def name_globs(self, key: str, default: tuple[str, ...], *, name: str) -> tuple[str, ...]:
            """``fnmatch`` globs over names matching the regular expression ``name``."""
            globs = self.strings(key, default)
            for i, pattern in enumerate(globs):
                literal = pattern.replace("*", "a").replace("?", "a")
                if "[" in pattern or not re.fullmatch(name, literal):
                    self.error(
                        f"{key}[{i}]",
                        f"got {pattern!r}, which matches no name of {name} (globs: * and ?)",
                    )
            return globs

        def networks(self, key: str) -> tuple[Network, ...]:
            out: list[Network] = []
            for i, item in enumerate(self.strings(key, ())):
                try:
                    out.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    self.error(f"{key}[{i}]", f"got {item!r}, expected an IP address or CIDR")
            return tuple(out)

        def string_map(self, key: str, default: Mapping[str, str]) -> dict[str, str]:
            where, value = self._get(key, "map")
            if value is None:
                return dict(default)
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                self.reader.error(
                    where, f"expected a mapping of strings to strings, got {_show(value)}"
                )
                return dict(default)
            return {str(k): str(v) for k, v in value.items()}

        def secret(self, key: str, *, what: str) -> Secret | None:
            """A secret named by ``file:`` or ``env:`` — never its value in the YAML.

            ``SIDECAR_<PATH>__FILE`` or ``__ENV`` in the environment replaces the file's pair
            as a whole. Offline, the shape is checked and nothing is read (``None``)."""
            parent, _, leaf = key.rpartition(".")
            node = self.section(parent) if parent else self
            node.seen.add(leaf)
            path = node.join(leaf)
            value = node.data.get(leaf)
            if value is not None and not isinstance(value, dict):
                hint = f"the {what} is never written in the YAML; give file: or env:"
                self.reader.error(path, hint)
                return None
            sub = node.section(leaf)
            if any(env_name(f"{path}.{k}") in self.reader.env for k in ("file", "env")):
                sub.seen.update(("file", "env"))
                sub = Reader.Node(self.reader, path, {})
            file, var = sub.optional_string("file"), sub.optional_string("env")
            if file is None and var is None:
                hint = f"is required: give file: PATH or env: VARIABLE for the {what}"
                self.reader.error(path, hint)
                return None
            if file is not None and var is not None:
                self.reader.error(path, f"give exactly one of file: or env: for the {what}")
                return None
            if self.reader.offline and path not in self.reader.read_secrets:
                return None
            if file is not None:
                target = self.reader.base_dir / file
                try:
                    text = target.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    why = f"cannot read {str(target)!r}: {exc.strerror}"
                    self.reader.error(f"{path}.file", why)
                    return None
                self.reader.secret_files.append(target)
            else:
                env_value = self.reader.env.get(var or "")
                if not env_value:
                    self.reader.error(f"{path}.env", f"environment variable {var} is not set")
                    return None
                text = env_value.strip()
            return Secret(text)


def _hostport(value: object) -> HostPort | None:
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value.strip())
    if match is None or not 0 <= int(match.group(2)) <= 65535:
        return None
    return HostPort(match.group(1), int(match.group(2)))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
