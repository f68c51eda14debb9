"""Notification channels, the outbox, deliveries and silences in SQL.

The outbox is written by the state changes themselves (see ``alerting``), in
their transaction. Handing events to channels (``fan_out``) and taking due
deliveries (``claim_deliveries``) are single transactions too; on PostgreSQL
the rows are taken with ``FOR UPDATE SKIP LOCKED`` so several server processes
share the work without doing any twice, and a delivery taken by a process that
died is taken again once its lease runs out (receivers deduplicate by its id).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    Channel,
    Delivery,
    DeliveryState,
    EventState,
    Labels,
    OutboxEvent,
    Role,
    Silence,
    new_id,
    skipped_because,
)
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.schema import (
    channels,
    deliveries,
    labels_from_json,
    labels_to_json,
    machines,
    outbox_events,
    silences,
    users,
)

# --------------------------------------------------------------------------- rows


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _event_values(event: OutboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "owner_id": event.owner_id,
        "machine_id": event.machine_id,
        "rule_id": event.rule_id,
        "title": event.title,
        "text": event.text,
        "data": _json(dict(event.data)),
        "occurred_at": event.occurred_at,
        "state": event.state.value,
        "silence_id": event.silence_id,
    }


def _event(row: Row[Any]) -> OutboxEvent:
    return OutboxEvent(
        id=row.id,
        kind=row.kind,
        owner_id=row.owner_id,
        title=row.title,
        text=row.text,
        occurred_at=row.occurred_at,
        data=json.loads(row.data),
        machine_id=row.machine_id,
        rule_id=row.rule_id,
        state=EventState(row.state),
        silence_id=row.silence_id,
    )


def _channel_values(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "owner_id": channel.owner_id,
        "name": channel.name,
        "type": channel.type,
        "config": _json(dict(channel.config)),
        "enabled": channel.enabled,
        "disabled_reason": channel.disabled_reason,
        "created_at": channel.created_at,
    }


def _channel(row: Row[Any]) -> Channel:
    return Channel(
        id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        type=row.type,
        config=json.loads(row.config),
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
    )


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        channel_id=row.channel_id,
        owner_id=row.owner_id,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )


def _silence_values(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "owner_id": silence.owner_id,
        "starts_at": silence.starts_at,
        "ends_at": silence.ends_at,
        "machine_id": silence.machine_id,
        "labels": labels_to_json(silence.labels),
        "rule_id": silence.rule_id,
        "comment": silence.comment,
        "created_by": silence.created_by,
        "created_at": silence.created_at,
        "ended_at": silence.ended_at,
    }


def _silence(row: Row[Any]) -> Silence:
    return Silence(
        id=row.id,
        owner_id=row.owner_id,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        machine_id=row.machine_id,
        labels=labels_from_json(row.labels),
        rule_id=row.rule_id,
        comment=row.comment,
        created_by=row.created_by,
        created_at=row.created_at,
        ended_at=row.ended_at,
    )


def insert_outbox_events(conn: Connection, events: Iterable[OutboxEvent]) -> None:
    """Write events into the outbox inside the caller's transaction."""
    rows = [_event_values(event) for event in events]
    if rows:
        conn.execute(sa.insert(outbox_events), rows)


