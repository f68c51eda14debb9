"""PostgreSQL (psycopg 3): a read transaction in as few round trips as it can go.

A read's ``BEGIN`` and ``COMMIT`` were round trips of their own (psycopg sends
``BEGIN`` and waits for it before the first statement; ``COMMIT`` at the end).
Here, on a connection of ``Database.read(own_begin=True)`` (the driver in
autocommit, no transaction open yet):

* :func:`begin_and_fetch` sends ``BEGIN ISOLATION LEVEL REPEATABLE READ`` (the
  isolation ``Database.read`` takes) with the read's first statement, in one
  pipeline; every later statement runs inside that transaction;
* :func:`fetch_and_commit` sends a read's last statement with the ``COMMIT``,
  in one pipeline: the block's own commit then has nothing left to do.

Both read their rows in binary format (``bytea`` as it is stored, no hex text
to make and parse). A failed statement aborts the rest of its pipeline; the
error is the SQLAlchemy exception the statement would have raised
(:func:`~.pgwrite.translated`), and the block's rollback ends the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import Connection

from lunasentri_core.storage.sql.pgwrite import driver_of, translated

BEGIN_READ: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ"


def must_begin(conn: Connection) -> bool:
    """Whether ``conn`` is an ``own_begin`` read whose transaction is not open yet:
    its next statement must go through :func:`begin_and_fetch`."""
    from psycopg import pq

    driver: Any = conn.connection.driver_connection
    return bool(
        getattr(driver, "autocommit", False)
        and driver.pgconn.transaction_status == pq.TransactionStatus.IDLE
    )


def begin_and_fetch(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Open the read transaction and run ``sql`` in it: one round trip, its rows."""
    driver = driver_of(conn)
    if not must_begin(conn):
        raise AssertionError("begin_and_fetch needs Database.read(own_begin=True), not begun")
    with translated(conn, sql):
        cursor = driver.cursor()
        try:
            with driver.pipeline():
                cursor.execute(BEGIN_READ)
                cursor.execute(sql, params, binary=True)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows
        finally:
            cursor.close()


def fetch_and_commit(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` and commit the read transaction: one round trip, its rows. No
    statement may follow in the block (it would run outside the snapshot)."""
    driver = driver_of(conn)
    with translated(conn, sql):
        cursor, ending = driver.cursor(), driver.cursor()
        try:
            with driver.pipeline():
                cursor.execute(sql, params, binary=True)
                # A statement, not driver.commit(): that one waits for a Sync of its own.
                ending.execute("COMMIT")
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows
        finally:
            cursor.close()
            ending.close()
