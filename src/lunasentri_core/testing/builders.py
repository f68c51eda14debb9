"""Builders of valid model objects with sensible defaults, for tests.

Every builder takes keyword overrides for any field, so a test states only what
it cares about. Identifiers and names are fresh on every call, which keeps tests
independent even when they share a store.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from lunasentri_core.components import Credentials, Notification, NotificationKind
from lunasentri_core.model import (
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    ApiKey,
    Channel,
    Comparison,
    CredentialProfile,
    Device,
    DiscoveryProfile,
    Machine,
    MachineSamples,
    MachineStatus,
    Monitor,
    OutboxEvent,
    Reading,
    Role,
    Sample,
    SeriesKey,
    Silence,
    StatusChange,
    Target,
    User,
    new_id,
)
from lunasentri_core.remote import Transport

BASE_TIME = datetime(2026, 1, 5, tzinfo=UTC)
"""A fixed instant (midnight UTC, so aligned to every step) that test data starts from."""


def make_reading(metric: str = "cpu.percent", value: float = 12.5, **labels: str) -> Reading:
    return Reading(metric, value, labels)


def make_sample(
    metrics: Mapping[str, float] | Iterable[Reading] | None = None,
    *,
    at: datetime | None = None,
) -> Sample:
    """A sample at ``at`` (default :data:`BASE_TIME`).

    ``metrics`` is a mapping of unlabelled metric names to values, or readings;
    the default is one ``cpu.percent`` reading.
    """
    if metrics is None:
        readings: list[Reading] = [make_reading()]
    elif isinstance(metrics, Mapping):
        readings = [Reading(name, value) for name, value in metrics.items()]
    else:
        readings = list(metrics)
    return Sample(at or BASE_TIME, readings)


def make_samples(
    machine_id: str,
    readings: Iterable[Reading],
    *,
    start: datetime = BASE_TIME,
    every: timedelta = timedelta(seconds=10),
    count: int = 1,
) -> MachineSamples:
    """``count`` samples of the same readings, ``every`` apart from ``start``."""
    fixed = list(readings)
    return MachineSamples(machine_id, [Sample(start + i * every, fixed) for i in range(count)])


def make_series(machine_id: str, metric: str = "cpu.percent", **labels: str) -> SeriesKey:
    return SeriesKey(machine_id, metric, labels)


def make_target(machine_id: str | None = None, **overrides: Any) -> Target:
    """A target for the local machine (``host=None``) unless overridden."""
    return Target(machine_id or f"machine-{new_id()[:8]}", **overrides)


def make_user(**overrides: Any) -> User:
    uid = new_id()
    fields: dict[str, Any] = {
        "id": uid,
        "username": f"user-{uid[:10]}",
        "role": Role.USER,
        "created_at": BASE_TIME + timedelta(microseconds=123_456),
    }
    fields.update(overrides)
    return User(**fields)


def make_machine(**overrides: Any) -> Machine:
    mid = new_id()
    fields: dict[str, Any] = {
        "id": mid,
        "name": f"host-{mid[:10]}",
        "hostname": f"host-{mid[:10]}.example.test",
        "labels": {"env": "test"},
        "created_at": BASE_TIME + timedelta(microseconds=654_321),
    }
    fields.update(overrides)
    return Machine(**fields)


def make_api_key(machine_id: str, **overrides: Any) -> ApiKey:
    """A stored key for ``machine_id``; the secret itself is thrown away."""
    secret = secrets.token_urlsafe(32)
    fields: dict[str, Any] = {
        "id": new_id(),
        "machine_id": machine_id,
        "prefix": f"ls_{secret[:6]}",
        "key_hash": hash_secret(secret),
        "created_at": BASE_TIME,
    }
    fields.update(overrides)
    return ApiKey(**fields)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest, the form in which API keys are stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def make_alert_rule(owner_id: str, **overrides: Any) -> AlertRule:
    fields: dict[str, Any] = {
        "id": new_id(),
        "owner_id": owner_id,
        "name": "cpu high",
        "metric": "cpu.percent",
        "comparison": Comparison.GT,
        "threshold": 90.0,
        "for_duration": timedelta(minutes=5),
        "created_at": BASE_TIME,
    }
    fields.update(overrides)
    return AlertRule(**fields)


def make_alert_event(rule: AlertRule, machine_id: str, **overrides: Any) -> AlertEvent:
    fields: dict[str, Any] = {
        "id": new_id(),
        "rule_id": rule.id,
        "machine_id": machine_id,
        "series": SeriesKey(machine_id, rule.metric),
        "state": AlertState.FIRING,
        "value": rule.threshold + 1,
        "at": BASE_TIME,
    }
    fields.update(overrides)
    return AlertEvent(**fields)


def make_alert_status(rule: AlertRule, machine_id: str, **overrides: Any) -> AlertStatus:
    """Where ``rule`` stands for ``machine_id``'s series of its metric: pending."""
    fields: dict[str, Any] = {
        "rule_id": rule.id,
        "series": SeriesKey(machine_id, rule.metric),
        "state": AlertState.PENDING,
        "since": BASE_TIME + timedelta(microseconds=31),
        "value": rule.threshold + 1,
        "updated_at": BASE_TIME + timedelta(microseconds=31),
    }
    fields.update(overrides)
    return AlertStatus(**fields)


