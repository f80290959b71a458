"""Values made in a forked child: for the ids a process draws in batches, which a child
forked while its parent holds some must not hand out too."""

from __future__ import annotations

import os
from collections.abc import Callable


def made_in_a_forked_child(make: Callable[[], str], count: int) -> list[str]:
    """``count`` values of ``make()`` called in a child forked now (space-free strings)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its values, then out at once (no cleanup of the parent's state)
        try:
            os.write(write, " ".join(make() for _ in range(count)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text.split()
