"""The WS-Management test server, driven by the real pywinrm client over loopback HTTP."""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import pytest
import requests
import winrm
import xmltodict
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WSManFaultError

from lunasentri_core.testing import (
    CommandResult,
    ShellCommand,
    WmiRepository,
    WsmanFault,
    WsmanServer,
)

pytest_plugins = ["lunasentri_core.testing"]

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "n": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "cim": "http://schemas.dmtf.org/wbem/wscim/1/common",
}
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
CIMV2_ALL = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/*"
ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
P_OS = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_OperatingSystem"


@pytest.fixture(autouse=True)
def _no_ca_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """pywinrm warns (an error here) when it takes a CA bundle from the environment."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def _protocol(
    server: WsmanServer, password: str = "vagrant", read_timeout: int = 30
) -> winrm.Protocol:
    return winrm.Protocol(
        server.url,
        transport="basic",
        username="vagrant",
        password=password,
        read_timeout_sec=read_timeout,
        operation_timeout_sec=read_timeout - 1,
    )


def _send(
    protocol: winrm.Protocol, action: str, body: dict[str, object], message_id: str | None = None
) -> ET.Element:
    request = {
        "env:Envelope": protocol.build_wsman_header(action, CIMV2_ALL, message_id=message_id)
    }
    request["env:Envelope"]["env:Body"] = body
    return ET.fromstring(protocol.send_message(xmltodict.unparse(request)))


def _enumerate(protocol: winrm.Protocol, wql: str, max_elements: int = 32000) -> ET.Element:
    body = {
        "n:Enumerate": {
            "w:OptimizeEnumeration": None,
            "w:MaxElements": str(max_elements),
            "w:Filter": {"@Dialect": WQL, "#text": wql},
        }
    }
    return _send(protocol, ENUMERATE, body)


def _pull(protocol: winrm.Protocol, context: str, max_elements: int = 32000) -> ET.Element:
    body = {"n:Pull": {"n:EnumerationContext": context, "n:MaxElements": str(max_elements)}}
    return _send(protocol, PULL, body)


def _pages(protocol: winrm.Protocol, wql: str) -> Iterator[ET.Element]:
    """Every response of an enumeration, the Enumerate one first, until EndOfSequence."""
    response = _enumerate(protocol, wql)
    yield response
    while not _ended(response):
        context = response.findtext(".//n:EnumerationContext", namespaces=NS)
        assert context
        response = _pull(protocol, context)
        yield response


def _ended(response: ET.Element) -> bool:
    return response.find(".//w:EndOfSequence", NS) is not None or (
        response.find(".//n:EndOfSequence", NS) is not None
    )


def _items(response: ET.Element) -> list[ET.Element]:
    holder = response.find(".//w:Items", NS)
    if holder is None:
        holder = response.find(".//n:Items", NS)
    return [] if holder is None else list(holder)


def _query(protocol: winrm.Protocol, wql: str) -> list[ET.Element]:
    return [item for page in _pages(protocol, wql) for item in _items(page)]


def _typed(item: ET.Element, name: str) -> str | None:
    namespace = item.tag[1:].partition("}")[0]
    return item.findtext(f"{{{namespace}}}{name}")


# -- HTTP and authentication ------------------------------------------------------------


def test_identify_answers_like_windows(wsman_server: WsmanServer) -> None:
    identify = _send(_protocol(wsman_server), "", {"wsmid:Identify": {"@xmlns:wsmid": NS["wsmid"]}})
    answer = identify.find(".//wsmid:IdentifyResponse", NS)
    assert answer is not None
    assert answer.findtext("wsmid:ProductVendor", namespaces=NS) == "Microsoft Corporation"
    assert answer.findtext("wsmid:ProtocolVersion", namespaces=NS) == NS["w"]
    assert (answer.findtext("wsmid:ProductVersion", namespaces=NS) or "").startswith("OS: 6.1.7601")


def test_bad_password_is_invalid_credentials(wsman_server: WsmanServer) -> None:
    with pytest.raises(InvalidCredentialsError):
        winrm.Session(wsman_server.url, auth=("vagrant", "wrong")).run_cmd("ipconfig")


def test_401_offers_negotiate_and_basic_like_windows(wsman_server: WsmanServer) -> None:
    response = httpx.post(
        wsman_server.url,
        content=b"<x/>",
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
        auth=("vagrant", "wrong"),
    )
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
    assert response.headers["server"] == "Microsoft-HTTPAPI/2.0"


def test_other_users_are_configurable() -> None:
    with WsmanServer(users={"Administrator": "S3cret!"}) as server:
        server.on_command(lambda command: CommandResult(stdout="ok"))
        session = winrm.Session(server.url, auth=("Administrator", "S3cret!"))
        assert session.run_cmd("hostname").std_out == b"ok"


def test_wrong_content_type_is_415(wsman_server: WsmanServer) -> None:
    response = httpx.post(wsman_server.url, content=b"<x/>", auth=("vagrant", "vagrant"))
    assert response.status_code == 415


def test_doctype_and_entities_are_refused(wsman_server: WsmanServer) -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>'
    response = httpx.post(
        wsman_server.url,
        content=body,
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
        auth=("vagrant", "vagrant"),
    )
    assert response.status_code == 400
    fault = ET.fromstring(response.content).find(".//s:Fault", NS)
    assert fault is not None
    assert fault.findtext("s:Code/s:Value", namespaces=NS) == "s:Sender"


# -- Shells -------------------------------------------------------------------------------


def test_run_ps_gets_the_registered_stdout_and_exit_code(wsman_server: WsmanServer) -> None:
    seen: list[ShellCommand] = []

    def handler(command: ShellCommand) -> CommandResult:
        seen.append(command)
        return CommandResult(stdout='{"cpu": 12}\r\n', exit_code=0)

    wsman_server.on_command(handler)
    result = winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_ps(
        "$ProgressPreference='SilentlyContinue'; Get-CimInstance Win32_OperatingSystem"
    )
    assert result.std_out == b'{"cpu": 12}\r\n'
    assert result.status_code == 0
    # pywinrm sends the script as -encodedcommand; the handler gets it decoded.
    assert (
        seen[0].script
        == "$ProgressPreference='SilentlyContinue'; Get-CimInstance Win32_OperatingSystem"
    )
    assert seen[0].command.startswith("powershell -encodedcommand ")


def test_run_cmd_gets_stderr_and_a_failing_exit_code(wsman_server: WsmanServer) -> None:
    wsman_server.on_command(
        lambda command: CommandResult(stdout=b"", stderr="Access is denied.\r\n", exit_code=5)
    )
    result = winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_cmd(
        "net", ["session"]
    )
    assert (result.std_out, result.std_err, result.status_code) == (
        b"",
        b"Access is denied.\r\n",
        5,
    )


def test_an_unregistered_command_is_not_recognized(wsman_server: WsmanServer) -> None:
    result = winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_cmd("frobnicate")
    assert result.status_code == 1
    assert b"'frobnicate' is not recognized" in result.std_err


def test_shell_lifecycle_and_large_output_in_several_streams(wsman_server: WsmanServer) -> None:
    big = "x" * 10_000
    wsman_server.on_command(lambda command: CommandResult(stdout=big, exit_code=0))
    protocol = _protocol(wsman_server)
    shell_id = protocol.open_shell()
    assert wsman_server.open_shells() == 1
    command_id = protocol.run_command(shell_id, "type", ["big.txt"])
    stdout, stderr, code = protocol.get_command_output(shell_id, command_id)
    assert (stdout.decode(), stderr, code) == (big, b"", 0)
    protocol.cleanup_command(shell_id, command_id)
    protocol.close_shell(shell_id)
    assert wsman_server.open_shells() == 0


def test_receive_answers_base64_streams_with_command_state_done(wsman_server: WsmanServer) -> None:
    wsman_server.on_command(lambda command: CommandResult(stdout="hi", stderr="oops", exit_code=7))
    protocol = _protocol(wsman_server)
    shell_id = protocol.open_shell()
    command_id = protocol.run_command(shell_id, "cmd")
    message_id = str(uuid.uuid4()).upper()
    header = protocol.build_wsman_header(
        "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive",
        "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
        shell_id,
        message_id,
    )
    header["env:Body"] = {
        "rsp:Receive": {"rsp:DesiredStream": {"@CommandId": command_id, "#text": "stdout stderr"}}
    }
    root = ET.fromstring(protocol.send_message(xmltodict.unparse({"env:Envelope": header})))
    rsp = "{http://schemas.microsoft.com/wbem/wsman/1/windows/shell}"
    assert root.findtext(".//a:RelatesTo", namespaces=NS) == f"uuid:{message_id}"
    streams = {(s.get("Name"), s.text) for s in root.iter(f"{rsp}Stream") if s.text}
    assert streams == {
        ("stdout", base64.b64encode(b"hi").decode()),
        ("stderr", base64.b64encode(b"oops").decode()),
    }
    state = root.find(f".//{rsp}CommandState")
    assert state is not None
    assert (
        state.get("State")
        == "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
    )
    assert state.findtext(f"{rsp}ExitCode") == "7"


def test_an_unknown_shell_is_the_windows_fault(wsman_server: WsmanServer) -> None:
    with pytest.raises(WSManFaultError) as caught:
        _protocol(wsman_server).run_command("6F0B3A5E-0000-0000-0000-000000000000", "cmd")
    assert caught.value.wsman_fault_code == 2150858843
    assert "shell was not found" in caught.value.reason


# -- Enumerate and Pull -------------------------------------------------------------------


def test_enumerate_pull_pages_until_end_of_sequence_with_typed_items() -> None:
    with WsmanServer(page_size=4) as server:
        protocol = _protocol(server)
        pages = list(_pages(protocol, "SELECT * FROM Win32_Process"))
        contexts = [page.findtext(".//n:EnumerationContext", namespaces=NS) for page in pages[:-1]]
        items = [item for page in pages for item in _items(page)]
    assert len(pages) >= 3
    assert len(set(contexts)) == len(contexts)  # a new context on each page
    assert pages[-1].find(".//n:PullResponse/n:EndOfSequence", NS) is not None
    assert len(items) == 29
    assert {item.tag for item in items} == {
        "{http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Process}Win32_Process"
    }
    assert items[0].get(f"{{{NS['xsi']}}}type") == "p:Win32_Process_Type"
    assert _typed(items[0], "Name") == "System Idle Process"


def test_relates_to_is_the_request_message_id(wsman_server: WsmanServer) -> None:
    message_id = str(uuid.uuid4()).upper()
    body = {
        "n:Enumerate": {
            "w:Filter": {"@Dialect": WQL, "#text": "SELECT * FROM Win32_ComputerSystem"}
        }
    }
    response = _send(_protocol(wsman_server), ENUMERATE, body, message_id=message_id)
    assert response.findtext(".//a:RelatesTo", namespaces=NS) == f"uuid:{message_id}"
    # Without OptimizeEnumeration the items come only with Pull.
    assert _items(response) == []


def test_all_in_the_first_response_ends_with_w_end_of_sequence(wsman_server: WsmanServer) -> None:
    response = _enumerate(_protocol(wsman_server), "SELECT * FROM Win32_OperatingSystem")
    assert response.find(".//n:EnumerateResponse/w:EndOfSequence", NS) is not None
    (item,) = _items(response)
    assert item.tag == f"{{{P_OS}}}Win32_OperatingSystem"
    boot = item.find(f"{{{P_OS}}}LastBootUpTime/cim:Datetime", NS)
    assert boot is not None
    assert boot.text == "2013-04-10T16:17:23.5Z"
    nil = item.find(f"{{{P_OS}}}LargeSystemCache", NS)
    assert nil is not None
    assert nil.get(f"{{{NS['xsi']}}}nil") == "true"


def test_an_explicit_property_list_gives_xml_fragments(wsman_server: WsmanServer) -> None:
    items = _query(
        _protocol(wsman_server), "select Name, commandline, CreationDate from win32_process"
    )
    assert {item.tag for item in items} == {f"{{{NS['w']}}}XmlFragment"}
    first = items[0]
    assert [child.tag for child in first] == ["CommandLine", "CreationDate", "Name"]
    assert first.findtext("Name") == "System Idle Process"
    assert first.find("CommandLine").get(f"{{{NS['xsi']}}}nil") == "true"  # type: ignore[union-attr]
    assert items[1].findtext("CreationDate/Datetime") == "2013-04-29T11:43:11.203125-07:00"


def test_a_where_clause_on_one_property(wsman_server: WsmanServer) -> None:
    protocol = _protocol(wsman_server)
    disks = _query(
        protocol, "SELECT DeviceID, Size, FreeSpace FROM Win32_LogicalDisk WHERE DriveType = 3"
    )
    assert [(d.findtext("DeviceID"), d.findtext("Size")) for d in disks] == [("C:", "32210153472")]
    total = _query(
        protocol, "SELECT Name FROM Win32_PerfRawData_PerfOS_Processor WHERE Name='_Total'"
    )
    assert [item.findtext("Name") for item in total] == ["_Total"]


def test_arrays_are_repeated_elements(wsman_server: WsmanServer) -> None:
    (system,) = _query(_protocol(wsman_server), "SELECT Name, Roles FROM Win32_ComputerSystem")
    assert [role.text for role in system.findall("Roles")] == [
        "LM_Workstation",
        "LM_Server",
        "NT",
        "Server_NT",
    ]


def test_raw_processor_counters_advance_so_cpu_deltas_work(wsman_server: WsmanServer) -> None:
    protocol = _protocol(wsman_server)
    wql = (
        "SELECT Name, PercentProcessorTime, Timestamp_Sys100NS"
        " FROM Win32_PerfRawData_PerfOS_Processor"
    )

    def sample() -> dict[str, tuple[int, int]]:
        return {
            str(i.findtext("Name")): (
                int(i.findtext("PercentProcessorTime") or 0),
                int(i.findtext("Timestamp_Sys100NS") or 0),
            )
            for i in _query(protocol, wql)
        }

    first, second = sample(), sample()
    assert sorted(first) == ["0", "1", "_Total"]
    busy = {}
    for name in first:
        idle = second[name][0] - first[name][0]
        elapsed = second[name][1] - first[name][1]
        assert elapsed > 0
        busy[name] = round((1 - idle / elapsed) * 100, 6)
    assert busy == {"0": 30.0, "1": 20.0, "_Total": 25.0}


def test_network_interface_names_use_brackets_and_counters_advance(
    wsman_server: WsmanServer,
) -> None:
    protocol = _protocol(wsman_server)
    wql = "SELECT Name, BytesReceivedPersec FROM Win32_PerfRawData_Tcpip_NetworkInterface"
    first = {
        i.findtext("Name"): int(i.findtext("BytesReceivedPersec") or 0)
        for i in _query(protocol, wql)
    }
    second = {
        i.findtext("Name"): int(i.findtext("BytesReceivedPersec") or 0)
        for i in _query(protocol, wql)
    }
    assert "Intel[R] Ethernet Connection [7] I219-LM" in first
    assert all(second[name] > first[name] for name in first)


def test_an_invalid_class_is_the_real_cannot_process_filter_fault(
    wsman_server: WsmanServer,
) -> None:
    with pytest.raises(WSManFaultError) as caught:
        _enumerate(_protocol(wsman_server), "SELECT * FROM Win32_Processa")
    fault = caught.value
    assert fault.code == 500
    assert fault.wsman_fault_code == 2150858778
    assert fault.fault_code == "s:Sender"
    assert fault.fault_subcode == "n:CannotProcessFilter"
    assert fault.reason.startswith("The data source could not process the filter.")
    assert "The specified class does not exist in the given namespace." in fault.response


def test_an_unknown_enumeration_context_is_a_fault(wsman_server: WsmanServer) -> None:
    with pytest.raises(WSManFaultError) as caught:
        _pull(_protocol(wsman_server), "uuid:00000000-0000-0000-0000-000000000000")
    assert caught.value.fault_subcode == "n:InvalidEnumerationContext"


def test_a_custom_repository() -> None:
    repository = WmiRepository()
    repository.add_class(
        "Win32_Service", [{"Name": "WinRM", "State": "Running", "StartMode": "Auto"}]
    )
    with WsmanServer(wmi=repository) as server:
        (service,) = _query(
            _protocol(server), "SELECT State FROM Win32_Service WHERE Name = 'winrm'"
        )
    assert service.findtext("State") == "Running"


# -- Injected faults, delays, hangs and drops ---------------------------------------------


def test_an_injected_fault_for_an_action(wsman_server: WsmanServer) -> None:
    wsman_server.inject_fault(
        WsmanFault(code=2147942405, subcode="w:AccessDenied", reason="Access is denied. "),
        action="Command",
    )
    with pytest.raises(WSManFaultError) as caught:
        winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_cmd("ipconfig")
    assert caught.value.wsman_fault_code == 2147942405
    assert caught.value.fault_subcode == "w:AccessDenied"
    assert caught.value.reason == "Access is denied. "


def test_an_injected_fault_for_a_class_only(wsman_server: WsmanServer) -> None:
    wsman_server.inject_fault(
        WsmanFault(code=2150859046, subcode="w:QuotaLimit", reason="quota"),
        wmi_class="win32_process",
    )
    protocol = _protocol(wsman_server)
    assert len(_query(protocol, "SELECT * FROM Win32_OperatingSystem")) == 1
    with pytest.raises(WSManFaultError) as caught:
        _query(protocol, "SELECT * FROM Win32_Process")
    assert caught.value.wsman_fault_code == 2150859046
    wsman_server.clear_faults()
    assert len(_query(protocol, "SELECT * FROM Win32_Process")) == 29


def test_an_injected_fault_a_number_of_times(wsman_server: WsmanServer) -> None:
    wsman_server.inject_fault(
        WsmanFault(code=1, subcode="w:InternalError", reason="once"), action="Identify", times=1
    )
    protocol = _protocol(wsman_server)
    identify = {"wsmid:Identify": {"@xmlns:wsmid": NS["wsmid"]}}
    with pytest.raises(WSManFaultError):
        _send(protocol, "", identify)
    assert _send(protocol, "", identify).find(".//wsmid:IdentifyResponse", NS) is not None


def test_a_delay_longer_than_the_read_timeout_is_a_client_timeout(
    wsman_server: WsmanServer,
) -> None:
    wsman_server.set_delay(60)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _protocol(wsman_server, read_timeout=2).open_shell()


def test_a_short_delay_still_answers(wsman_server: WsmanServer) -> None:
    wsman_server.set_delay(0.05)
    assert len(_query(_protocol(wsman_server), "SELECT * FROM Win32_OperatingSystem")) == 1


def test_a_hang_is_a_client_timeout_and_stopping_releases_it() -> None:
    with WsmanServer() as server:
        server.hang_requests()
        with pytest.raises(requests.exceptions.ReadTimeout):
            _protocol(server, read_timeout=2).open_shell()
    # Leaving the block returned: the hanging handler was released.


def test_a_dropped_connection_is_a_connection_error(wsman_server: WsmanServer) -> None:
    wsman_server.drop_connections()
    with pytest.raises(requests.exceptions.ConnectionError):
        _protocol(wsman_server).open_shell()
    wsman_server.drop_connections(False)
    assert _protocol(wsman_server).open_shell()


def test_the_operation_timeout_fault_on_receive_is_retried_by_pywinrm(
    wsman_server: WsmanServer,
) -> None:
    # Windows answers a Receive with w:TimedOut when the command runs past
    # OperationTimeout; pywinrm receives again.
    wsman_server.inject_fault(WsmanFault.operation_timeout(), action="Receive", times=2)
    wsman_server.on_command(lambda command: CommandResult(stdout="late"))
    result = winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_cmd("slow")
    assert (result.std_out, result.status_code) == (b"late", 0)


def test_the_operation_timeout_fault_is_pywinrms_operation_timeout(
    wsman_server: WsmanServer,
) -> None:
    wsman_server.inject_fault(WsmanFault.operation_timeout(), action="Receive")
    protocol = _protocol(wsman_server)
    shell_id = protocol.open_shell()
    command_id = protocol.run_command(shell_id, "slow")
    with pytest.raises(WinRMOperationTimeoutError):
        protocol.get_command_output_raw(shell_id, command_id)


def test_identify_without_credentials_when_asked_for(wsman_server: WsmanServer) -> None:
    envelope = (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:wsmid="{NS["wsmid"]}">'
        "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
    )
    headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    refused = httpx.post(wsman_server.url, content=envelope, headers=headers)
    assert refused.status_code == 401
    headers["WSMANIDENTIFY"] = "unauthenticated"
    response = httpx.post(wsman_server.url, content=envelope, headers=headers)
    assert response.status_code == 200
    version = ET.fromstring(response.content).findtext(".//wsmid:ProductVersion", namespaces=NS)
    assert version == "OS: 0.0.0 SP: 0.0 Stack: 2.0"  # Windows hides the OS from strangers


def test_a_where_clause_on_an_unknown_property_is_an_invalid_query(
    wsman_server: WsmanServer,
) -> None:
    with pytest.raises(WSManFaultError) as caught:
        _query(_protocol(wsman_server), "SELECT * FROM Win32_LogicalDisk WHERE Colour = 3")
    assert caught.value.fault_subcode == "n:CannotProcessFilter"
    assert "Invalid query" in caught.value.response


def test_a_command_handler_that_raises_is_a_receiver_fault(wsman_server: WsmanServer) -> None:
    def broken(command: ShellCommand) -> CommandResult:
        raise KeyError("no answer registered")

    wsman_server.on_command(broken)
    with pytest.raises(WSManFaultError) as caught:
        winrm.Session(wsman_server.url, auth=("vagrant", "vagrant")).run_cmd("ipconfig")
    assert caught.value.fault_code == "s:Receiver"
    assert "no answer registered" in caught.value.reason


def test_later_windows_sends_one_item_first_whatever_max_elements() -> None:
    with WsmanServer(first_page_size=1) as server:
        protocol = _protocol(server)
        first = _enumerate(protocol, "SELECT * FROM Win32_LogicalDisk", max_elements=32000)
        context = first.findtext(".//n:EnumerationContext", namespaces=NS)
        assert context
        rest = _pull(protocol, context)
    assert len(_items(first)) == 1
    assert first.find(".//w:EndOfSequence", NS) is None
    assert len(_items(rest)) == 1
    assert rest.find(".//n:EndOfSequence", NS) is not None


def test_release_ends_an_enumeration(wsman_server: WsmanServer) -> None:
    protocol = _protocol(wsman_server)
    context = _enumerate(protocol, "SELECT * FROM Win32_Process", max_elements=2).findtext(
        ".//n:EnumerationContext", namespaces=NS
    )
    assert context
    assert wsman_server.open_enumerations() == 1
    release = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release"
    response = _send(protocol, release, {"n:Release": {"n:EnumerationContext": context}})
    assert response.findtext(".//a:Action", namespaces=NS) == f"{release}Response"
    assert wsman_server.open_enumerations() == 0
    with pytest.raises(WSManFaultError):
        _pull(protocol, context)


def test_a_request_over_the_size_limit_is_413(wsman_server: WsmanServer) -> None:
    headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    with httpx.Client(auth=("vagrant", "vagrant"), headers=headers) as client:
        too_big = client.post(wsman_server.url, content=b" " * (600 * 1024))
        assert too_big.status_code == 413
        # The connection is not confused by the unread rest: the next request works.
        assert client.post(wsman_server.url, content=b"<x/>").status_code == 400


def test_another_loopback_address_for_discovery_tests() -> None:
    with WsmanServer(host="127.0.0.7") as server:
        assert server.url.startswith("http://127.0.0.7:")
        assert len(_query(_protocol(server), "SELECT Name FROM Win32_ComputerSystem")) == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "localhost"])
def test_only_loopback_addresses(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        WsmanServer(host=host)


def test_an_empty_result_has_no_items_element(wsman_server: WsmanServer) -> None:
    protocol = _protocol(wsman_server)
    wql = "SELECT * FROM Win32_LogicalDisk WHERE DriveType = 4"
    optimized = _enumerate(protocol, wql)
    assert optimized.find(".//n:EnumerateResponse/w:EndOfSequence", NS) is not None
    assert optimized.find(".//w:Items", NS) is None
    body = {"n:Enumerate": {"w:Filter": {"@Dialect": WQL, "#text": wql}}}
    context = _send(protocol, ENUMERATE, body).findtext(".//n:EnumerationContext", namespaces=NS)
    assert context
    pulled = _pull(protocol, context)
    assert pulled.find(".//n:PullResponse/n:EndOfSequence", NS) is not None
    assert pulled.find(".//n:Items", NS) is None
