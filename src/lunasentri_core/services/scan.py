"""What a discovery scan reaches, and the scan itself: TCP connects, bounded.

A target is a CIDR block (``10.0.0.0/24``, ``fd00::/120``), a range
(``10.0.0.5-10.0.0.40``, or ``10.0.0.5-40`` within one last octet) or a host
name (resolved when the scan runs). As nmap does, the network and broadcast
addresses of an IPv4 block larger than a /31 are not scanned; everything else
given is, and nothing else: the scan connects to exactly the addresses the
targets hold and exactly the ports given.

A scan of more than :data:`CONFIRM_ABOVE` hosts (larger than a /20) must be
confirmed; more than :data:`MAX_HOSTS` are refused whatever is confirmed.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeAlias

import anyio
import attrs

from lunasentri_core.errors import FieldError, ValidationError

CONFIRM_ABOVE = 4096
"""Hosts a scan may hold without ``confirm_large`` (a /20)."""
MAX_HOSTS = 65_536
"""Hosts a profile may hold at all (a /16)."""
MAX_TARGETS = 256
"""Entries in one profile's target list."""
MAX_TARGET_LENGTH = 255

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@attrs.frozen
class Block:
    """A target entry of known addresses: a CIDR block or a range."""

    first: Address
    last: Address
    skip_ends: bool = False
    """An IPv4 block larger than a /31: its network and broadcast addresses are skipped."""

    @property
    def count(self) -> int:
        span = int(self.last) - int(self.first) + 1
        return span - 2 if self.skip_ends else span

    def addresses(self) -> Iterator[str]:
        first, last = int(self.first), int(self.last)
        if self.skip_ends:
            first, last = first + 1, last - 1
        make = type(self.first)
        return (str(make(value)) for value in range(first, last + 1))


@attrs.frozen
class HostName:
    """A target entry that names a host: resolved at scan time."""

    name: str
    count: int = 1


Entry: TypeAlias = Block | HostName


def parse_target(text: str) -> Entry:
    """One target entry; ``ValueError`` saying what is wrong with it."""
    text = text.strip()
    if not text or len(text) > MAX_TARGET_LENGTH:
        raise ValueError(f"must be 1 to {MAX_TARGET_LENGTH} characters")
    if "/" in text:
        return _network(text)
    if "-" in text and _looks_like_range(text):
        return _range(text)
    return _host_name(text)


def _network(text: str) -> Block:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR block such as 10.0.0.0/24") from None
    skip = network.version == 4 and network.prefixlen < 31
    return Block(network.network_address, network.broadcast_address, skip)


def _looks_like_range(text: str) -> bool:
    left = text.split("-", 1)[0]
    try:
        ipaddress.ip_address(left)
    except ValueError:
        return False  # a host name with a dash, such as web-01
    return True


def _range(text: str) -> Block:
    left, right = text.split("-", 1)
    first = ipaddress.ip_address(left)
    if right.isdigit() and first.version == 4:
        if not 0 <= int(right) <= 255:
            raise ValueError(f"{text!r}: the range's end must be 0 to 255")
        last: Address = ipaddress.IPv4Address(f"{left.rsplit('.', 1)[0]}.{int(right)}")
    else:
        try:
            last = ipaddress.ip_address(right)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a range such as 10.0.0.5-10.0.0.40 or 10.0.0.5-40"
            ) from None
    if last.version != first.version:
        raise ValueError(f"{text!r}: both ends must be IPv4 or both IPv6")
    if int(last) < int(first):
        raise ValueError(f"{text!r}: the range ends before it starts")
    return Block(first, last)


def _host_name(text: str) -> HostName:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return HostName(str(address))
    name = text.removesuffix(".")
    labels = name.split(".")
    # An all-numeric last label is a mistyped address (10.0.0.300), not a name.
    if len(name) > 253 or labels[-1].isdigit() or not all(map(_HOST_LABEL.match, labels)):
        raise ValueError(f"{text!r} is not an address, a CIDR block, a range or a host name")
    return HostName(name)