def make_status_change(
    machine_id: str,
    previous: MachineStatus = MachineStatus.ONLINE,
    status: MachineStatus = MachineStatus.OFFLINE,
    **overrides: Any,
) -> StatusChange:
    """A heartbeat's change of ``machine_id`` (online to offline unless told otherwise)."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "machine_id": machine_id,
        "previous": previous,
        "status": status,
        "at": BASE_TIME + timedelta(minutes=10, microseconds=41),
        "last_seen": BASE_TIME + timedelta(microseconds=41),
    }
    fields.update(overrides)
    return StatusChange(**fields)


def make_channel(owner_id: str, **overrides: Any) -> Channel:
    """An enabled ``webhook`` channel of ``owner_id`` with a fresh name."""
    cid = new_id()
    fields: dict[str, Any] = {
        "id": cid,
        "owner_id": owner_id,
        "name": f"channel-{cid[:10]}",
        "type": "webhook",
        "config": {"url": "https://hooks.example.test/lunasentri", "secret": "s3crêt"},
        "created_at": BASE_TIME + timedelta(microseconds=51),
    }
    fields.update(overrides)
    return Channel(**fields)


def make_outbox_event(owner_id: str | None, **overrides: Any) -> OutboxEvent:
    """A new outbox event for ``owner_id``'s channels (``None``: every administrator's)."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "kind": NotificationKind.TEST.value,
        "owner_id": owner_id,
        "title": "LunaSentri test — ✓",
        "text": "An outbox event.\nIts second line: ünïcode.",
        "occurred_at": BASE_TIME + timedelta(microseconds=61),
        "data": {"source": "lunasentri_core.testing", "count": 2, "labels": {"env": "test"}},
    }
    fields.update(overrides)
    return OutboxEvent(**fields)


def make_silence(owner_id: str, **overrides: Any) -> Silence:
    """A silence of everything of ``owner_id``'s, for the hour from :data:`BASE_TIME`."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "owner_id": owner_id,
        "starts_at": BASE_TIME,
        "ends_at": BASE_TIME + timedelta(hours=1, microseconds=71),
        "comment": "maintenance window",
        "created_by": owner_id,
        "created_at": BASE_TIME,
    }
    fields.update(overrides)
    return Silence(**fields)


def make_notification(**overrides: Any) -> Notification:
    """A test notification whose title and text exercise non-ASCII and line breaks."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "kind": NotificationKind.TEST,
        "title": "LunaSentri test — ✓ délivré",
        "text": "Line one of the test notification.\nLine two: ünïcode & <markup> survives.",
        "occurred_at": BASE_TIME,
        "data": {"source": "lunasentri_core.testing"},
    }
    fields.update(overrides)
    return Notification(**fields)


def make_credentials(**headers: str) -> Credentials:
    """Credentials carrying ``headers`` (names are lower-cased, as the server passes them)."""
    return Credentials(headers={name.lower().replace("_", "-"): v for name, v in headers.items()})


# --------------------------------------------------------------------------- agentless


def make_credential_profile(owner_id: str, **overrides: Any) -> CredentialProfile:
    """An NTLM profile of ``owner_id`` with a fresh name and a stand-in sealed password.

    ``secret`` is an opaque string here, not a real secret-box envelope: stores
    keep it as it is.
    """
    pid = new_id()
    fields: dict[str, Any] = {
        "id": pid,
        "owner_id": owner_id,
        "name": f"credentials-{pid[:10]}",
        "transport": Transport.NTLM,
        "username": "monitor",
        "domain": "EXAMPLE",
        "secret": f"sealed:{pid}:pässword",
        "created_at": BASE_TIME + timedelta(microseconds=81),
        "updated_at": BASE_TIME + timedelta(microseconds=82),
    }
    fields.update(overrides)
    return CredentialProfile(**fields)


def make_discovery_profile(owner_id: str, **overrides: Any) -> DiscoveryProfile:
    """A profile of ``owner_id`` scanning a loopback /29, with no credential profile."""
    pid = new_id()
    fields: dict[str, Any] = {
        "id": pid,
        "owner_id": owner_id,
        "name": f"discovery-{pid[:10]}",
        "targets": ("127.0.0.0/29", "127.1.0.5-127.1.0.9"),
        "created_at": BASE_TIME + timedelta(microseconds=83),
    }
    fields.update(overrides)
    return DiscoveryProfile(**fields)


def _loopback_address() -> str:
    """A random address in 127.0.0.0/8 (never the network's first or last)."""
    return f"127.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def make_device(owner_id: str, **overrides: Any) -> Device:
    """A Windows host of ``owner_id`` at a fresh loopback address, without a machine."""
    did = new_id()
    fields: dict[str, Any] = {
        "id": did,
        "owner_id": owner_id,
        "address": _loopback_address(),
        "hostname": f"WIN-{did[:8].upper()}",
        "os": "Microsoft Windows Server 2019 Datacenter",
        "os_version": "10.0.17763",
        "open_ports": (135, 5985),
        "first_seen": BASE_TIME + timedelta(microseconds=84),
        "last_seen": BASE_TIME + timedelta(microseconds=85),
        "created_at": BASE_TIME + timedelta(microseconds=84),
    }
    fields.update(overrides)
    return Device(**fields)


def make_monitor(device: Device, credential_profile_id: str, **overrides: Any) -> Monitor:
    """A ``winrm`` monitor of ``device`` polling every minute, due at :data:`BASE_TIME`.

    Its ``machine_id`` is the device's (empty while it has none): storing the
    monitor sets it.
    """
    fields: dict[str, Any] = {
        "id": new_id(),
        "owner_id": device.owner_id,
        "device_id": device.id,
        "credential_profile_id": credential_profile_id,
        "collector": "winrm",
        "machine_id": device.machine_id or "",
        "options": {"shell": "powershell", "disks": ["C:", "D:"]},
        "due_at": BASE_TIME,
        "created_at": BASE_TIME + timedelta(microseconds=86),
    }
    fields.update(overrides)
    return Monitor(**fields)
