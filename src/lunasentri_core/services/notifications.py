"""The notification flow as one principal sees it: outbox events, deliveries, silences.

A user sees the events addressed to them, the deliveries to their own channels
and their own silences; an administrator sees all. A dead delivery can be
queued again by hand; a silence can be ended early, after which what it muted
and is still wrong is notified.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, NotFoundError, ValidationError
from lunasentri_core.model import (
    Delivery,
    DeliveryState,
    EventState,
    Labels,
    OutboxEvent,
    Silence,
    new_id,
)
from lunasentri_core.services import audit
from lunasentri_core.services.machines import check_labels, owner_scope
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

MAX_LIMIT = 1000
MAX_SILENCE = timedelta(days=90)
"""The longest maintenance window; a longer mute is a disabled channel or rule."""
MAX_LEAD = timedelta(days=365)
"""How far ahead a silence may be planned."""
MAX_COMMENT = 1000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


@attrs.frozen
class DeliveryView:
    """A delivery and the event it carries (``None`` if that event is gone)."""

    delivery: Delivery
    event: OutboxEvent | None


def _bounded(limit: int) -> int:
    return max(0, min(limit, MAX_LIMIT))


class Notifications:
    """Outbox events and deliveries, scoped by the acting principal."""

    def __init__(self, hub: Sentri) -> None:
        self.hub = hub

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    async def events(
        self,
        actor: Principal,
        *,
        state: EventState | None = None,
        limit: int = 100,
    ) -> list[OutboxEvent]:
        """Events addressed to the actor (an admin: all), newest first."""
        return await self.hub.run_sync(
            lambda: self._state.list_outbox_events(
                owner_scope(actor), state=state, limit=_bounded(limit)
            )
        )

    async def deliveries(
        self,
        actor: Principal,
        *,
        state: DeliveryState | None = None,
        channel_id: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryView]:
        """Deliveries to the actor's channels, newest first, each with its event."""

        def read() -> list[DeliveryView]:
            found = self._state.list_deliveries(
                owner_scope(actor),
                state=state,
                channel_id=channel_id,
                event_id=event_id,
                limit=_bounded(limit),
            )
            ids = sorted({d.event_id for d in found})
            # The deliveries are already the actor's, so their events are too.
            events = self._state.list_outbox_events(None, ids=ids, limit=len(ids)) if ids else []
            by_id = {event.id: event for event in events}
            return [DeliveryView(d, by_id.get(d.event_id)) for d in found]

        return await self.hub.run_sync(read)

    async def retry(
        self, actor: Principal, delivery_id: str, *, client: str | None = None
    ) -> DeliveryView:
        """Queue a dead delivery again with its attempts reset (409 unless it is dead)."""
        now = self.hub.clock()

        def retry() -> DeliveryView:
            delivery = self._state.retry_delivery(delivery_id, now, owner_scope(actor))
            events = self._state.list_outbox_events(None, ids=[delivery.event_id], limit=1)
            return DeliveryView(delivery, events[0] if events else None)

        view = await self.hub.run_sync(retry)
        delivery = view.delivery
        self.hub.dispatcher.wake()
        await audit.record(
            self.hub,
            action="delivery.retry",
            actor=actor,
            target_type="delivery",
            target_id=delivery.id,
            client=client,
            detail={"event_id": delivery.event_id, "channel_id": delivery.channel_id},
        )
        return view


