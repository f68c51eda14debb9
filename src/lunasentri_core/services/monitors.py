"""Devices and monitors, as one principal sees them.

A device is a host to poll, found by discovery or added by address. A monitor
polls a device with a collector plugin every interval; the first monitor of a
device makes it a machine (of kind ``agentless``) that every later monitor of
the device writes to, so heartbeat, alert rules, queries and the dashboard
treat it as any other machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import Device, Machine, MachineKind, Monitor, PollOutcome, new_id
from lunasentri_core.services import audit
from lunasentri_core.services.credentials import collector_names
from lunasentri_core.services.hosts import check_host
from lunasentri_core.services.machines import MAX_NAME, owner_scope
from lunasentri_core.services.scheduling import first_due
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

MIN_INTERVAL = timedelta(seconds=5)
RETRY_ALLOWANCE = timedelta(minutes=2)
"""Added to twice the longest interval for an agentless machine's offline threshold:
a poll's retries may take that long before it records a failure."""
MAX_INTERVAL = timedelta(days=1)
MAX_OPTIONS_BYTES = 16 * 1024
"""A monitor's collector options, as JSON."""


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


def switched(monitor: Monitor, enabled: bool, now: datetime) -> Monitor:
    """``monitor`` enabled or disabled; one enabled again polls within ten seconds."""
    if enabled == monitor.enabled:
        return monitor
    due = first_due(now, min(monitor.interval, timedelta(seconds=10)))
    return attrs.evolve(monitor, enabled=enabled, due_at=due)


def check_interval(interval: timedelta) -> timedelta:
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise _invalid(
            "interval",
            f"must be between {MIN_INTERVAL.total_seconds():g} seconds and {MAX_INTERVAL.days} day",
        )
    return interval


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(options, separators=(",", ":")).encode())
    if size > MAX_OPTIONS_BYTES:
        raise _invalid("options", f"{size} bytes of JSON; at most {MAX_OPTIONS_BYTES}")
    return dict(options)


class Devices:
    """Devices as one principal sees them."""

    def __init__(self, hub: Sentri) -> None:
        self._hub = hub

    @property
    def _state(self) -> StateStore:
        return self._hub.storage.state

    async def add(self, actor: Principal, address: str, *, client: str | None = None) -> Device:
        """A device by address (a host name or an IP address), without discovery."""
        now = self._hub.clock()
        device = Device(
            id=new_id(),
            owner_id=actor.id,
            address=check_host(address, "address"),
            first_seen=now,
            created_at=now,
        )
        stored = await self._hub.run_sync(self._state.add_device, device)
        await self._audit("device.create", actor, stored, client)
        return stored

    async def get(self, actor: Principal, device_id: str) -> Device:
        return await self._hub.run_sync(self._state.get_device, device_id, owner_scope(actor))

    async def all(self, actor: Principal) -> list[Device]:
        return await self._hub.run_sync(self._state.list_devices, owner_scope(actor))

    async def delete(self, actor: Principal, device_id: str, *, client: str | None = None) -> None:
        """Refused with ``InUseError`` while monitors poll it."""
        device = await self.get(actor, device_id)
        await self._hub.run_sync(self._state.delete_device, device_id, owner_scope(actor))
        await self._audit("device.delete", actor, device, client)

    async def _audit(
        self, action: str, actor: Principal, device: Device, client: str | None
    ) -> None:
        await audit.record(
            self._hub,
            action=action,
            actor=actor,
            target_type="device",
            target_id=device.id,
            client=client,
            detail={"address": device.address},
        )


@attrs.frozen
class MonitorChanges:
    """What an update of a monitor may change (``None``: unchanged)."""

    credential_profile_id: str | None = None
    interval: timedelta | None = None
    enabled: bool | None = None
    options: Mapping[str, Any] | None = None


