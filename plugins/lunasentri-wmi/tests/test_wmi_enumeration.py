"""WQL over WS-Management with the real pywinrm client against the test server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from winrm.protocol import Protocol

from lunasentri_core import RemoteError, RemoteFaultError, RemoteTimeoutError
from lunasentri_core.testing import WmiRepository, WsmanFault, WsmanServer
from lunasentri_winrm.transport import remote_errors
from lunasentri_wmi import query


class CountingProtocol(Protocol):
    """pywinrm's Protocol, counting the actions it sends."""

    def __init__(self, server: WsmanServer, read_timeout: int = 30) -> None:
        super().__init__(
            server.url,
            transport="basic",
            username="vagrant",
            password="vagrant",
            read_timeout_sec=read_timeout,
            operation_timeout_sec=read_timeout - 1,
        )
        self.actions: list[str] = []

    def send_message(self, message: str) -> bytes:
        self.actions.append(message.split("enumeration/", 1)[1].split("<", 1)[0])
        return super().send_message(message)


@pytest.fixture
def protocol(wsman_server: WsmanServer) -> Iterator[CountingProtocol]:
    client = CountingProtocol(wsman_server)
    yield client
    client.transport.close_session()


def test_select_star_gives_typed_instances(protocol: CountingProtocol) -> None:
    (system,) = query(protocol, "SELECT * FROM Win32_OperatingSystem")
    assert system.class_name == "Win32_OperatingSystem"
    assert system.integer("TotalVisibleMemorySize") == 629368
    assert system["LargeSystemCache"] is None
    assert system.datetime("LastBootUpTime") == dt.datetime(2013, 4, 10, 16, 17, 23, 500000, dt.UTC)
    # Everything came in the optimized Enumerate response (w:EndOfSequence).
    assert protocol.actions == ["Enumerate"]


def test_a_property_list_gives_fragments_with_nil_and_datetimes(
    protocol: CountingProtocol,
) -> None:
    processes = list(query(protocol, "SELECT Name, CommandLine, CreationDate FROM Win32_Process"))
    assert len(processes) == 29
    assert {p.class_name for p in processes} == {None}
    idle = processes[0]
    assert (idle.text("Name"), idle["CommandLine"], idle["CreationDate"]) == (
        "System Idle Process",
        None,
        None,
    )
    assert processes[2].text("CommandLine") == "\\??\\C:\\Windows\\system32\\conhost.exe"
    assert processes[1].datetime("CreationDate") == dt.datetime(
        2013, 4, 29, 18, 43, 11, 203125, dt.UTC
    )


def test_arrays_of_a_fragment(protocol: CountingProtocol) -> None:
    (system,) = query(protocol, "SELECT Name, Roles FROM Win32_ComputerSystem")
    assert system.array("Roles") == ("LM_Workstation", "LM_Server", "NT", "Server_NT")


def test_paging_over_several_pulls_until_end_of_sequence() -> None:
    with WsmanServer(page_size=4) as server:
        client = CountingProtocol(server)
        handles = [p.text("Handle") for p in query(client, "SELECT Handle FROM Win32_Process")]
        assert server.open_enumerations() == 0
    assert len(handles) == len(set(handles)) == 29
    # 4 in the Enumerate response, then 7 Pulls of up to 4 (the last one ends).
    assert client.actions == ["Enumerate"] + ["Pull"] * 7


def test_later_windows_sends_one_item_first() -> None:
    with WsmanServer(first_page_size=1) as server:
        client = CountingProtocol(server)
        disks = [
            d.text("DeviceID") for d in query(client, "SELECT DeviceID FROM Win32_LogicalDisk")
        ]
    assert disks == ["C:", "D:"]
    assert client.actions == ["Enumerate", "Pull"]


def test_max_elements_bounds_each_page() -> None:
    with WsmanServer(page_size=100) as server:
        client = CountingProtocol(server)
        count = sum(1 for _ in query(client, "SELECT Handle FROM Win32_Process", max_elements=10))
    assert count == 29
    assert client.actions == ["Enumerate", "Pull", "Pull"]


def test_an_empty_result(protocol: CountingProtocol) -> None:
    assert list(query(protocol, "SELECT DeviceID FROM Win32_LogicalDisk WHERE DriveType = 4")) == []


def test_stopping_early_releases_the_context() -> None:
    with WsmanServer(page_size=4) as server:
        client = CountingProtocol(server)
        for process in query(client, "SELECT Handle FROM Win32_Process"):
            assert server.open_enumerations() == 1
            assert process.text("Handle") == "0"
            break
        assert server.open_enumerations() == 0
    assert client.actions == ["Enumerate", "Release"]


def test_an_error_while_paging_releases_the_context() -> None:
    with WsmanServer(page_size=4) as server:
        client = CountingProtocol(server)

        def fail_in_the_second_page() -> None:
            for index, _ in enumerate(query(client, "SELECT Handle FROM Win32_Process")):
                if index == 5:
                    raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fail_in_the_second_page()
        assert server.open_enumerations() == 0
    assert client.actions == ["Enumerate", "Pull", "Release"]


