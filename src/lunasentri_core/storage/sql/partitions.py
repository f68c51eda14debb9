"""Native range partitions of ``metric_chunks`` on PostgreSQL, by ``chunk_start``.

Migration 0009 turns ``metric_chunks`` into a table partitioned by range of
``chunk_start`` (a day of chunks per partition, :data:`WIDTH_MS`) with a
DEFAULT partition, on PostgreSQL without TimescaleDB; SQLite keeps its plain
table. Maintenance (under the ``LOCK_MAINTAIN`` advisory lock, one short
transaction per partition) then:

* creates the partitions of the current day and :attr:`NativePartitions.ahead`
  days after it, so compaction writes into a partition that already exists;
* moves rows that landed in the DEFAULT partition (points older than any
  partition, e.g. from ``lunasentri db copy``, or far in the future) into
  partitions of their own, for days not expired yet and not beyond the days
  kept ahead: a far-future timestamp stays in the DEFAULT partition rather
  than getting a partition of its own;
* drops, after detaching, every partition whose whole range is older than the
  horizon past which every resolution has expired; the partly expired edge
  partition and the DEFAULT partition keep the row-by-row path.

DDL takes a short ``lock_timeout``: a partition that cannot get its lock at
once (a long read holds the table) is left for the next pass instead of
queueing every later reader behind it. Inserts never depend on this work: a
row with no partition of its own lands in the DEFAULT partition.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Final, Protocol

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lunasentri_core.errors import StorageError
from lunasentri_core.storage.sql.database import LOCK_CHUNK_INDEXES, LOCK_MAINTAIN, Database
from lunasentri_core.storage.sql.points import CHUNK_MS
from lunasentri_core.storage.sql.schema import EPOCH

log = logging.getLogger(__name__)

TABLE: Final = "metric_chunks"
COLUMN: Final = "chunk_start"
DEFAULT_PARTITION: Final = f"{TABLE}_default"
WIDTH_MS: Final = 24 * CHUNK_MS
"""A day of hourly chunks per partition: a year is 365 partitions, few enough
for the planner to prune cheaply, and a partition of a busy fleet stays small
enough to drop at once."""
DEFAULT_AHEAD: Final = 3
"""Partitions created ahead of the current one."""
LOCK_TIMEOUT: Final = "2s"
ROW_OPTIONS: Final = "toast_tuple_target = 8160"
"""Every partition's storage parameters (a partitioned table has none of its own).

A chunk row is an hour of a series, 1-2.5 KB of already compressed blocks.
Past the default target of about 2 KB, PostgreSQL tries to compress its
blocks once more (in vain) and moves them into the TOAST table, with a
pointer, a chunk header and an index entry each; with the target near a page,
rows stay whole in their own page: 6 % fewer bytes on the benchmark's day
(migration 0012)."""
KEY_BYTES: Final = 32
"""Bytes of a primary key entry as a rebuild leaves it: a 24-byte index tuple of
``(series_id, chunk_start)`` and its line pointer, in leaves filled to 90 %."""
KEY_SLACK: Final = 1.15
"""An ended partition's primary key is rebuilt past this many times :data:`KEY_BYTES` a row.

Compaction inserts an hour of every series at a time, into every leaf of the
key: leaves split in halves and fill again together, 41-47 bytes a row at the
end of the benchmark's day (1,000 series; 35 with 3,000), 32 once rebuilt
(33-34 with a few hundred series: the upper levels weigh more)."""
SETTLE_AFTER_MS: Final = CHUNK_MS
"""How long after a partition's day ends its key may be rebuilt (its last hour compacted)."""
MOVE_PER_PASS: Final = 32
"""Partitions split off the DEFAULT partition per pass at most (bounded work)."""

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")
_NAME = re.compile(rf"^{TABLE}_(p\d{{8}}|default)$")

assert WIDTH_MS % CHUNK_MS == 0, "a chunk never straddles two partitions"


@attrs.frozen
class Partition:
    name: str
    lo: int
    """First ``chunk_start`` (ms) in it."""
    hi: int
    """First ``chunk_start`` past it."""


class Partitioning(Protocol):
    """How a PostgreSQL store splits ``metric_chunks`` by time (native or TimescaleDB)."""

    def prepare(self, now_ms: int, floor_ms: int | None) -> int:
        """Make room for the coming chunks; returns the partitions created."""
        ...

    def settle(self, now_ms: int) -> int:
        """Tidy partitions whose time has passed, after compaction; returns those tidied."""
        ...

    def drop_before(self, horizon_ms: int) -> int:
        """Drop whole partitions entirely older than ``horizon_ms``; returns their rows
        (a hypertable: its chunks, TimescaleDB does not count their rows)."""
        ...

    def describe(self) -> dict[str, object] | None:
        """Facts for ``/healthz/ready`` and ``lunasentri plugins --storage``; ``None``
        when the table is not partitioned."""
        ...


