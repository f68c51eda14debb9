"""Helpers of the WinRM plugin's tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lunasentri_core import RemoteCredential, Target, Transport
from lunasentri_core.testing import CommandResult, ShellCommand, WsmanServer
from lunasentri_core.testing.wsman_data import WmiInstance


def basic_credential(port: int, password: str = "vagrant") -> RemoteCredential:
    """Basic over HTTP as user ``vagrant``: what the test server accepts."""
    return RemoteCredential(
        transport=Transport.BASIC, username="vagrant", password=password, https=False, port=port
    )


def target_of(server: WsmanServer, password: str = "vagrant", machine_id: str = "win-1") -> Target:
    """A target that reaches ``server`` with Basic authentication."""
    return Target(
        machine_id=machine_id,
        host=server.host,
        credential=basic_credential(_port(server), password),
    )


def _port(server: WsmanServer) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/", 1)[0])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that nobody trusts, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lunasentri-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def tls_listener(directory: Path) -> Iterator[int]:
    """A TLS server on loopback with a self-signed certificate; yields its port.

    It completes handshakes (or sees them fail) and closes: enough for a client
    that checks the certificate to refuse it.
    """
    cert_path, key_path = self_signed_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(5)
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate: the point of the test
            finally:
                connection.close()

    thread = threading.Thread(target=serve, name="tls-listener", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopped.set()
        thread.join()
        listener.close()


# -- what powershell.exe would print on the test server's host ------------------------------

CLIXML_ERROR = (
    "#< CLIXML\r\n"
    '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    '<S S="Error">Get-CimInstance : Invalid class &quot;Win32_Nope&quot;_x000D__x000A_</S>'
    '<S S="Error">At line:5 char:7_x000D__x000A_</S></Objs>'
)


class PowerShellHost:
    """Answers the collector's scripts as PowerShell on ``server``'s host would.

    The values come from the server's WMI repository, queried the way the
    scripts query it, so its perf counters tick between polls. ``scripts`` keeps
    every script received.
    """

    def __init__(self, server: WsmanServer) -> None:
        self.server = server
        self.scripts: list[str] = []
        self._lock = threading.Lock()
        server.on_command(self)

    def __call__(self, command: ShellCommand) -> CommandResult:
        assert command.command.lower().startswith("powershell")
        assert command.script is not None, "the script must travel in -EncodedCommand"
        with self._lock:
            self.scripts.append(command.script)
        if "Win32_PerfRawData_PerfOS_Processor" in command.script:
            return CommandResult(stdout=json.dumps(self.poll()) + "\r\n")
        if "identify" in command.script:
            return CommandResult(stdout=json.dumps(self.identity()) + "\r\n")
        return CommandResult(stderr=CLIXML_ERROR, exit_code=1)

    def _instances(self, name: str) -> list[WmiInstance]:
        found = self.server.wmi.instances(name)
        assert found is not None, name
        return found[1]

    def identity(self) -> dict[str, object]:
        (os,) = self._instances("Win32_OperatingSystem")
        return {"hostname": os["CSName"], "os": os["Caption"], "version": os["Version"]}

    def poll(self) -> dict[str, object]:
        (os,) = self._instances("Win32_OperatingSystem")
        local, boot = os["LocalDateTime"], os["LastBootUpTime"]
        assert isinstance(local, dt.datetime)
        assert isinstance(boot, dt.datetime)
        return {
            "hostname": os["CSName"],
            "memory": {
                "total_kib": os["TotalVisibleMemorySize"],
                "free_kib": os["FreePhysicalMemory"],
                "paging_kib": os["SizeStoredInPagingFiles"],
                "paging_free_kib": os["FreeSpaceInPagingFiles"],
            },
            "processes": os["NumberOfProcesses"],
            "uptime_s": (local - boot).total_seconds(),
            "cpu": [
                {
                    "name": c["Name"],
                    "idle": c["PercentProcessorTime"],
                    "timestamp": c["Timestamp_Sys100NS"],
                }
                for c in self._instances("Win32_PerfRawData_PerfOS_Processor")
            ],
            "disks": [
                {"mount": d["DeviceID"], "size": d["Size"], "free": d["FreeSpace"]}
                for d in self._instances("Win32_LogicalDisk")
                if d["DriveType"] == 3
            ],
            "nics": [
                {
                    "name": n["Name"],
                    "rx": n["BytesReceivedPersec"],
                    "tx": n["BytesSentPersec"],
                    "timestamp": n["Timestamp_Sys100NS"],
                    "frequency": n["Frequency_Sys100NS"],
                }
                for n in self._instances("Win32_PerfRawData_Tcpip_NetworkInterface")
            ],
        }
