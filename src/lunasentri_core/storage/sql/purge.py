"""Deleting server state that has served its purpose, in short transactions.

Each kind of record is purged in chunks: the keys of the next chunk are found
in a read transaction (which never blocks writers: WAL on SQLite, MVCC on
PostgreSQL), walking the table's primary key from where the last chunk ended,
and then deleted by key in a write transaction of their own that checks the
condition again. So the write lock is held for a few hundred key lookups at a
time, however large the backlog, and a record that changed in between (a
retried delivery, an acknowledged alert) is not deleted by a stale decision.
Several processes may purge at once: each record is deleted, and counted, once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lunasentri_core.model import AlertState, ClaimStatus, DeliveryState, EventState
from lunasentri_core.storage.protocols import PurgePolicy, PurgeReport
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.schema import (
    agent_claims,
    alert_events,
    alert_states,
    deliveries,
    login_failures,
    outbox_events,
    reset_tokens,
    sessions,
    silences,
    status_changes,
)
from lunasentri_core.storage.sql.vacuum import give_back

MAX_CHUNK = 500
"""Keys per chunk at most: they go into one ``IN (...)`` list, and the oldest
SQLite builds take 999 parameters per statement."""

_FINISHED = (
    DeliveryState.DELIVERED.value,
    DeliveryState.DEAD.value,
    DeliveryState.SKIPPED.value,
)

Delete = Callable[[Connection, sa.ColumnElement[bool]], int]
"""Deletes the rows of one chunk (given as a condition on its keys); returns how many."""


# --------------------------------------------------------------------------- conditions


def _session_ended(before: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(sessions.c.expires_at < before, sessions.c.revoked_at < before)


def _reset_token_ended(before: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(reset_tokens.c.expires_at < before, reset_tokens.c.used_at < before)


def _claim_ended(before: datetime) -> sa.ColumnElement[bool]:
    # A pending registration past its expiry is expired, marked so or not yet; a
    # claimed one still holds the sealed key its agent has not fetched.
    return sa.and_(
        agent_claims.c.status != ClaimStatus.CLAIMED.value,
        agent_claims.c.expires_at < before,
    )


def _event_handled(before: datetime) -> sa.ColumnElement[bool]:
    # Correlated explicitly: inside the DELETE FROM deliveries below, automatic
    # correlation would bind the subqueries' own ``deliveries`` to the outer one.
    unfinished = (
        sa.select(sa.literal(1))
        .select_from(deliveries)
        .where(deliveries.c.event_id == outbox_events.c.id, deliveries.c.state.not_in(_FINISHED))
        .correlate(outbox_events)
        .exists()
    )
    # An open silence re-notifies what it muted when it ends: its events are still needed.
    muting = (
        sa.select(sa.literal(1))
        .select_from(silences)
        .where(silences.c.id == outbox_events.c.silence_id, silences.c.ended_at.is_(None))
        .correlate(outbox_events)
        .exists()
    )
    return sa.and_(
        outbox_events.c.occurred_at < before,
        outbox_events.c.state != EventState.NEW.value,
        ~unfinished,
        ~muting,
    )


def _alert_event_closed(before: datetime) -> sa.ColumnElement[bool]:
    # The firing event of the series' current firing spell, not acknowledged yet,
    # is what someone still has to look at.
    firing_since = (
        sa.select(sa.literal(1))
        .select_from(alert_states)
        .where(
            alert_states.c.rule_id == alert_events.c.rule_id,
            alert_states.c.machine_id == alert_events.c.series_machine_id,
            alert_states.c.metric == alert_events.c.metric,
            alert_states.c.labels == alert_events.c.labels,
            alert_states.c.state == AlertState.FIRING.value,
            alert_states.c.since <= alert_events.c.at,
        )
        .correlate(alert_events)
        .exists()
    )
    still_open = sa.and_(
        alert_events.c.state == AlertState.FIRING.value,
        alert_events.c.acknowledged_at.is_(None),
        firing_since,
    )
    return sa.and_(alert_events.c.at < before, ~still_open)


# --------------------------------------------------------------------------- store


class SqlPurgeStore:
    """The housekeeping part of :class:`SqlStateStore` (a mixin sharing ``_db``)."""

    _db: Database

    def purge(self, now: datetime, policy: PurgePolicy) -> PurgeReport:
        size = min(policy.batch_size, MAX_CHUNK)
        ended = now - policy.grace
        events, event_deliveries = self._purge_outbox(now - policy.outbox, size)
        return PurgeReport(
            sessions=self._purge(sessions.c.id, _session_ended(ended), size),
            reset_tokens=self._purge(reset_tokens.c.id, _reset_token_ended(ended), size),
            login_failures=self._purge(
                login_failures.c.id, login_failures.c.at < ended - policy.login_window, size
            ),
            claims=self._purge(agent_claims.c.agent_id, _claim_ended(now - policy.claims), size),
            outbox_events=events,
            deliveries=event_deliveries,
            status_changes=self._purge(
                status_changes.c.seq, status_changes.c.at < now - policy.history, size
            ),
            alert_events=self._purge(
                alert_events.c.id, _alert_event_closed(now - policy.history), size
            ),
        )

    def _purge(self, key: sa.Column[Any], condition: sa.ColumnElement[bool], size: int) -> int:
        table = key.table

        def delete(conn: Connection, chunk: sa.ColumnElement[bool]) -> int:
            deleted: int = conn.execute(sa.delete(table).where(chunk, condition)).rowcount
            return deleted

        return self._in_chunks(key, condition, size, delete)

    def _purge_outbox(self, before: datetime, size: int) -> tuple[int, int]:
        """Delete handled events with their (finished) deliveries; returns both counts."""
        condition = _event_handled(before)
        removed = 0

        def delete(conn: Connection, chunk: sa.ColumnElement[bool]) -> int:
            nonlocal removed
            handled = sa.select(outbox_events.c.id).where(chunk, condition)
            removed += conn.execute(
                sa.delete(deliveries).where(
                    deliveries.c.event_id.in_(handled), deliveries.c.state.in_(_FINISHED)
                )
            ).rowcount
            # A delivery retried meanwhile survived the statement above and keeps its event.
            deleted: int = conn.execute(sa.delete(outbox_events).where(chunk, condition)).rowcount
            return deleted

        events = self._in_chunks(outbox_events.c.seq, condition, size, delete)
        return events, removed

    def _in_chunks(
        self, key: sa.Column[Any], condition: sa.ColumnElement[bool], size: int, delete: Delete
    ) -> int:
        """Find the keys matching ``condition`` chunk by chunk and ``delete`` each chunk."""
        deleted = 0
        after: Any = None
        while True:
            query = sa.select(key).where(condition).order_by(key).limit(size)
            if after is not None:
                query = query.where(key > after)
            with self._db.read() as conn:
                keys = list(conn.execute(query).scalars())
            if not keys:
                return deleted
            with self._db.write() as conn:
                deleted += delete(conn, key.in_(keys))
                give_back(conn)
            if len(keys) < size:
                return deleted
            after = keys[-1]
