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
    """Config, store, token codec and clock. ``clock`` is injected so tests control time."""

    config: Config
    store: Store
    codec: TokenCodec
    clock: Clock = field(default=time.time)
