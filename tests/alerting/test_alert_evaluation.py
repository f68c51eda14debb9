"""Rules evaluated on ingest through the hub, on a real SQLite file."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from lunasentri_core import Reading, Sample, Sentri
from lunasentri_core.model import (
    AlertRule,
    AlertState,
    Comparison,
    Machine,
    Role,
    RuleScope,
    Severity,
    new_id,
)

from .conftest import T0, Clock, OpenHub, RecordingNotifier, add_channel, add_user

pytestmark = pytest.mark.anyio


async def add_rule(hub: Sentri, owner_id: str, **fields: object) -> AlertRule:
    values: dict[str, object] = {
        "id": new_id(),
        "owner_id": owner_id,
        "name": "cpu high",
        "metric": "cpu.percent",
        "comparison": Comparison.GT,
        "threshold": 90.0,
        "severity": Severity.CRITICAL,
        **fields,
    }
    rule = await hub.run_sync(hub.storage.state.add_alert_rule, AlertRule(**values))  # type: ignore[arg-type]
    hub.alerts.invalidate()
    return rule


async def feed(hub: Sentri, machine: Machine, at_seconds: int, *readings: Reading) -> None:
    await hub.ingest(machine.id, [Sample(T0 + timedelta(seconds=at_seconds), readings)])
    await hub.alerts.drain()


async def delivered(hub: Sentri) -> None:
    await hub.dispatcher.cycle()


def cpu(value: float) -> Reading:
    return Reading("cpu.percent", value)


async def test_a_rule_goes_pending_fires_after_its_duration_and_resolves(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        machine = await hub.add_machine("web-1", owner_id=user.id)
        rule = await add_rule(hub, user.id, for_duration=timedelta(minutes=1))
        states = hub.storage.state.list_alert_states

        await feed(hub, machine, 0, cpu(95))
        assert [s.state for s in await hub.run_sync(states, None)] == [AlertState.PENDING]
        await feed(hub, machine, 30, cpu(97))
        await feed(hub, machine, 60, cpu(99))
        await feed(hub, machine, 75, cpu(98))  # still firing: nothing new
        await feed(hub, machine, 90, cpu(40))
        await feed(hub, machine, 95, cpu(30))  # still fine: nothing new
        await delivered(hub)

        events = await hub.run_sync(hub.storage.state.list_alert_events, user.id)
        assert [(e.state, e.value, e.at) for e in reversed(events)] == [
            (AlertState.FIRING, 99.0, T0 + timedelta(seconds=60)),
            (AlertState.RESOLVED, 40.0, T0 + timedelta(seconds=90)),
        ]
        assert all(e.rule_id == rule.id and e.machine_id == machine.id for e in events)
    assert notifier.kinds("ops") == ["alert.firing", "alert.resolved"]
    firing, resolved = notifier.sent["ops"]
    assert firing.title == "[CRITICAL] cpu high on web-1"
    assert "cpu.percent is 99 (> 90 for 1 min)" in firing.text
    assert firing.data["rule"]["id"] == rule.id
    assert firing.data["value"] == 99.0
    assert resolved.title == "[RESOLVED] cpu high on web-1"


async def test_each_series_of_a_metric_has_its_own_state(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("files", owner_id=user.id)
        await add_rule(hub, user.id, name="disk full", metric="disk.percent", threshold=90.0)
        await feed(
            hub,
            machine,
            0,
            Reading("disk.used", 95, {"mount": "/"}),
            Reading("disk.total", 100, {"mount": "/"}),
            Reading("disk.used", 10, {"mount": "/data"}),
            Reading("disk.total", 100, {"mount": "/data"}),
        )
        events = await hub.run_sync(hub.storage.state.list_alert_events, None)
        assert [(e.series.metric, e.series.labels, e.value) for e in events] == [
            ("disk.percent", (("mount", "/"),), 95.0)
        ]


async def test_scope_by_machine_by_labels_and_by_owner(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        alice, bob = await add_user(hub, "alice"), await add_user(hub, "bob")
        prod = await hub.add_machine("prod", owner_id=alice.id, labels={"env": "prod"})
        dev = await hub.add_machine("dev", owner_id=alice.id, labels={"env": "dev"})
        bobs = await hub.add_machine("bobs", owner_id=bob.id, labels={"env": "prod"})
        by_labels = await add_rule(hub, alice.id, scope=RuleScope(labels={"env": "prod"}))
        by_machine = await add_rule(hub, alice.id, scope=RuleScope(machine_id=dev.id))
        everything = await add_rule(hub, alice.id)
        for machine in (prod, dev, bobs):
            await feed(hub, machine, 0, cpu(99))
        events = await hub.run_sync(hub.storage.state.list_alert_events, None)
        fired = {(e.rule_id, e.machine_id) for e in events}
        assert fired == {
            (by_labels.id, prod.id),
            (by_machine.id, dev.id),
            (everything.id, prod.id),
            (everything.id, dev.id),
        }  # and nothing of Alice's rules on Bob's machine


async def test_a_pending_state_survives_a_restart(open_hub: OpenHub, clock: Clock) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        await add_rule(hub, user.id, for_duration=timedelta(minutes=1))
        await feed(hub, machine, 0, cpu(95))
    async with open_hub() as hub:
        await feed(hub, machine, 61, cpu(95))
        events = await hub.run_sync(hub.storage.state.list_alert_events, None)
        assert [e.state for e in events] == [AlertState.FIRING]


async def test_a_disabled_or_changed_rule_starts_over(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        rule = await add_rule(hub, user.id)
        await feed(hub, machine, 0, cpu(95))
        state = hub.storage.state
        assert [s.state for s in await hub.run_sync(state.list_alert_states, None)] == [
            AlertState.FIRING
        ]
        await hub.run_sync(state.update_alert_rule, attrs.evolve(rule, threshold=99.0))
        hub.alerts.invalidate()
        assert await hub.run_sync(state.list_alert_states, None) == []
        await feed(hub, machine, 10, cpu(95))  # below the new threshold: no event
        await feed(hub, machine, 20, cpu(99.5))
        events = await hub.run_sync(state.list_alert_events, None)
        assert [(e.state, e.value) for e in reversed(events)] == [
            (AlertState.FIRING, 95.0),
            (AlertState.FIRING, 99.5),
        ]


async def test_samples_without_watched_metrics_cost_no_evaluation(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        await add_rule(hub, user.id)
        await feed(hub, machine, 0, Reading("mem.used", 1.0))
        assert hub.alerts.active_rules == 1
        assert await hub.run_sync(hub.storage.state.list_alert_states, None) == []


async def test_only_an_admins_rules_watch_unowned_machines(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        user, admin = await add_user(hub, "alice"), await add_user(hub, "root", Role.ADMIN)
        unowned = await hub.add_machine("shared-host")
        await add_rule(hub, user.id)
        admins_rule = await add_rule(hub, admin.id)
        await feed(hub, unowned, 0, cpu(99))
        events = await hub.run_sync(hub.storage.state.list_alert_events, None)
        assert [(e.rule_id, e.machine_id) for e in events] == [(admins_rule.id, unowned.id)]


async def test_a_collectors_own_percentage_wins_over_the_derived_one(open_hub: OpenHub) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        await add_rule(hub, user.id, metric="mem.percent", threshold=90.0)
        own = Reading("mem.percent", 50)
        parts = [Reading("mem.used", 95), Reading("mem.total", 100)]
        await feed(hub, machine, 0, own, *parts)
        assert await hub.run_sync(hub.storage.state.list_alert_events, None) == []
        await feed(hub, machine, 10, *parts)  # derived: 95 %
        events = await hub.run_sync(hub.storage.state.list_alert_events, None)
        assert [(e.series.metric, e.value) for e in events] == [("mem.percent", 95.0)]


async def test_a_rule_changed_while_the_rules_are_read_is_read_again(
    open_hub: OpenHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        rule = await add_rule(hub, user.id, threshold=90.0)
        state = hub.storage.state
        read_rules = state.list_alert_rules

        def read_then_change(owner_id: str | None) -> list[AlertRule]:
            # What was read is the old rule; the change lands right after it.
            found = read_rules(owner_id)
            monkeypatch.setattr(state, "list_alert_rules", read_rules)
            state.update_alert_rule(attrs.evolve(rule, threshold=50.0))
            hub.alerts.invalidate()
            return found

        monkeypatch.setattr(state, "list_alert_rules", read_then_change)
        await feed(hub, machine, 0, cpu(70))  # evaluated with the old rule: fine
        await feed(hub, machine, 5, cpu(70))  # the change applies from here

        [status] = await hub.run_sync(state.list_alert_states, None)
        assert (status.state, status.rule_id) == (AlertState.FIRING, rule.id)
