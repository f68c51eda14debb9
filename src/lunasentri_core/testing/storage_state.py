"""The contract of a :class:`~lunasentri_core.storage.StateStore`.

Beyond the protocol's docstrings it pins down: a record reads back equal to what
was added (timestamps to the microsecond, as UTC); asking for, changing or
deleting a record that does not exist (or that another owner holds) raises
:class:`~lunasentri_core.NotFoundError`; a taken username raises
:class:`~lunasentri_core.ConflictError`; alert events are listed newest first.

For the server's state it pins down: operations with a single winner (using a
reset token, taking a sealed key, a claim update from an expected status, the
agent config version) have exactly one winner among concurrent callers in
threads; audit entries are listed newest first, entries of the same instant in
reverse order of addition; ``config_epoch`` moves with every change to rules,
machines' fields and with deleted users and machines, and not with reads or
``last_seen``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

import attrs
import pytest

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    AlertState,
    AuditEntry,
    ClaimStatus,
    MachineKind,
    MachineStatus,
    ResetToken,
    Role,
    RuleScope,
    SeriesKey,
    Session,
    Severity,
    User,
    new_id,
)
from lunasentri_core.storage.protocols import LoginFailure, StateStore, StorageBackend
from lunasentri_core.testing.builders import (
    BASE_TIME,
    hash_secret,
    make_alert_event,
    make_alert_rule,
    make_api_key,
    make_machine,
    make_user,
)
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.races import CALLERS, race
from lunasentri_core.testing.storage_alerting import AlertingStateContract
from lunasentri_core.testing.storage_machines import MachineListContract
from lunasentri_core.testing.storage_outbox import OutboxStateContract
from lunasentri_core.testing.storage_purge import PurgeStateContract


class _Record(Protocol):
    @property
    def id(self) -> str: ...


def _ids(records: Iterable[_Record]) -> list[str]:
    return [record.id for record in records]


def _session(user_id: str, **overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "token_hash": hash_secret(new_id()),
        "created_at": BASE_TIME + timedelta(microseconds=11),
        "expires_at": BASE_TIME + timedelta(days=1),
    }
    fields.update(overrides)
    return Session(**fields)


def _reset_token(user_id: str, **overrides: Any) -> ResetToken:
    fields: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "token_hash": hash_secret(new_id()),
        "created_at": BASE_TIME,
        "expires_at": BASE_TIME + timedelta(hours=1),
    }
    fields.update(overrides)
    return ResetToken(**fields)


def _claim(**overrides: Any) -> AgentClaim:
    agent_id = new_id()
    fields: dict[str, Any] = {
        "agent_id": agent_id,
        "claim_token_hash": hash_secret(new_id()),
        "hostname": f"agent-{agent_id[:8]}.example.test",
        "version": "0.1.0",
        "created_at": BASE_TIME + timedelta(microseconds=21),
        "expires_at": BASE_TIME + timedelta(hours=1),
    }
    fields.update(overrides)
    return AgentClaim(**fields)


def _audit(action: str, **overrides: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "id": new_id(),
        "at": BASE_TIME,
        "action": action,
        "actor_kind": "user",
    }
    fields.update(overrides)
    return AuditEntry(**fields)


class StateStoreContract(
    AlertingStateContract, MachineListContract, OutboxStateContract, PurgeStateContract, Contract
):
    """Tests of ``storage.state``; part of :class:`~lunasentri_core.testing.StorageContract`.

    The heartbeat, alerting, notification and purge tests come from
    :mod:`~lunasentri_core.testing.storage_alerting`,
    :mod:`~lunasentri_core.testing.storage_outbox` and
    :mod:`~lunasentri_core.testing.storage_purge`.
    """

    __test__ = False

    @pytest.fixture
    def state(self, storage: StorageBackend) -> StateStore:
        return storage.state

    def add_user(self, state: StateStore, **overrides: object) -> User:
        return state.add_user(make_user(**overrides), "hash-of-a-password")

    # ------------------------------------------------------------ users

    def test_add_and_get_user(self, state: StateStore) -> None:
        user = make_user(role=Role.ADMIN)
        assert state.add_user(user, "scrypt$abc") == user
        assert state.get_user(user.id) == user
        assert state.find_user(user.username) == user
        assert state.find_user("no-such-user") is None
        assert user in state.list_users()

    def test_unknown_user_is_not_found(self, state: StateStore) -> None:
        with pytest.raises(NotFoundError):
            state.get_user("no-such-id")
        with pytest.raises(NotFoundError):
            state.password_hash("no-such-id")
        with pytest.raises(NotFoundError):
            state.set_password_hash("no-such-id", "x")
        with pytest.raises(NotFoundError):
            state.delete_user("no-such-id")

    def test_duplicate_username_conflicts(self, state: StateStore) -> None:
        first = self.add_user(state)
        with pytest.raises(ConflictError):
            self.add_user(state, username=first.username)
        assert [u.id for u in state.list_users() if u.username == first.username] == [first.id]

    def test_password_hash(self, state: StateStore) -> None:
        user = self.add_user(state)
        assert state.password_hash(user.id) == "hash-of-a-password"
        state.set_password_hash(user.id, "a-new-hash")
        assert state.password_hash(user.id) == "a-new-hash"

    def test_set_user_role_keeps_an_administrator(self, state: StateStore) -> None:
        for admin in [u for u in state.list_users() if u.is_admin]:
            state.delete_user(admin.id)  # a store shared by earlier tests may hold some
        first, second = self.add_user(state, role=Role.ADMIN), self.add_user(state)
        assert state.set_user_role(second.id, Role.ADMIN) == attrs.evolve(second, role=Role.ADMIN)
        assert state.set_user_role(first.id, Role.USER) == attrs.evolve(first, role=Role.USER)
        assert state.get_user(first.id).role == Role.USER
        with pytest.raises(ConflictError):
            state.set_user_role(second.id, Role.USER)  # the only administrator left
        assert state.get_user(second.id).role == Role.ADMIN
        assert state.set_user_role(second.id, Role.ADMIN).role == Role.ADMIN  # no change
        with pytest.raises(NotFoundError):
            state.set_user_role("no-such-id", Role.USER)

    def test_delete_user(self, state: StateStore) -> None:
        user, other = self.add_user(state), self.add_user(state)
        state.delete_user(user.id)
        with pytest.raises(NotFoundError):
            state.get_user(user.id)
        assert state.find_user(user.username) is None
        assert state.get_user(other.id) == other

    # ------------------------------------------------------------ machines

    def test_add_and_get_machine(self, state: StateStore) -> None:
        owner = self.add_user(state)
        machine = make_machine(
            owner_id=owner.id,
            kind=MachineKind.AGENTLESS,
            labels={"env": "prod", "site": "ünï"},
            status=MachineStatus.ONLINE,
            last_seen=BASE_TIME + timedelta(microseconds=7),
        )
        assert state.add_machine(machine) == machine
        assert state.get_machine(machine.id) == machine
        assert state.get_machine(machine.id, owner.id) == machine
        bare = make_machine(hostname=None, labels={})
        state.add_machine(bare)
        assert state.get_machine(bare.id) == bare

    def test_machines_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        mine = state.add_machine(make_machine(owner_id=alice.id))
        theirs = state.add_machine(make_machine(owner_id=bob.id))
        with pytest.raises(NotFoundError):
            state.get_machine(mine.id, bob.id)
        assert state.get_machine(mine.id, alice.id) == mine
        assert _ids(state.list_machines(alice.id)) == [mine.id]
        assert _ids(state.list_machines(bob.id)) == [theirs.id]
        assert {mine.id, theirs.id} <= set(_ids(state.list_machines()))
        assert state.find_machine(mine.name, alice.id) == mine
        assert state.find_machine(mine.name, bob.id) is None
        assert state.find_machine(mine.name) == mine
        assert state.find_machine("no-such-machine") is None

    def test_unknown_machine_is_not_found(self, state: StateStore) -> None:
        with pytest.raises(NotFoundError):
            state.get_machine("no-such-id")
        with pytest.raises(NotFoundError):
            state.update_machine(make_machine())
        with pytest.raises(NotFoundError):
            state.delete_machine("no-such-id")

    def test_update_machine(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        changed = attrs.evolve(
            machine,
            name=f"{machine.name}-renamed",
            hostname="renamed.example.test",
            labels={"env": "staging"},
            status=MachineStatus.OFFLINE,
            last_seen=BASE_TIME + timedelta(hours=1),
        )
        # The status is the heartbeat's (record_status_changes): an edit keeps it.
        stored = attrs.evolve(changed, status=machine.status)
        assert state.update_machine(changed) == stored
        assert state.get_machine(machine.id) == stored
        assert state.find_machine(changed.name) == stored

    def test_delete_machine(self, state: StateStore) -> None:
        machine, other = state.add_machine(make_machine()), state.add_machine(make_machine())
        state.delete_machine(machine.id)
        with pytest.raises(NotFoundError):
            state.get_machine(machine.id)
        assert machine.id not in _ids(state.list_machines())
        assert state.get_machine(other.id) == other

    def test_touch_machines_never_moves_last_seen_backwards(self, state: StateStore) -> None:
        a, b = state.add_machine(make_machine()), state.add_machine(make_machine())
        t1, t2, t3 = (BASE_TIME + timedelta(minutes=n) for n in (1, 2, 3))
        state.touch_machines([(a.id, t2), (b.id, t1)])
        assert state.get_machine(a.id).last_seen == t2
        assert state.get_machine(b.id).last_seen == t1
        state.touch_machines([(a.id, t1)])
        assert state.get_machine(a.id).last_seen == t2, "last_seen moved backwards"
        state.touch_machines([(a.id, t3), (a.id, t1), (b.id, t2)])
        assert state.get_machine(a.id).last_seen == t3
        assert state.get_machine(b.id).last_seen == t2
        state.touch_machines([])

    def test_config_epoch_moves_with_rules_machines_and_deleted_users(
        self, state: StateStore
    ) -> None:
        def moved(change: Any) -> bool:
            before = state.config_epoch()
            change()
            return state.config_epoch() != before

        alice = self.add_user(state)
        machine = state.add_machine(make_machine(owner_id=alice.id))
        rule = make_alert_rule(alice.id)
        assert moved(lambda: state.add_alert_rule(rule))
        assert moved(lambda: state.update_alert_rule(attrs.evolve(rule, threshold=99.0)))
        assert moved(lambda: state.update_machine(attrs.evolve(machine, labels={"env": "prod"})))
        # Reads, last_seen and sessions are no configuration.
        assert not moved(lambda: state.list_alert_rules())
        assert not moved(lambda: state.get_machine(machine.id))
        assert not moved(lambda: state.touch_machines([(machine.id, BASE_TIME)]))
        assert moved(lambda: state.delete_alert_rule(rule.id))
        assert moved(lambda: state.delete_machine(machine.id))
        assert moved(lambda: state.delete_user(alice.id))
        with pytest.raises(NotFoundError):
            state.delete_machine(machine.id)
        assert not moved(lambda: None)

    # ------------------------------------------------------------ API keys

    def test_api_keys(self, state: StateStore) -> None:
        machine, other = state.add_machine(make_machine()), state.add_machine(make_machine())
        first, second = make_api_key(machine.id), make_api_key(machine.id)
        foreign = make_api_key(other.id, expires_at=BASE_TIME + timedelta(days=30))
        for key in (first, second, foreign):
            assert state.add_api_key(key) == key
        assert state.find_api_key(first.key_hash) == first
        assert state.find_api_key(foreign.key_hash) == foreign
        assert state.find_api_key("0" * 64) is None
        assert sorted(_ids(state.list_api_keys(machine.id))) == sorted([first.id, second.id])
        assert state.list_api_keys("no-such-machine") == []

    def test_revoke_api_key(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        key, kept = make_api_key(machine.id), make_api_key(machine.id)
        state.add_api_key(key)
        state.add_api_key(kept)
        at = BASE_TIME + timedelta(days=1, microseconds=5)
        state.revoke_api_key(key.id, at)
        revoked = state.find_api_key(key.key_hash)
        assert revoked is not None, "a revoked key is still found (with revoked_at set)"
        assert revoked.revoked_at == at
        assert not revoked.is_active(at)
        assert state.find_api_key(kept.key_hash) == kept
        listed = {k.id: k for k in state.list_api_keys(machine.id)}
        assert listed[key.id].revoked_at == at
        with pytest.raises(NotFoundError):
            state.revoke_api_key("no-such-key", at)

    # ------------------------------------------------------------ alerts

    def test_alert_rules(self, state: StateStore) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        machine = state.add_machine(make_machine(owner_id=alice.id))
        rule = make_alert_rule(
            alice.id,
            scope=RuleScope(machine_id=machine.id, labels={"env": "prod"}),
            severity=Severity.CRITICAL,
            enabled=False,
            for_duration=timedelta(minutes=5, seconds=30),
        )
        other = make_alert_rule(bob.id, metric="mem.used", threshold=1e9)
        assert state.add_alert_rule(rule) == rule
        state.add_alert_rule(other)
        assert state.get_alert_rule(rule.id) == rule
        assert state.get_alert_rule(rule.id, alice.id) == rule
        with pytest.raises(NotFoundError):
            state.get_alert_rule(rule.id, bob.id)
        assert _ids(state.list_alert_rules(alice.id)) == [rule.id]
        assert {rule.id, other.id} <= set(_ids(state.list_alert_rules()))
        state.delete_alert_rule(rule.id)
        with pytest.raises(NotFoundError):
            state.get_alert_rule(rule.id)
        with pytest.raises(NotFoundError):
            state.delete_alert_rule(rule.id)
        assert state.get_alert_rule(other.id) == other

    def test_alert_events(self, state: StateStore) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        web, db = (state.add_machine(make_machine(owner_id=alice.id)) for _ in range(2))
        bobs = state.add_machine(make_machine(owner_id=bob.id))
        rule = state.add_alert_rule(make_alert_rule(alice.id))
        bob_rule = state.add_alert_rule(make_alert_rule(bob.id))
        at = [BASE_TIME + timedelta(minutes=n) for n in range(4)]
        events = [
            make_alert_event(rule, web.id, at=at[0]),
            make_alert_event(
                rule, db.id, at=at[1], series=SeriesKey(db.id, "cpu.percent", {"cpu": "0"})
            ),
            make_alert_event(bob_rule, bobs.id, at=at[2]),
            make_alert_event(
                rule, web.id, at=at[3], state=AlertState.RESOLVED, value=12.0, acknowledged_at=at[3]
            ),
        ]
        for event in events:
            assert state.add_alert_event(event) == event
        first, second, third, fourth = events
        assert state.list_alert_events(alice.id) == [fourth, second, first]
        assert state.list_alert_events(bob.id) == [third]
        assert state.list_alert_events(machine_id=web.id) == [fourth, first]
        assert state.list_alert_events(alice.id, machine_id=bobs.id) == []
        assert state.list_alert_events(alice.id, limit=2) == [fourth, second]
        assert {e.id for e in events} <= set(_ids(state.list_alert_events(limit=1000)))

    # ------------------------------------------------------------ API key lifetime

    def test_set_api_key_expiry(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        key = state.add_api_key(make_api_key(machine.id))
        grace = BASE_TIME + timedelta(hours=1, microseconds=3)
        state.set_api_key_expiry(key.id, grace)
        found = state.find_api_key(key.key_hash)
        assert found == attrs.evolve(key, expires_at=grace)
        assert found.is_active(grace - timedelta(microseconds=1))
        assert not found.is_active(grace)
        state.set_api_key_expiry(key.id, None)
        assert state.find_api_key(key.key_hash) == key
        with pytest.raises(NotFoundError):
            state.set_api_key_expiry("no-such-key", grace)

    # ------------------------------------------------------------ sessions

    def test_sessions(self, state: StateStore) -> None:
        user = self.add_user(state)
        session = _session(user.id, client="198.51.100.7")
        assert state.add_session(session) == session
        assert state.find_session(session.token_hash) == session
        assert state.find_session(hash_secret("no-such-token")) is None
        at = BASE_TIME + timedelta(minutes=5, microseconds=1)
        state.revoke_session(session.id, at)
        revoked = state.find_session(session.token_hash)
        assert revoked == attrs.evolve(session, revoked_at=at)
        assert not revoked.is_active(at)
        state.revoke_session(session.id, at + timedelta(days=1))
        assert state.find_session(session.token_hash) == revoked, "revoked a second time"
        with pytest.raises(NotFoundError):
            state.revoke_session("no-such-session", at)

    def test_session_of_an_unknown_user_or_a_taken_hash(self, state: StateStore) -> None:
        user = self.add_user(state)
        session = state.add_session(_session(user.id))
        with pytest.raises(ConflictError):
            state.add_session(_session(user.id, token_hash=session.token_hash))
        with pytest.raises(NotFoundError):
            state.add_session(_session("no-such-user"))
        assert state.find_session(session.token_hash) == session

    def test_revoke_user_sessions(self, state: StateStore) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        at = BASE_TIME + timedelta(hours=1)
        active = [state.add_session(_session(alice.id)) for _ in range(2)]
        expired = state.add_session(_session(alice.id, expires_at=at))
        revoked = state.add_session(_session(alice.id, revoked_at=BASE_TIME))
        his = state.add_session(_session(bob.id))
        assert state.revoke_user_sessions(alice.id, at) == 2
        for session in active:
            assert state.find_session(session.token_hash) == attrs.evolve(session, revoked_at=at)
        for kept in (expired, revoked, his):
            assert state.find_session(kept.token_hash) == kept
        assert state.revoke_user_sessions(alice.id, at) == 0
        with pytest.raises(NotFoundError):
            state.revoke_user_sessions("no-such-user", at)

    def test_list_sessions_newest_first(self, state: StateStore) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        older, newer = (
            state.add_session(_session(alice.id, created_at=BASE_TIME + timedelta(minutes=n)))
            for n in (1, 2)
        )
        revoked = state.add_session(
            _session(alice.id, created_at=BASE_TIME, revoked_at=BASE_TIME + timedelta(seconds=1))
        )
        expired = state.add_session(
            _session(alice.id, created_at=BASE_TIME - timedelta(days=2), expires_at=BASE_TIME)
        )
        his = state.add_session(_session(bob.id))
        assert state.list_sessions(alice.id) == [newer, older, revoked, expired]
        assert state.list_sessions(bob.id) == [his]
        assert state.list_sessions("no-such-user") == []

    # ------------------------------------------------------------ password resets

    def test_a_reset_token_is_used_once(self, state: StateStore) -> None:
        user = self.add_user(state)
        token = _reset_token(user.id)
        assert state.add_reset_token(token) == token
        assert state.find_reset_token(token.token_hash) == token
        assert state.find_reset_token(hash_secret("no-such-token")) is None
        at = BASE_TIME + timedelta(minutes=1, microseconds=9)
        assert state.use_reset_token(token.id, at) is True
        used = attrs.evolve(token, used_at=at)
        assert state.find_reset_token(token.token_hash) == used
        assert state.use_reset_token(token.id, at + timedelta(seconds=1)) is False
        assert state.find_reset_token(token.token_hash) == used
        with pytest.raises(NotFoundError):
            state.use_reset_token("no-such-token", at)

    def test_an_expired_reset_token_cannot_be_used(self, state: StateStore) -> None:
        token = state.add_reset_token(_reset_token(self.add_user(state).id))
        assert state.use_reset_token(token.id, token.expires_at) is False
        assert state.find_reset_token(token.token_hash) == token

    def test_ending_a_users_reset_tokens_leaves_used_ended_and_others_alone(
        self, state: StateStore
    ) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        live = state.add_reset_token(_reset_token(alice.id))
        used = state.add_reset_token(_reset_token(alice.id))
        state.use_reset_token(used.id, BASE_TIME + timedelta(seconds=1))
        ended = state.add_reset_token(_reset_token(alice.id, expires_at=BASE_TIME))
        his = state.add_reset_token(_reset_token(bob.id))
        at = BASE_TIME + timedelta(minutes=1, microseconds=3)

        assert state.end_reset_tokens(alice.id, at) == 1
        assert state.find_reset_token(live.token_hash) == attrs.evolve(live, expires_at=at)
        assert state.use_reset_token(live.id, at) is False
        assert state.find_reset_token(used.token_hash) == attrs.evolve(
            used, used_at=BASE_TIME + timedelta(seconds=1)
        )
        assert state.find_reset_token(ended.token_hash) == ended
        assert state.find_reset_token(his.token_hash) == his
        assert state.end_reset_tokens(alice.id, at) == 0
        assert state.end_reset_tokens("no-such-user", at) == 0

    # ------------------------------------------------------------ login throttling

    def test_recent_login_failures_by_name_and_by_client(self, state: StateStore) -> None:
        name, other = f"n-{new_id()}", f"o-{new_id()}"
        here, there = f"192.0.2.{new_id()[:6]}", f"198.51.100.{new_id()[:6]}"
        since = BASE_TIME + timedelta(minutes=1)
        state.add_login_failure(name, BASE_TIME, here)  # before the window
        tried = [
            LoginFailure(name, since + timedelta(seconds=3), here),
            LoginFailure(other, since + timedelta(seconds=1), here),
            LoginFailure(name, since + timedelta(seconds=2), there),
            LoginFailure(other, since + timedelta(seconds=4), there),
            LoginFailure(name, since + timedelta(seconds=5), None),
        ]
        for failure in tried:
            state.add_login_failure(failure.username, failure.at, failure.client)

        by_both = state.recent_login_failures(name, here, since)
        assert by_both == sorted(tried[:3] + tried[4:], key=lambda f: f.at)
        assert state.recent_login_failures(name, None, since) == [tried[2], tried[0], tried[4]]
        assert state.recent_login_failures(other, "203.0.113.1", since) == [tried[1], tried[3]]

        state.clear_login_failures_from(name, here)
        assert state.recent_login_failures(name, here, since) == [tried[1], tried[2], tried[4]]
        state.clear_login_failures_from(name, None)
        assert state.recent_login_failures(name, None, since) == [tried[2]]

    def test_reset_token_of_an_unknown_user_or_a_taken_hash(self, state: StateStore) -> None:
        user = self.add_user(state)
        token = state.add_reset_token(_reset_token(user.id))
        with pytest.raises(ConflictError):
            state.add_reset_token(_reset_token(user.id, token_hash=token.token_hash))
        with pytest.raises(NotFoundError):
            state.add_reset_token(_reset_token("no-such-user"))

    def test_concurrent_uses_of_a_reset_token_have_one_winner(self, state: StateStore) -> None:
        token = state.add_reset_token(_reset_token(self.add_user(state).id))
        at = BASE_TIME + timedelta(minutes=1)
        results = race(lambda _: state.use_reset_token(token.id, at))
        assert sorted(results) == [False] * (CALLERS - 1) + [True]

    # ------------------------------------------------------------ login throttling

    def test_login_failures(self, state: StateStore) -> None:
        # By name: a name nobody has is counted too.
        name, other = f"nobody-{new_id()[:8]}", f"other-{new_id()[:8]}"
        times = [BASE_TIME + timedelta(minutes=n, microseconds=n) for n in range(3)]
        for at in times:
            state.add_login_failure(name, at, "203.0.113.9")
        state.add_login_failure(other, times[2], None)
        assert state.count_login_failures(name, BASE_TIME) == 3
        assert state.count_login_failures(name, times[1]) == 2, "since is inclusive"
        assert state.count_login_failures(name, times[2] + timedelta(microseconds=1)) == 0
        assert state.login_failure_times(name, BASE_TIME) == times, "oldest first"
        assert state.login_failure_times(name, times[1]) == times[1:]
        assert state.login_failure_times(f"never-failed-{new_id()[:8]}", BASE_TIME) == []
        state.clear_login_failures(name)
        assert state.count_login_failures(name, BASE_TIME) == 0
        assert state.count_login_failures(other, BASE_TIME) == 1
        state.clear_login_failures(f"never-failed-{new_id()[:8]}")

    # ------------------------------------------------------------ agent claims

    def test_claims(self, state: StateStore) -> None:
        claim = _claim(client="192.0.2.1")
        assert state.add_claim(claim) == claim
        assert state.get_claim(claim.agent_id) == claim
        with pytest.raises(NotFoundError):
            state.get_claim("no-such-agent")
        machine = state.add_machine(make_machine())
        claimed = attrs.evolve(
            claim,
            status=ClaimStatus.CLAIMED,
            machine_id=machine.id,
            sealed_key=bytes(range(256)),
        )
        assert state.update_claim(claimed) == claimed
        assert state.get_claim(claim.agent_id) == claimed
        with pytest.raises(NotFoundError):
            state.update_claim(_claim())
        with pytest.raises(NotFoundError):
            state.update_claim(attrs.evolve(claimed, machine_id="no-such-machine"))
        assert state.get_claim(claim.agent_id) == claimed

    def test_list_claims_oldest_first(self, state: StateStore) -> None:
        later, sooner = (
            state.add_claim(_claim(created_at=BASE_TIME + timedelta(seconds=n))) for n in (2, 1)
        )
        done = state.add_claim(_claim(status=ClaimStatus.DELIVERED, created_at=BASE_TIME))
        assert state.list_claims() == [done, sooner, later]
        assert state.list_claims(ClaimStatus.PENDING) == [sooner, later]
        assert state.list_claims(ClaimStatus.DELIVERED) == [done]
        assert state.list_claims(ClaimStatus.EXPIRED) == []

    @pytest.mark.parametrize("status", [ClaimStatus.PENDING, ClaimStatus.CLAIMED])
    def test_a_live_registration_is_not_replaced(
        self, state: StateStore, status: ClaimStatus
    ) -> None:
        claim = state.add_claim(_claim(status=status))
        with pytest.raises(ConflictError):
            state.add_claim(_claim(agent_id=claim.agent_id))
        assert state.get_claim(claim.agent_id) == claim

    @pytest.mark.parametrize("status", [ClaimStatus.EXPIRED, ClaimStatus.DELIVERED])
    def test_a_finished_registration_is_replaced(
        self, state: StateStore, status: ClaimStatus
    ) -> None:
        old = state.add_claim(_claim(status=status))
        new = _claim(agent_id=old.agent_id, hostname="reinstalled.example.test")
        assert state.add_claim(new) == new
        assert state.get_claim(old.agent_id) == new
        assert state.list_claims() == [new]

    def test_update_claim_from_an_expected_status(self, state: StateStore) -> None:
        claim = state.add_claim(_claim())
        machine = state.add_machine(make_machine())
        claimed = attrs.evolve(
            claim, status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=b"sealed"
        )
        assert state.update_claim(claimed, expected_status=ClaimStatus.PENDING) == claimed
        with pytest.raises(ConflictError):
            state.update_claim(
                attrs.evolve(claimed, sealed_key=b"another"), expected_status=ClaimStatus.PENDING
            )
        assert state.get_claim(claim.agent_id) == claimed
        with pytest.raises(NotFoundError):
            state.update_claim(_claim(), expected_status=ClaimStatus.PENDING)

    def test_concurrent_claims_of_a_registration_have_one_winner(self, state: StateStore) -> None:
        claim = state.add_claim(_claim())
        machines = [state.add_machine(make_machine()) for _ in range(CALLERS)]

        def claim_for(index: int) -> bool:
            change = attrs.evolve(
                claim,
                status=ClaimStatus.CLAIMED,
                machine_id=machines[index].id,
                sealed_key=f"key-{index}".encode(),
            )
            try:
                state.update_claim(change, expected_status=ClaimStatus.PENDING)
            except ConflictError:
                return False
            return True

        won = race(claim_for)
        assert won.count(True) == 1
        winner = won.index(True)
        stored = state.get_claim(claim.agent_id)
        assert (stored.machine_id, stored.sealed_key) == (
            machines[winner].id,
            f"key-{winner}".encode(),
        )

    def test_the_sealed_key_is_taken_once(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        sealed = b"\x00sealed key\xff" * 4
        claim = state.add_claim(
            _claim(status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=sealed)
        )
        assert state.take_sealed_key(claim.agent_id) == sealed
        delivered = attrs.evolve(claim, status=ClaimStatus.DELIVERED, sealed_key=None)
        assert state.get_claim(claim.agent_id) == delivered
        assert state.take_sealed_key(claim.agent_id) is None
        assert state.get_claim(claim.agent_id) == delivered
        pending = state.add_claim(_claim())
        assert state.take_sealed_key(pending.agent_id) is None
        assert state.get_claim(pending.agent_id) == pending
        with pytest.raises(NotFoundError):
            state.take_sealed_key("no-such-agent")

    def test_concurrent_takers_of_a_sealed_key_have_one_winner(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        sealed = b"the sealed key"
        claim = state.add_claim(
            _claim(status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=sealed)
        )
        taken = race(lambda _: state.take_sealed_key(claim.agent_id))
        assert taken.count(sealed) == 1
        assert taken.count(None) == CALLERS - 1

    def test_expire_claims(self, state: StateStore) -> None:
        now = BASE_TIME + timedelta(hours=1)
        due = state.add_claim(_claim(expires_at=now))
        overdue = state.add_claim(_claim(expires_at=now - timedelta(minutes=1)))
        fresh = state.add_claim(_claim(expires_at=now + timedelta(microseconds=1)))
        claimed = state.add_claim(
            _claim(status=ClaimStatus.CLAIMED, expires_at=now - timedelta(minutes=1))
        )
        assert state.expire_claims(now) == 2
        for gone in (due, overdue):
            assert state.get_claim(gone.agent_id) == attrs.evolve(gone, status=ClaimStatus.EXPIRED)
        assert state.get_claim(fresh.agent_id) == fresh
        assert state.get_claim(claimed.agent_id) == claimed
        assert state.expire_claims(now) == 0

    # ------------------------------------------------------------ audit log

    def test_audit_log_newest_first(self, state: StateStore) -> None:
        at = [BASE_TIME + timedelta(seconds=n, microseconds=n) for n in range(3)]
        detail = {
            "name": "wéb-1",
            "labels": {"env": "prod"},
            "count": 3,
            "ratio": 0.5,
            "ok": True,
            "nothing": None,
            "tags": ["a", "b"],
        }
        entries = [
            _audit("user.login", actor_id="u1", at=at[0], client="198.51.100.1"),
            _audit(
                "machine.create",
                actor_id="u1",
                at=at[1],
                target_type="machine",
                target_id="m1",
                detail=detail,
                via="session",
            ),
            _audit("machine.create", actor_id="u2", at=at[2]),
            # The same instant as the one before, added later: listed first.
            _audit("claim.expire", actor_kind="system", at=at[2]),
        ]
        for entry in entries:
            state.add_audit(entry)
        first, second, third, fourth = entries
        assert state.list_audit() == [fourth, third, second, first]
        assert state.list_audit(action="machine.create") == [third, second]
        assert state.list_audit(actor_id="u1") == [second, first]
        assert state.list_audit(action="machine.create", actor_id="u1") == [second]
        assert state.list_audit(via="session") == [second], "via is kept and filtered on"
        assert state.list_audit(via="api-key") == []
        assert state.list_audit(since=at[1]) == [fourth, third, second], "since is inclusive"
        assert state.list_audit(limit=2) == [fourth, third]
        assert state.list_audit(limit=0) == []
        assert state.list_audit(action="no.such.action") == []
        assert state.list_audit(target_id="m1") == [second]
        assert state.list_audit(until=at[2]) == [second, first], "until is exclusive"
        assert state.list_audit(since=at[1], until=at[2]) == [second]
        # Pages: each from the entry after the previous page's last one.
        assert state.list_audit(before=fourth.id, limit=2) == [third, second]
        assert state.list_audit(before=second.id) == [first]
        assert state.list_audit(before=first.id) == []
        assert state.list_audit(before=fourth.id, action="machine.create") == [third, second]
        assert state.list_audit(before="no-such-entry") == []

    def test_duplicate_audit_entry_conflicts(self, state: StateStore) -> None:
        entry = _audit("user.login")
        state.add_audit(entry)
        with pytest.raises(ConflictError):
            state.add_audit(attrs.evolve(entry, action="user.logout"))
        assert state.list_audit() == [entry]

    # ------------------------------------------------------------ agent configuration

    def test_agent_config_versions(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())
        assert state.get_agent_config(machine.id) is None
        config = AgentConfig(
            machine.id,
            interval=timedelta(seconds=2, microseconds=500),
            collectors=("psutil", "disk"),
            labels={"env": "prod"},
            version=41,
            updated_at=BASE_TIME + timedelta(microseconds=1),
        )
        first = state.set_agent_config(config)
        assert first == attrs.evolve(config, version=1), "the given version is ignored"
        assert state.get_agent_config(machine.id) == first
        changed = attrs.evolve(
            first,
            interval=timedelta(seconds=30),
            collectors=(),
            labels={},
            updated_at=BASE_TIME + timedelta(hours=1),
        )
        second = state.set_agent_config(changed)
        assert second == attrs.evolve(changed, version=2)
        assert state.get_agent_config(machine.id) == second
        assert state.set_agent_config(first).version == 3, "a stale version is ignored too"
        with pytest.raises(NotFoundError):
            state.set_agent_config(AgentConfig("no-such-machine"))
        assert state.get_agent_config("no-such-machine") is None

    def test_concurrent_agent_config_updates_get_distinct_versions(self, state: StateStore) -> None:
        machine = state.add_machine(make_machine())

        def update(index: int) -> int:
            config = AgentConfig(machine.id, interval=timedelta(seconds=index + 1))
            return state.set_agent_config(config).version

        versions = race(update)
        assert sorted(versions) == list(range(1, CALLERS + 1))
        stored = state.get_agent_config(machine.id)
        assert stored is not None
        assert stored.version == CALLERS
        assert stored.interval == timedelta(seconds=versions.index(CALLERS) + 1)

    # ------------------------------------------------------------ what deletion keeps

    def test_deleting_a_user_deletes_sessions_and_tokens_but_keeps_history(
        self, state: StateStore
    ) -> None:
        alice, bob = self.add_user(state), self.add_user(state)
        session = state.add_session(_session(alice.id))
        token = state.add_reset_token(_reset_token(alice.id))
        kept = state.add_session(_session(bob.id))
        entry = _audit("user.login", actor_id=alice.id)
        state.add_audit(entry)
        state.add_login_failure(alice.username, BASE_TIME, None)
        state.delete_user(alice.id)
        assert state.find_session(session.token_hash) is None
        assert state.find_reset_token(token.token_hash) is None
        assert state.find_session(kept.token_hash) == kept
        assert state.list_audit() == [entry]
        assert state.count_login_failures(alice.username, BASE_TIME) == 1

    def test_deleting_a_machine_deletes_its_config_and_unlinks_claims(
        self, state: StateStore
    ) -> None:
        machine, other = state.add_machine(make_machine()), state.add_machine(make_machine())
        state.set_agent_config(AgentConfig(machine.id))
        kept = state.set_agent_config(AgentConfig(other.id))
        delivered = state.add_claim(_claim(status=ClaimStatus.DELIVERED, machine_id=machine.id))
        waiting = state.add_claim(
            _claim(status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=b"dead key")
        )
        state.delete_machine(machine.id)
        assert state.get_agent_config(machine.id) is None
        assert state.get_agent_config(other.id) == kept
        assert state.get_claim(delivered.agent_id) == attrs.evolve(delivered, machine_id=None)
        assert state.get_claim(waiting.agent_id) == attrs.evolve(
            waiting, machine_id=None, status=ClaimStatus.EXPIRED, sealed_key=None
        )
        assert state.take_sealed_key(waiting.agent_id) is None
