"""Hook specifications: the whole plugin API of LunaSentri.

A plugin is a module or object with functions marked ``@lunasentri_core.hookimpl``
whose names match the specs below; it is found through the ``lunasentri``
entry-point group. An implementation may accept fewer arguments than its spec
(pluggy passes only what it asks for), so specs can grow without breaking plugins.

Two families of hooks:

* **Registration hooks** return classes keyed by a ``name`` class attribute. The
  plugin manager rejects a class without a name, or a name registered twice.
* **Event hooks** observe the flow. An implementation may be a plain function or
  may return an awaitable; the hub awaits it. Exceptions are logged with the
  plugin's name and never stop the flow or the other plugins.

None of these hooks is ``firstresult``: every implementation is called.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    # Annotations only: a process that only collects (the push agent) loads
    # neither the server's model nor the storage protocols with the hook specs.
    from lunasentri_core.components import Authenticator, Collector, Notifier
    from lunasentri_core.hub import Sentri
    from lunasentri_core.model import AlertEvent, Machine, MachineStatus, Sample
    from lunasentri_core.storage.protocols import StorageFactory

PROJECT_NAME = "lunasentri"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class HookDeprecationWarning(DeprecationWarning):
    """A plugin implements a deprecated hook, or asks for a deprecated argument of one.

    Issued when the plugin is registered, by pluggy's ``warn_on_impl`` (for a
    hook) and ``warn_on_impl_args`` (for an argument) options on a spec, e.g.
    ``@hookspec(warn_on_impl_args={"hub": HookDeprecationWarning("...")})``.
    The plugin manager also logs it with the plugin's name. See docs/hooks.md,
    "Compatibility".
    """


# --------------------------------------------------------------------------
# Registration hooks: called once, when the plugin manager is built.
# --------------------------------------------------------------------------


@hookspec
def lunasentri_register_collectors() -> Iterable[type[Collector]]:
    """Register collector classes, each of which measures targets.

    Called once when the plugin manager loads plugins.

    :returns: Classes implementing :class:`~lunasentri_core.Collector`; each has a
        ``name`` (``"psutil"``, ``"winrm"``) by which settings and machines refer to
        it, and a ``settings_class`` (or ``None``) for ``[plugins.<name>]``.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_register_storage() -> Iterable[type[StorageFactory]]:
    """Register storage backend factories, keyed by URL scheme.

    Called once when the plugin manager loads plugins. The hub picks the factory
    whose ``schemes`` contain the scheme of the configured ``storage_url``
    (``sqlite``, ``postgresql``) and calls its ``open(url, settings=..., retention=...)``.

    :returns: Classes implementing :class:`~lunasentri_core.storage.StorageFactory`.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_register_notifiers() -> Iterable[type[Notifier]]:
    """Register notifier classes, each of which delivers notifications to a kind of channel.

    Called once when the plugin manager loads plugins. A notification channel
    names its notifier (``"webhook"``, ``"telegram"``).

    :returns: Classes implementing :class:`~lunasentri_core.Notifier`.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_register_authenticators() -> Iterable[type[Authenticator]]:
    """Register authenticator classes, each of which recognises a kind of credential.

    Called once when the plugin manager loads plugins. The server asks each
    authenticator in turn; the first that returns a principal wins.

    :returns: Classes implementing :class:`~lunasentri_core.Authenticator`.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# Lifecycle hooks: the hub starting and stopping.
# --------------------------------------------------------------------------


@hookspec
def lunasentri_startup(hub: Sentri) -> Any:
    """Called when a hub has opened its storage, before it runs any service.

    :param hub: The hub that started.
    :returns: Nothing, or an awaitable the hub awaits before going on.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_shutdown(hub: Sentri) -> Any:
    """Called when a hub is closing, after its services stopped, before storage closes.

    :param hub: The hub that is closing.
    :returns: Nothing, or an awaitable the hub awaits before going on.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# Flow hooks: data and state moving through the hub.
# --------------------------------------------------------------------------


@hookspec
def lunasentri_samples_ingested(hub: Sentri, machine: Machine, samples: Sequence[Sample]) -> Any:
    """Called after samples of a machine were durably stored.

    Called once per machine per committed batch, on the event loop; keep it quick
    or hand the work to a task.

    :param hub: The hub that stored them.
    :param machine: The machine the samples belong to.
    :param samples: The samples, as stored. Those that came through the ingest
        API keep their readings in a :class:`~lunasentri_core.ReadingColumns`,
        whose ``keys`` and ``values`` are the cheap way to look at every value.
    :returns: Nothing, or an awaitable the hub awaits.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_machine_status_changed(
    hub: Sentri,
    machine: Machine,
    old: MachineStatus,
    new: MachineStatus,
    at: datetime,
) -> Any:
    """Called once after a machine's status changed (e.g. online to offline).

    :param hub: The hub that recorded the change.
    :param machine: The machine, with its new status.
    :param old: The status before.
    :param new: The status now.
    :param at: When the change was recorded.
    :returns: Nothing, or an awaitable the hub awaits.

    .. versionadded:: 0.1
    """


@hookspec
def lunasentri_alert_changed(hub: Sentri, event: AlertEvent) -> Any:
    """Called once after a series started firing, or resolved, under an alert rule.

    :param hub: The hub that evaluated the rule.
    :param event: The recorded event.
    :returns: Nothing, or an awaitable the hub awaits.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# Server hooks: extending the reference server.
# --------------------------------------------------------------------------


@hookspec
def lunasentri_server_routes(hub: Sentri) -> Iterable[Any]:
    """Add routes to the reference server.

    Called once when the server application is built.

    :param hub: The hub the server serves.
    :returns: Starlette route objects (``Route``, ``Mount``, ``WebSocketRoute``),
        mounted under ``/plugins/<plugin name>/`` so they cannot shadow core routes.

    .. versionadded:: 0.1
    """
