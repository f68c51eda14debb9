"""The psutil collector: measures the machine this process runs on."""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import psutil

from lunasentri_core import ConfigError, Reading, Target
from lunasentri_psutil.deltas import CpuTimesLayout, counter_rate
from lunasentri_psutil.settings import PsutilSettings

# The model refuses longer label values; such a mount is skipped rather than
# failing the whole collection.
_MAX_LABEL_VALUE = 256

NetCounters = dict[str, tuple[int, int]]
"""Interface name to cumulative (received, sent) bytes."""


@attrs.frozen
class _CpuTimes:
    total: Sequence[float]
    per_cpu: Sequence[Sequence[float]] | None


@attrs.frozen
class _TargetState:
    """What the previous collection of one target saw: the base of its rates."""

    at: float
    cpu: _CpuTimes
    net: NetCounters


@attrs.frozen
class _Bases:
    """The references a collection's percentages and rates are computed from."""

    cpu_percent: float | None
    per_cpu: Sequence[float | None]
    net: _TargetState | None


_NO_BASES = _Bases(cpu_percent=None, per_cpu=(), net=None)


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _matches(pattern: re.Pattern[str] | None, name: str) -> bool:
    return pattern is not None and pattern.match(name) is not None


def _require_local(target: Target) -> None:
    if target.host is not None:
        raise ConfigError(
            f"the psutil collector measures only the machine it runs on, but target "
            f"{target.machine_id!r} has host {target.host!r}; collect it with an agent "
            "running there or with a remote collector"
        )


