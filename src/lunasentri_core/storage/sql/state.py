"""Users, machines, API keys, alert rules and events in SQL.

Owner scoping: a method taking ``owner_id`` shows only that owner's records
when it is given, and everything when it is ``None`` (an admin). A record that
exists but belongs to someone else is reported exactly like a missing one.

Deleting a user deletes their machines, alert rules and events; deleting a
machine deletes its API keys, alert events and its metric series, all in one
transaction (the metric store shares the database).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    AlertEvent,
    AlertRule,
    AlertState,
    ApiKey,
    Comparison,
    Machine,
    MachineKind,
    MachineStatus,
    Role,
    RuleScope,
    SeriesKey,
    Severity,
    User,
)
from lunasentri_core.storage.sql.database import LOCK_MAINTAIN, Database
from lunasentri_core.storage.sql.metrics import SqlMetricStore
from lunasentri_core.storage.sql.schema import (
    alert_events,
    alert_rules,
    api_keys,
    labels_from_json,
    labels_to_json,
    machines,
    users,
)

_MICROSECOND = timedelta(microseconds=1)


@contextmanager
def _conflicts(message: str) -> Iterator[None]:
    """A uniqueness race lost to another writer reads like the pre-checked conflict."""
    try:
        yield
    except exc.IntegrityError as error:
        raise ConflictError(message) from error


# --------------------------------------------------------------------------- rows


def _user(row: Row[Any]) -> User:
    return User(id=row.id, username=row.username, role=Role(row.role), created_at=row.created_at)


def _machine_values(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "owner_id": machine.owner_id,
        "hostname": machine.hostname,
        "kind": machine.kind.value,
        "labels": labels_to_json(machine.labels),
        "status": machine.status.value,
        "last_seen": machine.last_seen,
        "created_at": machine.created_at,
    }


def _machine(row: Row[Any]) -> Machine:
    return Machine(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        hostname=row.hostname,
        kind=MachineKind(row.kind),
        labels=labels_from_json(row.labels),
        status=MachineStatus(row.status),
        last_seen=row.last_seen,
        created_at=row.created_at,
    )


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        machine_id=row.machine_id,
        prefix=row.prefix,
        key_hash=row.key_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _scope_json(scope: RuleScope) -> str:
    return json.dumps(
        {"machine_id": scope.machine_id, "labels": [list(p) for p in scope.labels]},
        separators=(",", ":"),
    )


def _scope(text: str) -> RuleScope:
    data = json.loads(text)
    return RuleScope(machine_id=data.get("machine_id"), labels=[tuple(p) for p in data["labels"]])


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
    )


def _owned(table: sa.Table, owner_id: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner_id is None else table.c.owner_id == owner_id


# --------------------------------------------------------------------------- store


class SqlStateStore:
    """:class:`~lunasentri_core.storage.StateStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database, metrics: SqlMetricStore) -> None:
        self._db = db
        self._metrics = metrics

    # ------------------------------------------------------------------ users

    def add_user(self, user: User, password_hash: str) -> User:
        message = f"username {user.username!r} is already taken"
        with _conflicts(message), self._db.write() as conn:
            if self._exists(conn, users, users.c.username == user.username):
                raise ConflictError(message)
            if self._exists(conn, users, users.c.id == user.id):
                raise ConflictError(f"a user with id {user.id!r} already exists")
            conn.execute(
                sa.insert(users).values(
                    id=user.id,
                    username=user.username,
                    role=user.role.value,
                    password_hash=password_hash,
                    created_at=user.created_at,
                )
            )
        return user

    def get_user(self, user_id: str) -> User:
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"user {user_id!r} not found")
        return _user(row)

    def find_user(self, username: str) -> User | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.username == username)).first()
        return None if row is None else _user(row)

    def list_users(self) -> list[User]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.username)).all()
        return [_user(row) for row in rows]

    def password_hash(self, user_id: str) -> str:
        with self._db.read() as conn:
            value = conn.execute(
                sa.select(users.c.password_hash).where(users.c.id == user_id)
            ).scalar()
        if value is None:
            raise NotFoundError(f"user {user_id!r} not found")
        return str(value)

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        with self._db.write() as conn:
            updated = conn.execute(
                sa.update(users).where(users.c.id == user_id).values(password_hash=password_hash)
            ).rowcount
        if not updated:
            raise NotFoundError(f"user {user_id!r} not found")

    def delete_user(self, user_id: str) -> None:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            if not self._exists(conn, users, users.c.id == user_id):
                raise NotFoundError(f"user {user_id!r} not found")
            owned = conn.execute(
                sa.select(machines.c.id).where(machines.c.owner_id == user_id)
            ).scalars()
            for machine_id in list(owned):
                self._delete_machine(conn, machine_id)
            rule_ids = sa.select(alert_rules.c.id).where(alert_rules.c.owner_id == user_id)
            conn.execute(sa.delete(alert_events).where(alert_events.c.rule_id.in_(rule_ids)))
            conn.execute(sa.delete(alert_rules).where(alert_rules.c.owner_id == user_id))
            conn.execute(sa.delete(users).where(users.c.id == user_id))

    # ------------------------------------------------------------------ machines

    def add_machine(self, machine: Machine) -> Machine:
        message = self._name_taken(machine)
        with _conflicts(message), self._db.write() as conn:
            if machine.owner_id is not None and not self._exists(
                conn, users, users.c.id == machine.owner_id
            ):
                raise NotFoundError(
                    f"owner {machine.owner_id!r} of machine {machine.name!r} not found"
                )
            if self._same_name(conn, machine):
                raise ConflictError(message)
            if self._exists(conn, machines, machines.c.id == machine.id):
                raise ConflictError(f"a machine with id {machine.id!r} already exists")
            conn.execute(sa.insert(machines).values(_machine_values(machine)))
        return machine

    def get_machine(self, machine_id: str, owner_id: str | None = None) -> Machine:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(machines).where(machines.c.id == machine_id, _owned(machines, owner_id))
            ).first()
        if row is None:
            raise NotFoundError(f"machine {machine_id!r} not found")
        return _machine(row)

    def find_machine(self, name: str, owner_id: str | None = None) -> Machine | None:
        """The machine called ``name``; with no owner given, an unowned one first."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(machines)
                .where(machines.c.name == name, _owned(machines, owner_id))
                .order_by(machines.c.owner_id.is_not(None), machines.c.created_at, machines.c.id)
                .limit(1)
            ).first()
        return None if row is None else _machine(row)

    def list_machines(self, owner_id: str | None = None) -> list[Machine]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(machines)
                .where(_owned(machines, owner_id))
                .order_by(machines.c.name, machines.c.id)
            ).all()
        return [_machine(row) for row in rows]

    def update_machine(self, machine: Machine) -> Machine:
        """Replace a machine's fields; ``last_seen`` only ever moves forward."""
        message = self._name_taken(machine)
        with _conflicts(message), self._db.write() as conn:
            current = conn.execute(sa.select(machines).where(machines.c.id == machine.id)).first()
            if current is None:
                raise NotFoundError(f"machine {machine.id!r} not found")
            if machine.owner_id is not None and not self._exists(
                conn, users, users.c.id == machine.owner_id
            ):
                raise NotFoundError(
                    f"owner {machine.owner_id!r} of machine {machine.name!r} not found"
                )
            if self._same_name(conn, machine, exclude=machine.id):
                raise ConflictError(message)
            values = _machine_values(machine)
            del values["id"]
            values["last_seen"] = _later(current.last_seen, machine.last_seen)
            conn.execute(sa.update(machines).where(machines.c.id == machine.id).values(values))
            row = conn.execute(sa.select(machines).where(machines.c.id == machine.id)).one()
        return _machine(row)

    def delete_machine(self, machine_id: str) -> None:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            if not self._exists(conn, machines, machines.c.id == machine_id):
                raise NotFoundError(f"machine {machine_id!r} not found")
            self._delete_machine(conn, machine_id)

    def _delete_machine(self, conn: Connection, machine_id: str) -> None:
        self._metrics.delete_machine_series(conn, machine_id)
        conn.execute(sa.delete(alert_events).where(alert_events.c.machine_id == machine_id))
        conn.execute(sa.delete(api_keys).where(api_keys.c.machine_id == machine_id))
        conn.execute(sa.delete(machines).where(machines.c.id == machine_id))

    def touch_machines(self, seen: Sequence[tuple[str, datetime]]) -> None:
        if not seen:
            return
        latest: dict[str, datetime] = {}
        for machine_id, at in seen:
            if machine_id not in latest or at > latest[machine_id]:
                latest[machine_id] = at
        stmt = (
            sa.update(machines)
            .where(
                machines.c.id == sa.bindparam("mid"),
                sa.or_(
                    machines.c.last_seen.is_(None),
                    machines.c.last_seen < sa.bindparam("at", type_=machines.c.last_seen.type),
                ),
            )
            .values(last_seen=sa.bindparam("at", type_=machines.c.last_seen.type))
        )
        with self._db.write() as conn:
            conn.execute(stmt, [{"mid": m, "at": at} for m, at in sorted(latest.items())])

    def _same_name(self, conn: Connection, machine: Machine, exclude: str | None = None) -> bool:
        condition = sa.and_(
            machines.c.name == machine.name,
            machines.c.owner_id.is_(None)
            if machine.owner_id is None
            else machines.c.owner_id == machine.owner_id,
        )
        if exclude is not None:
            condition = sa.and_(condition, machines.c.id != exclude)
        return self._exists(conn, machines, condition)

    @staticmethod
    def _name_taken(machine: Machine) -> str:
        owner = "without an owner" if machine.owner_id is None else f"of owner {machine.owner_id!r}"
        return f"a machine named {machine.name!r} {owner} already exists"

    # ------------------------------------------------------------------ API keys

    def add_api_key(self, key: ApiKey) -> ApiKey:
        message = "an API key with this hash already exists"
        with _conflicts(message), self._db.write() as conn:
            if not self._exists(conn, machines, machines.c.id == key.machine_id):
                raise NotFoundError(f"machine {key.machine_id!r} not found")
            if self._exists(conn, api_keys, api_keys.c.key_hash == key.key_hash):
                raise ConflictError(message)
            if self._exists(conn, api_keys, api_keys.c.id == key.id):
                raise ConflictError(f"an API key with id {key.id!r} already exists")
            conn.execute(
                sa.insert(api_keys).values(
                    id=key.id,
                    machine_id=key.machine_id,
                    prefix=key.prefix,
                    key_hash=key.key_hash,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=key.revoked_at,
                )
            )
        return key

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == key_hash)).first()
        return None if row is None else _api_key(row)

    def list_api_keys(self, machine_id: str) -> list[ApiKey]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(api_keys)
                .where(api_keys.c.machine_id == machine_id)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            ).all()
        return [_api_key(row) for row in rows]

    def revoke_api_key(self, key_id: str, at: datetime) -> None:
        """Revoke a key as of ``at``; a key revoked earlier keeps its earlier time."""
        with self._db.write() as conn:
            current = conn.execute(
                sa.select(api_keys.c.revoked_at).where(api_keys.c.id == key_id)
            ).first()
            if current is None:
                raise NotFoundError(f"API key {key_id!r} not found")
            if current.revoked_at is None or at < current.revoked_at:
                conn.execute(
                    sa.update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=at)
                )

    # ------------------------------------------------------------------ alerts

    def add_alert_rule(self, rule: AlertRule) -> AlertRule:
        message = f"an alert rule with id {rule.id!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            if not self._exists(conn, users, users.c.id == rule.owner_id):
                raise NotFoundError(
                    f"owner {rule.owner_id!r} of alert rule {rule.name!r} not found"
                )
            if self._exists(conn, alert_rules, alert_rules.c.id == rule.id):
                raise ConflictError(message)
            conn.execute(
                sa.insert(alert_rules).values(
                    id=rule.id,
                    owner_id=rule.owner_id,
                    name=rule.name,
                    metric=rule.metric,
                    comparison=rule.comparison.value,
                    threshold=rule.threshold,
                    for_duration_us=rule.for_duration // _MICROSECOND,
                    scope=_scope_json(rule.scope),
                    severity=rule.severity.value,
                    enabled=rule.enabled,
                    created_at=rule.created_at,
                )
            )
        return rule

    def get_alert_rule(self, rule_id: str, owner_id: str | None = None) -> AlertRule:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(alert_rules).where(
                    alert_rules.c.id == rule_id, _owned(alert_rules, owner_id)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"alert rule {rule_id!r} not found")
        return _rule(row)

    def list_alert_rules(self, owner_id: str | None = None) -> list[AlertRule]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(alert_rules)
                .where(_owned(alert_rules, owner_id))
                .order_by(alert_rules.c.name, alert_rules.c.id)
            ).all()
        return [_rule(row) for row in rows]

    def delete_alert_rule(self, rule_id: str) -> None:
        with self._db.write() as conn:
            conn.execute(sa.delete(alert_events).where(alert_events.c.rule_id == rule_id))
            deleted = conn.execute(
                sa.delete(alert_rules).where(alert_rules.c.id == rule_id)
            ).rowcount
            if not deleted:
                raise NotFoundError(f"alert rule {rule_id!r} not found")

    def add_alert_event(self, event: AlertEvent) -> AlertEvent:
        message = f"an alert event with id {event.id!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            if not self._exists(conn, alert_rules, alert_rules.c.id == event.rule_id):
                raise NotFoundError(f"alert rule {event.rule_id!r} not found")
            if not self._exists(conn, machines, machines.c.id == event.machine_id):
                raise NotFoundError(f"machine {event.machine_id!r} not found")
            if self._exists(conn, alert_events, alert_events.c.id == event.id):
                raise ConflictError(message)
            conn.execute(
                sa.insert(alert_events).values(
                    id=event.id,
                    rule_id=event.rule_id,
                    machine_id=event.machine_id,
                    series_machine_id=event.series.machine_id,
                    metric=event.series.metric,
                    labels=labels_to_json(event.series.labels),
                    state=event.state.value,
                    value=event.value,
                    at=event.at,
                    acknowledged_at=event.acknowledged_at,
                )
            )
        return event

    def list_alert_events(
        self, owner_id: str | None = None, machine_id: str | None = None, limit: int = 100
    ) -> list[AlertEvent]:
        """Newest first; an owner sees the events of their own machines."""
        query = sa.select(alert_events)
        if owner_id is not None:
            query = query.join(machines, machines.c.id == alert_events.c.machine_id).where(
                machines.c.owner_id == owner_id
            )
        if machine_id is not None:
            query = query.where(alert_events.c.machine_id == machine_id)
        query = query.order_by(alert_events.c.at.desc(), alert_events.c.id.desc()).limit(
            max(0, limit)
        )
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_event(row) for row in rows]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _exists(conn: Connection, table: sa.Table, condition: sa.ColumnElement[bool]) -> bool:
        return (
            conn.execute(
                sa.select(sa.literal(1)).select_from(table).where(condition).limit(1)
            ).first()
            is not None
        )


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
