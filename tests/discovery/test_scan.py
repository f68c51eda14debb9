"""Targets and the TCP connect scan, against real listeners on loopback addresses."""

from __future__ import annotations

import ipaddress
import socket

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.errors import ValidationError
from lunasentri_core.services import scan
from lunasentri_core.services.scan import HostResult

from .listeners import black_hole, closed_port, listeners


def hosts(*targets: str) -> list[str]:
    return [a for t in targets for a in scan.parse_target(t).addresses()]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- targets


def test_an_ipv4_block_skips_its_network_and_broadcast_addresses() -> None:
    found = hosts("10.1.2.0/24")
    assert len(found) == 254 == scan.count_hosts(["10.1.2.0/24"])
    assert found[0] == "10.1.2.1"
    assert found[-1] == "10.1.2.254"


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("10.0.0.4/31", ["10.0.0.4", "10.0.0.5"]),
        ("10.0.0.4/32", ["10.0.0.4"]),
        ("10.0.0.4/30", ["10.0.0.5", "10.0.0.6"]),
        ("10.0.0.5/30", ["10.0.0.5", "10.0.0.6"]),  # host bits set: the block, as nmap
        ("fd00::/126", ["fd00::", "fd00::1", "fd00::2", "fd00::3"]),
    ],
)
def test_small_and_ipv6_blocks(block: str, expected: list[str]) -> None:
    assert hosts(block) == expected
    assert scan.count_hosts([block]) == len(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5-10.0.0.7", ["10.0.0.5", "10.0.0.6", "10.0.0.7"]),
        ("10.0.0.5-7", ["10.0.0.5", "10.0.0.6", "10.0.0.7"]),
        ("10.0.0.255-10.0.1.0", ["10.0.0.255", "10.0.1.0"]),
        ("fd00::1-fd00::2", ["fd00::1", "fd00::2"]),
        ("10.0.0.9-9", ["10.0.0.9"]),
    ],
)
def test_ranges(text: str, expected: list[str]) -> None:
    assert hosts(text) == expected


def test_host_names_and_single_addresses_count_one_each() -> None:
    assert scan.count_hosts(["web-01.example.net", "dc1", "10.0.0.1", "::1"]) == 4


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.0/33",
        "10.0.0.300/24",
        "10.0.0.300",
        "10.0.0.9-10.0.0.5",
        "10.0.0.5-300",
        "10.0.0.5-fd00::1",
        "10.0.0.5-x",
        "-bad-.example",
        "bad host",
        "a..b",
        "",
        " ",
        "x" * 300,
    ],
)
def test_a_bad_entry_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        scan.check_targets(["10.0.0.0/24", bad])
    assert caught.value.errors[0].path == "targets[1]"


def test_targets_are_required_and_capped() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        scan.check_targets([])
    with pytest.raises(ValidationError) as caught:
        scan.check_targets(["10.0.0.0/15"])
    assert "131070 hosts" in str(caught.value)
    assert scan.check_targets([" 10.0.0.0/16 ", "h"]) == ("10.0.0.0/16", "h")


def test_more_than_a_slash_20_needs_confirmation() -> None:
    scan.check_size(scan.count_hosts(["10.0.0.0/20"]), confirm_large=False)  # 4094
    big = scan.count_hosts(["10.0.0.0/19"])
    with pytest.raises(ValidationError) as caught:
        scan.check_size(big, confirm_large=False)
    assert caught.value.errors[0].path == "confirm_large"
    assert "8190 hosts" in str(caught.value)
    scan.check_size(big, confirm_large=True)
    with pytest.raises(ValidationError, match="at most 65536"):
        scan.check_size(scan.MAX_HOSTS + 1, confirm_large=True)


@given(st.integers(0, 2**32 - 1), st.integers(22, 32))
def test_a_block_holds_exactly_its_hosts(value: int, prefix: int) -> None:
    network = ipaddress.ip_network((value, prefix), strict=False)
    found = hosts(str(network))
    assert len(found) == len(set(found)) == scan.count_hosts([str(network)])
    assert all(ipaddress.ip_address(a) in network for a in found)
    ends = {str(network.network_address), str(network.broadcast_address)}
    assert (ends & set(found) == set()) == (prefix < 31)


