"""Alert rules, their series states and events, and machines' status changes in SQL.

State changes are conditional updates: a transition applies only while its row
still holds what the caller saw, so two processes evaluating the same series or
sweeping the same machines record each change once. The change's event and its
outbox entry are written in the same transaction, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    Comparison,
    Machine,
    MachineStatus,
    RuleScope,
    SeriesKey,
    Severity,
    StatusChange,
)
from lunasentri_core.storage.protocols import AlertTransition, StatusTransition
from lunasentri_core.storage.sql.changes import bump_config_epoch
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.outbox import insert_outbox_events
from lunasentri_core.storage.sql.rows import machine_from_row
from lunasentri_core.storage.sql.schema import (
    alert_events,
    alert_rules,
    alert_states,
    labels_from_json,
    labels_to_json,
    machines,
    status_changes,
    users,
)

_MICROSECOND = timedelta(microseconds=1)
_CHUNK = 500
"""Ids per ``IN (...)`` list (SQLite allows 32,766 parameters, older builds 999)."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _scope_json(scope: RuleScope) -> str:
    return json.dumps(
        {"machine_id": scope.machine_id, "labels": [list(p) for p in scope.labels]},
        separators=(",", ":"),
    )


def _scope(text: str) -> RuleScope:
    data = json.loads(text)
    return RuleScope(machine_id=data.get("machine_id"), labels=[tuple(p) for p in data["labels"]])


def _rule_values(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "owner_id": rule.owner_id,
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": rule.threshold,
        "for_duration_us": rule.for_duration // _MICROSECOND,
        "scope": _scope_json(rule.scope),
        "severity": rule.severity.value,
        "enabled": rule.enabled,
        "created_at": rule.created_at,
    }


def _rule(row: Row[Any]) -> AlertRule:
    return AlertRule(
        id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        metric=row.metric,
        comparison=Comparison(row.comparison),
        threshold=row.threshold,
        for_duration=timedelta(microseconds=row.for_duration_us),
        scope=_scope(row.scope),
        severity=Severity(row.severity),
        enabled=bool(row.enabled),
        created_at=row.created_at,
    )


def _event_values(event: AlertEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "rule_id": event.rule_id,
        "machine_id": event.machine_id,
        "series_machine_id": event.series.machine_id,
        "metric": event.series.metric,
        "labels": labels_to_json(event.series.labels),
        "state": event.state.value,
        "value": event.value,
        "at": event.at,
        "acknowledged_at": event.acknowledged_at,
        "acknowledged_by": event.acknowledged_by,
    }


def _event(row: Row[Any]) -> AlertEvent:
    return AlertEvent(
        id=row.id,
        rule_id=row.rule_id,
        machine_id=row.machine_id,
        series=SeriesKey(row.series_machine_id, row.metric, labels_from_json(row.labels)),
        state=AlertState(row.state),
        value=row.value,
        at=row.at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
    )


def _status(row: Row[Any]) -> AlertStatus:
    return AlertStatus(
        rule_id=row.rule_id,
        series=SeriesKey(row.machine_id, row.metric, labels_from_json(row.labels)),
        state=AlertState(row.state),
        since=row.since,
        value=row.value,
        updated_at=row.updated_at,
    )


_SERIES_KEY = sa.and_(
    alert_states.c.rule_id == sa.bindparam("k_rule"),
    alert_states.c.machine_id == sa.bindparam("k_machine"),
    alert_states.c.metric == sa.bindparam("k_metric"),
    alert_states.c.labels == sa.bindparam("k_labels"),
)
_SERIES_VALUES: dict[str, sa.BindParameter[Any]] = {
    "state": sa.bindparam("new_state"),
    "since": sa.bindparam("new_since"),
    "value": sa.bindparam("new_value"),
    "updated_at": sa.bindparam("new_updated_at"),
}
_MOVE_SERIES = (
    sa.update(alert_states)
    .where(
        _SERIES_KEY,
        alert_states.c.state == sa.bindparam("was_state"),
        alert_states.c.since == sa.bindparam("was_since"),
    )
    .values(_SERIES_VALUES)
)
"""A series' transition, applied only while its row holds the state the caller saw."""
_SERIES_LIVE = sa.select(
    sa.and_(
        sa.exists().where(alert_rules.c.id == sa.bindparam("k_rule")),
        sa.exists().where(machines.c.id == sa.bindparam("k_machine")),
    )
)
_NEW_SERIES: dict[str, sa.BindParameter[Any]] = {
    "rule_id": sa.bindparam("k_rule"),
    "machine_id": sa.bindparam("k_machine"),
    "metric": sa.bindparam("k_metric"),
    "labels": sa.bindparam("k_labels"),
    **_SERIES_VALUES,
}
# Drivers report an INSERT's row count only when asked (psycopg: -1).
_CREATE_SERIES_SQLITE = (
    sqlite.insert(alert_states)
    .values(_NEW_SERIES)
    .on_conflict_do_nothing()
    .execution_options(preserve_rowcount=True)
)
_CREATE_SERIES_POSTGRES = (
    postgresql.insert(alert_states)
    .values(_NEW_SERIES)
    .on_conflict_do_nothing()
    .execution_options(preserve_rowcount=True)
)


