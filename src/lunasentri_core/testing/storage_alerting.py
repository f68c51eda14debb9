"""The heartbeat and alert-state part of the :class:`StateStore` contract.

It pins down: a status change or an alert transition applies only while its
machine or series still holds what the caller saw, so a second record of the
same move is not applied (and of concurrent callers exactly one wins); what a
record returns is what was applied, and the event and outbox entry of a move
are stored with it or not at all. A machine is offline once silent for longer
than its ``offline_after`` (or the threshold): at exactly the threshold it is
still online. Alert events and states are scoped by their machine's owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs
import pytest

from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import (
    AlertEvent,
    AlertState,
    AlertStatus,
    Machine,
    MachineStatus,
    Role,
    SeriesKey,
    Severity,
    User,
    new_id,
)
from lunasentri_core.storage.protocols import AlertTransition, StateStore, StatusTransition
from lunasentri_core.testing.builders import (
    BASE_TIME,
    make_alert_event,
    make_alert_rule,
    make_alert_status,
    make_machine,
    make_outbox_event,
    make_status_change,
    make_user,
)
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.races import CALLERS, race

ONLINE, OFFLINE, UNKNOWN = MachineStatus.ONLINE, MachineStatus.OFFLINE, MachineStatus.UNKNOWN
MICROSECOND = timedelta(microseconds=1)


def _user(state: StateStore, role: Role = Role.USER) -> User:
    return state.add_user(make_user(role=role), "hash-of-a-password")


def _machine(state: StateStore, owner: User | None = None, **overrides: Any) -> Machine:
    owner_id = None if owner is None else owner.id
    return state.add_machine(make_machine(owner_id=owner_id, **overrides))


def _noticed(machine: Machine, **overrides: Any) -> StatusTransition:
    """A status change of ``machine`` with its outbox entry."""
    change = make_status_change(machine.id, **overrides)
    notice = make_outbox_event(machine.owner_id, kind="machine.offline", machine_id=machine.id)
    return StatusTransition(change, notice)


def _move(
    previous: AlertStatus | None, status: AlertStatus, owner_id: str | None
) -> AlertTransition:
    """A series' move to ``status`` with its event and outbox entry."""
    event = AlertEvent(
        id=new_id(),
        rule_id=status.rule_id,
        machine_id=status.machine_id,
        series=status.series,
        state=status.state,
        value=status.value,
        at=status.since,
    )
    notice = make_outbox_event(
        owner_id,
        kind=f"alert.{status.state.value}",
        machine_id=status.machine_id,
        rule_id=status.rule_id,
        occurred_at=status.since,
    )
    return AlertTransition(previous, status, event, notice)


def _later(status: AlertStatus, state: AlertState, minutes: int) -> AlertStatus:
    at = status.since + timedelta(minutes=minutes)
    return attrs.evolve(status, state=state, since=at, updated_at=at)


def _events(transitions: Iterable[AlertTransition]) -> list[AlertEvent]:
    return [t.event for t in transitions if t.event is not None]


def _outbox_ids(transitions: Iterable[AlertTransition | StatusTransition]) -> list[str]:
    found = (t.outbox if isinstance(t, AlertTransition) else t.event for t in transitions)
    return [event.id for event in found if event is not None]


