"""What the gateway decides about a request outside the prefix (:meth:`Gateway.judge`).

One judgement serves both the aiohttp handler (:meth:`sidecar.proxy.gateway.Gateway.proxy`)
and the lean front's lane (:mod:`sidecar.proxy.express`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.sessions import Session


@dataclass(frozen=True, slots=True, init=False)
class Verdict:
    """:meth:`Gateway.judge`'s answer: ``forward`` with the ``identity`` headers, or not;
    ``session`` is the request's live session, if any (not forwarded with one: the role's
    rules refuse the path)."""

    forward: bool
    identity: tuple[tuple[str, str], ...]
    session: Session | None

    def __init__(
        self,
        forward: bool,
        identity: tuple[tuple[str, str], ...] = (),
        session: Session | None = None,
    ) -> None:
        # Frozen: set as the generated __init__ sets them, but compiled (one per request;
        # see Head in sidecar.web.heads).
        object.__setattr__(self, "forward", forward)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "session", session)


PUBLIC: Final = Verdict(True)
ANONYMOUS: Final = Verdict(False)  # no live session: proxy.unauthenticated decides
STORE_DOWN: Final = Verdict(False)  # the session could not be looked up: 503


@dataclass(frozen=True, slots=True)
class Redirect:
    """``proxy.unauthenticated: redirect``'s answer: ``status`` to ``location`` (the login
    page, with the request's target as ``rd``)."""

    status: int
    location: str
