"""Settings of the wmi collector, structured from ``[plugins.wmi]``."""

from __future__ import annotations

from typing import Any

import attrs

from lunasentri_core.errors import InvalidValue
from lunasentri_winrm.settings import (
    DEFAULT_SKIP_NICS,
    below_read_timeout,
    check_patterns,
    pattern_list,
)
from lunasentri_winrm.transport import DEFAULT_OPERATION_TIMEOUT_SEC, DEFAULT_READ_TIMEOUT_SEC

__all__ = ["DEFAULT_SKIP_NICS", "WmiSettings"]
# DEFAULT_SKIP_NICS is the winrm collector's: the two collectors measure the
# same interfaces of a host, so their series are the same.


def _positive(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"must be a positive integer, got {value!r}", attribute)


@attrs.frozen
class WmiSettings:
    """How the wmi collector asks hosts and what it measures."""

    read_timeout_sec: int = attrs.field(default=DEFAULT_READ_TIMEOUT_SEC, validator=_positive)
    """Seconds to wait for any one HTTP answer of the host."""
    operation_timeout_sec: int = attrs.field(
        default=DEFAULT_OPERATION_TIMEOUT_SEC, validator=[_positive, below_read_timeout]
    )
    """The WS-Management ``OperationTimeout``: how long the host may hold one request."""
    max_elements: int = attrs.field(default=32000, validator=_positive)
    """Instances asked for per WS-Management response (Windows may send fewer)."""
    per_cpu: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Also emit ``cpu.percent`` per logical CPU, labelled ``cpu``."""
    skip_nics: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_NICS, converter=pattern_list, validator=check_patterns
    )
    """Interfaces not measured (``fnmatch`` patterns, case-insensitive as Windows names are)."""
