"""The hot path's lane: plain forwarded requests, served by the lean front without aiohttp.

:class:`ExpressLane` is the :class:`~sidecar.web.lanes.Lane` of the proxy listener. It takes a
request only when its whole answer is "forward it" or a refusal the judgement itself made;
the decisions are the gateway's own (:meth:`sidecar.proxy.gateway.Gateway.judge`,
:func:`~sidecar.proxy.origins.hosts_allowed`, :func:`~sidecar.proxy.paths.normalise`), the
request head sent upstream is the header policy's and the pool the forwarder's. It declines
— before writing a byte, so that aiohttp's handler answers instead — whenever the answer
could be anything else:

* a path under the sidecar's own routes (the prefix, forward-auth's Envoy prefix: raw or
  percent-decoded), a path :func:`~sidecar.proxy.paths.normalise` refuses, a query that
  may hold ``refer`` (any spelling: ``%`` or ``refer``) but for a plain refer link's
  bodyless ``GET``, which :mod:`sidecar.proxy.redeem_lane` redeems (or declines);
* a ``Host`` (or a trusted proxy's forwarded host) the host check refuses.

Forward-auth's ``GET <prefix>/auth`` is the one own route it serves
(:mod:`sidecar.proxy.auth_lane`). Refusals the judgement makes are answered here — the 403
of a role's rules, the 503 of a store that cannot answer, and what
``proxy.unauthenticated`` does without a live session
(:meth:`~sidecar.proxy.gateway.Gateway.anonymous`: forwarded without identity, the login
redirect, or the 401 page): judged again after a handover, a reload in between could
change the answer.

Most requests are served without a single coroutine (:mod:`sidecar.proxy.exchange`): the
session comes from the cache, an idle upstream connection from the pool, and the answer is
written from the upstream connection's own callback. Whatever must wait — a session lookup
in the store, a new upstream connection, a body to stream — goes on in a task. Requests
with the same session cookie that come while one of them is judged by the store wait for
that judgement instead of asking again (a page's burst of requests when the cache had no
entry: one store read, no task each).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from sidecar.memo import Memo
from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.forward import Forwarder
from sidecar.proxy.origins import PublicOrigin, hosts_allowed
from sidecar.proxy.paths import NormalPath, UnsafePath, normalise
from sidecar.proxy.redeem_lane import RedeemLane
from sidecar.proxy.verdicts import Verdict
from sidecar.refer.redeem import may_hold_refer, plain_refer_values
from sidecar.services import Services
from sidecar.session_cookies import NO_COOKIES, RequestCookies, cookie_values
from sidecar.sessions import SessionManager
from sidecar.telemetry.access import AccessLine
from sidecar.web.heads import Head
from sidecar.web.inflight import InFlight
from sidecar.web.lanes import Reply, Started

if TYPE_CHECKING:
    from sidecar.proxy.auth_lane import AuthLane
    from sidecar.proxy.gateway import Gateway

LOG = logging.getLogger("sidecar.forward")
_FORWARDED_HOST: Final = (b"x-forwarded-host", b"forwarded")


@dataclass(slots=True, init=False)  # its __init__ compiled: see sidecar.web.heads.Head
class Admitted:
    """What the lane read of a request it may serve."""

    path: NormalPath
    path_text: str  # the raw path, without the query (for the access line)
    cookies: RequestCookies
    request_id: str | None  # the client's X-Request-Id
    accept: str | None
    forwarded_for: list[str]  # X-Forwarded-For values (the access line's remote)
    refer: list[str] | None  # a plain refer link's values (sidecar.proxy.redeem_lane)
    auth: bool  # forward-auth's sub-request (sidecar.proxy.auth_lane)

    def __init__(
        self,
        path: NormalPath,
        path_text: str,
        cookies: RequestCookies,
        request_id: str | None,
        accept: str | None,
        forwarded_for: list[str],
        refer: list[str] | None = None,
        auth: bool = False,
    ) -> None:
        self.path = path
        self.path_text = path_text
        self.cookies = cookies
        self.request_id = request_id
        self.accept = accept
        self.forwarded_for = forwarded_for
        self.refer = refer
        self.auth = auth


class ExpressLane:
    """Serves plain forwarded requests for the lean front (see the module docstring)."""

    def __init__(
        self,
        services: Services,
        gateway: Gateway,
        forwarder: Forwarder,
        public: PublicOrigin,
        clients: ClientAddresses,
        sessions: SessionManager,
        redemptions: RedeemLane,
        auth: AuthLane,
    ) -> None:
        self.services = services
        self.redemptions = redemptions
        self.auth = auth
        self.gateway = gateway
        self.forwarder = forwarder
        self.clients = clients
        self._public = public
        self._sessions = sessions  # its cookie_name: a reload may change it
        self._own: tuple[str, ...] = (services.config.proxy.prefix,)
        self._normalise = Memo(normalise)
        self.access = AccessLine("proxy")
        self.drain: InFlight | None = None
        # The session cookies being judged by the store (with the sessions' ends count when
        # the lookup began), and the exchanges that wait for it.
        self._judging: dict[tuple[int, tuple[str, ...]], list[Exchange]] = {}

    def own_routes(self, literals: tuple[str, ...]) -> None:
        """Decline every path that begins with one of ``literals`` (the router's own)."""
        self._own = literals + self._own

    def start(self, head: Head, reply: Reply) -> Started | None:
        """Take ``head`` (None: declined now, nothing written)."""
        admitted = self._admit(head, reply.peer)
        if admitted is None:
            return None
        if admitted.auth:
            return self.auth.start(self, head, reply, admitted)
        if admitted.refer is not None:
            return self.redemptions.start(self, head, reply, admitted, admitted.refer)
        exchange = Exchange(self, head, reply, admitted)
        verdict = self.gateway.judge_now(admitted.path, admitted.cookies)
        if verdict is None:  # the store must be asked
            self._judge(exchange, admitted.cookies.values)
            return exchange
        exchange.judged(verdict)
        return exchange

    def _judge(self, exchange: Exchange, cookies: tuple[str, ...]) -> None:
        """Judge ``exchange`` in a task that asks the store, or, when a request with the
        same session ``cookies`` is being judged so, with that one's answer."""
        drain = self.drain
        if drain is not None:
            # In flight while judged, as in aiohttp's handler: a graceful shutdown waits
            # for it. (An answer counts itself before the judging ends: no gap between.)
            drain.begin()
        # Only with a lookup begun since the last logout or revocation began and ended in
        # this process: a request sent after one must not share a read from before it.
        flight = (self._sessions.ends, cookies)
        waiting = self._judging.get(flight)
        if waiting is not None:
            waiting.append(exchange)
            return
        self._judging[flight] = []
        task = exchange.task = asyncio.get_running_loop().create_task(exchange.judge())
        task.add_done_callback(lambda done: self._judged(flight, done))

    def _judged(
        self, flight: tuple[int, tuple[str, ...]], task: asyncio.Task[Verdict | None]
    ) -> None:
        """The store's judgement for ``flight``'s cookies is in: the exchanges that waited
        for it are judged with the same session (or none), each for its own path; without one
        (the first request's client left, or its judging failed) each asks on its own."""
        drain = self.drain
        if drain is not None:
            drain.end()
        waiting = self._judging.pop(flight, [])
        cookies = flight[1]
        verdict = None
        if not task.cancelled():
            failed = task.exception()
            if failed is None:
                verdict = task.result()
            else:  # (retrieved here: logged here)
                LOG.error("the express lane failed after judging a request", exc_info=failed)
        for exchange in waiting:
            try:
                if not exchange.over:  # (else its client left)
                    self._judge_with(exchange, verdict, cookies)
            except Exception:
                LOG.exception("the express lane failed after judging a request")
            finally:
                if drain is not None:
                    drain.end()

    def _judge_with(
        self, exchange: Exchange, verdict: Verdict | None, cookies: tuple[str, ...]
    ) -> None:
        """Judge ``exchange`` with the session ``verdict`` was given for, else on its own."""
        same = None if verdict is None else self.gateway.same_session(verdict, exchange.path)
        if same is None:
            self._judge(exchange, cookies)
        else:
            exchange.judged(same)  # (a failure there aborts and finishes it)

    def _admit(self, head: Head, peer: str | None) -> Admitted | None:
        target = head.target
        cut = target.find(b"?")
        raw_path = target if cut < 0 else target[:cut]
        refer = None
        # Forward-auth's sub-request (its query is not a refer link: nothing redeems it).
        auth = raw_path == self.auth.path
        if auth:
            if head.method != "GET":
                return None
        elif cut >= 0 and may_hold_refer(query := target[cut + 1 :].decode("latin-1")):
            # Perhaps a refer link: a plain one's GET is redeemed here, the rest by the
            # handler (no other query is parsed here).
            if head.method != "GET" or head.length or not target.isascii():
                return None
            refer = plain_refer_values(query)
            if refer is None:
                return None
        path_text = raw_path.decode("utf-8", "surrogateescape")
        own = self._own
        # (Forward-auth's is the one own route the lean front serves.)
        if not auth and (
            path_text.startswith(own) or ("%" in path_text and unquote(path_text).startswith(own))
        ):
            return None
        try:
            path = self._normalise(path_text)
        except UnsafePath:
            return None
        hosts: list[str] = []
        forwarded_hosts: list[str] = []
        forwarded: list[str] = []
        forwarded_for: list[str] = []
        cookies: list[bytes] = []
        request_id = accept = None
        names = head.names
        headers = head.headers
        # (By index: zip's strict=True, a keyword, made its call a generic one per request.)
        for i in range(len(names)):
            lower = names[i]
            value = headers[i][1]
            if lower == b"host":
                hosts.append(value.decode("utf-8", "surrogateescape"))
            elif lower == b"cookie":
                cookies.append(value)
            elif lower == b"x-forwarded-for":
                forwarded_for.append(value.decode("utf-8", "surrogateescape"))
            elif lower in _FORWARDED_HOST:
                text = value.decode("utf-8", "surrogateescape")
                (forwarded_hosts if lower == b"x-forwarded-host" else forwarded).append(text)
            # The first copy, even an empty one, as aiohttp's headers.get() reads it.
            elif lower == b"x-request-id" and request_id is None:
                request_id = value.decode("utf-8", "surrogateescape")
            elif lower == b"accept" and accept is None:
                accept = value.decode("utf-8", "surrogateescape")
        trusted = self.clients.trusts(peer)
        # Forward-auth's route is exempt, as from the host_check middleware: the ingress
        # asks about any host, and the original host is what forward-auth judges.
        if not auth and not hosts_allowed(
            self._public,
            hosts,
            forwarded_hosts if trusted else (),
            forwarded if trusted else (),
        ):
            return None
        read = cookie_values(cookies, self._sessions.cookie_name) if cookies else NO_COOKIES
        return Admitted(path, path_text, read, request_id, accept, forwarded_for, refer, auth)
