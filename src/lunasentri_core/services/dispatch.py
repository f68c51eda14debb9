"""The dispatcher: delivers outbox events to channels through notifier plugins.

Each cycle closes silences that ended (re-notifying what is still wrong; one
process of those sharing the storage does that, see :mod:`.jobs`), hands
new events to channels, then takes the deliveries that are due and sends them,
a bounded number at a time. A delivery's id is the notification's id, so a
receiver can drop the duplicate a crash between sending and recording causes.
Failures are retried with exponential backoff and jitter, honouring a channel's
Retry-After, up to ``max_attempts``; then the delivery is dead, visible through
the API, and can be queued again by hand.

A channel that answers "gone" (HTTP 410) is disabled with that answer. Its
channel is read again before each send, so a delivery already taken, by this
round or by another server process, is not sent once that is known: it is
recorded ``skipped``, as are the events that arrive while the channel is
disabled, and its owner resends them after enabling it again.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from lunasentri_core.components import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    NotificationKind,
    Notifier,
)
from lunasentri_core.config import NotificationSettings
from lunasentri_core.errors import NotFoundError, PluginError
from lunasentri_core.model import (
    Channel,
    Delivery,
    DeliveryState,
    OutboxEvent,
    skipped_because,
)
from lunasentri_core.services import silences
from lunasentri_core.services.jobs import JOB_SILENCES

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

MAX_DETAIL = 500
"""Characters of a channel's error kept with a delivery."""


def notification_of(delivery: Delivery, event: OutboxEvent) -> Notification:
    return Notification(
        id=delivery.id,
        kind=NotificationKind(event.kind),
        title=event.title,
        text=event.text,
        occurred_at=event.occurred_at,
        data=event.data,
    )


async def send(
    hub: Sentri, notifier: Notifier, config: Any, notification: Notification, timeout: float
) -> DeliveryResult:
    """One send through a notifier, bounded by ``timeout``; its errors become results."""
    try:
        with anyio.fail_after(timeout):
            if inspect.iscoroutinefunction(notifier.send):
                result = await notifier.send(config, notification)
            else:
                result = await hub.run_sync(notifier.send, config, notification)
    except TimeoutError:
        return DeliveryResult(DeliveryStatus.RETRY, f"no answer within {timeout:g} s")
    except Exception as error:
        log.exception("notifier %r failed", notifier.name)
        return DeliveryResult(DeliveryStatus.RETRY, f"notifier error: {type(error).__name__}")
    if not isinstance(result, DeliveryResult):
        return DeliveryResult(
            DeliveryStatus.RETRY, f"notifier returned {type(result).__name__}, not a result"
        )
    return result


GATHER = 0.1
"""Seconds a woken dispatcher waits for more events before its round."""


