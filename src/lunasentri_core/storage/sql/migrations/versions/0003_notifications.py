"""Heartbeat and alerting: status changes, alert states, channels, the outbox, silences.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FLOAT = sa.Float(precision=53)


def upgrade() -> None:
    op.add_column("machines", sa.Column("offline_after_us", sa.BigInteger, nullable=True))
    op.add_column("alert_events", sa.Column("acknowledged_by", sa.Text, nullable=True))
    _status_changes()
    _alert_states()
    _channels()
    _outbox_events()
    _deliveries()
    _silences()


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def _status_changes() -> None:
    op.create_table(
        "status_changes",
        sa.Column("seq", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("previous", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("last_seen", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_status_changes"),
        sa.UniqueConstraint("id", name="uq_status_changes_id"),
        _fk("status_changes", "machine_id", "machines"),
    )
    op.create_index("ix_status_changes_machine_id_at", "status_changes", ["machine_id", "at"])


def _alert_states() -> None:
    op.create_table(
        "alert_states",
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False),
        sa.Column("value", _FLOAT, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "rule_id", "machine_id", "metric", "labels", name="pk_alert_states"
        ),
        _fk("alert_states", "rule_id", "alert_rules"),
        _fk("alert_states", "machine_id", "machines"),
    )
    op.create_index("ix_alert_states_machine_id", "alert_states", ["machine_id"])


def _channels() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.UniqueConstraint("owner_id", "name", name="uq_channels_owner_id_name"),
        _fk("channels", "owner_id", "users"),
    )


def _outbox_events() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("seq", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=True),
        sa.Column("machine_id", sa.Text, nullable=True),
        sa.Column("rule_id", sa.Text, nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("silence_id", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox_events"),
        sa.UniqueConstraint("id", name="uq_outbox_events_id"),
    )
    op.create_index("ix_outbox_events_owner_id", "outbox_events", ["owner_id"])
    op.create_index("ix_outbox_events_state_seq", "outbox_events", ["state", "seq"])


def _deliveries() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("channel_id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            name="fk_deliveries_event_id_outbox_events",
            ondelete="CASCADE",
        ),
        _fk("deliveries", "channel_id", "channels"),
    )
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"])
    op.create_index("ix_deliveries_channel_id", "deliveries", ["channel_id"])
    op.create_index("ix_deliveries_owner_id", "deliveries", ["owner_id"])
    op.create_index(
        "ix_deliveries_state_next_attempt_at", "deliveries", ["state", "next_attempt_at"]
    )


def _silences() -> None:
    op.create_table(
        "silences",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("starts_at", sa.BigInteger, nullable=False),
        sa.Column("ends_at", sa.BigInteger, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=True),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("rule_id", sa.Text, nullable=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("ended_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_silences"),
        _fk("silences", "owner_id", "users"),
    )
    op.create_index("ix_silences_owner_id", "silences", ["owner_id"])
    op.create_index("ix_silences_ended_at_ends_at", "silences", ["ended_at", "ends_at"])


def downgrade() -> None:
    for table in (
        "silences",
        "deliveries",
        "outbox_events",
        "channels",
        "alert_states",
        "status_changes",
    ):
        op.drop_table(table)
    # Plain DROP COLUMN (SQLite 3.35+): a batch copy would lose the machines table's
    # expression index, which SQLite cannot reflect.
    op.drop_column("alert_events", "acknowledged_by")
    op.drop_column("machines", "offline_after_us")
