"""The access line (:mod:`sidecar.telemetry.access`): built without ``json.dumps``, it must
be byte for byte the text ``json.dumps`` writes for its fields, whatever the client sent."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from sidecar.telemetry.access import _MAX_SEEN, _SEEN, _line, _millis, _quoted
from sidecar.telemetry.context import RequestRecord, rfc3339

_PREFIX = '"level": "info", "event": "access", "listener": "proxy", "method": '
_SECONDS = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
_METHOD = st.sampled_from(["GET", "POST", "DELETE", "PROPFIND", "get"]) | st.text()


@given(
    method=_METHOD,
    path=st.text(max_size=3000),
    status=st.integers(min_value=100, max_value=999),
    elapsed=_SECONDS,
    upstream=st.none() | _SECONDS,
    user=st.none() | st.text(),
    request_id=st.text(),
    remote=st.none() | st.sampled_from(["127.0.0.1", "::1"]) | st.text(),
    error=st.none() | st.text(),
)
def test_the_access_line_is_what_json_dumps_writes(
    method: str,
    path: str,
    status: int,
    elapsed: float,
    upstream: float | None,
    user: str | None,
    request_id: str,
    remote: str | None,
    error: str | None,
) -> None:
    record = RequestRecord(request_id, "proxied", user, upstream, error)
    line = _line(_PREFIX, method, path, status, elapsed, record, remote)
    shown_path = path if len(path) <= 2048 else path[:2048] + "…"
    doc: dict[str, object] = {
        "ts": json.loads(line)["ts"],
        "level": "info",
        "event": "access",
        "listener": "proxy",
        "method": method,
        "path": shown_path,
        "status": status,
        "duration_ms": float(_millis(elapsed)),
        "upstream_ms": None if upstream is None else float(_millis(upstream)),
        "user_id": user,
        "request_id": request_id,
        "remote": remote,
    }
    if error is not None:
        doc["upstream_error"] = error
    assert line == json.dumps(doc)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_milliseconds_are_written_as_json_writes_them_rounded(seconds: float) -> None:
    """Two decimals as ``json.dumps(round(seconds * 1000, 2))`` writes them, within the
    half-up rounding of the product that :func:`_millis` documents."""
    text = _millis(seconds)
    assert text == json.dumps(float(text))
    assert abs(float(text) - seconds * 1000) <= 0.005 + 1e-9 * seconds * 1000


def test_milliseconds_of_known_durations() -> None:
    cases = {0.0: "0.0", 0.00005: "0.05", 0.0031: "3.1", 0.003: "3.0", 0.01234: "12.34"}
    for seconds, text in cases.items():
        assert _millis(seconds) == text == json.dumps(round(seconds * 1000, 2))


def test_the_quoted_texts_kept_are_bounded() -> None:
    _SEEN.clear()
    for i in range(3 * _MAX_SEEN):
        assert _quoted(f"10.0.{i}.1") == json.dumps(f"10.0.{i}.1")
    assert _quoted("x" * 5000) == json.dumps("x" * 5000)
    assert 0 < len(_SEEN) <= _MAX_SEEN
    assert max(map(len, _SEEN)) <= 128


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_rfc3339_is_the_timestamp_to_the_millisecond(timestamp: float) -> None:
    millis = int(timestamp * 1000)
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    assert rfc3339(timestamp) == f"{expected}.{millis % 1000:03d}Z"
    assert rfc3339(timestamp) == rfc3339(timestamp)  # the cached answer, the same
