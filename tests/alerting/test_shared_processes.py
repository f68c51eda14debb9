"""Two hubs on one database file, as two server processes sharing it would be.

A machine's samples may reach either hub. With ``[server] shared_database =
true`` each hub evaluates a machine's samples from its stored rule states, so a
series moved by the other hub is judged right: a pending series that recovered
on the other hub does not fire, a firing one resolved there is not resolved
twice, and a firing that recovers on the other hub is resolved.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from lunasentri_core import Sentri
from lunasentri_core.model import AlertState, Machine

from .conftest import OpenHub, RecordingNotifier, add_channel, add_user
from .test_alert_evaluation import add_rule, cpu, delivered, feed

pytestmark = pytest.mark.anyio

SHARED = {"server": {"shared_database": True}}


@contextlib.asynccontextmanager
async def two_hubs(open_hub: OpenHub, **settings: object) -> AsyncIterator[tuple[Sentri, Sentri]]:
    async with open_hub(**settings) as a, open_hub(**settings) as b:
        yield a, b


async def rule_on(a: Sentri, b: Sentri, for_minutes: float) -> Machine:
    """A user with a channel, a machine and a cpu rule, both hubs knowing them."""
    user = await add_user(a)
    await add_channel(a, user.id, "ops")
    machine = await a.add_machine("web-1", owner_id=user.id)
    await add_rule(a, user.id, for_duration=timedelta(minutes=for_minutes))
    b.alerts.invalidate()  # as b's ChangeFollower would within sync_interval
    return machine


async def events(hub: Sentri) -> list[tuple[AlertState, float]]:
    found = await hub.run_sync(hub.storage.state.list_alert_events, None)
    return [(e.state, e.value) for e in reversed(found)]


async def test_a_recovery_on_the_other_hub_resets_a_pending_series(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with two_hubs(open_hub, **SHARED) as (a, b):
        machine = await rule_on(a, b, for_minutes=1)
        await feed(b, machine, 0, cpu(50))  # b has seen the machine fine: it remembers "ok"
        await feed(a, machine, 10, cpu(95))  # pending on a
        await feed(b, machine, 20, cpu(40))  # back to ok, through b
        await feed(a, machine, 75, cpu(96))  # pending again since 75 s: not a minute yet
        await delivered(a)
        assert await events(a) == []
        states = await a.run_sync(a.storage.state.list_alert_states, None)
        assert [(s.state, s.since.second) for s in states] == [(AlertState.PENDING, 15)]
    assert notifier.kinds("ops") == []


async def test_a_firing_series_is_resolved_by_samples_sent_to_the_other_hub(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with two_hubs(open_hub, **SHARED) as (a, b):
        machine = await rule_on(a, b, for_minutes=0)
        await feed(b, machine, 0, cpu(50))  # b remembers "ok"
        await feed(a, machine, 10, cpu(99))  # firing, through a
        await feed(b, machine, 20, cpu(30))  # resolved, through b
        await feed(a, machine, 30, cpu(20))  # a must not resolve it again
        await feed(b, machine, 40, cpu(98))  # firing again, through b
        assert await events(a) == [
            (AlertState.FIRING, 99.0),
            (AlertState.RESOLVED, 30.0),
            (AlertState.FIRING, 98.0),
        ]
        # Either hub's dispatcher may have leased a notification: run both until
        # all three are out (a lease held by one is skipped by the other's cycle).
        with anyio.fail_after(30):
            while len(notifier.kinds("ops")) < 3:
                await delivered(a)
                await delivered(b)
                await anyio.sleep(0.05)
    # One notification per event; two dispatchers keep no order between them.
    assert sorted(notifier.kinds("ops")) == ["alert.firing", "alert.firing", "alert.resolved"]


async def test_without_shared_database_a_hub_keeps_its_own_view(open_hub: OpenHub) -> None:
    """What the setting is for: a stale view misses the recovery the other hub recorded."""
    async with two_hubs(open_hub) as (a, b):
        machine = await rule_on(a, b, for_minutes=0)
        await feed(b, machine, 0, cpu(50))
        await feed(a, machine, 10, cpu(99))  # firing, through a
        await feed(b, machine, 20, cpu(30))  # b still thinks "ok": nothing to resolve
        assert await events(a) == [(AlertState.FIRING, 99.0)]


async def test_one_hub_runs_each_job_until_it_closes(open_hub: OpenHub) -> None:
    async with open_hub() as a:
        async with open_hub() as b:
            assert await a.singleton("heartbeat")
            assert await a.singleton("heartbeat")  # the holder keeps it
            assert not await b.singleton("heartbeat")
            assert await b.singleton("maintenance")  # each job on its own
            assert not await a.singleton("maintenance")
        assert await a.singleton("maintenance")  # b closed: its job is free
