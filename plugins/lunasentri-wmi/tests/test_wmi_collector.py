"""The wmi collector against the WS-Management test server, with the real pywinrm client."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import attrs
import pytest
from wmi_support import by_series, target_of, values

import lunasentri_wmi
from lunasentri_core import (
    ConfigError,
    HostIdentity,
    Identifier,
    Reading,
    RemoteAuthError,
    RemoteError,
    RemoteFaultError,
    RemoteRefusedError,
    RemoteTimeoutError,
    Target,
)
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.testing import WmiRepository, WsmanFault, WsmanServer
from lunasentri_core.testing.wsman_data import CPU_BUSY, NIC_RATES, WmiInstance
from lunasentri_wmi import WmiCollector, WmiSettings

INTEL = "Intel[R] Ethernet Connection [7] I219-LM"
REDHAT = "RedHat PV NIC Driver _2"


def repository_instances(name: str) -> list[WmiInstance]:
    found = WmiRepository.windows_host().instances(name)
    assert found is not None
    return found[1]


def test_values_match_the_repositorys_instances(target: Target) -> None:
    (system,) = repository_instances("Win32_OperatingSystem")
    readings = by_series(WmiCollector().collect(target))
    total = int(system["TotalVisibleMemorySize"]) * 1024  # type: ignore[arg-type]
    free = int(system["FreePhysicalMemory"]) * 1024  # type: ignore[arg-type]
    paging = int(system["SizeStoredInPagingFiles"]) * 1024  # type: ignore[arg-type]
    paging_free = int(system["FreeSpaceInPagingFiles"]) * 1024  # type: ignore[arg-type]
    fixed = next(d for d in repository_instances("Win32_LogicalDisk") if d["DriveType"] == 3)
    size, free_space = int(fixed["Size"]), int(fixed["FreeSpace"])  # type: ignore[arg-type]
    interfaces = repository_instances("Win32_PerfRawData_Tcpip_NetworkInterface")
    by_name = {str(i["Name"]): i for i in interfaces}
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], object] = {
        ("mem.total", ()): total,
        ("mem.used", ()): total - free,
        ("mem.available", ()): free,
        ("swap.total", ()): paging,
        ("swap.used", ()): paging - paging_free,
        # LocalDateTime - LastBootUpTime: 16:17:23.5 to 19:24:28.085.
        ("system.uptime", ()): 11224.585,
        # Only the fixed disk: the empty CD-ROM (DriveType 5, nil size) is not asked for.
        ("disk.total", (("mount", "C:\\"),)): size,
        ("disk.used", (("mount", "C:\\"),)): size - free_space,
        **{
            (metric, (("nic", nic),)): by_name[nic][counter]
            for nic in (INTEL, REDHAT)
            for metric, counter in (
                ("net.rx_bytes", "BytesReceivedPersec"),
                ("net.tx_bytes", "BytesSentPersec"),
            )
        },
        ("proc.count", ()): len(repository_instances("Win32_Process")),
    }
    assert readings == expected


def test_two_polls_give_cpu_percent_and_net_rates(target: Target) -> None:
    collector = WmiCollector(WmiSettings(per_cpu=True))
    first = collector.collect(target)
    assert values(first, "cpu.percent") == {}  # nothing to diff against yet
    assert values(first, "net.rx_rate") == {}
    second = collector.collect(target)
    cpu = values(second, "cpu.percent", "cpu")
    assert cpu == pytest.approx({"": CPU_BUSY["_Total"] * 100, "0": 30.0, "1": 20.0})
    received, sent = NIC_RATES
    assert values(second, "net.rx_rate", "nic") == {INTEL: received, REDHAT: received}
    assert values(second, "net.tx_rate", "nic") == {INTEL: sent, REDHAT: sent}
    # And on: every poll diffs against the one before.
    assert values(collector.collect(target), "cpu.percent") == pytest.approx({"": 25.0})


def test_total_cpu_only_by_default(target: Target) -> None:
    collector = WmiCollector()
    collector.collect(target)
    cpu = [r for r in collector.collect(target) if r.metric == "cpu.percent"]
    assert cpu == [Reading("cpu.percent", 25.0)]


def test_rates_are_kept_per_machine_id(wsman_server: WsmanServer) -> None:
    collector = WmiCollector()
    collector.collect(target_of(wsman_server, machine_id="a"))
    assert values(collector.collect(target_of(wsman_server, machine_id="b")), "cpu.percent") == {}
    # "a" diffs against its own poll, two simulated seconds back: still 25%.
    assert values(
        collector.collect(target_of(wsman_server, machine_id="a")), "cpu.percent"
    ) == pytest.approx({"": 25.0})


def test_skipped_interfaces(target: Target) -> None:
    # Case-insensitive; [[] is fnmatch's literal "[".
    readings = WmiCollector(WmiSettings(skip_nics=("intel[[]r]*",))).collect(target)
    assert set(values(readings, "net.rx_bytes", "nic")) == {REDHAT}
    readings = WmiCollector(WmiSettings(skip_nics=())).collect(target)
    assert set(values(readings, "net.rx_bytes", "nic")) == {REDHAT, INTEL}


class _Scripted:
    """A repository class whose instances the test sets before each poll."""

    def __init__(self) -> None:
        self.now: list[WmiInstance] = []

    def __call__(self) -> Sequence[WmiInstance]:
        return self.now


def _server_with(name: str, source: Callable[[], Sequence[WmiInstance]]) -> WsmanServer:
    repository = WmiRepository.windows_host()
    repository.add_class(name, source)
    return WsmanServer(wmi=repository)


def _nic(received: int, sent: int, timestamp: int) -> WmiInstance:
    return {
        "BytesReceivedPersec": received,
        "BytesSentPersec": sent,
        "Name": "eth",
        "Timestamp_Sys100NS": timestamp,
    }


def test_a_counter_reset_gives_no_rate_then_rates_again() -> None:
    scripted = _Scripted()
    with _server_with("Win32_PerfRawData_Tcpip_NetworkInterface", scripted) as server:
        collector, target = WmiCollector(), target_of(server)
        scripted.now = [_nic(5_000_000, 1_000, 10_000_000)]
        collector.collect(target)
        scripted.now = [_nic(1_000, 500, 20_000_000)]  # the interface was re-created
        assert values(collector.collect(target), "net.rx_rate") == {}
        scripted.now = [_nic(2_001_000, 1_500, 40_000_000)]  # 2 s later
        after = collector.collect(target)
    assert values(after, "net.rx_rate", "nic") == {"eth": 1_000_000.0}
    assert values(after, "net.tx_rate", "nic") == {"eth": 500.0}


def test_an_older_answer_never_runs_time_backwards() -> None:
    scripted = _Scripted()
    with _server_with("Win32_PerfRawData_PerfOS_Processor", scripted) as server:
        collector, target = WmiCollector(), target_of(server)

        def total(idle: int, timestamp: int) -> list[WmiInstance]:
            return [
                {"Name": "_Total", "PercentProcessorTime": idle, "Timestamp_Sys100NS": timestamp}
            ]

        scripted.now = total(1_000, 2_000)
        collector.collect(target)
        # A slower concurrent poll of the same host finishing last with older counters.
        scripted.now = total(500, 1_000)
        assert values(collector.collect(target), "cpu.percent") == {}
        # The newer sample stayed the base: 2,000 -> 4,000 with 500 idle is 75% busy.
        scripted.now = total(1_500, 4_000)
        assert values(collector.collect(target), "cpu.percent") == {"": 75.0}


def test_a_nil_counter_or_size_leaves_that_series_out() -> None:
    disks: list[WmiInstance] = [
        {"DeviceID": "C:", "DriveType": 3, "FreeSpace": 10, "Size": 100},
        {"DeviceID": "E:", "DriveType": 3, "FreeSpace": None, "Size": None},  # BitLocker-locked
    ]
    with _server_with("Win32_LogicalDisk", lambda: disks) as server:
        readings = WmiCollector().collect(target_of(server))
    assert values(readings, "disk.total", "mount") == {"C:\\": 100}
    assert values(readings, "disk.used", "mount") == {"C:\\": 90}


def test_identify(target: Target) -> None:
    collector = WmiCollector()
    assert isinstance(collector, Identifier)
    assert collector.identify(target) == HostIdentity(
        hostname="AMAZONA-Q2R281F",
        os="Microsoft Windows Server 2008 R2 Datacenter",
        os_version="6.1.7601",
    )


def test_identify_prefers_the_dns_host_name() -> None:
    computer: list[WmiInstance] = [{"DNSHostName": "web-01", "Name": "WEB-01"}]
    with _server_with("Win32_ComputerSystem", lambda: computer) as server:
        assert WmiCollector().identify(target_of(server)).hostname == "web-01"


@pytest.mark.parametrize("call", ["collect", "identify"])
def test_bad_credentials_are_a_remote_auth_error(wsman_server: WsmanServer, call: str) -> None:
    with pytest.raises(RemoteAuthError):
        getattr(WmiCollector(), call)(target_of(wsman_server, password="wrong"))


def test_a_fault_on_a_class_is_a_remote_fault_error(
    wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.inject_fault(WsmanFault.invalid_class(), wmi_class="Win32_Process")
    with pytest.raises(RemoteFaultError) as caught:
        WmiCollector().collect(target)
    assert caught.value.code == 2150858778
    assert caught.value.reason.startswith("The data source could not process the filter.")
    assert caught.value.detail == "The specified class does not exist in the given namespace."


def test_a_host_without_the_perf_classes_is_a_remote_fault() -> None:
    repository = WmiRepository.windows_host()
    stripped = WmiRepository()
    for name in ("Win32_OperatingSystem", "Win32_ComputerSystem", "Win32_LogicalDisk"):
        found = repository.instances(name)
        assert found is not None
        stripped.add_class(name, found[1])
    with WsmanServer(wmi=stripped) as server:
        with pytest.raises(RemoteFaultError) as caught:
            WmiCollector().collect(target_of(server))
        assert caught.value.code == 2150858778
        # identify needs only the two classes it asks.
        assert WmiCollector().identify(target_of(server)).hostname == "AMAZONA-Q2R281F"


def test_a_slow_host_is_a_remote_timeout(wsman_server: WsmanServer, target: Target) -> None:
    wsman_server.set_delay(60)  # released when the server stops
    collector = WmiCollector(WmiSettings(read_timeout_sec=2, operation_timeout_sec=1))
    with pytest.raises(RemoteTimeoutError):
        collector.collect(target)


def test_a_hanging_host_is_a_remote_timeout(wsman_server: WsmanServer, target: Target) -> None:
    wsman_server.hang_requests()
    collector = WmiCollector(WmiSettings(read_timeout_sec=2, operation_timeout_sec=1))
    with pytest.raises(RemoteTimeoutError):
        collector.identify(target)


def test_nothing_listening_is_refused(target: Target) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert target.credential is not None
    closed = attrs.evolve(target, credential=attrs.evolve(target.credential, port=port))
    with pytest.raises(RemoteRefusedError):
        WmiCollector().collect(closed)


def test_a_dropped_connection_is_a_remote_error(wsman_server: WsmanServer, target: Target) -> None:
    wsman_server.drop_connections()
    with pytest.raises(RemoteError):
        WmiCollector().collect(target)


def test_no_credential_is_a_config_error(target: Target) -> None:
    with pytest.raises(ConfigError, match="no credential"):
        WmiCollector().collect(attrs.evolve(target, credential=None))


def test_the_local_host_needs_windows_and_the_wmi_package() -> None:
    # Where the tests run there is no `wmi` package: a target without a host is refused.
    with pytest.raises(ConfigError, match="'wmi' package"):
        WmiCollector().collect(Target(machine_id="local"))


def test_no_enumeration_is_left_open(wsman_server: WsmanServer, target: Target) -> None:
    collector = WmiCollector(WmiSettings(max_elements=3))
    collector.collect(target)
    collector.identify(target)
    assert wsman_server.open_enumerations() == 0


def test_registered_by_the_plugin_module() -> None:
    manager = create_plugin_manager(entry_points=False, plugins={"wmi": lunasentri_wmi})
    assert not manager.failures
    assert manager.collectors() == {"wmi": lunasentri_wmi.WmiCollector}


def test_targets_no_longer_polled_are_forgotten(wsman_server: WsmanServer) -> None:
    now = [1_000.0]
    collector = WmiCollector(clock=lambda: now[0])
    gone, kept = target_of(wsman_server, machine_id="gone"), target_of(wsman_server)
    collector.collect(gone)
    now[0] += 23 * 3600
    collector.collect(kept)
    now[0] += 2 * 3600  # "gone" was last polled 25 hours ago, "kept" 2
    collector.collect(kept)
    assert values(collector.collect(gone), "cpu.percent") == {}  # its counters were dropped
    assert values(collector.collect(kept), "cpu.percent") == pytest.approx({"": 25.0})
