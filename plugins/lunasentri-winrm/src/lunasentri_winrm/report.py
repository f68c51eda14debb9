"""The JSON the poll script prints, read into typed values; anything else is refused."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lunasentri_core import RemoteError


class ReportError(RemoteError):
    """The script's output is not the JSON this collector's script prints."""


@attrs.frozen
class Memory:
    total_kib: int
    free_kib: int
    paging_kib: int | None
    paging_free_kib: int | None


@attrs.frozen
class CpuCounter:
    """One ``Win32_PerfRawData_PerfOS_Processor`` instance: a CPU, or ``_Total``."""

    name: str
    idle: int
    timestamp: int


@attrs.frozen
class Disk:
    mount: str
    size: int | None
    free: int | None


@attrs.frozen
class NicCounter:
    """One ``Win32_PerfRawData_Tcpip_NetworkInterface`` instance."""

    name: str
    rx: int
    tx: int
    timestamp: int
    frequency: int | None


@attrs.frozen
class Report:
    hostname: str | None
    memory: Memory
    processes: int | None
    uptime_s: float | None
    cpu: tuple[CpuCounter, ...]
    disks: tuple[Disk, ...]
    nics: tuple[NicCounter, ...]


def parse_report(text: str, host: str) -> Report:
    """Read the poll script's output; :class:`ReportError` names what is wrong."""
    try:
        data = json.loads(text)
        return _report(_mapping(data, "the output"))
    except (ValueError, TypeError, KeyError) as error:
        excerpt = " ".join(text.split())[:200]
        raise ReportError(
            f"{host} printed something other than the poll script's JSON ({error}): {excerpt!r}"
        ) from None


def _report(data: Mapping[str, Any]) -> Report:
    memory = _mapping(data["memory"], "memory")
    return Report(
        hostname=_text_or_none(data.get("hostname")),
        memory=Memory(
            total_kib=_integer(memory["total_kib"], "memory.total_kib"),
            free_kib=_integer(memory["free_kib"], "memory.free_kib"),
            paging_kib=_integer_or_none(memory.get("paging_kib"), "memory.paging_kib"),
            paging_free_kib=_integer_or_none(
                memory.get("paging_free_kib"), "memory.paging_free_kib"
            ),
        ),
        processes=_integer_or_none(data.get("processes"), "processes"),
        uptime_s=_number_or_none(data.get("uptime_s"), "uptime_s"),
        cpu=tuple(_cpu(_mapping(c, "cpu[]")) for c in _sequence(data.get("cpu", []), "cpu")),
        disks=tuple(
            _disk(_mapping(d, "disks[]")) for d in _sequence(data.get("disks", []), "disks")
        ),
        nics=tuple(_nic(_mapping(n, "nics[]")) for n in _sequence(data.get("nics", []), "nics")),
    )


def _cpu(data: Mapping[str, Any]) -> CpuCounter:
    return CpuCounter(
        name=_text(data["name"], "cpu.name"),
        idle=_integer(data["idle"], "cpu.idle"),
        timestamp=_integer(data["timestamp"], "cpu.timestamp"),
    )


def _disk(data: Mapping[str, Any]) -> Disk:
    return Disk(
        mount=_text(data["mount"], "disks.mount"),
        size=_integer_or_none(data.get("size"), "disks.size"),
        free=_integer_or_none(data.get("free"), "disks.free"),
    )


def _nic(data: Mapping[str, Any]) -> NicCounter:
    return NicCounter(
        name=_text(data["name"], "nics.name"),
        rx=_integer(data["rx"], "nics.rx"),
        tx=_integer(data["tx"], "nics.tx"),
        timestamp=_integer(data["timestamp"], "nics.timestamp"),
        frequency=_integer_or_none(data.get("frequency"), "nics.frequency"),
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} is not an object")
    return value


def _sequence(value: object, what: str) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return (value,)  # PowerShell unrolls a one-element array when piped
    if not isinstance(value, list):
        raise TypeError(f"{what} is not an array")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} is not a non-empty string")
    return value


def _text_or_none(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _integer_or_none(value: object, what: str) -> int | None:
    return None if value is None else _integer(value, what)


def _number_or_none(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{what} is not a number: {value!r}")
    return float(value)
