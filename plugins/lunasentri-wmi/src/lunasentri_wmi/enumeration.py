"""WQL queries over WS-Management: ``Enumerate``, then ``Pull`` until ``EndOfSequence``.

The messages are built with pywinrm's header builder and sent with its
``Protocol.send_message``, so the transport (authentication, message
encryption, TLS) is pywinrm's; faults come back as pywinrm's exceptions for the
caller to map. No PowerShell runs on the host.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, Protocol

import xmltodict  # type: ignore[import-untyped,unused-ignore]

from lunasentri_core.remote import RemoteError
from lunasentri_wmi.cim import CimValueError, WmiObject, parse_item

WQL_DIALECT = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
WMI_RESOURCE = "http://schemas.microsoft.com/wbem/wsman/1/wmi/{namespace}/*"
ENUMERATION = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
ENUMERATE = f"{ENUMERATION}/Enumerate"
PULL = f"{ENUMERATION}/Pull"
RELEASE = f"{ENUMERATION}/Release"
DEFAULT_MAX_ELEMENTS = 32000
"""Items asked for per response; Windows also bounds a response by envelope size."""

_N = f"{{{ENUMERATION}}}"
_W = f"{{{WSMAN}}}"


class MessageSender(Protocol):
    """What this module needs of pywinrm's ``Protocol``."""

    def build_wsman_header(
        self, action: str, resource_uri: str, shell_id: str | None = None, message_id: Any = None
    ) -> dict[str, Any]: ...

    def send_message(self, message: str) -> bytes: ...


def resource_uri(namespace: str = "root/cimv2") -> str:
    """The resource URI of every class of a WMI namespace (``root/cimv2`` by default)."""
    return WMI_RESOURCE.format(namespace=namespace.strip("/").replace("\\", "/"))


def query(
    protocol: MessageSender,
    wql: str,
    *,
    namespace: str = "root/cimv2",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Iterator[WmiObject]:
    """The instances a WQL query selects, fetched page by page as the caller iterates.

    A caller that stops early (``break``, an exception in its loop, closing the
    iterator) makes it release the enumeration context on the host, which would
    otherwise keep it until it times out; iterate inside the ``with`` block of
    the connection, so the release can still be sent. A request that fails is
    not followed by a Release: a host that did not answer one request would
    only keep the caller waiting for another. A response that is not
    WS-Enumeration raises :class:`RemoteError`.
    """
    uri = resource_uri(namespace)
    response = _send(protocol, ENUMERATE, uri, _enumerate_body(wql, max_elements))
    context, items, ended = _page(response, "EnumerateResponse")
    try:
        while True:
            yield from items
            if ended:
                return
            if not context:
                raise RemoteError("the host's enumeration ended without EndOfSequence")
            body = {"n:Pull": {"n:EnumerationContext": context, "n:MaxElements": str(max_elements)}}
            response = _send(protocol, PULL, uri, body)
            context, items, ended = _page(response, "PullResponse")
    except GeneratorExit:  # the caller stopped while items remained
        if not ended and context:
            _release(protocol, uri, context)
        raise


def _enumerate_body(wql: str, max_elements: int) -> dict[str, Any]:
    return {
        "n:Enumerate": {
            # The first items come in the Enumerate response: one round trip less.
            "w:OptimizeEnumeration": None,
            "w:MaxElements": str(max_elements),
            "w:Filter": {"@Dialect": WQL_DIALECT, "#text": wql},
        }
    }


def _send(protocol: MessageSender, action: str, uri: str, body: dict[str, Any]) -> ET.Element:
    envelope = {"env:Envelope": protocol.build_wsman_header(action, uri)}
    envelope["env:Envelope"]["env:Body"] = body
    return _xml(protocol.send_message(xmltodict.unparse(envelope)))


def _xml(raw: bytes) -> ET.Element:
    try:
        return ET.fromstring(raw)
    except ET.ParseError as error:
        raise RemoteError(f"the host's answer is not XML: {error}") from None


def _page(response: ET.Element, kind: str) -> tuple[str | None, list[WmiObject], bool]:
    """A response's new context, its items and whether the sequence ended."""
    answer = response.find(f".//{_N}{kind}")
    if answer is None:
        raise RemoteError(f"the host answered without an {kind}")
    context = (answer.findtext(f"{_N}EnumerationContext") or "").strip() or None
    # Windows puts items and EndOfSequence in the wsman namespace in an optimized
    # Enumerate response and in the enumeration namespace in a Pull response;
    # either is accepted anywhere.
    holders = (answer.find(f"{_W}Items"), answer.find(f"{_N}Items"))
    try:
        items = [parse_item(item) for holder in holders if holder is not None for item in holder]
    except CimValueError as error:
        raise RemoteError(f"the host sent a value that does not parse: {error}") from None
    ended = answer.find(f"{_W}EndOfSequence") is not None or (
        answer.find(f"{_N}EndOfSequence") is not None
    )
    return context, items, ended


def _release(protocol: MessageSender, uri: str, context: str) -> None:
    # Best effort: the enumeration is abandoned already, and the host drops the
    # context on its own after a while; a failure here must not hide the reason
    # the caller stopped.
    with contextlib.suppress(Exception):
        _send(protocol, RELEASE, uri, {"n:Release": {"n:EnumerationContext": context}})
