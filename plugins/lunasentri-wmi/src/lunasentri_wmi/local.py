"""The local Windows host through the ``wmi`` package (Windows only, optional).

When the collector runs on Windows itself and a target has no ``host``, it asks
WMI directly over COM instead of going through WS-Management. Neither the
``wmi`` package nor Windows is available where LunaSentri's tests run: they
check this path with stand-ins for ``wmi`` and ``pythoncom`` only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lunasentri_core import ConfigError
from lunasentri_wmi.cim import WmiObject, WmiScalar, WmiValue, parse_datetime


def available() -> bool:
    """Whether the ``wmi`` package (and so Windows' COM) can be used here."""
    try:
        import wmi  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


class LocalWmiSource:
    """WQL queries against this Windows host, over COM."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def query(self, wql: str) -> Iterator[WmiObject]:
        for instance in self._connection.query(wql):
            names = list(instance.properties)
            yield WmiObject({name: _value(getattr(instance, name)) for name in names})


@contextmanager
def local_source() -> Iterator[LocalWmiSource]:
    """A connection to this host's ``root/cimv2`` for the ``with`` block.

    COM must be initialised in every thread that uses it, and the hub collects
    in worker threads: initialised here, released on the way out.
    """
    try:
        import pythoncom  # type: ignore[import-untyped,import-not-found,unused-ignore]
        import wmi  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            "the wmi collector needs a target with a host, or Windows with the "
            "'wmi' package installed to measure this machine"
        ) from None
    pythoncom.CoInitialize()
    try:
        yield LocalWmiSource(wmi.WMI())
    finally:
        pythoncom.CoUninitialize()


def _value(value: Any) -> WmiValue:
    if isinstance(value, list | tuple):
        return tuple(_scalar(item) for item in value)
    return _scalar(value)


def _scalar(value: Any) -> WmiScalar:
    # COM gives numbers as int (uint64 as str), datetimes as DMTF strings.
    if value is None or isinstance(value, dt.datetime | dt.timedelta):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if len(text) == 25 and text[14] == "." and text[21] in "+-":
        try:
            return parse_datetime(text)
        except ValueError:
            return text
    return text