def _owned(table: sa.Table, owner_id: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner_id is None else table.c.owner_id == owner_id


# --------------------------------------------------------------------------- store


class SqlOutboxStore:
    """The notification part of :class:`SqlStateStore` (a mixin sharing ``_db``)."""

    _db: Database

    # ------------------------------------------------------------------ channels

    def add_channel(self, channel: Channel) -> Channel:
        message = f"a channel named {channel.name!r} already exists"
        try:
            with self._db.write() as conn:
                if (
                    conn.execute(
                        sa.select(users.c.id).where(users.c.id == channel.owner_id)
                    ).first()
                    is None
                ):
                    raise NotFoundError(f"owner {channel.owner_id!r} of channel not found")
                if self._channel_named(conn, channel):
                    raise ConflictError(message)
                conn.execute(sa.insert(channels).values(_channel_values(channel)))
        except exc.IntegrityError as error:
            raise ConflictError(message) from error
        return channel

    @staticmethod
    def _channel_named(conn: Connection, channel: Channel) -> bool:
        query = sa.select(channels.c.id).where(
            channels.c.owner_id == channel.owner_id,
            channels.c.name == channel.name,
            channels.c.id != channel.id,
        )
        return conn.execute(query).first() is not None

    def get_channel(self, channel_id: str, owner_id: str | None = None) -> Channel:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(channels).where(channels.c.id == channel_id, _owned(channels, owner_id))
            ).first()
        if row is None:
            raise NotFoundError(f"channel {channel_id!r} not found")
        return _channel(row)

    def list_channels(self, owner_id: str | None = None) -> list[Channel]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(channels)
                .where(_owned(channels, owner_id))
                .order_by(channels.c.name, channels.c.id)
            ).all()
        return [_channel(row) for row in rows]

    def update_channel(self, channel: Channel) -> Channel:
        message = f"a channel named {channel.name!r} already exists"
        try:
            with self._db.write() as conn:
                row = conn.execute(sa.select(channels).where(channels.c.id == channel.id)).first()
                if row is None:
                    raise NotFoundError(f"channel {channel.id!r} not found")
                if self._channel_named(conn, channel):
                    raise ConflictError(message)
                values = _channel_values(channel)
                for kept in ("id", "owner_id", "created_at"):
                    del values[kept]
                conn.execute(sa.update(channels).where(channels.c.id == channel.id).values(values))
                row = conn.execute(sa.select(channels).where(channels.c.id == channel.id)).one()
        except exc.IntegrityError as error:
            raise ConflictError(message) from error
        return _channel(row)

    def delete_channel(self, channel_id: str, owner_id: str | None = None) -> None:
        with self._db.write() as conn:
            condition = sa.and_(channels.c.id == channel_id, _owned(channels, owner_id))
            if conn.execute(sa.select(channels.c.id).where(condition)).first() is None:
                raise NotFoundError(f"channel {channel_id!r} not found")
            conn.execute(sa.delete(deliveries).where(deliveries.c.channel_id == channel_id))
            conn.execute(sa.delete(channels).where(condition))

    # ------------------------------------------------------------------ outbox

    def add_outbox_events(self, events: Sequence[OutboxEvent]) -> None:
        with self._db.write() as conn:
            insert_outbox_events(conn, events)

    def list_outbox_events(
        self,
        owner_id: str | None = None,
        *,
        state: EventState | None = None,
        silence_id: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[OutboxEvent]:
        query = sa.select(outbox_events).where(_owned(outbox_events, owner_id))
        if state is not None:
            query = query.where(outbox_events.c.state == state.value)
        if silence_id is not None:
            query = query.where(outbox_events.c.silence_id == silence_id)
        if ids is not None:
            query = query.where(outbox_events.c.id.in_(list(ids)))
        query = query.order_by(outbox_events.c.seq.desc()).limit(max(0, limit))
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_event(row) for row in rows]

    def _any(self, query: sa.Select[Any]) -> bool:
        """Whether ``query`` finds a row, looked up in a read transaction.

        The dispatcher asks every ``poll_interval`` whether there is work; most
        of the time there is none, and a write transaction to find that out
        would take SQLite's write lock (ingest's) each time.
        """
        with self._db.read() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def fan_out(self, now: datetime, limit: int = 500) -> int:
        new = outbox_events.c.state == EventState.NEW.value
        if not self._any(sa.select(outbox_events.c.seq).where(new)):
            return 0
        with self._db.write() as conn:
            query = sa.select(outbox_events).where(new).order_by(outbox_events.c.seq).limit(limit)
            if self._db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            events = [_event(row) for row in conn.execute(query).all()]
            if not events:
                return 0
            _Fanout(conn, events, now).run()
        return len(events)

    def claim_deliveries(
        self, now: datetime, lease: timedelta, limit: int = 50
    ) -> list[tuple[Delivery, OutboxEvent, Channel]]:
        due = sa.select(deliveries.c.id).where(
            deliveries.c.state == DeliveryState.PENDING.value,
            deliveries.c.next_attempt_at <= now,
            sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until <= now),
        )
        if not self._any(due):
            return []
        with self._db.write() as conn:
            query = due.order_by(
                deliveries.c.next_attempt_at, deliveries.c.created_at, deliveries.c.id
            ).limit(limit)
            if self._db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            ids = list(conn.execute(query).scalars())
            if not ids:
                return []
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id.in_(ids))
                .values(lease_until=now + lease)
            )
            rows = conn.execute(
                sa.select(deliveries, outbox_events, channels)
                .join(outbox_events, outbox_events.c.id == deliveries.c.event_id)
                .join(channels, channels.c.id == deliveries.c.channel_id)
                .where(deliveries.c.id.in_(ids))
                .order_by(outbox_events.c.seq, deliveries.c.id)
            ).all()
        return [_claimed(row) for row in rows]

    def finish_delivery(self, delivery: Delivery, *, disable_channel: str | None = None) -> None:
        with self._db.write() as conn:
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == delivery.id)
                .values(
                    state=delivery.state.value,
                    attempts=delivery.attempts,
                    next_attempt_at=delivery.next_attempt_at,
                    last_error=delivery.last_error,
                    delivered_at=delivery.delivered_at,
                    lease_until=None,
                )
            )
            if disable_channel is not None:
                conn.execute(
                    sa.update(channels)
                    .where(channels.c.id == delivery.channel_id)
                    .values(enabled=False, disabled_reason=disable_channel)
                )
                # The channel's other queued deliveries show at once that they wait for
                # it; one another process holds is re-checked by it before sending.
                conn.execute(
                    sa.update(deliveries)
                    .where(
                        deliveries.c.channel_id == delivery.channel_id,
                        deliveries.c.state == DeliveryState.PENDING.value,
                        deliveries.c.id != delivery.id,
                    )
                    .values(
                        state=DeliveryState.SKIPPED.value,
                        last_error=skipped_because(disable_channel),
                        lease_until=None,
                    )
                )

    def list_deliveries(
        self,
        owner_id: str | None = None,
        *,
        state: DeliveryState | None = None,
        event_id: str | None = None,
        channel_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        query = sa.select(deliveries).where(_owned(deliveries, owner_id))
        if state is not None:
            query = query.where(deliveries.c.state == state.value)
        if event_id is not None:
            query = query.where(deliveries.c.event_id == event_id)
        if channel_id is not None:
            query = query.where(deliveries.c.channel_id == channel_id)
        query = query.order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc())
        with self._db.read() as conn:
            rows = conn.execute(query.limit(max(0, limit))).all()
        return [_delivery(row) for row in rows]

    def retry_delivery(
        self, delivery_id: str, now: datetime, owner_id: str | None = None
    ) -> Delivery:
        with self._db.write() as conn:
            condition = sa.and_(deliveries.c.id == delivery_id, _owned(deliveries, owner_id))
            row = conn.execute(sa.select(deliveries).where(condition)).first()
            if row is None:
                raise NotFoundError(f"delivery {delivery_id!r} not found")
            if row.state not in _RETRIABLE:
                raise ConflictError(
                    f"delivery {delivery_id!r} is {row.state}; "
                    "only a dead or skipped one can be retried"
                )
            conn.execute(
                sa.update(deliveries)
                .where(condition)
                .values(
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    lease_until=None,
                )
            )
            row = conn.execute(sa.select(deliveries).where(condition)).one()
        return _delivery(row)

    def resend_skipped(self, channel_id: str, now: datetime, owner_id: str | None = None) -> int:
        with self._db.write() as conn:
            query = sa.select(channels.c.enabled).where(
                channels.c.id == channel_id, _owned(channels, owner_id)
            )
            if self._db.is_postgres:
                # Waits for a disabling 410 being recorded, rather than resending into it.
                query = query.with_for_update()
            enabled = conn.execute(query).scalar()
            if enabled is None:
                raise NotFoundError(f"channel {channel_id!r} not found")
            if not enabled:
                raise ConflictError(
                    f"channel {channel_id!r} is disabled; enable it before resending"
                )
            return conn.execute(
                sa.update(deliveries)
                .where(
                    deliveries.c.channel_id == channel_id,
                    deliveries.c.state == DeliveryState.SKIPPED.value,
                )
                .values(
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    lease_until=None,
                )
            ).rowcount

    # ------------------------------------------------------------------ silences

    def add_silence(self, silence: Silence) -> Silence:
        message = f"a silence with id {silence.id!r} already exists"
        try:
            with self._db.write() as conn:
                # Checked first: the foreign key would fail as an integrity error too,
                # which reads as a taken id.
                if (
                    conn.execute(
                        sa.select(users.c.id).where(users.c.id == silence.owner_id)
                    ).first()
                    is None
                ):
                    raise NotFoundError(f"owner {silence.owner_id!r} of silence not found")
                conn.execute(sa.insert(silences).values(_silence_values(silence)))
        except exc.IntegrityError as error:
            raise ConflictError(message) from error
        return silence

    def get_silence(self, silence_id: str, owner_id: str | None = None) -> Silence:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(silences).where(silences.c.id == silence_id, _owned(silences, owner_id))
            ).first()
        if row is None:
            raise NotFoundError(f"silence {silence_id!r} not found")
        return _silence(row)

    def list_silences(
        self, owner_id: str | None = None, *, active_at: datetime | None = None
    ) -> list[Silence]:
        query = sa.select(silences).where(_owned(silences, owner_id))
        if active_at is not None:
            query = query.where(silences.c.starts_at <= active_at, silences.c.ends_at > active_at)
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(silences.c.starts_at, silences.c.id)).all()
        return [_silence(row) for row in rows]

    def end_silence(self, silence_id: str, at: datetime, owner_id: str | None = None) -> Silence:
        with self._db.write() as conn:
            condition = sa.and_(silences.c.id == silence_id, _owned(silences, owner_id))
            row = conn.execute(sa.select(silences).where(condition)).first()
            if row is None:
                raise NotFoundError(f"silence {silence_id!r} not found")
            if row.ends_at > at:
                conn.execute(
                    sa.update(silences)
                    .where(condition)
                    .values(ends_at=at, starts_at=min(row.starts_at, at))
                )
            row = conn.execute(sa.select(silences).where(condition)).one()
        return _silence(row)

    def due_silences(self, now: datetime) -> list[Silence]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(silences)
                .where(silences.c.ended_at.is_(None), silences.c.ends_at <= now)
                .order_by(silences.c.ends_at, silences.c.id)
            ).all()
        return [_silence(row) for row in rows]

    def close_silence(self, silence_id: str, at: datetime, events: Sequence[OutboxEvent]) -> bool:
        with self._db.write() as conn:
            closed = conn.execute(
                sa.update(silences)
                .where(silences.c.id == silence_id, silences.c.ended_at.is_(None))
                .values(ended_at=at)
            ).rowcount
            if closed:
                insert_outbox_events(conn, events)
        return bool(closed)


