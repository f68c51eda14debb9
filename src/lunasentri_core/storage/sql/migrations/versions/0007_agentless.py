"""Agentless monitoring: credential profiles, discovery profiles and runs, devices, monitors.

Who uses what is held by foreign keys without cascade (``RESTRICT``): a
credential profile used by a monitor or a discovery profile, a device used by a
monitor and a machine that monitors write to cannot be deleted behind the
store's back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _credential_profiles()
    _discovery_profiles()
    _discovery_runs()
    _devices()
    _monitors()


def downgrade() -> None:
    for table in (
        "monitors",
        "devices",
        "discovery_runs",
        "discovery_profiles",
        "credential_profiles",
    ):
        op.drop_table(table)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def _credential_profiles() -> None:
    op.create_table(
        "credential_profiles",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("username", sa.Text, nullable=True),
        sa.Column("domain", sa.Text, nullable=True),
        sa.Column("https", sa.Boolean, nullable=False),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("verify_tls", sa.Boolean, nullable=False),
        sa.Column("ca_path", sa.Text, nullable=True),
        sa.Column("cert_path", sa.Text, nullable=True),
        sa.Column("key_path", sa.Text, nullable=True),
        sa.Column("secret", sa.Text, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credential_profiles"),
        sa.UniqueConstraint("owner_id", "name", name="uq_credential_profiles_owner_id_name"),
        _fk("credential_profiles", "owner_id", "users", "CASCADE"),
    )


def _discovery_profiles() -> None:
    op.create_table(
        "discovery_profiles",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("targets", sa.Text, nullable=False),
        sa.Column("credential_profile_id", sa.Text, nullable=True),
        sa.Column("ports", sa.Text, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("timeout_us", sa.BigInteger, nullable=False),
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_discovery_profiles"),
        sa.UniqueConstraint("owner_id", "name", name="uq_discovery_profiles_owner_id_name"),
        _fk("discovery_profiles", "owner_id", "users", "CASCADE"),
        _fk("discovery_profiles", "credential_profile_id", "credential_profiles", "RESTRICT"),
    )
    _index("discovery_profiles", "credential_profile_id")


def _discovery_runs() -> None:
    op.create_table(
        "discovery_runs",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("scanned", sa.Integer, nullable=False),
        sa.Column("found", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_discovery_runs"),
        _fk("discovery_runs", "profile_id", "discovery_profiles", "CASCADE"),
        _fk("discovery_runs", "owner_id", "users", "CASCADE"),
    )
    _index("discovery_runs", "owner_id")
    _index("discovery_runs", "profile_id", "started_at")
    _index("discovery_runs", "state", "updated_at")


def _devices() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("os", sa.Text, nullable=True),
        sa.Column("os_version", sa.Text, nullable=True),
        sa.Column("open_ports", sa.Text, nullable=False),
        sa.Column("credential_ok", sa.Boolean, nullable=True),
        sa.Column("credential_error", sa.Text, nullable=True),
        sa.Column("credential_profile_id", sa.Text, nullable=True),
        sa.Column("discovery_profile_id", sa.Text, nullable=True),
        sa.Column("machine_id", sa.Text, nullable=True),
        sa.Column("first_seen", sa.BigInteger, nullable=False),
        sa.Column("last_seen", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("owner_id", "address", name="uq_devices_owner_id_address"),
        _fk("devices", "owner_id", "users", "CASCADE"),
        _fk("devices", "credential_profile_id", "credential_profiles", "SET NULL"),
        _fk("devices", "discovery_profile_id", "discovery_profiles", "SET NULL"),
        _fk("devices", "machine_id", "machines", "SET NULL"),
    )
    _index("devices", "credential_profile_id")
    _index("devices", "discovery_profile_id")
    _index("devices", "machine_id")


def _monitors() -> None:
    op.create_table(
        "monitors",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("credential_profile_id", sa.Text, nullable=False),
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("interval_us", sa.BigInteger, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("due_at", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=True),
        sa.Column("last_attempted", sa.BigInteger, nullable=True),
        sa.Column("last_polled", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", sa.BigInteger, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_monitors"),
        sa.UniqueConstraint("device_id", "collector", name="uq_monitors_device_id_collector"),
        _fk("monitors", "owner_id", "users", "CASCADE"),
        _fk("monitors", "device_id", "devices", "RESTRICT"),
        _fk("monitors", "credential_profile_id", "credential_profiles", "RESTRICT"),
        _fk("monitors", "machine_id", "machines", "RESTRICT"),
    )
    _index("monitors", "owner_id")
    _index("monitors", "credential_profile_id")
    _index("monitors", "machine_id")
    _index("monitors", "enabled", "due_at")