# --------------------------------------------------------------------------- resolving


@pytest.mark.anyio
async def test_resolving_expands_dedupes_and_reports_unknown_names() -> None:
    async def resolver(name: str) -> list[str]:
        # Real lookups of names in /etc/hosts only: any other would ask a DNS server.
        if name in {"localhost", "vm"}:
            return await scan.lookup(name)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolved = await scan.resolve(
        ["127.71.9.1-3", "127.71.9.2/31", "localhost", "nowhere.example", "127.71.9.3"],
        resolver,
    )
    assert resolved.addresses[:3] == ("127.71.9.1", "127.71.9.2", "127.71.9.3")
    assert resolved.addresses[3] in {"127.0.0.1", "::1"}
    assert len(resolved.addresses) == 4
    assert resolved.unresolved == (("nowhere.example", "Name or service not known"),)


# --------------------------------------------------------------------------- scanning


async def run_scan(addresses: list[str], ports: list[int], **kwargs: object) -> list[HostResult]:
    results: list[HostResult] = []

    async def on_host(result: HostResult) -> None:
        results.append(result)

    options: dict[str, object] = {"concurrency": 16, "timeout": 2.0, **kwargs}
    await scan.scan(addresses, ports, on_host=on_host, **options)  # type: ignore[arg-type]
    return sorted(results, key=lambda r: ipaddress.ip_address(r.address))


@pytest.mark.anyio
async def test_the_scan_finds_exactly_the_listening_hosts_and_ports() -> None:
    with listeners() as live:
        web = live.listen("127.71.1.2")
        other = live.listen("127.71.1.2")
        live.listen("127.71.1.5", web)
        live.listen("127.71.1.9", other)  # outside the targets: never touched
        quiet = closed_port("127.71.1.3")
        addresses = [f"127.71.1.{n}" for n in range(1, 6)]
        results = await run_scan(addresses, [web, other, quiet])
    assert [r.address for r in results] == addresses  # every host reported, once
    assert {r.address: r.open_ports for r in results if r.open_ports} == {
        "127.71.1.2": tuple(sorted((web, other))),
        "127.71.1.5": (web,),
    }
    assert live.accepted[("127.71.1.9", other)] == 0


@pytest.mark.anyio
async def test_a_black_holed_port_times_out_as_closed() -> None:
    with listeners() as live:
        port = live.listen("127.71.2.1")
        with black_hole("127.71.2.2") as hole:
            results = await run_scan(["127.71.2.1", "127.71.2.2"], [port, hole], timeout=0.3)
    assert [r.open_ports for r in results] == [(port,), ()]


@pytest.mark.anyio
async def test_the_scan_never_has_more_connections_in_flight_than_its_concurrency() -> None:
    in_flight = peak = 0

    async def counting(address: str, port: int, timeout: float) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await scan.tcp_probe(address, port, timeout)
        finally:
            in_flight -= 1

    with black_hole("127.71.3.1") as hole:
        addresses = [f"127.71.3.{n}" for n in range(1, 41)]
        results = await run_scan(addresses, [hole], concurrency=7, timeout=0.2, probe=counting)
    assert len(results) == 40
    assert peak == 7  # the 40 hung attempts were spread over exactly 7 at a time


@pytest.mark.anyio
async def test_a_scan_without_ports_or_hosts_reports_without_connecting() -> None:
    assert await run_scan([], [5985]) == []
    assert await run_scan(["127.71.4.1"], []) == [HostResult("127.71.4.1", ())]


@pytest.mark.anyio
async def test_connections_are_closed_after_the_probe() -> None:
    with listeners() as live:
        port = live.listen("127.71.5.1")
        await run_scan(["127.71.5.1"], [port])
        with anyio.fail_after(10):
            while live.accepted[("127.71.5.1", port)] == 0:
                await anyio.sleep(0.01)
    assert live.accepted[("127.71.5.1", port)] == 1
