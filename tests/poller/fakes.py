"""Small in-memory parts for the poller's unit tests: a store, a clock, collectors.

The store keeps the rules of :class:`~lunasentri_core.storage.AgentlessStore`
that the poller relies on (claims under a lock, leases, outcomes); the poller's
tests through the hub use the real SQLite store.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import attrs

from lunasentri_core.config import AgentlessSettings
from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import Device, Monitor, PollOutcome, Reading, Sample, Target, new_id
from lunasentri_core.remote import RemoteCredential
from lunasentri_core.services.poller import Poller

R = TypeVar("R")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OWNER = "owner-1"


class Clock:
    """The poller's "now", moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class FakeStore:
    """Devices and monitors in memory, claimed under a lock as the real store does."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.monitors: dict[str, Monitor] = {}
        self.claims: Counter[str] = Counter()
        self.finished: list[PollOutcome] = []
        self.finish_calls = 0
        self._lock = threading.Lock()

    def add(self, address: str = "127.0.0.1", **fields: Any) -> Monitor:
        device = Device(id=new_id(), owner_id=OWNER, address=address)
        self.devices[device.id] = device
        values: dict[str, Any] = {
            "id": new_id(),
            "owner_id": OWNER,
            "device_id": device.id,
            "credential_profile_id": "profile-1",
            "collector": "stub",
            "machine_id": f"machine-{address}",
            "due_at": T0,
        }
        monitor = Monitor(**(values | fields))
        self.monitors[monitor.id] = monitor
        return monitor

    def get_device(self, device_id: str, owner_id: str | None = None) -> Device:
        device = self.devices.get(device_id)
        if device is None or owner_id not in (None, device.owner_id):
            raise NotFoundError(f"no device {device_id}")
        return device

    def get_monitor(self, monitor_id: str, owner_id: str | None = None) -> Monitor:
        monitor = self.monitors.get(monitor_id)
        if monitor is None or owner_id not in (None, monitor.owner_id):
            raise NotFoundError(f"no monitor {monitor_id}")
        return monitor

    def delete_monitor(self, monitor_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            del self.monitors[monitor_id]

    def claim_due_monitors(self, now: datetime, lease_until: datetime, limit: int) -> list[Monitor]:
        with self._lock:
            free = [
                m
                for m in self.monitors.values()
                if m.enabled and m.due_at <= now and (m.lease_until is None or m.lease_until <= now)
            ]
            free.sort(key=lambda m: m.due_at)
            taken = []
            for monitor in free[:limit]:
                claimed = attrs.evolve(monitor, lease_until=lease_until, last_attempted=now)
                self.monitors[monitor.id] = claimed
                self.claims[monitor.id] += 1
                taken.append(claimed)
            return taken

    def finish_polls(self, outcomes: Sequence[PollOutcome]) -> None:
        with self._lock:
            self.finish_calls += 1
            for outcome in outcomes:
                self.finished.append(outcome)
                monitor = self.monitors.get(outcome.monitor_id)
                if monitor is None:
                    continue
                if outcome.error is None:
                    monitor = attrs.evolve(
                        monitor, last_polled=outcome.at, failures=0, last_error=None
                    )
                else:
                    monitor = attrs.evolve(
                        monitor,
                        last_error=outcome.error,
                        last_error_at=outcome.at,
                        failures=monitor.failures + 1,
                    )
                self.monitors[monitor.id] = attrs.evolve(
                    monitor, lease_until=None, due_at=outcome.due_at
                )

    def release_monitor_leases(self) -> int:
        with self._lock:
            leased = [m for m in self.monitors.values() if m.lease_until is not None]
            for monitor in leased:
                self.monitors[monitor.id] = attrs.evolve(monitor, lease_until=None)
            return len(leased)


class FakeCredentials:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    async def remote_credential(
        self, profile_id: str, owner_id: str | None = None
    ) -> RemoteCredential:
        self.asked.append((profile_id, owner_id))
        return RemoteCredential(username="monitor", password="s3cret", https=False)


class Recorder:
    """Collects what the poller writes, as ``Sentri.ingest`` would store it."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self.heard: dict[str, list[bool]] = {}
        self.refuse: set[str] = set()

    async def ingest(
        self, machine_id: str, samples: Iterable[Sample], *, heard: bool = True
    ) -> int:
        if machine_id in self.refuse:
            raise NotFoundError(f"no machine {machine_id}")
        samples = list(samples)
        self.samples.setdefault(machine_id, []).extend(samples)
        self.heard.setdefault(machine_id, []).append(heard)
        return sum(len(s.readings) for s in samples)

    def values(self, machine_id: str, metric: str) -> list[float]:
        return [
            r.value
            for s in self.samples.get(machine_id, [])
            for r in s.readings
            if r.metric == metric
        ]


class StubCollector:
    """A blocking collector: counts calls per host, can fail, hang, or wait at a gate."""

    name = "stub"
    settings_class = None

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.targets: list[Target] = []
        self.threads: set[int] = set()
        self.running = 0
        self.most_running = 0
        self.fail: dict[str, Callable[[int], Exception | None]] = {}
        self.hang: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.released = threading.Event()  # ends every hang (at the test's end)
        self.call_times: list[float] = []
        self._lock = threading.Lock()

    def collect(self, target: Target) -> list[Reading]:
        host = target.host or ""
        with self._lock:
            self.calls[host] += 1
            attempt = self.calls[host]
            self.targets.append(target)
            self.threads.add(threading.get_ident())
            self.call_times.append(time.monotonic())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if host in self.hang:
                self.released.wait()
                raise TimeoutError("hung host released")
            self.gate.wait()
            failure = self.fail.get(host)
            error = failure(attempt) if failure is not None else None
            if error is not None:
                raise error
            return [Reading("cpu.percent", float(attempt))]
        finally:
            with self._lock:
                self.running -= 1


async def run_sync(func: Callable[..., R], /, *args: Any) -> R:
    return await anyio.to_thread.run_sync(lambda: func(*args))


def make_poller(
    store: FakeStore,
    collector: object,
    *,
    clock: Callable[[], datetime],
    recorder: Recorder | None = None,
    release_leases_at_start: bool = False,
    **settings: Any,
) -> Poller:
    values: dict[str, Any] = {
        "workers": 8,
        "poll_timeout": timedelta(seconds=5),
        "retries": 2,
        "retry_backoff": timedelta(milliseconds=10),
        "tick": timedelta(milliseconds=20),
    }
    return Poller(
        store,
        settings=AgentlessSettings(**(values | settings)),
        credentials=FakeCredentials(),
        collector=lambda name: collector,  # type: ignore[arg-type,return-value]
        ingest=(recorder or Recorder()).ingest,
        run_sync=run_sync,
        clock=clock,
        release_leases_at_start=release_leases_at_start,
    )


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Wait for ``condition`` (a deadline only against hanging; never asserted as timing)."""
    try:
        with anyio.fail_after(limit):
            while not condition():
                await anyio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"gave up waiting: {what}") from None
