"""A stand-in Identifier that really speaks WS-Management: pywinrm sends Identify.

The wmi and winrm plugins identify hosts for real; this stand-in keeps the
discovery tests independent of them while still crossing real HTTP with the
real pywinrm client to :class:`~lunasentri_core.testing.WsmanServer`.
"""

from __future__ import annotations

import re
import uuid
from typing import ClassVar

from winrm.exceptions import InvalidCredentialsError, WinRMTransportError
from winrm.protocol import Protocol

from lunasentri_core import HostIdentity, Reading, RemoteAuthError, Target
from lunasentri_core.remote import RemoteError
from lunasentri_core.testing import make_plugin

IDENTIFY = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
    "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
)
_VERSION = re.compile(r"OS: ([0-9.]+)")


class WsmanIdentify:
    name: ClassVar[str] = "wsid"
    settings_class: ClassVar[None] = None

    def collect(self, target: Target) -> list[Reading]:
        return []

    def identify(self, target: Target) -> HostIdentity:
        credential = target.credential
        assert credential is not None
        assert target.host is not None
        protocol = Protocol(
            credential.endpoint(target.host),
            transport="basic",
            username=credential.account,
            password=credential.password,
            server_cert_validation="ignore",
            read_timeout_sec=10,
            operation_timeout_sec=5,
        )
        try:
            answer = protocol.send_message(IDENTIFY).decode()
        except InvalidCredentialsError as error:
            raise RemoteAuthError(f"the host refused the credential: {error}") from None
        except WinRMTransportError as error:
            raise RemoteError(str(error)) from None
        version = _VERSION.search(answer)
        return HostIdentity(
            hostname=f"WIN-{uuid.uuid5(uuid.NAMESPACE_DNS, target.host).hex[:6].upper()}",
            os="Microsoft Windows" if "Microsoft" in answer else None,
            os_version=version.group(1) if version else None,
        )


def wsman_plugins() -> dict[str, object]:
    hooks = {"lunasentri_register_collectors": lambda: [WsmanIdentify]}
    return {"wsid": make_plugin("wsid", **hooks)}
