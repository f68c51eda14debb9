"""The local Windows path, with stand-ins for the ``wmi`` and ``pythoncom`` modules.

The real path needs Windows and the ``wmi`` package, which the tests do not
have; these check what the collector does with what ``wmi`` returns (numbers
as int or str, datetimes as DMTF strings, arrays as tuples) and that COM is
initialised and released in the collecting thread.
"""

from __future__ import annotations

import datetime as dt
import sys
import types
from typing import Any

import pytest

from lunasentri_core import HostIdentity, Target
from lunasentri_wmi import WmiCollector
from lunasentri_wmi.local import LocalWmiSource, available

_CLASSES: dict[str, list[dict[str, Any]]] = {
    "Win32_OperatingSystem": [
        {
            "TotalVisibleMemorySize": "629368",  # uint64: a string over COM
            "FreePhysicalMemory": "273776",
            "SizeStoredInPagingFiles": 8388608,  # uint32: an int
            "FreeSpaceInPagingFiles": 8388608,
            "LastBootUpTime": "20130410161723.500000+000",
            "LocalDateTime": "20130410192428.085000+000",
            "Caption": "Microsoft Windows 11 Pro",
            "Version": "10.0.22631",
        }
    ],
    "Win32_ComputerSystem": [{"Name": "DESK", "DNSHostName": "desk", "Roles": ("NT",)}],
    "Win32_LogicalDisk": [{"DeviceID": "C:", "Size": "1000", "FreeSpace": "400"}],
    "Win32_PerfRawData_PerfOS_Processor": [
        {"Name": "_Total", "PercentProcessorTime": "10", "Timestamp_Sys100NS": "20"}
    ],
    "Win32_PerfRawData_Tcpip_NetworkInterface": [
        {
            "Name": "Ethernet",
            "BytesReceivedPersec": "5",
            "BytesSentPersec": "6",
            "Timestamp_Sys100NS": "20",
        }
    ],
    "Win32_Process": [{"Handle": "0"}, {"Handle": "4"}, {"Handle": "88"}],
}


class _Instance:
    def __init__(self, properties: dict[str, Any]) -> None:
        self.properties = dict.fromkeys(properties)
        for name, value in properties.items():
            setattr(self, name, value)


class _Connection:
    def query(self, wql: str) -> list[_Instance]:
        name = wql.split(" FROM ", 1)[1].split()[0]
        return [_Instance(p) for p in _CLASSES[name]]


@pytest.fixture
def fake_wmi(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    pythoncom = types.ModuleType("pythoncom")
    pythoncom.CoInitialize = lambda: calls.append("CoInitialize")  # type: ignore[attr-defined]
    pythoncom.CoUninitialize = lambda: calls.append("CoUninitialize")  # type: ignore[attr-defined]
    wmi = types.ModuleType("wmi")
    wmi.WMI = _Connection  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pythoncom", pythoncom)
    monkeypatch.setitem(sys.modules, "wmi", wmi)
    return calls


def test_available_only_with_the_package(fake_wmi: list[str]) -> None:
    assert available()


@pytest.mark.skipif(sys.platform == "win32", reason="Windows may have the wmi package")
def test_not_available_here() -> None:
    assert not available()


def test_collects_the_local_host_through_com(fake_wmi: list[str]) -> None:
    readings = {(r.metric, r.labels): r.value for r in WmiCollector().collect(Target("here"))}
    assert readings[("mem.total", ())] == 629368 * 1024
    assert readings[("swap.total", ())] == 8388608 * 1024
    assert readings[("system.uptime", ())] == pytest.approx(11224.585)
    assert readings[("disk.used", (("mount", "C:\\"),))] == 600
    assert readings[("net.rx_bytes", (("nic", "Ethernet"),))] == 5
    assert readings[("proc.count", ())] == 3
    assert fake_wmi == ["CoInitialize", "CoUninitialize"]


def test_identifies_the_local_host(fake_wmi: list[str]) -> None:
    assert WmiCollector().identify(Target("here")) == HostIdentity(
        hostname="desk", os="Microsoft Windows 11 Pro", os_version="10.0.22631"
    )


def test_dmtf_strings_become_datetimes(fake_wmi: list[str]) -> None:
    (system,) = LocalWmiSource(_Connection()).query("SELECT * FROM Win32_OperatingSystem")
    assert system["LastBootUpTime"] == dt.datetime(2013, 4, 10, 16, 17, 23, 500000, dt.UTC)
    (computer,) = LocalWmiSource(_Connection()).query("SELECT * FROM Win32_ComputerSystem")
    assert computer.array("Roles") == ("NT",)
