"""Giving a SQLite file's free pages back to the file system.

Compaction deletes every head row it moves into chunks, and retention deletes
whole chunks: SQLite keeps the pages they held as free pages inside the file,
and a file that is never vacuumed ends up about half free pages. So the file
uses ``auto_vacuum = INCREMENTAL`` (every connection asks for it: it takes
effect when the file's first table is created) and maintenance hands the free
pages back with ``PRAGMA incremental_vacuum``, :data:`RECLAIM_STEP` pages per
write transaction, so ingest gets the write lock between steps.

A file created before this (``auto_vacuum = NONE``) is converted once, when it
is migrated: ``VACUUM`` rewrites the whole file, so the log says so first,
with its size.

PostgreSQL's autovacuum makes deleted rows' space reusable in time, but only
gives pages back to the file system when a table's last pages are empty, and
visits a table a minute or more after the fact. After a compaction pass that
moved points out of the head (the current hour's rewrite every few minutes, a
backlog, the end of an hour), :func:`vacuum_head` runs a plain ``VACUUM`` of
``samples_head`` at once: the emptied tail of the table goes back to the file
system (an emptied head shrinks to nothing), the rest is reusable by the next
inserts; and
when the head's indexes kept a backlog's size over a table that no longer
holds it, they are rebuilt (``REINDEX CONCURRENTLY``). Neither takes a lock
that blocks ingest; plain ``VACUUM`` skips truncating while another session
waits for the table.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Final

from sqlalchemy.engine import Connection

from lunasentri_core.errors import StorageError
from lunasentri_core.storage.sql.database import LOCK_HEAD_INDEXES, Database

log = logging.getLogger(__name__)

INCREMENTAL: Final = 2
"""``PRAGMA auto_vacuum``'s answer for INCREMENTAL (0 is NONE, 1 FULL)."""
RECLAIM_STEP: Final = 1024
"""Free pages given back per write transaction (4 MiB of 4 KiB pages, a few tens
of milliseconds of holding the write lock)."""
IN_TRANSACTION: Final = 4096
"""Free pages given back at most at the end of a write transaction that freed
them (about 50 us a page on a loaded 2-core machine: 0.2 s at most)."""
VACUUM_MIB_PER_SECOND: Final = 50
"""A cautious rate for the log's estimate of a conversion's duration."""
HEAD_INDEX_SLACK: Final = 16 * 2**20
"""Bytes the head's indexes may grow past twice its table before they are rebuilt."""
HEAD_VACUUM_POINTS: Final = 1_000
"""Points a PostgreSQL compaction pass moves out of the head before it vacuums the
head table itself (about 20 rows of 50 readings; fewer are left to autovacuum).

Low on purpose: every rewrite of the current hour (each
``OPEN_CHUNK_EVERY_MS``) empties the head of nearly all it holds, and until
a VACUUM the emptied pages stay in the file as dead rows, up to a third of
the schema in the soak benchmark (``bench_pg_soak.py``). Vacuuming a table
of a few minutes of samples takes milliseconds."""


def _pragma(conn: Any, name: str) -> int:
    value: int = conn.execute(f"PRAGMA {name}").fetchone()[0]
    return value


def file_pages(db: Database) -> tuple[int, int, int]:
    """``(page_size, page_count, freelist_count)`` of a SQLite database."""
    with db.driver_connection() as conn:
        return tuple(  # type: ignore[return-value]
            _pragma(conn, name) for name in ("page_size", "page_count", "freelist_count")
        )


def is_incremental(db: Database) -> bool:
    with db.driver_connection() as conn:
        return _pragma(conn, "auto_vacuum") == INCREMENTAL


def convert(db: Database) -> bool:
    """Switch a SQLite file to incremental auto-vacuum with a one-time ``VACUUM``.

    Returns whether it converted. A failure (another process holds the file, a
    full disk) is logged and leaves the file as it was, to be tried again at the
    next migration: the server works the same, only its file keeps its free pages.
    """
    if not db.is_sqlite:
        return False
    with db.driver_connection() as conn:
        if _pragma(conn, "auto_vacuum") == INCREMENTAL:
            return False
        before = _pragma(conn, "page_count") * _pragma(conn, "page_size")
        mib = before / 2**20
        log.warning(
            "%s: converting the database file to incremental auto-vacuum, once: VACUUM "
            "rewrites all %.1f MiB of it (needs as much free disk space; about %.0f s)",
            db.label,
            mib,
            max(1.0, mib / VACUUM_MIB_PER_SECOND),
        )
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            # VACUUM wrote the whole file into the WAL: give that space back too.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            log.warning(
                "%s: could not convert the file to incremental auto-vacuum (%s); it keeps "
                "its free pages and the next migration tries again",
                db.label,
                error,
            )
            return False
        after = _pragma(conn, "page_count") * _pragma(conn, "page_size")
    log.info(
        "%s: converted to incremental auto-vacuum in %.1f s: %.1f MiB before, %.1f MiB after",
        db.label,
        time.perf_counter() - started,
        mib,
        after / 2**20,
    )
    return True


