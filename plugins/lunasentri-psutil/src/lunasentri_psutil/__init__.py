"""LunaSentri collector for the local machine, through psutil.

Registered in the ``lunasentri`` entry-point group as ``psutil``; configure it
under ``[plugins.psutil]`` (see :class:`PsutilSettings`).
"""

from collections.abc import Iterable

from lunasentri_core import Collector, hookimpl
from lunasentri_psutil.collector import PsutilCollector
from lunasentri_psutil.settings import (
    DEFAULT_SKIP_FSTYPES,
    DEFAULT_SKIP_MOUNTS,
    DEFAULT_SKIP_NICS,
    PsutilSettings,
)

__all__ = [
    "DEFAULT_SKIP_FSTYPES",
    "DEFAULT_SKIP_MOUNTS",
    "DEFAULT_SKIP_NICS",
    "PsutilCollector",
    "PsutilSettings",
    "lunasentri_register_collectors",
]


@hookimpl
def lunasentri_register_collectors() -> Iterable[type[Collector]]:
    return [PsutilCollector]
