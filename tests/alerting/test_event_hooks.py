"""Plugins hear of status changes and alert events once each, through the event hooks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lunasentri_core import MachineStatus, Reading, Sample
from lunasentri_core.model import AlertRule, AlertState, Comparison, new_id
from lunasentri_core.testing import HookRecorder

from .conftest import T0, Clock, OpenHub, add_user

pytestmark = pytest.mark.anyio


async def test_status_changes_and_alert_events_reach_the_hooks_once(
    open_hub: OpenHub, clock: Clock
) -> None:
    recorder = HookRecorder()
    async with open_hub(plugins={"recorder": recorder}) as hub:
        user = await add_user(hub)
        machine = await hub.add_machine("web-1", owner_id=user.id)
        rule = AlertRule(
            id=new_id(), owner_id=user.id, name="hot", metric="cpu.percent",
            comparison=Comparison.GT, threshold=90,
        )  # fmt: skip
        await hub.run_sync(hub.storage.state.add_alert_rule, rule)
        hub.alerts.invalidate()
        await hub.ingest(machine.id, [Sample(T0, [Reading("cpu.percent", 95)])])
        await hub.alerts.drain()
        await hub.heartbeat.sweep()
        clock.advance(minutes=3)
        await hub.heartbeat.sweep()
        await hub.heartbeat.sweep()

    status_calls = recorder.calls("lunasentri_machine_status_changed")
    assert [(c.kwargs["old"], c.kwargs["new"]) for c in status_calls] == [
        (MachineStatus.UNKNOWN, MachineStatus.ONLINE),
        (MachineStatus.ONLINE, MachineStatus.OFFLINE),
    ]
    offline = status_calls[1].kwargs
    assert offline["machine"].id == machine.id
    assert offline["machine"].status is MachineStatus.OFFLINE
    assert offline["at"] == T0 + timedelta(minutes=3)
    (alert,) = recorder.calls("lunasentri_alert_changed")
    assert alert.kwargs["event"].rule_id == rule.id
    assert alert.kwargs["event"].state is AlertState.FIRING