def give_back(conn: Connection, limit: int = IN_TRANSACTION) -> int:
    """Give back up to ``limit`` free pages inside the caller's write transaction.

    Called at the end of the transactions that delete much (compaction,
    retention, purges, deleted machines): other connections then never see the
    file with the pages that transaction freed, and the work is in proportion
    to what the transaction did. Returns how many pages went.
    """
    if conn.dialect.name != "sqlite":
        return 0
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if _pragma(cursor, "auto_vacuum") != INCREMENTAL:
            return 0
        pages = min(_pragma(cursor, "freelist_count"), limit)
        # The driver steps a statement once, and each step moves one page:
        # executescript would step it through, but commits the transaction first.
        for _ in range(pages):
            cursor.execute("PRAGMA incremental_vacuum(1)")
        return pages
    finally:
        cursor.close()


def reclaim(db: Database, step: int = RECLAIM_STEP) -> int:
    """Give the file's free pages back, ``step`` pages per write transaction.

    Returns how many pages went. Stops early, without failing, when another
    writer keeps the file locked past ``busy_timeout``: the next pass goes on.
    Does nothing on PostgreSQL, or in a file not converted yet.
    """
    if not db.is_sqlite:
        return 0
    freed = _reclaim_steps(db, step)
    if freed:
        # In WAL mode the file shrinks when a checkpoint has copied every page
        # back: now, rather than whenever the WAL next fills up. PASSIVE waits
        # for no one; a reader's old snapshot only delays it.
        with db.driver_connection() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return freed


def _reclaim_steps(db: Database, step: int) -> int:
    freed = 0
    while True:
        with db.driver_connection() as conn:
            if _pragma(conn, "auto_vacuum") != INCREMENTAL:
                return freed
            free = _pragma(conn, "freelist_count")
            if not free:
                return freed
            try:
                # executescript steps the pragma to completion (execute frees one page).
                conn.executescript(
                    f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({min(free, step)}); COMMIT;"
                )
            except sqlite3.OperationalError as error:
                if conn.in_transaction:
                    conn.rollback()
                log.info("%s: free pages left for the next pass: %s", db.label, error)
                return freed
            left = _pragma(conn, "freelist_count")
        if left >= free:
            return freed  # another writer freed pages meanwhile as fast: next pass
        freed += free - left


def vacuum_head(db: Database, compacted_points: int) -> int:
    """PostgreSQL: ``VACUUM samples_head`` after a pass that moved at least
    :data:`HEAD_VACUUM_POINTS` points out of it, and its indexes rebuilt when
    they outgrew it (:func:`_rebuild_head_indexes`); returns the pages given back
    to the file system. Nothing on SQLite (see :func:`give_back`), or below that."""
    if not db.is_postgres or compacted_points < HEAD_VACUUM_POINTS:
        return 0
    try:
        with db.errors(), db.engine.connect() as conn:
            # VACUUM and REINDEX CONCURRENTLY cannot run inside a transaction block.
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            before = _head_pages(conn)
            conn.exec_driver_sql("VACUUM samples_head")
            _rebuild_head_indexes(conn)
            return max(0, before - _head_pages(conn))
    except StorageError as error:
        # The pass's points are committed; autovacuum and the next pass do the rest.
        log.warning("%s: samples_head was not vacuumed: %s", db.label, error)
        return 0


def _head_pages(conn: Connection) -> int:
    """Pages of ``samples_head`` with its indexes."""
    found = conn.exec_driver_sql(
        "SELECT pg_total_relation_size('samples_head') / current_setting('block_size')::int"
    ).scalar_one()
    return int(found)


def _rebuild_head_indexes(conn: Connection) -> None:
    """``REINDEX TABLE CONCURRENTLY samples_head`` when its indexes are larger than
    twice the table and :data:`HEAD_INDEX_SLACK` more.

    A B-tree reuses the pages its deleted entries emptied but never gives them
    back: after a backlog the head's indexes kept the size of the whole
    backlog (3 bytes a point of the benchmark's day) over an empty table. The
    rebuild blocks no reads or writes; one process does it at a time (an
    advisory lock, skipped when held), and an index left invalid by a rebuild
    that was interrupted (a statement timeout, a crash) is dropped first.
    """
    table, indexes = conn.exec_driver_sql(
        "SELECT pg_relation_size('samples_head'), pg_indexes_size('samples_head')"
    ).one()
    if indexes <= 2 * table + HEAD_INDEX_SLACK:
        return
    locked = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (LOCK_HEAD_INDEXES,))
    if not locked.scalar_one():
        return
    try:
        invalid = conn.exec_driver_sql(
            "SELECT indexrelid::regclass::text FROM pg_index "
            "WHERE indrelid = 'samples_head'::regclass AND NOT indisvalid"
        ).scalars()
        for name in list(invalid):
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        conn.exec_driver_sql("REINDEX TABLE CONCURRENTLY samples_head")
    finally:
        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (LOCK_HEAD_INDEXES,))
