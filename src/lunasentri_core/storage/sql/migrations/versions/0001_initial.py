"""Initial schema: series, head, chunks, latest values, users, machines, keys, alerts.

Revision ID: 0001
Revises:
Create Date: 2024-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLOAT = sa.Float(precision=53)


def upgrade() -> None:
    _metrics()
    _state()


def _metrics() -> None:
    meta = op.create_table(
        "storage_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_storage_meta"),
    )
    op.bulk_insert(meta, [{"key": "series_epoch", "value": 0}])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.UniqueConstraint(
            "machine_id", "metric", "labels", name="uq_series_machine_id_metric_labels"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "series_latest",
        sa.Column("series_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("value", _FLOAT, nullable=False),
        sa.PrimaryKeyConstraint("series_id", name="pk_series_latest"),
    )
    op.create_table(
        "points_head",
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("series_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("value", _FLOAT, nullable=False),
        sa.PrimaryKeyConstraint("ts", "series_id", name="pk_points_head"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "metric_chunks",
        sa.Column("series_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("chunk_start", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=True),
        sa.Column("minutes", sa.LargeBinary, nullable=True),
        sa.Column("hour_count", sa.Integer, nullable=True),
        sa.Column("hour_sum", _FLOAT, nullable=True),
        sa.Column("hour_min", _FLOAT, nullable=True),
        sa.Column("hour_max", _FLOAT, nullable=True),
        sa.Column("hour_last", _FLOAT, nullable=True),
        sa.PrimaryKeyConstraint("series_id", "chunk_start", name="pk_metric_chunks"),
    )
    op.create_index("ix_metric_chunks_chunk_start", "metric_chunks", ["chunk_start"])


def _state() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "machines",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=True),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_seen", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_machines"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_machines_owner_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_machines_owner_id", "machines", ["owner_id"])
    op.create_index(
        "uq_machines_owner_name",
        "machines",
        [sa.text("coalesce(owner_id, '')"), "name"],
        unique=True,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_api_keys_machine_id_machines",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_api_keys_machine_id", "api_keys", ["machine_id"])
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("comparison", sa.String(2), nullable=False),
        sa.Column("threshold", _FLOAT, nullable=False),
        sa.Column("for_duration_us", sa.BigInteger, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_rules"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_alert_rules_owner_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_alert_rules_owner_id", "alert_rules", ["owner_id"])
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("series_machine_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", _FLOAT, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert_events"),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name="fk_alert_events_rule_id_alert_rules",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_alert_events_machine_id_machines",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_alert_events_rule_id", "alert_events", ["rule_id"])
    op.create_index("ix_alert_events_machine_id_at", "alert_events", ["machine_id", "at"])


def downgrade() -> None:
    for table in (
        "alert_events",
        "alert_rules",
        "api_keys",
        "machines",
        "users",
        "metric_chunks",
        "points_head",
        "series_latest",
        "series",
        "storage_meta",
    ):
        op.drop_table(table)