class AlertingStateContract(Contract):
    """Heartbeat and alert-state tests, run as part of :class:`StateStoreContract`.

    They use its ``state`` fixture.
    """

    __test__ = False

    # ------------------------------------------------------------ heartbeat

    def test_find_status_changes_honours_each_threshold(self, state: StateStore) -> None:
        now, threshold = BASE_TIME + timedelta(hours=1), timedelta(minutes=5)
        silent = _machine(state, status=ONLINE, last_seen=now - threshold - MICROSECOND)
        boundary = _machine(state, status=OFFLINE, last_seen=now - threshold)
        fresh = _machine(state, status=ONLINE, last_seen=now - threshold)
        gone = _machine(state, status=OFFLINE, last_seen=now - timedelta(hours=1))
        _machine(state, status=UNKNOWN, last_seen=None)  # never reported: keeps its status
        first = _machine(state, status=UNKNOWN, last_seen=now)
        quick = _machine(
            state,
            status=ONLINE,
            last_seen=now - timedelta(minutes=2),
            offline_after=timedelta(minutes=1),
        )
        patient = _machine(
            state,
            status=UNKNOWN,
            last_seen=now - timedelta(minutes=30),
            offline_after=timedelta(hours=1),
        )
        due = state.find_status_changes(now, threshold)
        assert {m.id: status for m, status in due} == {
            silent.id: OFFLINE,
            boundary.id: ONLINE,
            first.id: ONLINE,
            quick.id: OFFLINE,
            patient.id: ONLINE,
        }
        assert (silent, OFFLINE) in due, "the machine comes back as stored"
        some = [silent.id, fresh.id, gone.id]
        assert state.find_status_changes(now, threshold, some) == [(silent, OFFLINE)]
        assert state.find_status_changes(now, threshold, []) == []

    def test_a_status_change_is_applied_once(self, state: StateStore) -> None:
        machine = _machine(state, _user(state), status=ONLINE, last_seen=BASE_TIME)
        transition, twin = _noticed(machine), _noticed(machine)
        assert state.record_status_changes([transition, twin]) == [transition.change]
        assert state.get_machine(machine.id) == attrs.evolve(machine, status=OFFLINE)
        again = _noticed(machine)  # a second sweep that saw the machine online too
        assert state.record_status_changes([again]) == []
        assert state.get_machine(machine.id).status is OFFLINE
        assert state.list_status_changes(machine.id) == [transition.change]
        written = state.list_outbox_events(ids=_outbox_ids([transition, twin, again]))
        assert written == [transition.event]

    def test_a_status_change_of_an_unknown_machine_is_not_applied(self, state: StateStore) -> None:
        stray = StatusTransition(make_status_change("no-such-machine"), make_outbox_event(None))
        assert state.record_status_changes([stray]) == []
        assert state.list_outbox_events(ids=_outbox_ids([stray])) == []
        assert state.record_status_changes([]) == []

    def test_list_status_changes_newest_first(self, state: StateStore) -> None:
        machine, other = _machine(state), _machine(state)
        at = [BASE_TIME + timedelta(minutes=n, microseconds=n) for n in (1, 2, 3)]
        changes = [
            make_status_change(machine.id, UNKNOWN, ONLINE, at=at[0]),
            make_status_change(machine.id, ONLINE, OFFLINE, at=at[1]),
            make_status_change(machine.id, OFFLINE, ONLINE, at=at[2], last_seen=None),
        ]
        # One batch applies in order: each change starts where the one before ended.
        assert state.record_status_changes([StatusTransition(c) for c in changes]) == changes
        newest = changes[::-1]
        assert state.list_status_changes(machine.id) == newest
        assert state.list_status_changes(machine.id, since=at[1]) == newest[:2]
        assert state.list_status_changes(machine.id, limit=1) == newest[:1]
        assert state.list_status_changes(machine.id, limit=0) == []
        assert state.list_status_changes(other.id) == []

    def test_concurrent_status_changes_have_one_winner(self, state: StateStore) -> None:
        owner = _user(state)
        machine = _machine(state, owner, status=ONLINE, last_seen=BASE_TIME)
        applied = race(lambda _: state.record_status_changes([_noticed(machine)]))
        assert sorted(len(changes) for changes in applied) == [0] * (CALLERS - 1) + [1]
        [winner] = [changes[0] for changes in applied if changes]
        assert state.list_status_changes(machine.id) == [winner]
        assert len(state.list_outbox_events(owner.id)) == 1

    # ------------------------------------------------------------ rules and events

    def test_update_alert_rule(self, state: StateStore) -> None:
        owner, other = _user(state), _user(state)
        machine = _machine(state, owner)
        rule = state.add_alert_rule(make_alert_rule(owner.id))
        pending = make_alert_status(rule, machine.id)
        state.record_alert_transitions([AlertTransition(None, pending)])
        renamed = attrs.evolve(
            rule,
            name="cpu very high",
            severity=Severity.CRITICAL,
            owner_id=other.id,
            created_at=BASE_TIME + timedelta(days=1),
        )
        stored = state.update_alert_rule(renamed)
        assert stored == attrs.evolve(renamed, owner_id=owner.id, created_at=rule.created_at)
        assert state.get_alert_rule(rule.id, owner.id) == stored
        assert state.list_alert_states(rule_id=rule.id) == [pending], "a rename keeps states"
        state.update_alert_rule(attrs.evolve(stored, threshold=95.0))
        assert state.list_alert_states(rule_id=rule.id) == [], "a new condition starts over"
        with pytest.raises(NotFoundError):
            state.update_alert_rule(make_alert_rule(owner.id))

    def test_alert_event_filters(self, state: StateStore) -> None:
        owner = _user(state)
        machine = _machine(state, owner)
        cpu, mem = (state.add_alert_rule(make_alert_rule(owner.id)) for _ in range(2))
        at = [BASE_TIME + timedelta(minutes=n) for n in range(3)]
        fired = make_alert_event(cpu, machine.id, at=at[0])
        resolved = make_alert_event(
            cpu, machine.id, at=at[1], state=AlertState.RESOLVED, acknowledged_at=at[1]
        )
        other = make_alert_event(mem, machine.id, at=at[2])
        for event in (fired, resolved, other):
            state.add_alert_event(event)
        assert state.list_alert_events(rule_id=cpu.id) == [resolved, fired]
        assert state.list_alert_events(state=AlertState.FIRING) == [other, fired]
        assert state.list_alert_events(acknowledged=True) == [resolved]
        assert state.list_alert_events(acknowledged=False) == [other, fired]
        assert state.list_alert_events(since=at[1]) == [other, resolved], "since is inclusive"
        assert state.list_alert_events(owner.id, rule_id=mem.id, acknowledged=True) == []

    def test_the_first_acknowledgement_stays(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        rule = state.add_alert_rule(make_alert_rule(alice.id))
        event = state.add_alert_event(make_alert_event(rule, _machine(state, alice).id))
        first = BASE_TIME + timedelta(minutes=1, microseconds=3)
        second = first + timedelta(days=1)
        acked = state.acknowledge_alert_event(event.id, alice.id, first, alice.id)
        assert acked == attrs.evolve(event, acknowledged_at=first, acknowledged_by=alice.id)
        assert state.acknowledge_alert_event(event.id, "an-admin", second) == acked
        assert state.list_alert_events(alice.id) == [acked]
        with pytest.raises(NotFoundError):
            state.acknowledge_alert_event(event.id, bob.id, second, bob.id)
        with pytest.raises(NotFoundError):
            state.acknowledge_alert_event("no-such-event", alice.id, second)

    # ------------------------------------------------------------ series states

    def test_alert_transitions_are_recorded_with_their_event_and_outbox(
        self, state: StateStore
    ) -> None:
        owner = _user(state)
        machine = _machine(state, owner)
        rule = state.add_alert_rule(make_alert_rule(owner.id))
        pending = make_alert_status(rule, machine.id)
        quiet = AlertTransition(None, pending)  # ok -> pending notifies nobody
        assert state.record_alert_transitions([quiet]) == [quiet]
        assert state.list_alert_states(rule_id=rule.id) == [pending]
        firing = _move(pending, _later(pending, AlertState.FIRING, 5), owner.id)
        assert state.record_alert_transitions([firing]) == [firing]
        assert state.list_alert_states(rule_id=rule.id) == [firing.status]
        assert state.list_alert_events(rule_id=rule.id) == _events([firing])
        assert state.list_outbox_events(owner.id) == [firing.outbox]

    def test_a_stale_alert_transition_is_not_applied(self, state: StateStore) -> None:
        owner = _user(state)
        web, db = _machine(state, owner), _machine(state, owner)
        rule = state.add_alert_rule(make_alert_rule(owner.id))
        pending = make_alert_status(rule, web.id)
        first = _move(None, pending, owner.id)
        firing = _move(pending, _later(pending, AlertState.FIRING, 5), owner.id)
        assert state.record_alert_transitions([first]) == [first]
        assert state.record_alert_transitions([firing]) == [firing]
        # Another evaluator saw the series pending too; and one saw it never evaluated.
        stale = _move(pending, _later(pending, AlertState.FIRING, 6), owner.id)
        again = _move(None, pending, owner.id)
        fresh = _move(None, _later(make_alert_status(rule, db.id), AlertState.PENDING, 1), owner.id)
        assert state.record_alert_transitions([stale, again, fresh]) == [fresh]
        assert state.list_alert_states(rule_id=rule.id, machine_id=web.id) == [firing.status]
        assert state.list_alert_events(rule_id=rule.id) == _events([firing, fresh, first])
        written = state.list_outbox_events(ids=_outbox_ids([first, firing, stale, again, fresh]))
        assert sorted(e.id for e in written) == sorted(_outbox_ids([first, firing, fresh]))

    def test_transitions_of_deleted_rules_or_machines_are_not_applied(
        self, state: StateStore
    ) -> None:
        owner = _user(state)
        kept, doomed = _machine(state, owner), _machine(state, owner)
        rule, gone = (state.add_alert_rule(make_alert_rule(owner.id)) for _ in range(2))
        watched = make_alert_status(rule, doomed.id)
        state.record_alert_transitions([AlertTransition(None, watched)])
        state.delete_alert_rule(gone.id)
        state.delete_machine(doomed.id)
        moves = [
            _move(None, make_alert_status(gone, kept.id), owner.id),
            _move(None, make_alert_status(rule, doomed.id, since=BASE_TIME), owner.id),
            _move(watched, _later(watched, AlertState.FIRING, 5), owner.id),
        ]
        for move in moves:
            assert state.record_alert_transitions([move]) == []
        assert state.list_alert_states(owner.id) == []
        assert state.list_alert_events(owner.id) == []
        assert state.list_outbox_events(ids=_outbox_ids(moves)) == []

    def test_alert_states_are_scoped_to_the_machines_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        web, db = _machine(state, alice), _machine(state, alice)
        bobs = _machine(state, bob)
        rule, bob_rule = (state.add_alert_rule(make_alert_rule(u.id)) for u in (alice, bob))
        on_web = make_alert_status(rule, web.id)
        on_db = make_alert_status(
            rule, db.id, state=AlertState.FIRING, series=SeriesKey(db.id, rule.metric, {"cpu": "0"})
        )
        on_bobs = make_alert_status(bob_rule, bobs.id, state=AlertState.FIRING)
        moves = [AlertTransition(None, s) for s in (on_web, on_db, on_bobs)]
        assert state.record_alert_transitions(moves) == moves
        assert set(state.list_alert_states(alice.id)) == {on_web, on_db}
        assert state.list_alert_states(bob.id) == [on_bobs]
        assert state.list_alert_states(machine_id=db.id) == [on_db]
        assert state.list_alert_states(alice.id, states=[AlertState.FIRING]) == [on_db]
        assert state.list_alert_states(rule_id=bob_rule.id) == [on_bobs]
        assert state.list_alert_states(alice.id, rule_id=bob_rule.id) == []
        assert state.list_alert_states(states=[]) == []

    def test_concurrent_first_transitions_have_one_winner(self, state: StateStore) -> None:
        owner = _user(state)
        machine = _machine(state, owner)
        rule = state.add_alert_rule(make_alert_rule(owner.id))
        status = make_alert_status(rule, machine.id)
        applied = race(lambda _: state.record_alert_transitions([_move(None, status, owner.id)]))
        assert sorted(len(moves) for moves in applied) == [0] * (CALLERS - 1) + [1]
        [winner] = [moves[0] for moves in applied if moves]
        assert state.list_alert_states(rule_id=rule.id) == [status]
        assert state.list_alert_events(rule_id=rule.id) == _events([winner])
        assert state.list_outbox_events(owner.id) == [winner.outbox]


__all__ = ["AlertingStateContract"]
