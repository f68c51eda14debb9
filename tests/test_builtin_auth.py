"""The core's API-key authenticator: the contract, and the keys it remembers.

Real SQLite stores throughout; a second store on the same file stands for a
second server process. The cache's clock is a plain counter the tests move.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from lunasentri_core.builtin import ApiKeyAuthenticator, SessionAuthenticator
from lunasentri_core.components import Credentials, Principal
from lunasentri_core.model import ApiKey, Machine, Role, Session, new_id, utcnow
from lunasentri_core.security import API_KEY_PREFIX, SESSION_PREFIX, issue_token
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import AuthenticatorContract, make_user
from lunasentri_sqlite import SQLiteStorageFactory


def open_store(path: Path) -> SqlStorage:
    store = SQLiteStorageFactory.open(f"sqlite:///{path}")
    assert isinstance(store, SqlStorage)
    store.migrate()
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStorage]:
    store = open_store(tmp_path / "auth.db")
    yield store
    store.close()


def add_key(store: SqlStorage) -> tuple[str, ApiKey]:
    """A machine with one key; returns the secret and the stored key."""
    now = utcnow()
    machine = store.state.add_machine(Machine(id=new_id(), name=new_id(), created_at=now))
    token = issue_token(API_KEY_PREFIX)
    key = ApiKey(
        id=new_id(), machine_id=machine.id, prefix=token.visible, key_hash=token.hash,
        created_at=now,
    )  # fmt: skip
    store.state.add_api_key(key)
    return token.secret, key


def bearer(secret: str) -> Credentials:
    return Credentials(headers={"authorization": f"Bearer {secret}"})


class Counting:
    """A state store that counts the key lookups reaching it (everything else passes)."""

    def __init__(self, state: Any, *, generation: bool = True) -> None:
        self._state = state
        self._generation = generation
        self.lookups = 0

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        self.lookups += 1
        found: ApiKey | None = self._state.find_api_key(key_hash)
        return found

    def __getattr__(self, name: str) -> Any:
        if name == "api_key_generation" and not self._generation:
            raise AttributeError(name)
        return getattr(self._state, name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticate(auth: ApiKeyAuthenticator, secret: str, state: Any) -> Principal | None:
    async def run() -> Principal | None:
        return await auth.authenticate(bearer(secret), state)

    return anyio.run(run)


# --------------------------------------------------------------------------- contract


class TestApiKeyAuthenticator(AuthenticatorContract):
    secret_check = "digest-lookup"

    @pytest.fixture
    def authenticator(self) -> ApiKeyAuthenticator:
        return ApiKeyAuthenticator()

    @pytest.fixture
    def state(self, store: SqlStorage) -> Any:
        return store.state

    @pytest.fixture
    def valid_credentials(self, store: SqlStorage) -> Credentials:
        return bearer(add_key(store)[0])

    @pytest.fixture
    def invalid_credentials(self, store: SqlStorage) -> Credentials:
        secret, key = add_key(store)
        store.state.revoke_api_key(key.id, utcnow())
        return bearer(secret)


class TestSessionAuthenticator(AuthenticatorContract):
    secret_check = "digest-lookup"

    @pytest.fixture
    def authenticator(self) -> SessionAuthenticator:
        return SessionAuthenticator()

    @pytest.fixture
    def state(self, store: SqlStorage) -> Any:
        return store.state

    @pytest.fixture
    def valid_credentials(self, store: SqlStorage) -> Credentials:
        return self._session(store, expires_in=timedelta(hours=1))

    @pytest.fixture
    def invalid_credentials(self, store: SqlStorage) -> Credentials:
        return self._session(store, expires_in=-timedelta(hours=1))

    @staticmethod
    def _session(store: SqlStorage, expires_in: timedelta) -> Credentials:
        user = store.state.add_user(make_user(), "hash")
        token = issue_token(SESSION_PREFIX)
        now = utcnow()
        store.state.add_session(
            Session(
                id=new_id(),
                user_id=user.id,
                token_hash=token.hash,
                created_at=now,
                expires_at=now + expires_in,
            )
        )
        return bearer(token.secret)


# --------------------------------------------------------------------------- the cache


def test_a_key_is_looked_up_once_while_remembered(store: SqlStorage) -> None:
    secret, key = add_key(store)
    state, clock = Counting(store.state), Clock()
    auth = ApiKeyAuthenticator(clock=clock)
    for _ in range(3):
        principal = authenticate(auth, secret, state)
        assert principal is not None
        assert principal.machine_id == key.machine_id
    assert state.lookups == 1
    clock.now += ApiKeyAuthenticator.CACHE_SECONDS
    assert authenticate(auth, secret, state) is not None
    assert state.lookups == 2


@pytest.mark.parametrize("end", ["revoke", "expire", "delete machine"])
def test_a_key_ended_through_the_store_stops_working_at_once(store: SqlStorage, end: str) -> None:
    secret, key = add_key(store)
    state = Counting(store.state)
    auth = ApiKeyAuthenticator(clock=Clock())
    assert authenticate(auth, secret, state) is not None
    if end == "revoke":
        store.state.revoke_api_key(key.id, utcnow())
    elif end == "expire":
        store.state.set_api_key_expiry(key.id, utcnow())
    else:
        store.state.delete_machine(key.machine_id)
    assert authenticate(auth, secret, state) is None
    assert state.lookups == 2


def test_other_keys_are_read_again_after_a_change_but_keep_working(store: SqlStorage) -> None:
    secret, _ = add_key(store)
    _, other = add_key(store)
    state = Counting(store.state)
    auth = ApiKeyAuthenticator(clock=Clock())
    assert authenticate(auth, secret, state) is not None
    store.state.revoke_api_key(other.id, utcnow())
    assert authenticate(auth, secret, state) is not None
    assert authenticate(auth, secret, state) is not None
    assert state.lookups == 2


def test_a_grace_period_ends_on_time_without_a_lookup(store: SqlStorage) -> None:
    secret, key = add_key(store)
    store.state.set_api_key_expiry(key.id, utcnow() + timedelta(milliseconds=300))
    state = Counting(store.state)
    auth = ApiKeyAuthenticator(clock=Clock())
    assert authenticate(auth, secret, state) is not None
    anyio.run(anyio.sleep, 0.4)
    assert authenticate(auth, secret, state) is None
    assert state.lookups == 1


def test_another_process_revoking_is_seen_within_the_cache_time(
    store: SqlStorage, tmp_path: Path
) -> None:
    secret, key = add_key(store)
    clock = Clock()
    auth = ApiKeyAuthenticator(clock=clock)
    assert authenticate(auth, secret, store.state) is not None
    other_process = open_store(tmp_path / "auth.db")
    try:
        other_process.state.revoke_api_key(key.id, utcnow())
    finally:
        other_process.close()
    clock.now += ApiKeyAuthenticator.CACHE_SECONDS - 0.5
    assert authenticate(auth, secret, store.state) is not None  # remembered, as documented
    clock.now += 0.5
    assert authenticate(auth, secret, store.state) is None


def test_a_change_during_a_lookup_is_not_remembered(store: SqlStorage) -> None:
    secret, key = add_key(store)

    class RevokedMeanwhile(Counting):
        def find_api_key(self, key_hash: str) -> ApiKey | None:
            found = super().find_api_key(key_hash)
            if self.lookups == 1:  # read as active, then revoked before it is remembered
                store.state.revoke_api_key(key.id, utcnow())
            return found

    state = RevokedMeanwhile(store.state)
    auth = ApiKeyAuthenticator(clock=Clock())
    assert authenticate(auth, secret, state) is not None  # the answer read before the change
    assert authenticate(auth, secret, state) is None
    assert state.lookups == 2


def test_stores_without_a_generation_and_unknown_keys_are_asked_every_time(
    store: SqlStorage,
) -> None:
    secret, _ = add_key(store)
    plain = Counting(store.state, generation=False)
    auth = ApiKeyAuthenticator(clock=Clock())
    assert authenticate(auth, secret, plain) is not None
    assert authenticate(auth, secret, plain) is not None
    assert plain.lookups == 2
    unknown = API_KEY_PREFIX + "x" * 43
    state = Counting(store.state)
    assert authenticate(auth, unknown, state) is None
    assert authenticate(auth, unknown, state) is None
    assert state.lookups == 2


def test_other_credentials_never_reach_storage(store: SqlStorage) -> None:
    state = Counting(store.state)
    auth = ApiKeyAuthenticator()

    async def run() -> list[Principal | None]:
        return [
            await auth.authenticate(Credentials(headers={"authorization": "Bearer lss_x"}), state),
            await auth.authenticate(Credentials(), state),
        ]

    assert anyio.run(run) == [None, None]
    assert state.lookups == 0


def test_a_full_cache_starts_afresh(store: SqlStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiKeyAuthenticator, "CACHE_SIZE", 2)
    keys = [add_key(store)[0] for _ in range(3)]
    state = Counting(store.state)
    auth = ApiKeyAuthenticator(clock=Clock())
    for secret in keys:
        assert authenticate(auth, secret, state) is not None
    assert authenticate(auth, keys[2], state) is not None  # the newest stays
    assert state.lookups == 3
    assert authenticate(auth, keys[0], state) is not None  # dropped when the cache filled
    assert state.lookups == 4


# --------------------------------------------------------------------------- sessions


class TwoCalls:
    """A state store with the protocol's session calls only (no one-transaction lookup)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def find_session(self, token_hash: str) -> Session | None:
        found: Session | None = self._state.find_session(token_hash)
        return found

    def get_user(self, user_id: str) -> Any:
        return self._state.get_user(user_id)


