"""The tables, as SQLAlchemy Core objects.

This module describes the schema the *code* expects; the migrations in
``migrations/versions`` are what create it, and a test checks that the two agree.

Metric timestamps are integer milliseconds since the Unix epoch; state
timestamps are integer microseconds (exact round trips of the model's datetimes).
Both avoid every database's own notion of time zones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from lunasentri_core.model import Labels, as_utc, to_labels

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERSION_TABLE = "lunasentri_alembic_version"
"""Alembic's bookkeeping table, named so it never collides with an embedding app's own."""

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UtcMicros(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime stored as integer microseconds since the epoch."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return (as_utc(value) - EPOCH) // _MICROSECOND

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return EPOCH + timedelta(microseconds=int(value))


def labels_to_json(labels: Labels) -> str:
    """The canonical text of a label set: equal sets give equal text (series identity)."""
    return json.dumps([list(pair) for pair in labels], separators=(",", ":"), ensure_ascii=False)


def labels_from_json(text: str) -> Labels:
    return to_labels((str(k), str(v)) for k, v in json.loads(text))


Float64 = sa.Float(precision=53)

_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""An ever-growing surrogate key (SQLite only auto-assigns ``INTEGER PRIMARY KEY``)."""

# --------------------------------------------------------------------------- metrics

storage_meta = sa.Table(
    "storage_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
"""Counters and expiry horizons: ``series_epoch``, ``horizon_raw``, ``horizon_minute``, ..."""

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.UniqueConstraint("machine_id", "metric", "labels"),
    # Ids are never reused, so an id cached by another process can at worst
    # point at a deleted series, never at someone else's.
    sqlite_autoincrement=True,
)

machine_series = sa.Table(
    "machine_series",
    metadata,
    sa.Column("machine_id", sa.Text, primary_key=True),
    sa.Column("series", sa.Integer, nullable=False),
)
"""How many series each machine has, kept with ``series`` in the same transactions:
the per-machine series limit is checked against it (one row, not a count)."""

# SQLite's latest values (PostgreSQL keeps them in ``latest_values``, migration 0013).
series_latest = sa.Table(
    "series_latest",
    metadata,
    sa.Column("series_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("value", Float64, nullable=False),
)

_Int4s = sa.LargeBinary().with_variant(postgresql.ARRAY(sa.Integer), "postgresql")
_Int8s = sa.LargeBinary().with_variant(postgresql.ARRAY(sa.BigInteger), "postgresql")
_Float8s = sa.LargeBinary().with_variant(
    postgresql.ARRAY(postgresql.DOUBLE_PRECISION), "postgresql"
)

# On PostgreSQL at fillfactor 50 and rows kept whole up to a page (migration 0013).
latest_values = sa.Table(
    "latest_values",
    metadata,
    sa.Column("machine_id", sa.Text, primary_key=True),
    # Which range of series ids the row holds (``latest.PART_IDS`` ids a range).
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    # The machine's series ids in increasing order, and each one's newest point.
    sa.Column("series_ids", _Int4s, nullable=False),
    sa.Column("series_ts", _Int8s, nullable=False),
    sa.Column("series_values", _Float8s, nullable=False),
    sa.Column("oldest", sa.BigInteger, nullable=False),
    sa.Column("newest", sa.BigInteger, nullable=False),
)
"""PostgreSQL's latest values: a row per machine and range of series ids
(:mod:`.latest`), where ``series_latest`` has one per series; a write updates
20-odd rows for a batch of 20 machines instead of 1,000. Empty on SQLite, which
keeps ``series_latest``."""

samples_head = sa.Table(
    "samples_head",
    metadata,
    # Write order: on equal timestamps of a series, the earlier row's value wins.
    sa.Column("seq", _Serial, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    # The sample's series ids and their values, packed (see ``head.py``).
    sa.Column("series_ids", sa.LargeBinary, nullable=False),
    sa.Column("series_values", sa.LargeBinary, nullable=False),
    sa.Index(None, "machine_id", "ts"),
    sa.Index(None, "ts"),
)
"""Samples not compacted yet: one row per written sample, not per point."""

metric_chunks = sa.Table(
    "metric_chunks",
    metadata,
    sa.Column("series_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("chunk_start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("raw", sa.LargeBinary, nullable=True),
    sa.Column("minutes", sa.LargeBinary, nullable=True),
    sa.Column("hour_count", sa.Integer, nullable=True),
    sa.Column("hour_sum", Float64, nullable=True),
    sa.Column("hour_min", Float64, nullable=True),
    sa.Column("hour_max", Float64, nullable=True),
    sa.Column("hour_last", Float64, nullable=True),
    sa.Index(None, "chunk_start", postgresql_using="brin"),
    # PostgreSQL without TimescaleDB: partitions by day (partitions.py, migration 0009).
    postgresql_partition_by="RANGE (chunk_start)",
)

# --------------------------------------------------------------------------- state

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
)

machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    sa.Column("hostname", sa.Text, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_seen", UtcMicros, nullable=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("offline_after_us", sa.BigInteger, nullable=True),
)
# NULL owners compare distinct in a plain unique constraint; coalesce makes
# "one name per owner" hold for unowned machines too.
sa.Index(
    "uq_machines_owner_name",
    sa.func.coalesce(machines.c.owner_id, ""),
    machines.c.name,
    unique=True,
)
# Keyset pages of the machine list (page_machines): an owner's, and everyone's.
sa.Index("ix_machines_owner_page", machines.c.owner_id, machines.c.name, machines.c.id)
sa.Index("ix_machines_page", machines.c.name, machines.c.id)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("expires_at", UtcMicros, nullable=True),
    sa.Column("revoked_at", UtcMicros, nullable=True),
)

alert_rules = sa.Table(
    "alert_rules",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("comparison", sa.String(2), nullable=False),
    sa.Column("threshold", Float64, nullable=False),
    sa.Column("for_duration_us", sa.BigInteger, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
)

alert_events = sa.Table(
    "alert_events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "rule_id",
        sa.Text,
        sa.ForeignKey("alert_rules.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("series_machine_id", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", Float64, nullable=False),
    sa.Column("at", UtcMicros, nullable=False),
    sa.Column("acknowledged_at", UtcMicros, nullable=True),
    sa.Column("acknowledged_by", sa.Text, nullable=True),
    sa.Index(None, "machine_id", "at"),
)

# --------------------------------------------------------------------------- server state

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "user_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("expires_at", UtcMicros, nullable=False),
    sa.Column("client", sa.Text, nullable=True),
    sa.Column("revoked_at", UtcMicros, nullable=True),
)

reset_tokens = sa.Table(
    "reset_tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "user_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("expires_at", UtcMicros, nullable=False),
    sa.Column("used_at", UtcMicros, nullable=True),
)

login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("id", _Serial, primary_key=True, autoincrement=True),
    # By name, not by user id: failures for names that do not exist count too.
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("at", UtcMicros, nullable=False),
    sa.Column("client", sa.Text, nullable=True),
    sa.Index(None, "username", "at"),
    sa.Index(None, "client", "at"),
)

