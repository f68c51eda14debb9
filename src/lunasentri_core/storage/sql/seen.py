"""Machines' ``last_seen``, advanced inside whatever write transaction is open.

The ingest writer stores a batch's points and advances its machines'
``last_seen`` in one transaction (one commit instead of two), so both the
metric store and the state store write it, through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from lunasentri_core.storage.sql.database import Database, Statement
from lunasentri_core.storage.sql.schema import UtcMicros, machines

_MICROS = UtcMicros()


def touch_statement(db: Database) -> Statement:
    """``last_seen = at`` for one machine, never backwards (compiled once per store)."""
    stmt = db.statement(
        sa.update(machines)
        .where(
            machines.c.id == sa.bindparam("mid"),
            sa.or_(
                machines.c.last_seen.is_(None),
                machines.c.last_seen < sa.bindparam("before", type_=sa.BigInteger),
            ),
        )
        .values(last_seen=sa.bindparam("at", type_=sa.BigInteger))
    )
    if stmt.names != ("at", "mid", "before"):
        raise AssertionError(f"unexpected parameter order: {stmt.sql}")
    return stmt


def touch(conn: Connection, stmt: Statement, seen: Sequence[tuple[str, datetime]]) -> None:
    """Advance ``last_seen`` of each ``(machine_id, at)``; the latest ``at`` of a machine wins.

    Machines are updated in id order, so concurrent transactions (PostgreSQL)
    take their row locks in one order and wait rather than deadlock.
    """
    ids, ats = seen_columns(conn.dialect, seen)
    stmt.many(conn, list(zip(ats, ids, ats, strict=True)))


def seen_columns(
    dialect: Dialect, seen: Sequence[tuple[str, datetime]]
) -> tuple[list[str], list[int]]:
    """Machine ids in order and each one's latest ``at`` (as the column stores it)."""
    latest: dict[str, datetime] = {}
    for machine_id, at in seen:
        if machine_id not in latest or at > latest[machine_id]:
            latest[machine_id] = at
    ids = sorted(latest)
    ats: list[int] = []
    for machine_id in ids:
        # The column's own conversion (the raw statements skip SQLAlchemy's).
        micros = _MICROS.process_bind_param(latest[machine_id], dialect)
        assert micros is not None, "a datetime converts to a number"
        ats.append(micros)
    return ids, ats