class Dispatcher:
    def __init__(
        self,
        hub: Sentri,
        settings: NotificationSettings,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._hub = hub
        self.settings = settings
        self._jitter = jitter
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._cycling = anyio.Lock()

    def wake(self) -> None:
        """Look at the outbox now (something was just written to it)."""
        self._wake.set()

    async def run(self) -> None:
        poll = self.settings.poll_interval.total_seconds()
        while True:
            try:
                busy = await self.cycle()
            except Exception:
                log.exception("notification dispatch failed")
                busy = 0
            if busy:
                continue  # more may be due right away
            with anyio.move_on_after(poll):
                await self._wake.wait()
            if self._wake.is_set():
                # Every write to the outbox wakes the dispatcher: in an alert storm that
                # is hundreds a second, each round several write transactions that
                # ingest's commits wait for. A short pause lets a burst gather.
                await anyio.sleep(GATHER)
            self._wake = anyio.Event()

    async def cycle(self) -> int:
        """One round: close ended silences, fan out new events, send what is due.

        Returns the number of deliveries attempted. Rounds of one hub never overlap.
        """
        async with self._cycling:
            return await self._cycle()

    async def _cycle(self) -> int:
        state, clock = self._hub.storage.state, self._hub.clock
        if await self._hub.singleton(JOB_SILENCES):  # one process closes them
            await silences.close_due(self._hub)
        # "now" is read in the worker thread, when the transaction runs.
        while await self._hub.run_sync(lambda: state.fan_out(clock())):
            pass
        claimed = await self._hub.run_sync(
            lambda: state.claim_deliveries(
                clock(), self.settings.lease, self.settings.concurrency * 4
            )
        )
        by_channel: dict[str, list[tuple[Delivery, OutboxEvent, Channel]]] = {}
        for item in claimed:
            by_channel.setdefault(item[2].id, []).append(item)
        async with anyio.create_task_group() as group:
            for queue in by_channel.values():
                group.start_soon(self._deliver_in_order, queue)
        return len(claimed)

    async def _deliver_in_order(self, queue: list[tuple[Delivery, OutboxEvent, Channel]]) -> None:
        # One channel's events go out one at a time, oldest first: "resolved"
        # must not overtake its "firing".
        async with self._limiter:
            for delivery, event, channel in queue:
                await self._deliver(delivery, event, channel)

    async def _deliver(self, delivery: Delivery, event: OutboxEvent, channel: Channel) -> None:
        current = await self._current(channel)
        if current is None:
            return  # deleted with its deliveries
        if not current.enabled:
            await self._skip(delivery, current)
            return
        try:
            notifier = self._hub.notifier(channel.type)
        except PluginError as error:
            await self._finish(delivery, DeliveryResult(DeliveryStatus.RETRY, str(error)))
            return
        result = await send(
            self._hub,
            notifier,
            dict(channel.config),
            notification_of(delivery, event),
            self.settings.send_timeout.total_seconds(),
        )
        # A send that happened is recorded even while the hub shuts down.
        with anyio.CancelScope(shield=True):
            await self._finish(delivery, result)

    async def _current(self, channel: Channel) -> Channel | None:
        """The channel as stored now: the one taken with the delivery may be stale, as
        a 410 to an earlier delivery of this round or of another process disables it."""
        state = self._hub.storage.state
        try:
            return await self._hub.run_sync(state.get_channel, channel.id)
        except NotFoundError:
            return None

    async def _skip(self, delivery: Delivery, channel: Channel) -> None:
        held = attrs.evolve(
            delivery,
            state=DeliveryState.SKIPPED,
            last_error=skipped_because(channel.disabled_reason),
        )
        await self._hub.run_sync(self._hub.storage.state.finish_delivery, held)

    async def _finish(self, delivery: Delivery, result: DeliveryResult) -> None:
        now = self._hub.clock()
        outcome, disable = self.outcome(delivery, result, now)
        if outcome.state is not DeliveryState.DELIVERED:
            log.warning(
                "delivery %s of event %s to channel %s: %s (%s)",
                delivery.id,
                delivery.event_id,
                delivery.channel_id,
                result.status.value,
                outcome.last_error,
            )
        await self._hub.run_sync(
            self._hub.storage.state.finish_delivery, outcome, disable_channel=disable
        )

    def outcome(
        self, delivery: Delivery, result: DeliveryResult, now: datetime
    ) -> tuple[Delivery, str | None]:
        """The delivery after ``result``, and the reason to disable its channel (if any)."""
        attempts = delivery.attempts + 1
        detail = result.detail[:MAX_DETAIL] or None
        if result.status is DeliveryStatus.DELIVERED:
            done = attrs.evolve(
                delivery, state=DeliveryState.DELIVERED, attempts=attempts, delivered_at=now
            )
            return done, None
        if result.status is DeliveryStatus.RETRY and attempts < self.settings.max_attempts:
            retry_at = now + self.backoff(attempts, result.retry_after)
            return attrs.evolve(
                delivery, attempts=attempts, next_attempt_at=retry_at, last_error=detail
            ), None
        if result.status is DeliveryStatus.RETRY:
            detail = f"gave up after {attempts} attempts: {detail or 'failed'}"
        dead = attrs.evolve(
            delivery, state=DeliveryState.DEAD, attempts=attempts, last_error=detail
        )
        if result.status is DeliveryStatus.DISABLE_CHANNEL:
            return dead, f"the channel refused delivery for good: {detail or 'gone'}"
        return dead, None

    def backoff(self, attempts: int, retry_after: float | None) -> timedelta:
        """Wait before attempt ``attempts + 1``: the channel's Retry-After when it gave one."""
        limit = self.settings.max_backoff
        if retry_after is not None and retry_after >= 0:
            return min(timedelta(seconds=retry_after), limit * 24)
        base: timedelta = self.settings.backoff * 2 ** (attempts - 1)
        # Full spread between half and all of the step keeps retries from many
        # machines' events from arriving at a recovering receiver in lockstep.
        step: timedelta = min(base, limit)
        return step * (0.5 + self._jitter() / 2)
