"""PostgreSQL: chunk rows stay whole in their table pages (``toast_tuple_target = 8160``).

A ``metric_chunks`` row holds an hour of one series as compressed blocks,
1-2.5 KB. Past the default target (about 2 KB) PostgreSQL compressed them
again, in vain, and moved them to the TOAST table, each with a pointer, a
chunk header and an index entry; with the target near a page they stay in the
row. Set on every partition (a partitioned table takes no storage parameters;
partitions made later get it when created, see
:data:`~lunasentri_core.storage.sql.partitions.ROW_OPTIONS`), or on the table
where it is not partitioned. Rows written before keep their layout until they
are rewritten. With the ``timescaledb`` extension installed nothing changes:
its chunks are its own.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from lunasentri_core.storage.sql import partitions

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tables(conn: Connection) -> list[str]:
    """The tables that hold chunk rows: the partitions, or the table itself."""
    if conn.dialect.name != "postgresql":
        return []
    timescale = conn.execute(
        sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    ).first()
    if timescale is not None:
        return []
    if not partitions.is_partitioned(conn):
        return [partitions.TABLE]
    found = [p.name for p in partitions.list_partitions(conn)]
    exists = conn.execute(
        sa.text("SELECT to_regclass(:name)"), {"name": partitions.DEFAULT_PARTITION}
    )
    if exists.scalar() is not None:
        found.append(partitions.DEFAULT_PARTITION)
    return found


def upgrade() -> None:
    conn = op.get_bind()
    for table in _tables(conn):
        conn.execute(sa.text(f'ALTER TABLE "{table}" SET ({partitions.ROW_OPTIONS})'))


def downgrade() -> None:
    conn = op.get_bind()
    for table in _tables(conn):
        conn.execute(sa.text(f'ALTER TABLE "{table}" RESET (toast_tuple_target)'))
