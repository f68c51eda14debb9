"""WMI classes for the WS-Management test server, with values from real Windows hosts.

Sources (public captures of real Windows traffic):

- Win32_OperatingSystem, Win32_ComputerSystem, Win32_LogicalDisk ``C:`` and the
  counters of the ``RedHat PV NIC Driver _2`` interface: Enumerate responses from a
  Windows Server 2008 R2 Datacenter host (``AMAZONA-Q2R281F``, an EC2 instance) in
  zenoss/txwinrm ``txwinrm/test/data/server_2008/*_star_000.xml``.
- Win32_Process: the first processes (``System Idle Process``, ``System``,
  ``conhost.exe``) from WinRb/WinRM ``spec/mock/enumerate_1.xml`` and
  ``enumerate_2.xml`` (Windows Server 2008 R2); the rest are the standard processes of
  such a host, 29 in all, as ``NumberOfProcesses`` in the captured
  Win32_OperatingSystem says.
- Not captured, documented here: the ``Intel[R] Ethernet Connection [7] I219-LM``
  interface (the perf-counter instance-name trap, ``(`` ``)`` become ``[`` ``]``), the
  empty CD-ROM drive ``D:`` (``DriveType`` 5, ``Size``/``FreeSpace`` nil, as Windows
  reports an empty optical drive), and a second logical processor (the captured host
  had one; two make per-CPU deltas testable, and Win32_ComputerSystem says 2).
  Win32_PerfRawData_PerfOS_Processor's counters start from the captured host's uptime
  (LastBootUpTime to LocalDateTime, 11,225 s) and its ``Timestamp_Sys100NS``.

Each class carries the properties a collector reads and a few more, not all of
them; the values are the captured ones unless listed above.

The perf classes advance on every query, one simulated second each: processor ``0``
is 30% busy, ``1`` 20%, ``_Total`` 25%, so ``(1 - ΔPercentProcessorTime /
ΔTimestamp_Sys100NS) * 100`` gives exactly those; each interface receives 125,000
and sends 62,500 bytes a second.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence

WmiScalar = str | int | bool | dt.datetime | None
"""One CIM value: a ``datetime`` is sent as ``cim:Datetime``, ``None`` as ``xsi:nil``."""
WmiValue = WmiScalar | tuple[WmiScalar, ...]
"""A property's value; a tuple is an array, sent as the element repeated."""
WmiInstance = Mapping[str, WmiValue]
InstanceSource = Sequence[WmiInstance] | Callable[[], Sequence[WmiInstance]]

HOST = "AMAZONA-Q2R281F"
# 100-ns units: 1 simulated second; captured Timestamp_Sys100NS and uptime.
SECOND = 10_000_000
CAPTURED_TIMESTAMP = 130100954751370000
CAPTURED_UPTIME = 11_225 * SECOND
CPU_BUSY = {"0": 0.30, "1": 0.20, "_Total": 0.25}
NIC_RATES = (125_000, 62_500)  # bytes received, sent per simulated second


class WmiRepository:
    """The WMI classes a :class:`WsmanServer` answers WQL queries from.

    Class and property names match case-insensitively, as in WMI; answers use the
    names as registered. ``WmiRepository.windows_host()`` is a realistic host;
    ``WmiRepository()`` is empty, for a test that registers its own classes.
    """

    def __init__(self) -> None:
        self._classes: dict[str, tuple[str, InstanceSource]] = {}

    def add_class(self, name: str, instances: InstanceSource) -> None:
        """Register (or replace) class ``name``.

        :param instances: the instances (property name to value, in the order
            Windows sends them), or a function called on each query, for values
            that change between queries.
        """
        self._classes[name.lower()] = (name, instances)

    def instances(self, name: str) -> tuple[str, list[WmiInstance]] | None:
        """The class's registered name and its instances now, or None if unknown."""
        found = self._classes.get(name.lower())
        if found is None:
            return None
        registered, source = found
        return registered, list(source() if callable(source) else source)

    @classmethod
    def windows_host(cls) -> WmiRepository:
        """A Windows Server 2008 R2 host: the classes the module docstring lists."""
        repository = cls()
        repository.add_class("Win32_OperatingSystem", [_operating_system()])
        repository.add_class("Win32_ComputerSystem", [_computer_system()])
        repository.add_class("Win32_LogicalDisk", _logical_disks())
        repository.add_class("Win32_Process", _processes())
        repository.add_class("Win32_PerfRawData_PerfOS_Processor", _Ticker(_processors))
        repository.add_class("Win32_PerfRawData_Tcpip_NetworkInterface", _Ticker(_interfaces))
        return repository


