"""Each machine's number of series: ``machine_series``, counted from ``series``.

The per-machine series limit is checked against this count instead of
counting (or loading) the machine's series on every write.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "machine_series",
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("series", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("machine_id", name="pk_machine_series"),
    )
    op.execute(
        "INSERT INTO machine_series (machine_id, series) "
        "SELECT machine_id, COUNT(*) FROM series GROUP BY machine_id"
    )


def downgrade() -> None:
    op.drop_table("machine_series")
