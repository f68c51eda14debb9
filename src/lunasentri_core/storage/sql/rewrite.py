"""PostgreSQL: rewriting small tables whose file is mostly room their rows no longer use.

An updated or deleted row's old version becomes free space inside its table
after a VACUUM, reusable only by that table's later rows; the file shrinks only
when its last pages empty. Two tables of the metric store churn that way:

* the ``metric_chunks`` partition being written (the open hour's chunks are
  written again every few minutes, an ended hour's are written anew) and the
  partitions retention clears resolution by resolution (raw points, then
  minute rollups): their files keep their largest size while the live data
  shrinks. Only dropping or rewriting a partition gives that space back;
* ``latest_values``, updated by every write: an update stays in its page
  (HOT) only when the previous version can be pruned, and a write's own
  snapshot keeps every version newer than the oldest transaction running in
  the cluster (another database's too) when it began; under load the
  updates extend the table.

After a pass, maintenance measures ``latest_values`` and the partitions the
pass wrote or expired rows in (:func:`measure`: a scan of the table's rows, no
extension needed). A table whose file is larger than its live rows need (at
its fillfactor) by more than :data:`WASTE` and :data:`MIN_WASTE_BYTES` gets a
plain ``VACUUM`` and, if that left it as bloated, ``VACUUM FULL``
(:func:`rewrite_bloated`). ``VACUUM FULL`` keeps every row version a snapshot
may still see, so readers stay correct, but for the same reason copies the
dead versions while an old transaction runs anywhere in the cluster: the
plain ``VACUUM``, which leaves itself out, removes them first. ``VACUUM
FULL`` holds an ACCESS EXCLUSIVE lock on that one table (a partition, not
``metric_chunks`` as a whole) while it copies the rows and rebuilds the
indexes, so only tables up to :data:`MAX_BYTES` are rewritten, and both wait
at most :data:`LOCK_TIMEOUT` for their lock; a table they cannot lock is
tried again when a later pass writes to it (the current partition every few
minutes, ``latest_values`` every pass). One process rewrites a schema's tables
at a time (a session advisory lock of the schema, skipped when held).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

import attrs
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from lunasentri_core.errors import StorageError
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.singleton import lock_key

log = logging.getLogger(__name__)

WASTE: Final = 0.1
"""Share of a table's file past what its live rows need (at its fillfactor) that
makes it worth rewriting."""
MIN_WASTE_BYTES: Final = 64 * 1024
"""Bytes of waste below which a table is left alone (a few pages)."""
MAX_BYTES: Final = 32 * 2**20
"""Largest table rewritten: ``VACUUM FULL`` blocks its readers (and writers) while it
runs: 48 ms for a 5 MiB table of chunk rows, 0.79 s for 29 MiB, on the 2-core
development machine at load average 7. A partition past it keeps its free
space (a copy swapped in under a brief lock would be the way there)."""
LOCK_TIMEOUT: Final = "500ms"
"""How long ``VACUUM`` and ``VACUUM FULL`` wait for their lock before giving up until a
later pass (statements that need the table meanwhile queue behind them)."""
PAGE: Final = 8192
LOCK_NAME: Final = "rewrite"
"""The job name of the advisory lock rewrites take (one per schema,
:func:`~.singleton.lock_key`)."""
LINE_POINTER: Final = 4
"""Bytes of a row's item pointer in its page, not counted by ``pg_column_size``."""


@attrs.frozen
class Measure:
    table: str
    size: int
    """Bytes of the table's file and its TOAST table (not its indexes)."""
    live: int
    """Bytes its live rows take (headers, data, item pointers)."""
    fillfactor: int

    @property
    def needed(self) -> int:
        """Bytes the live rows need at the table's fillfactor."""
        return self.live * 100 // self.fillfactor

    @property
    def bloated(self) -> bool:
        waste = self.size - self.needed
        return waste > MIN_WASTE_BYTES and waste > WASTE * self.size


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'


def table_size(conn: Connection, table: str) -> int:
    found = conn.exec_driver_sql(
        "SELECT pg_table_size(to_regclass(%s))", (_quoted(table),)
    ).scalar()
    return int(found or 0)


def measure(conn: Connection, table: str) -> Measure:
    """The table's size, and what its live rows take, from a scan of its rows."""
    size = table_size(conn, table)
    live = conn.exec_driver_sql(
        f"SELECT coalesce(sum(pg_column_size(t.*) + {LINE_POINTER}), 0) FROM {_quoted(table)} t"
    ).scalar_one()
    options = conn.exec_driver_sql(
        "SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (_quoted(table),)
    ).scalar()
    fillfactor = 100
    for option in options or ():
        key, _, value = option.partition("=")
        if key == "fillfactor":
            fillfactor = int(value)
    return Measure(table, size, int(live), fillfactor)


def rewrite_bloated(db: Database, tables: Iterable[str]) -> int:
    """``VACUUM FULL`` each of ``tables`` that is bloated and small enough; returns the
    pages given back. Nothing on SQLite, or when another process is rewriting."""
    if not db.is_postgres:
        return 0
    try:
        with db.errors(), db.engine.connect() as conn:
            # VACUUM cannot run inside a transaction block.
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            key = lock_key(LOCK_NAME, conn.exec_driver_sql("SELECT current_schema()").scalar_one())
            if not conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s, %s)", key).scalar_one():
                return 0
            try:
                return sum(_rewrite_if_bloated(conn, table) for table in dict.fromkeys(tables))
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s, %s)", key)
    except StorageError as error:
        # What was compacted is committed; a later pass measures again.
        log.warning("%s: tables not rewritten: %s", db.label, error)
        return 0


def _rewrite_if_bloated(conn: Connection, table: str) -> int:
    size = table_size(conn, table)
    if size > MAX_BYTES or size <= MIN_WASTE_BYTES:
        return 0
    found = measure(conn, table)
    if not found.bloated:
        return 0
    conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        _vacuum(conn, found)
    except exc.OperationalError as error:
        # A lock timeout: a long read (or another VACUUM) holds the table.
        log.info("%s not rewritten this pass: %s", table, str(error.orig).strip())
    finally:
        conn.exec_driver_sql("RESET lock_timeout")
    return max(0, (size - table_size(conn, table)) // PAGE)


def _vacuum(conn: Connection, found: Measure) -> None:
    """A plain ``VACUUM``, then ``VACUUM FULL`` if the table is still bloated."""
    # VACUUM FULL copies every row version some snapshot might still need, and
    # its own snapshot counts: while any transaction of the cluster (another
    # database's too) is older than the dead versions, it copies them all and
    # can even grow the table. A plain VACUUM (which leaves itself out) first
    # removes them, and may give back an emptied tail.
    conn.exec_driver_sql(f"VACUUM {_quoted(found.table)}")
    if attrs.evolve(found, size=table_size(conn, found.table)).bloated:
        conn.exec_driver_sql(f"VACUUM (FULL) {_quoted(found.table)}")
