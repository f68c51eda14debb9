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
from typing import Any, ClassVar

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


class _Lookups:
    """Runs blocking storage lookups in worker threads, a bounded number at a time."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        # Made on first use: a limiter belongs to a running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(LOOKUPS)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)


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
        self._clock = clock
        self._keys: dict[str, tuple[ApiKey, float]] = {}
        """Key hash -> (key, when it was read)."""
        self._generation: object = None
        self._lookups = _Lookups()

    async def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.headers.get("x-api-key")
        if not token or not token.startswith(API_KEY_PREFIX):
            return None
        key_hash = hash_token(token)
        key = self._remembered(key_hash, state)
        if key is None:
            # Read before the lookup: a change that lands during it invalidates the entry.
            generation = getattr(state, "api_key_generation", None)
            key = await self._lookups.run(state.find_api_key, key_hash)
            if key is None:
                return None  # unknown keys are not remembered: the cache only holds real ones
            self._remember(key_hash, key, generation, state)
        if not key.is_active(utcnow()):
            return None
        return Principal(
            kind="machine", id=key.machine_id, machine_id=key.machine_id, via=self.name
        )

    def _remembered(self, key_hash: str, state: StateStore) -> ApiKey | None:
        generation = getattr(state, "api_key_generation", None)
        if generation is None:
            return None
        if generation != self._generation:
            self._keys.clear()
            self._generation = generation
            return None
        found = self._keys.get(key_hash)
        if found is None:
            return None
        key, read_at = found
        if self._clock() - read_at >= self.CACHE_SECONDS:
            del self._keys[key_hash]
            return None
        return key

    def _remember(self, key_hash: str, key: ApiKey, generation: object, state: StateStore) -> None:
        if generation is None or generation != getattr(state, "api_key_generation", None):
            return  # no generation to check against, or it moved during the lookup
        if generation != self._generation or len(self._keys) >= self.CACHE_SIZE:
            self._keys.clear()
            self._generation = generation
        self._keys[key_hash] = (key, self._clock())


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
        self._clock = clock
        self._sessions: dict[str, tuple[Session, Principal, float]] = {}
        """Token hash -> (session, its principal, when it was read)."""
        self._generation: object = None
        self._lookups = _Lookups()

    async def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.cookies.get(SESSION_COOKIE)
        if not token or not token.startswith(SESSION_PREFIX):
            return None
        token_hash = hash_token(token)
        found = self._remembered(token_hash, state)
        if found is None:
            # Read before the lookup: a change that lands during it invalidates the entry.
            generation = getattr(state, "session_generation", None)
            found = await self._lookups.run(self._lookup, token_hash, state)
            if found is None:
                return None  # unknown, ended or without a user: never remembered
            self._remember(token_hash, found, generation, state)
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

    def _remembered(self, token_hash: str, state: StateStore) -> tuple[Session, Principal] | None:
        generation = getattr(state, "session_generation", None)
        if generation is None:
            return None
        if generation != self._generation:
            self._sessions.clear()
            self._generation = generation
            return None
        found = self._sessions.get(token_hash)
        if found is None:
            return None
        session, principal, read_at = found
        if self._clock() - read_at >= self.CACHE_SECONDS:
            del self._sessions[token_hash]
            return None
        return session, principal

    def _remember(
        self,
        token_hash: str,
        found: tuple[Session, Principal],
        generation: object,
        state: StateStore,
    ) -> None:
        if generation is None or generation != getattr(state, "session_generation", None):
            return  # no generation to check against, or it moved during the lookup
        if generation != self._generation or len(self._sessions) >= self.CACHE_SIZE:
            self._sessions.clear()
            self._generation = generation
        self._sessions[token_hash] = (*found, self._clock())


@hookimpl
def lunasentri_register_authenticators() -> list[type[Authenticator]]:
    return [ApiKeyAuthenticator, SessionAuthenticator]
