"""The wmi collector: Windows hosts measured through WQL over WS-Management."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs

from lunasentri_core import HostIdentity, Reading, Target
from lunasentri_winrm.transport import connection, wsman_identify
from lunasentri_wmi import local
from lunasentri_wmi.cim import WmiObject
from lunasentri_wmi.counters import RawSample, bulk_count_rate, inverse_timer_percent
from lunasentri_wmi.enumeration import MessageSender, query
from lunasentri_wmi.settings import WmiSettings
from lunasentri_wmi.snapshot import (
    IDENTITY_NAME_QUERY,
    IDENTITY_OS_QUERY,
    TOTAL,
    Counters,
    WmiSource,
    compile_patterns,
    read,
)

_FORGET_AFTER = 24 * 3600.0
"""Seconds after which the counters of a target no longer polled are dropped."""


@attrs.frozen
class _Remembered:
    counters: Counters
    at: float  # monotonic, for forgetting targets no longer polled


@attrs.frozen
class WsmanSource:
    """WQL queries to a remote host through a pywinrm protocol."""

    protocol: MessageSender
    max_elements: int

    def query(self, wql: str) -> Iterator[WmiObject]:
        return query(self.protocol, wql, max_elements=self.max_elements)


class WmiCollector:
    """CPU, memory, paging files, fixed disks, network, processes and uptime of a Windows host.

    Asks WMI with WQL over WS-Management (no PowerShell on the host); on Windows
    with the ``wmi`` package installed, a target without a host is this machine.
    CPU percentages and network rates come from raw counters, between two polls
    of the same target (by ``machine_id``): the first poll of a target has none.
    """

    name: ClassVar[str] = "wmi"
    settings_class: ClassVar[type[Any] | None] = WmiSettings

    def __init__(
        self, settings: WmiSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock`` (seconds, monotonic) decides when a target no longer polled is forgotten."""
        self.settings = settings if settings is not None else WmiSettings()
        self._clock = clock
        self._skip_nics = compile_patterns(self.settings.skip_nics)
        self._lock = threading.Lock()
        self._remembered: dict[str, _Remembered] = {}
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ public

    def collect(self, target: Target) -> list[Reading]:
        """Poll ``target`` once; blocks on the network (the hub runs it in a thread).

        Raises a :class:`~lunasentri_core.RemoteError` when the host cannot be
        reached, refuses the credential or answers with a fault.
        """
        with self._source(target) as source:
            snapshot = read(source, per_cpu=self.settings.per_cpu, skip_nics=self._skip_nics)
        previous = self._advance(target.machine_id, snapshot.counters)
        readings = list(snapshot.readings)
        readings.extend(self._rates(snapshot.counters, previous))
        return readings

    def identify(self, target: Target) -> HostIdentity:
        """Log in to ``target`` and ask its name and operating system.

        A WS-Management Identify first (the cheapest authenticated round trip:
        a wrong credential fails there), then two one-row WQL queries.
        """
        with self._source(target, identify=True) as source:
            systems = list(source.query(IDENTITY_OS_QUERY))
            computers = list(source.query(IDENTITY_NAME_QUERY))
        system = systems[0] if systems else None
        computer = computers[0] if computers else None
        hostname = None
        if computer is not None:
            hostname = computer.text("DNSHostName") or computer.text("Name")
        return HostIdentity(
            hostname=_stripped(hostname),
            os=_stripped(system.text("Caption") if system is not None else None),
            os_version=_stripped(system.text("Version") if system is not None else None),
        )

    # ------------------------------------------------------------------ reaching the host

    @contextmanager
    def _source(self, target: Target, identify: bool = False) -> Iterator[WmiSource]:
        if target.host is None:
            with local.local_source() as source:
                yield source
            return
        settings = self.settings
        with connection(
            target,
            read_timeout_sec=settings.read_timeout_sec,
            operation_timeout_sec=settings.operation_timeout_sec,
        ) as protocol:
            if identify:
                wsman_identify(protocol)
            yield WsmanSource(protocol, settings.max_elements)

    # ------------------------------------------------------------------ rates

    def _advance(self, key: str, counters: Counters) -> Counters | None:
        """Remember ``counters`` for ``key``; return the previous ones to diff against.

        Per instance the newer sample is kept, so two polls of one target that
        finish out of order never make time run backwards.
        """
        now = self._clock()
        with self._lock:
            remembered = self._remembered.get(key)
            previous = remembered.counters if remembered is not None else None
            merged = counters if previous is None else _newer(previous, counters)
            self._remembered[key] = _Remembered(merged, now)
            if now >= self._next_sweep:
                self._forget_older_than(now - _FORGET_AFTER)
                self._next_sweep = now + 60.0
        return previous

    def _forget_older_than(self, moment: float) -> None:
        for key in [k for k, r in self._remembered.items() if r.at < moment]:
            del self._remembered[key]

    def _rates(self, now: Counters, before: Counters | None) -> list[Reading]:
        if before is None:
            return []
        readings: list[Reading] = []
        for cpu, sample in now.cpu.items():
            base = before.cpu.get(cpu)
            percent = inverse_timer_percent(base, sample) if base is not None else None
            if percent is None:
                continue
            if cpu == TOTAL:
                readings.append(Reading("cpu.percent", percent))
            elif self.settings.per_cpu:
                readings.append(Reading("cpu.percent", percent, (("cpu", cpu),)))
        for metric, samples, bases in (
            ("net.rx_rate", now.rx, before.rx),
            ("net.tx_rate", now.tx, before.tx),
        ):
            for nic, sample in samples.items():
                base = bases.get(nic)
                rate = bulk_count_rate(base, sample) if base is not None else None
                if rate is not None:
                    readings.append(Reading(metric, rate, (("nic", nic),)))
        return readings


def _newer(before: Counters, after: Counters) -> Counters:
    return Counters(
        cpu=_newer_samples(before.cpu, after.cpu),
        rx=_newer_samples(before.rx, after.rx),
        tx=_newer_samples(before.tx, after.tx),
    )


def _newer_samples(
    before: Mapping[str, RawSample], after: Mapping[str, RawSample]
) -> dict[str, RawSample]:
    # Instances gone from the newer poll are dropped: a re-created interface
    # starts over rather than being diffed against a stale counter.
    merged: dict[str, RawSample] = {}
    for name, sample in after.items():
        old = before.get(name)
        merged[name] = old if old is not None and old.timestamp > sample.timestamp else sample
    return merged


def _stripped(value: str | None) -> str | None:
    # Windows pads Caption with a trailing space ("... Datacenter ").
    if value is None:
        return None
    return value.strip() or None