@pytest.mark.parametrize("one_transaction", [True, False], ids=["sql-lookup", "protocol"])
def test_sessions_are_checked_the_same_with_or_without_the_one_transaction_lookup(
    store: SqlStorage, one_transaction: bool
) -> None:
    state: Any = store.state if one_transaction else TwoCalls(store.state)
    auth = SessionAuthenticator()
    user = store.state.add_user(make_user(), "hash")
    now = utcnow()

    def session(expires_in: timedelta = timedelta(hours=1)) -> tuple[str, Session]:
        token = issue_token(SESSION_PREFIX)
        added = Session(
            id=new_id(), user_id=user.id, token_hash=token.hash, created_at=now,
            expires_at=now + expires_in,
        )  # fmt: skip
        store.state.add_session(added)
        return token.secret, added

    def check(secret: str) -> Principal | None:
        async def run() -> Principal | None:
            return await auth.authenticate(bearer(secret), state)

        return anyio.run(run)

    active, _ = session()
    revoked, to_revoke = session()
    expired, _ = session(-timedelta(minutes=1))
    store.state.revoke_session(to_revoke.id, utcnow())
    assert check(active) == Principal(kind="user", id=user.id, role=user.role, via="session")
    assert check(revoked) is None
    assert check(expired) is None
    assert check(issue_token(SESSION_PREFIX).secret) is None  # unknown


