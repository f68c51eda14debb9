"""Settings of the wmi collector, structured from ``[plugins.wmi]``."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

DEFAULT_SKIP_NICS: tuple[str, ...] = (
    # Tunnel and pseudo interfaces Windows lists among its network interfaces'
    # counters: no traffic of their own, or the traffic of a real one again.
    "isatap*",
    "Microsoft ISATAP Adapter*",
    "Teredo Tunneling Pseudo-Interface*",
    "6TO4 Adapter*",
    "*Loopback*",
)
"""Interface patterns (``fnmatch``, case-insensitive) skipped by default."""


def _names(value: Iterable[str]) -> tuple[str, ...]:
    # A bare string would otherwise be split into one-letter patterns.
    if isinstance(value, str):
        raise TypeError(f"expected a list of strings, not the string {value!r}")
    return tuple(value)


def _check_names(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{attribute.name}[{index}]: expected a non-empty string, got {name!r}"
            )


def _check_positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: expected a positive integer, got {value!r}")


@attrs.frozen
class WmiSettings:
    """What the wmi collector measures and how it asks."""

    per_cpu: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Also emit ``cpu.percent`` per logical processor, labelled ``cpu``."""
    skip_nics: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_NICS, converter=_names, validator=_check_names
    )
    """Network interfaces not measured (``fnmatch`` patterns, case-insensitive)."""
    max_elements: int = attrs.field(default=32000, validator=_check_positive)
    """Instances asked for per WS-Management response (Windows may send fewer)."""
    read_timeout_sec: int = attrs.field(default=30, validator=_check_positive)
    """Seconds to wait for each answer of the host (connecting included)."""
    operation_timeout_sec: int = attrs.field(default=20, validator=_check_positive)
    """Seconds the host may take for one operation (``w:OperationTimeout``)."""

    @operation_timeout_sec.validator
    def _shorter_than_the_read(self, attribute: attrs.Attribute[int], value: int) -> None:
        # The host may use all of the operation timeout: the HTTP read must outlast it.
        if value >= self.read_timeout_sec:
            raise ValueError(
                f"operation_timeout_sec ({value}) must be less than read_timeout_sec "
                f"({self.read_timeout_sec})"
            )