class Monitors:
    """Monitors as one principal sees them."""

    def __init__(self, hub: Sentri) -> None:
        self._hub = hub

    @property
    def _state(self) -> StateStore:
        return self._hub.storage.state

    async def create(
        self,
        actor: Principal,
        *,
        device_id: str,
        credential_profile_id: str,
        collector: str,
        interval: timedelta,
        enabled: bool = True,
        options: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> Monitor:
        """A monitor owned by the device's owner; the device becomes a machine if it
        is not one yet."""
        self._check_collector(collector)
        check_interval(interval)
        scope = owner_scope(actor)
        device = await self._hub.run_sync(self._state.get_device, device_id, scope)
        profile = await self._hub.run_sync(
            self._state.get_credential_profile, credential_profile_id, scope
        )
        if profile.owner_id != device.owner_id:
            raise _invalid("credential_profile_id", "must belong to the device's owner")
        now = self._hub.clock()
        machine = await self._machine_for(device, now)
        monitor = Monitor(
            id=new_id(),
            owner_id=device.owner_id,
            device_id=device.id,
            credential_profile_id=profile.id,
            collector=collector,
            machine_id=machine.id,
            interval=interval,
            enabled=enabled,
            options=check_options(options or {}),
            due_at=first_due(now, interval),
            created_at=now,
        )
        stored = await self._hub.run_sync(self._state.add_monitor, monitor, machine)
        await self._fit_offline_threshold(stored)
        await self._audit("monitor.create", actor, stored, client, {"collector": collector})
        return stored

    async def _fit_offline_threshold(self, monitor: Monitor) -> None:
        """An agentless machine is offline after two of its longest poll intervals
        without a successful poll (plus time for retries), not after the server's
        default threshold, which a slow schedule would cross between two polls."""

        def fit() -> None:
            monitors = self._state.list_monitors(None, device_id=monitor.device_id)
            if not monitors:
                return
            machine = self._state.get_machine(monitor.machine_id)
            threshold = 2 * max(m.interval for m in monitors) + RETRY_ALLOWANCE
            if machine.kind is MachineKind.AGENTLESS and machine.offline_after != threshold:
                self._state.update_machine(attrs.evolve(machine, offline_after=threshold))

        await self._hub.run_sync(fit)
        self._hub.forget_machine(monitor.machine_id)

    async def _machine_for(self, device: Device, now: datetime) -> Machine:
        """The machine a device's first monitor makes (the store keeps an existing one)."""
        name = await self._hub.run_sync(self._free_name, device)
        return Machine(
            id=new_id(),
            name=name,
            owner_id=device.owner_id,
            hostname=device.address,
            kind=MachineKind.AGENTLESS,
            created_at=now,
        )

    def _free_name(self, device: Device) -> str:
        """The device's host name, or its address, as a machine name its owner has not used."""
        candidates = [device.hostname, device.address, f"{device.hostname} ({device.address})"]
        for name in [c[:MAX_NAME] for c in candidates if c]:
            if self._state.find_machine(name, device.owner_id) is None:
                return name
        return f"{device.address} {new_id()[:6]}"[:MAX_NAME]

    async def get(self, actor: Principal, monitor_id: str) -> Monitor:
        return await self._hub.run_sync(self._state.get_monitor, monitor_id, owner_scope(actor))

    async def all(self, actor: Principal, device_id: str | None = None) -> list[Monitor]:
        return await self._hub.run_sync(
            lambda: self._state.list_monitors(owner_scope(actor), device_id=device_id)
        )

    async def update(
        self,
        actor: Principal,
        monitor_id: str,
        changes: MonitorChanges,
        *,
        client: str | None = None,
    ) -> Monitor:
        current = await self.get(actor, monitor_id)
        monitor = await self._changed(actor, current, changes, self._hub.clock())
        stored = await self._hub.run_sync(self._state.update_monitor, monitor)
        if changes.interval is not None:
            await self._fit_offline_threshold(stored)
        given = [
            f.name for f in attrs.fields(MonitorChanges) if getattr(changes, f.name) is not None
        ]
        await self._audit("monitor.update", actor, stored, client, {"fields": given})
        return stored

    async def _changed(
        self, actor: Principal, monitor: Monitor, changes: MonitorChanges, now: datetime
    ) -> Monitor:
        if changes.credential_profile_id is not None:
            profile_id = changes.credential_profile_id
            profile = await self._hub.run_sync(
                self._state.get_credential_profile, profile_id, owner_scope(actor)
            )
            if profile.owner_id != monitor.owner_id:
                raise _invalid("credential_profile_id", "must belong to the monitor's owner")
            monitor = attrs.evolve(monitor, credential_profile_id=profile.id)
        if changes.interval is not None:
            interval = check_interval(changes.interval)
            # A shorter interval takes effect now, not after the old, longer wait.
            due = min(monitor.due_at, now + interval)
            monitor = attrs.evolve(monitor, interval=interval, due_at=due)
        if changes.options is not None:
            monitor = attrs.evolve(monitor, options=check_options(changes.options))
        if changes.enabled is not None:
            monitor = switched(monitor, changes.enabled, now)
        return monitor

    async def poll_now(
        self, actor: Principal, monitor_id: str, *, client: str | None = None
    ) -> tuple[Monitor, PollOutcome]:
        """Poll it now (disabled too), wait for the outcome; its schedule stays."""
        outcome = await self._hub.poller.poll_now(monitor_id, owner_scope(actor))
        monitor = await self.get(actor, monitor_id)
        await self._audit("monitor.poll", actor, monitor, client, {"ok": outcome.error is None})
        return monitor, outcome

    async def delete(self, actor: Principal, monitor_id: str, *, client: str | None = None) -> None:
        """Delete it; the device's last monitor takes the device's machine and metrics."""
        monitor = await self.get(actor, monitor_id)
        await self._hub.run_sync(self._state.delete_monitor, monitor_id, owner_scope(actor))
        self._hub.forget_machine(monitor.machine_id)
        await self._fit_offline_threshold(monitor)
        await self._audit("monitor.delete", actor, monitor, client)

    def _check_collector(self, name: str) -> None:
        names = collector_names(self._hub)
        if name not in names:
            raise _invalid(
                "collector", f"no collector plugin {name!r} (installed: {', '.join(names)})"
            )

    async def _audit(
        self,
        action: str,
        actor: Principal,
        monitor: Monitor,
        client: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        await audit.record(
            self._hub,
            action=action,
            actor=actor,
            target_type="monitor",
            target_id=monitor.id,
            client=client,
            detail={"device_id": monitor.device_id, **(detail or {})},
        )


def outcome(monitor: Monitor) -> str:
    """How the monitor's polling goes: ``disabled``, ``pending`` (never polled yet),
    ``ok`` (the last poll succeeded) or ``failing``."""
    if not monitor.enabled:
        return "disabled"
    if monitor.failures:
        return "failing"
    return "ok" if monitor.last_polled is not None else "pending"
