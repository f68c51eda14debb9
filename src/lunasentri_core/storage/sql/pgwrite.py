"""PostgreSQL (psycopg 3): a metric write in as few round trips as it can go.

Each statement sent on its own waits for the server's answer before the next
goes, and costs psycopg and the server their work per message on top. A
write transaction took nine round trips: the pool's ping, ``BEGIN``, the series epoch, the head
rows' ``COPY`` (two), the latest values' ``UPDATE`` (and their upsert when a
series had none), the machines' ``last_seen``, ``COMMIT``, the watched-machines
look-up. Here:

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
from lunasentri_core.storage.sql.head import Columns
from lunasentri_core.storage.sql.schema import machines, series_latest
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

    One statement keeps each series' newest point in ``series_latest`` and
    advances the machines' ``last_seen``:

    * ``UPDATE ... FROM unnest(...)`` of the rows whose point is newer (one WAL
      record per row where an upsert writes two: see ``UpdateFirst`` in
      :mod:`.metrics`, which did this in one or two statements);
    * the newer-wins upsert of the rows that update left out (a series without
      a row yet, or a point not newer than the stored one, which it leaves
      alone): nearly always none;
    * ``last_seen`` of the machines heard from, never backwards.

    Rows go to the server in series-id and machine-id order, and the plans
    PostgreSQL 15 picks here (hash joins probed by those rows) lock them in
    that order, as the separate statements did. The plan decides, though: two
    writers sharing rows may deadlock in principle, and PostgreSQL then fails
    one of them whole (the metric store retries it).
    """

    def __init__(self, dialect: Dialect) -> None:
        quote = dialect.identifier_preparer
        latest = quote.format_table(series_latest)
        machine = quote.format_table(machines)
        self.sql: Final = (
            "WITH r AS MATERIALIZED (SELECT * FROM unnest("
            "%s::integer[], %s::bigint[], %s::double precision[]) AS u(series_id, ts, value)),"
            f" updated AS (UPDATE {latest} AS l SET ts = r.ts, value = r.value FROM r"
            " WHERE l.series_id = r.series_id AND r.ts > l.ts RETURNING l.series_id),"
            f" inserted AS (INSERT INTO {latest} (series_id, ts, value)"
            " SELECT series_id, ts, value FROM r"
            " WHERE series_id NOT IN (SELECT series_id FROM updated)"
            " ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, value = excluded.value"
            f" WHERE excluded.ts > {latest}.ts RETURNING 1),"
            f" seen AS (UPDATE {machine} AS m SET last_seen = s.at"
            " FROM unnest(%s::text[], %s::bigint[]) AS s(id, at)"
            " WHERE m.id = s.id AND (m.last_seen IS NULL OR m.last_seen < s.at) RETURNING 1)"
            " SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM inserted),"
            " (SELECT count(*) FROM seen)"
        )

    def run(
        self,
        conn: Connection,
        latest: Columns,
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
        params = (*_packed(latest), ids, ats)
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
        return Finished(int(row[0]), int(row[1]), int(row[2]), rows)


class Finished(NamedTuple):
    updated: int
    """Series whose newer point the ``UPDATE`` took."""
    upserted: int
    """Series the upsert took (new ones, nearly always)."""
    seen: int
    """Machines whose ``last_seen`` moved."""
    after: list[Any] | None
    """The first column of ``after``'s rows; ``None`` without it, or when it failed."""


def _packed(latest: Columns) -> tuple[Any, Any, Any]:
    sids, stamps, values = latest
    return (
        pgarrays.pack(pgarrays.Int4Array, sids) or list(sids),
        pgarrays.pack(pgarrays.Int8Array, stamps) or list(stamps),
        pgarrays.pack(pgarrays.Float8Array, values) or list(values),
    )