class CountingSessions:
    """A state store that counts the session lookups reaching it (everything else passes)."""

    def __init__(self, state: Any, *, generation: bool = True) -> None:
        self._state = state
        self._generation = generation
        self.lookups = 0

    def find_session_user(self, token_hash: str) -> Any:
        self.lookups += 1
        return self._state.find_session_user(token_hash)

    def __getattr__(self, name: str) -> Any:
        if name == "session_generation" and not self._generation:
            raise AttributeError(name)
        return getattr(self._state, name)


def add_session(
    store: SqlStorage, expires_in: timedelta = timedelta(hours=1)
) -> tuple[str, Session]:
    """A user with one session; returns the token and the stored session."""
    user = store.state.add_user(make_user(), "hash")
    token = issue_token(SESSION_PREFIX)
    now = utcnow()
    session = Session(
        id=new_id(), user_id=user.id, token_hash=token.hash, created_at=now,
        expires_at=now + expires_in,
    )  # fmt: skip
    store.state.add_session(session)
    return token.secret, session


def by_session(auth: SessionAuthenticator, secret: str, state: Any) -> Principal | None:
    async def run() -> Principal | None:
        return await auth.authenticate(bearer(secret), state)

    return anyio.run(run)


def test_a_session_is_looked_up_once_while_remembered(store: SqlStorage) -> None:
    secret, session = add_session(store)
    state, clock = CountingSessions(store.state), Clock()
    auth = SessionAuthenticator(clock=clock)
    for _ in range(3):
        principal = by_session(auth, secret, state)
        assert principal is not None
        assert principal.id == session.user_id
    assert state.lookups == 1
    clock.now += SessionAuthenticator.CACHE_SECONDS
    assert by_session(auth, secret, state) is not None
    assert state.lookups == 2


