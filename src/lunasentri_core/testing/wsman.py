"""A WS-Management test server that answers like Windows, over HTTP on loopback.

It speaks what a Windows collector needs: Basic authentication, Identify, the
remote shell (Create, Command, Receive, Signal, Delete) and WS-Enumeration
(Enumerate, Pull, Release) of WQL queries, with the namespaces, element shapes and
fault layouts of real Windows traffic (see ``docs/testing.md`` for the sources).
Tests register what commands print and inject faults, delays, hangs and dropped
connections. Only the standard library: a ``ThreadingHTTPServer`` in a thread.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import itertools
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape, quoteattr

import attrs
import pytest

from lunasentri_core.testing.wsman_data import WmiInstance, WmiRepository, WmiScalar, WmiValue

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
WSMID = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
CIMV2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/"
SHELL_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
WSMAN_FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
ENUMERATION_FAULT_ACTION = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/fault"
ENVELOPE_NAMESPACES = (
    f'xmlns:s="{S}" xmlns:a="{A}" xmlns:n="{N}" xmlns:w="{W}" xmlns:x="{X}" '
    f'xmlns:rsp="{RSP}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"'
)
MAX_REQUEST_BYTES = 512 * 1024
STREAM_CHUNK = 4096  # Windows splits long output over several rsp:Stream elements.
WQL = re.compile(
    r"""^\s*select\s+(?P<properties>\*|\w+(?:\s*,\s*\w+)*)\s+from\s+(?P<cls>\w+)
    (?:\s+where\s+(?P<prop>\w+)\s*=\s*(?P<value>'[^']*'|"[^"]*"|[-\w.]+))?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@attrs.frozen
class WsmanFault:
    """A WS-Management fault in the layout Windows sends (answered with HTTP 500).

    :param code: the ``f:WSManFault`` ``Code`` (pywinrm's ``wsman_fault_code``).
    :param subcode: the SOAP subcode with its prefix, e.g. ``w:AccessDenied``.
    :param reason: the ``s:Reason`` text (pywinrm's ``reason``).
    :param value: ``s:Sender`` (the request's fault) or ``s:Receiver``.
    :param provider_message: when set, the detail nests a WMI ``f:ProviderFault``
        with this message, as Windows does for WMI errors.
    """

    code: int
    subcode: str
    reason: str
    value: str = "s:Sender"
    provider_message: str | None = None

    @classmethod
    def invalid_class(cls) -> WsmanFault:
        """The fault Windows answers to a WQL query on a class that does not exist."""
        return cls(
            code=2150858778,
            subcode="n:CannotProcessFilter",
            reason="The data source could not process the filter. The filter might be "
            "missing or it might be invalid. Change the filter and try the request again.  ",
            provider_message="The specified class does not exist in the given namespace. ",
        )

    @classmethod
    def operation_timeout(cls) -> WsmanFault:
        """Windows' answer to a Receive when the command runs past ``OperationTimeout``.

        pywinrm turns it into ``WinRMOperationTimeoutError`` and receives again.
        """
        return cls(
            code=2150858793,
            subcode="w:TimedOut",
            reason="The WS-Management service cannot complete the operation within the "
            "time specified in OperationTimeout.  ",
            value="s:Receiver",
        )

    @classmethod
    def invalid_query(cls) -> WsmanFault:
        """The fault for a WQL query that does not parse or names an unknown property."""
        return attrs.evolve(cls.invalid_class(), provider_message="Invalid query ")


@attrs.frozen
class ShellCommand:
    """A command a client ran in a remote shell, as the command handler sees it.

    ``script`` is the PowerShell script decoded from ``-EncodedCommand`` (how
    pywinrm's ``run_ps`` sends it), or None when the command carries none.
    """

    command: str
    arguments: tuple[str, ...]
    script: str | None


@attrs.frozen
class CommandResult:
    """What a command prints and returns; text is encoded as UTF-8."""

    stdout: str | bytes = b""
    stderr: str | bytes = b""
    exit_code: int = 0


CommandHandler = Callable[[ShellCommand], CommandResult]


@attrs.frozen
class _Request:
    action: str  # the last segment of a:Action ("Identify" for Identify)
    message_id: str
    body: ET.Element
    shell_id: str | None
    resource_uri: str


@attrs.define
class _FaultRule:
    fault: WsmanFault
    action: str | None
    wmi_class: str | None
    times: int | None


@attrs.define
class _Enumeration:
    items: list[str]  # rendered, not sent yet


class _Fault(Exception):
    def __init__(self, fault: WsmanFault, action: str = WSMAN_FAULT_ACTION) -> None:
        super().__init__(fault.reason)
        self.fault = fault
        self.action = action


class WsmanServer:
    """A WS-Management endpoint at ``url`` (``http://127.0.0.1:PORT/wsman``).

    ``host`` may be any IPv4 loopback address (127.0.0.0/8, so discovery tests can
    run many hosts) and ``port`` a fixed one such as 5985; other addresses are
    refused. The port is ephemeral by default.

    Use it as a context manager (or :meth:`start`/:meth:`stop`), or through the
    ``wsman_server`` fixture. Basic authentication against ``users`` (a wrong
    password is 401 with ``WWW-Authenticate: Negotiate`` and ``Basic
    realm="WSMAN"``). WQL queries are answered from ``wmi``
    (:meth:`WmiRepository.windows_host` by default), at most ``page_size`` items
    a response, and at most ``first_page_size`` in an optimized Enumerate
    response (Windows Server 2012 and later send one item there whatever
    ``MaxElements`` says); commands from the handler given to :meth:`on_command`.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        wmi: WmiRepository | None = None,
        page_size: int = 20,
        first_page_size: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(
                f"the WS-Management test server listens on loopback only, not {host!r}"
            )
        self.host, self.port = host, port
        self.users = dict(users if users is not None else {"vagrant": "vagrant"})
        self.wmi = wmi if wmi is not None else WmiRepository.windows_host()
        self.page_size = page_size
        self.first_page_size = first_page_size
        self._handler: CommandHandler = _not_recognized
        self._shells: dict[str, dict[str, CommandResult]] = {}
        self._enumerations: dict[str, _Enumeration] = {}
        self._rules: list[_FaultRule] = []
        self._delay = 0.0
        self._hang = False
        self._drop = False
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint's URL; the server must be started."""
        if self._httpd is None:
            raise RuntimeError("the WS-Management test server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/wsman"

    def start(self) -> WsmanServer:
        """Listen on ``host``:``port`` and serve in a background thread; ``port`` is
        then the one listened on (an ephemeral one stays for a restart)."""
        self._released.clear()
        self._httpd = _HttpServer((self.host, self.port), _Handler, self)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="wsman-test-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging and delayed requests are released (unanswered)."""
        self._released.set()
        if self._httpd is not None and self._thread is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> WsmanServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests configure ------------------------------------------------------------

    def on_command(self, handler: CommandHandler) -> None:
        """Answer every shell command with ``handler(command)``.

        Without one, a command ends with exit code 1 and cmd.exe's "is not
        recognized" message on stderr.
        """
        self._handler = handler

    def inject_fault(
        self,
        fault: WsmanFault,
        *,
        action: str | None = None,
        wmi_class: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer matching requests with ``fault`` (``times`` times, or until cleared).

        :param action: the action's last segment (``Create``, ``Command``,
            ``Receive``, ``Signal``, ``Delete``, ``Enumerate``, ``Pull``) or
            ``Identify``; None matches every action.
        :param wmi_class: only Enumerate requests querying this class.
        """
        with self._lock:
            self._rules.append(_FaultRule(fault, action, wmi_class, times))

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        with self._lock:
            self._rules.clear()

    def set_delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request (0 for none)."""
        self._delay = seconds

    def hang_requests(self, enabled: bool = True) -> None:
        """Never answer requests (until this is turned off or the server stops)."""
        self._hang = enabled

    def drop_connections(self, enabled: bool = True) -> None:
        """Close each request's connection without answering."""
        self._drop = enabled

    def open_shells(self) -> int:
        """How many shells are open (created and not deleted)."""
        with self._lock:
            return len(self._shells)

    def open_enumerations(self) -> int:
        """How many enumeration contexts are open (neither pulled to the end nor released)."""
        with self._lock:
            return len(self._enumerations)

    # -- request handling ------------------------------------------------------------------

    def _wait_before_answering(self) -> bool:
        """Apply the delay and the hang; False when the server stopped meanwhile."""
        if self._delay and self._released.wait(self._delay):
            return False
        while self._hang:  # re-checked often, so turning the hang off answers soon
            if self._released.wait(0.05):
                return False
        return True

    def _answer(self, raw: bytes) -> tuple[int, str]:
        try:
            request = _parse(raw)
        except ValueError as error:
            fault = WsmanFault(
                code=2150858817, subcode="w:SchemaValidationError", reason=str(error)
            )
            return HTTPStatus.BAD_REQUEST, _fault_envelope(_Fault(fault), "")
        try:
            self._check_rules(request.action, None)
            return HTTPStatus.OK, self._dispatch(request)
        except _Fault as fault:
            return HTTPStatus.INTERNAL_SERVER_ERROR, _fault_envelope(fault, request.message_id)

    def _answer_unauthenticated(self, raw: bytes) -> str | None:
        """An Identify sent with ``WSMANIDENTIFY: unauthenticated``; None for anything else."""
        try:
            request = _parse(raw)
        except ValueError:
            return None
        return (
            self._identify(request, authenticated=False) if request.action == "Identify" else None
        )

    def _check_rules(self, action: str, wmi_class: str | None) -> None:
        with self._lock:
            for rule in self._rules:
                if rule.action is not None and rule.action.lower() != action.lower():
                    continue
                if (
                    rule.wmi_class is not None
                    and (wmi_class or "").lower() != rule.wmi_class.lower()
                ):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                fault_action = ENUMERATION_FAULT_ACTION if wmi_class else WSMAN_FAULT_ACTION
                raise _Fault(rule.fault, fault_action)

    def _dispatch(self, request: _Request) -> str:
        answer = {
            "Identify": self._identify,
            "Create": self._create,
            "Command": self._command,
            "Receive": self._receive,
            "Signal": self._signal,
            "Delete": self._delete,
            "Enumerate": self._enumerate,
            "Pull": self._pull,
            "Release": self._release,
        }.get(request.action)
        if answer is None:
            raise _Fault(
                WsmanFault(
                    code=2150858776,
                    subcode="a:ActionNotSupported",
                    reason="The action is not supported by the service. ",
                )
            )
        return answer(request)

    def _identify(self, request: _Request, authenticated: bool = True) -> str:
        # Without credentials Windows hides the OS version.
        version = "OS: 6.1.7601 SP: 1.0" if authenticated else "OS: 0.0.0 SP: 0.0"
        body = (
            f'<wsmid:IdentifyResponse xmlns:wsmid="{WSMID}">'
            f"<wsmid:ProtocolVersion>{W}</wsmid:ProtocolVersion>"
            "<wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor>"
            f"<wsmid:ProductVersion>{version} Stack: 2.0</wsmid:ProductVersion>"
            "</wsmid:IdentifyResponse>"
        )
        return (
            f'<s:Envelope xml:lang="en-US" xmlns:s="{S}">'
            f"<s:Header/><s:Body>{body}</s:Body></s:Envelope>"
        )

    def _create(self, request: _Request) -> str:
        shell_id = str(uuid.uuid4()).upper()
        with self._lock:
            self._shells[shell_id] = {}
        body = (
            f"<x:ResourceCreated><a:Address>{escape(self.url)}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL_CMD}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
        )
        return _envelope(f"{X}/CreateResponse", request.message_id, body)

    def _commands_of(self, request: _Request) -> dict[str, CommandResult]:
        commands = self._shells.get(request.shell_id or "")
        if commands is None:
            raise _Fault(
                WsmanFault(
                    code=2150858843,
                    subcode="w:InvalidSelectors",
                    reason="The request for the Windows Remote Shell with ShellId "
                    f"{request.shell_id} failed because the shell was not found on the "
                    "server. Possible causes are: the specified ShellId is incorrect or the "
                    "shell no longer exists on the server. Provide the correct ShellId or "
                    "create a new shell and try the operation again. ",
                )
            )
        return commands

    def _command(self, request: _Request) -> str:
        with self._lock:
            commands = self._commands_of(request)
        command = _shell_command(request.body)
        try:
            result = self._handler(command)
        except Exception as error:  # the test's handler is broken: say so to the client
            reason = f"The test server's command handler raised {error!r}."
            raise _Fault(
                WsmanFault(
                    code=2147500037, subcode="w:InternalError", reason=reason, value="s:Receiver"
                )
            ) from error
        command_id = str(uuid.uuid4()).upper()
        with self._lock:
            commands[command_id] = result
        body = (
            f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId>"
            "</rsp:CommandResponse>"
        )
        return _envelope(f"{RSP}/CommandResponse", request.message_id, body)

    def _receive(self, request: _Request) -> str:
        stream = request.body.find(f".//{{{RSP}}}DesiredStream")
        command_id = "" if stream is None else stream.get("CommandId", "")
        with self._lock:
            result = self._commands_of(request).get(command_id)
        if result is None:
            raise _Fault(_unknown_command(command_id))
        streams = "".join(
            _streams(name, command_id, _encode(data))
            for name, data in (("stdout", result.stdout), ("stderr", result.stderr))
        )
        body = (
            f"<rsp:ReceiveResponse>{streams}"
            f'<rsp:CommandState CommandId="{command_id}" State="{DONE}">'
            f"<rsp:ExitCode>{result.exit_code}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>"
        )
        return _envelope(f"{RSP}/ReceiveResponse", request.message_id, body)

    def _signal(self, request: _Request) -> str:
        signal = request.body.find(f".//{{{RSP}}}Signal")
        command_id = "" if signal is None else signal.get("CommandId", "")
        with self._lock:
            if self._commands_of(request).pop(command_id, None) is None:
                raise _Fault(_unknown_command(command_id))
        return _envelope(f"{RSP}/SignalResponse", request.message_id, "<rsp:SignalResponse/>")

    def _delete(self, request: _Request) -> str:
        with self._lock:
            self._commands_of(request)
            del self._shells[request.shell_id or ""]
        return _envelope(f"{X}/DeleteResponse", request.message_id, "")

    def _enumerate(self, request: _Request) -> str:
        enumerate_ = request.body.find(f"{{{N}}}Enumerate")
        if enumerate_ is None:
            raise _Fault(_bad_request("Enumerate has no n:Enumerate body."))
        wmi_class, items = self._query(request.resource_uri, enumerate_)
        self._check_rules("Enumerate", wmi_class)
        enumeration = _Enumeration(items)
        optimized = enumerate_.find(f"{{{W}}}OptimizeEnumeration") is not None
        # Without OptimizeEnumeration the first items come only with the first Pull.
        limit = _max_elements(enumerate_, f"{{{W}}}MaxElements") if optimized else 0
        if self.first_page_size is not None:
            limit = min(limit, self.first_page_size)
        page, context = self._page(enumeration, limit)
        ended = optimized and context is None
        body = (
            f"<n:EnumerateResponse><n:EnumerationContext>{context or ''}</n:EnumerationContext>"
            + (f"<w:Items>{page}</w:Items>" if page else "")
            + ("<w:EndOfSequence/>" if ended else "")
            + "</n:EnumerateResponse>"
        )
        return _envelope(f"{N}/EnumerateResponse", request.message_id, body)

    def _pull(self, request: _Request) -> str:
        pull = request.body.find(f"{{{N}}}Pull")
        context = (
            "" if pull is None else (pull.findtext(f"{{{N}}}EnumerationContext") or "").strip()
        )
        with self._lock:
            enumeration = self._enumerations.pop(context, None)
        if enumeration is None or pull is None:
            raise _Fault(_invalid_context(), ENUMERATION_FAULT_ACTION)
        page, new_context = self._page(enumeration, _max_elements(pull, f"{{{N}}}MaxElements"))
        body = (
            "<n:PullResponse>"
            + (f"<n:EnumerationContext>{new_context}</n:EnumerationContext>" if new_context else "")
            + (f"<n:Items>{page}</n:Items>" if page else "")  # none when empty, as Windows
            + ("" if new_context else "<n:EndOfSequence/>")
            + "</n:PullResponse>"
        )
        return _envelope(f"{N}/PullResponse", request.message_id, body)

    def _release(self, request: _Request) -> str:
        context = (request.body.findtext(f".//{{{N}}}EnumerationContext") or "").strip()
        with self._lock:
            if self._enumerations.pop(context, None) is None:
                raise _Fault(_invalid_context(), ENUMERATION_FAULT_ACTION)
        return _envelope(f"{N}/ReleaseResponse", request.message_id, "")

    def _page(self, enumeration: _Enumeration, limit: int) -> tuple[str, str | None]:
        """Take up to ``limit`` items; a new context when some remain, else None."""
        count = min(limit, self.page_size)
        page, enumeration.items = enumeration.items[:count], enumeration.items[count:]
        if not enumeration.items and limit:
            return "".join(page), None
        context = f"uuid:{str(uuid.uuid4()).upper()}"
        with self._lock:
            self._enumerations[context] = enumeration
        return "".join(page), context

    def _query(self, resource_uri: str, enumerate_: ET.Element) -> tuple[str, list[str]]:
        """The class and the rendered items (typed for ``*``, else fragments) of a query."""
        filter_ = enumerate_.find(f"{{{W}}}Filter")
        if filter_ is None:
            # No filter: every instance of the class the resource URI names.
            name, properties, where = resource_uri.rsplit("/", 1)[-1], None, None
        else:
            name, properties, where = _parse_wql(filter_.text or "")
        found = self.wmi.instances(name)
        if found is None:
            self._check_rules("Enumerate", name)
            raise _Fault(WsmanFault.invalid_class(), ENUMERATION_FAULT_ACTION)
        registered, instances = found
        if where is not None and instances and not _has(instances[0], where[0]):
            raise _Fault(WsmanFault.invalid_query(), ENUMERATION_FAULT_ACTION)
        selected = [i for i in instances if where is None or _matches(i, *where)]
        if properties is None:
            return registered, [_typed_item(registered, i) for i in selected]
        return registered, [_fragment_item(i, properties) for i in selected]


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when many clients
    # connect at once (concurrent polls, the poller benchmark): listen like a server.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], wsman: WsmanServer
    ) -> None:
        super().__init__(address, handler)
        self.wsman = wsman


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read answers, not access logs."""

    def do_POST(self) -> None:
        wsman = self.server.wsman
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            self.close_connection = True  # the body's end is unknown
            self._reply(HTTPStatus.BAD_REQUEST, "")
            return
        if int(length) > MAX_REQUEST_BYTES:
            # Read and drop the body: closing with it unread would reset the connection
            # before the client reads the answer.
            self._discard(int(length))
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "")
            return
        raw = self.rfile.read(int(length))
        if self.path.split("?", 1)[0].lower() != "/wsman":
            self._reply(HTTPStatus.NOT_FOUND, "")
        elif not self._authorized(wsman.users):
            identify = None
            if (self.headers.get("WSMANIDENTIFY") or "").lower() == "unauthenticated":
                identify = wsman._answer_unauthenticated(raw)
            if identify is None:
                self._reply(HTTPStatus.UNAUTHORIZED, "", challenge=True)
            else:
                self._reply(HTTPStatus.OK, identify)
        elif (
            not (self.headers.get("Content-Type") or "").lower().startswith("application/soap+xml")
        ):
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "")
        elif wsman._drop:
            self.close_connection = True  # closed unanswered, like a reset peer
        elif wsman._wait_before_answering():
            self._reply(*wsman._answer(raw))
        else:
            self.close_connection = True

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)

    def _authorized(self, users: Mapping[str, str]) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user in users and users[user] == password

    def _reply(self, status: int, body: str, challenge: bool = False) -> None:
        data = body.encode()
        self.send_response(status)
        if challenge:
            self.send_header("WWW-Authenticate", "Negotiate")
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        if data:
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# -- parsing --------------------------------------------------------------------------------


def _parse(raw: bytes) -> _Request:
    """The parts of a SOAP request the server uses; ValueError when it is not one."""
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise ValueError("DOCTYPE and entity declarations are not allowed.")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as error:
        raise ValueError(f"The request is not well-formed XML: {error}.") from None
    header, body = root.find(f"{{{S}}}Header"), root.find(f"{{{S}}}Body")
    if root.tag != f"{{{S}}}Envelope" or body is None:
        raise ValueError("The request is not a SOAP 1.2 envelope.")

    def text(tag: str) -> str:
        return "" if header is None else (header.findtext(tag) or "").strip()

    action = text(f"{{{A}}}Action").rsplit("/", 1)[-1]
    if body.find(f"{{{WSMID}}}Identify") is not None:
        action = "Identify"
    selector = (
        None
        if header is None
        else header.find(f"{{{W}}}SelectorSet/{{{W}}}Selector[@Name='ShellId']")
    )
    return _Request(
        action=action,
        message_id=text(f"{{{A}}}MessageID"),
        body=body,
        shell_id=None if selector is None else (selector.text or "").strip(),
        resource_uri=text(f"{{{W}}}ResourceURI"),
    )


def _parse_wql(query: str) -> tuple[str, list[str] | None, tuple[str, str] | None]:
    """Class, explicit property list (None for ``*``) and an equality WHERE clause."""
    match = WQL.match(query)
    if match is None:
        raise _Fault(
            WsmanFault.invalid_query(),
            ENUMERATION_FAULT_ACTION,
        )
    properties = match["properties"]
    listed = None if properties == "*" else [p.strip() for p in properties.split(",")]
    where = None if match["prop"] is None else (match["prop"], match["value"].strip("'\""))
    return match["cls"], listed, where


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:  # a name, or IPv6: tests need an address they can reach as is
        return False


def _has(instance: WmiInstance, name: str) -> bool:
    return any(key.lower() == name.lower() for key in instance)


def _matches(instance: WmiInstance, name: str, wanted: str) -> bool:
    value = next((v for k, v in instance.items() if k.lower() == name.lower()), None)
    if isinstance(value, tuple | type(None)):
        return False
    return _text(value).lower() == wanted.lower()


def _max_elements(element: ET.Element, tag: str) -> int:
    text = (element.findtext(tag) or "1").strip()  # WS-Enumeration's default is 1
    if not text.isdigit() or int(text) < 1:
        raise _Fault(_bad_request(f"MaxElements {text!r} is not a positive integer."))
    return int(text)


def _shell_command(body: ET.Element) -> ShellCommand:
    command = (body.findtext(f".//{{{RSP}}}Command") or "").strip()
    arguments = tuple(a.text or "" for a in body.iter(f"{{{RSP}}}Arguments"))
    words = [*command.split(), *arguments]
    script = None
    for flag, value in itertools.pairwise(words):
        if flag.lower() in {"-encodedcommand", "-enc", "-ec", "-e"}:
            try:
                script = base64.b64decode(value, validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                script = None
    return ShellCommand(command=command, arguments=arguments, script=script)


# -- rendering ------------------------------------------------------------------------------


def _envelope(action: str, relates_to: str, body: str) -> str:
    header = (
        f"<a:Action>{action}</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
    )
    return (
        f'<s:Envelope xml:lang="en-US" {ENVELOPE_NAMESPACES}>'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def _fault_envelope(error: _Fault, relates_to: str) -> str:
    fault = error.fault
    inner = escape(fault.reason)
    if fault.provider_message is not None:
        inner = (
            '<f:ProviderFault path="%systemroot%\\system32\\WsmWmiPl.dll" provider="WMI Provider">'
            f'<f:WSManFault Code="{fault.code}" Machine="localhost" xmlns:f="{F}">'
            f"<f:Message>{escape(fault.provider_message)}</f:Message></f:WSManFault></f:ProviderFault>"
        )
    body = (
        f"<s:Fault><s:Code><s:Value>{escape(fault.value)}</s:Value><s:Subcode>"
        f"<s:Value>{escape(fault.subcode)}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="{F}" Code="{fault.code}" Machine="localhost">'
        f"<f:Message>{inner}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return _envelope(error.action, relates_to, body)


def _typed_item(cls: str, instance: WmiInstance) -> str:
    properties = "".join(_property(f"p:{name}", value, "cim:") for name, value in instance.items())
    return (
        f'<p:{cls} xmlns:xsi="{XSI}" xmlns:p={quoteattr(CIMV2 + cls)} xmlns:cim="{CIM}" '
        f'xsi:type="p:{cls}_Type">{properties}</p:{cls}>'
    )


def _fragment_item(instance: WmiInstance, listed: list[str]) -> str:
    wanted = {name.lower() for name in listed}
    unknown = wanted - {name.lower() for name in instance}
    if unknown:
        raise _Fault(
            WsmanFault.invalid_query(),
            ENUMERATION_FAULT_ACTION,
        )
    # Windows sends the properties in the class's order, not the query's.
    properties = "".join(
        _property(name, value, "") for name, value in instance.items() if name.lower() in wanted
    )
    return f'<w:XmlFragment xmlns:xsi="{XSI}" xmlns:w="{W}">{properties}</w:XmlFragment>'


def _property(tag: str, value: WmiValue, cim: str) -> str:
    if isinstance(value, tuple):
        return "".join(_property(tag, item, cim) for item in value)
    if value is None:
        return f'<{tag} xsi:nil="true"/>'
    if isinstance(value, dt.datetime):
        return f"<{tag}><{cim}Datetime>{_text(value)}</{cim}Datetime></{tag}>"
    return f"<{tag}>{escape(_text(value))}</{tag}>"


def _text(value: WmiScalar) -> str:
    """A scalar as Windows writes it: booleans in lower case, datetimes in ISO 8601."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        offset = value.isoformat()[-6:] if value.utcoffset() else "Z"
        return text + offset
    return str(value)


def _streams(name: str, command_id: str, data: bytes) -> str:
    chunks = [data[i : i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK)]
    attributes = f'Name="{name}" CommandId="{command_id}"'
    opened = "".join(
        f"<rsp:Stream {attributes}>{base64.b64encode(chunk).decode()}</rsp:Stream>"
        for chunk in chunks
    )
    return opened + f'<rsp:Stream {attributes} End="true"></rsp:Stream>'


def _encode(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


# -- faults ---------------------------------------------------------------------------------


def _not_recognized(command: ShellCommand) -> CommandResult:
    program = command.command.split(" ", 1)[0]
    return CommandResult(
        stderr=f"'{program}' is not recognized as an internal or external command,\r\n"
        "operable program or batch file.\r\n",
        exit_code=1,
    )


def _unknown_command(command_id: str) -> WsmanFault:
    return WsmanFault(
        code=2150858843,
        subcode="w:InvalidSelectors",
        reason=f"The request for the Windows Remote Shell command with CommandId {command_id} "
        "failed because the command was not found on the server. ",
    )


def _invalid_context() -> WsmanFault:
    return WsmanFault(
        code=2150858770,
        subcode="n:InvalidEnumerationContext",
        reason="The supplied enumeration context is invalid. ",
    )


def _bad_request(reason: str) -> WsmanFault:
    return WsmanFault(code=2150858817, subcode="w:SchemaValidationError", reason=reason)


# -- fixture --------------------------------------------------------------------------------


@pytest.fixture
def wsman_server() -> Iterator[WsmanServer]:
    """A started :class:`WsmanServer` (user ``vagrant``, password ``vagrant``)."""
    with WsmanServer() as server:
        yield server