_RETRIABLE = (DeliveryState.DEAD.value, DeliveryState.SKIPPED.value)


def _claimed(row: Row[Any]) -> tuple[Delivery, OutboxEvent, Channel]:
    mapping = row._mapping
    delivery = Delivery(
        id=mapping[deliveries.c.id],
        event_id=mapping[deliveries.c.event_id],
        channel_id=mapping[deliveries.c.channel_id],
        owner_id=mapping[deliveries.c.owner_id],
        state=DeliveryState(mapping[deliveries.c.state]),
        attempts=mapping[deliveries.c.attempts],
        next_attempt_at=mapping[deliveries.c.next_attempt_at],
        last_error=mapping[deliveries.c.last_error],
        delivered_at=mapping[deliveries.c.delivered_at],
        created_at=mapping[deliveries.c.created_at],
    )
    event = OutboxEvent(
        id=mapping[outbox_events.c.id],
        kind=mapping[outbox_events.c.kind],
        owner_id=mapping[outbox_events.c.owner_id],
        title=mapping[outbox_events.c.title],
        text=mapping[outbox_events.c.text],
        occurred_at=mapping[outbox_events.c.occurred_at],
        data=json.loads(mapping[outbox_events.c.data]),
        machine_id=mapping[outbox_events.c.machine_id],
        rule_id=mapping[outbox_events.c.rule_id],
        state=EventState(mapping[outbox_events.c.state]),
        silence_id=mapping[outbox_events.c.silence_id],
    )
    channel = Channel(
        id=mapping[channels.c.id],
        owner_id=mapping[channels.c.owner_id],
        name=mapping[channels.c.name],
        type=mapping[channels.c.type],
        config=json.loads(mapping[channels.c.config]),
        enabled=bool(mapping[channels.c.enabled]),
        disabled_reason=mapping[channels.c.disabled_reason],
        created_at=mapping[channels.c.created_at],
    )
    return delivery, event, channel


