"""A :class:`~sidecar.store.base.Store` wrapper that observes the latency of every call.

``timed(open_store(...))`` is a Store like any other; each method forwards to the backend
and records its duration in ``sidecar_store_seconds{op="<method>"}``, whether it returned
or raised (a slow failure is exactly what the histogram is for), and keeps the
``sidecar_store_up`` gauge current.

Every call of a mint and a redemption goes through here, so the methods are written out
(one line each) rather than generated at import: the module is then compiled with the hot
path (:mod:`sidecar.compiled`; mypyc cannot compile methods added to a class after the
fact). The type checker holds :class:`TimedStore` to the :class:`Store` protocol, so a
method added to a concern and not here fails ``mypy`` (``timed`` returns it as a Store),
and tests/test_store_contract.py checks each one forwards its arguments and answer and is
timed.
"""

from __future__ import annotations

from collections.abc import Awaitable
from time import perf_counter
from typing import TypeVar

from sidecar.store.base import (
    BurnResult,
    PendingLink,
    Persistence,
    SessionRecord,
    Store,
    StoreUnavailable,
    TokenRecord,
    TokenState,
    TokenUse,
    User,
)
from sidecar.telemetry.metrics import observe_store, store_up

# perf_counter by its own name: compiled, time.perf_counter is an attribute lookup on the
# module for every call (two per store call).

T = TypeVar("T")


async def _timed(op: str, call: Awaitable[T]) -> T:
    """``call`` (the backend's coroutine for ``op``, not started yet) awaited and timed."""
    started = perf_counter()
    try:
        result = await call
    except StoreUnavailable:
        store_up(False)
        raise
    finally:
        observe_store(op, perf_counter() - started)
    store_up(True)
    return result


class TimedStore:
    """Forwards every :class:`Store` method to ``inner``, timing it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return "TimedStore(" + repr(self.inner) + ")"

    # -- StoreLifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        return await _timed("open", self.inner.open())

    async def close(self) -> None:
        return await _timed("close", self.inner.close())

    async def ping(self) -> None:
        return await _timed("ping", self.inner.ping())

    async def persistence(self) -> Persistence:
        return await _timed("persistence", self.inner.persistence())

    async def purge_expired(self, now: float) -> int:
        return await _timed("purge_expired", self.inner.purge_expired(now))

    # -- BurnStore --------------------------------------------------------------------
    async def burn(
        self, token_id: str, expires_at: float, session: SessionRecord | None = None
    ) -> BurnResult:
        # Every redemption's call: _timed written out (one coroutine fewer), as for mints.
        started = perf_counter()
        try:
            result = await self.inner.burn(token_id, expires_at, session)
        except StoreUnavailable:
            store_up(False)
            raise
        finally:
            observe_store("burn", perf_counter() - started)
        store_up(True)
        return result

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        return await _timed("revoke", self.inner.revoke(token_id, expires_at))

    async def token_state(self, token_id: str) -> TokenState:
        return await _timed("token_state", self.inner.token_state(token_id))

    async def token_use(self, token_id: str) -> TokenUse:
        return await _timed("token_use", self.inner.token_use(token_id))

    # -- TokenRecordStore -------------------------------------------------------------
    async def record_token(self, record: TokenRecord, keep_until: float) -> None:
        return await _timed("record_token", self.inner.record_token(record, keep_until))

    async def record_counted(
        self,
        record: TokenRecord,
        keep_until: float,
        key: str,
        window: float,
        limit: int,
        now: float,
    ) -> tuple[int, float]:
        # Every mint's call: _timed written out (one coroutine fewer).
        started = perf_counter()
        try:
            result = await self.inner.record_counted(record, keep_until, key, window, limit, now)
        except StoreUnavailable:
            store_up(False)
            raise
        finally:
            observe_store("record_counted", perf_counter() - started)
        store_up(True)
        return result

    async def get_token(self, token_id: str) -> TokenRecord | None:
        return await _timed("get_token", self.inner.get_token(token_id))

    async def list_user_tokens(
        self, user_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[TokenRecord]:
        return await _timed("list_user_tokens", self.inner.list_user_tokens(user_id, limit, after))

    # -- SessionStore -----------------------------------------------------------------
    async def create_session(self, session: SessionRecord) -> None:
        return await _timed("create_session", self.inner.create_session(session))

    async def get_session(self, key: str) -> SessionRecord | None:
        return await _timed("get_session", self.inner.get_session(key))

    async def touch_session(self, key: str, last_seen: float) -> None:
        return await _timed("touch_session", self.inner.touch_session(key, last_seen))

    async def delete_session(self, key: str) -> bool:
        return await _timed("delete_session", self.inner.delete_session(key))

    async def delete_user_sessions(self, user_id: str) -> int:
        return await _timed("delete_user_sessions", self.inner.delete_user_sessions(user_id))

    async def list_user_sessions(self, user_id: str) -> list[SessionRecord]:
        return await _timed("list_user_sessions", self.inner.list_user_sessions(user_id))

    async def delete_token_sessions(self, token_id: str) -> int:
        return await _timed("delete_token_sessions", self.inner.delete_token_sessions(token_id))

    # -- UserStore --------------------------------------------------------------------
    async def create_user(self, user: User) -> None:
        return await _timed("create_user", self.inner.create_user(user))

    async def update_user(self, user: User) -> None:
        return await _timed("update_user", self.inner.update_user(user))

    async def get_user(self, user_id: str) -> User | None:
        return await _timed("get_user", self.inner.get_user(user_id))

    async def get_user_by_email(self, email: str) -> User | None:
        return await _timed("get_user_by_email", self.inner.get_user_by_email(email))

    # -- LinkStore --------------------------------------------------------------------
    async def put_link(self, link: PendingLink) -> None:
        return await _timed("put_link", self.inner.put_link(link))

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None:
        return await _timed("get_link", self.inner.get_link(user_id, link_type))

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None:
        return await _timed("get_link_by_hash", self.inner.get_link_by_hash(hashed_token))

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        call = self.inner.record_failed_attempt(user_id, link_type)
        return await _timed("record_failed_attempt", call)

    async def delete_link(self, user_id: str, link_type: str) -> None:
        return await _timed("delete_link", self.inner.delete_link(user_id, link_type))

    # -- CounterStore -----------------------------------------------------------------
    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        return await _timed("hit", self.inner.hit(key, window, now))


def timed(store: Store) -> Store:
    """``store`` with every call timed into ``sidecar_store_seconds``."""
    return TimedStore(store)
