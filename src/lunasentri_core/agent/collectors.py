"""Loading only the collector plugins the agent runs.

Loading every ``lunasentri`` entry point would import the storage plugins too
(SQLAlchemy and friends: several MB the agent never uses), so the plugin manager
is first limited to plugins named like the collectors, found by the agent's own
scan of the installed distributions (:mod:`.entry_points`). A collector that is
not found that way — registered by a plugin of another name, or installed where
the scan does not look — is looked up once more in every plugin, through
importlib.metadata, at the cost of that memory, and a log line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lunasentri_core.agent import entry_points
from lunasentri_core.agent.settings import AgentRunSettings
from lunasentri_core.plugins import ENTRY_POINT_GROUP, ComponentKind, PluginManager
from lunasentri_core.samples import Collector

log = logging.getLogger(__name__)


def load_collectors(settings: AgentRunSettings, names: Sequence[str]) -> dict[str, Collector]:
    """Instances of the collectors ``names``; :class:`PluginError` if one is unknown."""
    found = entry_points.entry_points(ENTRY_POINT_GROUP)
    manager = _manager(settings, allowed=names, found=found)
    missing = [n for n in names if n not in manager.components(ComponentKind.COLLECTOR)]
    if missing:
        log.info(
            "collector(s) %s not provided by a plugin of the same name; loading all plugins",
            ", ".join(missing),
        )
        manager = _manager(settings, allowed=None, found=None)
    return {name: manager.component(ComponentKind.COLLECTOR, name).create() for name in names}


def _manager(
    settings: AgentRunSettings,
    allowed: Sequence[str] | None,
    found: list[entry_points.EntryPoint] | None,
) -> PluginManager:
    enabled: set[str] | None
    if allowed is None:
        enabled = None if settings.enabled_plugins is None else set(settings.enabled_plugins)
    else:
        enabled = set(allowed)
        if settings.enabled_plugins is not None:
            enabled &= set(settings.enabled_plugins)
    manager = PluginManager(
        disabled=settings.disabled_plugins, enabled=enabled, plugin_settings=settings.plugins
    )
    manager.load_entry_points(found=found)
    return manager
