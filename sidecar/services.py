"""The long-lived objects both listeners share, built once at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.config import Config
from sidecar.store.base import Store
from sidecar.tokens.codec import TokenCodec

Clock = Callable[[], float]


@dataclass(slots=True)
class Services:
    """Config, store, token codec and clock. ``clock`` is injected so tests control time.

    ``config`` and ``codec`` change on a reload (:meth:`reconfigure`): read them per
    request, or register a hook in ``on_reconfigure`` to recompute what was derived from
    them at start-up."""

    config: Config
    store: Store
    codec: TokenCodec
    clock: Clock = field(default=time.time)
    on_reconfigure: list[Callable[[Config], None]] = field(default_factory=list)

    def reconfigure(self, config: Config) -> None:
        """Serve new requests with ``config`` (already checked; restart-only parts kept)."""
        if config.keyset != self.config.keyset:
            self.codec = TokenCodec(config.keyset)
        self.config = config
        for hook in self.on_reconfigure:
            hook(config)
