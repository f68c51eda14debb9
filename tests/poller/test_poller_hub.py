"""The poller in a hub on a real SQLite file: outcomes stored, samples readable."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from lunasentri_core import NotFoundError, Sentri

from .fakes import T0, Clock, wait_until
from .hub_support import PASSWORD, Hosts, add_monitors, host_plugins, hub_settings

pytestmark = pytest.mark.anyio

MINUTE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def hosts() -> Iterator[type[Hosts]]:
    Hosts.reset()
    yield Hosts
    Hosts.gate.set()


async def stored(hub: Sentri, monitor_id: str):  # type: ignore[no-untyped-def]
    return await hub.run_sync(hub.storage.state.get_monitor, monitor_id)


async def latest(hub: Sentri, machine_id: str) -> dict[str, float]:
    return {v.series.metric: v.value for v in await hub.latest(machine_id)}


async def test_a_down_host_is_recorded_then_its_recovery(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with Sentri(hub_settings(tmp_path / "data"), plugins=host_plugins(), clock=clock) as hub:
        (monitor,) = await hub.run_sync(add_monitors, hub, ["10.0.0.1"], due_at=T0)
        Hosts.down.add("10.0.0.1")
        await wait_until(lambda: hub.poller.stats.failed == 1, "the failed poll")
        await wait_until(lambda: Hosts.calls["10.0.0.1"] == 3, "three attempts")
        await wait_until(lambda: hub.poller.stats.running == 0, "the outcome recorded")
        failed = await stored(hub, monitor.id)
        assert failed.last_error == "refused: connection to 10.0.0.1:5985 refused"
        assert failed.last_error_at == T0
        assert failed.failures == 1
        assert failed.last_polled is None
        # Claimed one tick (20 ms here) ahead, to start at its due time.
        assert failed.last_attempted == T0 + timedelta(milliseconds=20)
        assert failed.due_at == T0 + MINUTE
        assert failed.lease_until is None
        # Only poll.up = 0 was written: an alert rule on poll.up < 1 fires.
        assert await latest(hub, monitor.machine_id) == {"poll.up": 0.0}
        # ...without counting as hearing from the host.
        assert (await hub.get_machine(monitor.machine_id)).last_seen is None

        Hosts.down.clear()
        clock.advance(MINUTE)
        await wait_until(lambda: hub.poller.stats.succeeded == 1, "the next poll")
        await wait_until(lambda: hub.poller.stats.running == 0, "its outcome recorded")
        recovered = await stored(hub, monitor.id)
        assert recovered.failures == 0
        assert recovered.last_polled == T0 + MINUTE
        assert recovered.due_at == T0 + 2 * MINUTE
        values = await latest(hub, monitor.machine_id)
        assert values["poll.up"] == 1.0
        assert values["cpu.percent"] == 12.5
        assert values["proc.count"] == 99
        assert values["poll.duration"] >= 0
        assert (await hub.get_machine(monitor.machine_id)).last_seen is not None
    # The credential reached the collector decrypted.
    assert set(Hosts.passwords) == {PASSWORD}


async def test_poll_now_through_the_hub(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with Sentri(hub_settings(tmp_path / "data"), plugins=host_plugins(), clock=clock) as hub:
        (monitor,) = await hub.run_sync(
            add_monitors, hub, ["10.0.0.2"], due_at=T0 + timedelta(seconds=30)
        )
        outcome = await hub.poller.poll_now(monitor.id, monitor.owner_id)
        assert outcome.error is None
        assert outcome.due_at == T0 + timedelta(seconds=30)  # the schedule stays
        after = await stored(hub, monitor.id)
        assert after.last_polled == T0
        assert (await latest(hub, monitor.machine_id))["poll.up"] == 1.0
        with pytest.raises(NotFoundError):
            await hub.poller.poll_now(monitor.id, "someone-else")
    assert Hosts.calls["10.0.0.2"] == 1


async def test_disabled_monitors_and_a_disabled_poller_poll_nothing(tmp_path: Path) -> None:
    clock = Clock(T0)
    settings = hub_settings(tmp_path / "data")
    async with Sentri(settings, plugins=host_plugins(), clock=clock) as hub:
        await hub.run_sync(add_monitors, hub, ["10.0.0.3"], due_at=T0, enabled=False)
        (enabled,) = await hub.run_sync(add_monitors, hub, ["10.0.0.4"], due_at=T0)
        await wait_until(lambda: Hosts.calls["10.0.0.4"] == 1, "the enabled monitor's poll")
        for _ in range(3):
            await hub.poller.schedule()
    assert Hosts.calls["10.0.0.3"] == 0

    off = hub_settings(tmp_path / "data", enabled=False)
    clock.advance(MINUTE * 5)
    async with Sentri(off, plugins=host_plugins(), clock=clock) as hub:
        await anyio.sleep(0.2)  # ticks would have come (nothing to wait for: none should)
        assert hub.poller.stats.started == 0
        # "Poll now" still works in a process that does not schedule.
        outcome = await hub.poller.poll_now(enabled.id)
        assert outcome.error is None
    assert Hosts.calls["10.0.0.4"] == 2


async def test_a_monitor_deleted_during_its_poll_goes_harmlessly(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with Sentri(hub_settings(tmp_path / "data"), plugins=host_plugins(), clock=clock) as hub:
        Hosts.gate.clear()
        doomed, kept = await hub.run_sync(add_monitors, hub, ["10.0.0.5", "10.0.0.6"], due_at=T0)
        await wait_until(lambda: hub.poller.stats.running == 2, "both polls under way")
        await hub.run_sync(hub.storage.state.delete_monitor, doomed.id)
        hub.forget_machine(doomed.machine_id)
        Hosts.gate.set()
        await wait_until(lambda: hub.poller.stats.succeeded == 2, "both polls ended")
        await wait_until(lambda: hub.poller.stats.running == 0, "their outcomes recorded")
        with pytest.raises(NotFoundError):
            await stored(hub, doomed.id)
        with pytest.raises(NotFoundError):
            await hub.get_machine(doomed.machine_id)
        assert await hub.latest(doomed.machine_id) == []
        # The poller goes on.
        clock.advance(MINUTE)
        await wait_until(lambda: Hosts.calls["10.0.0.6"] == 2, "the other monitor again")
        assert (await stored(hub, kept.id)).last_polled is not None
    assert Hosts.calls["10.0.0.5"] == 1


async def test_closing_the_hub_stops_polls_under_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    Hosts.gate.clear()
    async with Sentri(hub_settings(tmp_path / "data"), plugins=host_plugins(), clock=clock) as hub:
        (monitor,) = await hub.run_sync(add_monitors, hub, ["10.0.0.7"], due_at=T0)
        await wait_until(lambda: hub.poller.stats.collecting == 1, "the poll under way")
    # Stopped before the writer closed: nothing tried to write into a closed hub.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    async with Sentri(
        hub_settings(tmp_path / "data", enabled=False), plugins=host_plugins(), clock=clock
    ) as hub:
        left = await stored(hub, monitor.id)
    assert left.lease_until is not None  # freed by the next start of a sole server
    assert left.last_polled is None
