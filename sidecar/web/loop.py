"""The event loop a served process runs on: uvloop when it is installed, asyncio's otherwise.

uvloop (``pip install 'sidecar[speed]'``) runs the same asyncio code on libuv, with the
transports and the loop's own bookkeeping in C; on the proxy's hot path that is a large
share of the CPU per request (docs/benchmarks.md). ``SIDECAR_UVLOOP=0`` in the environment
keeps asyncio's loop even when uvloop is installed (to compare, or to rule it out).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

_LOG = logging.getLogger("sidecar.loop")
T = TypeVar("T")


def uvloop_wanted() -> bool:
    return os.environ.get("SIDECAR_UVLOOP", "1").strip().lower() not in ("0", "false", "no", "off")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed and wanted."""
    if uvloop_wanted():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            _LOG.debug("event loop: uvloop")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)
