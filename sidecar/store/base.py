"""The storage contract: small async protocols, one per concern, that SQLite and Redis implement.

Everything the product keeps goes through :class:`Store`, the union of the concerns
(:class:`StoreLifecycle`, :class:`BurnStore`, :class:`TokenRecordStore`,
:class:`SessionStore`, :class:`UserStore`, :class:`LinkStore`, :class:`CounterStore`).
Both backends pass the same contract suite (``tests/test_store_contract.py``). Time is
always a parameter (``now``, epoch seconds) so expiry is testable without sleeping.

Error model (domain errors, never HTTP):

    StoreError
     ├── StoreUnavailable   the backend cannot be reached or failed; callers fail closed (503)
     └── UserExists         create_user with an email that already belongs to a user
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Final, Protocol

from sidecar.store.token_record import TokenRecord as TokenRecord


class StoreError(Exception):
    """Base class of store errors."""


class StoreUnavailable(StoreError):
    """The backend is down or failed mid-operation. Nothing was half-written."""


class UserExists(StoreError):
    """A user with this email already exists."""


class TokenState(enum.Enum):
    """What the store knows about a token id."""

    UNUSED = "unused"
    USED = "used"
    REVOKED = "revoked"


class BurnResult(enum.Enum):
    """Outcome of :meth:`Store.burn`: exactly one caller ever gets ``BURNED``."""

    BURNED = "burned"
    ALREADY_USED = "already_used"
    REVOKED = "revoked"


@dataclass(slots=True, init=False)
class SessionRecord:
    """A server-side session. ``key`` is a hash of the cookie value, never the value itself.

    Every redemption makes one: immutable as :class:`TokenRecord` is (``Final`` fields, a
    written ``__init__``; a frozen dataclass's cost about 6 % of a redemption's
    instructions). A changed copy is ``dataclasses.replace``'s."""

    key: Final[str]
    user_id: Final[str]
    role: Final[str]
    params: Final[dict[str, str]]
    created_at: Final[float]
    expires_at: Final[float]
    idle_timeout: Final[float]
    last_seen: Final[float]
    token_id: Final[str]
    email: Final[str | None]
    module: Final[str | None]
    client: Final[str | None]  # the address the session was started from

    def __init__(
        self,
        key: str,
        user_id: str,
        role: str,
        params: dict[str, str],
        created_at: float,
        expires_at: float,
        idle_timeout: float,
        last_seen: float,
        token_id: str,
        email: str | None = None,
        module: str | None = None,
        client: str | None = None,
    ) -> None:
        self.key = key
        self.user_id = user_id
        self.role = role
        self.params = params
        self.created_at = created_at
        self.expires_at = expires_at
        self.idle_timeout = idle_timeout
        self.last_seen = last_seen
        self.token_id = token_id
        self.email = email
        self.module = module
        self.client = client

    def is_live(self, now: float) -> bool:
        return now < self.expires_at and now < self.last_seen + self.idle_timeout


@dataclass(frozen=True, slots=True)
class TokenUse:
    """A token id's state and when the store recorded it (None while unused)."""

    state: TokenState
    at: float | None = None


@dataclass(frozen=True, slots=True)
class User:
    """A user of the auth-links API (GoTrue-style)."""

    id: str
    email: str
    created_at: float
    confirmed_at: float | None = None
    invited_at: float | None = None
    password_hash: str | None = field(default=None, repr=False)
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PendingLink:
    """The newest auth link of one type for one user.

    Minting a new link of the same ``(user_id, link_type)`` replaces the record, which
    makes the older link unusable: redemption checks the token id against this record.
    ``otp_hash`` and ``hashed_token`` are hashes; the store never sees a usable secret.
    """

    user_id: str
    link_type: str
    token_id: str
    hashed_token: str
    otp_hash: str
    expires_at: float
    new_email: str | None = None
    failed_attempts: int = 0


@dataclass(frozen=True, slots=True)
class Persistence:
    """Whether what the backend acknowledged survives a restart of the backend itself.

    ``durable`` is None when the backend would not say (a managed Redis that disables
    ``CONFIG``, an ACL user without the right to read it)."""

    durable: bool | None
    detail: str


# -- the contract, one protocol per concern ---------------------------------------------
# A component that needs one concern takes that protocol (``enforce`` takes a
# CounterStore); the backends implement them all, as :class:`Store`.


class StoreLifecycle(Protocol):
    """Connecting, health and housekeeping."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers."""

    async def persistence(self) -> Persistence:
        """Whether burns and revocations outlive a restart of the backend (a Redis without
        an append-only file or RDB snapshots forgets them: used links open again)."""

    async def purge_expired(self, now: float) -> int:
        """Delete expired burns, revocations, sessions, links, link records and counters;
        returns rows removed (Redis expires keys by itself and may return 0)."""


