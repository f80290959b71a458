"""Small value types shared by the config and the services that read it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# An address range in allowed_peers / trusted_proxies.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidField(ValueError):
    """A config dataclass refuses its values (checked in its ``__post_init__``, so no
    instance ever holds them); ``field`` is the key within its YAML section."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Secret:
    """A secret string that never appears in a ``repr``, ``str``, log line or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Secrets are compared with hmac.compare_digest on reveal(), never with ==.
        return other is self

    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` events per ``window`` seconds (``"5/15m"`` in YAML)."""

    limit: int
    window: float
