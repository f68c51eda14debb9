"""Loading only the collector plugins the agent runs.

Loading every ``lunasentri`` entry point would import the storage plugins too
(SQLAlchemy and friends: several MB the agent never uses), so the plugin manager
is first limited to plugins named like the collectors. A collector registered by
a plugin of another name is still found: if one is missing, every entry point is
loaded once, at the cost of that memory, and a log line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lunasentri_core.components import Collector
from lunasentri_core.config import Settings
from lunasentri_core.plugins import ComponentKind, PluginManager

log = logging.getLogger(__name__)


def load_collectors(settings: Settings, names: Sequence[str]) -> dict[str, Collector]:
    """Instances of the collectors ``names``; :class:`PluginError` if one is unknown."""
    manager = _manager(settings, allowed=names)
    missing = [n for n in names if n not in manager.components(ComponentKind.COLLECTOR)]
    if missing:
        log.info(
            "collector(s) %s not provided by a plugin of the same name; loading all plugins",
            ", ".join(missing),
        )
        manager = _manager(settings, allowed=None)
    return {name: manager.component(ComponentKind.COLLECTOR, name).create() for name in names}


def _manager(settings: Settings, allowed: Sequence[str] | None) -> PluginManager:
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
    manager.load_entry_points()
    return manager