def window(ms: int) -> int:
    """The start of the partition holding ``chunk_start`` ``ms``."""
    return ms - ms % WIDTH_MS


def partition_name(lo: int) -> str:
    day = EPOCH + timedelta(milliseconds=lo)
    return f"{TABLE}_p{day:%Y%m%d}"


def is_partition_name(name: str) -> bool:
    """Whether ``name`` is one of the partitions this module makes (for schema comparisons)."""
    return _NAME.match(name) is not None


def is_partitioned(conn: Connection) -> bool:
    found = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table "
            "WHERE partrelid = to_regclass(:table))"
        ),
        {"table": TABLE},
    ).scalar()
    return bool(found)


def list_partitions(conn: Connection) -> list[Partition]:
    """The ranged partitions of ``metric_chunks``, oldest first (not the DEFAULT one)."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": TABLE},
    )
    out = []
    for name, bound in rows:
        found = _BOUND.search(bound or "")
        if found is not None:
            out.append(Partition(name, int(found[1]), int(found[2])))
    return sorted(out, key=lambda p: p.lo)


def create_partition(conn: Connection, lo: int, *, wait: bool = False) -> str:
    """Create the partition starting at ``lo``, taking over its rows from the DEFAULT one.

    The table is filled before it is attached: ``ATTACH`` only needs a SHARE
    UPDATE EXCLUSIVE lock on ``metric_chunks`` (``CREATE TABLE ... PARTITION
    OF`` would block its readers), and it checks the DEFAULT partition no
    longer holds rows of the range. ``wait``: no lock timeout (a migration).
    """
    name, hi = partition_name(lo), lo + WIDTH_MS
    if not wait:
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(
        sa.text(
            f'CREATE TABLE "{name}" (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
            f"WITH ({ROW_OPTIONS})"
        )
    )
    conn.execute(
        sa.text(
            f'WITH moved AS (DELETE FROM "{DEFAULT_PARTITION}" '
            f"WHERE {COLUMN} >= :lo AND {COLUMN} < :hi RETURNING *) "
            f'INSERT INTO "{name}" SELECT * FROM moved'
        ),
        {"lo": lo, "hi": hi},
    )
    conn.execute(
        sa.text(f'ALTER TABLE {TABLE} ATTACH PARTITION "{name}" FOR VALUES FROM ({lo}) TO ({hi})')
    )
    return name


def create_default_partition(conn: Connection) -> None:
    conn.execute(
        sa.text(
            f'CREATE TABLE "{DEFAULT_PARTITION}" PARTITION OF {TABLE} DEFAULT WITH ({ROW_OPTIONS})'
        )
    )


def drop_partition(conn: Connection, partition: Partition) -> int:
    """Detach and drop ``partition``; returns the rows it held."""
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    rows = int(conn.execute(sa.text(f'SELECT count(*) FROM "{partition.name}"')).scalar() or 0)
    conn.execute(sa.text(f'ALTER TABLE {TABLE} DETACH PARTITION "{partition.name}"'))
    conn.execute(sa.text(f'DROP TABLE "{partition.name}"'))
    return rows


def bloated_keys(conn: Connection, names: list[str]) -> list[str]:
    """The primary keys of partitions ``names`` past :data:`KEY_SLACK` (partitions never
    analyzed are analyzed first: their row count is not known before)."""
    query = sa.text(
        "SELECT c.relname, c.reltuples, i.indexrelid::regclass::text, "
        "pg_relation_size(i.indexrelid) FROM pg_class c "
        "JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
        "WHERE c.oid IN (SELECT to_regclass(n) FROM unnest(CAST(:names AS text[])) n)"
    )
    found = conn.execute(query, {"names": names}).all()
    unknown = [name for name, rows, *_ in found if rows < 0]
    for name in unknown:
        conn.execute(sa.text(f'ANALYZE "{name}"'))
    if unknown:
        found = conn.execute(query, {"names": names}).all()
    return [
        index
        for _, rows, index, size in found
        if rows >= 0 and size > KEY_SLACK * KEY_BYTES * rows + 2 * 8192
    ]


def rebuild_keys(conn: Connection, indexes: list[str]) -> int:
    """``REINDEX INDEX CONCURRENTLY`` each of ``indexes`` (``conn`` in autocommit): reads
    and writes go on meanwhile. One process at a time (an advisory lock, skipped when
    held); a copy left invalid by an interrupted rebuild is dropped first.

    A rebuild waits for the transactions older than it, a long read among them:
    past :data:`LOCK_TIMEOUT` it gives up (an error) and the next pass tries
    again, rather than holding up the maintenance pass."""
    locked = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (LOCK_CHUNK_INDEXES,))
    if not locked.scalar_one():
        return 0
    conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        invalid = conn.exec_driver_sql(
            "SELECT i.indexrelid::regclass::text FROM pg_index i "
            "JOIN pg_inherits h ON h.inhrelid = i.indrelid "
            "WHERE h.inhparent = to_regclass(%s) AND NOT i.indisvalid",
            (TABLE,),
        ).scalars()
        for name in list(invalid):
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        for index in indexes:
            conn.exec_driver_sql(f"REINDEX INDEX CONCURRENTLY {index}")
        return len(indexes)
    finally:
        conn.exec_driver_sql("RESET lock_timeout")
        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (LOCK_CHUNK_INDEXES,))


def wanted_windows(now_ms: int, ahead: int) -> list[int]:
    """The current partition's start and the ``ahead`` after it."""
    first = window(now_ms)
    return [first + k * WIDTH_MS for k in range(ahead + 1)]