def check_targets(targets: Sequence[str], field: str = "targets") -> tuple[str, ...]:
    """The targets, stripped, if every one parses and they hold at most :data:`MAX_HOSTS`.

    Refused with a :class:`ValidationError` naming the first bad entry
    (``targets[2]``) or the total.
    """
    if not targets:
        raise _invalid(field, "give at least one target")
    if len(targets) > MAX_TARGETS:
        raise _invalid(field, f"at most {MAX_TARGETS} entries")
    cleaned = []
    for index, text in enumerate(targets):
        try:
            parse_target(text)
        except ValueError as error:
            raise _invalid(f"{field}[{index}]", str(error)) from None
        cleaned.append(text.strip())
    total = count_hosts(cleaned)
    if total > MAX_HOSTS:
        raise _invalid(
            field, f"the targets hold {total} hosts; a profile may hold at most {MAX_HOSTS}"
        )
    return tuple(cleaned)


def count_hosts(targets: Sequence[str]) -> int:
    """Hosts the targets hold (a host name counts one; overlaps count twice)."""
    return sum(parse_target(text).count for text in targets)


def check_size(total: int, confirm_large: bool, field: str = "confirm_large") -> None:
    """Refuse a scan larger than a /20 unless confirmed, and any above the hard cap."""
    if total > MAX_HOSTS:
        raise _invalid(
            "targets", f"the targets hold {total} hosts; at most {MAX_HOSTS} are scanned"
        )
    if total > CONFIRM_ABOVE and not confirm_large:
        raise _invalid(
            field,
            f"the targets hold {total} hosts, more than {CONFIRM_ABOVE} (a /20): "
            "confirm a scan this large with confirm_large: true",
        )


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


# --------------------------------------------------------------------------- resolving


@attrs.frozen
class Resolved:
    """The addresses to scan, in the targets' order, each once, and the names that
    did not resolve (with why)."""

    addresses: tuple[str, ...]
    unresolved: tuple[tuple[str, str], ...] = ()


Resolver = Callable[[str], Awaitable[list[str]]]


async def lookup(name: str) -> list[str]:
    """The addresses of a host name, in the system's order of preference."""
    found = await anyio.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in found]


async def resolve(targets: Sequence[str], resolver: Resolver = lookup) -> Resolved:
    """Expand blocks and ranges, and resolve host names (to their first address)."""
    seen: dict[str, None] = {}
    unresolved: list[tuple[str, str]] = []
    for text in targets:
        entry = parse_target(text)
        if isinstance(entry, Block):
            seen.update(dict.fromkeys(entry.addresses()))
            continue
        if _is_address(entry.name):
            seen.setdefault(entry.name)
            continue
        try:
            found = await resolver(entry.name)
        except OSError as error:
            unresolved.append((entry.name, str(error.strerror or error)))
            continue
        if not found:
            unresolved.append((entry.name, "no address"))
            continue
        seen.setdefault(str(ipaddress.ip_address(found[0])))
    return Resolved(tuple(seen), tuple(unresolved))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- scanning


@attrs.frozen
class HostResult:
    """One scanned host: the ports of those given that accepted a connection."""

    address: str
    open_ports: tuple[int, ...]


Probe = Callable[[str, int, float], Awaitable[bool]]
OnHost = Callable[[HostResult], Awaitable[None]]


async def tcp_probe(address: str, port: int, timeout: float) -> bool:
    """Whether ``address:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(address, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


async def scan(
    addresses: Sequence[str],
    ports: Sequence[int],
    *,
    concurrency: int,
    timeout: float,
    on_host: OnHost,
    probe: Probe = tcp_probe,
) -> None:
    """Try every port of every address, at most ``concurrency`` connections at once.

    ``on_host`` is called once per address (in no set order) as soon as all its
    ports are tried. Hosts are taken in order, so early ones finish early.
    """
    if not addresses:
        return
    if not ports:
        for address in addresses:
            await on_host(HostResult(address, ()))
        return
    pending = [len(ports)] * len(addresses)
    found: list[list[int]] = [[] for _ in addresses]
    jobs = iter(itertools.product(range(len(addresses)), ports))

    async def worker() -> None:
        for index, port in jobs:  # shared: each job goes to one worker
            if await probe(addresses[index], port, timeout):
                found[index].append(port)
            pending[index] -= 1
            if pending[index] == 0:
                await on_host(HostResult(addresses[index], tuple(sorted(found[index]))))

    workers = min(concurrency, len(addresses) * len(ports))
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