def test_a_request_that_fails_is_not_followed_by_a_release() -> None:
    with WsmanServer(page_size=4) as server:
        client = CountingProtocol(server, read_timeout=2)

        def hang_after_the_first_page() -> None:
            for index, _ in enumerate(query(client, "SELECT Handle FROM Win32_Process")):
                if index == 3:
                    server.hang_requests()

        with pytest.raises(RemoteTimeoutError), remote_errors("test host"):
            hang_after_the_first_page()
        server.hang_requests(False)
    # Waiting out another read timeout for a Release would only delay the failure.
    assert client.actions == ["Enumerate", "Pull"]


def test_an_unknown_class_is_a_remote_fault_with_code_and_reason(
    protocol: CountingProtocol,
) -> None:
    with pytest.raises(RemoteFaultError) as caught, remote_errors("test host"):
        list(query(protocol, "SELECT * FROM Win32_Processa"))
    assert caught.value.code == 2150858778
    assert caught.value.reason.startswith("The data source could not process the filter.")


def test_a_fault_on_pull_is_a_remote_fault(wsman_server: WsmanServer) -> None:
    wsman_server.page_size = 4
    wsman_server.inject_fault(
        WsmanFault(code=2150859046, subcode="w:QuotaLimit", reason="over quota"),
        action="Pull",
    )
    client = CountingProtocol(wsman_server)
    with pytest.raises(RemoteFaultError) as caught, remote_errors("test host"):
        list(query(client, "SELECT Handle FROM Win32_Process"))
    assert (caught.value.code, caught.value.reason) == (2150859046, "over quota")


def test_another_namespace_is_another_resource_uri(protocol: CountingProtocol) -> None:
    # The test server answers any namespace from one repository; the URI is what counts.
    seen: list[str] = []
    send = protocol.send_message

    def spy(message: str) -> bytes:
        seen.append(message)
        return send(message)

    protocol.send_message = spy  # type: ignore[method-assign]
    list(query(protocol, "SELECT Name FROM Win32_ComputerSystem", namespace="root/wmi"))
    assert "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/wmi/*" in seen[0]


class _Answers:
    """A stand-in for pywinrm's Protocol that answers canned envelopes."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.sent: list[str] = []

    def build_wsman_header(self, action: str, resource_uri: str, *_: object) -> dict[str, object]:
        return {"env:Header": {"a:Action": action}}

    def send_message(self, message: str) -> bytes:
        self.sent.append(message)
        return self.answers.pop(0)


S = "http://www.w3.org/2003/05/soap-envelope"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"


def _envelope(body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{S}" xmlns:n="{N}" xmlns:w="{W}"><s:Body>{body}</s:Body>'
        "</s:Envelope>"
    ).encode()


def test_end_of_sequence_in_the_wsman_namespace_of_a_pull() -> None:
    fragment = "<w:XmlFragment><Name>{}</Name></w:XmlFragment>"
    answers = _Answers(
        _envelope(
            "<n:EnumerateResponse><n:EnumerationContext>c1</n:EnumerationContext>"
            "</n:EnumerateResponse>"
        ),
        _envelope(
            f"<n:PullResponse><w:Items>{fragment.format('a')}</w:Items>"
            "<w:EndOfSequence/></n:PullResponse>"
        ),
    )
    assert [i.text("Name") for i in query(answers, "SELECT Name FROM X")] == ["a"]
    assert len(answers.sent) == 2


def test_end_of_sequence_in_the_enumeration_namespace_of_an_enumerate() -> None:
    answers = _Answers(
        _envelope(
            "<n:EnumerateResponse><n:Items><w:XmlFragment><Name>b</Name></w:XmlFragment>"
            "</n:Items><n:EndOfSequence/></n:EnumerateResponse>"
        ),
    )
    assert [i.text("Name") for i in query(answers, "SELECT Name FROM X")] == ["b"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"not xml", "not XML"),
        (_envelope("<n:Other/>"), "without an EnumerateResponse"),
        (_envelope("<n:EnumerateResponse/>"), "without EndOfSequence"),
        (
            _envelope(
                "<n:EnumerateResponse><w:Items><w:XmlFragment><When><Datetime>soon"
                "</Datetime></When></w:XmlFragment></w:Items><w:EndOfSequence/>"
                "</n:EnumerateResponse>"
            ),
            "does not parse",
        ),
    ],
)
def test_an_answer_that_is_not_ws_enumeration_is_a_remote_error(
    answer: bytes, message: str
) -> None:
    with pytest.raises(RemoteError, match=message):
        list(query(_Answers(answer), "SELECT Name FROM X"))


def test_a_custom_class_and_where_clause() -> None:
    repository = WmiRepository()
    repository.add_class("Win32_Service", [{"Name": "WinRM", "State": "Running"}])
    with WsmanServer(wmi=repository) as server:
        client = CountingProtocol(server)
        (service,) = query(client, "SELECT State FROM Win32_Service WHERE Name = 'WinRM'")
    assert service.text("State") == "Running"
