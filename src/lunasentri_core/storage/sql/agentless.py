"""Credential profiles, discovery profiles and runs, devices and monitors in SQL.

The part of :class:`~lunasentri_core.storage.sql.SqlStateStore` that implements
:class:`~lunasentri_core.storage.AgentlessStore`; its docstrings are the spec.

The deletion rules are checked here, in the deleting transaction, and held by
foreign keys without cascade as well, so no other path can break them: a
refused deletion raises :class:`~lunasentri_core.errors.InUseError` naming the
ids of what uses the record.

``claim_due_monitors`` picks candidates and then takes them with an update
that re-checks the lease, so of concurrent schedulers each monitor goes to one;
on PostgreSQL the candidates are also locked with ``FOR UPDATE SKIP LOCKED``,
so several server processes take disjoint sets instead of waiting for each
other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row

from lunasentri_core.errors import ConflictError, InUseError, NotFoundError
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    DiscoveryProfile,
    DiscoveryRun,
    Machine,
    Monitor,
    PollOutcome,
    RunState,
    utcnow,
)
from lunasentri_core.remote import Transport
from lunasentri_core.storage.sql.changes import bump_config_epoch
from lunasentri_core.storage.sql.database import LOCK_MAINTAIN, Database
from lunasentri_core.storage.sql.rows import machine_values
from lunasentri_core.storage.sql.schema import (
    credential_profiles,
    discovery_profiles,
    discovery_runs,
    machines,
    monitors,
    users,
)
from lunasentri_core.storage.sql.schema import devices as device_rows

T = TypeVar("T")

_MICROSECOND = timedelta(microseconds=1)


@contextmanager
def _conflicts(message: str) -> Iterator[None]:
    """A uniqueness race lost to another writer reads like the pre-checked conflict."""
    try:
        yield
    except exc.IntegrityError as error:
        raise ConflictError(message) from error


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _owned(table: sa.Table, owner_id: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner_id is None else table.c.owner_id == owner_id


def _exists(conn: Connection, table: sa.Table, condition: sa.ColumnElement[bool]) -> bool:
    query = sa.select(sa.literal(1)).select_from(table).where(condition).limit(1)
    return conn.execute(query).first() is not None


def _ids(conn: Connection, column: sa.Column[Any], condition: sa.ColumnElement[bool]) -> list[str]:
    return [
        str(value)
        for value in conn.execute(sa.select(column).where(condition).order_by(column)).scalars()
    ]


def _micros(value: timedelta) -> int:
    return value // _MICROSECOND


# --------------------------------------------------------------------------- rows


def _credential_values(profile: CredentialProfile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "owner_id": profile.owner_id,
        "name": profile.name,
        "transport": profile.transport.value,
        "username": profile.username,
        "domain": profile.domain,
        "https": profile.https,
        "port": profile.port,
        "verify_tls": profile.verify_tls,
        "ca_path": profile.ca_path,
        "cert_path": profile.cert_path,
        "key_path": profile.key_path,
        "secret": profile.secret,
        "version": profile.version,
        "created_at": profile.created_at,
        "updated_at": profile.updated_at,
    }


def _credential(row: Row[Any]) -> CredentialProfile:
    return CredentialProfile(
        id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        transport=Transport(row.transport),
        username=row.username,
        domain=row.domain,
        https=bool(row.https),
        port=row.port,
        verify_tls=bool(row.verify_tls),
        ca_path=row.ca_path,
        cert_path=row.cert_path,
        key_path=row.key_path,
        secret=row.secret,
        version=int(row.version),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _discovery_values(profile: DiscoveryProfile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "owner_id": profile.owner_id,
        "name": profile.name,
        "targets": _json(list(profile.targets)),
        "credential_profile_id": profile.credential_profile_id,
        "ports": _json(list(profile.ports)),
        "concurrency": profile.concurrency,
        "timeout_us": _micros(profile.timeout),
        "collector": profile.collector,
        "created_at": profile.created_at,
    }


def _discovery(row: Row[Any]) -> DiscoveryProfile:
    return DiscoveryProfile(
        id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        targets=tuple(str(t) for t in json.loads(row.targets)),
        credential_profile_id=row.credential_profile_id,
        ports=tuple(int(p) for p in json.loads(row.ports)),
        concurrency=int(row.concurrency),
        timeout=timedelta(microseconds=row.timeout_us),
        collector=row.collector,
        created_at=row.created_at,
    )


def _progress_values(run: DiscoveryRun) -> dict[str, Any]:
    """What an update of a run replaces: everything but its ids and start."""
    return {
        "state": run.state.value,
        "total": run.total,
        "scanned": run.scanned,
        "found": run.found,
        "errors": run.errors,
        "finished_at": run.finished_at,
        "error": run.error,
        "updated_at": utcnow(),
    }


def _run(row: Row[Any]) -> DiscoveryRun:
    return DiscoveryRun(
        id=row.id,
        profile_id=row.profile_id,
        owner_id=row.owner_id,
        started_at=row.started_at,
        state=RunState(row.state),
        total=int(row.total),
        scanned=int(row.scanned),
        found=int(row.found),
        errors=int(row.errors),
        finished_at=row.finished_at,
        error=row.error,
    )


_DEVICE_KEPT = ("id", "owner_id", "address", "machine_id", "first_seen", "created_at")
"""Columns an upsert of a device already stored leaves as they are."""


def _device_values(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "owner_id": device.owner_id,
        "address": device.address,
        "hostname": device.hostname,
        "os": device.os,
        "os_version": device.os_version,
        "open_ports": _json(list(device.open_ports)),
        "credential_ok": device.credential_ok,
        "credential_error": device.credential_error,
        "credential_profile_id": device.credential_profile_id,
        "discovery_profile_id": device.discovery_profile_id,
        "machine_id": device.machine_id,
        "first_seen": device.first_seen,
        "last_seen": device.last_seen,
        "created_at": device.created_at,
    }


def _device(row: Row[Any]) -> Device:
    return Device(
        id=row.id,
        owner_id=row.owner_id,
        address=row.address,
        hostname=row.hostname,
        os=row.os,
        os_version=row.os_version,
        open_ports=tuple(int(p) for p in json.loads(row.open_ports)),
        credential_ok=None if row.credential_ok is None else bool(row.credential_ok),
        credential_error=row.credential_error,
        credential_profile_id=row.credential_profile_id,
        discovery_profile_id=row.discovery_profile_id,
        machine_id=row.machine_id,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        created_at=row.created_at,
    )


def _settings_values(monitor: Monitor) -> dict[str, Any]:
    """A monitor's settings: what ``update_monitor`` replaces."""
    return {
        "credential_profile_id": monitor.credential_profile_id,
        "interval_us": _micros(monitor.interval),
        "enabled": monitor.enabled,
        "options": _json(dict(monitor.options)),
        "due_at": monitor.due_at,
    }