class _Ticker:
    """Calls ``build(tick)`` with 0, 1, 2, ... on successive queries (thread-safe)."""

    def __init__(self, build: Callable[[int], Sequence[WmiInstance]]) -> None:
        self._build = build
        self._tick = 0
        self._lock = threading.Lock()

    def __call__(self) -> Sequence[WmiInstance]:
        with self._lock:
            tick, self._tick = self._tick, self._tick + 1
        return self._build(tick)


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _operating_system() -> WmiInstance:
    return {
        "BootDevice": "\\Device\\HarddiskVolume1",
        "BuildNumber": "7601",
        "Caption": "Microsoft Windows Server 2008 R2 Datacenter ",
        "CSDVersion": "Service Pack 1",
        "CSName": HOST,
        "CurrentTimeZone": 0,
        "FreePhysicalMemory": 273776,
        "FreeSpaceInPagingFiles": 8388608,
        "FreeVirtualMemory": 8635448,
        "InstallDate": _utc("2013-03-09T03:06:25+00:00"),
        "LargeSystemCache": None,
        "LastBootUpTime": _utc("2013-04-10T16:17:23.5+00:00"),
        "LocalDateTime": _utc("2013-04-10T19:24:28.085+00:00"),
        "Manufacturer": "Microsoft Corporation",
        "Name": "Microsoft Windows Server 2008 R2 Datacenter "
        "|C:\\Windows|\\Device\\Harddisk0\\Partition1",
        "NumberOfProcesses": 29,
        "NumberOfUsers": 0,
        "OSArchitecture": "64-bit",
        "OSType": 18,
        "OtherTypeDescription": None,
        "ProductType": 3,
        "SerialNumber": "00496-001-0001283-84650",
        "SizeStoredInPagingFiles": 8388608,
        "Status": "OK",
        "SystemDrive": "C:",
        "TotalSwapSpaceSize": None,
        "TotalVirtualMemorySize": 9017976,
        "TotalVisibleMemorySize": 629368,
        "Version": "6.1.7601",
        "WindowsDirectory": "C:\\Windows",
    }


def _computer_system() -> WmiInstance:
    return {
        "Caption": HOST,
        "DNSHostName": HOST,
        "Domain": "WORKGROUP",
        "DomainRole": 2,
        "Manufacturer": "Xen",
        "Model": "HVM domU",
        "Name": HOST,
        "NumberOfLogicalProcessors": 2,
        "NumberOfProcessors": 1,
        "PartOfDomain": False,
        "PrimaryOwnerName": "Amazon",
        "Roles": ("LM_Workstation", "LM_Server", "NT", "Server_NT"),
        "Status": "OK",
        "SystemType": "x64-based PC",
        "TotalPhysicalMemory": 644472832,
        "UserName": None,
        "Workgroup": "WORKGROUP",
    }


