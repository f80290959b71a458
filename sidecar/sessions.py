"""Server-side sessions: the cookie holds only a random id; the record lives in the store.

The store keys a session by the SHA-256 of the cookie value, so a copy of the database
does not hand out live cookies. Lookups go through a small in-process cache (bounded LRU,
``session.cache_ttl`` seconds, 2 s by default) because every proxied request needs one:

* a logout or ``DELETE /sessions`` on *this* process drops the cache entry at once;
* on other processes or replicas the entry expires within ``cache_ttl``, after which the
  store (where the record is gone) is asked again — so revocation wins within seconds,
  and that bound is a config value rather than an accident.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http.cookies import Morsel, SimpleCookie
from typing import Final

from aiohttp import hdrs, web

from sidecar.config import Config, RoleConfig
from sidecar.services import Services
from sidecar.session_cookies import (
    COOKIE_VALUE,
    RequestCookies,
    is_cookie_value,
    read_cookies,
    session_key,
)
from sidecar.store.base import SessionRecord
from sidecar.tokens.b64 import b64encode

# last_seen is written back at most this often; the idle check is early by at most this much.
_MAX_TOUCH_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Session:
    """A live session and the identity headers its role renders for the upstream."""

    key: str
    record: SessionRecord
    headers: tuple[tuple[str, str], ...]
    cached_until: float


class NotCached(enum.Enum):
    """:meth:`SessionManager.cached`: the store must be asked."""

    NOT_CACHED = enum.auto()


NOT_CACHED: Final = NotCached.NOT_CACHED


class SessionManager:
    """Create, find and end sessions for one process."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._cache_size = services.config.session.cache_size  # a restart changes it
        self._cache: OrderedDict[str, Session] = OrderedDict()
        # Bumped when an end of sessions (logout, revocation) begins and when it is done: a
        # lookup whose store read overlapped one (its answer may predate the delete) must
        # not put its session in the cache, where it would outlive the end by cache_ttl;
        # the lean front's lane does not let a request sent after one share a lookup begun
        # before it (ExpressLane._judge).
        self.ends = 0
        self.configure(services.config)
        services.on_reconfigure.append(self.configure)

    def configure(self, config: Config) -> None:
        """(Re)read the cookie settings and the cache's lifetime (on start and reload).

        Cached sessions are dropped: their identity headers come from the old roles."""
        cfg = config.session
        self.cookie_name = cfg.cookie_name
        self._secure = cfg.cookie_secure
        self._domain = cfg.cookie_domain
        self._cache_ttl = cfg.cache_ttl
        self._cache.clear()

    async def start(self, *, user_id: str, role: RoleConfig, token_id: str,
                    params: Mapping[str, str] | None = None, email: str | None = None,
                    module: str | None = None, client: str | None = None) -> str:  # fmt: skip
        """Store a new session and return the cookie value to send (once) to the browser."""
        cookie_value, record = self.new(
            user_id=user_id, role=role, token_id=token_id, params=params, email=email,
            module=module, client=client,
        )  # fmt: skip
        await self._services.store.create_session(record)
        return cookie_value

    def new(
        self,
        *,
        user_id: str,
        role: RoleConfig,
        token_id: str,
        params: Mapping[str, str] | None = None,
        email: str | None = None,
        module: str | None = None,
        client: str | None = None,
    ) -> tuple[str, SessionRecord]:
        """A new session's cookie value and the record to store for it (nothing stored:
        :meth:`start` does both; a redemption stores it with its burn)."""
        # secrets.token_urlsafe(32)'s text (32 bytes of os.urandom, unpadded base64url),
        # without its three Python calls around the encoder (every redemption makes one).
        cookie_value = b64encode(os.urandom(32))
        now = self._services.clock()
        # Positional, in the order of SessionRecord's fields (key, user_id, role, params,
        # created_at, expires_at, idle_timeout, last_seen, token_id, email, module, client):
        # its __init__ is interpreted (the store's module is not compiled), and matching
        # twelve keywords to its parameters cost more than the rest of the call.
        record = SessionRecord(
            session_key(cookie_value), user_id, role.name, dict(params or {}),
            now, now + role.session_lifetime, role.idle_timeout, now,
            token_id, email, module, client,
        )  # fmt: skip
        return cookie_value, record

    def set_cookie(self, response: web.StreamResponse, cookie_value: str, role: RoleConfig) -> None:
        """Send the session cookie (:meth:`cookie_header`) on ``response``."""
        response.headers.add(hdrs.SET_COOKIE, self.cookie_header(cookie_value, role))

    def cookie_header(self, cookie_value: str, role: RoleConfig) -> str:
        """The ``Set-Cookie`` value of the session cookie: ``HttpOnly``, ``SameSite=Lax``,
        ``Path=/``, the role's session lifetime as ``Max-Age``, and ``Domain``/``Secure``
        as configured.

        Written directly, byte for byte what aiohttp's ``response.set_cookie`` writes
        (``http.cookies`` costs several microseconds per redemption); a value that would
        need quoting (never one of ours) is written by ``http.cookies``, as aiohttp does."""
        if not is_cookie_value(cookie_value):
            morsel: Morsel[str] = SimpleCookie({self.cookie_name: cookie_value})[self.cookie_name]
            if self._domain is not None:
                morsel["domain"] = self._domain
            morsel["max-age"] = str(int(role.session_lifetime))
            morsel["path"] = "/"
            morsel["secure"] = self._secure
            morsel["httponly"] = True
            morsel["samesite"] = "Lax"
            return morsel.output(header="")[1:]
        # The attributes in the order http.cookies writes them (alphabetical).
        domain = "" if self._domain is None else f"; Domain={self._domain}"
        secure = "; Secure" if self._secure else ""
        return (
            f"{self.cookie_name}={cookie_value}{domain}; HttpOnly;"
            f" Max-Age={int(role.session_lifetime)}; Path=/; SameSite=Lax{secure}"
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(
            self.cookie_name,
            path="/",
            domain=self._domain,
            secure=self._secure,
            httponly=True,
            samesite="Lax",
        )

    def cookies(self, request: web.BaseRequest) -> RequestCookies:
        """The request's cookies, split once (pass the result on rather than asking again)."""
        return read_cookies(request, self.cookie_name)

    async def lookup(self, request: web.BaseRequest) -> Session | None:
        return await self.lookup_cookies(self.cookies(request))

    async def lookup_cookies(self, cookies: RequestCookies) -> Session | None:
        """The live session of the first copy of the cookie that has one: a garbage or
        dead copy placed first (by another host, or left over) cannot log the user out."""
        for value in cookies.values:
            session = await self.lookup_value(value)
            if session is not None:
                return session
        return None

    def cached(self, cookies: RequestCookies) -> Session | NotCached | None:
        """:meth:`lookup_cookies` when this process's cache can answer alone (the hot path
        decides without awaiting); :data:`NOT_CACHED` when the store must be asked (an
        entry missing or stale, or ``last_seen`` due to be written)."""
        now = self._services.clock()
        cache = self._cache
        for value in cookies.values:
            session = cache.get(session_key(value))
            if session is None or session.cached_until <= now:
                return NOT_CACHED
            record = session.record
            last_seen = record.last_seen
            idle_timeout = record.idle_timeout
            # SessionRecord.is_live(now), written out: that method is interpreted (the
            # store's module is not compiled), and this runs for every proxied request.
            if not (now < record.expires_at and now < last_seen + idle_timeout):
                return NOT_CACHED  # lookup_value drops it, then tries the next copy
            if now - last_seen >= min(_MAX_TOUCH_INTERVAL, idle_timeout / 10):
                return NOT_CACHED
            cache.move_to_end(session.key)
            return session
        return None

    async def lookup_value(self, cookie_value: str | None) -> Session | None:
        """The live session for ``cookie_value``, or None (none, unknown, expired or idle).

        Raises :class:`~sidecar.store.base.StoreUnavailable` when the store is needed and
        down: the caller fails closed."""
        if cookie_value is None or not COOKIE_VALUE.fullmatch(cookie_value):
            return None
        key = session_key(cookie_value)
        now = self._services.clock()
        session = self._cache.get(key)
        if session is not None and session.cached_until <= now:
            del self._cache[key]
            session = None
        if session is None:
            ends = self.ends
            record = await self._services.store.get_session(key)
            if record is None or record.role not in self._services.config.roles:
                # A role removed from the config ends its sessions.
                return None
            session = self._remember(key, record, now, cache=self.ends == ends)
        record = session.record
        if not record.is_live(now):
            self._cache.pop(key, None)
            return None
        if now - record.last_seen >= min(_MAX_TOUCH_INTERVAL, record.idle_timeout / 10):
            ends = self.ends
            await self._services.store.touch_session(key, now)
            session = replace(session, record=replace(record, last_seen=now))
            # Not if evicted meanwhile, nor with cache_size 0, nor if an end overlapped.
            if key in self._cache and self.ends == ends:
                self._cache[key] = session
        if key in self._cache:
            self._cache.move_to_end(key)
        return session

    async def end(self, request: web.BaseRequest) -> SessionRecord | None:
        """End the request's sessions (logout: every copy of the cookie names one the
        browser holds); returns the first record that ended, if any."""
        return await self.end_cookies(self.cookies(request))

    async def end_cookies(self, cookies: RequestCookies) -> SessionRecord | None:
        """:meth:`end` for a request's cookies, already read."""
        ended: SessionRecord | None = None
        self.ends += 1
        try:
            for value in cookies.values:
                key = session_key(value)
                self._cache.pop(key, None)
                record = await self._services.store.get_session(key)
                await self._services.store.delete_session(key)
                ended = ended or record
        finally:
            self.ends += 1
        return ended

    async def end_user(self, user_id: str) -> int:
        """End every session of ``user_id`` in the store and in this process's cache."""
        self.ends += 1
        try:
            for key in [k for k, s in self._cache.items() if s.record.user_id == user_id]:
                del self._cache[key]
            return await self._services.store.delete_user_sessions(user_id)
        finally:
            self.ends += 1

    async def end_token(self, token_id: str) -> int:
        """End every session created from the link ``token_id`` (store and this cache)."""
        self.ends += 1
        try:
            for key in [k for k, s in self._cache.items() if s.record.token_id == token_id]:
                del self._cache[key]
            return await self._services.store.delete_token_sessions(token_id)
        finally:
            self.ends += 1

    def _remember(self, key: str, record: SessionRecord, now: float, *, cache: bool) -> Session:
        session = Session(
            key=key,
            record=record,
            headers=self._render_headers(record),
            cached_until=now + self._cache_ttl,
        )
        if self._cache_size and cache:
            self._cache[key] = session
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return session

    def _render_headers(self, record: SessionRecord) -> tuple[tuple[str, str], ...]:
        role = self._services.config.roles[record.role]
        identity = {
            "user_id": record.user_id,
            "role": record.role,
            "email": record.email or "",
            "module": record.module or "",
            "token_id": record.token_id,
        }
        identity.update({f"param.{k}": v for k, v in record.params.items()})
        rendered = ((h.name, h.render(identity)) for h in role.headers)
        return tuple((name, value) for name, value in rendered if value)


SESSIONS = web.AppKey("sessions", SessionManager)
