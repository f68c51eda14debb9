"""LunaSentri collector for Windows hosts over WinRM (WS-Management), with pywinrm.

Registered in the ``lunasentri`` entry-point group as ``winrm``; configure it
under ``[plugins.winrm]`` (see :class:`WinrmSettings`). :mod:`lunasentri_winrm.transport`
builds pywinrm clients and maps their errors, for this and the WMI collector.
"""

from collections.abc import Iterable

from lunasentri_core import Collector, hookimpl
from lunasentri_winrm.collector import WinrmCollector
from lunasentri_winrm.settings import DEFAULT_SKIP_NICS, WinrmSettings, mount_point
from lunasentri_winrm.shell import ScriptError

__all__ = [
    "DEFAULT_SKIP_NICS",
    "ScriptError",
    "WinrmCollector",
    "WinrmSettings",
    "lunasentri_register_collectors",
    "mount_point",
]


@hookimpl
def lunasentri_register_collectors() -> Iterable[type[Collector]]:
    return [WinrmCollector]
