"""PostgreSQL: the latest values in a row per machine and range of series ids (``latest_values``).

Every write kept each series' newest point in a row of ``series_latest`` of its
own: 1,000 row updates for a batch of 20 machines of 50 series, the largest
part of a write's cost on the server. ``latest_values`` holds a machine's
series ids, timestamps and values as arrays, a row per range of 256 series ids
(``part``), merged newest-wins in one upsert per row
(:mod:`~lunasentri_core.storage.sql.latest`). This moves the rows of
``series_latest`` there (rows of series that no longer exist are left behind),
and ``series_latest`` stays, empty, on PostgreSQL. SQLite keeps
``series_latest`` (a row costs no round trip there): ``latest_values`` is
created empty, its array columns as blobs.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPTIONS = "fillfactor = 50, toast_tuple_target = 8160"
"""Half of each page free, so that a row's update can stay in its page (as
``series_latest``, migration 0011); and a machine's row kept whole in its page
up to about 8 KB (a part's 256 series take 6 KB) instead of compressed and moved
out past 2 KB (as chunk rows, migration 0012): it is rewritten by every write."""

PART_IDS = 256
"""``latest.PART_IDS`` when this was written (a migration keeps its own copy)."""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"

    def arrays(kind: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
        return postgresql.ARRAY(kind) if postgres else sa.LargeBinary()

    op.create_table(
        "latest_values",
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("series_ids", arrays(sa.Integer()), nullable=False),
        sa.Column("series_ts", arrays(sa.BigInteger()), nullable=False),
        sa.Column("series_values", arrays(postgresql.DOUBLE_PRECISION()), nullable=False),
        sa.Column("oldest", sa.BigInteger, nullable=False),
        sa.Column("newest", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "part", name="pk_latest_values"),
    )
    if not postgres:
        return
    op.execute(f"ALTER TABLE latest_values SET ({OPTIONS})")
    op.execute(
        "INSERT INTO latest_values"
        " (machine_id, part, series_ids, series_ts, series_values, oldest, newest)"
        f" SELECT s.machine_id, l.series_id / {PART_IDS},"
        " array_agg(l.series_id ORDER BY l.series_id),"
        " array_agg(l.ts ORDER BY l.series_id), array_agg(l.value ORDER BY l.series_id),"
        " min(l.ts), max(l.ts)"
        " FROM series_latest AS l JOIN series AS s ON s.id = l.series_id"
        " GROUP BY 1, 2"
    )
    op.execute("DELETE FROM series_latest")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "INSERT INTO series_latest (series_id, ts, value)"
            " SELECT u.series_id, u.ts, u.value FROM latest_values AS l,"
            " unnest(l.series_ids, l.series_ts, l.series_values) AS u(series_id, ts, value)"
            " ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, value = excluded.value"
            " WHERE excluded.ts > series_latest.ts"
        )
    op.drop_table("latest_values")