class BurnStore(Protocol):
    """One-time tokens: burned exactly once, or revoked before use."""

    async def burn(
        self, token_id: str, expires_at: float, session: SessionRecord | None = None
    ) -> BurnResult:
        """Mark ``token_id`` used, exactly once across all callers and processes.

        Durable before returning ``BURNED``. The record may be purged after ``expires_at``
        (the token itself is dead by then).

        With ``session`` (a redemption's writes in one call), the session is created
        (:meth:`SessionStore.create_session`) when, and only when, this call burned the
        token, and ``BURNED`` comes once both are durable; any other answer writes no
        session. SQLite writes both in one transaction (one commit, one thread hop).
        Redis takes two steps, the session only once the burn was answered (and, with
        ``min_replicas_ack``, acknowledged): a burn that times out may still land later
        (a frozen server runs what it queued), and it must not bring a session with it.
        A failure between the steps leaves the token burned with no session — the caller
        cannot tell either way and must say so."""

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        """Revoke an unused token; returns the state it had before (USED stays USED)."""

    async def token_state(self, token_id: str) -> TokenState: ...

    async def token_use(self, token_id: str) -> TokenUse:
        """The state and the time (the store's clock) it was burned or revoked."""


class TokenRecordStore(Protocol):
    """What each minted link was for (read by the admin API), never its text."""

    async def record_token(self, record: TokenRecord, keep_until: float) -> None:
        """Remember a minted link until ``keep_until`` (replaces a record with its id)."""

    async def record_counted(
        self,
        record: TokenRecord,
        keep_until: float,
        key: str,
        window: float,
        limit: int,
        now: float,
    ) -> tuple[int, float]:
        """Count one event under ``key`` (as :meth:`CounterStore.hit`) and, when the count
        is at most ``limit``, remember ``record`` (as :meth:`record_token`): a rate-limited
        mint in one store call, and on SQLite in one transaction. Returns what ``hit``
        returns; the record was written if and only if the count is at most ``limit``."""

    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    async def list_user_tokens(
        self, user_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[TokenRecord]:
        """The user's records, newest first (``created_at`` then ``token_id``, both
        descending), at most ``limit``, starting after the ``(created_at, token_id)``
        cursor when one is given."""


class SessionStore(Protocol):
    """Server-side sessions, keyed by a hash of the cookie."""

    async def create_session(self, session: SessionRecord) -> None: ...

    async def get_session(self, key: str) -> SessionRecord | None:
        """The record, or None. Expiry is the caller's check (``is_live``)."""

    async def touch_session(self, key: str, last_seen: float) -> None:
        """Record activity; ``last_seen`` never moves back, a missing session stays missing."""

    async def delete_session(self, key: str) -> bool: ...

    async def delete_user_sessions(self, user_id: str) -> int:
        """End every session of ``user_id``; returns how many there were."""

    async def list_user_sessions(self, user_id: str) -> list[SessionRecord]:
        """The stored sessions of ``user_id`` (live or not: ``is_live`` is the caller's
        check), oldest first."""

    async def delete_token_sessions(self, token_id: str) -> int:
        """End every session created from the link ``token_id``; returns how many."""


class UserStore(Protocol):
    """Users of the auth-links API."""

    async def create_user(self, user: User) -> None:
        """Insert a user; raise :class:`UserExists` if the email (compared ignoring case)
        or the id is taken."""

    async def update_user(self, user: User) -> None:
        """Replace the user with the same id; raise :class:`UserExists` if a changed
        email is taken by another user. A user that does not exist is not created."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_by_email(self, email: str) -> User | None:
        """The user whose email equals ``email`` ignoring case, or None."""


class LinkStore(Protocol):
    """Pending auth links: the newest one per (user, type), and its wrong-OTP count."""

    async def put_link(self, link: PendingLink) -> None:
        """Store ``link`` as the current one for its (user_id, link_type)."""

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None: ...

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None: ...

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        """Count a wrong OTP against the current link; returns the new count (0 if none)."""

    async def delete_link(self, user_id: str, link_type: str) -> None: ...


class CounterStore(Protocol):
    """Fixed-window counters: the rate limits, shared by every replica."""

    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        """Count one event in the fixed window containing ``now``.

        Returns ``(count including this one, epoch second the window resets)``. A key is
        counted in one window length (a limit per key): its counter is the one of the
        window ending at that second, so a key counted in two lengths would share a count
        whenever both windows end together."""


class Store(
    StoreLifecycle,
    BurnStore,
    TokenRecordStore,
    SessionStore,
    UserStore,
    LinkStore,
    CounterStore,
    Protocol,
):
    """Everything the product keeps: every concern above. Implementations must be safe
    under concurrency and across processes sharing the backend; every method either
    completes or raises :class:`StoreUnavailable` with nothing half-written."""


CONCERNS: tuple[type, ...] = (
    StoreLifecycle,
    BurnStore,
    TokenRecordStore,
    SessionStore,
    UserStore,
    LinkStore,
    CounterStore,
)
"""The protocols :class:`Store` is made of, in the order above."""

STORE_METHODS: tuple[str, ...] = tuple(
    name
    for concern in CONCERNS
    for name, value in vars(concern).items()
    if inspect.iscoroutinefunction(value)
)
"""Every method of :class:`Store` (what a wrapper such as the timed store must cover)."""
