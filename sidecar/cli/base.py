"""What every subcommand shares: the :class:`Command` row, :class:`CliError`, private files."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class CliError(Exception):
    """A user-facing failure: printed to stderr, exit 1."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` readable by the owner only (0600), atomically when replacing; without
    ``replace`` an existing file is never clobbered."""
    try:
        if not replace:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
            except BaseException:
                path.unlink(missing_ok=True)  # ours (O_EXCL): never leave half a file
                raise
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