def _status_change(row: Row[Any]) -> StatusChange:
    return StatusChange(
        id=row.id,
        machine_id=row.machine_id,
        previous=MachineStatus(row.previous),
        status=MachineStatus(row.status),
        at=row.at,
        last_seen=row.last_seen,
    )


def _status_change_values(change: StatusChange) -> dict[str, Any]:
    return {
        "id": change.id,
        "machine_id": change.machine_id,
        "previous": change.previous.value,
        "status": change.status.value,
        "at": change.at,
        "last_seen": change.last_seen,
    }


def _exists(conn: Connection, table: sa.Table, condition: sa.ColumnElement[bool]) -> bool:
    query = sa.select(sa.literal(1)).select_from(table).where(condition).limit(1)
    return conn.execute(query).first() is not None


def _rule_owned(owner_id: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner_id is None else alert_rules.c.owner_id == owner_id


class SqlAlertStore:
    """The alerting and heartbeat part of :class:`SqlStateStore` (a mixin sharing ``_db``)."""

    _db: Database

    # ------------------------------------------------------------------ rules

    def add_alert_rule(self, rule: AlertRule) -> AlertRule:
        message = f"an alert rule with id {rule.id!r} already exists"
        try:
            with self._db.write() as conn:
                if not _exists(conn, users, users.c.id == rule.owner_id):
                    raise NotFoundError(
                        f"owner {rule.owner_id!r} of alert rule {rule.name!r} not found"
                    )
                if _exists(conn, alert_rules, alert_rules.c.id == rule.id):
                    raise ConflictError(message)
                conn.execute(sa.insert(alert_rules).values(_rule_values(rule)))
                bump_config_epoch(self._db, conn)
        except exc.IntegrityError as error:
            raise ConflictError(message) from error
        return rule

    def get_alert_rule(self, rule_id: str, owner_id: str | None = None) -> AlertRule:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(alert_rules).where(alert_rules.c.id == rule_id, _rule_owned(owner_id))
            ).first()
        if row is None:
            raise NotFoundError(f"alert rule {rule_id!r} not found")
        return _rule(row)

    def list_alert_rules(self, owner_id: str | None = None) -> list[AlertRule]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(alert_rules)
                .where(_rule_owned(owner_id))
                .order_by(alert_rules.c.name, alert_rules.c.id)
            ).all()
        return [_rule(row) for row in rows]

    def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        with self._db.write() as conn:
            row = conn.execute(sa.select(alert_rules).where(alert_rules.c.id == rule.id)).first()
            if row is None:
                raise NotFoundError(f"alert rule {rule.id!r} not found")
            current = _rule(row)
            stored = attrs.evolve(rule, owner_id=current.owner_id, created_at=current.created_at)
            values = _rule_values(stored)
            del values["id"]
            conn.execute(sa.update(alert_rules).where(alert_rules.c.id == rule.id).values(values))
            bump_config_epoch(self._db, conn)
            if _evaluation_changed(current, stored):
                # What was pending or firing under the old condition says nothing now.
                conn.execute(sa.delete(alert_states).where(alert_states.c.rule_id == rule.id))
        return stored

    def delete_alert_rule(self, rule_id: str) -> None:
        with self._db.write() as conn:
            conn.execute(sa.delete(alert_states).where(alert_states.c.rule_id == rule_id))
            conn.execute(sa.delete(alert_events).where(alert_events.c.rule_id == rule_id))
            deleted = conn.execute(
                sa.delete(alert_rules).where(alert_rules.c.id == rule_id)
            ).rowcount
            if not deleted:
                raise NotFoundError(f"alert rule {rule_id!r} not found")
            bump_config_epoch(self._db, conn)

    # ------------------------------------------------------------------ events

    def add_alert_event(self, event: AlertEvent) -> AlertEvent:
        message = f"an alert event with id {event.id!r} already exists"
        try:
            with self._db.write() as conn:
                if not _exists(conn, alert_rules, alert_rules.c.id == event.rule_id):
                    raise NotFoundError(f"alert rule {event.rule_id!r} not found")
                if not _exists(conn, machines, machines.c.id == event.machine_id):
                    raise NotFoundError(f"machine {event.machine_id!r} not found")
                if _exists(conn, alert_events, alert_events.c.id == event.id):
                    raise ConflictError(message)
                conn.execute(sa.insert(alert_events).values(_event_values(event)))
        except exc.IntegrityError as error:
            raise ConflictError(message) from error
        return event

    def list_alert_events(
        self,
        owner_id: str | None = None,
        machine_id: str | None = None,
        limit: int = 100,
        *,
        rule_id: str | None = None,
        state: AlertState | None = None,
        acknowledged: bool | None = None,
        since: datetime | None = None,
    ) -> list[AlertEvent]:
        query = sa.select(alert_events)
        if owner_id is not None:
            query = query.join(machines, machines.c.id == alert_events.c.machine_id).where(
                machines.c.owner_id == owner_id
            )
        conditions = [
            alert_events.c.machine_id == machine_id if machine_id is not None else None,
            alert_events.c.rule_id == rule_id if rule_id is not None else None,
            alert_events.c.state == state.value if state is not None else None,
            alert_events.c.at >= since if since is not None else None,
            None
            if acknowledged is None
            else (
                alert_events.c.acknowledged_at.is_not(None)
                if acknowledged
                else alert_events.c.acknowledged_at.is_(None)
            ),
        ]
        query = query.where(*(c for c in conditions if c is not None))
        query = query.order_by(alert_events.c.at.desc(), alert_events.c.id.desc()).limit(
            max(0, limit)
        )
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_event(row) for row in rows]

    def acknowledge_alert_event(
        self, event_id: str, by: str, at: datetime, owner_id: str | None = None
    ) -> AlertEvent:
        with self._db.write() as conn:
            query = sa.select(alert_events).where(alert_events.c.id == event_id)
            if owner_id is not None:
                query = query.join(machines, machines.c.id == alert_events.c.machine_id).where(
                    machines.c.owner_id == owner_id
                )
            row = conn.execute(query).first()
            if row is None:
                raise NotFoundError(f"alert event {event_id!r} not found")
            conn.execute(
                sa.update(alert_events)
                .where(alert_events.c.id == event_id, alert_events.c.acknowledged_at.is_(None))
                .values(acknowledged_at=at, acknowledged_by=by)
            )
            row = conn.execute(sa.select(alert_events).where(alert_events.c.id == event_id)).one()
        return _event(row)

    # ------------------------------------------------------------------ series states

    def list_alert_states(
        self,
        owner_id: str | None = None,
        *,
        rule_id: str | None = None,
        machine_id: str | None = None,
        states: Sequence[AlertState] | None = None,
    ) -> list[AlertStatus]:
        query = sa.select(alert_states)
        if owner_id is not None:
            query = query.join(machines, machines.c.id == alert_states.c.machine_id).where(
                machines.c.owner_id == owner_id
            )
        if rule_id is not None:
            query = query.where(alert_states.c.rule_id == rule_id)
        if machine_id is not None:
            query = query.where(alert_states.c.machine_id == machine_id)
        if states is not None:
            query = query.where(alert_states.c.state.in_([s.value for s in states]))
        query = query.order_by(
            alert_states.c.rule_id,
            alert_states.c.machine_id,
            alert_states.c.metric,
            alert_states.c.labels,
        )
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_status(row) for row in rows]

    def record_alert_transitions(
        self, transitions: Sequence[AlertTransition]
    ) -> list[AlertTransition]:
        applied = []
        with self._db.write() as conn:
            for transition in transitions:
                if self._move_series(conn, transition):
                    applied.append(transition)
            events = [t.event for t in applied if t.event is not None]
            if events:
                conn.execute(sa.insert(alert_events), [_event_values(e) for e in events])
            insert_outbox_events(conn, [t.outbox for t in applied if t.outbox is not None])
        return applied

    def _move_series(self, conn: Connection, transition: AlertTransition) -> bool:
        # The statements are built once: building them per transition (cache key
        # included) cost several times their execution in an alert storm.
        status, previous = transition.status, transition.previous
        params = {
            "k_rule": status.rule_id,
            "k_machine": status.series.machine_id,
            "k_metric": status.series.metric,
            "k_labels": labels_to_json(status.series.labels),
            "new_state": status.state.value,
            "new_since": status.since,
            "new_value": status.value,
            "new_updated_at": status.updated_at,
        }
        if previous is None:
            if not conn.execute(_SERIES_LIVE, params).scalar():
                return False  # the rule or machine was deleted meanwhile
            # A series already there, or created by a concurrent evaluator (which the
            # insert waits for on PostgreSQL), is not this transition's to create:
            # a plain INSERT would fail the whole batch with a duplicate key instead.
            create = _CREATE_SERIES_SQLITE if self._db.is_sqlite else _CREATE_SERIES_POSTGRES
            return conn.execute(create, params).rowcount == 1
        params["was_state"], params["was_since"] = previous.state.value, previous.since
        return bool(conn.execute(_MOVE_SERIES, params).rowcount)

    # ------------------------------------------------------------------ heartbeat

    def find_status_changes(
        self,
        now: datetime,
        threshold: timedelta,
        machine_ids: Sequence[str] | None = None,
    ) -> list[tuple[Machine, MachineStatus]]:
        now_us = (now - EPOCH) // _MICROSECOND
        deadline = sa.literal(now_us, sa.BigInteger) - sa.func.coalesce(
            machines.c.offline_after_us, threshold // _MICROSECOND
        )
        silent = machines.c.last_seen < deadline
        query = sa.select(machines, silent.label("silent")).where(
            machines.c.last_seen.is_not(None),
            sa.or_(
                sa.and_(silent, machines.c.status != MachineStatus.OFFLINE.value),
                sa.and_(sa.not_(silent), machines.c.status != MachineStatus.ONLINE.value),
            ),
        )
        if machine_ids is not None:
            query = query.where(machines.c.id.in_(list(machine_ids)))
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(machines.c.id)).all()
        return [
            (
                machine_from_row(row),
                MachineStatus.OFFLINE if row.silent else MachineStatus.ONLINE,
            )
            for row in rows
        ]

    def record_status_changes(self, transitions: Sequence[StatusTransition]) -> list[StatusChange]:
        with self._db.write() as conn:
            current = self._lock_statuses(conn, sorted({t.change.machine_id for t in transitions}))
            # Only changes from the status a machine still has apply (another sweep may
            # have moved it); the write transaction holds those rows until commit.
            applied = []
            for transition in transitions:
                change = transition.change
                if current.get(change.machine_id) == change.previous:
                    applied.append(transition)
                    # The next change of this machine in the batch starts from here.
                    current[change.machine_id] = change.status
            if applied:
                conn.execute(
                    sa.update(machines)
                    .where(machines.c.id == sa.bindparam("mid"))
                    .values(status=sa.bindparam("new_status")),
                    [
                        {"mid": t.change.machine_id, "new_status": t.change.status.value}
                        for t in applied
                    ],
                )
                conn.execute(
                    sa.insert(status_changes),
                    [_status_change_values(t.change) for t in applied],
                )
            insert_outbox_events(conn, [t.event for t in applied if t.event is not None])
        return [t.change for t in applied]

    def _lock_statuses(
        self, conn: Connection, machine_ids: Sequence[str]
    ) -> dict[str, MachineStatus]:
        found: dict[str, MachineStatus] = {}
        for start in range(0, len(machine_ids), _CHUNK):
            # In id order, so that sweeps of several processes lock rows in one order.
            query = (
                sa.select(machines.c.id, machines.c.status)
                .where(machines.c.id.in_(machine_ids[start : start + _CHUNK]))
                .order_by(machines.c.id)
            )
            if self._db.is_postgres:
                query = query.with_for_update()
            found.update((row.id, MachineStatus(row.status)) for row in conn.execute(query))
        return found

    def list_status_changes(
        self, machine_id: str, *, since: datetime | None = None, limit: int = 100
    ) -> list[StatusChange]:
        query = sa.select(status_changes).where(status_changes.c.machine_id == machine_id)
        if since is not None:
            query = query.where(status_changes.c.at >= since)
        query = query.order_by(status_changes.c.seq.desc()).limit(max(0, limit))
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_status_change(row) for row in rows]


def _evaluation_changed(old: AlertRule, new: AlertRule) -> bool:
    fields = ("metric", "comparison", "threshold", "for_duration", "scope", "enabled")
    return any(getattr(old, name) != getattr(new, name) for name in fields)
