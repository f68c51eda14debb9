"""Building pywinrm clients and mapping their failures, against the WS-Management test server."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import requests
import winrm.transport
from urllib3.exceptions import MaxRetryError, NameResolutionError
from winrm.exceptions import WinRMTransportError
from winrm_support import basic_credential, closed_port, self_signed_certificate, tls_listener

from lunasentri_core import (
    ConfigError,
    RemoteAuthError,
    RemoteCredential,
    RemoteError,
    RemoteErrorKind,
    RemoteFaultError,
    RemoteRefusedError,
    RemoteTimeoutError,
    RemoteTlsError,
    RemoteUnreachableError,
    Target,
    Transport,
)
from lunasentri_core.testing import WsmanFault, WsmanServer
from lunasentri_winrm.transport import (
    build_protocol,
    connection,
    remote_errors,
    translate,
    wsman_identify,
)

# -- the client: parameter mapping per transport ---------------------------------------------


def _target(credential: RemoteCredential, host: str = "win.example.test") -> Target:
    return Target(machine_id="m", host=host, credential=credential)


def test_basic_over_http_maps_to_pywinrm() -> None:
    credential = RemoteCredential(
        transport="basic", username="admin", password="pw", https=False, domain="CORP"
    )
    protocol = build_protocol(_target(credential), read_timeout_sec=40, operation_timeout_sec=30)
    transport = protocol.transport
    assert transport.endpoint == "http://win.example.test:5985/wsman"
    assert transport.auth_method == "basic"
    assert (transport.username, transport.password) == ("CORP\\admin", "pw")
    assert (protocol.read_timeout_sec, protocol.operation_timeout_sec) == (40, 30)
    assert transport.read_timeout_sec == 40
    assert transport.message_encryption == "auto"
    assert transport.proxy is None  # never a proxy from the environment


@pytest.mark.parametrize(
    ("kind", "library"),
    [
        (Transport.NTLM, "HAVE_NTLM"),
        (Transport.KERBEROS, "HAVE_KERBEROS"),
        (Transport.CREDSSP, "HAVE_CREDSSP"),
    ],
)
def test_password_transports_map_to_pywinrm_with_encryption_over_http(
    kind: Transport, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the mapping is checked: the test server speaks Basic only.
    monkeypatch.setattr(winrm.transport, library, True)
    credential = RemoteCredential(
        transport=kind, username="u@corp.test", password="pw", https=False
    )
    transport = build_protocol(_target(credential)).transport
    assert transport.auth_method == kind.value
    assert transport.username == "u@corp.test"
    # 'auto' encrypts every message of NTLM, Kerberos and CredSSP over HTTP.
    assert transport.message_encryption == "auto"
    assert transport.endpoint.startswith("http://")


@pytest.mark.parametrize(
    ("kind", "extra"), [(Transport.KERBEROS, "kerberos"), (Transport.CREDSSP, "credssp")]
)
def test_a_transport_whose_library_is_missing_says_what_to_install(
    kind: Transport, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(winrm.transport, f"HAVE_{kind.value.upper()}", False)
    credential = RemoteCredential(transport=kind, username="u", password="pw")
    with pytest.raises(ConfigError, match=rf"pywinrm\[{extra}\]"):
        build_protocol(_target(credential))


def test_certificate_over_https_maps_to_pywinrm(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert.read_bytes())
    credential = RemoteCredential(
        transport="certificate",
        cert_path=str(cert),
        key_path=str(key),
        ca_path=str(ca),
        username="ignored",
        password="ignored",
    )
    transport = build_protocol(_target(credential)).transport
    assert transport.endpoint == "https://win.example.test:5986/wsman"
    assert transport.auth_method == "certificate"
    assert (transport.cert_pem, transport.cert_key_pem) == (str(cert), str(key))
    assert (transport.username, transport.password) == (None, None)
    assert transport.server_cert_validation == "validate"
    assert transport.ca_trust_path == str(ca)


def test_certificate_validation_can_be_turned_off() -> None:
    credential = RemoteCredential(transport="ntlm", username="u", password="p", verify_tls=False)
    transport = build_protocol(_target(credential, host="::1")).transport
    assert transport.server_cert_validation == "ignore"
    assert transport.endpoint == "https://[::1]:5986/wsman"
    # No CA bundle from the environment: the default trust store.
    assert transport.ca_trust_path is None


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        (
            RemoteCredential(transport="certificate", https=False, cert_path="c", key_path="k"),
            "HTTPS only",
        ),
        (RemoteCredential(transport="certificate", cert_path="c"), "cert_path and key_path"),
    ],
)
def test_an_unusable_certificate_credential_is_a_config_error(
    credential: RemoteCredential, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_protocol(_target(credential))


def test_a_missing_certificate_file_is_an_authentication_error(tmp_path: Path) -> None:
    credential = RemoteCredential(
        transport="certificate",
        cert_path=str(tmp_path / "no.pem"),
        key_path=str(tmp_path / "no.key"),
    )
    with pytest.raises(RemoteAuthError, match="not found"):
        build_protocol(_target(credential))


def test_a_credential_without_password_cannot_be_used() -> None:
    credential = RemoteCredential(transport="basic", username="admin")
    with pytest.raises(RemoteAuthError, match=r"cannot be used: .*requires a password"):
        build_protocol(_target(credential))


@pytest.mark.parametrize(("read", "operation"), [(20, 20), (10, 30), (5, 0)])
def test_the_read_timeout_must_exceed_the_operation_timeout(read: int, operation: int) -> None:
    credential = RemoteCredential(transport="basic", username="u", password="p")
    with pytest.raises(ConfigError, match="must exceed"):
        build_protocol(_target(credential), read_timeout_sec=read, operation_timeout_sec=operation)


def test_a_target_without_host_or_credential_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no host"):
        build_protocol(Target(machine_id="local"))
    with pytest.raises(ConfigError, match="no credential"):
        build_protocol(Target(machine_id="m", host="10.0.0.1"))


# -- against the test server ------------------------------------------------------------------


def test_identify_through_a_connection(wsman_server: WsmanServer, target: Target) -> None:
    with connection(target) as protocol:
        vendor, version = wsman_identify(protocol)
    assert vendor == "Microsoft Corporation"
    assert version is not None
    assert version.startswith("OS: 6.1.7601")


def test_a_wrong_password_is_an_authentication_error(
    wsman_server: WsmanServer, target: Target
) -> None:
    assert target.credential is not None
    wrong = attrs.evolve(target, credential=attrs.evolve(target.credential, password="wrong"))
    with pytest.raises(RemoteAuthError) as caught, connection(wrong) as protocol:
        wsman_identify(protocol)
    assert caught.value.kind is RemoteErrorKind.AUTHENTICATION
    assert "wrong" not in str(caught.value)  # the password never shows


def test_a_closed_port_is_refused() -> None:
    target = _target(basic_credential(closed_port()), host="127.0.0.1")
    with pytest.raises(RemoteRefusedError, match="refused"), connection(target) as protocol:
        wsman_identify(protocol)


def test_a_hanging_host_is_a_timeout(wsman_server: WsmanServer, target: Target) -> None:
    wsman_server.hang_requests()
    with (
        pytest.raises(RemoteTimeoutError),
        connection(target, read_timeout_sec=2, operation_timeout_sec=1) as protocol,
    ):
        wsman_identify(protocol)


def test_https_against_an_http_server_is_a_tls_error(
    wsman_server: WsmanServer, target: Target
) -> None:
    assert target.credential is not None
    https = attrs.evolve(target, credential=attrs.evolve(target.credential, https=True))
    with pytest.raises(RemoteTlsError), connection(https) as protocol:
        wsman_identify(protocol)


def test_an_untrusted_certificate_is_a_tls_error(tmp_path: Path) -> None:
    with tls_listener(tmp_path) as port:
        credential = attrs.evolve(basic_credential(port), https=True)
        target = _target(credential, host="127.0.0.1")
        with pytest.raises(RemoteTlsError, match="certificate"), connection(target) as protocol:
            wsman_identify(protocol)


def test_a_fault_carries_code_reason_and_provider_message(
    wsman_server: WsmanServer, target: Target
) -> None:
    wsman_server.inject_fault(WsmanFault.invalid_class(), action="Identify")
    with pytest.raises(RemoteFaultError) as caught, connection(target) as protocol:
        wsman_identify(protocol)
    fault = caught.value
    assert fault.kind is RemoteErrorKind.FAULT
    assert fault.code == 2150858778
    assert fault.reason.startswith("The data source could not process the filter.")
    assert fault.detail == "The specified class does not exist in the given namespace."


def test_a_dropped_connection_is_a_remote_error(wsman_server: WsmanServer, target: Target) -> None:
    wsman_server.drop_connections()
    with pytest.raises(RemoteError) as caught, connection(target) as protocol:
        wsman_identify(protocol)
    assert caught.value.kind is RemoteErrorKind.PROTOCOL
    assert "connection" in str(caught.value)


# -- the mapping of errors no loopback test can produce -----------------------------------------


def test_an_unresolvable_name_is_unreachable() -> None:
    resolution = NameResolutionError("win.invalid", None, OSError("Name or service not known"))  # type: ignore[arg-type]
    error = requests.exceptions.ConnectionError(MaxRetryError(None, "/wsman", resolution))  # type: ignore[arg-type]
    mapped = translate(error, "http://win.invalid:5985/wsman")
    assert isinstance(mapped, RemoteUnreachableError)
    assert "win.invalid" in str(mapped)


def test_other_http_statuses_are_remote_errors_with_the_status() -> None:
    mapped = translate(WinRMTransportError("http", 503, "Service Unavailable"), "host")
    assert type(mapped) is RemoteError
    assert "HTTP 503" in str(mapped)
    assert "Service Unavailable" in str(mapped)
    assert isinstance(translate(WinRMTransportError("http", 401, ""), "host"), RemoteAuthError)


def test_remote_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError), remote_errors("host"):
        raise KeyError("not a remote failure")
