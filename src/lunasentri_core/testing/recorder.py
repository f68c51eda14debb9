"""Recording event hook calls, and building throwaway plugins from functions."""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from lunasentri_core import hookspecs
from lunasentri_core.hookspecs import hookimpl
from lunasentri_core.model import AlertEvent, Machine, MachineStatus, Sample

EVENT_HOOKS = (
    "lunasentri_startup",
    "lunasentri_shutdown",
    "lunasentri_samples_ingested",
    "lunasentri_machine_status_changed",
    "lunasentri_alert_changed",
)
"""The event hooks a :class:`HookRecorder` records."""


class RecordedCall(NamedTuple):
    """One call of an event hook: its name and the keyword arguments it was given."""

    hook: str
    kwargs: Mapping[str, Any]


class HookRecorder:
    """A plugin that records every call of the event hooks.

    Register it on a plugin manager (the ``hook_recorder`` fixture does) or pass
    it to a hub (``create_plugin_manager(plugins={"recorder": recorder})``), then
    ask what was called::

        (call,) = hook_recorder.calls("lunasentri_samples_ingested")
        assert call.kwargs["machine"].id == machine.id
    """

    def __init__(self) -> None:
        self._calls: list[RecordedCall] = []
        self._lock = threading.Lock()

    def _record(self, hook: str, **kwargs: Any) -> None:
        with self._lock:
            self._calls.append(RecordedCall(hook, kwargs))

    # ------------------------------------------------------------ queries

    def calls(self, hook: str | None = None) -> list[RecordedCall]:
        """Calls in the order they happened; only those of ``hook`` when given."""
        _check_event_hook(hook)
        with self._lock:
            return [c for c in self._calls if hook is None or c.hook == hook]

    def hooks(self) -> list[str]:
        """Names of the hooks called, in order (with repetitions)."""
        return [call.hook for call in self.calls()]

    def last(self, hook: str) -> RecordedCall:
        """The latest call of ``hook``; an :class:`AssertionError` if it was never called."""
        found = self.calls(hook)
        if not found:
            raise AssertionError(f"{hook} was never called (calls so far: {self.hooks()})")
        return found[-1]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    # ------------------------------------------------------------ hook implementations

    @hookimpl
    def lunasentri_startup(self, hub: Any) -> None:
        self._record("lunasentri_startup", hub=hub)

    @hookimpl
    def lunasentri_shutdown(self, hub: Any) -> None:
        self._record("lunasentri_shutdown", hub=hub)

    @hookimpl
    def lunasentri_samples_ingested(
        self, hub: Any, machine: Machine, samples: Sequence[Sample]
    ) -> None:
        self._record("lunasentri_samples_ingested", hub=hub, machine=machine, samples=samples)

    @hookimpl
    def lunasentri_machine_status_changed(
        self, hub: Any, machine: Machine, old: MachineStatus, new: MachineStatus, at: datetime
    ) -> None:
        self._record(
            "lunasentri_machine_status_changed", hub=hub, machine=machine, old=old, new=new, at=at
        )

    @hookimpl
    def lunasentri_alert_changed(self, hub: Any, event: AlertEvent) -> None:
        self._record("lunasentri_alert_changed", hub=hub, event=event)


def _check_event_hook(hook: str | None) -> None:
    # A misspelt name would otherwise look like "never called" and pass silently.
    if hook is not None and hook not in EVENT_HOOKS:
        raise ValueError(f"{hook!r} is not an event hook; choose one of {', '.join(EVENT_HOOKS)}")


def make_plugin(name: str = "throwaway", **hooks: Callable[..., Any]) -> object:
    """A plugin object whose hook implementations are the given functions.

    ``make_plugin(lunasentri_register_collectors=lambda: [MyCollector])`` is the
    shortest way to register a class in a test without an entry point. Each name
    must be a hook of :mod:`lunasentri_core.hookspecs`.
    """
    plugin = types.SimpleNamespace(__name__=name)
    for hook_name, function in hooks.items():
        if not hook_name.startswith("lunasentri_") or not hasattr(hookspecs, hook_name):
            raise ValueError(f"{hook_name!r} is not a LunaSentri hook")
        setattr(plugin, hook_name, hookimpl(function))
    return plugin
