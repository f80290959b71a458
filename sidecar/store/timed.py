"""A :class:`~sidecar.store.base.Store` wrapper that observes the latency of every call.

``timed(open_store(...))`` is a Store like any other; each method forwards to the backend
and records its duration in ``sidecar_store_seconds{op="<method>"}``, whether it returned
or raised (a slow failure is exactly what the histogram is for).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
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

T = TypeVar("T")


class TimedStore:
    """Forwards every :class:`Store` method to ``inner``, timing it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"TimedStore({self.inner!r})"

    @staticmethod
    async def _timed(op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except StoreUnavailable:
            store_up(False)
            raise
        finally:
            observe_store(op, time.perf_counter() - started)
        store_up(True)
        return result

    async def open(self) -> None:
        await self._timed("open", self.inner.open())

    async def close(self) -> None:
        await self._timed("close", self.inner.close())

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def persistence(self) -> Persistence:
        return await self._timed("persistence", self.inner.persistence())

    async def burn(self, token_id: str, expires_at: float) -> BurnResult:
        return await self._timed("burn", self.inner.burn(token_id, expires_at))

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        return await self._timed("revoke", self.inner.revoke(token_id, expires_at))

    async def token_state(self, token_id: str) -> TokenState:
        return await self._timed("token_state", self.inner.token_state(token_id))

    async def token_use(self, token_id: str) -> TokenUse:
        return await self._timed("token_use", self.inner.token_use(token_id))

    async def record_token(self, record: TokenRecord, keep_until: float) -> None:
        await self._timed("record_token", self.inner.record_token(record, keep_until))

    async def get_token(self, token_id: str) -> TokenRecord | None:
        return await self._timed("get_token", self.inner.get_token(token_id))

    async def list_user_tokens(
        self, user_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[TokenRecord]:
        call = self.inner.list_user_tokens(user_id, limit, after)
        return await self._timed("list_user_tokens", call)

    async def list_user_sessions(self, user_id: str) -> list[SessionRecord]:
        return await self._timed("list_user_sessions", self.inner.list_user_sessions(user_id))

    async def create_session(self, session: SessionRecord) -> None:
        await self._timed("create_session", self.inner.create_session(session))

    async def get_session(self, key: str) -> SessionRecord | None:
        return await self._timed("get_session", self.inner.get_session(key))

    async def touch_session(self, key: str, last_seen: float) -> None:
        await self._timed("touch_session", self.inner.touch_session(key, last_seen))

    async def delete_session(self, key: str) -> bool:
        return await self._timed("delete_session", self.inner.delete_session(key))

    async def delete_user_sessions(self, user_id: str) -> int:
        return await self._timed("delete_user_sessions", self.inner.delete_user_sessions(user_id))

    async def delete_token_sessions(self, token_id: str) -> int:
        return await self._timed(
            "delete_token_sessions", self.inner.delete_token_sessions(token_id)
        )

    async def create_user(self, user: User) -> None:
        await self._timed("create_user", self.inner.create_user(user))

    async def update_user(self, user: User) -> None:
        await self._timed("update_user", self.inner.update_user(user))

    async def get_user(self, user_id: str) -> User | None:
        return await self._timed("get_user", self.inner.get_user(user_id))

    async def get_user_by_email(self, email: str) -> User | None:
        return await self._timed("get_user_by_email", self.inner.get_user_by_email(email))

    async def put_link(self, link: PendingLink) -> None:
        await self._timed("put_link", self.inner.put_link(link))

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None:
        return await self._timed("get_link", self.inner.get_link(user_id, link_type))

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None:
        return await self._timed("get_link_by_hash", self.inner.get_link_by_hash(hashed_token))

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        call = self.inner.record_failed_attempt(user_id, link_type)
        return await self._timed("record_failed_attempt", call)

    async def delete_link(self, user_id: str, link_type: str) -> None:
        await self._timed("delete_link", self.inner.delete_link(user_id, link_type))

    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        return await self._timed("hit", self.inner.hit(key, window, now))

    async def purge_expired(self, now: float) -> int:
        return await self._timed("purge_expired", self.inner.purge_expired(now))


def timed(store: Store) -> Store:
    """``store`` with every call timed into ``sidecar_store_seconds``."""
    return TimedStore(store)
