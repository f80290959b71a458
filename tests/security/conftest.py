"""Fixtures of the adversarial suite (see :mod:`tests.harness`) and its summary table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Sidecar, running_sidecar
from tests.security import casebook


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if any(casebook.TRIED.values()):
        terminalreporter.section("security cases (tried / got through)")
        for line in casebook.summary_lines():
            terminalreporter.write_line(line)


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path) as running:
        yield running
