"""The agentless records of the in-memory state store the kit's own tests run the contract on.

A plain reading of :class:`~lunasentri_core.storage.AgentlessStore`'s docstrings,
to show the contract can be met simply; its ``flaws`` break one rule each, to
show the contract notices:

* ``agentless-unscoped``: reads ignore the owner;
* ``deletes-in-use``: deletions never refuse;
* ``duplicate-devices``: ``upsert_devices`` always inserts;
* ``monitor-leases-ignored``: ``claim_due_monitors`` takes leased monitors too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs

from lunasentri_core import ConflictError, Machine, NotFoundError, User
from lunasentri_core.errors import InUseError
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    DiscoveryProfile,
    DiscoveryRun,
    Monitor,
    PollOutcome,
    RunState,
    utcnow,
)

_R = TypeVar("_R", CredentialProfile, DiscoveryProfile, DiscoveryRun, Device, Monitor)


class MemoryAgentless:
    """The agentless part of ``MemoryState`` (a mixin sharing its lock and records)."""

    _lock: threading.RLock
    _flaws: set[str]
    _users: dict[str, User]
    _machines: dict[str, Machine]

    def _init_agentless(self, drop_series: Callable[[str], object]) -> None:
        self._credentials: dict[str, CredentialProfile] = {}
        self._discoveries: dict[str, DiscoveryProfile] = {}
        self._runs: dict[str, DiscoveryRun] = {}
        self._run_updated: dict[str, datetime] = {}
        self._devices: dict[str, Device] = {}
        self._monitors: dict[str, Monitor] = {}
        self._drop_series = drop_series

    def _changed(self) -> None:
        raise NotImplementedError

    def _remove_machine(self, machine_id: str) -> None:
        """Delete a machine with its series (``MemoryState`` provides it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def _scoped(
        self, records: dict[str, _R], record_id: str, owner_id: str | None, what: str
    ) -> _R:
        record = records.get(record_id)
        if record is None or (
            owner_id not in (None, record.owner_id) and "agentless-unscoped" not in self._flaws
        ):
            raise NotFoundError(f"{what} {record_id!r} not found")
        return record

    def _listed(self, records: dict[str, _R], owner_id: str | None) -> list[_R]:
        return [r for r in records.values() if owner_id in (None, r.owner_id)]

    def _require_owner(self, owner_id: str) -> None:
        if owner_id not in self._users:
            raise NotFoundError(f"owner {owner_id!r} not found")

    def _require_credential(self, profile_id: str | None, owner_id: str) -> None:
        if profile_id is not None:
            self._scoped(self._credentials, profile_id, owner_id, "credential profile")

    def _refuse(self, what: str, users: dict[str, list[str]]) -> None:
        if any(users.values()) and "deletes-in-use" not in self._flaws:
            raise InUseError(what, {kind: sorted(ids) for kind, ids in users.items()})

    @staticmethod
    def _check_name(records: dict[str, Any], record: Any, what: str) -> None:
        for other in records.values():
            if (other.owner_id, other.name) == (record.owner_id, record.name) and (
                other.id != record.id
            ):
                raise ConflictError(f"a {what} named {record.name!r} already exists")

    # ------------------------------------------------------------------ credential profiles

    def add_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        with self._lock:
            self._require_owner(profile.owner_id)
            self._check_name(self._credentials, profile, "credential profile")
            self._credentials[profile.id] = profile
            self._changed()
            return profile

    def get_credential_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> CredentialProfile:
        return self._scoped(self._credentials, profile_id, owner_id, "credential profile")

    def list_credential_profiles(self, owner_id: str | None = None) -> list[CredentialProfile]:
        return sorted(self._listed(self._credentials, owner_id), key=lambda p: (p.name, p.id))

    def update_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        with self._lock:
            current = self._scoped(self._credentials, profile.id, None, "credential profile")
            stored = attrs.evolve(
                profile,
                owner_id=current.owner_id,
                created_at=current.created_at,
                version=current.version + 1,
            )
            self._check_name(self._credentials, stored, "credential profile")
            self._credentials[profile.id] = stored
            self._changed()
            return stored

    def delete_credential_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            self._scoped(self._credentials, profile_id, owner_id, "credential profile")
            self._refuse(
                f"credential profile {profile_id!r}",
                {
                    "monitors": [
                        m.id
                        for m in self._monitors.values()
                        if m.credential_profile_id == profile_id
                    ],
                    "discovery_profiles": [
                        d.id
                        for d in self._discoveries.values()
                        if d.credential_profile_id == profile_id
                    ],
                },
            )
            for device in list(self._devices.values()):
                if device.credential_profile_id == profile_id:
                    self._devices[device.id] = attrs.evolve(device, credential_profile_id=None)
            del self._credentials[profile_id]
            self._changed()

    def list_credential_secrets(self) -> list[tuple[str, str]]:
        return [(p.id, p.secret) for p in self._credentials.values() if p.secret is not None]

    def replace_credential_secret(self, profile_id: str, old: str, new: str) -> bool:
        with self._lock:
            current = self._credentials.get(profile_id)
            if current is None or current.secret != old:
                return False
            self._credentials[profile_id] = attrs.evolve(current, secret=new)
            self._changed()
            return True

    # ------------------------------------------------------------------ discovery

    def add_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile:
        with self._lock:
            self._require_owner(profile.owner_id)
            self._require_credential(profile.credential_profile_id, profile.owner_id)
            self._check_name(self._discoveries, profile, "discovery profile")
            self._discoveries[profile.id] = profile
            return profile

    def get_discovery_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> DiscoveryProfile:
        return self._scoped(self._discoveries, profile_id, owner_id, "discovery profile")

    def list_discovery_profiles(self, owner_id: str | None = None) -> list[DiscoveryProfile]:
        return sorted(self._listed(self._discoveries, owner_id), key=lambda p: (p.name, p.id))

    def update_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile:
        with self._lock:
            current = self._scoped(self._discoveries, profile.id, None, "discovery profile")
            stored = attrs.evolve(profile, owner_id=current.owner_id, created_at=current.created_at)
            self._require_credential(stored.credential_profile_id, stored.owner_id)
            self._check_name(self._discoveries, stored, "discovery profile")
            self._discoveries[profile.id] = stored
            return stored

    def delete_discovery_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            self._scoped(self._discoveries, profile_id, owner_id, "discovery profile")
            for run in [r for r in self._runs.values() if r.profile_id == profile_id]:
                del self._runs[run.id]
            for device in list(self._devices.values()):
                if device.discovery_profile_id == profile_id:
                    self._devices[device.id] = attrs.evolve(device, discovery_profile_id=None)
            del self._discoveries[profile_id]

    def add_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        with self._lock:
            self._scoped(self._discoveries, run.profile_id, run.owner_id, "discovery profile")
            if any(
                r.profile_id == run.profile_id and r.state is RunState.RUNNING
                for r in self._runs.values()
            ):
                raise ConflictError(f"discovery profile {run.profile_id!r} is already running")
            self._runs[run.id] = run
            self._run_updated[run.id] = utcnow()
            return run

    def update_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        with self._lock:
            current = self._scoped(self._runs, run.id, None, "discovery run")
            stored = attrs.evolve(
                run,
                profile_id=current.profile_id,
                owner_id=current.owner_id,
                started_at=current.started_at,
            )
            self._runs[run.id] = stored
            self._run_updated[run.id] = utcnow()
            return stored

    def get_discovery_run(self, run_id: str, owner_id: str | None = None) -> DiscoveryRun:
        return self._scoped(self._runs, run_id, owner_id, "discovery run")

    def list_discovery_runs(
        self, profile_id: str, owner_id: str | None = None, limit: int = 50
    ) -> list[DiscoveryRun]:
        self._scoped(self._discoveries, profile_id, owner_id, "discovery profile")
        runs = [r for r in self._runs.values() if r.profile_id == profile_id]
        runs.sort(key=lambda r: (r.started_at, r.id), reverse=True)
        return runs[: max(0, limit)]

    def fail_discovery_runs(self, updated_before: datetime, at: datetime, reason: str) -> int:
        with self._lock:
            silent = [
                r
                for r in self._runs.values()
                if r.state is RunState.RUNNING and self._run_updated[r.id] < updated_before
            ]
            for run in silent:
                self._runs[run.id] = attrs.evolve(
                    run, state=RunState.FAILED, finished_at=at, error=reason
                )
                self._run_updated[run.id] = at
            return len(silent)

    # ------------------------------------------------------------------ devices

    def upsert_devices(self, devices: Sequence[Device]) -> list[Device]:
        with self._lock:
            return [self._upsert_device(device) for device in devices]

    def _upsert_device(self, device: Device) -> Device:
        self._require_owner(device.owner_id)
        known = {
            "credential_profile_id": self._credentials,
            "discovery_profile_id": self._discoveries,
        }
        for field, records in known.items():
            ref = getattr(device, field)
            if ref is not None and (ref not in records or records[ref].owner_id != device.owner_id):
                device = attrs.evolve(device, **{field: None})
        current = next(
            (
                d
                for d in self._devices.values()
                if (d.owner_id, d.address) == (device.owner_id, device.address)
            ),
            None,
        )
        if current is None or "duplicate-devices" in self._flaws:
            stored = attrs.evolve(device, machine_id=None)
        else:
            stored = attrs.evolve(
                device,
                id=current.id,
                machine_id=current.machine_id,
                first_seen=current.first_seen,
                created_at=current.created_at,
            )
        self._devices[stored.id] = stored
        return stored

    def add_device(self, device: Device) -> Device:
        with self._lock:
            self._require_owner(device.owner_id)
            self._require_credential(device.credential_profile_id, device.owner_id)
            if device.discovery_profile_id is not None:
                self._scoped(
                    self._discoveries,
                    device.discovery_profile_id,
                    device.owner_id,
                    "discovery profile",
                )
            if any(
                (d.owner_id, d.address) == (device.owner_id, device.address)
                for d in self._devices.values()
            ):
                raise ConflictError(f"a device with address {device.address!r} already exists")
            self._devices[device.id] = device
            return device

    def get_device(self, device_id: str, owner_id: str | None = None) -> Device:
        return self._scoped(self._devices, device_id, owner_id, "device")

    def list_devices(self, owner_id: str | None = None) -> list[Device]:
        return sorted(self._listed(self._devices, owner_id), key=lambda d: (d.address, d.id))

    def delete_device(self, device_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            self._scoped(self._devices, device_id, owner_id, "device")
            self._refuse(
                f"device {device_id!r}",
                {"monitors": [m.id for m in self._monitors.values() if m.device_id == device_id]},
            )
            del self._devices[device_id]

    # ------------------------------------------------------------------ monitors

    def add_monitor(self, monitor: Monitor, machine: Machine) -> Monitor:
        with self._lock:
            device = self._scoped(self._devices, monitor.device_id, monitor.owner_id, "device")
            if device.owner_id != monitor.owner_id:
                raise NotFoundError(f"device {monitor.device_id!r} not found")
            self._require_credential(monitor.credential_profile_id, monitor.owner_id)
            if any(
                (m.device_id, m.collector) == (monitor.device_id, monitor.collector)
                for m in self._monitors.values()
            ):
                raise ConflictError(f"device already has a {monitor.collector!r} monitor")
            machine_id = device.machine_id
            if machine_id is None:
                self._machines[machine.id] = machine
                self._devices[device.id] = attrs.evolve(device, machine_id=machine.id)
                machine_id = machine.id
            stored = attrs.evolve(monitor, machine_id=machine_id)
            self._monitors[monitor.id] = stored
            return stored

    def get_monitor(self, monitor_id: str, owner_id: str | None = None) -> Monitor:
        return self._scoped(self._monitors, monitor_id, owner_id, "monitor")

    def list_monitors(
        self, owner_id: str | None = None, device_id: str | None = None
    ) -> list[Monitor]:
        return sorted(
            (m for m in self._listed(self._monitors, owner_id) if device_id in (None, m.device_id)),
            key=lambda m: (m.created_at, m.id),
        )

    def update_monitor(self, monitor: Monitor) -> Monitor:
        with self._lock:
            current = self._scoped(self._monitors, monitor.id, None, "monitor")
            self._require_credential(monitor.credential_profile_id, current.owner_id)
            stored = attrs.evolve(
                current,
                credential_profile_id=monitor.credential_profile_id,
                interval=monitor.interval,
                enabled=monitor.enabled,
                options=monitor.options,
                due_at=monitor.due_at,
            )
            self._monitors[monitor.id] = stored
            return stored

    def delete_monitor(self, monitor_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            monitor = self._scoped(self._monitors, monitor_id, owner_id, "monitor")
            del self._monitors[monitor_id]
            if any(m.device_id == monitor.device_id for m in self._monitors.values()):
                return
            device = self._devices[monitor.device_id]
            self._devices[device.id] = attrs.evolve(device, machine_id=None)
            self._remove_machine(monitor.machine_id)
            self._changed()

    def claim_due_monitors(self, now: datetime, lease_until: datetime, limit: int) -> list[Monitor]:
        with self._lock:
            ignore_leases = "monitor-leases-ignored" in self._flaws
            due = sorted(
                (
                    m
                    for m in self._monitors.values()
                    if m.enabled
                    and m.due_at <= now
                    and (ignore_leases or m.lease_until is None or m.lease_until <= now)
                ),
                key=lambda m: (m.due_at, m.id),
            )[: max(0, limit)]
            claimed = [attrs.evolve(m, lease_until=lease_until, last_attempted=now) for m in due]
            self._monitors.update((m.id, m) for m in claimed)
            return claimed

    def finish_polls(self, outcomes: Sequence[PollOutcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                current = self._monitors.get(outcome.monitor_id)
                if current is None:
                    continue
                if outcome.error is None:
                    done = attrs.evolve(current, last_polled=outcome.at, failures=0)
                else:
                    done = attrs.evolve(
                        current,
                        last_error=outcome.error,
                        last_error_at=outcome.at,
                        failures=current.failures + 1,
                    )
                self._monitors[current.id] = attrs.evolve(
                    done, lease_until=None, due_at=outcome.due_at
                )

    def release_monitor_leases(self) -> int:
        with self._lock:
            leased = [m for m in self._monitors.values() if m.lease_until is not None]
            self._monitors.update((m.id, attrs.evolve(m, lease_until=None)) for m in leased)
            return len(leased)

    # ------------------------------------------------------------------ for MemoryState

    def _refuse_monitored_machine(self, machine_id: str) -> None:
        self._refuse(
            f"machine {machine_id!r}",
            {"monitors": [m.id for m in self._monitors.values() if m.machine_id == machine_id]},
        )

    def _unlink_machine(self, machine_id: str) -> None:
        for device in list(self._devices.values()):
            if device.machine_id == machine_id:
                self._devices[device.id] = attrs.evolve(device, machine_id=None)

    def _delete_agentless_of(self, owner_id: str) -> None:
        for records in (
            self._monitors,
            self._devices,
            self._runs,
            self._discoveries,
            self._credentials,
        ):
            for record_id in [k for k, r in records.items() if r.owner_id == owner_id]:
                del records[record_id]