def default_windows(conn: Connection, lo: int | None, hi: int, limit: int) -> list[int]:
    """Starts of partitions the DEFAULT partition holds rows of, from ``lo`` up to ``hi``."""
    found = conn.execute(
        sa.text(
            f"SELECT DISTINCT {COLUMN} - {COLUMN} % {WIDTH_MS} AS w "
            f'FROM "{DEFAULT_PARTITION}" WHERE {COLUMN} >= :lo AND {COLUMN} < :hi '
            "ORDER BY w LIMIT :limit"
        ),
        {"lo": max(0, lo or 0), "hi": hi, "limit": limit},
    )
    return [int(w) for w in found.scalars()]


class NativePartitions:
    """:class:`Partitioning` by PostgreSQL's declarative partitions (see the module doc)."""

    kind: Final = "native"

    def __init__(self, db: Database, ahead: int = DEFAULT_AHEAD) -> None:
        if ahead < 0:
            raise ValueError("ahead must not be negative")
        self._db = db
        self.ahead = ahead
        self._partitioned = False

    def active(self) -> bool:
        """Whether ``metric_chunks`` is natively partitioned. A yes is kept (only a
        downgrade undoes it); a no is asked again, since another process may
        migrate the database after this one opened it."""
        if not self._partitioned:
            with self._db.read() as conn:
                self._partitioned = is_partitioned(conn)
        return self._partitioned

    def forget(self) -> None:
        """Ask the catalog again next time (after a migration)."""
        self._partitioned = False

    def prepare(self, now_ms: int, floor_ms: int | None) -> int:
        if not self.active():
            return 0
        horizon = window(now_ms) + (self.ahead + 1) * WIDTH_MS
        with self._db.read() as conn:
            have = {p.lo for p in list_partitions(conn)}
            stray = default_windows(conn, floor_ms, horizon, MOVE_PER_PASS)
        missing = sorted((set(wanted_windows(now_ms, self.ahead)) | set(stray)) - have)
        created = 0
        for lo in missing:
            if floor_ms is not None and lo + WIDTH_MS <= floor_ms:
                continue  # expired as a whole: its rows go with the DEFAULT path
            try:
                with self._db.write(lock=LOCK_MAINTAIN) as conn:
                    create_partition(conn, lo)
                created += 1
            except StorageError as error:
                # Inserts still land in the DEFAULT partition: try again next pass.
                log.warning("cannot create partition %s yet: %s", partition_name(lo), error)
        return created

    def settle(self, now_ms: int) -> int:
        """Rebuild the primary key of each partition whose day ended :data:`SETTLE_AFTER_MS`
        ago, when it is larger than :data:`KEY_SLACK` times what a rebuild leaves: 0.017
        bytes a point less on the benchmark's day. A rebuilt key stays under the slack,
        so each is rebuilt once unless many late points arrive."""
        if not self.active():
            return 0
        with self._db.read() as conn:
            ended = [p.name for p in list_partitions(conn) if p.hi + SETTLE_AFTER_MS <= now_ms]
            bloated = bloated_keys(conn, ended) if ended else []
        if not bloated:
            return 0
        try:
            with self._db.errors(), self._db.engine.connect() as conn:
                # REINDEX CONCURRENTLY cannot run inside a transaction block.
                return rebuild_keys(conn.execution_options(isolation_level="AUTOCOMMIT"), bloated)
        except StorageError as error:
            log.warning("partition keys not rebuilt yet: %s", error)
            return 0

    def drop_before(self, horizon_ms: int) -> int:
        if not self.active():
            return 0
        with self._db.read() as conn:
            expired = [p for p in list_partitions(conn) if p.hi <= horizon_ms]
        rows = 0
        for partition in expired:
            with self._db.write(lock=LOCK_MAINTAIN) as conn:
                rows += drop_partition(conn, partition)
        return rows

    def describe(self) -> dict[str, object] | None:
        if not self.active():
            return None
        with self._db.read() as conn:
            partitions = list_partitions(conn)
        return {
            "kind": self.kind,
            "table": TABLE,
            "column": COLUMN,
            "width_hours": WIDTH_MS // 3_600_000,
            "ahead": self.ahead,
            "partitions": len(partitions),
            "newest_ends_ms": partitions[-1].hi if partitions else None,
        }
