"""What one poll asks a Windows host, and the readings that need no earlier poll.

Five narrow WQL queries, each with an explicit property list so the answers stay
small: the operating system (memory, paging files, boot time), fixed disks,
processor and network-interface raw counters, and the process handles (only
counted).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import attrs

from lunasentri_core import Reading
from lunasentri_core.remote import RemoteError
from lunasentri_winrm import mount_point
from lunasentri_wmi.cim import CimValueError, WmiObject
from lunasentri_wmi.counters import RawSample

KIB = 1024
TOTAL = "_Total"
"""The processor counters' instance that sums every logical processor."""
MAX_LABEL_VALUE = 256

OS_QUERY = (
    "SELECT TotalVisibleMemorySize, FreePhysicalMemory, SizeStoredInPagingFiles, "
    "FreeSpaceInPagingFiles, LastBootUpTime, LocalDateTime FROM Win32_OperatingSystem"
)
DISK_QUERY = "SELECT DeviceID, Size, FreeSpace FROM Win32_LogicalDisk WHERE DriveType = 3"
CPU_QUERY = (
    "SELECT Name, PercentProcessorTime, Timestamp_Sys100NS FROM Win32_PerfRawData_PerfOS_Processor"
)
CPU_TOTAL_QUERY = f"{CPU_QUERY} WHERE Name = '{TOTAL}'"
NIC_QUERY = (
    "SELECT Name, BytesReceivedPersec, BytesSentPersec, Timestamp_Sys100NS "
    "FROM Win32_PerfRawData_Tcpip_NetworkInterface"
)
PROCESS_QUERY = "SELECT Handle FROM Win32_Process"
IDENTITY_OS_QUERY = "SELECT Caption, Version FROM Win32_OperatingSystem"
IDENTITY_NAME_QUERY = "SELECT Name, DNSHostName FROM Win32_ComputerSystem"


class WmiSource(Protocol):
    """Where WQL queries are answered: a remote host over WS-Management, or local WMI."""

    def query(self, wql: str) -> Iterable[WmiObject]: ...


@attrs.frozen
class Counters:
    """A poll's raw counters by instance: what rates are computed from."""

    cpu: Mapping[str, RawSample]
    """Idle time (``PercentProcessorTime``) by processor (``0``, ``1`` ..., ``_Total``)."""
    rx: Mapping[str, RawSample]
    """Bytes received by interface (the counter's instance name)."""
    tx: Mapping[str, RawSample]
    """Bytes sent by interface."""


@attrs.frozen
class Snapshot:
    """Everything one poll read: the readings that stand alone, and the counters."""

    readings: Sequence[Reading]
    counters: Counters


def read(source: WmiSource, *, per_cpu: bool, skip_nics: re.Pattern[str] | None) -> Snapshot:
    """Ask ``source`` the poll's queries; a value that does not parse is a RemoteError."""
    try:
        return _read(source, per_cpu, skip_nics)
    except CimValueError as error:
        raise RemoteError(f"the host sent a value that does not parse: {error}") from None


def _read(source: WmiSource, per_cpu: bool, skip_nics: re.Pattern[str] | None) -> Snapshot:
    readings: list[Reading] = []
    for system in list(source.query(OS_QUERY))[:1]:
        readings.extend(system_readings(system))
    readings.extend(disk_readings(source.query(DISK_QUERY)))
    cpu = {
        name: sample
        for processor in source.query(CPU_QUERY if per_cpu else CPU_TOTAL_QUERY)
        if (name := processor.text("Name")) is not None
        and (sample := _sample(processor, "PercentProcessorTime")) is not None
    }
    rx, tx = nic_counters(source.query(NIC_QUERY), skip_nics)
    for nic in (name for name in rx if name in tx):
        labels = (("nic", nic),)
        readings.append(Reading("net.rx_bytes", rx[nic].value, labels))
        readings.append(Reading("net.tx_bytes", tx[nic].value, labels))
    processes = sum(1 for _ in source.query(PROCESS_QUERY))
    readings.append(Reading("proc.count", processes))
    return Snapshot(readings, Counters(cpu, rx, tx))


def system_readings(system: WmiObject) -> list[Reading]:
    """Memory, paging files and uptime from ``Win32_OperatingSystem`` (sizes in KiB)."""
    readings: list[Reading] = []
    total, free = system.integer("TotalVisibleMemorySize"), system.integer("FreePhysicalMemory")
    if total is not None and free is not None:
        readings.append(Reading("mem.total", total * KIB))
        readings.append(Reading("mem.used", max(0, total - free) * KIB))
        # What psutil calls available on Windows: free plus standby pages.
        readings.append(Reading("mem.available", free * KIB))
    swap = system.integer("SizeStoredInPagingFiles")
    swap_free = system.integer("FreeSpaceInPagingFiles")
    if swap is not None and swap_free is not None:
        readings.append(Reading("swap.total", swap * KIB))
        readings.append(Reading("swap.used", max(0, swap - swap_free) * KIB))
    booted, now = system.datetime("LastBootUpTime"), system.datetime("LocalDateTime")
    if booted is not None and now is not None and now >= booted:
        readings.append(Reading("system.uptime", (now - booted).total_seconds()))
    return readings


def disk_readings(disks: Iterable[WmiObject]) -> list[Reading]:
    """``disk.total`` and ``disk.used`` per fixed disk, ``mount`` as psutil names it (``C:\\``).

    A volume without a size (not formatted, or locked by BitLocker) is left out.
    """
    readings: list[Reading] = []
    seen: set[str] = set()
    for disk in disks:
        device, size, free = disk.text("DeviceID"), disk.integer("Size"), disk.integer("FreeSpace")
        if not device or size is None or free is None:
            continue
        if device in seen or len(device) > MAX_LABEL_VALUE:
            continue
        seen.add(device)
        labels = (("mount", mount_point(device)),)
        readings.append(Reading("disk.total", size, labels))
        readings.append(Reading("disk.used", max(0, size - free), labels))
    return readings


def nic_counters(
    interfaces: Iterable[WmiObject], skip: re.Pattern[str] | None
) -> tuple[dict[str, RawSample], dict[str, RawSample]]:
    """Bytes received and sent by interface, skipped interfaces left out.

    The label is the counter's instance name as Performance Monitor shows it:
    Windows writes ``[`` ``]`` there for the ``(`` ``)`` of the adapter's name
    (``Intel[R] Ethernet Connection [7] I219-LM``).
    """
    rx: dict[str, RawSample] = {}
    tx: dict[str, RawSample] = {}
    for interface in interfaces:
        instance = interface.text("Name")
        if not instance:
            continue
        if instance in rx or len(instance) > MAX_LABEL_VALUE:
            continue
        if skip is not None and skip.match(instance):
            continue
        received = _sample(interface, "BytesReceivedPersec")
        sent = _sample(interface, "BytesSentPersec")
        if received is not None and sent is not None:
            rx[instance], tx[instance] = received, sent
    return rx, tx


def compile_patterns(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive regular expression for ``fnmatch`` patterns (None for none)."""
    if not patterns:
        return None
    joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
    return re.compile(joined, re.IGNORECASE)


def _sample(instance: WmiObject, counter: str) -> RawSample | None:
    value, timestamp = instance.integer(counter), instance.integer("Timestamp_Sys100NS")
    if value is None or timestamp is None:
        return None
    return RawSample(value, timestamp)
