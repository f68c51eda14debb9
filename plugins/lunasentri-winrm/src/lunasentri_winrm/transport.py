"""Reaching a Windows host over WS-Management with pywinrm, and saying why it failed.

Shared by the WinRM and WMI collectors: :func:`build_protocol` turns a
:class:`~lunasentri_core.Target` (host + :class:`~lunasentri_core.RemoteCredential`)
into a pywinrm :class:`winrm.protocol.Protocol`, and :func:`remote_errors` is the
one place where pywinrm's and requests' exceptions become the
:class:`~lunasentri_core.RemoteError` kinds the poller, credential tests and
discovery report.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal

import requests
import winrm.transport
from urllib3.exceptions import MaxRetryError, NameResolutionError
from winrm.exceptions import (
    AuthenticationError,
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from lunasentri_core import (
    ConfigError,
    RemoteAuthError,
    RemoteCredential,
    RemoteError,
    RemoteFaultError,
    RemoteRefusedError,
    RemoteTimeoutError,
    RemoteTlsError,
    RemoteUnreachableError,
    Target,
    Transport,
)

__all__ = [
    "DEFAULT_OPERATION_TIMEOUT_SEC",
    "DEFAULT_READ_TIMEOUT_SEC",
    "PywinrmAuth",
    "build_protocol",
    "connection",
    "pywinrm_auth",
    "remote_errors",
    "send",
    "translate",
    "wsman_identify",
]

DEFAULT_READ_TIMEOUT_SEC: Final = 30
DEFAULT_OPERATION_TIMEOUT_SEC: Final = 20

PywinrmAuth = Literal["basic", "ntlm", "kerberos", "credssp", "certificate"]

_PYWINRM_AUTH: Final[dict[Transport, PywinrmAuth]] = {
    Transport.BASIC: "basic",
    Transport.NTLM: "ntlm",
    Transport.KERBEROS: "kerberos",
    Transport.CREDSSP: "credssp",
    Transport.CERTIFICATE: "certificate",
}
# The optional libraries pywinrm needs per transport, and the extra that installs them.
_NEEDS: Final[dict[Transport, tuple[str, str]]] = {
    Transport.KERBEROS: ("HAVE_KERBEROS", "pywinrm[kerberos]"),
    Transport.CREDSSP: ("HAVE_CREDSSP", "pywinrm[credssp]"),
    Transport.NTLM: ("HAVE_NTLM", "requests-ntlm"),
}
_WSMID: Final = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
_WSMAN_FAULT: Final = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
_IDENTIFY: Final = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    f'xmlns:wsmid="{_WSMID}"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>'
)
_UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)


# -- building a client -------------------------------------------------------------------


def pywinrm_auth(transport: Transport) -> PywinrmAuth:
    """pywinrm's ``transport`` argument for one of ours (the names match, on purpose)."""
    return _PYWINRM_AUTH[transport]


def build_protocol(
    target: Target,
    *,
    read_timeout_sec: int = DEFAULT_READ_TIMEOUT_SEC,
    operation_timeout_sec: int = DEFAULT_OPERATION_TIMEOUT_SEC,
) -> Protocol:
    """A pywinrm client for ``target``'s host, logging in with its credential.

    Message encryption is ``auto``: NTLM, Kerberos and CredSSP encrypt every
    message over HTTP; over HTTPS, TLS does. Proxies and CA bundles are never
    taken from the environment (pywinrm deprecates that): the host is reached
    directly and its certificate checked against ``credential.ca_path`` or the
    default trust store. Raises :class:`~lunasentri_core.ConfigError` for a
    target this cannot work with (no host, no credential, a transport whose
    library is missing, a certificate over HTTP, bad timeouts).
    """
    credential = _credential_of(target)
    assert target.host is not None  # checked by _credential_of
    _check_timeouts(read_timeout_sec, operation_timeout_sec)
    _check_transport(credential)
    certificate = credential.transport is Transport.CERTIFICATE
    try:
        return Protocol(
            credential.endpoint(target.host),
            transport=pywinrm_auth(credential.transport),
            username=None if certificate else credential.account,
            password=None if certificate else credential.password,
            cert_pem=credential.cert_path if certificate else None,
            cert_key_pem=credential.key_path if certificate else None,
            server_cert_validation="validate" if credential.verify_tls else "ignore",
            ca_trust_path=credential.ca_path,  # type: ignore[arg-type]  # None: trust store
            read_timeout_sec=read_timeout_sec,
            operation_timeout_sec=operation_timeout_sec,
            message_encryption="auto",
            proxy=None,
        )
    except InvalidCredentialsError as error:
        # Raised before any request: the credential lacks what its transport needs.
        raise RemoteAuthError(f"the credential cannot be used: {error}") from error
    except WinRMError as error:
        raise ConfigError(
            f"pywinrm refused the settings for {_describe(target)}: {error}"
        ) from error


