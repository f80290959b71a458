"""Request ids (:func:`sidecar.telemetry.access.request_id_for`): unique per request, in
every process of ``sidecar serve --workers``, which forks its workers."""

from __future__ import annotations

from sidecar.telemetry.access import request_id_for
from tests.harness.forked import made_in_a_forked_child


def _ids_in_a_forked_child(count: int) -> list[str]:
    return made_in_a_forked_child(lambda: request_id_for(None), count)


def test_forked_processes_give_different_request_ids() -> None:
    first, second = _ids_in_a_forked_child(50), _ids_in_a_forked_child(50)
    own = [request_id_for(None) for _ in range(50)]
    assert len(first) == len(second) == 50
    assert len(set(first) | set(second) | set(own)) == 150


def test_request_ids_are_32_hex_digits_and_a_sane_client_id_is_kept() -> None:
    ids = [request_id_for(None) for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert len(set(ids)) == 1000
    assert request_id_for("abc-123") == "abc-123"
    assert len(request_id_for("bad id\\r\\n")) == 32


def test_ids_drawn_before_a_fork_are_not_handed_out_by_the_child() -> None:
    """Ids are drawn in batches: a child forked while the parent holds some it has not
    handed out yet must not hand them out too (the reseed at the fork drops them)."""
    request_id_for(None)  # the parent now holds the rest of a batch
    child = _ids_in_a_forked_child(200)
    own = [request_id_for(None) for _ in range(200)]
    assert len(child) == 200
    assert not set(child) & set(own)
    assert len(set(child)) == len(set(own)) == 200
