"""What every subcommand shares: the :class:`Command` row, :class:`CliError`, private files."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast


class CliError(Exception):
    """A user-facing failure: printed to stderr, exit 1."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand. ``configure`` (adds its arguments) and ``run`` are named
    ``"module:function"`` and imported only when the command is built or run: ``sidecar
    serve`` never loads the other commands' modules, which would stay in the serving
    process's memory until it exits."""

    name: str
    help: str
    configure: str
    run: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        configure = cast(Callable[[argparse.ArgumentParser], None], _resolve(self.configure))
        configure(parser)

    def invoke(self, args: argparse.Namespace) -> int:
        run = cast(Callable[[argparse.Namespace], int], _resolve(self.run))
        return run(args)


def _resolve(target: str) -> object:
    module, _, name = target.partition(":")
    # __import__ rather than importlib.import_module: the interpreter's -X importtime log
    # (what tests/test_imports.py reads) lists only imports made through the import
    # statement's machinery, which importlib.import_module bypasses.
    return getattr(__import__(module, fromlist=[name]), name)


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
