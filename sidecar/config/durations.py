"""Human units in the YAML: durations (``90s``, ``15m``, ``8h``, ``7d``, ``1w``, ``1h30m``)
and sizes (``64KiB``)."""

from __future__ import annotations

import re

# Units from the largest down, each at most once: ``1w2d``, ``1h30m``, ``2m30s``, ``1s500ms``.
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(
    "".join(rf"(?:(?P<{'x' if u == 'ms' else u}>\d+)\s*{u}\s*)?" for u in _UNIT_SECONDS)
)
_EXPECTED = "expected a duration like 90s, 15m, 8h, 7d, 1w or 1h30m"
_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from ``90s``/``15m``/``8h``/``7d``/``1w``/``250ms``, a compound of them from
    the largest unit down (``1w2d``, ``1h30m``), or a bare integer of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}, {_EXPECTED}")
    if isinstance(value, int):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _DURATION.fullmatch(text) if text else None
        if match is None or not any(match.groups()):
            raise ValueError(f"got {value!r}, {_EXPECTED}")
        seconds = sum(
            int(count) * _UNIT_SECONDS["ms" if group == "x" else group]
            for group, count in match.groupdict().items()
            if count is not None
        )
    if seconds <= 0:
        raise ValueError(f"got {value!r}, expected a duration greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 2592000 -> ``30d``, 5400 -> ``90m``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


def parse_size(value: object, *, zero_ok: bool = False) -> int:
    """Bytes from ``65536``, ``64KiB``, ``1MB`` (``0``, ``0KiB``: only with ``zero_ok``)."""
    match = None if isinstance(value, bool) else _SIZE.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"got {value!r}, expected a size like 65536, 64KiB or 1MiB")
    size = int(match.group(1)) * _UNIT_BYTES[match.group(2)]
    if size < 0 or (size == 0 and not zero_ok):
        raise ValueError(f"got {value!r}, expected a size greater than zero")
    return size