class Silences:
    """Maintenance windows, scoped by the acting principal."""

    def __init__(self, hub: Sentri) -> None:
        self.hub = hub

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    async def create(
        self,
        actor: Principal,
        *,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
        duration: timedelta | None = None,
        machine_id: str | None = None,
        labels: Labels = (),
        rule_id: str | None = None,
        comment: str = "",
        client: str | None = None,
    ) -> Silence:
        """Mute the actor's events that match every given condition, from ``starts_at``
        (default: now) until ``ends_at`` or for ``duration``."""
        now = self.hub.clock()
        start, end = _window(now, starts_at, ends_at, duration)
        if machine_id is None and not labels and rule_id is None:
            raise _invalid("machine_id", "a silence needs a machine_id, labels or a rule_id")
        silence = Silence(
            id=new_id(),
            owner_id=actor.id,
            starts_at=start,
            ends_at=end,
            machine_id=machine_id,
            labels=check_labels(labels),
            rule_id=rule_id,
            comment=_check_comment(comment),
            created_by=actor.id,
            created_at=now,
        )
        scope = owner_scope(actor)

        def store() -> Silence:
            _check_visible(self._state, silence, scope)
            return self._state.add_silence(silence)

        stored = await self.hub.run_sync(store)
        await self._audit("silence.create", actor, stored, client)
        return stored

    async def all(self, actor: Principal, *, active: bool | None = None) -> list[Silence]:
        """The actor's silences (an admin: all), by start; ``active`` filters by now."""
        now = self.hub.clock()
        found = await self.hub.run_sync(self._state.list_silences, owner_scope(actor))
        if active is None:
            return found
        return [s for s in found if s.active(now) == active]

    async def get(self, actor: Principal, silence_id: str) -> Silence:
        return await self.hub.run_sync(self._state.get_silence, silence_id, owner_scope(actor))

    async def end(self, actor: Principal, silence_id: str, *, client: str | None = None) -> Silence:
        """End a silence now; what it muted and is still wrong is notified next."""
        now = self.hub.clock()
        silence = await self.hub.run_sync(
            self._state.end_silence, silence_id, now, owner_scope(actor)
        )
        self.hub.dispatcher.wake()
        await self._audit("silence.end", actor, silence, client)
        return silence

    async def _audit(
        self, action: str, actor: Principal, silence: Silence, client: str | None
    ) -> None:
        await audit.record(
            self.hub,
            action=action,
            actor=actor,
            target_type="silence",
            target_id=silence.id,
            client=client,
            detail={
                "owner_id": silence.owner_id,
                "starts_at": silence.starts_at.isoformat(),
                "ends_at": silence.ends_at.isoformat(),
                "machine_id": silence.machine_id,
                "labels": dict(silence.labels),
                "rule_id": silence.rule_id,
            },
        )


def _window(
    now: datetime,
    starts_at: datetime | None,
    ends_at: datetime | None,
    duration: timedelta | None,
) -> tuple[datetime, datetime]:
    start = now if starts_at is None else starts_at
    if start > now + MAX_LEAD:
        raise _invalid("starts_at", f"must be within {MAX_LEAD.days} days from now")
    if ends_at is not None and duration is not None:
        raise _invalid("duration", "give ends_at or duration, not both")
    if duration is not None:
        if not timedelta(0) < duration <= MAX_SILENCE:
            raise _invalid("duration", f"must be above 0 and at most {_seconds(MAX_SILENCE)} s")
        end, field = start + duration, "duration"
    elif ends_at is None:
        raise _invalid("ends_at", "give ends_at or duration")
    else:
        end, field = ends_at, "ends_at"
        if end <= start:
            raise _invalid(field, "must be after starts_at")
        if end - start > MAX_SILENCE:
            raise _invalid(field, f"a silence lasts at most {MAX_SILENCE.days} days")
    if end <= now:
        raise _invalid(field, "the silence would be over already: it must end in the future")
    return start, end


def _seconds(value: timedelta) -> int:
    return int(value.total_seconds())


def _check_comment(comment: str) -> str:
    if len(comment) > MAX_COMMENT or _CONTROL.search(comment):
        raise _invalid(
            "comment", f"must be at most {MAX_COMMENT} characters, without control characters"
        )
    return comment


def _check_visible(state: StateStore, silence: Silence, scope: str | None) -> None:
    """A silence names only machines and rules its owner can see."""
    if silence.machine_id is not None:
        try:
            state.get_machine(silence.machine_id, scope)
        except NotFoundError:
            raise _invalid("machine_id", f"no machine with id {silence.machine_id!r}") from None
    if silence.rule_id is not None:
        try:
            state.get_alert_rule(silence.rule_id, scope)
        except NotFoundError:
            raise _invalid("rule_id", f"no alert rule with id {silence.rule_id!r}") from None
