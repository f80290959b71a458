"""One request the express lane took, from its verdict to the last byte of its answer.

The common case runs in callbacks only: :meth:`Exchange.judged` sends the request on an
idle pooled connection (:meth:`~sidecar.proxy.upstream_conn.Connection.start`), and
:meth:`Exchange.upstream_event` — called by that connection once its parser is done with
the bytes — writes the whole answer and gives the connection back. A task takes over
wherever something must be awaited, with the same rules as
:meth:`sidecar.proxy.forward.Forwarder.forward`:

* the session is not in the cache (:meth:`judge`);
* no idle connection, or the idle one turned out closed (:meth:`_relay`: the pool connects,
  and retries a stale connection once). While every slot is taken the exchange waits in
  the pool's queue as it is (:meth:`slot_free`): a burst costs no task per request;
* the body is not in yet, or is large (:meth:`_answer`: read whole within
  ``upstream_timeout``, or streamed with ``stream_idle_timeout`` and ``send_timeout``).
  Whether it is in is looked at one loop iteration after the head came
  (:meth:`_decide`), when the forwarder's own task would look: a small answer split over
  two reads is relayed whole on both paths.

What goes over the wire either way is :mod:`sidecar.proxy.relay`'s. Failures answer the
forwarder's 502/504 pages, logged with its words. Every request ends in :meth:`finish`:
counted by the drain, one access line, the connection told.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from sidecar.proxy import answers, relay
from sidecar.proxy.forward import GATEWAY_TIMEOUT, Failure, read_whole, upstream_failure
from sidecar.proxy.paths import NormalPath
from sidecar.proxy.pool import IDEMPOTENT, UpstreamPool, UpstreamResponse
from sidecar.proxy.upstream_conn import Connection
from sidecar.proxy.upstream_errors import StaleConnection, UpstreamError
from sidecar.proxy.verdicts import PUBLIC, STORE_DOWN, Redirect, Verdict
from sidecar.session_cookies import NO_COOKIES
from sidecar.telemetry import metrics
from sidecar.telemetry.access import CLIENT_CLOSED, request_id_for
from sidecar.telemetry.context import CURRENT, RequestRecord
from sidecar.web.heads import Head
from sidecar.web.lanes import Reply

if TYPE_CHECKING:
    from sidecar.proxy.express import Admitted, ExpressLane

LOG = logging.getLogger("sidecar.forward")
Held = UpstreamResponse | None  # an answer a task reads, released when it ends


class Exchange:
    """A request being answered by the express lane (a :class:`~sidecar.web.lanes.Started`)."""

    __slots__ = ("_admitted", "_body", "_conn", "_deciding", "_head", "_holds_slot",
                 "_keep_alive", "_lane", "_method", "_over", "_pool", "_record", "_reply",
                 "_started", "_upstream_head", "slot_deadline", "status", "task")  # fmt: skip

    def __init__(self, lane: ExpressLane, head: Head, reply: Reply, admitted: Admitted) -> None:
        self._lane = lane
        # The parsed head until the request sent upstream is built from it (_begin); then
        # only what the rest of the exchange reads of it.
        self._head: Head | None = head
        self._method = head.method
        self._keep_alive = head.keep_alive
        self._reply = reply
        self._admitted = admitted
        self.task: asyncio.Task[Verdict | None] | asyncio.Task[None] | None = None
        self._conn: Connection | None = None
        self._pool: UpstreamPool | None = None  # the forwarder's, read once (a property)
        self._record: RequestRecord | None = None
        self._started = 0.0
        self._upstream_head = b""
        self._body = b""  # the request body as sent upstream (framed: see _begin)
        self._over = False
        self._deciding = False  # the head came; the rest is looked at next iteration
        self.slot_deadline = 0.0  # while queued for a slot (the pool's)
        self._holds_slot = False
        self.status = 500

    # -- the verdict -----------------------------------------------------------------
    async def judge(self) -> Verdict | None:
        """The verdict with the store asked (the cache could not tell); None if it failed."""
        admitted = self._admitted
        try:
            verdict = await self._lane.gateway.judge(admitted.path, admitted.cookies)
            self.judged(verdict)
        except Exception:
            if self._record is not None:
                raise  # an answer began: nobody else may answer now
            LOG.exception("the express lane failed to judge a request; aiohttp answers it")
            self._reply.decline()
            return None
        return verdict

    @property
    def path(self) -> NormalPath:
        return self._admitted.path

    @property
    def over(self) -> bool:
        """Answered, or abandoned (its client left)."""
        return self._over

    def judged(self, verdict: Verdict) -> None:
        """Act on ``verdict``: answer it (or forward it)."""
        refused: Failure | Redirect | None = None
        lane = self._lane
        if verdict is STORE_DOWN:
            refused = Failure(503, "store_unavailable")
        elif verdict.session is None and not verdict.forward:
            # No live session: proxy.unauthenticated decides, as in the handler.
            head = self._head
            assert head is not None  # (judged once, before _begin)
            target = head.target.decode("utf-8", "surrogateescape")
            refused = lane.gateway.anonymous(self._method, target, self._admitted.accept or "")
            if refused is None:
                verdict = PUBLIC  # "pass": forwarded without identity
        elif not verdict.forward:
            refused = Failure(403, "forbidden")
        record = self._record = RequestRecord(request_id_for(self._admitted.request_id), "proxied")
        if verdict.session is not None:
            record.user_id = verdict.session.record.user_id
        if lane.drain is not None:
            lane.drain.begin()
        self._started = time.perf_counter()
        try:
            self._begin(verdict, refused)
        except Exception:
            # Counted in and logged: never left half-begun (the drain would wait for it).
            self._reply.abort()
            self.finish()
            raise

    def _begin(self, verdict: Verdict, refused: Failure | Redirect | None) -> None:
        lane = self._lane
        record = self._record
        assert record is not None
        if refused is not None:
            self._fail(refused)
            self.finish()
            return
        forwarder = lane.forwarder
        head = self._head
        assert head is not None  # (judged once)
        admitted = self._admitted
        self._upstream_head, self._body = relay.upstream_request(
            forwarder, head, self._reply.peer, admitted.cookies, verdict.identity,
            record.request_id,
        )  # fmt: skip
        # From here the request is what goes upstream: the parsed head, the cookies and the
        # bytes as the client sent them are not kept while it waits for a slot and for its
        # answer (a burst of requests beyond proxy.max_connections all wait at once, and the
        # memory their peak takes stays with the process).
        self._head = None
        admitted.cookies = NO_COOKIES
        self._reply.committed()
        pool = self._pool = forwarder.pool
        if pool is None:
            self._spawn(self._relay())
            return
        conn = pool.take_idle()
        if conn is not None or pool.slot_for(self):
            self._go(pool, conn)
        else:
            # Queued: slot_free() or slot_timeout() goes on. The task that judged it (if
            # any) is over: not kept, with its coroutine, while this waits.
            self.task = None

    def _go(self, pool: UpstreamPool, conn: Connection | None) -> None:
        """With a slot of ``pool``: on the idle ``conn`` in callbacks, else on a new
        connection in a task."""
        if conn is not None:
            try:
                # A body the lean front read whole goes in the same write, framed by the
                # client's own Content-Length (or chunked, above).
                conn.start(self._upstream_head + self._body, self)
            except StaleConnection:
                conn.abort()  # closed meanwhile: another one, in the same slot
            else:
                self._conn = conn
                pool.begin(conn)
                return
        self._holds_slot = True  # until the task's first step hands it to the pool
        self._spawn(self._relay(slot_held=True))

    # -- queued for a slot (sidecar.proxy.pool.SlotWaiter) ----------------------------
    def slot_free(self) -> bool:
        """A slot is this exchange's; False when its client left meanwhile."""
        if self._over:
            return False
        pool = self._pool
        assert pool is not None  # it queued this exchange
        self._go(pool, pool.take_held())
        return True

    def slot_timeout(self) -> None:
        """No slot within ``upstream_timeout``: a 504, as the forwarder's for a busy pool."""
        if self._over:
            return
        record = self._record
        assert record is not None
        record.upstream_s = time.perf_counter() - self._started
        LOG.warning("upstream did not answer within %ss", self._lane.forwarder.response_timeout)
        self._fail(GATEWAY_TIMEOUT)
        self.finish()

    # -- the answer, in callbacks ----------------------------------------------------
    def upstream_event(self, conn: Connection) -> None:
        """The pooled connection's news (:class:`~sidecar.proxy.upstream_conn.Listener`)."""
        if conn is not self._conn or self._over or self._deciding:
            return
        try:
            self._on_upstream(conn)
        except Exception:
            self._broken(conn)

    def _decide(self, conn: Connection) -> None:
        """A loop iteration after the head came: the answer whole if the rest of its body
        was read meanwhile (as the forwarder's task sees it when it resumes), else on in a
        task."""
        if conn is not self._conn or self._over:
            return
        try:
            if conn.error is not None:  # what the forwarder's exchange() raises on resuming
                self._upstream_failed(conn, conn.error)
            else:
                self._answer_now(conn)
        except Exception:
            self._broken(conn)

    def _broken(self, conn: Connection) -> None:
        # A bug must not leave the client waiting for ever: drop both connections.
        LOG.exception("the express lane failed relaying an answer")
        pool = self._pool
        if self._conn is conn and pool is not None:  # not handed on yet
            self._conn = None
            pool.drop(conn)
        self._reply.abort()
        self.finish()

    def _on_upstream(self, conn: Connection) -> None:
        pool = self._pool
        assert pool is not None  # the connection came from it
        record = self._record
        assert record is not None
        error = conn.error
        if error is not None:
            self._upstream_failed(conn, error)
            return
        if conn.head_pending:
            return
        elapsed = time.perf_counter() - self._started
        record.upstream_s = elapsed
        metrics.observe_upstream(elapsed)
        if conn.complete:
            self._answer_now(conn)  # the usual case: the whole answer came in one read
        else:
            self._deciding = True
            asyncio.get_running_loop().call_soon(self._decide, conn)

    def _upstream_failed(self, conn: Connection, error: UpstreamError) -> None:
        """An error by the time the answer is looked at (none came, or the read that
        completed the head also failed: one too large, a bad byte after it) fails the
        exchange as the forwarder's ``exchange()`` does when it resumes: 502/504."""
        pool = self._pool
        record = self._record
        assert pool is not None  # the connection came from it
        assert record is not None
        self._conn = None
        pool.drop(conn)
        if (
            isinstance(error, StaleConnection)
            and self._method in IDEMPOTENT
            and not self._body  # (the body as sent: empty when the client's was)
        ):
            # The upstream closed the idle connection as the request left: once more, on
            # a fresh one, as the pool does. Only an idempotent request without a body,
            # as the pool's rule: the upstream may have acted on it before closing
            # (RFC 9110 §9.2.2).
            self._spawn(self._relay())
            return
        record.upstream_s = time.perf_counter() - self._started
        self._fail(upstream_failure(error, conn.timeout))
        self.finish()

    def _answer_now(self, conn: Connection) -> None:
        pool = self._pool
        assert pool is not None  # the connection came from it
        self._conn = None
        upstream = pool.response(conn)
        if not upstream.complete:
            conn.detach()
            self._spawn(self._finish_answer(upstream), upstream)
            return
        try:
            self._whole(upstream, upstream.take_body())
        finally:
            upstream.release()
        self.finish()

    # -- the answer, in a task -------------------------------------------------------
    def _spawn(self, work: Coroutine[None, None, None], upstream: Held = None) -> None:
        # A task cancelled before its first step (its client left in the same iteration)
        # never runs its body, nor its finally: then its ending frees and finishes here.
        task = self.task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(lambda _: self._ended(upstream))

    def _ended(self, upstream: Held) -> None:
        if self._holds_slot:  # cancelled before its first step: the slot was never used
            self._holds_slot = False
            pool = self._pool
            if pool is not None:
                pool.give_back()
        if upstream is not None:
            upstream.release()  # (once released, a no-op)
        if not self._over:
            self.status = CLIENT_CLOSED
            self.finish()

    async def _relay(self, slot_held: bool = False) -> None:
        self._holds_slot = False  # the pool's request() has it from here
        CURRENT.set(self._record)  # this task's own context: for the forwarder's records
        try:
            forwarder = self._lane.forwarder
            # The body, read whole and framed, goes in the head's write.
            upstream = await forwarder.exchange(
                self._method, self._upstream_head, slot_held=slot_held, ready=self._body
            )
            if isinstance(upstream, Failure):
                self._fail(upstream)
            else:
                await self._answer(upstream)
        except asyncio.CancelledError:
            self.status = CLIENT_CLOSED
            raise
        finally:
            self.finish()

    async def _finish_answer(self, upstream: UpstreamResponse) -> None:
        CURRENT.set(self._record)
        try:
            await self._answer(upstream)
        except asyncio.CancelledError:
            self.status = CLIENT_CLOSED
            raise
        finally:
            upstream.release()
            self.finish()

    async def _answer(self, upstream: UpstreamResponse) -> None:
        forwarder = self._lane.forwarder
        if forwarder.buffered(upstream):
            payload = await read_whole(upstream)
            if isinstance(payload, Failure):
                self._fail(payload)
            else:
                self._whole(upstream, payload)
            return
        out = forwarder.headers.response_headers(upstream.headers)
        self.status = upstream.status
        keep_alive = self._keep_alive
        await relay.stream(self._reply, upstream, out, keep_alive, forwarder.send_timeout)

    # -- writing and ending ----------------------------------------------------------
    def _whole(self, upstream: UpstreamResponse, body: bytes) -> None:
        record = self._record
        assert record is not None
        out = self._lane.forwarder.headers.response_headers(upstream.headers)
        self.status = upstream.status
        self._reply.write(answers.whole(upstream.status, upstream.reason, out, body,
                                        record.request_id, self._keep_alive))  # fmt: skip

    def _fail(self, failed: Failure | Redirect) -> None:
        record = self._record
        assert record is not None
        self.status = failed.status
        config = self._lane.services.config
        self._reply.write(answers.refusal(failed, self._admitted.accept, config.pages,
                                          record.request_id, self._keep_alive))  # fmt: skip

    def finish(self) -> None:
        """The answer is complete (or abandoned): count, log, and tell the connection."""
        if self._over:
            return
        self._over = True
        lane = self._lane
        record = self._record
        if record is not None:
            if lane.drain is not None:
                lane.drain.end()
            remote = lane.clients.client(self._reply.peer, self._admitted.forwarded_for)
            elapsed = time.perf_counter() - self._started
            lane.access(self._method, self._admitted.path_text, self.status, elapsed,
                        record, remote)  # fmt: skip
        self._reply.finished()

    def cancel(self) -> None:
        """The client left: stop, free the upstream connection, log a 499."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()  # its own ending finishes (or, still judging, nothing began)
            return
        conn, self._conn = self._conn, None
        pool = self._pool
        if conn is not None and pool is not None:
            pool.drop(conn)
        self.status = CLIENT_CLOSED
        self.finish()
