"""The dispatcher: retries with backoff, Retry-After, dead letters, disabled channels,
and silences."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

from lunasentri_core import DeliveryResult, DeliveryStatus, Reading, Role, Sample, Sentri
from lunasentri_core.components import Notification, NotificationKind
from lunasentri_core.config import NotificationSettings
from lunasentri_core.model import (
    Delivery,
    DeliveryState,
    EventState,
    OutboxEvent,
    Silence,
    new_id,
)
from lunasentri_core.services.dispatch import Dispatcher, send
from lunasentri_core.testing import make_notification

from .conftest import T0, Clock, OpenHub, RecordingNotifier, add_channel, add_user

pytestmark = pytest.mark.anyio

RETRY = DeliveryResult(DeliveryStatus.RETRY, "receiver answered 503")


def event(owner_id: str | None, **fields: object) -> OutboxEvent:
    values: dict[str, object] = {
        "id": new_id(),
        "kind": NotificationKind.MACHINE_OFFLINE.value,
        "owner_id": owner_id,
        "title": "Machine web-1 is offline",
        "text": "No report since 12:00.",
        "occurred_at": T0,
        **fields,
    }
    return OutboxEvent(**values)  # type: ignore[arg-type]


async def put(hub: Sentri, *events: OutboxEvent) -> None:
    await hub.run_sync(hub.storage.state.add_outbox_events, list(events))


async def deliveries(hub: Sentri) -> list[Delivery]:
    return await hub.run_sync(hub.storage.state.list_deliveries, None)


async def test_a_failing_channel_is_retried_with_backoff_until_it_works(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        notifier.script = [RETRY, RETRY]
        await put(hub, event(user.id))
        await hub.dispatcher.cycle()
        (first,) = await deliveries(hub)
        assert (first.state, first.attempts, first.last_error) == (
            DeliveryState.PENDING,
            1,
            "receiver answered 503",
        )
        wait = first.next_attempt_at - clock()
        assert timedelta(seconds=5) <= wait <= timedelta(seconds=10)  # half to all of 10 s
        assert await hub.dispatcher.cycle() == 0  # not due yet
        clock.advance(seconds=10)
        await hub.dispatcher.cycle()
        (second,) = await deliveries(hub)
        assert second.attempts == 2
        assert timedelta(seconds=10) <= second.next_attempt_at - clock() <= timedelta(seconds=20)
        clock.advance(seconds=20)
        await hub.dispatcher.cycle()
        (done,) = await deliveries(hub)
        assert (done.state, done.attempts, done.delivered_at) == (
            DeliveryState.DELIVERED,
            3,
            clock(),
        )
    # Every attempt carried the same idempotency key: the delivery's id.
    assert {n.id for n in notifier.attempts} == {done.id}
    assert len(notifier.attempts) == 3
    assert notifier.kinds("ops") == ["machine.offline"]


async def test_retry_after_is_honoured(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        notifier.script = [DeliveryResult(DeliveryStatus.RETRY, "429", retry_after=120)]
        await put(hub, event(user.id))
        await hub.dispatcher.cycle()
        (delivery,) = await deliveries(hub)
        assert delivery.next_attempt_at == clock() + timedelta(seconds=120)


async def test_attempts_run_out_into_a_dead_letter_that_can_be_retried(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub(notifications={"max_attempts": 3}) as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        notifier.script = [RETRY, RETRY, RETRY]
        await put(hub, event(user.id))
        for _ in range(3):
            await hub.dispatcher.cycle()
            clock.advance(hours=1)
        (dead,) = await deliveries(hub)
        assert dead.state is DeliveryState.DEAD
        assert dead.attempts == 3
        assert dead.last_error == "gave up after 3 attempts: receiver answered 503"
        assert await hub.dispatcher.cycle() == 0
        state = hub.storage.state
        dead_ones = await hub.run_sync(
            lambda: state.list_deliveries(user.id, state=DeliveryState.DEAD)
        )
        assert [d.id for d in dead_ones] == [dead.id]

        again = await hub.run_sync(state.retry_delivery, dead.id, clock(), user.id)
        assert (again.state, again.attempts) == (DeliveryState.PENDING, 0)
        await hub.dispatcher.cycle()
        (done,) = await deliveries(hub)
        assert done.state is DeliveryState.DELIVERED
    assert notifier.kinds("ops") == ["machine.offline"]


async def test_a_permanent_failure_is_dead_at_once_and_a_gone_channel_is_disabled(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        channel = await add_channel(hub, user.id, "ops")
        notifier.script = [
            DeliveryResult(DeliveryStatus.FAILED, "400 bad request"),
            DeliveryResult(DeliveryStatus.DISABLE_CHANNEL, "410 gone"),
        ]
        await put(hub, event(user.id))
        await hub.dispatcher.cycle()
        await put(hub, event(user.id))
        await hub.dispatcher.cycle()
        states = sorted((d.state, d.attempts, d.last_error) for d in await deliveries(hub))
        assert states == [
            (DeliveryState.DEAD, 1, "400 bad request"),
            (DeliveryState.DEAD, 1, "410 gone"),
        ]
        stored = await hub.run_sync(hub.storage.state.get_channel, channel.id)
        assert not stored.enabled
        assert stored.disabled_reason == "the channel refused delivery for good: 410 gone"
        await put(hub, event(user.id))  # a disabled channel gets nothing new sent
        await hub.dispatcher.cycle()
        [held] = [d for d in await deliveries(hub) if d.state is DeliveryState.SKIPPED]
        assert held.last_error == f"channel disabled: {stored.disabled_reason}"
        assert len(notifier.attempts) == 2


async def test_each_active_channel_of_the_owner_gets_the_event_and_nobody_else(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        alice, bob = await add_user(hub, "alice"), await add_user(hub, "bob")
        admin = await add_user(hub, "root", role=Role.ADMIN)
        for owner, inbox in ((alice, "a1"), (alice, "a2"), (bob, "b1"), (admin, "root")):
            await add_channel(hub, owner.id, inbox)
        await put(hub, event(alice.id), event(None, title="unowned"))
        await hub.dispatcher.cycle()
    assert notifier.kinds("a1") == notifier.kinds("a2") == ["machine.offline"]
    assert "b1" not in notifier.sent
    assert [n.title for n in notifier.sent["root"]] == ["unowned"]


async def test_a_notifier_that_raises_or_hangs_is_a_retry(open_hub: OpenHub) -> None:
    class Raising:
        name = "raising"

        def send(self, channel: object, notification: object) -> DeliveryResult:
            raise RuntimeError("bug in plugin")

    async with open_hub(notifications={"send_timeout": 1}) as hub:
        dispatcher = Dispatcher(hub, NotificationSettings(), jitter=lambda: 1.0)
        result = await send(hub, Raising(), {}, make_notification(), 1.0)  # type: ignore[arg-type]
        assert result == DeliveryResult(DeliveryStatus.RETRY, "notifier error: RuntimeError")
        assert dispatcher.backoff(1, None) == timedelta(seconds=10)
        assert dispatcher.backoff(20, None) == timedelta(hours=1)


async def test_events_during_a_silence_are_recorded_not_sent_and_leftovers_sent_at_its_end(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        web = await hub.add_machine("web", owner_id=user.id, labels={"role": "web"})
        db = await hub.add_machine("db", owner_id=user.id, labels={"role": "db"})
        state = hub.storage.state
        silence = Silence(
            id=new_id(),
            owner_id=user.id,
            starts_at=T0,
            ends_at=T0 + timedelta(hours=1),
            labels={"role": "web"},
        )
        await hub.run_sync(state.add_silence, silence)
        for machine in (web, db):
            await hub.ingest(machine.id, [Sample(clock(), [Reading("cpu.percent", 1.0)])])
        clock.advance(minutes=5)
        await hub.heartbeat.sweep()  # both go offline inside the window
        await hub.dispatcher.cycle()
        assert [n.title for n in notifier.sent["ops"]] == ["Machine db is offline"]
        events = await hub.run_sync(lambda: state.list_outbox_events(user.id))
        assert {(e.title, e.state) for e in events} == {
            ("Machine web is offline", EventState.SILENCED),
            ("Machine db is offline", EventState.DISPATCHED),
        }
        clock.advance(hours=1)  # the window ends with web still offline
        await hub.dispatcher.cycle()
        await hub.dispatcher.cycle()
        titles = [n.title for n in notifier.sent["ops"]]
        assert titles == ["Machine db is offline", "Machine web is offline"]
        assert "Still the case when the silence ended" in notifier.sent["ops"][1].text
        await hub.dispatcher.cycle()  # a silence is closed once
        assert len(notifier.sent["ops"]) == 2


async def test_what_recovered_within_a_silence_is_not_sent_at_its_end(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        await add_channel(hub, user.id, "ops")
        web = await hub.add_machine("web", owner_id=user.id)
        state = hub.storage.state
        silence = Silence(
            id=new_id(), owner_id=user.id, starts_at=T0, ends_at=T0 + timedelta(hours=1),
            machine_id=web.id,
        )  # fmt: skip
        await hub.run_sync(state.add_silence, silence)
        await hub.ingest(web.id, [Sample(clock(), [Reading("cpu.percent", 1.0)])])
        clock.advance(minutes=5)
        await hub.heartbeat.sweep()
        await hub.ingest(web.id, [Sample(clock(), [Reading("cpu.percent", 1.0)])])
        await hub.heartbeat.sweep()
        clock.advance(hours=1)
        await hub.ingest(web.id, [Sample(clock(), [Reading("cpu.percent", 1.0)])])
        await hub.dispatcher.cycle()
        muted = await hub.run_sync(lambda: state.list_outbox_events(user.id))
        assert sorted(e.kind for e in muted) == ["machine.offline", "machine.online"]
        assert all(e.state is EventState.SILENCED for e in muted)
        closed = await hub.run_sync(state.get_silence, silence.id)
        assert closed.ended_at == clock()
    assert "ops" not in notifier.sent


async def skipped(hub: Sentri) -> list[Delivery]:
    state = hub.storage.state
    return await hub.run_sync(lambda: state.list_deliveries(state=DeliveryState.SKIPPED))


async def test_a_gone_channel_gets_nothing_more_of_a_burst_and_later_events_are_skipped(
    open_hub: OpenHub, clock: Clock, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        channel = await add_channel(hub, user.id, "ops")
        notifier.script = [DeliveryResult(DeliveryStatus.DISABLE_CHANNEL, "410 gone")]
        await put(hub, *(event(user.id, title=f"event {n}") for n in range(3)))
        # All three are taken in one burst: by this round, or by the background round
        # that writing them woke (rounds never overlap, so either has ended here).
        await hub.dispatcher.cycle()
        assert len(await deliveries(hub)) == 3
        assert [n.title for n in notifier.attempts] == ["event 0"], "sent after the 410"
        [gone] = [d for d in await deliveries(hub) if d.state is DeliveryState.DEAD]
        assert gone.last_error == "410 gone"
        held = await skipped(hub)
        assert len(held) == 2
        reason = "channel disabled: the channel refused delivery for good: 410 gone"
        assert {(d.attempts, d.last_error) for d in held} == {(0, reason)}

        await put(hub, event(user.id, title="while disabled"))
        await hub.dispatcher.cycle()
        assert len(await skipped(hub)) == 3, "an event for a disabled channel is recorded"
        assert len(notifier.attempts) == 1

        state = hub.storage.state
        stored = await hub.run_sync(state.get_channel, channel.id)
        await hub.run_sync(state.update_channel, attrs.evolve(stored, enabled=True))
        assert await hub.run_sync(state.resend_skipped, channel.id, clock(), user.id) == 3
        await hub.dispatcher.cycle()
    assert notifier.kinds("ops") == ["machine.offline"] * 3
    assert [n.title for n in notifier.attempts[1:]] == ["event 1", "event 2", "while disabled"]


async def test_a_channel_disabled_elsewhere_mid_burst_is_not_sent_to(
    open_hub: OpenHub, notifier: RecordingNotifier
) -> None:
    async with open_hub() as hub:
        user = await add_user(hub)
        channel = await add_channel(hub, user.id, "ops")
        state = hub.storage.state
        sent = notifier.send

        def send_then_disable(config: Any, notification: Notification) -> DeliveryResult:
            # Another server process learns of a 410 for this channel meanwhile.
            stored = state.get_channel(channel.id)
            state.update_channel(attrs.evolve(stored, enabled=False, disabled_reason="gone"))
            return sent(config, notification)

        notifier.send = send_then_disable  # type: ignore[method-assign]
        await put(hub, event(user.id, title="first"), event(user.id, title="second"))
        await hub.dispatcher.cycle()
        assert [n.title for n in notifier.attempts] == ["first"]
        [held] = await skipped(hub)
        assert held.last_error == "channel disabled: gone"
