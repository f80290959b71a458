"""A minted link's record (:class:`TokenRecord`), in a module of its own so that it is
compiled with a mint's path (:mod:`sidecar.compiled`): every mint builds one, and the
interpreted class's ``__init__`` cost ~6k instructions of it. :mod:`sidecar.store.base`
exports it with the rest of the storage contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(slots=True, init=False)
class TokenRecord:
    """A minted link as the admin API shows it: what it is for, never its text.

    Every mint makes one: immutable as a frozen dataclass would be, its fields ``Final``
    (mypy refuses an assignment), set once by a written ``__init__`` at half the cost of
    the frozen one's ``object.__setattr__`` per field."""

    token_id: Final[str]
    kind: Final[str]  # "refer" or an auth-link type
    user_id: Final[str]
    role: Final[str]
    created_at: Final[float]
    expires_at: Final[float]
    one_time: Final[bool]
    email: Final[str | None]
    module: Final[str | None]

    def __init__(
        self,
        token_id: str,
        kind: str,
        user_id: str,
        role: str,
        created_at: float,
        expires_at: float,
        one_time: bool,
        email: str | None = None,
        module: str | None = None,
    ) -> None:
        self.token_id = token_id
        self.kind = kind
        self.user_id = user_id
        self.role = role
        self.created_at = created_at
        self.expires_at = expires_at
        self.one_time = one_time
        self.email = email
        self.module = module
