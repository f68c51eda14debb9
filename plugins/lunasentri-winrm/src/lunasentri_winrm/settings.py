"""Settings of the WinRM collector, structured from ``[plugins.winrm]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from lunasentri_core.errors import InvalidValue
from lunasentri_winrm.transport import DEFAULT_OPERATION_TIMEOUT_SEC, DEFAULT_READ_TIMEOUT_SEC

DEFAULT_SKIP_NICS: tuple[str, ...] = ("isatap*", "Teredo*", "6TO4*")
"""Interface patterns skipped by default: IPv6 transition pseudo-interfaces, whose
bytes are also counted on the physical interface beneath them."""


def pattern_list(value: Iterable[str]) -> tuple[str, ...]:
    """Converter of a list of name patterns (the WMI collector's settings use it too)."""
    # A bare string would otherwise be split into one-letter patterns.
    if isinstance(value, str):
        raise TypeError(f"expected a list of strings, not the string {value!r}")
    return tuple(value)


def check_patterns(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise InvalidValue(f"[{index}]: expected a non-empty string, got {name!r}", attribute)


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidValue(f"must be a positive number, got {value!r}", attribute)


def below_read_timeout(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    """Validator of ``operation_timeout_sec`` next to a ``read_timeout_sec``."""
    # pywinrm's rule: the host may block for the whole operation timeout, so the
    # HTTP read timeout must outlast it.
    if value >= instance.read_timeout_sec:
        raise InvalidValue(
            f"must be less than read_timeout_sec ({instance.read_timeout_sec}), got {value}",
            attribute,
        )


@attrs.frozen
class WinrmSettings:
    """How the WinRM collector talks to hosts and what it measures."""

    read_timeout_sec: int = attrs.field(default=DEFAULT_READ_TIMEOUT_SEC, validator=_positive)
    """Seconds to wait for any one HTTP answer of the host."""
    operation_timeout_sec: int = attrs.field(
        default=DEFAULT_OPERATION_TIMEOUT_SEC, validator=[_positive, below_read_timeout]
    )
    """The WS-Management ``OperationTimeout``: how long the host may hold one request."""
    script_timeout_sec: float = attrs.field(default=60.0, validator=_positive)
    """Seconds the poll's PowerShell script may run before the poll fails as a timeout."""
    per_cpu: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Also emit ``cpu.percent`` per logical CPU, labelled ``cpu``."""
    skip_nics: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_NICS, converter=pattern_list, validator=check_patterns
    )
    """Interfaces not measured (``fnmatch`` patterns, case-insensitive as Windows names are)."""


def mount_point(device_id: str) -> str:
    """The ``mount`` label of a volume: ``C:`` becomes ``C:\\``, the mount point the
    psutil collector reports for it on Windows, so one host's disk series keep
    their labels whether an agent or the server measures them."""
    return device_id if device_id.endswith("\\") else device_id + "\\"
