"""The core's own plugin: the API-key and session authenticators.

Registered through the same ``lunasentri`` entry point group as any third-party
plugin (as ``core``), so it shows in ``lunasentri plugins`` and can be replaced
or disabled the same way.

Both authenticators are coroutine functions: the hub awaits them on the event
loop, so credentials of another kind are turned away without a trip to a
worker thread, and only a storage lookup goes to one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import anyio.to_thread

from lunasentri_core.components import Authenticator, Credentials, Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hookspecs import hookimpl
from lunasentri_core.model import ApiKey, Session, User, utcnow
from lunasentri_core.security import API_KEY_PREFIX, SESSION_PREFIX, hash_token
from lunasentri_core.storage.protocols import StateStore

SESSION_COOKIE = "lunasentri_session"

LOOKUPS = 8
"""Storage lookups in flight per authenticator (the hub's own reads have as many)."""


def bearer_token(credentials: Credentials) -> str | None:
    header = credentials.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


T = TypeVar("T")


class _Lookups:
    """Runs blocking storage lookups in worker threads, a bounded number at a time."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        # Made on first use: a limiter belongs to a running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(LOOKUPS)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)


class _Remembered(Generic[T]):
    """Credentials read from a state store, kept for ``seconds`` while the store's
    ``generation`` attribute (moved by every change to them) stays put.

    A store without that attribute is asked every time. An entry read while the
    generation moved (a change landing during the lookup) is not kept.
    """

    def __init__(
        self, generation: str, seconds: float, size: int, clock: Callable[[], float]
    ) -> None:
        self._attribute = generation
        self._seconds = seconds
        self._size = size
        self._clock = clock
        self._entries: dict[str, tuple[T, float]] = {}
        """Token hash -> (what was read, when)."""
        self._generation: object = None

    def generation(self, state: StateStore) -> object:
        """The store's generation now; read it before a lookup, for :meth:`keep`."""
        return getattr(state, self._attribute, None)

    def get(self, token_hash: str, state: StateStore) -> T | None:
        generation = self.generation(state)
        if generation is None:
            return None
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
            return None
        found = self._entries.get(token_hash)
        if found is None:
            return None
        value, read_at = found
        if self._clock() - read_at >= self._seconds:
            del self._entries[token_hash]
            return None
        return value

    def keep(self, token_hash: str, value: T, generation: object, state: StateStore) -> None:
        """Remember ``value``, read after the store's generation was ``generation``."""
        if generation is None or generation != self.generation(state):
            return  # no generation to check against, or it moved during the lookup
        if generation != self._generation or len(self._entries) >= self._size:
            self._entries.clear()
            self._generation = generation
        self._entries[token_hash] = (value, self._clock())


class ApiKeyAuthenticator:
    """A machine's API key: ``Authorization: Bearer lsk_...`` or ``X-API-Key: lsk_...``.

    Keys found in storage are remembered for :attr:`CACHE_SECONDS`, longer than
    agents' intervals, so an agent costs one lookup a minute, not one per
    request. Every use still checks the key's expiry and revocation time. A key
    revoked, expired early (rotation) or deleted through this process's state
    store stops working at once: such a change moves the store's
    ``api_key_generation`` and the remembered keys are dropped. A change made by
    another process (a second server worker) moves it too where the store hears
    of it (the SQL store on PostgreSQL, through ``NOTIFY``: within moments) or
    when the hub's change follower sees the store's ``config_epoch`` move (every
    ``sync_interval``, 2 s by default, on SQLite too); a state store used
    without a hub sees it within ``CACHE_SECONDS``. A state store without
    ``api_key_generation`` is asked every time.
    """

    name: ClassVar[str] = "api-key"
    settings_class: ClassVar[type[Any] | None] = None
    CACHE_SECONDS: ClassVar[float] = 60.0
    CACHE_SIZE: ClassVar[int] = 50_000
    """Keys remembered at most; the cache starts afresh when it is full."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys: _Remembered[ApiKey] = _Remembered(
            "api_key_generation", self.CACHE_SECONDS, self.CACHE_SIZE, clock
        )
        self._lookups = _Lookups()

    async def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.headers.get("x-api-key")
        if not token or not token.startswith(API_KEY_PREFIX):
            return None
        key_hash = hash_token(token)
        key = self._keys.get(key_hash, state)
        if key is None:
            # Read before the lookup: a change that lands during it invalidates the entry.
            generation = self._keys.generation(state)
            key = await self._lookups.run(state.find_api_key, key_hash)
            if key is None:
                return None  # unknown keys are not remembered: the cache only holds real ones
            self._keys.keep(key_hash, key, generation, state)
        if not key.is_active(utcnow()):
            return None
        return Principal(
            kind="machine", id=key.machine_id, machine_id=key.machine_id, via=self.name
        )


class SessionAuthenticator:
    """A user's session token: ``Authorization: Bearer lss_...`` or the dashboard cookie.

    Sessions found active in storage are remembered for :attr:`CACHE_SECONDS`, so
    a dashboard's or script's steady requests cost no storage read and no trip to
    a worker thread; every use still checks the session's expiry. A session
    ended (logout, revocation, password change), or a user whose role changed or
    who was deleted, through this process's state store is refused, or seen
    anew, at once: such a change moves the store's ``session_generation`` and the
    remembered sessions are dropped. Such a change made by another process moves
    the store's ``config_epoch``, which the hub's change follower sees within
    ``sync_interval`` (2 s by default; at once on PostgreSQL, through
    ``NOTIFY``); a state store used without a hub sees it within
    ``CACHE_SECONDS``. A state store without ``session_generation`` is asked
    every time.
    """

    name: ClassVar[str] = "session"
    settings_class: ClassVar[type[Any] | None] = None
    CACHE_SECONDS: ClassVar[float] = 30.0
    CACHE_SIZE: ClassVar[int] = 10_000
    """Sessions remembered at most; the cache starts afresh when it is full."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions: _Remembered[tuple[Session, Principal]] = _Remembered(
            "session_generation", self.CACHE_SECONDS, self.CACHE_SIZE, clock
        )
        self._lookups = _Lookups()

    async def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.cookies.get(SESSION_COOKIE)
        if not token or not token.startswith(SESSION_PREFIX):
            return None
        token_hash = hash_token(token)
        found = self._sessions.get(token_hash, state)
        if found is None:
            # Read before the lookup: a change that lands during it invalidates the entry.
            generation = self._sessions.generation(state)
            found = await self._lookups.run(self._lookup, token_hash, state)
            if found is None:
                return None  # unknown, ended or without a user: never remembered
            self._sessions.keep(token_hash, found, generation, state)
        session, principal = found
        if not session.is_active(utcnow()):
            return None
        return principal

    def _lookup(self, token_hash: str, state: StateStore) -> tuple[Session, Principal] | None:
        user: User | None
        both = getattr(state, "find_session_user", None)
        if both is not None:
            # The SQL store reads the session and its user in one transaction.
            found: tuple[Session, User | None] | None = both(token_hash)
            if found is None:
                return None
            session, user = found
            if not session.is_active(utcnow()):
                return None
        else:
            maybe = state.find_session(token_hash)
            if maybe is None or not maybe.is_active(utcnow()):
                return None
            session = maybe
            try:
                user = state.get_user(session.user_id)
            except NotFoundError:
                return None
        if user is None:
            return None
        return session, Principal(kind="user", id=user.id, role=user.role, via=self.name)


@hookimpl
def lunasentri_register_authenticators() -> list[type[Authenticator]]:
    return [ApiKeyAuthenticator, SessionAuthenticator]
