"""Server state: sessions, reset tokens, login failures, agent claims, audit log, agent configs.

Revision ID: 0002
Revises: 0001
Create Date: 2024-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite assigns keys only to a column declared exactly ``INTEGER PRIMARY KEY``;
# elsewhere the key is 64-bit (the audit log is never trimmed).
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    _sessions()
    _reset_tokens()
    _login_failures()
    _agent_claims()
    _audit_log()
    _agent_configs()


def _sessions() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("client", sa.Text, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_sessions_token_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_sessions_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])


def _reset_tokens() -> None:
    op.create_table(
        "reset_tokens",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reset_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_reset_tokens_token_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_reset_tokens_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_reset_tokens_user_id", "reset_tokens", ["user_id"])


def _login_failures() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("client", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_username_at", "login_failures", ["username", "at"])


def _agent_claims() -> None:
    op.create_table(
        "agent_claims",
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("claim_token_hash", sa.Text, nullable=False),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("machine_id", sa.Text, nullable=True),
        sa.Column("sealed_key", sa.LargeBinary, nullable=True),
        sa.Column("client", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("agent_id", name="pk_agent_claims"),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_agent_claims_machine_id_machines",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_agent_claims_machine_id", "agent_claims", ["machine_id"])
    op.create_index("ix_agent_claims_status_expires_at", "agent_claims", ["status", "expires_at"])


def _audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.Text, nullable=True),
        sa.Column("target_type", sa.Text, nullable=True),
        sa.Column("target_id", sa.Text, nullable=True),
        sa.Column("client", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        sa.UniqueConstraint("id", name="uq_audit_log_id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"])
    op.create_index("ix_audit_log_actor_id_at", "audit_log", ["actor_id", "at"])


def _agent_configs() -> None:
    op.create_table(
        "agent_configs",
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("interval_us", sa.BigInteger, nullable=False),
        sa.Column("collectors", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("machine_id", name="pk_agent_configs"),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_agent_configs_machine_id_machines",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    for table in (
        "agent_configs",
        "audit_log",
        "agent_claims",
        "login_failures",
        "reset_tokens",
        "sessions",
    ):
        op.drop_table(table)