agent_claims = sa.Table(
    "agent_claims",
    metadata,
    sa.Column("agent_id", sa.Text, primary_key=True),
    sa.Column("claim_token_hash", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("expires_at", UtcMicros, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    sa.Column("sealed_key", sa.LargeBinary, nullable=True),
    sa.Column("client", sa.Text, nullable=True),
    sa.Index(None, "status", "expires_at"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    # Orders entries of the same microsecond by insertion ("newest first" stays exact).
    sa.Column("seq", _Serial, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("at", UtcMicros, nullable=False, index=True),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("actor_kind", sa.String(16), nullable=False),
    # No foreign key: the log outlives the users and machines it names.
    sa.Column("actor_id", sa.Text, nullable=True),
    sa.Column("target_type", sa.Text, nullable=True),
    sa.Column("target_id", sa.Text, nullable=True),
    sa.Column("client", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    # The authenticator that accepted the request (added by migration 0010).
    sa.Column("via", sa.Text, nullable=True),
    sa.Index(None, "action", "at"),
    sa.Index(None, "actor_id", "at"),
)

agent_configs = sa.Table(
    "agent_configs",
    metadata,
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("interval_us", sa.BigInteger, nullable=False),
    sa.Column("collectors", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcMicros, nullable=False),
)


# --------------------------------------------------------------------------- notifications

status_changes = sa.Table(
    "status_changes",
    metadata,
    sa.Column("seq", _Serial, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("previous", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("at", UtcMicros, nullable=False),
    sa.Column("last_seen", UtcMicros, nullable=True),
    sa.Index(None, "machine_id", "at"),
)

alert_states = sa.Table(
    "alert_states",
    metadata,
    sa.Column(
        "rule_id",
        sa.Text,
        sa.ForeignKey("alert_rules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("labels", sa.Text, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("since", UtcMicros, nullable=False),
    sa.Column("value", Float64, nullable=False),
    sa.Column("updated_at", UtcMicros, nullable=False),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.UniqueConstraint("owner_id", "name"),
)

outbox_events = sa.Table(
    "outbox_events",
    metadata,
    # Dispatch order is insertion order, even within one microsecond.
    sa.Column("seq", _Serial, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.Text, nullable=False),
    # No foreign keys: what was notified stays on record after its subject is gone.
    sa.Column("owner_id", sa.Text, nullable=True, index=True),
    sa.Column("machine_id", sa.Text, nullable=True),
    sa.Column("rule_id", sa.Text, nullable=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("occurred_at", UtcMicros, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("silence_id", sa.Text, nullable=True),
    sa.Index(None, "state", "seq"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "event_id",
        sa.Text,
        sa.ForeignKey("outbox_events.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "channel_id",
        sa.Text,
        sa.ForeignKey("channels.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("owner_id", sa.Text, nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcMicros, nullable=False),
    # A dispatcher owns a delivery it took until then; after a crash it is taken again.
    sa.Column("lease_until", UtcMicros, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("delivered_at", UtcMicros, nullable=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Index(None, "state", "next_attempt_at"),
)

silences = sa.Table(
    "silences",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("starts_at", UtcMicros, nullable=False),
    sa.Column("ends_at", UtcMicros, nullable=False),
    sa.Column("machine_id", sa.Text, nullable=True),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("rule_id", sa.Text, nullable=True),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("ended_at", UtcMicros, nullable=True),
    sa.Index(None, "ended_at", "ends_at"),
)


# --------------------------------------------------------------------------- agentless
# Who uses what is held by foreign keys without cascade (RESTRICT): the store
# refuses those deletions itself and names the users (InUseError); the keys make
# sure no other path deletes a credential profile or device still in use.

credential_profiles = sa.Table(
    "credential_profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
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
    # The password's secret-box envelope, never the password.
    sa.Column("secret", sa.Text, nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.Column("updated_at", UtcMicros, nullable=False),
    sa.UniqueConstraint("owner_id", "name"),
)

discovery_profiles = sa.Table(
    "discovery_profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("targets", sa.Text, nullable=False),
    sa.Column(
        "credential_profile_id",
        sa.Text,
        sa.ForeignKey("credential_profiles.id", ondelete="RESTRICT"),
        nullable=True,
        index=True,
    ),
    sa.Column("ports", sa.Text, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("timeout_us", sa.BigInteger, nullable=False),
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.UniqueConstraint("owner_id", "name"),
)

discovery_runs = sa.Table(
    "discovery_runs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "profile_id",
        sa.Text,
        sa.ForeignKey("discovery_profiles.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("started_at", UtcMicros, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("scanned", sa.Integer, nullable=False),
    sa.Column("found", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("finished_at", UtcMicros, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # When the store last recorded the run's progress (its own clock): a running
    # run silent for long has lost its process (fail_discovery_runs).
    sa.Column("updated_at", UtcMicros, nullable=False),
    sa.Index(None, "profile_id", "started_at"),
    sa.Index(None, "state", "updated_at"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=True),
    sa.Column("os", sa.Text, nullable=True),
    sa.Column("os_version", sa.Text, nullable=True),
    sa.Column("open_ports", sa.Text, nullable=False),
    sa.Column("credential_ok", sa.Boolean, nullable=True),
    sa.Column("credential_error", sa.Text, nullable=True),
    # What was last tried on or found it: history, so deleting it clears the link.
    sa.Column(
        "credential_profile_id",
        sa.Text,
        sa.ForeignKey("credential_profiles.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    sa.Column(
        "discovery_profile_id",
        sa.Text,
        sa.ForeignKey("discovery_profiles.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    sa.Column("first_seen", UtcMicros, nullable=False),
    sa.Column("last_seen", UtcMicros, nullable=True),
    sa.Column("created_at", UtcMicros, nullable=False),
    sa.UniqueConstraint("owner_id", "address"),
)

monitors = sa.Table(
    "monitors",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "owner_id",
        sa.Text,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "device_id",
        sa.Text,
        sa.ForeignKey("devices.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    sa.Column(
        "credential_profile_id",
        sa.Text,
        sa.ForeignKey("credential_profiles.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    ),
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column(
        "machine_id",
        sa.Text,
        sa.ForeignKey("machines.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    ),
    sa.Column("interval_us", sa.BigInteger, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("due_at", UtcMicros, nullable=False),
    # A poller owns a monitor it took until then; after a crash it is taken again.
    sa.Column("lease_until", UtcMicros, nullable=True),
    sa.Column("last_attempted", UtcMicros, nullable=True),
    sa.Column("last_polled", UtcMicros, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UtcMicros, nullable=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("created_at", UtcMicros, nullable=False),
    # The unique key (device_id, collector) also indexes a device's monitors.
    sa.UniqueConstraint("device_id", "collector"),
    # The scheduler's query: enabled monitors by due time.
    sa.Index(None, "enabled", "due_at"),
)
