"""The winrm collector, with the real pywinrm against the WS-Management test server."""

from __future__ import annotations

import base64
import threading

import attrs
import pytest
from winrm_support import CLIXML_ERROR, PowerShellHost, basic_credential, closed_port, target_of

from lunasentri_core import (
    HostIdentity,
    Identifier,
    Reading,
    RemoteAuthError,
    RemoteError,
    RemoteErrorKind,
    RemoteFaultError,
    RemoteRefusedError,
    RemoteTimeoutError,
    Target,
)
from lunasentri_core.testing import CommandResult, WsmanFault, WsmanServer
from lunasentri_core.testing.wsman_data import CPU_BUSY, NIC_RATES
from lunasentri_winrm import ScriptError, WinrmCollector, WinrmSettings
from lunasentri_winrm.report import ReportError
from lunasentri_winrm.shell import command_line, error_message

KIB = 1024
NICS = ("RedHat PV NIC Driver _2", "Intel[R] Ethernet Connection [7] I219-LM")


def _values(readings: list[Reading]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(r.metric, r.labels): r.value for r in readings}


def _value(readings: list[Reading], metric: str, **labels: str) -> float:
    return _values(readings)[(metric, tuple(sorted(labels.items())))]


# -- what one poll measures --------------------------------------------------------------------


def test_the_first_poll_measures_memory_disks_counters_processes_and_uptime(
    powershell: PowerShellHost, target: Target
) -> None:
    readings = WinrmCollector().collect(target)
    assert _value(readings, "mem.total") == 629368 * KIB
    assert _value(readings, "mem.used") == (629368 - 273776) * KIB
    assert _value(readings, "mem.available") == 273776 * KIB
    assert _value(readings, "swap.total") == 8388608 * KIB
    assert _value(readings, "swap.used") == 0
    assert _value(readings, "disk.total", mount="C:\\") == 32210153472
    assert _value(readings, "disk.used", mount="C:\\") == 32210153472 - 9779560448
    assert _value(readings, "proc.count") == 29
    assert _value(readings, "system.uptime") == pytest.approx(11224.585)
    # The empty CD-ROM drive D: is no fixed disk.
    assert {dict(r.labels).get("mount") for r in readings if r.metric.startswith("disk.")} == {
        "C:\\"
    }
    # Counters now; no rate and no CPU share before a second poll.
    assert _value(readings, "net.rx_bytes", nic=NICS[0]) == 1064527
    assert _value(readings, "net.tx_bytes", nic=NICS[0]) == 6710782
    assert not [r for r in readings if r.metric in {"cpu.percent", "net.rx_rate", "net.tx_rate"}]


def test_the_second_poll_has_cpu_share_and_network_rates_from_raw_counters(
    powershell: PowerShellHost, target: Target
) -> None:
    collector = WinrmCollector(WinrmSettings(per_cpu=True))
    collector.collect(target)
    readings = collector.collect(target)
    assert _value(readings, "cpu.percent") == pytest.approx(CPU_BUSY["_Total"] * 100)
    assert _value(readings, "cpu.percent", cpu="0") == pytest.approx(CPU_BUSY["0"] * 100)
    assert _value(readings, "cpu.percent", cpu="1") == pytest.approx(CPU_BUSY["1"] * 100)
    for nic in NICS:
        assert _value(readings, "net.rx_rate", nic=nic) == pytest.approx(NIC_RATES[0])
        assert _value(readings, "net.tx_rate", nic=nic) == pytest.approx(NIC_RATES[1])
        assert _value(readings, "net.rx_bytes", nic=nic) > 0


def test_per_cpu_shares_are_off_by_default(powershell: PowerShellHost, target: Target) -> None:
    collector = WinrmCollector()
    collector.collect(target)
    cpu = [r for r in collector.collect(target) if r.metric == "cpu.percent"]
    assert [r.labels for r in cpu] == [()]


