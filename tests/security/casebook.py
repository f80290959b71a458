"""Counts of attack cases tried and let through, per category, for the suite's summary.

Tests record what they tried and what got through (which then fails the test); the
``tests/conftest.py`` terminal-summary hook prints the table, which is the
"cases tried / got through" note the issue asks for. Under pytest-xdist each worker counts
its own; :func:`counts` travels to the controller, which adds them up (:func:`add`).
"""

from __future__ import annotations

from collections import Counter

CATEGORIES = (
    "tokens",
    "replay",
    "headers",
    "paths",
    "redirects",
    "framing",
    "admin",
    "ratelimits",
    "secrets",
    "failure",
    "config",
    "identity",
    "frameworks",
    "connections",
    "leaks",
    "cookies",
    "strip",
    "hosts",
    "origins",
)

TRIED: Counter[str] = Counter()
THROUGH: Counter[str] = Counter()


def record(category: str, *, tried: int = 1, through: int = 0) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    TRIED[category] += tried
    THROUGH[category] += through


def counts() -> dict[str, tuple[int, int]]:
    """This process's counts, as plain data: category -> (tried, through)."""
    return {name: (TRIED[name], THROUGH[name]) for name in CATEGORIES if TRIED[name]}


def add(counts: dict[str, tuple[int, int]]) -> None:
    """Adds another process's :func:`counts` (an xdist worker's) to this one's."""
    for name, (tried, through) in counts.items():
        record(name, tried=tried, through=through)


def summary_lines() -> list[str]:
    lines = [f"{'category':<12}{'tried':>8}{'through':>9}"]
    for name in CATEGORIES:
        if TRIED[name]:
            lines.append(f"{name:<12}{TRIED[name]:>8}{THROUGH[name]:>9}")
    return lines
