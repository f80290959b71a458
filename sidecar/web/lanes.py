"""What the lean front (:mod:`sidecar.web.lean`) and the lanes that serve its requests promise
each other: a :class:`Lane` takes a parsed head and answers through a :class:`Reply`, and the
request it took is :class:`Started` (cancelled when its client leaves). The proxy's lanes are
in :mod:`sidecar.proxy.express`, the admin listener's in :mod:`sidecar.admin.lane`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sidecar.web.heads import Head

if TYPE_CHECKING:
    from sidecar.web.inflight import InFlight


class Reply(Protocol):
    """What a lane answers through (:class:`LeanConnection`); ``peer`` is the client's
    address as the socket gives it, ``sockname`` the listener's own address (as
    aiohttp's ``transport.get_extra_info("sockname")``)."""

    peer: str | None

    @property
    def sockname(self) -> object: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self, within: float) -> bool: ...

    def abort(self) -> None: ...

    def finished(self) -> None:
        """The answer is written: go on with the next request."""

    def decline(self) -> None:
        """Not answered after all (nothing written): hand the request to aiohttp."""

    def committed(self) -> None:
        """The lane answers this request itself (it will not :meth:`decline` it): the
        request's bytes as received, kept for a handover, are not needed any more."""


class Started(Protocol):
    """A request a lane took; :meth:`cancel` when its client leaves."""

    def cancel(self) -> None: ...


class Lane(Protocol):
    """Serves the hot path: :meth:`start` takes ``head`` and answers it through ``reply``
    (ending with :meth:`Reply.finished`, or :meth:`Reply.decline` before writing a byte),
    or returns None having done nothing (the request is then handed over). ``drain``
    counts the requests it answers (set by :meth:`~sidecar.web.drain.Drain.attach`)."""

    drain: InFlight | None

    def start(self, head: Head, reply: Reply) -> Started | None: ...
