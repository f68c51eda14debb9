"""Settings of the wmi collector, structured from ``[plugins.wmi]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from lunasentri_core.errors import InvalidValue
from lunasentri_winrm.settings import DEFAULT_SKIP_NICS
from lunasentri_winrm.transport import DEFAULT_OPERATION_TIMEOUT_SEC, DEFAULT_READ_TIMEOUT_SEC

__all__ = ["DEFAULT_SKIP_NICS", "WmiSettings"]
# DEFAULT_SKIP_NICS is the winrm collector's: the two collectors measure the
# same interfaces of a host, so their series are the same.


def _names(value: Iterable[str]) -> tuple[str, ...]:
    # A bare string would otherwise be split into one-letter patterns.
    if isinstance(value, str):
        raise TypeError(f"expected a list of strings, not the string {value!r}")
    return tuple(value)


def _check_names(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise InvalidValue(f"[{index}]: expected a non-empty string, got {name!r}", attribute)


def _positive(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"must be a positive integer, got {value!r}", attribute)


def _below_read_timeout(instance: WmiSettings, attribute: attrs.Attribute[Any], value: int) -> None:
    # pywinrm's rule: the host may hold a request for the whole operation
    # timeout, so the HTTP read timeout must outlast it.
    if value >= instance.read_timeout_sec:
        raise InvalidValue(
            f"must be less than read_timeout_sec ({instance.read_timeout_sec}), got {value}",
            attribute,
        )


@attrs.frozen
class WmiSettings:
    """How the wmi collector asks hosts and what it measures."""

    read_timeout_sec: int = attrs.field(default=DEFAULT_READ_TIMEOUT_SEC, validator=_positive)
    """Seconds to wait for any one HTTP answer of the host."""
    operation_timeout_sec: int = attrs.field(
        default=DEFAULT_OPERATION_TIMEOUT_SEC, validator=[_positive, _below_read_timeout]
    )
    """The WS-Management ``OperationTimeout``: how long the host may hold one request."""
    max_elements: int = attrs.field(default=32000, validator=_positive)
    """Instances asked for per WS-Management response (Windows may send fewer)."""
    per_cpu: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Also emit ``cpu.percent`` per logical CPU, labelled ``cpu``."""
    skip_nics: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_NICS, converter=_names, validator=_check_names
    )
    """Interfaces not measured (``fnmatch`` patterns, case-insensitive as Windows names are)."""