_MARK_EVENT = (
    sa.update(outbox_events)
    .where(outbox_events.c.id == sa.bindparam("event_id"))
    .values(state=sa.bindparam("new_state"), silence_id=sa.bindparam("new_silence_id"))
)
"""An event handed on (or muted): one statement, built once, for a whole batch."""


def _mark(event: OutboxEvent, state: EventState, silence_id: str | None) -> dict[str, Any]:
    return {"event_id": event.id, "new_state": state.value, "new_silence_id": silence_id}


class _Target(NamedTuple):
    """A channel an event goes to."""

    id: str
    owner_id: str
    enabled: bool
    disabled_reason: str | None


class _Fanout:
    """Hands one batch of new events to channels inside the caller's transaction."""

    def __init__(self, conn: Connection, events: list[OutboxEvent], now: datetime) -> None:
        self.conn = conn
        self.events = events
        self.now = now

    def run(self) -> None:
        labels = self._machine_labels()
        active = self._silences()
        targets = self._channels()
        queued: list[dict[str, Any]] = []
        marks: list[dict[str, Any]] = []
        for event in self.events:
            machine_labels = labels.get(event.machine_id or "", ())
            silence = next(
                (
                    s
                    for s in active.get(event.owner_id, ())
                    if self._mutes(s, event, machine_labels)
                ),
                None,
            )
            if silence is not None:
                marks.append(_mark(event, EventState.SILENCED, silence.id))
                continue
            for target in targets.get(event.owner_id, ()):
                queued.append(self._delivery(event, target))
            marks.append(_mark(event, EventState.DISPATCHED, None))
        self.conn.execute(_MARK_EVENT, marks)
        if queued:
            self.conn.execute(sa.insert(deliveries), queued)

    @staticmethod
    def _mutes(silence: Silence, event: OutboxEvent, machine_labels: Labels) -> bool:
        return silence.active(event.occurred_at) and silence.matches(
            event.machine_id, machine_labels, event.rule_id
        )

    def _delivery(self, event: OutboxEvent, target: _Target) -> dict[str, Any]:
        # A disabled channel's delivery is recorded too, skipped: the owner sees what it
        # missed and can resend it once the channel is back.
        skipped = not target.enabled
        return {
            "id": new_id(),
            "event_id": event.id,
            "channel_id": target.id,
            "owner_id": target.owner_id,
            "state": (DeliveryState.SKIPPED if skipped else DeliveryState.PENDING).value,
            "attempts": 0,
            "next_attempt_at": self.now,
            "lease_until": None,
            "last_error": skipped_because(target.disabled_reason) if skipped else None,
            "delivered_at": None,
            "created_at": self.now,
        }

    def _machine_labels(self) -> dict[str, Labels]:
        ids = {e.machine_id for e in self.events if e.machine_id is not None}
        if not ids:
            return {}
        rows = self.conn.execute(
            sa.select(machines.c.id, machines.c.labels).where(machines.c.id.in_(ids))
        ).all()
        return {row.id: labels_from_json(row.labels) for row in rows}

    def _silences(self) -> dict[str | None, list[Silence]]:
        """Silences that may mute an event of this batch, by the owner they apply to."""
        owners = {e.owner_id for e in self.events if e.owner_id is not None}
        earliest = min(e.occurred_at for e in self.events)
        latest = max(e.occurred_at for e in self.events)
        found: dict[str | None, list[Silence]] = {}
        if owners:
            rows = self.conn.execute(
                sa.select(silences).where(
                    silences.c.owner_id.in_(owners),
                    silences.c.starts_at <= latest,
                    silences.c.ends_at > earliest,
                )
            ).all()
            for row in rows:
                found.setdefault(row.owner_id, []).append(_silence(row))
        return found

    def _channels(self) -> dict[str | None, list[_Target]]:
        """Channels, enabled or not, by the owner whose events they receive."""
        owners = {e.owner_id for e in self.events}
        found: dict[str | None, list[_Target]] = {}
        columns = (
            channels.c.id,
            channels.c.owner_id,
            channels.c.enabled,
            channels.c.disabled_reason,
        )
        named = [o for o in owners if o is not None]
        if named:
            rows = self.conn.execute(
                sa.select(*columns).where(channels.c.owner_id.in_(named)).order_by(channels.c.id)
            ).all()
            for row in rows:
                found.setdefault(row.owner_id, []).append(_Target(*row))
        if None in owners:
            # An unowned machine's events go to every administrator's channels.
            rows = self.conn.execute(
                sa.select(*columns)
                .join(users, users.c.id == channels.c.owner_id)
                .where(users.c.role == Role.ADMIN.value)
                .order_by(channels.c.id)
            ).all()
            found[None] = [_Target(*row) for row in rows]
        return found