def _credential_of(target: Target) -> RemoteCredential:
    if target.host is None:
        raise ConfigError(
            f"target {target.machine_id!r} has no host: a WS-Management collector measures "
            "remote Windows hosts only"
        )
    if target.credential is None:
        raise ConfigError(
            f"target {target.machine_id!r} ({target.host}) has no credential to log in with"
        )
    return target.credential


def _check_timeouts(read_timeout_sec: int, operation_timeout_sec: int) -> None:
    # pywinrm's own rule: the server may block for the whole operation timeout,
    # so the HTTP read must outlast it.
    if operation_timeout_sec < 1 or read_timeout_sec <= operation_timeout_sec:
        raise ConfigError(
            f"read_timeout_sec ({read_timeout_sec}) must exceed operation_timeout_sec "
            f"({operation_timeout_sec}), which must be at least 1"
        )


def _check_transport(credential: RemoteCredential) -> None:
    transport = credential.transport
    if transport is Transport.CERTIFICATE:
        if not credential.https:
            raise ConfigError("the certificate transport works over HTTPS only")
        if not credential.cert_path or not credential.key_path:
            raise ConfigError("the certificate transport needs cert_path and key_path")
        return
    needed = _NEEDS.get(transport)
    if needed is not None and not getattr(winrm.transport, needed[0], False):
        raise ConfigError(
            f"the {transport.value} transport needs a library pywinrm did not find: "
            f"install {needed[1]}"
        )


def send(protocol: Protocol, message: str) -> str:
    """Send one SOAP message and return the answer's text (errors as pywinrm raises them)."""
    return protocol.send_message(message).decode("utf-8")


@contextmanager
def connection(
    target: Target,
    *,
    read_timeout_sec: int = DEFAULT_READ_TIMEOUT_SEC,
    operation_timeout_sec: int = DEFAULT_OPERATION_TIMEOUT_SEC,
) -> Iterator[Protocol]:
    """A client for ``target`` for the ``with`` block; errors inside become RemoteErrors.

    The HTTP session is closed on the way out, so a poll leaves no connection open.
    """
    protocol = build_protocol(
        target, read_timeout_sec=read_timeout_sec, operation_timeout_sec=operation_timeout_sec
    )
    try:
        with remote_errors(target):
            yield protocol
    finally:
        protocol.transport.close_session()


# -- identify -------------------------------------------------------------------------------


def wsman_identify(protocol: Protocol) -> tuple[str | None, str | None]:
    """The WS-Management Identify answer: ``(ProductVendor, ProductVersion)``.

    The cheapest authenticated round trip there is: it proves the endpoint speaks
    WS-Management and accepts the credential. Windows answers e.g.
    ``("Microsoft Corporation", "OS: 10.0.17763 SP: 0.0 Stack: 3.0")``.
    """
    root = ET.fromstring(send(protocol, _IDENTIFY))
    answer = root.find(f".//{{{_WSMID}}}IdentifyResponse")
    if answer is None:
        raise RemoteError("the host's answer to Identify has no IdentifyResponse")
    vendor = answer.findtext(f"{{{_WSMID}}}ProductVendor")
    version = answer.findtext(f"{{{_WSMID}}}ProductVersion")
    return vendor, version


# -- errors ---------------------------------------------------------------------------------


@contextmanager
def remote_errors(where: Target | str) -> Iterator[None]:
    """Turn pywinrm's and requests' exceptions raised in the block into RemoteErrors.

    ``where`` (a target, or a text such as an endpoint) names the host in the
    messages. Errors that are already LunaSentri's pass unchanged; anything not
    recognized as a failure to reach or use the host passes unchanged too.
    """
    try:
        yield
    except (WinRMError, WinRMTransportError, WinRMOperationTimeoutError) as error:
        raise translate(error, where) from error
    except (requests.RequestException, ET.ParseError, ConnectionError) as error:
        raise translate(error, where) from error


