"""What a TimescaleDB database gets: ``metric_chunks`` as a hypertable.

In ``timescale`` mode, when the ``timescaledb`` extension is installed in the
database before the first migration (migration 0009 then leaves
``metric_chunks`` a plain table instead of partitioning it natively), the
backend's ``migrate()`` runs :func:`setup_statements` after the migrations:

* ``create_hypertable`` on ``chunk_start`` (integer milliseconds), with chunks
  as wide as the native partitions (a day), migrating existing rows;
* ``set_integer_now_func``: TimescaleDB's policies and ``show_chunks`` with an
  integer time column need to know what "now" is in its unit;
* no compression/columnstore policy: every ``raw`` and ``minutes`` value is
  already a zlib-packed block (``blocks.py``), so columnar compression of a
  chunk finds little left to gain, while it would turn the writes the store
  still makes to old chunks (late points merged in, blobs cleared as each
  resolution expires) into decompress-and-recompress work;
* no ``add_retention_policy``: the hub's maintenance knows the three
  retentions and calls :func:`drop_chunks_statement` with the horizon past
  which all of them have expired (the same rule as native partitions), so a
  change of ``[storage.retention]`` applies at the next pass, and nothing runs
  twice.

TimescaleDB is not installed where LunaSentri is tested: the tests check this
SQL against PostgreSQL with stand-in functions carrying TimescaleDB's signatures
(they parse and plan the calls; they are not an emulation).
"""

from __future__ import annotations

import logging
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lunasentri_core.storage.sql.database import LOCK_MAINTAIN, Database
from lunasentri_core.storage.sql.partitions import COLUMN, TABLE, WIDTH_MS, is_partitioned

log = logging.getLogger(__name__)

NOW_FUNCTION: Final = "lunasentri_now_ms"
"""The integer "now" of ``metric_chunks`` (milliseconds since the epoch)."""


def setup_statements() -> list[sa.TextClause]:
    """The DDL that makes ``metric_chunks`` a hypertable (idempotent)."""
    return [
        sa.text(
            f"CREATE OR REPLACE FUNCTION {NOW_FUNCTION}() RETURNS bigint "
            "LANGUAGE sql STABLE AS "
            "$$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$"
        ),
        sa.text(
            f"SELECT create_hypertable('{TABLE}', '{COLUMN}', "
            f"chunk_time_interval => {WIDTH_MS}::bigint, "
            "if_not_exists => TRUE, migrate_data => TRUE)"
        ),
        sa.text(
            f"SELECT set_integer_now_func('{TABLE}', '{NOW_FUNCTION}', replace_if_exists => TRUE)"
        ),
    ]


def drop_chunks_statement() -> sa.TextClause:
    """Drops the chunks entirely older than ``:horizon``; returns one row per chunk."""
    return sa.text(f"SELECT drop_chunks('{TABLE}', older_than => CAST(:horizon AS bigint))")


def is_hypertable(conn: Connection) -> bool:
    found = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = :table AND hypertable_schema = current_schema())"
        ),
        {"table": TABLE},
    ).scalar()
    return bool(found)


def make_hypertable(conn: Connection) -> bool:
    """Run the setup on a plain ``metric_chunks``; ``False`` (and nothing done) when
    it is natively partitioned already: the extension came after migration 0009."""
    if is_partitioned(conn):
        log.warning(
            "%s is natively partitioned (timescaledb was installed after it was "
            "migrated): it stays so; native partitions do the same job",
            TABLE,
        )
        return False
    for statement in setup_statements():
        conn.execute(statement)
    return True


class HypertableChunks:
    """:class:`~lunasentri_core.storage.sql.partitions.Partitioning` by TimescaleDB:
    it creates chunks as rows arrive, the hub's maintenance drops expired ones."""

    kind: Final = "hypertable"

    def __init__(self, db: Database) -> None:
        self._db = db

    def prepare(self, now_ms: int, floor_ms: int | None) -> int:
        return 0  # TimescaleDB creates a chunk when its first row arrives

    def settle(self, now_ms: int) -> int:
        return 0  # TimescaleDB's chunks: its own (compression, reorder policies)

    def drop_before(self, horizon_ms: int) -> int:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            dropped = conn.execute(drop_chunks_statement(), {"horizon": horizon_ms}).all()
        return len(dropped)

    def describe(self) -> dict[str, object] | None:
        with self._db.read() as conn:
            chunks = conn.execute(
                sa.text(
                    "SELECT count(*) FROM timescaledb_information.chunks "
                    "WHERE hypertable_name = :table AND hypertable_schema = current_schema()"
                ),
                {"table": TABLE},
            ).scalar()
        return {
            "kind": self.kind,
            "table": TABLE,
            "column": COLUMN,
            "width_hours": WIDTH_MS // 3_600_000,
            "ahead": 0,
            "partitions": int(chunks or 0),
        }