class PsutilCollector:
    """Collects CPU, memory, swap, disks, network, process count and load of this host.

    Percentages and rates cover the time since the previous collection of the
    same target (by ``machine_id``); the first collection of a target has no
    network rates, and its CPU share covers the time since this collector last
    looked (at the latest, since it was created).
    """

    name: ClassVar[str] = "psutil"
    settings_class: ClassVar[type[Any] | None] = PsutilSettings

    def __init__(self, settings: PsutilSettings | None = None) -> None:
        self.settings = settings if settings is not None else PsutilSettings()
        self._skip_fstypes = frozenset(self.settings.skip_fstypes)
        self._skip_mounts = _compile(self.settings.skip_mounts)
        self._skip_nics = _compile(self.settings.skip_nics)
        self._lock = threading.Lock()
        self._states: dict[str, _TargetState] = {}
        self._layout = CpuTimesLayout(psutil.cpu_times()._fields)
        # Primes CPU percentages: a target's first collection measures from here.
        self._latest_cpu = self._cpu_times()

    # ------------------------------------------------------------------ public

    def collect(self, target: Target) -> list[Reading]:
        """Measure this host now; blocks briefly on reads of /proc (or the OS's APIs)."""
        _require_local(target)
        cpu = self._cpu_times()
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        net = self._net_counters()
        at = time.monotonic()
        bases = self._advance(target.machine_id, at, cpu, net)

        readings: list[Reading] = []
        self._add_cpu(readings, bases)
        readings.append(Reading("mem.total", memory.total))
        readings.append(Reading("mem.used", memory.used))
        readings.append(Reading("mem.available", memory.available))
        readings.append(Reading("swap.total", swap.total))
        readings.append(Reading("swap.used", swap.used))
        self._add_disks(readings)
        self._add_net(readings, net, at, bases.net)
        readings.append(Reading("proc.count", len(psutil.pids())))
        _add_load(readings)
        return readings

    # ------------------------------------------------------------------ measuring

    def _cpu_times(self) -> _CpuTimes:
        total = psutil.cpu_times()
        per_cpu = psutil.cpu_times(percpu=True) if self.settings.per_cpu else None
        return _CpuTimes(total, per_cpu)

    def _net_counters(self) -> NetCounters:
        counters: dict[str, Any] = psutil.net_io_counters(pernic=True)
        return {
            nic: (c.bytes_recv, c.bytes_sent)
            for nic, c in counters.items()
            if not _matches(self._skip_nics, nic)
        }

    def mounts(self) -> list[str]:
        """The mount points this collector measures, after the skip lists."""
        seen: dict[str, None] = {}
        for part in psutil.disk_partitions(all=True):
            mount: str = part.mountpoint
            # An empty type is a drive with no medium (Windows CD/DVD, card readers).
            if not part.fstype or part.fstype in self._skip_fstypes or mount in seen:
                continue
            if len(mount) > _MAX_LABEL_VALUE or _matches(self._skip_mounts, mount):
                continue
            seen[mount] = None
        return list(seen)

    # ------------------------------------------------------------------ state

    def _advance(self, key: str, at: float, cpu: _CpuTimes, net: NetCounters) -> _Bases:
        """Swap in this collection's counters for ``key``; return what to diff against."""
        with self._lock:
            previous = self._states.get(key)
            if previous is not None and at <= previous.at:
                # A concurrent collection of the same target finished first with
                # newer counters; diffing against them would run time backwards.
                return _NO_BASES
            base_cpu = previous.cpu if previous is not None else self._latest_cpu
            percent = self._layout.busy_percent(base_cpu.total, cpu.total)
            per_cpu = self._per_cpu_percent(base_cpu, cpu) if percent is not None else ()
            # Without a clock tick in between there is nothing to measure yet:
            # keep the older reference so the next collection covers both.
            kept_cpu = cpu if percent is not None else base_cpu
            self._states[key] = _TargetState(at, kept_cpu, net)
            self._latest_cpu = cpu
            return _Bases(percent, per_cpu, previous)

    def _per_cpu_percent(self, before: _CpuTimes, after: _CpuTimes) -> Sequence[float | None]:
        if before.per_cpu is None or after.per_cpu is None:
            return ()
        if len(before.per_cpu) != len(after.per_cpu):
            # CPUs went on- or offline: indexes no longer line up.
            return ()
        busy = self._layout.busy_percent
        return [busy(b, a) for b, a in zip(before.per_cpu, after.per_cpu, strict=True)]

    # ------------------------------------------------------------------ readings

    def _add_cpu(self, readings: list[Reading], bases: _Bases) -> None:
        if bases.cpu_percent is not None:
            readings.append(Reading("cpu.percent", bases.cpu_percent))
        for index, percent in enumerate(bases.per_cpu):
            if percent is not None:
                readings.append(Reading("cpu.percent", percent, (("cpu", str(index)),)))

    def _add_disks(self, readings: list[Reading]) -> None:
        for mount in self.mounts():
            try:
                usage = psutil.disk_usage(mount)
            except OSError:
                # Unmounted since it was listed, or not readable by this user.
                continue
            labels = (("mount", mount),)
            readings.append(Reading("disk.total", usage.total, labels))
            readings.append(Reading("disk.used", usage.used, labels))

    def _add_net(
        self,
        readings: list[Reading],
        net: NetCounters,
        at: float,
        previous: _TargetState | None,
    ) -> None:
        seconds = at - previous.at if previous is not None else 0.0
        for nic, (rx, tx) in net.items():
            labels = (("nic", nic),)
            readings.append(Reading("net.rx_bytes", rx, labels))
            readings.append(Reading("net.tx_bytes", tx, labels))
            before = previous.net.get(nic) if previous is not None else None
            if before is None:
                continue
            rx_rate = counter_rate(before[0], rx, seconds)
            if rx_rate is not None:
                readings.append(Reading("net.rx_rate", rx_rate, labels))
            tx_rate = counter_rate(before[1], tx, seconds)
            if tx_rate is not None:
                readings.append(Reading("net.tx_rate", tx_rate, labels))


def _add_load(readings: list[Reading]) -> None:
    # os.getloadavg, not psutil.getloadavg: on Windows psutil emulates it with a
    # background thread that reports zeros for its first minutes.
    getloadavg = getattr(os, "getloadavg", None)
    if getloadavg is None:
        return
    try:
        one, five, fifteen = getloadavg()
    except OSError:
        return
    readings.append(Reading("load.1", one))
    readings.append(Reading("load.5", five))
    readings.append(Reading("load.15", fifteen))
