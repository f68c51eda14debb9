"""Indexes for the machine list's keyset pages: (owner_id, name, id) and (name, id).

An owner's page (``WHERE owner_id = ? AND (name, id) > (?, ?) ORDER BY name, id
LIMIT ?``) and an administrator's page over everyone's machines each read just
the page from an index instead of sorting every machine.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_machines_owner_page", "machines", ["owner_id", "name", "id"])
    op.create_index("ix_machines_page", "machines", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_machines_page", table_name="machines")
    op.drop_index("ix_machines_owner_page", table_name="machines")
