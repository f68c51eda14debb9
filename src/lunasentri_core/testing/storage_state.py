"""The contract of a :class:`~lunasentri_core.storage.StateStore`.

Beyond the protocol's docstrings it pins down: a record reads back equal to what
was added (timestamps to the microsecond, as UTC); asking for, changing or
deleting a record that does not exist (or that another owner holds) raises
:class:`~lunasentri_core.NotFoundError`; a taken username raises
:class:`~lunasentri_core.ConflictError`; alert events are listed newest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Protocol

import attrs
import pytest

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    AlertState,
    MachineKind,
    MachineStatus,
    Role,
    RuleScope,
    SeriesKey,
    Severity,
    User,
)
from lunasentri_core.storage.protocols import StateStore, StorageBackend
from lunasentri_core.testing.builders import (
    BASE_TIME,
    make_alert_event,
    make_alert_rule,
    make_api_key,
    make_machine,
    make_user,
)
from lunasentri_core.testing.contract import Contract


class _Record(Protocol):
    @property
    def id(self) -> str: ...


def _ids(records: Iterable[_Record]) -> list[str]:
    return [record.id for record in records]


class StateStoreContract(Contract):
    """Tests of ``storage.state``; part of :class:`~lunasentri_core.testing.StorageContract`."""

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
        assert state.update_machine(changed) == changed
        assert state.get_machine(machine.id) == changed
        assert state.find_machine(changed.name) == changed

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
