"""The shared SQL state store beyond the contract: conflicts, cascades, messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import MachineSamples, Reading, Sample, SeriesKey
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import (
    make_alert_event,
    make_alert_rule,
    make_api_key,
    make_machine,
    make_user,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def write_point(storage: SqlStorage, machine_id: str) -> None:
    sample = Sample(T0, [Reading("cpu.percent", 1.0), Reading("disk.used", 2.0, {"mount": "/"})])
    storage.metrics.write([MachineSamples(machine_id, [sample])])


def test_machine_names_are_unique_per_owner(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    state.add_machine(make_machine(name="web", owner_id=alice.id))
    state.add_machine(make_machine(name="web", owner_id=bob.id))
    state.add_machine(make_machine(name="web"))
    with pytest.raises(ConflictError, match=f"'web' of owner '{alice.id}' already exists"):
        state.add_machine(make_machine(name="web", owner_id=alice.id))
    with pytest.raises(ConflictError, match="'web' without an owner already exists"):
        state.add_machine(make_machine(name="web"))
    assert sorted(m.owner_id or "" for m in state.list_machines()) == sorted(["", alice.id, bob.id])


def test_renaming_onto_a_taken_name_conflicts(storage: SqlStorage) -> None:
    state = storage.state
    web = state.add_machine(make_machine(name="web"))
    state.add_machine(make_machine(name="db"))
    with pytest.raises(ConflictError, match="'db'"):
        state.update_machine(attrs.evolve(web, name="db"))
    assert state.get_machine(web.id).name == "web"
    # Keeping its own name is no conflict.
    assert state.update_machine(attrs.evolve(web, hostname="h")).hostname == "h"


def test_duplicates_by_id_conflict(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    with pytest.raises(ConflictError, match="already exists"):
        state.add_user(attrs.evolve(user, username="someone-else"), "h")
    machine = state.add_machine(make_machine())
    with pytest.raises(ConflictError, match="already exists"):
        state.add_machine(attrs.evolve(machine, name="other-name"))
    key = state.add_api_key(make_api_key(machine.id))
    with pytest.raises(ConflictError, match="hash already exists"):
        state.add_api_key(attrs.evolve(key, id="another-id"))
    rule = state.add_alert_rule(make_alert_rule(user.id))
    with pytest.raises(ConflictError):
        state.add_alert_rule(rule)
    event = state.add_alert_event(make_alert_event(rule, machine.id))
    with pytest.raises(ConflictError):
        state.add_alert_event(event)


def test_references_to_missing_records_are_not_found(storage: SqlStorage) -> None:
    state = storage.state
    with pytest.raises(NotFoundError, match="owner 'ghost'"):
        state.add_machine(make_machine(owner_id="ghost"))
    with pytest.raises(NotFoundError, match="machine 'ghost' not found"):
        state.add_api_key(make_api_key("ghost"))
    with pytest.raises(NotFoundError, match="owner 'ghost'"):
        state.add_alert_rule(make_alert_rule("ghost"))
    user = state.add_user(make_user(), "h")
    rule = state.add_alert_rule(make_alert_rule(user.id))
    with pytest.raises(NotFoundError, match="machine 'ghost' not found"):
        state.add_alert_event(make_alert_event(rule, "ghost"))
    machine = state.add_machine(make_machine())
    with pytest.raises(NotFoundError, match="alert rule"):
        state.add_alert_event(make_alert_event(attrs.evolve(rule, id="ghost"), machine.id))
    with pytest.raises(NotFoundError, match="owner 'ghost'"):
        state.update_machine(attrs.evolve(machine, owner_id="ghost"))


def test_deleting_a_user_deletes_everything_of_theirs(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    hers = state.add_machine(make_machine(owner_id=alice.id))
    his = state.add_machine(make_machine(owner_id=bob.id))
    key = state.add_api_key(make_api_key(hers.id))
    her_rule = state.add_alert_rule(make_alert_rule(alice.id))
    his_rule = state.add_alert_rule(make_alert_rule(bob.id))
    state.add_alert_event(make_alert_event(her_rule, hers.id))
    kept = state.add_alert_event(make_alert_event(his_rule, his.id))
    for machine in (hers, his):
        write_point(storage, machine.id)

    state.delete_user(alice.id)

    assert [m.id for m in state.list_machines()] == [his.id]
    assert state.find_api_key(key.key_hash) is None
    assert [r.id for r in state.list_alert_rules()] == [his_rule.id]
    assert state.list_alert_events() == [kept]
    assert storage.metrics.list_series(hers.id) == []
    assert storage.metrics.latest([hers.id]) == []
    assert len(storage.metrics.latest([his.id])) == 2


def test_deleting_a_machine_deletes_its_keys_events_and_series(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    machine, other = state.add_machine(make_machine()), state.add_machine(make_machine())
    key = state.add_api_key(make_api_key(machine.id))
    rule = state.add_alert_rule(make_alert_rule(user.id))
    state.add_alert_event(make_alert_event(rule, machine.id))
    write_point(storage, machine.id)
    write_point(storage, other.id)

    state.delete_machine(machine.id)

    assert state.find_api_key(key.key_hash) is None
    assert state.list_alert_events(machine_id=machine.id) == []
    assert state.get_alert_rule(rule.id) == rule
    assert storage.metrics.list_series(machine.id) == []
    assert len(storage.metrics.list_series(other.id)) == 2
    # The metric store's own delete is then a no-op.
    assert storage.metrics.delete_machine(machine.id) == 0


def test_deleting_a_rule_deletes_its_events(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine())
    rule, other = (state.add_alert_rule(make_alert_rule(user.id)) for _ in range(2))
    state.add_alert_event(make_alert_event(rule, machine.id))
    kept = state.add_alert_event(make_alert_event(other, machine.id))
    state.delete_alert_rule(rule.id)
    assert state.list_alert_events() == [kept]


def test_update_machine_never_moves_last_seen_backwards(storage: SqlStorage) -> None:
    state = storage.state
    machine = state.add_machine(make_machine())
    state.touch_machines([(machine.id, T0 + timedelta(minutes=5))])
    # A status change computed from a stale read must not undo the touch.
    updated = state.update_machine(attrs.evolve(machine, last_seen=T0, name="renamed"))
    assert updated.last_seen == T0 + timedelta(minutes=5)
    assert updated.name == "renamed"
    assert (
        state.update_machine(attrs.evolve(updated, last_seen=None)).last_seen == updated.last_seen
    )


def test_touching_unknown_machines_is_harmless(storage: SqlStorage) -> None:
    storage.state.touch_machines([("ghost", T0)])
    assert storage.state.list_machines() == []


def test_find_machine_without_owner_prefers_an_unowned_one(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    owned = state.add_machine(make_machine(name="web", owner_id=user.id))
    assert state.find_machine("web") == owned
    unowned = state.add_machine(make_machine(name="web"))
    assert state.find_machine("web") == unowned
    assert state.find_machine("web", user.id) == owned


def test_check_machine_refuses_as_get_machine_does(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    alices = state.add_machine(make_machine(owner_id=alice.id))
    unowned = state.add_machine(make_machine())
    state.check_machine(alices.id, alice.id)
    state.check_machine(alices.id)  # an administrator's scope: every machine
    state.check_machine(unowned.id)
    for machine_id, owner_id in [
        (alices.id, bob.id),  # another user's machine
        (unowned.id, alice.id),  # nobody's is not hers either
        ("ghost", None),
        ("ghost", alice.id),
    ]:
        with pytest.raises(NotFoundError, match="not found"):
            state.get_machine(machine_id, owner_id)
        with pytest.raises(NotFoundError, match="not found"):
            state.check_machine(machine_id, owner_id)
    state.update_machine(attrs.evolve(alices, owner_id=bob.id))  # given to Bob
    with pytest.raises(NotFoundError):
        state.check_machine(alices.id, alice.id)
    state.check_machine(alices.id, bob.id)
    state.delete_machine(alices.id)
    with pytest.raises(NotFoundError):
        state.check_machine(alices.id, bob.id)
    with pytest.raises(NotFoundError):
        state.check_machine(alices.id)


def test_revoking_twice_keeps_the_first_time(storage: SqlStorage) -> None:
    state = storage.state
    machine = state.add_machine(make_machine())
    key = state.add_api_key(make_api_key(machine.id))
    state.revoke_api_key(key.id, T0)
    state.revoke_api_key(key.id, T0 + timedelta(days=1))
    found = state.find_api_key(key.key_hash)
    assert found is not None
    assert found.revoked_at == T0


def test_events_of_another_owners_machine_stay_hidden(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    bobs = state.add_machine(make_machine(owner_id=bob.id))
    # Even a rule of Alice's that fired on Bob's machine does not show her Bob's data.
    rule = state.add_alert_rule(make_alert_rule(alice.id))
    event = state.add_alert_event(
        make_alert_event(rule, bobs.id, series=SeriesKey(bobs.id, "cpu.percent"))
    )
    assert state.list_alert_events(alice.id) == []
    assert state.list_alert_events(bob.id) == [event]
    assert state.list_alert_events(limit=0) == []


def test_list_users_is_sorted_by_username(storage: SqlStorage) -> None:
    state = storage.state
    for name in ("carol", "alice", "bob"):
        state.add_user(make_user(username=name), "h")
    assert [u.username for u in state.list_users()] == ["alice", "bob", "carol"]


def test_a_lost_race_on_a_name_is_still_a_conflict(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process adds the same name between the check and the insert: the
    # unique index catches it (for unowned machines too) and the error is the same.
    state = storage.state
    state.add_machine(make_machine(name="web"))
    monkeypatch.setattr(state, "_same_name", lambda *args, **kwargs: False)
    with pytest.raises(ConflictError, match="'web' without an owner already exists"):
        state.add_machine(make_machine(name="web"))
    assert [m.name for m in state.list_machines()] == ["web"]