def test_rates_are_kept_per_target(powershell: PowerShellHost, wsman_server: WsmanServer) -> None:
    collector = WinrmCollector()
    first, other = target_of(wsman_server), target_of(wsman_server, machine_id="win-2")
    collector.collect(first)
    assert not [r for r in collector.collect(other) if r.metric == "cpu.percent"]
    assert [r for r in collector.collect(first) if r.metric == "cpu.percent"]


def test_skipped_nics_are_not_measured(powershell: PowerShellHost, target: Target) -> None:
    readings = WinrmCollector(WinrmSettings(skip_nics=["intel?r?*"])).collect(target)
    assert {dict(r.labels).get("nic") for r in readings if r.metric.startswith("net.")} == {NICS[0]}


def test_one_powershell_script_per_poll_with_its_preferences(
    powershell: PowerShellHost, target: Target, wsman_server: WsmanServer
) -> None:
    WinrmCollector().collect(target)
    (script,) = powershell.scripts
    assert script.startswith("$ProgressPreference = 'SilentlyContinue'")
    assert "$ErrorActionPreference = 'Stop'" in script
    assert "Win32_PerfRawData_PerfOS_Processor" in script
    assert "PerfFormattedData" not in script  # never the cooked counters
    assert wsman_server.open_shells() == 0  # the shell is deleted after the poll


def test_the_script_is_sent_utf16_base64_encoded() -> None:
    words = command_line("Write-Output 'é'").split()
    assert words[0] == "powershell.exe"
    assert words[-2] == "-EncodedCommand"
    assert base64.b64decode(words[-1]).decode("utf-16-le") == "Write-Output 'é'"


def test_identify_names_the_host_and_its_os(powershell: PowerShellHost, target: Target) -> None:
    collector = WinrmCollector()
    assert isinstance(collector, Identifier)
    assert collector.identify(target) == HostIdentity(
        hostname="AMAZONA-Q2R281F",
        os="Microsoft Windows Server 2008 R2 Datacenter",
        os_version="6.1.7601",
    )


# -- failures ----------------------------------------------------------------------------------


def test_a_wrong_password_is_an_authentication_error(
    powershell: PowerShellHost, wsman_server: WsmanServer
) -> None:
    with pytest.raises(RemoteAuthError):
        WinrmCollector().collect(target_of(wsman_server, password="wrong"))
    with pytest.raises(RemoteAuthError):
        WinrmCollector().identify(target_of(wsman_server, password="wrong"))


def test_a_closed_port_is_refused() -> None:
    target = Target(machine_id="m", host="127.0.0.1", credential=basic_credential(closed_port()))
    with pytest.raises(RemoteRefusedError):
        WinrmCollector().collect(target)