def translate(error: BaseException, where: Target | str) -> RemoteError:
    """The :class:`~lunasentri_core.RemoteError` that says what ``error`` means."""
    host = _describe(where)
    if isinstance(error, RemoteError):
        return error
    if isinstance(error, AuthenticationError):
        return RemoteAuthError(f"{host} rejected the credential: {error}")
    if isinstance(error, WSManFaultError):
        return _fault(error)
    if isinstance(error, WinRMOperationTimeoutError):
        return RemoteTimeoutError(f"{host} did not complete the operation within its timeout")
    if isinstance(error, WinRMTransportError):
        return _http_error(error, host)
    if isinstance(error, requests.exceptions.SSLError):
        return RemoteTlsError(f"TLS with {host} failed: {_root_cause(error)}")
    if isinstance(error, requests.exceptions.Timeout):
        return _timeout(error, host)
    if isinstance(error, requests.RequestException | ConnectionError):
        return _connection_error(error, host)
    if isinstance(error, ET.ParseError):
        return RemoteError(f"{host} answered with malformed XML: {error}")
    return RemoteError(f"{host}: {error}")


def _describe(where: Target | str) -> str:
    if isinstance(where, str):
        return where
    if where.host is not None and where.credential is not None:
        return where.credential.endpoint(where.host)
    return where.host or where.machine_id


def _http_error(error: WinRMTransportError, host: str) -> RemoteError:
    if error.code == 401:
        return RemoteAuthError(f"{host} rejected the credential (HTTP 401)")
    return RemoteError(f"{host} answered HTTP {error.code}{_excerpt(error.response_text)}")


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    return ": " + (text if len(text) <= limit else text[:limit] + "...")


def _fault(error: WSManFaultError) -> RemoteFaultError:
    code: int | str | None = error.wsman_fault_code
    if code is None:
        code = error.fault_subcode or error.fault_code
    return RemoteFaultError(code, error.reason or "", _provider_message(error.response))


def _provider_message(response: str) -> str | None:
    """The WMI provider's message nested in a fault's detail, as Windows sends it."""
    try:
        root = ET.fromstring(response)
    except ET.ParseError:
        return None
    provider = root.find(f".//{{{_WSMAN_FAULT}}}ProviderFault")
    if provider is None:
        return None
    message = provider.findtext(f".//{{{_WSMAN_FAULT}}}Message")
    return message.strip() if message and message.strip() else None


def _timeout(error: requests.exceptions.Timeout, host: str) -> RemoteTimeoutError:
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return RemoteTimeoutError(f"connecting to {host} timed out")
    return RemoteTimeoutError(f"{host} did not answer in time")


def _connection_error(error: BaseException, host: str) -> RemoteError:
    for cause in _causes(error):
        if isinstance(cause, NameResolutionError | socket.gaierror):
            return RemoteUnreachableError(f"the name of {host} does not resolve")
        if isinstance(cause, ConnectionRefusedError) or _errno(cause) == errno.ECONNREFUSED:
            return RemoteRefusedError(
                f"{host} refused the connection: nothing listens on its WinRM port"
            )
        if _errno(cause) in _UNREACHABLE_ERRNOS:
            return RemoteUnreachableError(f"no route to {host}: {os.strerror(_errno(cause) or 0)}")
        if isinstance(cause, ssl.SSLError):
            return RemoteTlsError(f"TLS with {host} failed: {cause}")
        if isinstance(cause, TimeoutError | socket.timeout):
            return RemoteTimeoutError(f"{host} did not answer in time")
    return RemoteError(f"the connection to {host} failed: {_root_cause(error)}")


def _errno(error: BaseException) -> int | None:
    return error.errno if isinstance(error, OSError) else None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, the exceptions it wraps (urllib3's ``reason``) and their causes."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        if isinstance(current, MaxRetryError) and current.reason is not None:
            pending.append(current.reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def _root_cause(error: BaseException) -> str:
    """The innermost wrapped exception's message: requests' own is a long repr."""
    last = error
    for cause in _causes(error):
        last = cause
    return str(last) or type(last).__name__
