"""Forward-auth's sub-requests on the lean front: ``GET <prefix>/auth`` without aiohttp's server.

Behind an existing ingress (nginx's ``auth_request``, Traefik's ``forwardAuth``, Caddy's
``forward_auth``), every request of the app costs one sub-request to ``<prefix>/auth``: it
is that deployment's hot path. The express lane (:mod:`sidecar.proxy.express`) passes such
a request here when its target's path is exactly ``<prefix>/auth`` as written (a spelling
with ``%`` is the router's and aiohttp's) and its method ``GET``; like aiohttp's route it
is exempt from the host check, since the original host is what is judged.

The judgement is forward-auth's own (:meth:`~sidecar.proxy.forward_auth.ForwardAuth.examine`
and :meth:`~sidecar.proxy.forward_auth.ForwardAuth.decide`), read from a
:class:`~sidecar.proxy.originals.SubRequest` built from the head as aiohttp's parser would
decode it; the session comes from the cache, or the store in a task. The answer's bytes
are the bare response aiohttp writes (:func:`~sidecar.proxy.answers.bodyless`), and its
access line says ``page``, as on aiohttp's path. ``tests/test_lean.py`` compares the two.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from sidecar.proxy import answers
from sidecar.proxy.forward_auth import STORE_DOWN, Answer, ForwardAuth
from sidecar.proxy.taken import TakenRequest
from sidecar.sessions import NOT_CACHED, Session, SessionManager
from sidecar.store.base import StoreUnavailable
from sidecar.telemetry.access import CLIENT_CLOSED
from sidecar.web.heads import Head
from sidecar.web.lanes import Reply, Started

if TYPE_CHECKING:
    from sidecar.proxy.express import Admitted, ExpressLane
    from sidecar.proxy.forward_auth import Examined

LOG = logging.getLogger("sidecar.forward_auth")


@dataclass(frozen=True, slots=True)
class LeanSubRequest:
    """A sub-request's head as forward-auth reads an aiohttp request
    (:class:`~sidecar.proxy.originals.SubRequest`): names and values decoded as aiohttp's
    parser decodes them."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    remote: str | None
    scheme: str = "http"

    @classmethod
    def of(cls, head: Head, remote: str | None) -> LeanSubRequest:
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in head.headers
        )
        return cls(head.method, head.target.decode("utf-8", "surrogateescape"), headers, remote)


class AuthLane:
    """Takes ``GET <prefix>/auth`` for the express lane (see the module docstring)."""

    def __init__(self, forward_auth: ForwardAuth, sessions: SessionManager, prefix: str) -> None:
        self.forward_auth = forward_auth
        self.sessions = sessions
        self.path = (prefix + "/auth").encode()  # the raw path it takes, as written

    def start(self, lane: ExpressLane, head: Head, reply: Reply, admitted: Admitted) -> Started:
        """Answer the sub-request, now or once its session is read from the store."""
        check = AuthCheck(self, lane, head, reply, admitted)
        check.begin()
        return check


class AuthCheck(TakenRequest):
    """One sub-request the lean front took (a :class:`~sidecar.web.lanes.Started`)."""

    __slots__ = ("_auth",)

    def __init__(
        self, auth: AuthLane, lane: ExpressLane, head: Head, reply: Reply, admitted: Admitted
    ) -> None:
        super().__init__(lane, head, reply, admitted, "page")
        self._auth = auth

    def begin(self) -> None:
        """Judge, and answer now or start the store lookup. An exception escapes before
        anything is written or counted: the lean front then hands the request over."""
        sub = LeanSubRequest.of(self._head, self._reply.peer)
        examined = self._auth.forward_auth.examine(sub, None)
        session = None
        if not isinstance(examined, Answer):
            session = self._auth.sessions.cached(self._admitted.cookies)
        lane = self._lane
        if lane.drain is not None:
            lane.drain.begin()  # in flight from here: finish() counts it out
        try:
            if isinstance(examined, Answer):
                self._answer(examined)
            elif session is NOT_CACHED:
                self.task = asyncio.get_running_loop().create_task(self._lookup(examined))
                # A task cancelled before its first step never runs its body.
                self.task.add_done_callback(self.ended)
            else:
                self._decided(examined, session)
        except Exception:
            # Counted in and logged: never left half-begun (the drain would wait for it).
            self._reply.abort()
            self.finish()
            raise

    async def _lookup(self, examined: Examined) -> None:
        try:
            try:
                session = await self._auth.sessions.lookup_cookies(self._admitted.cookies)
            except StoreUnavailable:
                self._answer(STORE_DOWN)
            else:
                self._decided(examined, session)
        except asyncio.CancelledError:
            self.status = CLIENT_CLOSED
            self.finish()
            raise
        except Exception:
            # A bug must not leave the ingress waiting: drop the connection.
            LOG.exception("the lean front failed answering a sub-request; connection dropped")
            self._reply.abort()
            self.finish()

    def _decided(self, examined: Examined, session: Session | None) -> None:
        if session is not None:
            self._record.user_id = session.record.user_id
        self._answer(self._auth.forward_auth.decide(examined, session))

    def _answer(self, answer: Answer) -> None:
        self.status = answer.status
        headers = list(answer.all_headers().items())
        keep_alive = self._head.keep_alive
        self._reply.write(answers.bodyless(answer.status, headers, self._record.request_id,
                                           keep_alive))  # fmt: skip
        self.finish()