def _logical_disks() -> list[WmiInstance]:
    common: dict[str, WmiValue] = {"SystemName": HOST, "CreationClassName": "Win32_LogicalDisk"}
    fixed: dict[str, WmiValue] = {
        "Caption": "C:",
        "Description": "Local Fixed Disk",
        "DeviceID": "C:",
        "DriveType": 3,
        "FileSystem": "NTFS",
        "FreeSpace": 9779560448,
        "MediaType": 12,
        "Name": "C:",
        "Size": 32210153472,
        "VolumeName": "",
        "VolumeSerialNumber": "E0E8D7AA",
    }
    optical: dict[str, WmiValue] = {
        "Caption": "D:",
        "Description": "CD-ROM Disc",
        "DeviceID": "D:",
        "DriveType": 5,
        "FileSystem": None,
        "FreeSpace": None,
        "MediaType": 11,
        "Name": "D:",
        "Size": None,
        "VolumeName": None,
        "VolumeSerialNumber": None,
    }
    return [{**fixed, **common}, {**optical, **common}]


_PROCESS_NAMES = (
    *("smss.exe", "csrss.exe", "wininit.exe", "csrss.exe", "winlogon.exe", "services.exe"),
    *("lsass.exe", "lsm.exe", *["svchost.exe"] * 6, "spoolsv.exe", "svchost.exe"),
    *("svchost.exe", "Ec2Config.exe", "svchost.exe", "taskhost.exe", "dwm.exe"),
    *("explorer.exe", "WmiPrvSE.exe", "wsmprovhost.exe", "cmd.exe", "LogonUI.exe"),
)


def _process(
    name: str, pid: int, created: dt.datetime | None, command_line: str | None
) -> WmiInstance:
    return {
        "Caption": name,
        "CommandLine": command_line,
        "CreationDate": created,
        "CSName": "VAGRANT-2008R2",
        "Handle": str(pid),
        "Name": name,
        "ProcessId": pid,
        "ThreadCount": 1 if pid == 0 else 8,
        "WindowsVersion": "6.1.7601",
        "WorkingSetSize": 24576 if pid == 0 else 4_194_304 + pid * 4096,
    }


def _processes() -> list[WmiInstance]:
    boot = _utc("2013-04-29T11:43:11.203125-07:00")
    captured = [
        _process("System Idle Process", 0, None, None),
        _process("System", 4, boot, None),
        _process(
            "conhost.exe",
            1100,
            _utc("2013-04-29T13:09:06.102138-07:00"),
            "\\??\\C:\\Windows\\system32\\conhost.exe",
        ),
    ]
    others = [
        _process(name, 200 + 52 * index, boot + dt.timedelta(seconds=5 + index), None)
        for index, name in enumerate(_PROCESS_NAMES, start=1)
    ]
    return captured + others


def _processors(tick: int) -> list[WmiInstance]:
    elapsed = CAPTURED_UPTIME + tick * SECOND
    timestamp = CAPTURED_TIMESTAMP + tick * SECOND
    return [
        {
            "Name": name,
            # PERF_100NSEC_TIMER_INV: the counter is time spent idle.
            "PercentProcessorTime": round(elapsed * (1 - busy)),
            "Frequency_Sys100NS": SECOND,
            "Timestamp_Sys100NS": timestamp,
        }
        for name, busy in CPU_BUSY.items()
    ]


def _interfaces(tick: int) -> list[WmiInstance]:
    captured = ("RedHat PV NIC Driver _2", 1064527, 6710782, 100000000)
    trap = ("Intel[R] Ethernet Connection [7] I219-LM", 52_428_800, 10_485_760, 1000000000)
    received_rate, sent_rate = NIC_RATES
    instances: list[WmiInstance] = []
    for name, received, sent, bandwidth in (captured, trap):
        received += tick * received_rate
        sent += tick * sent_rate
        instances.append(
            {
                "BytesReceivedPersec": received,
                "BytesSentPersec": sent,
                "BytesTotalPersec": received + sent,
                "Caption": None,
                "CurrentBandwidth": bandwidth,
                "Frequency_Sys100NS": SECOND,
                "Name": name,
                "Timestamp_Sys100NS": CAPTURED_TIMESTAMP + tick * SECOND,
            }
        )
    return instances
