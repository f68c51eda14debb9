"""What the core and a collector of *remote* hosts exchange: a credential, the
host's identity, and the ways reaching the host can fail.

The agentless poller gives a collector a :class:`~lunasentri_core.Target` whose
``host`` is the address to reach and whose ``credential`` is a
:class:`RemoteCredential`, decrypted just for this call. A collector that can
tell who a host is (discovery asks this of every host with WS-Management open)
also implements :class:`Identifier`.

A collector reports a failure to reach or log in to a host with one of the
:class:`RemoteError` subclasses, so the poller's ``last_error``, a credential
test and discovery can say what happened in the same words for every plugin.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from lunasentri_core.errors import LunaSentriError

if TYPE_CHECKING:
    from lunasentri_core.samples import Target

HTTP_PORT = 5985
HTTPS_PORT = 5986


class Transport(enum.StrEnum):
    """How a WS-Management client authenticates (pywinrm's ``transport``)."""

    BASIC = "basic"
    NTLM = "ntlm"
    KERBEROS = "kerberos"
    CREDSSP = "credssp"
    CERTIFICATE = "certificate"
    """A client certificate mapped to a local account (HTTPS only)."""


def _masked(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen
class RemoteCredential:
    """How to log in to a remote host: what a credential profile holds, decrypted.

    The password never shows in the repr. ``port`` defaults to 5986 over HTTPS
    and 5985 over HTTP, the WS-Management defaults.
    """

    transport: Transport = attrs.field(default=Transport.NTLM, converter=Transport)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=_masked)
    domain: str | None = None
    https: bool = True
    port: int | None = None
    verify_tls: bool = True
    """Check the host's TLS certificate (HTTPS only); on by default."""
    ca_path: str | None = None
    """A CA bundle to check the host's certificate against, instead of the system's."""
    cert_path: str | None = None
    """The client certificate (PEM) of the ``certificate`` transport."""
    key_path: str | None = None
    """Its private key (PEM)."""

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return HTTPS_PORT if self.https else HTTP_PORT

    @property
    def account(self) -> str | None:
        """The user name as Windows expects it: ``DOMAIN\\user`` when a domain is set."""
        if self.username is None:
            return None
        if self.domain and "\\" not in self.username and "@" not in self.username:
            return f"{self.domain}\\{self.username}"
        return self.username

    def endpoint(self, host: str) -> str:
        """The WS-Management URL of ``host``: ``https://host:5986/wsman`` by default."""
        scheme = "https" if self.https else "http"
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            netloc = host
        else:
            netloc = f"[{literal}]" if literal.version == 6 else str(literal)
        return f"{scheme}://{netloc}:{self.effective_port}/wsman"


@attrs.frozen
class HostIdentity:
    """Who a host says it is, as discovery records it."""

    hostname: str | None = None
    os: str | None = None
    """The operating system's name, e.g. ``Microsoft Windows Server 2019 Datacenter``."""
    os_version: str | None = None
    """e.g. ``10.0.17763``."""


@runtime_checkable
class Identifier(Protocol):
    """A collector that can identify a host (log in, ask its name and OS).

    Raises a :class:`RemoteError` when it cannot. May block (run in a worker
    thread) or be a coroutine function.
    """

    def identify(self, target: Target) -> HostIdentity | Awaitable[HostIdentity]: ...


class RemoteErrorKind(enum.StrEnum):
    AUTHENTICATION = "authentication"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    FAULT = "fault"
    UNREACHABLE = "unreachable"
    PROTOCOL = "protocol"


class RemoteError(LunaSentriError):
    """Reaching or using a remote host failed; ``kind`` says how, the message says why."""

    kind: RemoteErrorKind = RemoteErrorKind.PROTOCOL


class RemoteAuthError(RemoteError):
    """The host refused the credential (HTTP 401, or a failed NTLM/Kerberos exchange)."""

    kind = RemoteErrorKind.AUTHENTICATION


class RemoteRefusedError(RemoteError):
    """Nothing listens on the host's port: the TCP connection was refused."""

    kind = RemoteErrorKind.REFUSED


class RemoteTimeoutError(RemoteError):
    """The host did not answer in time (connecting or waiting for a reply)."""

    kind = RemoteErrorKind.TIMEOUT


class RemoteTlsError(RemoteError):
    """The TLS handshake failed, e.g. an untrusted or mismatched host certificate."""

    kind = RemoteErrorKind.TLS


class RemoteUnreachableError(RemoteError):
    """The host's name does not resolve, or no route leads to it."""

    kind = RemoteErrorKind.UNREACHABLE


class RemoteFaultError(RemoteError):
    """The host answered with a WS-Management (SOAP) fault: ``code`` and ``reason``."""

    kind = RemoteErrorKind.FAULT

    def __init__(self, code: int | str | None, reason: str, detail: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.detail = detail
        text = f"WS-Management fault {code}: {reason.strip()}"
        if detail:
            text += f" ({detail.strip()})"
        super().__init__(text)


def describe_failure(error: BaseException) -> str:
    """``<kind>: <message>`` for a remote error, ``<Type>: <message>`` for anything else."""
    if isinstance(error, RemoteError):
        return f"{error.kind.value}: {error}"
    if isinstance(error, TimeoutError):
        return f"timeout: {error}" if str(error) else "timeout: no answer in time"
    return f"{type(error).__name__}: {error}"
