"""Which addresses a webhook may be sent to, and resolving host names to them.

Users choose webhook URLs, so without a check the server could be made to POST
to itself or its neighbours (server-side request forgery): the loopback
interface, a private network, a cloud metadata service on a link-local address.
A target is refused when *any* address its name resolves to is not a public
unicast address; an IPv6 address carrying an IPv4 one (IPv4-mapped, 6to4,
NAT64) is checked as the IPv4 address it reaches.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import anyio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: the IP addresses (as text) to try, in order."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(Exception):
    """The target resolves to an address that webhooks may not be sent to."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        article = "an" if reason[0] in "aeiou" else "a"
        kind = f"{article} {reason} address"
        super().__init__(
            f"{address} is {kind}" if host == address else f"{host} resolves to {address}, {kind}"
        )


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``, in a worker thread)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal_reason(address: str) -> str | None:
    """Why ``address`` is not a public unicast address (``"loopback"``, ...), or ``None``."""
    # A scoped IPv6 address ("fe80::1%eth0") is link-local whatever its zone.
    ip = ipaddress.ip_address(address.partition("%")[0])
    # An IPv6 address that carries an IPv4 one reaches that IPv4 address.
    return _reason(_embedded_ipv4(ip) or ip)


def check_addresses(host: str, addresses: Sequence[str]) -> None:
    """Raise :class:`AddressRefused` for the first address of ``host`` that is refused."""
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None:
            raise AddressRefused(host, address, reason)


def _reason(ip: IPAddress) -> str | None:
    # The order matters: 127.0.0.1 is private too, and "loopback" says more.
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    )
    return next((reason for reason, applies in checks if applies), None)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
