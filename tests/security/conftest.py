"""Fixtures of the adversarial suite (see :mod:`tests.harness`). Its summary table is
printed by ``tests/conftest.py``, which also adds up what each xdist worker counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Sidecar, running_sidecar


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path) as running:
        yield running
