"""The heartbeat, clock-controlled, on a real SQLite file: every transition once."""

from __future__ import annotations

from datetime import timedelta

import anyio
import attrs
import pytest

from lunasentri_core import MachineStatus, Reading, Sample, Sentri
from lunasentri_core.model import EventState, Machine

from .conftest import T0, Clock, OpenHub, RecordingNotifier, add_channel, add_user

pytestmark = pytest.mark.anyio


async def report(hub: Sentri, machine: Machine, clock: Clock) -> None:
    await hub.ingest(machine.id, [Sample(clock(), [Reading("cpu.percent", 5.0)])])


async def settle(hub: Sentri) -> None:
    """Run what the background tasks would: a sweep, then deliveries."""
    await hub.heartbeat.sweep()
    await hub.dispatcher.cycle()


async def status(hub: Sentri, machine: Machine) -> MachineStatus:
    return (await hub.get_machine(machine.id)).status


async def test_silent_machine_goes_offline_once_and_comes_back_once(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        machine = await hub.add_machine("web-1", owner_id=user.id)
        await report(hub, machine, clock)
        await settle(hub)
        assert await status(hub, machine) is MachineStatus.ONLINE
        assert notifier.kinds("ops") == []  # a first report is not news

        clock.advance(minutes=2)  # exactly at the threshold: still online
        await settle(hub)
        assert await status(hub, machine) is MachineStatus.ONLINE

        clock.advance(seconds=1)
        await settle(hub)
        assert await status(hub, machine) is MachineStatus.OFFLINE
        for _ in range(3):  # stays offline: no second notice
            clock.advance(minutes=10)
            await settle(hub)
        assert notifier.kinds("ops") == ["machine.offline"]
        offline = notifier.sent["ops"][0]
        assert "web-1" in offline.title
        assert offline.data["machine"]["name"] == "web-1"
        assert offline.data["last_seen"] == T0.isoformat()
        assert "No report since 2026-11-23 12:00:00 UTC" in offline.text

        await report(hub, machine, clock)
        await settle(hub)
        assert await status(hub, machine) is MachineStatus.ONLINE
        for _ in range(3):  # stays online: nothing more
            clock.advance(seconds=30)
            await report(hub, machine, clock)
            await settle(hub)
        assert notifier.kinds("ops") == ["machine.offline", "machine.online"]
        assert "back online" in notifier.sent["ops"][1].title
        assert "offline" in notifier.sent["ops"][1].text

        changes = await hub.run_sync(hub.storage.state.list_status_changes, machine.id)
        assert [(c.previous, c.status) for c in reversed(changes)] == [
            (MachineStatus.UNKNOWN, MachineStatus.ONLINE),
            (MachineStatus.ONLINE, MachineStatus.OFFLINE),
            (MachineStatus.OFFLINE, MachineStatus.ONLINE),
        ]


async def test_no_second_offline_notice_after_a_restart(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        machine = await hub.add_machine("db-1", owner_id=user.id)
        await report(hub, machine, clock)
        clock.advance(minutes=5)
        await settle(hub)
    assert notifier.kinds("ops") == ["machine.offline"]

    clock.advance(minutes=5)
    async with open_hub() as hub:  # the same database, a new process as far as it knows
        await settle(hub)
        clock.advance(minutes=5)
        await settle(hub)
        assert await status(hub, machine) is MachineStatus.OFFLINE
    assert notifier.kinds("ops") == ["machine.offline"]


async def test_after_an_outage_of_the_server_machines_get_their_threshold_again(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        back = await hub.add_machine("back", owner_id=user.id)
        gone = await hub.add_machine("gone", owner_id=user.id)
        for machine in (back, gone):
            await report(hub, machine, clock)
        await settle(hub)

    clock.advance(minutes=10)  # the server was down: nobody could report
    async with open_hub() as hub:
        await anyio.wait_all_tasks_blocked()  # the heartbeat has started listening
        await settle(hub)
        assert await status(hub, gone) is MachineStatus.ONLINE
        clock.advance(seconds=20)
        await report(hub, back, clock)
        clock.advance(minutes=1, seconds=41)  # 2 min and 1 s since the start
        await settle(hub)
        # Within the grace still: the threshold, plus an agent's longest backoff.
        assert await status(hub, gone) is MachineStatus.ONLINE
        await report(hub, back, clock)
        clock.advance(seconds=30)
        await settle(hub)
        assert await status(hub, back) is MachineStatus.ONLINE
        assert await status(hub, gone) is MachineStatus.OFFLINE
    assert notifier.kinds("ops") == ["machine.offline"]
    assert "gone" in notifier.sent["ops"][0].title


async def test_an_event_written_before_a_crash_is_delivered_after_restart(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        machine = await hub.add_machine("db-1", owner_id=user.id)
        await report(hub, machine, clock)
        clock.advance(minutes=5)
        await hub.heartbeat.sweep()  # recorded; the dispatcher has not run yet
        events = await hub.run_sync(hub.storage.state.list_outbox_events, None)
        assert [e.kind for e in events] == ["machine.offline"]
    sent_before_restart = notifier.kinds("ops")

    async with open_hub() as hub:
        await hub.dispatcher.cycle()
    # Whether the first hub's background dispatcher got to it or the second one did,
    # it was delivered exactly once.
    assert sent_before_restart in ([], ["machine.offline"])
    assert notifier.kinds("ops") == ["machine.offline"]


async def test_per_machine_threshold_overrides_the_default(open_hub: OpenHub, clock: Clock) -> None:
    async with open_hub(offline_threshold="1m") as hub:
        quick = await hub.add_machine("quick")
        patient = await hub.add_machine("patient")
        patient = await hub.run_sync(
            hub.storage.state.update_machine,
            attrs.evolve(patient, offline_after=timedelta(minutes=10)),
        )
        await report(hub, quick, clock)
        await report(hub, patient, clock)
        clock.advance(minutes=5)
        await settle(hub)
        assert await status(hub, quick) is MachineStatus.OFFLINE
        assert await status(hub, patient) is MachineStatus.ONLINE
        clock.advance(minutes=6)
        await settle(hub)
        assert await status(hub, patient) is MachineStatus.OFFLINE


async def test_many_machines_in_mixed_states(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        machines = [await hub.add_machine(f"m{i:02}", owner_id=user.id) for i in range(30)]
        never = await hub.add_machine("never-reported", owner_id=user.id)
        for machine in machines:
            await report(hub, machine, clock)
        clock.advance(minutes=1)
        for machine in machines[:10]:  # these keep reporting
            await report(hub, machine, clock)
        clock.advance(minutes=1, seconds=30)
        await settle(hub)
        statuses = {m.name: m.status for m in await hub.list_machines()}
        assert all(statuses[m.name] is MachineStatus.ONLINE for m in machines[:10])
        assert all(statuses[m.name] is MachineStatus.OFFLINE for m in machines[10:])
        assert statuses[never.name] is MachineStatus.UNKNOWN
        for machine in machines[20:]:  # a third of the silent ones come back
            await report(hub, machine, clock)
        await settle(hub)
        await settle(hub)
        kinds = notifier.kinds("ops")
        assert kinds.count("machine.offline") == 20
        assert kinds.count("machine.online") == 10
        titles = [n.title for n in notifier.sent["ops"] if n.kind.value == "machine.offline"]
        assert sorted(titles) == sorted(f"Machine {m.name} is offline" for m in machines[10:])


async def test_two_hubs_sweeping_one_store_notify_once(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as first, open_hub() as second:
        user = await add_user(first)
        await add_channel(first, user.id, "ops")
        machine = await first.add_machine("shared", owner_id=user.id)
        await report(first, machine, clock)
        clock.advance(minutes=3)
        await first.heartbeat.sweep()
        await second.heartbeat.sweep()
        await first.dispatcher.cycle()
        await second.dispatcher.cycle()
        events = await first.run_sync(first.storage.state.list_outbox_events, None)
        assert [(e.kind, e.state) for e in events] == [("machine.offline", EventState.DISPATCHED)]
    assert notifier.kinds("ops") == ["machine.offline"]


async def test_a_five_minute_outage_sends_no_notice_for_agents_that_kept_running(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    """With the defaults: after the server's restart an agent sends within its
    backoff ceiling (30 s), also for a machine whose own threshold is shorter."""
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        usual = await hub.add_machine("usual", owner_id=user.id)
        strict = await hub.add_machine("strict", owner_id=user.id)
        strict = attrs.evolve(strict, offline_after=timedelta(seconds=20))
        await hub.run_sync(hub.storage.state.update_machine, strict)
        for machine in (usual, strict):
            await report(hub, machine, clock)
        await settle(hub)

    clock.advance(minutes=5)  # the server is down; the agents keep collecting
    async with open_hub() as hub:
        await anyio.wait_all_tasks_blocked()  # the heartbeat has started listening
        for _ in range(6):  # the agents' backoff runs out 30 s after the restart
            clock.advance(seconds=5)
            await settle(hub)
        for machine in (usual, strict):
            await report(hub, machine, clock)
        for _ in range(3):
            clock.advance(seconds=5)
            for machine in (usual, strict):
                await report(hub, machine, clock)
            await settle(hub)
        assert await status(hub, usual) is MachineStatus.ONLINE
        assert await status(hub, strict) is MachineStatus.ONLINE
    assert notifier.kinds("ops") == []


def test_the_grace_covers_the_agents_default_backoff() -> None:
    from lunasentri_core.agent.settings import AgentSettings
    from lunasentri_core.config import Settings
    from lunasentri_core.services.heartbeat import AGENT_BACKOFF_MAX

    assert AgentSettings().backoff_max == AGENT_BACKOFF_MAX == Settings().restart_grace
