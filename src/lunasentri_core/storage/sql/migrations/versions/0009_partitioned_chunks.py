"""PostgreSQL: ``metric_chunks`` partitioned by range of ``chunk_start``, a BRIN index on it.

Only on PostgreSQL without the ``timescaledb`` extension (a TimescaleDB database
makes it a hypertable instead, which needs a plain table); SQLite is unchanged.
The existing rows are copied into the partitioned table: a partition per day
that has rows, plus today's and the ones kept ahead, and a DEFAULT partition
for whatever comes outside them (see ``partitions.py``). The primary key
``(series_id, chunk_start)`` holds the partition key, as PostgreSQL requires.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from lunasentri_core.storage.sql import partitions

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "metric_chunks_unpartitioned"
_COLUMNS = """
    series_id INTEGER NOT NULL,
    chunk_start BIGINT NOT NULL,
    raw BYTEA,
    minutes BYTEA,
    hour_count INTEGER,
    hour_sum DOUBLE PRECISION,
    hour_min DOUBLE PRECISION,
    hour_max DOUBLE PRECISION,
    hour_last DOUBLE PRECISION,
    CONSTRAINT pk_metric_chunks PRIMARY KEY (series_id, chunk_start)
"""


def _applies(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    installed = conn.execute(
        sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    ).first()
    return installed is None


def _set_aside(conn: Connection) -> None:
    # Index and constraint names are unique per schema: the old ones move aside too.
    conn.execute(sa.text(f"ALTER TABLE metric_chunks RENAME TO {_OLD}"))
    conn.execute(sa.text(f"ALTER TABLE {_OLD} RENAME CONSTRAINT pk_metric_chunks TO pk_{_OLD}"))
    conn.execute(sa.text(f"ALTER INDEX ix_metric_chunks_chunk_start RENAME TO ix_{_OLD}"))


def upgrade() -> None:
    conn = op.get_bind()
    if not _applies(conn):
        return
    _set_aside(conn)
    conn.execute(
        sa.text(f"CREATE TABLE metric_chunks ({_COLUMNS}) PARTITION BY RANGE (chunk_start)")
    )
    # Rows are written in time order (compaction moves hour after hour), so
    # block ranges track chunk_start closely; the expiry scans by range use it.
    conn.execute(
        sa.text(
            "CREATE INDEX ix_metric_chunks_chunk_start ON metric_chunks USING brin (chunk_start)"
        )
    )
    partitions.create_default_partition(conn)
    now_ms = int(time.time() * 1000)
    days = set(partitions.wanted_windows(now_ms, partitions.DEFAULT_AHEAD))
    days.update(
        int(w)
        for w in conn.execute(
            sa.text(
                f"SELECT DISTINCT chunk_start - chunk_start % {partitions.WIDTH_MS} "
                f"FROM {_OLD} WHERE chunk_start >= 0"
            )
        ).scalars()
    )
    for lo in sorted(days):
        partitions.create_partition(conn, lo, wait=True)
    conn.execute(sa.text(f"INSERT INTO metric_chunks SELECT * FROM {_OLD}"))
    conn.execute(sa.text(f"DROP TABLE {_OLD}"))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or not partitions.is_partitioned(conn):
        return
    _set_aside(conn)
    conn.execute(sa.text(f"CREATE TABLE metric_chunks ({_COLUMNS})"))
    conn.execute(
        sa.text("CREATE INDEX ix_metric_chunks_chunk_start ON metric_chunks (chunk_start)")
    )
    conn.execute(sa.text(f"INSERT INTO metric_chunks SELECT * FROM {_OLD}"))
    conn.execute(sa.text(f"DROP TABLE {_OLD}"))
