"""PostgreSQL (psycopg 3): a metric write in as few round trips as it can go.

Each statement sent on its own waits for the server's answer before the next
goes, and costs psycopg and the server their work per message on top. A
write transaction took nine round trips: the pool's ping, ``BEGIN``, the
series epoch, the head rows' ``COPY`` (two), the latest values, the machines'
``last_seen``, ``COMMIT``, the watched-machines look-up. Here:

* ``BEGIN`` and the epoch's ``SELECT`` go together in one pipeline
  (:func:`begin_and_read`);
* the latest values and ``last_seen`` are one statement (:class:`FinishWrite`,
  data-modifying CTEs over arrays), sent with the ``COMMIT`` in one pipeline,
  and with the look-up of watched machines that must follow the commit;
* the pool's ping is skipped (``Database.write(ping=False)``): the first
  round trip finds a connection the server dropped, and the write is tried
  again on a pinged one.

A failed statement aborts the rest of its pipeline (the ``COMMIT`` with it):
the transaction rolls back whole, and the error is the SQLAlchemy exception the
statement would have raised outside a pipeline, so callers' handling (deadlock
retries, ``StorageUnavailable``) is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, NamedTuple

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect

from lunasentri_core.storage.sql import pgarrays
from lunasentri_core.storage.sql.head import Latest
from lunasentri_core.storage.sql.latest import MachineUpsert
from lunasentri_core.storage.sql.schema import machines
from lunasentri_core.storage.sql.seen import seen_columns

log = logging.getLogger(__name__)

DRIVER: Final = "psycopg"


def can_pipeline(dialect: Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == DRIVER


def driver_of(conn: Connection) -> Any:
    """The psycopg 3 connection under ``conn`` (inside its transaction)."""
    import psycopg  # only PostgreSQL installs have it

    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection), "a pipeline needs a psycopg 3 connection"
    return driver


@contextmanager
def translated(conn: Connection, sql: str) -> Iterator[None]:
    """Raise a psycopg error as the SQLAlchemy exception an ``execute`` would have,
    invalidating the connection when the server is gone (the pool must not reuse it)."""
    import psycopg

    try:
        yield
    except psycopg.Error as error:
        driver = conn.connection.driver_connection
        broken = bool(getattr(driver, "broken", False))
        if broken:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            sql, None, error, psycopg.Error, connection_invalidated=broken, dialect=conn.dialect
        ) from error


BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"


def begin_and_read(conn: Connection, sql: str, params: Sequence[Any]) -> Any:
    """Open the transaction and read the first column of the first row of ``sql``,
    in one round trip.

    psycopg sends its own ``BEGIN`` and waits for it even in a pipeline, so the
    connection must be in autocommit (``Database.write(own_begin=True)``): the
    ``BEGIN`` here opens the transaction on the server, every later statement
    runs inside it, and the caller's ``COMMIT`` or ``ROLLBACK`` ends it (psycopg
    sends either while the server reports a transaction open).
    """
    driver = driver_of(conn)
    if not driver.autocommit:
        raise AssertionError("begin_and_read needs Database.write(own_begin=True)")
    with translated(conn, sql):
        cursor = driver.cursor()
        try:
            with driver.pipeline():
                cursor.execute(BEGIN)
                cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
    return None if row is None else row[0]


class FinishWrite:
    """The rest of a write after its head rows, and its ``COMMIT``: one round trip.

    One statement keeps the latest values and advances the machines' ``last_seen``:

    * the upsert of the batch's machines' rows of ``latest_values``, each merged
      newest-wins (:class:`~.latest.MachineUpsert`), in (machine id, part) order;
    * ``last_seen`` of the machines heard from, never backwards, in machine-id
      order too.

    Two writers sharing machines lock their rows in the same order and wait for
    each other. The plan decides, though: should they deadlock, PostgreSQL fails
    one of them whole (the metric store retries it).
    """

    def __init__(self, dialect: Dialect) -> None:
        machine = dialect.identifier_preparer.format_table(machines)
        self.sql: Final = (
            f"WITH latest AS ({MachineUpsert(dialect).sql} RETURNING 1),"
            f" seen AS (UPDATE {machine} AS m SET last_seen = s.at"
            " FROM unnest(%s::text[], %s::bigint[]) AS s(id, at)"
            " WHERE m.id = s.id AND (m.last_seen IS NULL OR m.last_seen < s.at) RETURNING 1)"
            " SELECT (SELECT count(*) FROM latest), (SELECT count(*) FROM seen)"
        )

    def run(
        self,
        conn: Connection,
        latest: Latest,
        seen: Sequence[tuple[str, datetime]],
        *,
        after: tuple[str, Sequence[Any]] | None = None,
    ) -> Finished:
        """Keep the latest values and ``last_seen``, commit in the same round trip
        (the caller's commit then has nothing left to do), and run ``after`` (a
        query and its parameters) once committed, still in it.

        ``after`` failing does not fail the write, which is committed by then:
        :attr:`Finished.after` is then ``None`` (and a warning logged)."""
        import psycopg

        driver = driver_of(conn)
        if after is not None and not driver.autocommit:
            raise AssertionError("after needs Database.write(own_begin=True)")
        pgarrays.ensure_registered(driver)
        ids, ats = seen_columns(conn.dialect, seen)
        params = (*MachineUpsert.parameters(latest, packed=True), ids, ats)
        cursor, ending, then = driver.cursor(), driver.cursor(), driver.cursor()
        try:
            with translated(conn, self.sql):
                try:
                    with driver.pipeline():
                        cursor.execute(self.sql, params)
                        # A statement, not driver.commit(): that one waits for a Sync
                        # of its own. In autocommit (own_begin) ``after`` then runs in
                        # a transaction of its own, after the commit, on the server.
                        ending.execute("COMMIT")
                        if after is not None:
                            then.execute(*after)
                except psycopg.Error as error:
                    if after is None or ending.statusmessage != "COMMIT" or driver.broken:
                        raise
                    log.warning("a query after a committed write failed: %s", error)
                    after = None
            row = cursor.fetchone()
            rows = None if after is None else [found[0] for found in then.fetchall()]
        finally:
            for each in (cursor, ending, then):
                each.close()
        return Finished(int(row[0]), int(row[1]), rows)


class Finished(NamedTuple):
    latest: int
    """Machines whose row of latest values was written."""
    seen: int
    """Machines whose ``last_seen`` moved."""
    after: list[Any] | None
    """The first column of ``after``'s rows; ``None`` without it, or when it failed."""
