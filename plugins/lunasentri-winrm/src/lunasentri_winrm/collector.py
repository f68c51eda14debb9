"""The winrm collector: one PowerShell script per poll, counters turned into rates here."""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs

from lunasentri_core import HostIdentity, Reading, Target
from lunasentri_core.samples import MAX_LABEL_VALUE
from lunasentri_winrm.deltas import TICKS_PER_SECOND, busy_percent, counter_rate
from lunasentri_winrm.report import CpuCounter, NicCounter, Report, ReportError, parse_report
from lunasentri_winrm.settings import WinrmSettings, mount_point
from lunasentri_winrm.shell import checked_stdout, load_script, run_script
from lunasentri_winrm.transport import connection, wsman_identify

KIB = 1024
TOTAL = "_Total"
"""The perf-counter instance that sums every CPU."""

COLLECT_SCRIPT = load_script("collect.ps1")
IDENTIFY_SCRIPT = load_script("identify.ps1")


@attrs.frozen
class _Previous:
    """What the previous poll of one target saw: the base of its percentages and rates."""

    cpu: Mapping[str, CpuCounter]
    nics: Mapping[str, NicCounter]


class WinrmCollector:
    """Measures a Windows host over WinRM: CPU, memory, paging file, fixed disks, network,
    process count and uptime, with one PowerShell script per poll.

    ``cpu.percent`` and the network rates cover the time between two polls of the
    same target (by ``machine_id``), measured with the host's own counters, so the
    first poll of a target has neither. Blocking: run it in a worker thread. Safe
    for concurrent polls of different targets.
    """

    name: ClassVar[str] = "winrm"
    settings_class: ClassVar[type[Any] | None] = WinrmSettings

    def __init__(self, settings: WinrmSettings | None = None) -> None:
        self.settings = settings if settings is not None else WinrmSettings()
        self._skip_nics = _compile(self.settings.skip_nics)
        self._lock = threading.Lock()
        self._previous: dict[str, _Previous] = {}

    # ------------------------------------------------------------------ public

    def collect(self, target: Target) -> list[Reading]:
        """Poll ``target``'s host once; raises a RemoteError saying why when it cannot."""
        report = parse_report(self._run(target, COLLECT_SCRIPT), _host(target))
        nics = {n.name: n for n in report.nics if not self._skipped(n.name)}
        previous = self._advance(target.machine_id, report, nics)
        readings: list[Reading] = []
        self._add_cpu(readings, report, previous)
        _add_memory(readings, report)
        _add_disks(readings, report)
        _add_nics(readings, nics, previous)
        if report.processes is not None:
            readings.append(Reading("proc.count", report.processes))
        if report.uptime_s is not None:
            readings.append(Reading("system.uptime", report.uptime_s))
        return readings

    def identify(self, target: Target) -> HostIdentity:
        """Who the host is: an Identify (proves WS-Management and the credential), then
        a short PowerShell command for its name and operating system."""
        text = self._run(target, IDENTIFY_SCRIPT, identify_first=True)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ReportError(
                f"{_host(target)} answered the identify script with {text.strip()[:200]!r}"
            )
        return HostIdentity(
            hostname=_clean(data.get("hostname")),
            os=_clean(data.get("os")),
            os_version=_clean(data.get("version")),
        )

    # ------------------------------------------------------------------ polling

    def _run(self, target: Target, script: str, *, identify_first: bool = False) -> str:
        settings = self.settings
        with connection(
            target,
            read_timeout_sec=settings.read_timeout_sec,
            operation_timeout_sec=settings.operation_timeout_sec,
        ) as protocol:
            if identify_first:
                wsman_identify(protocol)
            output = run_script(protocol, script, timeout=settings.script_timeout_sec)
        return checked_stdout(output, _host(target))

    def _skipped(self, nic: str) -> bool:
        return self._skip_nics is not None and self._skip_nics.match(nic) is not None

    def _advance(
        self, key: str, report: Report, nics: Mapping[str, NicCounter]
    ) -> _Previous | None:
        """Keep this poll's counters for ``key``; return the previous poll's."""
        current = _Previous({c.name: c for c in report.cpu}, nics)
        with self._lock:
            previous = self._previous.get(key)
            if previous is not None and _stamp(current) <= _stamp(previous):
                # A concurrent poll of the same target got newer counters first:
                # diffing against them would run time backwards.
                return None
            self._previous[key] = current
            return previous

    # ------------------------------------------------------------------ readings

    def _add_cpu(self, readings: list[Reading], report: Report, previous: _Previous | None) -> None:
        if previous is None:
            return
        for counter in report.cpu:
            before = previous.cpu.get(counter.name)
            if before is None:
                continue
            percent = busy_percent(before.idle, before.timestamp, counter.idle, counter.timestamp)
            if percent is None:
                continue
            if counter.name == TOTAL:
                readings.append(Reading("cpu.percent", percent))
            elif self.settings.per_cpu and len(counter.name) <= MAX_LABEL_VALUE:
                readings.append(Reading("cpu.percent", percent, (("cpu", counter.name),)))


def _add_memory(readings: list[Reading], report: Report) -> None:
    memory = report.memory
    total, free = memory.total_kib * KIB, memory.free_kib * KIB
    readings.append(Reading("mem.total", total))
    readings.append(Reading("mem.used", max(0, total - free)))
    readings.append(Reading("mem.available", free))
    if memory.paging_kib is not None and memory.paging_free_kib is not None:
        paging = memory.paging_kib * KIB
        readings.append(Reading("swap.total", paging))
        readings.append(Reading("swap.used", max(0, paging - memory.paging_free_kib * KIB)))


def _add_disks(readings: list[Reading], report: Report) -> None:
    for disk in report.disks:
        if disk.size is None or disk.free is None or len(disk.mount) > MAX_LABEL_VALUE:
            continue  # no medium, or a name the model refuses
        labels = (("mount", mount_point(disk.mount)),)
        readings.append(Reading("disk.total", disk.size, labels))
        readings.append(Reading("disk.used", max(0, disk.size - disk.free), labels))


def _add_nics(
    readings: list[Reading], nics: Mapping[str, NicCounter], previous: _Previous | None
) -> None:
    for name, nic in nics.items():
        if len(name) > MAX_LABEL_VALUE:
            continue
        labels = (("nic", name),)
        readings.append(Reading("net.rx_bytes", nic.rx, labels))
        readings.append(Reading("net.tx_bytes", nic.tx, labels))
        before = previous.nics.get(name) if previous is not None else None
        if before is None:
            continue
        seconds = (nic.timestamp - before.timestamp) / (nic.frequency or TICKS_PER_SECOND)
        for metric, was, now in (
            ("net.rx_rate", before.rx, nic.rx),
            ("net.tx_rate", before.tx, nic.tx),
        ):
            rate = counter_rate(was, now, seconds)
            if rate is not None:
                readings.append(Reading(metric, rate, labels))


def _stamp(counters: _Previous) -> int:
    """The poll's own clock: the largest perf timestamp it carries (0 without any)."""
    stamps = [c.timestamp for c in counters.cpu.values()]
    stamps += [n.timestamp for n in counters.nics.values()]
    return max(stamps, default=0)


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.IGNORECASE)


def _host(target: Target) -> str:
    return target.host or target.machine_id


def _clean(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None