def test_a_hanging_host_is_a_timeout(
    powershell: PowerShellHost, wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.hang_requests()
    collector = WinrmCollector(WinrmSettings(read_timeout_sec=2, operation_timeout_sec=1))
    with pytest.raises(RemoteTimeoutError):
        collector.collect(target)


def test_a_script_that_never_ends_is_a_timeout(
    powershell: PowerShellHost, wsman_server: WsmanServer, target: Target
) -> None:
    # Windows answers each Receive of a running command with this fault.
    wsman_server.inject_fault(WsmanFault.operation_timeout(), action="Receive")
    collector = WinrmCollector(WinrmSettings(script_timeout_sec=0.5))
    with pytest.raises(RemoteTimeoutError, match="did not end"):
        collector.collect(target)
    wsman_server.clear_faults()
    assert wsman_server.open_shells() == 0  # cleaned up: the host still answers


def test_a_fault_carries_its_code_and_reason(
    powershell: PowerShellHost, wsman_server: WsmanServer, target: Target
) -> None:
    fault = WsmanFault(
        code=2150859046,
        subcode="w:QuotaLimit",
        reason="The WS-Management service cannot process the request. This user is allowed "
        "a maximum number of 5 shells, which has been exceeded. ",
        value="s:Receiver",
    )
    wsman_server.inject_fault(fault, action="Create")
    with pytest.raises(RemoteFaultError) as caught:
        WinrmCollector().collect(target)
    assert caught.value.kind is RemoteErrorKind.FAULT
    assert caught.value.code == 2150859046
    assert "maximum number of 5 shells" in caught.value.reason


def test_a_failing_script_is_a_script_error_with_powershells_message(
    wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.on_command(lambda _: CommandResult(stderr=CLIXML_ERROR, exit_code=1))
    with pytest.raises(ScriptError) as caught:
        WinrmCollector().collect(target)
    error = caught.value
    assert isinstance(error, RemoteError)
    assert error.exit_code == 1
    assert 'Get-CimInstance : Invalid class "Win32_Nope"' in str(error)
    assert "_x000D_" not in str(error)
    assert wsman_server.open_shells() == 0


def test_output_that_is_not_the_scripts_json_is_a_remote_error(
    wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.on_command(lambda _: CommandResult(stdout="WARNING: something else\r\n"))
    with pytest.raises(ReportError, match="something else"):
        WinrmCollector().collect(target)
    wsman_server.on_command(lambda _: CommandResult(stdout='{"memory": {"total_kib": -1}}'))
    with pytest.raises(ReportError, match="total_kib"):
        WinrmCollector().collect(target)


def test_plain_stderr_is_kept_as_it_is() -> None:
    assert error_message("  'powershell.exe' is not recognized\r\n  ") == (
        "'powershell.exe' is not recognized"
    )


def test_a_target_without_credential_is_refused_before_any_request() -> None:
    with pytest.raises(Exception, match="no credential"):
        WinrmCollector().collect(Target(machine_id="m", host="127.0.0.1"))


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_polls_of_many_targets_each_get_their_own_rates(
    powershell: PowerShellHost, wsman_server: WsmanServer
) -> None:
    collector = WinrmCollector()
    # Four: the test server's listen backlog is socketserver's default of 5.
    targets = [target_of(wsman_server, machine_id=f"win-{i}") for i in range(4)]
    results: dict[str, list[list[Reading]]] = {t.machine_id: [] for t in targets}
    errors: list[BaseException] = []

    def poll_twice(target: Target) -> None:
        try:
            for _ in range(2):
                results[target.machine_id].append(collector.collect(target))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=poll_twice, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for polls in results.values():
        first, second = polls
        assert not [r for r in first if r.metric == "cpu.percent"]
        # The server's counters tick per query, shared by all targets: the share is
        # still exactly 25 % whatever other polls ran in between.
        assert _value(second, "cpu.percent") == pytest.approx(25.0)
    assert wsman_server.open_shells() == 0


def test_settings_refuse_an_operation_timeout_not_below_the_read_timeout() -> None:
    with pytest.raises(ValueError, match="operation_timeout_sec"):
        WinrmSettings(read_timeout_sec=10, operation_timeout_sec=10)
    with pytest.raises(TypeError):
        WinrmSettings(skip_nics="isatap*")
    assert attrs.evolve(WinrmSettings(), per_cpu=True).per_cpu


def test_identify_reports_a_failing_or_strange_answer(
    wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.on_command(lambda _: CommandResult(stderr=CLIXML_ERROR, exit_code=1))
    with pytest.raises(ScriptError, match="exit code 1"):
        WinrmCollector().identify(target)
    wsman_server.on_command(lambda _: CommandResult(stdout="[1, 2]"))
    with pytest.raises(ReportError, match=r"\[1, 2\]"):
        WinrmCollector().identify(target)
    assert wsman_server.open_shells() == 0


def test_identify_fails_on_a_fault_before_running_anything(
    powershell: PowerShellHost, wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.inject_fault(WsmanFault.invalid_class(), action="Identify")
    with pytest.raises(RemoteFaultError):
        WinrmCollector().identify(target)
    assert powershell.scripts == []
