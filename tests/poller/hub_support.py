"""Monitors in a real hub (SQLite file) for the poller's end-to-end tests."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from lunasentri_core import Reading, RemoteRefusedError, Sentri, Settings, Target
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    Machine,
    MachineKind,
    Monitor,
    User,
    new_id,
)
from lunasentri_core.remote import Transport
from lunasentri_core.testing import make_plugin

USERNAME, PASSWORD = "svc-poll", "poll-password"


class Hosts:
    """A stand-in remote collector: hosts answer, refuse, or wait at a gate."""

    name: ClassVar[str] = "hosts"
    settings_class: ClassVar[None] = None
    calls: ClassVar[Counter[str]] = Counter()
    down: ClassVar[set[str]] = set()
    gate: ClassVar[threading.Event] = threading.Event()
    passwords: ClassVar[list[str | None]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        cls.calls.clear()
        cls.down.clear()
        cls.passwords.clear()
        cls.gate.set()

    def collect(self, target: Target) -> list[Reading]:
        host = target.host or ""
        with self._lock:
            self.calls[host] += 1
            self.passwords.append(target.credential.password if target.credential else None)
        self.gate.wait(30)
        if host in self.down:
            raise RemoteRefusedError(f"connection to {host}:5985 refused")
        return [Reading("cpu.percent", 12.5), Reading("proc.count", 99)]


def host_plugins() -> dict[str, object]:
    return {"hosts": make_plugin("hosts", lunasentri_register_collectors=lambda: [Hosts])}


def hub_settings(data_dir: Path, **agentless: Any) -> Settings:
    values = {
        "workers": 4,
        "poll_timeout": "5s",
        "retries": 2,
        "retry_backoff": 0.01,
        "tick": 0.02,
    }
    return Settings.load(
        environ={}, data_dir=data_dir, heartbeat_interval="1d", agentless=values | agentless
    )


def add_monitors(
    hub: Sentri,
    addresses: list[str],
    *,
    due_at: datetime,
    interval: timedelta = timedelta(minutes=1),
    enabled: bool = True,
) -> list[Monitor]:
    """A user, a credential profile with a sealed password, and a monitor per address
    (blocking: run it in a thread)."""
    state = hub.storage.state
    user = state.find_user("poll-owner") or state.add_user(
        User(id=new_id(), username="poll-owner"), "x"
    )
    profile = CredentialProfile(
        id=new_id(),
        owner_id=user.id,
        name=f"profile {new_id()[:6]}",
        transport=Transport.BASIC,
        username=USERNAME,
        https=False,
    )
    profile = state.add_credential_profile(hub.credentials.seal(profile, PASSWORD))
    monitors = []
    for address in addresses:
        device = state.add_device(Device(id=new_id(), owner_id=user.id, address=address))
        machine = Machine(id=new_id(), name=address, owner_id=user.id, kind=MachineKind.AGENTLESS)
        monitor = Monitor(
            id=new_id(),
            owner_id=user.id,
            device_id=device.id,
            credential_profile_id=profile.id,
            collector="hosts",
            machine_id=machine.id,
            interval=interval,
            enabled=enabled,
            due_at=due_at,
        )
        monitors.append(state.add_monitor(monitor, machine))
    return monitors
