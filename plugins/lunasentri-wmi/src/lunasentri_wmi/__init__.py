"""LunaSentri collector for Windows hosts: WQL over WS-Management, no agent, no PowerShell.

Registered in the ``lunasentri`` entry-point group as ``wmi``; configure it
under ``[plugins.wmi]`` (see :class:`WmiSettings`).
"""

from collections.abc import Iterable

from lunasentri_core import Collector, hookimpl
from lunasentri_wmi.cim import WmiObject, parse_datetime, parse_interval
from lunasentri_wmi.collector import WmiCollector
from lunasentri_wmi.enumeration import query
from lunasentri_wmi.settings import DEFAULT_SKIP_NICS, WmiSettings

__all__ = [
    "DEFAULT_SKIP_NICS",
    "WmiCollector",
    "WmiObject",
    "WmiSettings",
    "lunasentri_register_collectors",
    "parse_datetime",
    "parse_interval",
    "query",
]


@hookimpl
def lunasentri_register_collectors() -> Iterable[type[Collector]]:
    return [WmiCollector]