@pytest.mark.parametrize("end", ["revoke", "revoke all", "delete user", "demote"])
def test_a_session_ended_through_the_store_is_refused_or_read_again_at_once(
    store: SqlStorage, end: str
) -> None:
    admin = store.state.add_user(make_user(), "hash")
    store.state.set_user_role(admin.id, Role.ADMIN)
    secret, session = add_session(store)
    store.state.set_user_role(session.user_id, Role.ADMIN)
    state = CountingSessions(store.state)
    auth = SessionAuthenticator(clock=Clock())
    principal = by_session(auth, secret, state)
    assert principal is not None
    assert principal.is_admin
    if end == "revoke":
        store.state.revoke_session(session.id, utcnow())
    elif end == "revoke all":
        store.state.revoke_user_sessions(session.user_id, utcnow())
    elif end == "delete user":
        store.state.delete_user(session.user_id)
    else:
        store.state.set_user_role(session.user_id, Role.USER)
    principal = by_session(auth, secret, state)
    if end == "demote":
        assert principal is not None
        assert not principal.is_admin
    else:
        assert principal is None
    assert state.lookups == 2


def test_a_session_expires_on_time_without_a_lookup(store: SqlStorage) -> None:
    secret, _ = add_session(store, expires_in=timedelta(milliseconds=300))
    state = CountingSessions(store.state)
    auth = SessionAuthenticator(clock=Clock())
    assert by_session(auth, secret, state) is not None
    anyio.run(anyio.sleep, 0.4)
    assert by_session(auth, secret, state) is None
    assert state.lookups == 1


def test_another_process_ending_a_session_moves_the_epoch_the_hub_follows(
    store: SqlStorage, tmp_path: Path
) -> None:
    secret, session = add_session(store)
    clock = Clock()
    auth = SessionAuthenticator(clock=clock)
    assert by_session(auth, secret, store.state) is not None
    epoch = store.state.config_epoch()
    other_process = open_store(tmp_path / "auth.db")
    try:
        other_process.state.revoke_session(session.id, utcnow())
    finally:
        other_process.close()
    assert store.state.config_epoch() != epoch  # what the hub's change follower polls
    assert by_session(auth, secret, store.state) is not None  # remembered until then
    store.state.sessions_changed_elsewhere()  # the follower, on seeing the epoch move
    assert by_session(auth, secret, store.state) is None


def test_another_process_ending_a_session_is_seen_within_the_cache_time(
    store: SqlStorage, tmp_path: Path
) -> None:
    secret, session = add_session(store)
    clock = Clock()
    auth = SessionAuthenticator(clock=clock)
    assert by_session(auth, secret, store.state) is not None
    other_process = open_store(tmp_path / "auth.db")
    try:
        other_process.state.revoke_user_sessions(session.user_id, utcnow())
    finally:
        other_process.close()
    clock.now += SessionAuthenticator.CACHE_SECONDS
    assert by_session(auth, secret, store.state) is None


def test_a_session_ended_during_its_lookup_is_not_remembered(store: SqlStorage) -> None:
    secret, session = add_session(store)

    class RevokedMeanwhile(CountingSessions):
        def find_session_user(self, token_hash: str) -> Any:
            found = super().find_session_user(token_hash)
            if self.lookups == 1:  # read as active, then revoked before it is remembered
                store.state.revoke_session(session.id, utcnow())
            return found

    state = RevokedMeanwhile(store.state)
    auth = SessionAuthenticator(clock=Clock())
    assert by_session(auth, secret, state) is not None  # the answer read before the change
    assert by_session(auth, secret, state) is None
    assert state.lookups == 2


def test_stores_without_a_session_generation_and_unknown_sessions_are_asked_every_time(
    store: SqlStorage,
) -> None:
    secret, _ = add_session(store)
    plain = CountingSessions(store.state, generation=False)
    auth = SessionAuthenticator(clock=Clock())
    assert by_session(auth, secret, plain) is not None
    assert by_session(auth, secret, plain) is not None
    assert plain.lookups == 2
    state = CountingSessions(store.state)
    unknown = issue_token(SESSION_PREFIX).secret
    assert by_session(auth, unknown, state) is None
    assert by_session(auth, unknown, state) is None
    assert state.lookups == 2
