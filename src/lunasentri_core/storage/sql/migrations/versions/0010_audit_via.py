"""The audit log records which authenticator accepted each request (``via``).

Entries written before this migration have no ``via`` (NULL): which
authenticator accepted those requests was not kept.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch copy: the audit log can be long.
    op.add_column("audit_log", sa.Column("via", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("audit_log", "via")  # SQLite 3.35+
