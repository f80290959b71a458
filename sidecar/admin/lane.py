"""The admin listener's lane: ``POST /referstring`` served by the lean front without aiohttp.

A mint is the admin port's hot path, and aiohttp's server (its request, payload stream,
writer, router and middlewares) cost more CPU than the mint itself. :class:`MintLane` is
the :class:`~sidecar.web.lanes.Lane` of the admin listener (``admin.lean_front``, on by
default): the lean front (:mod:`sidecar.web.lean`) offers it each plain HTTP/1.1 request
whose ``Content-Length`` body (up to 16 KiB) came whole with its head, and it
serves only a mint that succeeds, with the handler's own steps
(:mod:`sidecar.admin.mints`) and the guards' own checks (:meth:`Guards.admits`). It
declines — before writing a byte, so that aiohttp's server answers exactly as without the
lane — every request whose answer could be anything but that ``200``:

* any other method, path or query, ``Connection: close``, a body over ``admin.max_body``;
* an ``Origin`` or ``Sec-Fetch-Site`` header (browsers: the middleware refuses them);
* a peer, ``Host`` or ``Authorization`` the guards refuse, or more than one
  ``Authorization``;
* a ``Content-Type`` other than exactly ``application/json`` or
  ``application/json; charset=utf-8`` (what backends' HTTP clients send), or a
  ``Content-Encoding``;
* a body that is not one strict JSON object, or that the mint refuses (400).

A mint the store refuses once taken — over ``admin.mint_rate`` (``429``), the store
unavailable (``503``), or any other failure of the store call (``500``, as the handler's
guard answers an unhandled error) — is answered here with the handler's answer, byte for
byte, and not handed over: aiohttp's handler would count it again, and after a store
failure (which may come after the store kept the link) mint and record a second link. A
fault of the lane's own after that closes the connection: nobody waits for an answer that
will not come.

tests/test_admin_lane.py sends the same bytes to a sidecar with the lane and one without
and compares the answers byte for byte (``Date``, ``X-Request-Id`` and the minted values
aside); tests/security's admin cases, which use real listeners, run against the lane,
which is on by default.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from functools import lru_cache
from time import perf_counter, time
from typing import Final

from aiohttp import web

from sidecar.admin.guards import (
    STORE_DOWN_MESSAGE,
    Guards,
    RequestError,
    admin_error,
    count_mint_failure,
    too_many_mints,
)
from sidecar.admin.mints import announce, mint_link
from sidecar.links.errorcodes import UNEXPECTED_FAILURE
from sidecar.refer.minting import MintedLink
from sidecar.services import Services
from sidecar.store.base import StoreUnavailable
from sidecar.store.ratelimit import RateLimited
from sidecar.telemetry.access import CLIENT_CLOSED, AccessLine, request_id_for
from sidecar.telemetry.context import CURRENT, RequestRecord
from sidecar.tokens.records import record_counted_mint
from sidecar.web.heads import Head
from sidecar.web.inflight import InFlight
from sidecar.web.jsonbody import BadBody, parse_json_object
from sidecar.web.lanes import Reply, Started

_LOG = logging.getLogger("sidecar.admin")  # the guards' logger: the same warning
PATH: Final = "/referstring"
_TARGET: Final = PATH.encode()
# Browsers' headers (the middleware refuses them), and a coded body (jsonbody refuses it).
_REFUSED: Final = (b"origin", b"sec-fetch-site", b"content-encoding")
_JSON_TYPES: Final = (b"application/json", b"application/json; charset=utf-8")
# What aiohttp's server writes for the handler's answer, in its order (json_response, the
# access middleware's X-Request-Id, then Content-Length, Date, and own_answer_headers'):
# the parts around the request id, the length and the Date line, joined (a bytes format
# costs more than the join).
_HEAD_START: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Cache-Control: no-store\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"X-Request-Id: "
)
_HEAD_LENGTH: Final = b"\r\nContent-Length: "
_CRLF: Final = b"\r\n"
_HEAD_END: Final = b"X-Content-Type-Options: nosniff\r\n\r\n"


class MintLane:
    """Serves successful mints for the admin listener's lean front (see the module
    docstring)."""

    def __init__(self, services: Services, guards: Guards) -> None:
        self.services = services
        self.guards = guards
        self.access = AccessLine("admin")
        self.drain: InFlight | None = None
        # The loop of the listener it serves, asked once: asyncio.get_running_loop() costs
        # a getpid() system call on Python 3.11, and every mint starts a task on it.
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, head: Head, reply: Reply) -> Started | None:
        """Take ``head`` (None: declined now, nothing written)."""
        if head.target != _TARGET or head.method != "POST" or not head.keep_alive:
            return None
        if head.length > self.guards.max_body:
            return None  # aiohttp's 413 (the lean front takes bodies up to 16 KiB)
        started = perf_counter()
        host = content_type = request_id = None
        authorizations: list[str] = []
        for lower, (_, value) in zip(head.names, head.headers, strict=True):
            if lower == b"host":
                host = value.decode("utf-8", "surrogateescape")
            elif lower == b"authorization":
                authorizations.append(value.decode("utf-8", "surrogateescape"))
            elif lower == b"content-type":
                content_type = value
            elif lower == b"x-request-id":
                if request_id is None:  # the first copy, as aiohttp's headers.get()
                    request_id = value.decode("utf-8", "surrogateescape")
            elif lower in _REFUSED:
                return None
        if content_type not in _JSON_TYPES or host is None:
            return None
        if not self.guards.admits(reply.peer, host, reply.sockname, authorizations):
            return None
        try:
            link = mint_link(self.services, parse_json_object(head.body))
        except (BadBody, RequestError):
            return None
        record = RequestRecord(request_id_for(request_id), "admin")
        key, rate = self.guards.quota()
        now = self.services.clock()
        call = record_counted_mint(self.services.store, link.claims, key, rate, now)
        mint = _Mint(self, reply, link, record, rate.limit, now)
        mint.started = started
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # The store call is the task itself, and the answer its done callback: no
        # coroutine of the lane's around the call (two coroutine levels fewer a mint).
        task = mint.task = loop.create_task(call)
        mint.drain = self.drain
        if mint.drain is not None:  # in flight until answered, as in aiohttp's handler
            mint.drain.begin()
        task.add_done_callback(mint.answer)
        return mint


class _Mint:
    """One mint the lane took: kept in the store (its task), then answered (or declined)
    by :meth:`answer`."""

    __slots__ = (
        "_lane",
        "_limit",
        "_link",
        "_now",
        "_record",
        "_reply",
        "drain",
        "started",
        "task",
    )

    def __init__(
        self,
        lane: MintLane,
        reply: Reply,
        link: MintedLink,
        record: RequestRecord,
        limit: int,
        now: float,
    ) -> None:
        self._lane = lane
        self._reply = reply
        self._link = link
        self._record = record
        self._limit = limit  # admin.mint_rate's, when the mint was counted
        self._now = now
        self.started = 0.0
        self.task: asyncio.Task[tuple[int, float]] | None = None
        self.drain: InFlight | None = None

    def answer(self, task: asyncio.Task[tuple[int, float]]) -> None:
        """The store call ended: answer, refuse or decline (see the module docstring)."""
        try:
            self._answer(task)
        except Exception:
            # A fault of ours once the store call is done: the client must not wait for an
            # answer that never comes. Not handed over (the link may be recorded, and
            # aiohttp's handler would record a second one): the connection is closed.
            _LOG.exception("answering POST %s failed; connection closed", PATH)
            self._reply.abort()
        finally:
            drain = self.drain
            if drain is not None:
                drain.end()

    def _answer(self, task: asyncio.Task[tuple[int, float]]) -> None:
        reply, record = self._reply, self._record
        # The request's record for the audit line (its request_id): set in this callback's
        # own context (a copy, made when the callback was added, gone after it), as the
        # access middleware sets it for aiohttp's handler. The store call needs none.
        CURRENT.set(record)
        try:
            count, reset_at = task.result()
        except asyncio.CancelledError:
            self._log(CLIENT_CLOSED)
            return
        except StoreUnavailable:
            # Answered here, not handed over: the store may have kept the mint before it
            # failed, and aiohttp's handler would mint and record a second link.
            _LOG.warning("store unavailable during POST %s", PATH)
            self._refuse(admin_error(503, STORE_DOWN_MESSAGE))
            return
        except Exception:
            # Answered here as aiohttp's handler answers it, not handed over: the store
            # may have counted and kept the mint, and the handler would do both again.
            _LOG.exception("unhandled error during POST %s", PATH)
            self._refuse(admin_error(500, "internal error", error_code=UNEXPECTED_FAILURE))
            return
        if count > self._limit:  # counted, not recorded
            limited = RateLimited.until(reset_at, self._now)
            self._refuse(too_many_mints(None, limited.retry_after))
            return
        body = announce(self._link).encode()
        length = str(len(body)).encode()
        reply.write(b"".join([_HEAD_START, record.request_id.encode(), _HEAD_LENGTH, length,
                              _CRLF, _date_line(), _HEAD_END, body]))  # fmt: skip
        self._log(200)
        reply.finished()

    def _refuse(self, answer: web.Response) -> None:
        """A refusal of the store's, with the bytes aiohttp's server writes for it."""
        body = answer.body
        assert isinstance(body, bytes)  # json_response's
        head = [b"HTTP/1.1 %d %s\r\n" % (answer.status, answer.reason.encode())]
        head += [f"{name}: {value}\r\n".encode() for name, value in answer.headers.items()]
        head.append(b"X-Request-Id: %b\r\nContent-Length: %d\r\n" % (
            self._record.request_id.encode(), len(body)))  # fmt: skip
        head.append(_date_line() + b"X-Content-Type-Options: nosniff\r\n\r\n")
        self._reply.write(b"".join(head) + body)
        count_mint_failure(PATH, answer.status)
        self._log(answer.status)
        self._reply.finished()

    def _log(self, status: int) -> None:
        elapsed = perf_counter() - self.started
        self._lane.access("POST", PATH, status, elapsed, self._record, self._reply.peer)

    def cancel(self) -> None:
        """The client left: the mint stops where it is (a kept link stays recorded)."""
        if self.task is not None:
            self.task.cancel()


def _date_line() -> bytes:
    return _date_of(int(time()))


@lru_cache(maxsize=2)
def _date_of(second: int) -> bytes:
    return b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
