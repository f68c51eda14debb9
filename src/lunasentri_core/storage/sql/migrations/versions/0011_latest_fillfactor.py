"""PostgreSQL: ``series_latest`` keeps half of each page free (``fillfactor = 50``).

Every write updates a row of ``series_latest`` per series it holds. With room
on the row's own page, PostgreSQL updates it in place (a HOT update: no new
primary key entry, and the old version is pruned as the page is next read);
pages filled to the brim (the default) sent about half of those updates to
another page, each with a new index entry. The table holds one small row per
series, so leaving half of its pages free costs little space. Rows written
before this migration move as they are updated; SQLite is unchanged.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 50


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE series_latest SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE series_latest RESET (fillfactor)")