def _monitor_values(monitor: Monitor, machine_id: str) -> dict[str, Any]:
    return {
        "id": monitor.id,
        "owner_id": monitor.owner_id,
        "device_id": monitor.device_id,
        "collector": monitor.collector,
        "machine_id": machine_id,
        **_settings_values(monitor),
        "lease_until": monitor.lease_until,
        "last_attempted": monitor.last_attempted,
        "last_polled": monitor.last_polled,
        "last_error": monitor.last_error,
        "last_error_at": monitor.last_error_at,
        "failures": monitor.failures,
        "created_at": monitor.created_at,
    }


def _monitor(row: Row[Any]) -> Monitor:
    return Monitor(
        id=row.id,
        owner_id=row.owner_id,
        device_id=row.device_id,
        credential_profile_id=row.credential_profile_id,
        collector=row.collector,
        machine_id=row.machine_id,
        interval=timedelta(microseconds=row.interval_us),
        enabled=bool(row.enabled),
        options=json.loads(row.options),
        due_at=row.due_at,
        lease_until=row.lease_until,
        last_attempted=row.last_attempted,
        last_polled=row.last_polled,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        failures=int(row.failures),
        created_at=row.created_at,
    )


def _lease_free(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(monitors.c.lease_until.is_(None), monitors.c.lease_until <= now)


# --------------------------------------------------------------------------- store


_RECORD_NAMES = {
    "credential_profiles": "credential profile",
    "discovery_profiles": "discovery profile",
    "discovery_runs": "discovery run",
    "devices": "device",
    "monitors": "monitor",
}
"""How a record of each table is named in a "not found" message."""


class SqlAgentlessStore:
    """The agentless part of :class:`SqlStateStore` (a mixin sharing ``_db``)."""

    _db: Database
    _delete_machine: Callable[[Connection, str], None]
    """Deletes a machine with everything of it; :class:`SqlStateStore` provides it."""

    def _get_owned(
        self,
        table: sa.Table,
        record_id: str,
        owner_id: str | None,
        from_row: Callable[[Row[Any]], T],
    ) -> T:
        """One record by id, if ``owner_id`` (or an admin's ``None``) may see it."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(table).where(table.c.id == record_id, _owned(table, owner_id))
            ).first()
        if row is None:
            raise NotFoundError(f"{_RECORD_NAMES[table.name]} {record_id!r} not found")
        return from_row(row)

    def _list_owned(
        self,
        table: sa.Table,
        owner_id: str | None,
        from_row: Callable[[Row[Any]], T],
        order: str,
    ) -> list[T]:
        """The records ``owner_id`` (or an admin's ``None``) may see, by ``order`` then id."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(table).where(_owned(table, owner_id)).order_by(table.c[order], table.c.id)
            ).all()
        return [from_row(row) for row in rows]

    # ------------------------------------------------------------------ credential profiles

    def add_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        message = f"a credential profile named {profile.name!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            _require_owner(conn, profile.owner_id, f"credential profile {profile.name!r}")
            if _exists(conn, credential_profiles, _named(credential_profiles, profile)):
                raise ConflictError(message)
            if _exists(conn, credential_profiles, credential_profiles.c.id == profile.id):
                raise ConflictError(f"a credential profile with id {profile.id!r} already exists")
            conn.execute(sa.insert(credential_profiles).values(_credential_values(profile)))
            bump_config_epoch(self._db, conn)
        return profile

    def get_credential_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> CredentialProfile:
        return self._get_owned(credential_profiles, profile_id, owner_id, _credential)

    def list_credential_profiles(self, owner_id: str | None = None) -> list[CredentialProfile]:
        return self._list_owned(credential_profiles, owner_id, _credential, "name")

    def update_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        message = f"a credential profile named {profile.name!r} already exists"
        table = credential_profiles
        with _conflicts(message), self._db.write() as conn:
            current = conn.execute(
                sa.select(table.c.owner_id).where(table.c.id == profile.id).with_for_update()
            ).first()
            if current is None:
                raise NotFoundError(f"credential profile {profile.id!r} not found")
            same_name = sa.and_(
                table.c.owner_id == current.owner_id,
                table.c.name == profile.name,
                table.c.id != profile.id,
            )
            if _exists(conn, table, same_name):
                raise ConflictError(message)
            values = _credential_values(profile)
            for kept in ("id", "owner_id", "created_at", "version"):
                del values[kept]
            # One more than the stored version, whatever the caller's copy said.
            values["version"] = table.c.version + 1
            conn.execute(sa.update(table).where(table.c.id == profile.id).values(values))
            bump_config_epoch(self._db, conn)
            row = conn.execute(sa.select(table).where(table.c.id == profile.id)).one()
        return _credential(row)

    def delete_credential_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        table = credential_profiles
        # A user added meanwhile by another process trips the foreign key instead.
        with _conflicts(f"credential profile {profile_id!r} is in use"), self._db.write() as conn:
            if not _exists(conn, table, sa.and_(table.c.id == profile_id, _owned(table, owner_id))):
                raise NotFoundError(f"credential profile {profile_id!r} not found")
            in_use = {
                "monitors": _ids(
                    conn, monitors.c.id, monitors.c.credential_profile_id == profile_id
                ),
                "discovery_profiles": _ids(
                    conn,
                    discovery_profiles.c.id,
                    discovery_profiles.c.credential_profile_id == profile_id,
                ),
            }
            if any(in_use.values()):
                raise InUseError(f"credential profile {profile_id!r}", in_use)
            # Devices only remember it as the last one tried on them.
            conn.execute(
                sa.update(device_rows)
                .where(device_rows.c.credential_profile_id == profile_id)
                .values(credential_profile_id=None)
            )
            conn.execute(sa.delete(table).where(table.c.id == profile_id))
            bump_config_epoch(self._db, conn)

    def list_credential_secrets(self) -> list[tuple[str, str]]:
        table = credential_profiles
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(table.c.id, table.c.secret)
                .where(table.c.secret.is_not(None))
                .order_by(table.c.id)
            ).all()
        return [(str(row.id), str(row.secret)) for row in rows]

    def replace_credential_secret(self, profile_id: str, old: str, new: str) -> bool:
        table = credential_profiles
        with self._db.write() as conn:
            # Compare-and-set: an edit that replaced the secret meanwhile wins.
            replaced = conn.execute(
                sa.update(table)
                .where(table.c.id == profile_id, table.c.secret == old)
                .values(secret=new)
            ).rowcount
            if replaced:
                # The password is the same, so the version stays; processes that
                # hold the old envelope still learn that it changed.
                bump_config_epoch(self._db, conn)
        return bool(replaced)

    # ------------------------------------------------------------------ discovery profiles

    def add_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile:
        message = f"a discovery profile named {profile.name!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            _require_owner(conn, profile.owner_id, f"discovery profile {profile.name!r}")
            _require_credential(conn, profile.credential_profile_id, profile.owner_id)
            if _exists(conn, discovery_profiles, _named(discovery_profiles, profile)):
                raise ConflictError(message)
            if _exists(conn, discovery_profiles, discovery_profiles.c.id == profile.id):
                raise ConflictError(f"a discovery profile with id {profile.id!r} already exists")
            conn.execute(sa.insert(discovery_profiles).values(_discovery_values(profile)))
        return profile

    def get_discovery_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> DiscoveryProfile:
        return self._get_owned(discovery_profiles, profile_id, owner_id, _discovery)

    def list_discovery_profiles(self, owner_id: str | None = None) -> list[DiscoveryProfile]:
        return self._list_owned(discovery_profiles, owner_id, _discovery, "name")

    def update_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile:
        """Replace its fields but owner and ``created_at``; returns it stored."""
        message = f"a discovery profile named {profile.name!r} already exists"
        table = discovery_profiles
        with _conflicts(message), self._db.write() as conn:
            current = conn.execute(
                sa.select(table.c.owner_id).where(table.c.id == profile.id)
            ).first()
            if current is None:
                raise NotFoundError(f"discovery profile {profile.id!r} not found")
            _require_credential(conn, profile.credential_profile_id, current.owner_id)
            same_name = sa.and_(
                table.c.owner_id == current.owner_id,
                table.c.name == profile.name,
                table.c.id != profile.id,
            )
            if _exists(conn, table, same_name):
                raise ConflictError(message)
            values = _discovery_values(profile)
            for kept in ("id", "owner_id", "created_at"):
                del values[kept]
            conn.execute(sa.update(table).where(table.c.id == profile.id).values(values))
            row = conn.execute(sa.select(table).where(table.c.id == profile.id)).one()
        return _discovery(row)

    def delete_discovery_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        table = discovery_profiles
        with self._db.write() as conn:
            if not _exists(conn, table, sa.and_(table.c.id == profile_id, _owned(table, owner_id))):
                raise NotFoundError(f"discovery profile {profile_id!r} not found")
            conn.execute(sa.delete(discovery_runs).where(discovery_runs.c.profile_id == profile_id))
            # The devices it found stay, no longer linked to it.
            conn.execute(
                sa.update(device_rows)
                .where(device_rows.c.discovery_profile_id == profile_id)
                .values(discovery_profile_id=None)
            )
            conn.execute(sa.delete(table).where(table.c.id == profile_id))

    # ------------------------------------------------------------------ discovery runs

    def add_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        message = f"discovery profile {run.profile_id!r} is already running"
        with _conflicts(message), self._db.write() as conn:
            # The profile's row lock makes concurrent starts of it take turns
            # (PostgreSQL; SQLite runs one writer at a time anyway).
            profile = conn.execute(
                sa.select(discovery_profiles.c.owner_id)
                .where(discovery_profiles.c.id == run.profile_id)
                .with_for_update()
            ).first()
            if profile is None or profile.owner_id != run.owner_id:
                raise NotFoundError(f"discovery profile {run.profile_id!r} not found")
            running = _ids(
                conn,
                discovery_runs.c.id,
                sa.and_(
                    discovery_runs.c.profile_id == run.profile_id,
                    discovery_runs.c.state == RunState.RUNNING.value,
                ),
            )
            if running:
                raise ConflictError(f"{message} (run {running[0]})")
            if _exists(conn, discovery_runs, discovery_runs.c.id == run.id):
                raise ConflictError(f"a discovery run with id {run.id!r} already exists")
            conn.execute(
                sa.insert(discovery_runs).values(
                    id=run.id,
                    profile_id=run.profile_id,
                    owner_id=run.owner_id,
                    started_at=run.started_at,
                    **_progress_values(run),
                )
            )
        return run

    def update_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        with self._db.write() as conn:
            updated = conn.execute(
                sa.update(discovery_runs)
                .where(discovery_runs.c.id == run.id)
                .values(_progress_values(run))
            ).rowcount
            if not updated:
                raise NotFoundError(f"discovery run {run.id!r} not found")
            row = conn.execute(sa.select(discovery_runs).where(discovery_runs.c.id == run.id)).one()
        return _run(row)

    def get_discovery_run(self, run_id: str, owner_id: str | None = None) -> DiscoveryRun:
        return self._get_owned(discovery_runs, run_id, owner_id, _run)

    def list_discovery_runs(
        self, profile_id: str, owner_id: str | None = None, limit: int = 50
    ) -> list[DiscoveryRun]:
        """Newest first; an unknown profile (or another owner's) is ``NotFoundError``."""
        profile = sa.and_(
            discovery_profiles.c.id == profile_id, _owned(discovery_profiles, owner_id)
        )
        with self._db.read() as conn:
            if not _exists(conn, discovery_profiles, profile):
                raise NotFoundError(f"discovery profile {profile_id!r} not found")
            rows = conn.execute(
                sa.select(discovery_runs)
                .where(discovery_runs.c.profile_id == profile_id)
                .order_by(discovery_runs.c.started_at.desc(), discovery_runs.c.id.desc())
                .limit(max(0, limit))
            ).all()
        return [_run(row) for row in rows]

    def fail_discovery_runs(self, updated_before: datetime, at: datetime, reason: str) -> int:
        """``updated_before`` is compared with when the store last recorded each run
        (its own clock, set by ``add_discovery_run`` and ``update_discovery_run``)."""
        with self._db.write() as conn:
            failed: int = conn.execute(
                sa.update(discovery_runs)
                .where(
                    discovery_runs.c.state == RunState.RUNNING.value,
                    discovery_runs.c.updated_at < updated_before,
                )
                .values(state=RunState.FAILED.value, finished_at=at, error=reason, updated_at=at)
            ).rowcount
        return failed

    # ------------------------------------------------------------------ devices

    def upsert_devices(self, devices: Sequence[Device]) -> list[Device]:
        """A reference to a discovery or credential profile that is gone (or is not
        the owner's) is stored as ``None``: the profile was deleted during the run.
        A new device gets no machine (its first monitor makes one), whatever
        ``machine_id`` says."""
        if not devices:
            return []
        # Rows are written in key order, so concurrent scans wait instead of deadlocking.
        order = sorted(range(len(devices)), key=lambda i: (devices[i].owner_id, devices[i].address))
        stored: dict[int, Device] = {}
        message = "devices not stored: an id is taken by another address, or a profile just went"
        with _conflicts(message), self._db.write() as conn:
            for owner_id in sorted({device.owner_id for device in devices}):
                _require_owner(conn, owner_id, "devices")
            for index in order:
                stored[index] = self._upsert_device(conn, devices[index])
        return [stored[index] for index in range(len(devices))]

    def _upsert_device(self, conn: Connection, device: Device) -> Device:
        values = _device_values(device)
        values["machine_id"] = None  # a new device has none yet; a stored one keeps its own
        for column, table in (
            ("credential_profile_id", credential_profiles),
            ("discovery_profile_id", discovery_profiles),
        ):
            ref = values[column]
            if ref is not None and not _exists(
                conn, table, sa.and_(table.c.id == ref, table.c.owner_id == device.owner_id)
            ):
                values[column] = None
        insert = self._db.insert(device_rows).values(values)
        # One statement: concurrent discoveries of one address never duplicate it.
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[device_rows.c.owner_id, device_rows.c.address],
                set_={name: insert.excluded[name] for name in values if name not in _DEVICE_KEPT},
            )
        )
        row = conn.execute(
            sa.select(device_rows).where(
                device_rows.c.owner_id == device.owner_id, device_rows.c.address == device.address
            )
        ).one()
        return _device(row)

    def add_device(self, device: Device) -> Device:
        """A new device has no machine yet (``ValueError``): its first monitor makes one."""
        message = f"a device with address {device.address!r} already exists"
        with _conflicts(message), self._db.write() as conn:
            _require_owner(conn, device.owner_id, f"device {device.address!r}")
            _require_credential(conn, device.credential_profile_id, device.owner_id)
            if device.discovery_profile_id is not None and not _exists(
                conn,
                discovery_profiles,
                sa.and_(
                    discovery_profiles.c.id == device.discovery_profile_id,
                    discovery_profiles.c.owner_id == device.owner_id,
                ),
            ):
                raise NotFoundError(f"discovery profile {device.discovery_profile_id!r} not found")
            if device.machine_id is not None:
                raise ValueError("a new device has no machine: its first monitor makes one")
            same = sa.and_(
                device_rows.c.owner_id == device.owner_id, device_rows.c.address == device.address
            )
            if _exists(conn, device_rows, same):
                raise ConflictError(message)
            if _exists(conn, device_rows, device_rows.c.id == device.id):
                raise ConflictError(f"a device with id {device.id!r} already exists")
            conn.execute(sa.insert(device_rows).values(_device_values(device)))
        return device

    def get_device(self, device_id: str, owner_id: str | None = None) -> Device:
        return self._get_owned(device_rows, device_id, owner_id, _device)

    def list_devices(self, owner_id: str | None = None) -> list[Device]:
        return self._list_owned(device_rows, owner_id, _device, "address")

    def delete_device(self, device_id: str, owner_id: str | None = None) -> None:
        with _conflicts(f"device {device_id!r} is in use"), self._db.write() as conn:
            condition = sa.and_(device_rows.c.id == device_id, _owned(device_rows, owner_id))
            if not _exists(conn, device_rows, condition):
                raise NotFoundError(f"device {device_id!r} not found")
            users_of = _ids(conn, monitors.c.id, monitors.c.device_id == device_id)
            if users_of:
                raise InUseError(f"device {device_id!r}", {"monitors": users_of})
            conn.execute(sa.delete(device_rows).where(device_rows.c.id == device_id))

    # ------------------------------------------------------------------ monitors

    def add_monitor(self, monitor: Monitor, machine: Machine) -> Monitor:
        """``machine`` must be the monitor owner's (``ValueError`` otherwise)."""
        message = f"device {monitor.device_id!r} already has a {monitor.collector!r} monitor"
        with _conflicts(message), self._db.write() as conn:
            # The device's row lock makes concurrent first monitors make one machine.
            device = conn.execute(
                sa.select(device_rows.c.machine_id)
                .where(
                    device_rows.c.id == monitor.device_id,
                    device_rows.c.owner_id == monitor.owner_id,
                )
                .with_for_update()
            ).first()
            if device is None:
                raise NotFoundError(f"device {monitor.device_id!r} not found")
            _require_credential(conn, monitor.credential_profile_id, monitor.owner_id)
            same = sa.and_(
                monitors.c.device_id == monitor.device_id,
                monitors.c.collector == monitor.collector,
            )
            if _exists(conn, monitors, same):
                raise ConflictError(message)
            if _exists(conn, monitors, monitors.c.id == monitor.id):
                raise ConflictError(f"a monitor with id {monitor.id!r} already exists")
            machine_id = device.machine_id
            if machine_id is None:
                machine_id = self._add_device_machine(conn, monitor, machine)
            conn.execute(sa.insert(monitors).values(_monitor_values(monitor, machine_id)))
            row = conn.execute(sa.select(monitors).where(monitors.c.id == monitor.id)).one()
        return _monitor(row)

    def _add_device_machine(self, conn: Connection, monitor: Monitor, machine: Machine) -> str:
        if machine.owner_id != monitor.owner_id:
            raise ValueError(
                f"machine {machine.name!r} of monitor {monitor.id!r} must be owned by "
                f"{monitor.owner_id!r}, not {machine.owner_id!r}"
            )
        named = sa.and_(machines.c.owner_id == machine.owner_id, machines.c.name == machine.name)
        if _exists(conn, machines, named):
            raise ConflictError(f"a machine named {machine.name!r} already exists")
        if _exists(conn, machines, machines.c.id == machine.id):
            raise ConflictError(f"a machine with id {machine.id!r} already exists")
        conn.execute(sa.insert(machines).values(machine_values(machine)))
        conn.execute(
            sa.update(device_rows)
            .where(device_rows.c.id == monitor.device_id)
            .values(machine_id=machine.id)
        )
        return machine.id

    def get_monitor(self, monitor_id: str, owner_id: str | None = None) -> Monitor:
        return self._get_owned(monitors, monitor_id, owner_id, _monitor)

    def list_monitors(
        self, owner_id: str | None = None, device_id: str | None = None
    ) -> list[Monitor]:
        query = sa.select(monitors).where(_owned(monitors, owner_id))
        if device_id is not None:
            query = query.where(monitors.c.device_id == device_id)
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(monitors.c.created_at, monitors.c.id)).all()
        return [_monitor(row) for row in rows]

    def update_monitor(self, monitor: Monitor) -> Monitor:
        with self._db.write() as conn:
            current = conn.execute(
                sa.select(monitors.c.owner_id).where(monitors.c.id == monitor.id)
            ).first()
            if current is None:
                raise NotFoundError(f"monitor {monitor.id!r} not found")
            _require_credential(conn, monitor.credential_profile_id, current.owner_id)
            conn.execute(
                sa.update(monitors)
                .where(monitors.c.id == monitor.id)
                .values(_settings_values(monitor))
            )
            row = conn.execute(sa.select(monitors).where(monitors.c.id == monitor.id)).one()
        return _monitor(row)

    def delete_monitor(self, monitor_id: str, owner_id: str | None = None) -> None:
        # The maintenance lock: the device's machine may go, with its series.
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            row = conn.execute(
                sa.select(monitors.c.device_id, monitors.c.machine_id).where(
                    monitors.c.id == monitor_id, _owned(monitors, owner_id)
                )
            ).first()
            if row is None:
                raise NotFoundError(f"monitor {monitor_id!r} not found")
            # The device's row lock first (as add_monitor takes it): a monitor added
            # meanwhile either is seen below or finds the device without a machine.
            conn.execute(
                sa.select(device_rows.c.id)
                .where(device_rows.c.id == row.device_id)
                .with_for_update()
            )
            conn.execute(sa.delete(monitors).where(monitors.c.id == monitor_id))
            if _exists(conn, monitors, monitors.c.device_id == row.device_id):
                return
            conn.execute(
                sa.update(device_rows)
                .where(device_rows.c.id == row.device_id)
                .values(machine_id=None)
            )
            if not _exists(conn, monitors, monitors.c.machine_id == row.machine_id):
                self._delete_machine(conn, row.machine_id)
                bump_config_epoch(self._db, conn)

    def claim_due_monitors(self, now: datetime, lease_until: datetime, limit: int) -> list[Monitor]:
        if limit <= 0:
            return []
        candidates = (
            sa.select(monitors.c.id)
            # "= true", not "IS true": PostgreSQL uses the (enabled, due_at) index for it.
            .where(monitors.c.enabled == sa.true(), monitors.c.due_at <= now, _lease_free(now))
            .order_by(monitors.c.due_at, monitors.c.id)
        )
        # Most ticks find nothing due: looking first in a read transaction keeps an
        # idle poller from taking SQLite's write lock (ingest's) every second. A
        # monitor that falls due just after the look waits for the next tick.
        with self._db.read() as conn:
            if conn.execute(candidates.limit(1)).first() is None:
                return []
        with self._db.write() as conn:
            candidates = candidates.limit(limit)
            if self._db.is_postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(conn.execute(candidates).scalars())
            if not ids:
                return []
            # Re-checks the lease: a candidate another caller took meanwhile is
            # left alone (PostgreSQL re-evaluates the condition after the row lock).
            conn.execute(
                sa.update(monitors)
                .where(monitors.c.id.in_(ids), _lease_free(now))
                .values(lease_until=lease_until, last_attempted=now)
            )
            rows = conn.execute(
                sa.select(monitors)
                .where(
                    monitors.c.id.in_(ids),
                    monitors.c.lease_until == lease_until,
                    monitors.c.last_attempted == now,
                )
                .order_by(monitors.c.due_at, monitors.c.id)
            ).all()
        return [_monitor(row) for row in rows]

    def finish_polls(self, outcomes: Sequence[PollOutcome]) -> None:
        if not outcomes:
            return
        with self._db.write() as conn:
            # In key order, like every multi-row write here (no deadlocks on PostgreSQL).
            for outcome in sorted(outcomes, key=lambda o: o.monitor_id):
                values: dict[str, Any] = {"lease_until": None, "due_at": outcome.due_at}
                if outcome.error is None:
                    values.update(last_polled=outcome.at, failures=0)
                else:
                    values.update(
                        last_error=outcome.error,
                        last_error_at=outcome.at,
                        failures=monitors.c.failures + 1,
                    )
                # A monitor deleted meanwhile matches nothing: skipped.
                conn.execute(
                    sa.update(monitors).where(monitors.c.id == outcome.monitor_id).values(values)
                )

    def release_monitor_leases(self) -> int:
        with self._db.write() as conn:
            released: int = conn.execute(
                sa.update(monitors)
                .where(monitors.c.lease_until.is_not(None))
                .values(lease_until=None)
            ).rowcount
        return released

    # ------------------------------------------------------------------ for the state store

    def _machine_monitors(self, conn: Connection, machine_id: str) -> list[str]:
        """The ids of the monitors writing to a machine (which keep it from deletion)."""
        return _ids(conn, monitors.c.id, monitors.c.machine_id == machine_id)

    def _delete_agentless_of(self, conn: Connection, owner_id: str) -> None:
        """Delete a user's agentless records, users before what they use; the machines
        their monitors wrote to are left for the caller to delete."""
        conn.execute(sa.delete(monitors).where(monitors.c.owner_id == owner_id))
        conn.execute(sa.delete(device_rows).where(device_rows.c.owner_id == owner_id))
        conn.execute(sa.delete(discovery_runs).where(discovery_runs.c.owner_id == owner_id))
        conn.execute(sa.delete(discovery_profiles).where(discovery_profiles.c.owner_id == owner_id))
        conn.execute(
            sa.delete(credential_profiles).where(credential_profiles.c.owner_id == owner_id)
        )


# --------------------------------------------------------------------------- checks


def _named(table: sa.Table, record: CredentialProfile | DiscoveryProfile) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.owner_id == record.owner_id, table.c.name == record.name)


def _require_owner(conn: Connection, owner_id: str, of: str) -> None:
    if not _exists(conn, users, users.c.id == owner_id):
        raise NotFoundError(f"owner {owner_id!r} of {of} not found")


def _require_credential(conn: Connection, profile_id: str | None, owner_id: str) -> None:
    """A credential profile referred to must exist and be the owner's."""
    if profile_id is None:
        return
    condition = sa.and_(
        credential_profiles.c.id == profile_id, credential_profiles.c.owner_id == owner_id
    )
    if not _exists(conn, credential_profiles, condition):
        raise NotFoundError(f"credential profile {profile_id!r} not found")
