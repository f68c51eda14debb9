"""Users, machines, API keys, alerts and the server's own state in SQL.

Owner scoping: a method taking ``owner_id`` shows only that owner's records
when it is given, and everything when it is ``None`` (an admin). A record that
exists but belongs to someone else is reported exactly like a missing one.

Deleting a user deletes their agentless records (monitors first), machines,
alert rules and events, sessions and reset tokens; deleting a machine deletes
its API keys, alert events, agent config and metric series, all in one
transaction (the metric store shares the database), and is refused while
monitors write to it. The audit log and login failures are history and stay. Agent
registrations outlive their machine without its id: a claimed one whose key was
not delivered yet is expired and its sealed key dropped (it sealed a key of the
deleted machine), so the agent registers again instead of receiving a dead key.

Operations that must have exactly one winner (using a reset token, taking a
sealed key, a claim update with an expected status, the agent config version)
are conditional updates or row locks, so they hold across processes on
PostgreSQL as well as on SQLite, whose writers are serialized anyway.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row

from lunasentri_core.errors import ConflictError, InUseError, NotFoundError
from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    ApiKey,
    AuditEntry,
    ClaimStatus,
    Machine,
    MachineStatus,
    ResetToken,
    Role,
    Session,
    User,
)
from lunasentri_core.storage.protocols import ChangeKind, LoginFailure, MachineQuery, fold_ascii
from lunasentri_core.storage.sql.agentless import SqlAgentlessStore
from lunasentri_core.storage.sql.alerting import SqlAlertStore
from lunasentri_core.storage.sql.changes import bump_config_epoch, read_config_epoch
from lunasentri_core.storage.sql.database import LOCK_MAINTAIN, Database
from lunasentri_core.storage.sql.metrics import SqlMetricStore
from lunasentri_core.storage.sql.outbox import SqlOutboxStore
from lunasentri_core.storage.sql.purge import SqlPurgeStore
from lunasentri_core.storage.sql.rows import machine_from_row as _machine
from lunasentri_core.storage.sql.rows import machine_values as _machine_values
from lunasentri_core.storage.sql.schema import (
    agent_claims,
    agent_configs,
    alert_events,
    alert_rules,
    api_keys,
    audit_log,
    devices,
    labels_from_json,
    labels_to_json,
    login_failures,
    machines,
    outbox_events,
    reset_tokens,
    sessions,
    users,
)
from lunasentri_core.storage.sql.seen import touch, touch_statement

_MICROSECOND = timedelta(microseconds=1)
_LIVE_CLAIMS = (ClaimStatus.PENDING.value, ClaimStatus.CLAIMED.value)
"""Registrations a new one of the same agent must not replace."""


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


def _session(row: Row[Any]) -> Session:
    return Session(
        id=row.id,
        user_id=row.user_id,
        token_hash=row.token_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        client=row.client,
        revoked_at=row.revoked_at,
    )


def _reset_token(row: Row[Any]) -> ResetToken:
    return ResetToken(
        id=row.id,
        user_id=row.user_id,
        token_hash=row.token_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
    )


def _claim_values(claim: AgentClaim) -> dict[str, Any]:
    return {
        "agent_id": claim.agent_id,
        "claim_token_hash": claim.claim_token_hash,
        "hostname": claim.hostname,
        "version": claim.version,
        "created_at": claim.created_at,
        "expires_at": claim.expires_at,
        "status": claim.status.value,
        "machine_id": claim.machine_id,
        "sealed_key": claim.sealed_key,
        "client": claim.client,
    }


def _claim(row: Row[Any]) -> AgentClaim:
    return AgentClaim(
        agent_id=row.agent_id,
        claim_token_hash=row.claim_token_hash,
        hostname=row.hostname,
        version=row.version,
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=ClaimStatus(row.status),
        machine_id=row.machine_id,
        sealed_key=None if row.sealed_key is None else bytes(row.sealed_key),
        client=row.client,
    )


def _detail_json(entry: AuditEntry) -> str:
    try:
        return json.dumps(
            dict(entry.detail), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"detail of audit entry {entry.action!r} is not a JSON object: {error}"
        ) from error


def _audit(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        action=row.action,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        target_type=row.target_type,
        target_id=row.target_id,
        client=row.client,
        detail=json.loads(row.detail),
        via=row.via,
    )


def _agent_config(row: Row[Any]) -> AgentConfig:
    return AgentConfig(
        machine_id=row.machine_id,
        interval=timedelta(microseconds=row.interval_us),
        collectors=tuple(json.loads(row.collectors)),
        labels=labels_from_json(row.labels),
        version=int(row.version),
        updated_at=row.updated_at,
    )


def _owned(table: sa.Table, owner_id: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner_id is None else table.c.owner_id == owner_id


# Built once: every request for a machine's data checks it is the caller's, and
# building the statement (its cache key) costs more than running it.
_MACHINE_BY_ID = sa.select(machines).where(machines.c.id == sa.bindparam("machine_id"))
_OWNED_MACHINE_BY_ID = _MACHINE_BY_ID.where(machines.c.owner_id == sa.bindparam("owner_id"))
_MACHINE_ID = sa.select(machines.c.id).where(machines.c.id == sa.bindparam("machine_id"))
_OWNED_MACHINE_ID = _MACHINE_ID.where(machines.c.owner_id == sa.bindparam("owner_id"))


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _label_pair(pair: tuple[str, str]) -> str:
    """One pair as labels_to_json writes it inside the stored array."""
    return json.dumps(list(pair), separators=(",", ":"), ensure_ascii=False)


def _status_filter(status: MachineStatus, seen_since: datetime | None) -> sa.ColumnElement[bool]:
    """As protocols.reported_status: an unknown machine that has reported counts
    as online or offline by its ``last_seen``."""
    recorded = machines.c.status == status.value
    if seen_since is None:
        return recorded
    unknown = machines.c.status == MachineStatus.UNKNOWN.value
    if status is MachineStatus.UNKNOWN:
        return sa.and_(unknown, machines.c.last_seen.is_(None))
    seen = machines.c.last_seen >= seen_since
    if status is MachineStatus.OFFLINE:
        seen = machines.c.last_seen < seen_since
    return sa.or_(recorded, sa.and_(unknown, seen))


# --------------------------------------------------------------------------- store

P = ParamSpec("P")
R = TypeVar("R")


def _then(
    method: Callable[Concatenate[SqlStateStore, P], R],
    move: Callable[[SqlStateStore], None],
) -> Callable[Concatenate[SqlStateStore, P], R]:
    """``method``, calling ``move(store)`` once it has finished, however it ended."""

    @functools.wraps(method)
    def wrapper(store: SqlStateStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(store, *args, **kwargs)
        finally:
            move(store)

    return wrapper


def _may_end_keys(
    method: Callable[Concatenate[SqlStateStore, P], R],
) -> Callable[Concatenate[SqlStateStore, P], R]:
    """The method may end API keys: move ``api_key_generation`` once it has finished."""
    return _then(method, lambda store: store.keys_changed_elsewhere())


def _may_end_sessions(
    method: Callable[Concatenate[SqlStateStore, P], R],
) -> Callable[Concatenate[SqlStateStore, P], R]:
    """The method may end sessions or change whom they stand for (revoking them,
    a user's role or deletion): move ``session_generation`` once it has finished."""
    return _then(method, lambda store: store.sessions_changed_elsewhere())


class SqlStateStore(SqlAgentlessStore, SqlAlertStore, SqlOutboxStore, SqlPurgeStore):
    """:class:`~lunasentri_core.storage.StateStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database, metrics: SqlMetricStore) -> None:
        self._db = db
        self._metrics = metrics
        self._key_changes = itertools.count(1)
        self._api_key_generation = 0
        self._session_changes = itertools.count(1)
        self._session_generation = 0
        self._touch = touch_statement(db)
        self._machine_visible = {
            False: db.statement(_MACHINE_ID),
            True: db.statement(_OWNED_MACHINE_ID),
        }
        """:meth:`check_machine`'s statements, for any owner and for one owner."""

    @property
    def api_key_generation(self) -> int:
        """Moves after every call through this store that may end API keys (revoking,
        expiring, deleting them), and when another process is heard doing so (see
        :meth:`SqlStorage.listen_for_changes`): authenticators that remember keys
        drop them then."""
        return self._api_key_generation

    def keys_changed_elsewhere(self) -> None:
        """Another process (or, through :func:`_may_end_keys`, this store) may have
        ended API keys: move ``api_key_generation``."""
        self._api_key_generation = next(self._key_changes)

    @property
    def session_generation(self) -> int:
        """Moves after every call through this store that may end sessions or change
        their users (revoking sessions, a user's role, deleting a user), and when
        another process is seen changing the store's ``config_epoch`` (which those
        calls move): authenticators that remember sessions drop them then."""
        return self._session_generation

    def sessions_changed_elsewhere(self) -> None:
        """Another process (or, through :func:`_may_end_sessions`, this store) may
        have ended sessions: move ``session_generation``."""
        self._session_generation = next(self._session_changes)

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

    @_may_end_sessions
    def set_user_role(self, user_id: str, role: Role) -> User:
        # The maintenance lock serializes this with other role changes and deletions
        # on PostgreSQL, so the count of administrators below stays true until commit.
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
            if row is None:
                raise NotFoundError(f"user {user_id!r} not found")
            if row.role == Role.ADMIN.value and role != Role.ADMIN:
                others = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(users)
                    .where(users.c.role == Role.ADMIN.value, users.c.id != user_id)
                ).scalar_one()
                if not others:
                    raise ConflictError(
                        f"{row.username!r} is the only administrator; make another one first"
                    )
            conn.execute(sa.update(users).where(users.c.id == user_id).values(role=role.value))
            if row.role != role.value:
                # Other processes drop the sessions they remember (see SessionAuthenticator).
                bump_config_epoch(self._db, conn)
        return attrs.evolve(_user(row), role=role)

    @_may_end_keys
    @_may_end_sessions
    def delete_user(self, user_id: str) -> None:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            if not self._exists(conn, users, users.c.id == user_id):
                raise NotFoundError(f"user {user_id!r} not found")
            # Monitors first: they keep their machines, devices and profiles in use.
            self._delete_agentless_of(conn, user_id)
            owned = conn.execute(
                sa.select(machines.c.id).where(machines.c.owner_id == user_id)
            ).scalars()
            for machine_id in list(owned):
                self._delete_machine(conn, machine_id)
            rule_ids = sa.select(alert_rules.c.id).where(alert_rules.c.owner_id == user_id)
            conn.execute(sa.delete(alert_events).where(alert_events.c.rule_id.in_(rule_ids)))
            conn.execute(sa.delete(alert_rules).where(alert_rules.c.owner_id == user_id))
            # Channels, deliveries and silences go by foreign key; the outbox keeps none.
            conn.execute(sa.delete(outbox_events).where(outbox_events.c.owner_id == user_id))
            conn.execute(sa.delete(sessions).where(sessions.c.user_id == user_id))
            conn.execute(sa.delete(reset_tokens).where(reset_tokens.c.user_id == user_id))
            conn.execute(sa.delete(users).where(users.c.id == user_id))
            bump_config_epoch(self._db, conn)

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
            if owner_id is None:
                row = conn.execute(_MACHINE_BY_ID, {"machine_id": machine_id}).first()
            else:
                row = conn.execute(
                    _OWNED_MACHINE_BY_ID, {"machine_id": machine_id, "owner_id": owner_id}
                ).first()
        if row is None:
            raise NotFoundError(f"machine {machine_id!r} not found")
        return _machine(row)

    def check_machine(self, machine_id: str, owner_id: str | None = None) -> None:
        """What :meth:`get_machine` checks, without reading the machine: raises
        :class:`NotFoundError` unless it exists (and is ``owner_id``'s, when given).

        A read of a machine's metrics needs only this; one driver statement and
        no row made into a :class:`Machine` cost about a third of ``get_machine``.
        """
        stmt = self._machine_visible[owner_id is not None]
        given = {"machine_id": machine_id, "owner_id": owner_id}
        with self._db.read() as conn:
            found = stmt.one(conn, tuple(given[name] for name in stmt.names)).first()
        if found is None:
            raise NotFoundError(f"machine {machine_id!r} not found")

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

    def page_machines(self, query: MachineQuery) -> list[Machine]:
        stmt = (
            sa.select(machines)
            .where(_owned(machines, query.owner_id), *self._machine_filters(query))
            .order_by(machines.c.name, machines.c.id)
            .limit(query.limit)
        )
        if query.after is not None:
            stmt = stmt.where(sa.tuple_(machines.c.name, machines.c.id) > sa.tuple_(*query.after))
        with self._db.read() as conn:
            return [_machine(row) for row in conn.execute(stmt)]

    def _machine_filters(self, query: MachineQuery) -> list[sa.ColumnElement[bool]]:
        found: list[sa.ColumnElement[bool]] = []
        if query.status is not None:
            found.append(_status_filter(query.status, query.seen_since))
        # The stored labels are canonical JSON pairs (labels_to_json): a pair's
        # text can only occur in the column as that very pair, never inside a value.
        for pair in query.labels:
            found.append(self._contains(machines.c.labels, _label_pair(pair)))
        if query.name is not None:
            found.append(self._contains(self._folded(machines.c.name), fold_ascii(query.name)))
        if query.ids:
            found.append(machines.c.id.in_(sorted(set(query.ids))))
        return found

    def _contains(self, text: sa.ColumnElement[str], part: str) -> sa.ColumnElement[bool]:
        """``part`` occurs in ``text``, byte for byte (LIKE would fold case in SQLite
        and needs its wildcards escaped)."""
        find = sa.func.strpos if self._db.is_postgres else sa.func.instr
        return find(text, sa.literal(part, sa.Text)) > 0

    def _folded(self, text: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """ASCII capitals lowercased, nothing else (``fold_ascii``): SQLite's
        ``lower`` does exactly that, PostgreSQL's follows the locale."""
        if self._db.is_postgres:
            return sa.func.translate(text, _UPPER, _UPPER.lower())
        return sa.func.lower(text)

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
            # The heartbeat owns the status: an edit made from a stale copy must not undo it.
            del values["id"], values["status"]
            values["last_seen"] = _later(current.last_seen, machine.last_seen)
            conn.execute(sa.update(machines).where(machines.c.id == machine.id).values(values))
            bump_config_epoch(self._db, conn)
            row = conn.execute(sa.select(machines).where(machines.c.id == machine.id)).one()
        return _machine(row)

    @_may_end_keys
    def delete_machine(self, machine_id: str) -> None:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            if not self._exists(conn, machines, machines.c.id == machine_id):
                raise NotFoundError(f"machine {machine_id!r} not found")
            in_use = self._machine_monitors(conn, machine_id)
            if in_use:
                raise InUseError(f"machine {machine_id!r}", {"monitors": in_use})
            self._delete_machine(conn, machine_id)
            bump_config_epoch(self._db, conn)

    def _delete_machine(self, conn: Connection, machine_id: str) -> None:
        self._metrics.delete_machine_series(conn, machine_id)
        conn.execute(sa.delete(alert_events).where(alert_events.c.machine_id == machine_id))
        conn.execute(sa.delete(api_keys).where(api_keys.c.machine_id == machine_id))
        conn.execute(sa.delete(agent_configs).where(agent_configs.c.machine_id == machine_id))
        named = agent_claims.c.machine_id == machine_id
        conn.execute(
            sa.update(agent_claims)
            .where(named, agent_claims.c.status == ClaimStatus.CLAIMED.value)
            .values(status=ClaimStatus.EXPIRED.value, sealed_key=None)
        )
        conn.execute(sa.update(agent_claims).where(named).values(machine_id=None))
        conn.execute(
            sa.update(devices).where(devices.c.machine_id == machine_id).values(machine_id=None)
        )
        conn.execute(sa.delete(machines).where(machines.c.id == machine_id))

    def config_epoch(self) -> int:
        with self._db.read() as conn:
            return read_config_epoch(conn)

    def touch_machines(self, seen: Sequence[tuple[str, datetime]]) -> None:
        if not seen:
            return
        with self._db.write() as conn:
            touch(conn, self._touch, seen)

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

    @_may_end_keys
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
                self._db.notices.send(conn, ChangeKind.KEYS)
                # Processes that cannot hear the notice (SQLite) see the epoch move.
                bump_config_epoch(self._db, conn, notice=False)

    # ------------------------------------------------------------------ API key lifetime

    @_may_end_keys
    def set_api_key_expiry(self, key_id: str, expires_at: datetime | None) -> None:
        with self._db.write() as conn:
            updated = conn.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id).values(expires_at=expires_at)
            ).rowcount
            if updated:
                self._db.notices.send(conn, ChangeKind.KEYS)
                bump_config_epoch(self._db, conn, notice=False)
        if not updated:
            raise NotFoundError(f"API key {key_id!r} not found")

    # ------------------------------------------------------------------ sessions

    def add_session(self, session: Session) -> Session:
        values = {
            "id": session.id,
            "user_id": session.user_id,
            "token_hash": session.token_hash,
            "created_at": session.created_at,
            "expires_at": session.expires_at,
            "client": session.client,
            "revoked_at": session.revoked_at,
        }
        self._add_user_token(sessions, values, "session")
        return session

    def find_session(self, token_hash: str) -> Session | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(sessions).where(sessions.c.token_hash == token_hash)
            ).first()
        return None if row is None else _session(row)

    def find_session_user(self, token_hash: str) -> tuple[Session, User | None] | None:
        """:meth:`find_session` and :meth:`get_user` of its user (``None``: not found) in
        one read transaction: what a request's session authentication reads."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(sessions).where(sessions.c.token_hash == token_hash)
            ).first()
            if row is None:
                return None
            user = conn.execute(sa.select(users).where(users.c.id == row.user_id)).first()
        return _session(row), None if user is None else _user(user)

    @_may_end_sessions
    def revoke_session(self, session_id: str, at: datetime) -> None:
        """Revoke as of ``at``; a session revoked earlier keeps its earlier time."""
        with self._db.write() as conn:
            current = conn.execute(
                sa.select(sessions.c.revoked_at).where(sessions.c.id == session_id)
            ).first()
            if current is None:
                raise NotFoundError(f"session {session_id!r} not found")
            if current.revoked_at is None or at < current.revoked_at:
                conn.execute(
                    sa.update(sessions).where(sessions.c.id == session_id).values(revoked_at=at)
                )
                bump_config_epoch(self._db, conn)

    @_may_end_sessions
    def revoke_user_sessions(self, user_id: str, at: datetime) -> int:
        """Revoke the user's sessions still active at ``at``; return how many."""
        with self._db.write() as conn:
            if not self._exists(conn, users, users.c.id == user_id):
                raise NotFoundError(f"user {user_id!r} not found")
            revoked: int = conn.execute(
                sa.update(sessions)
                .where(
                    sessions.c.user_id == user_id,
                    sessions.c.revoked_at.is_(None),
                    sessions.c.expires_at > at,
                )
                .values(revoked_at=at)
            ).rowcount
            if revoked:
                bump_config_epoch(self._db, conn)
        return revoked

    def list_sessions(self, user_id: str) -> list[Session]:
        """The user's sessions, newest first (none for an unknown user)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(sessions)
                .where(sessions.c.user_id == user_id)
                .order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
            ).all()
        return [_session(row) for row in rows]

    # ------------------------------------------------------------------ password resets

    def add_reset_token(self, token: ResetToken) -> ResetToken:
        values = {
            "id": token.id,
            "user_id": token.user_id,
            "token_hash": token.token_hash,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
            "used_at": token.used_at,
        }
        self._add_user_token(reset_tokens, values, "reset token")
        return token

    def _add_user_token(self, table: sa.Table, values: dict[str, Any], what: str) -> None:
        """Insert a user's token row; its user must exist, its hash and id must be new."""
        message = f"a {what} with this token hash already exists"
        with _conflicts(message), self._db.write() as conn:
            if not self._exists(conn, users, users.c.id == values["user_id"]):
                raise NotFoundError(f"user {values['user_id']!r} of the {what} not found")
            if self._exists(conn, table, table.c.token_hash == values["token_hash"]):
                raise ConflictError(message)
            if self._exists(conn, table, table.c.id == values["id"]):
                raise ConflictError(f"a {what} with id {values['id']!r} already exists")
            conn.execute(sa.insert(table).values(**values))

    def find_reset_token(self, token_hash: str) -> ResetToken | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(reset_tokens).where(reset_tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else _reset_token(row)

    def use_reset_token(self, token_id: str, at: datetime) -> bool:
        """Mark the token used; ``False`` if it was used already or has expired by ``at``."""
        with self._db.write() as conn:
            # Conditional, so that of concurrent callers only the first matches
            # (PostgreSQL re-checks the condition after waiting for the row lock).
            used = conn.execute(
                sa.update(reset_tokens)
                .where(
                    reset_tokens.c.id == token_id,
                    reset_tokens.c.used_at.is_(None),
                    reset_tokens.c.expires_at > at,
                )
                .values(used_at=at)
            ).rowcount
            if not used and not self._exists(conn, reset_tokens, reset_tokens.c.id == token_id):
                raise NotFoundError(f"reset token {token_id!r} not found")
        return bool(used)

    def end_reset_tokens(self, user_id: str, at: datetime) -> int:
        with self._db.write() as conn:
            ended = conn.execute(
                sa.update(reset_tokens)
                .where(
                    reset_tokens.c.user_id == user_id,
                    reset_tokens.c.used_at.is_(None),
                    reset_tokens.c.expires_at > at,
                )
                .values(expires_at=at)
            ).rowcount
        return int(ended)

    # ------------------------------------------------------------------ login throttling

    def add_login_failure(self, username: str, at: datetime, client: str | None) -> None:
        with self._db.write() as conn:
            conn.execute(sa.insert(login_failures).values(username=username, at=at, client=client))

    def count_login_failures(self, username: str, since: datetime) -> int:
        with self._db.read() as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(login_failures)
                .where(login_failures.c.username == username, login_failures.c.at >= since)
            ).scalar_one()
        return int(count)

    def login_failure_times(self, username: str, since: datetime) -> list[datetime]:
        with self._db.read() as conn:
            times = conn.execute(
                sa.select(login_failures.c.at)
                .where(login_failures.c.username == username, login_failures.c.at >= since)
                .order_by(login_failures.c.at)
            ).scalars()
            return list(times)

    def recent_login_failures(
        self, username: str, client: str | None, since: datetime
    ) -> list[LoginFailure]:
        of_name = login_failures.c.username == username
        # Each side of the OR has its index: (username, at) and (client, at).
        matches = of_name if client is None else sa.or_(of_name, login_failures.c.client == client)
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(login_failures.c.username, login_failures.c.at, login_failures.c.client)
                .where(matches, login_failures.c.at >= since)
                .order_by(login_failures.c.at, login_failures.c.id)
            ).all()
        return [LoginFailure(row.username, row.at, row.client) for row in rows]

    def clear_login_failures(self, username: str) -> None:
        with self._db.write() as conn:
            conn.execute(sa.delete(login_failures).where(login_failures.c.username == username))

    def clear_login_failures_from(self, username: str, client: str | None) -> None:
        from_client = (
            login_failures.c.client.is_(None)
            if client is None
            else login_failures.c.client == client
        )
        with self._db.write() as conn:
            conn.execute(
                sa.delete(login_failures).where(login_failures.c.username == username, from_client)
            )

    # ------------------------------------------------------------------ agent claims

    def add_claim(self, claim: AgentClaim) -> AgentClaim:
        """Store a registration, replacing an expired or delivered one of the same agent."""
        message = f"agent {claim.agent_id!r} is already registered"
        with _conflicts(message), self._db.write() as conn:
            current = conn.execute(
                sa.select(agent_claims.c.status).where(agent_claims.c.agent_id == claim.agent_id)
            ).first()
            if current is not None and current.status in _LIVE_CLAIMS:
                raise ConflictError(f"{message} ({current.status})")
            self._check_claim_machine(conn, claim)
            # A concurrent registration that replaced the same row first makes
            # this delete match nothing and the insert below conflict.
            conn.execute(
                sa.delete(agent_claims).where(
                    agent_claims.c.agent_id == claim.agent_id,
                    agent_claims.c.status.not_in(_LIVE_CLAIMS),
                )
            )
            conn.execute(sa.insert(agent_claims).values(_claim_values(claim)))
        return claim

    def get_claim(self, agent_id: str) -> AgentClaim:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(agent_claims).where(agent_claims.c.agent_id == agent_id)
            ).first()
        if row is None:
            raise NotFoundError(f"agent {agent_id!r} has no registration")
        return _claim(row)

    def list_claims(self, status: ClaimStatus | None = None) -> list[AgentClaim]:
        query = sa.select(agent_claims)
        if status is not None:
            query = query.where(agent_claims.c.status == status.value)
        query = query.order_by(agent_claims.c.created_at, agent_claims.c.agent_id)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_claim(row) for row in rows]

    def update_claim(
        self, claim: AgentClaim, expected_status: ClaimStatus | None = None
    ) -> AgentClaim:
        """Replace a registration's fields; with ``expected_status``, only from that status."""
        condition = agent_claims.c.agent_id == claim.agent_id
        if expected_status is not None:
            condition = sa.and_(condition, agent_claims.c.status == expected_status.value)
        values = _claim_values(claim)
        del values["agent_id"]
        with self._db.write() as conn:
            self._check_claim_machine(conn, claim)
            # One conditional statement: a concurrent update that changed the
            # status first makes this one match nothing.
            updated = conn.execute(sa.update(agent_claims).where(condition).values(values)).rowcount
            if not updated:
                current = conn.execute(
                    sa.select(agent_claims.c.status).where(
                        agent_claims.c.agent_id == claim.agent_id
                    )
                ).first()
                if current is None:
                    raise NotFoundError(f"agent {claim.agent_id!r} has no registration")
                raise ConflictError(
                    f"the registration of agent {claim.agent_id!r} is {current.status}, "
                    f"not {expected_status}"
                )
        return claim

    def take_sealed_key(self, agent_id: str) -> bytes | None:
        """Return a claimed registration's sealed key once, and mark it delivered."""
        with self._db.write() as conn:
            # The row lock makes concurrent callers wait and then see the key gone.
            row = conn.execute(
                sa.select(agent_claims.c.status, agent_claims.c.sealed_key)
                .where(agent_claims.c.agent_id == agent_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(f"agent {agent_id!r} has no registration")
            if row.status != ClaimStatus.CLAIMED.value or row.sealed_key is None:
                return None
            conn.execute(
                sa.update(agent_claims)
                .where(agent_claims.c.agent_id == agent_id)
                .values(sealed_key=None, status=ClaimStatus.DELIVERED.value)
            )
        return bytes(row.sealed_key)

    def expire_claims(self, now: datetime) -> int:
        with self._db.write() as conn:
            expired: int = conn.execute(
                sa.update(agent_claims)
                .where(
                    agent_claims.c.status == ClaimStatus.PENDING.value,
                    agent_claims.c.expires_at <= now,
                )
                .values(status=ClaimStatus.EXPIRED.value)
            ).rowcount
        return expired

    def _check_claim_machine(self, conn: Connection, claim: AgentClaim) -> None:
        if claim.machine_id is not None and not self._exists(
            conn, machines, machines.c.id == claim.machine_id
        ):
            raise NotFoundError(
                f"machine {claim.machine_id!r} of agent {claim.agent_id!r} not found"
            )

    # ------------------------------------------------------------------ audit log

    def add_audit(self, entry: AuditEntry) -> None:
        detail = _detail_json(entry)
        message = f"an audit entry with id {entry.id!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            if self._exists(conn, audit_log, audit_log.c.id == entry.id):
                raise ConflictError(message)
            conn.execute(
                sa.insert(audit_log).values(
                    id=entry.id,
                    at=entry.at,
                    action=entry.action,
                    actor_kind=entry.actor_kind,
                    actor_id=entry.actor_id,
                    target_type=entry.target_type,
                    target_id=entry.target_id,
                    client=entry.client,
                    detail=detail,
                    via=entry.via,
                )
            )

    def list_audit(
        self,
        *,
        action: str | None = None,
        actor_id: str | None = None,
        via: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        target_id: str | None = None,
        until: datetime | None = None,
        before: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first (entries of the same instant: the later added first)."""
        query = sa.select(audit_log)
        if before is not None:
            mark = (
                sa.select(audit_log.c.at, audit_log.c.seq)
                .where(audit_log.c.id == before)
                .subquery()
            )
            query = query.join(
                mark,
                sa.or_(
                    audit_log.c.at < mark.c.at,
                    sa.and_(audit_log.c.at == mark.c.at, audit_log.c.seq < mark.c.seq),
                ),
            )
        if target_id is not None:
            query = query.where(audit_log.c.target_id == target_id)
        if until is not None:
            query = query.where(audit_log.c.at < until)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        if actor_id is not None:
            query = query.where(audit_log.c.actor_id == actor_id)
        if via is not None:
            query = query.where(audit_log.c.via == via)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        query = query.order_by(audit_log.c.at.desc(), audit_log.c.seq.desc()).limit(max(0, limit))
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [_audit(row) for row in rows]

    # ------------------------------------------------------------------ agent configuration

    def get_agent_config(self, machine_id: str) -> AgentConfig | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(agent_configs).where(agent_configs.c.machine_id == machine_id)
            ).first()
        return None if row is None else _agent_config(row)

    def set_agent_config(self, config: AgentConfig) -> AgentConfig:
        """Store ``config``; its ``version`` is ignored and set to the stored one plus 1."""
        fields = {
            "interval_us": config.interval // _MICROSECOND,
            "collectors": json.dumps(list(config.collectors), separators=(",", ":")),
            "labels": labels_to_json(config.labels),
            "updated_at": config.updated_at,
        }
        insert = self._db.insert(agent_configs).values(
            machine_id=config.machine_id, version=1, **fields
        )
        # One statement, so concurrent updates each get their own version.
        upsert = insert.on_conflict_do_update(
            index_elements=[agent_configs.c.machine_id],
            set_={
                **{name: insert.excluded[name] for name in fields},
                "version": agent_configs.c.version + 1,
            },
        )
        message = f"machine {config.machine_id!r} was deleted while its agent config was set"
        with _conflicts(message), self._db.write() as conn:
            if not self._exists(conn, machines, machines.c.id == config.machine_id):
                raise NotFoundError(f"machine {config.machine_id!r} not found")
            conn.execute(upsert)
            version = conn.execute(
                sa.select(agent_configs.c.version).where(
                    agent_configs.c.machine_id == config.machine_id
                )
            ).scalar_one()
        return attrs.evolve(config, version=int(version))

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
