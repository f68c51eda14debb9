"""The kit's fixtures, hook recorder and helpers; and that the kit stays opt-in."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from datetime import UTC, datetime

import anyio
import pytest
from kit_doubles import CountingCollector
from kit_support import KitRun

from lunasentri_core import AlertState, MachineStatus, PluginError
from lunasentri_core.plugins import PluginManager
from lunasentri_core.testing import (
    EVENT_HOOKS,
    HookRecorder,
    RegisterPlugin,
    make_alert_event,
    make_alert_rule,
    make_machine,
    make_plugin,
    make_sample,
    resolve,
)

pytest_plugins = ["pytester", "lunasentri_core.testing"]


def test_the_plugin_manager_fixture_loads_no_entry_points(
    lunasentri_plugin_manager: PluginManager,
) -> None:
    assert lunasentri_plugin_manager.infos() == []
    assert lunasentri_plugin_manager.collectors() == {}
    assert lunasentri_plugin_manager.failures == ()


def test_register_plugin(
    lunasentri_plugin_manager: PluginManager, register_plugin: RegisterPlugin
) -> None:
    plugin = make_plugin(lunasentri_register_collectors=lambda: [CountingCollector])
    name = register_plugin(plugin)
    assert name.startswith("test-plugin-")
    assert register_plugin(make_plugin(), "chosen-name") == "chosen-name"
    assert lunasentri_plugin_manager.collectors() == {"counting": CountingCollector}
    assert {i.name for i in lunasentri_plugin_manager.infos()} == {name, "chosen-name"}


def test_register_plugin_rejects_hooks_that_do_not_match_the_specs(
    register_plugin: RegisterPlugin,
) -> None:
    plugin = make_plugin(lunasentri_startup=lambda hub, surprise: None)
    with pytest.raises(PluginError, match=r"(?s)plugin .odd. was rejected: .*surprise"):
        register_plugin(plugin, "odd")


def test_register_plugin_unregisters_at_teardown(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        from lunasentri_core.testing import make_plugin

        seen = []

        def test_register(lunasentri_plugin_manager, register_plugin):
            register_plugin(make_plugin(), "temporary")
            seen.append(lunasentri_plugin_manager)

        def test_it_is_gone():
            (manager,) = seen
            assert manager.infos() == []
        """
    )
    result.assert_outcomes(passed=2)


def test_make_plugin_rejects_unknown_hooks() -> None:
    with pytest.raises(ValueError, match="'lunasentri_strtup' is not a LunaSentri hook"):
        make_plugin(lunasentri_strtup=lambda: None)


async def _fire_every_event(manager: PluginManager) -> dict[str, object]:
    hub = object()
    machine = make_machine()
    samples = [make_sample()]
    event = make_alert_event(make_alert_rule("owner"), machine.id, state=AlertState.RESOLVED)
    at = datetime(2026, 1, 5, tzinfo=UTC)
    await manager.startup(hub)
    await manager.samples_ingested(hub, machine, samples)
    await manager.machine_status_changed(
        hub, machine, MachineStatus.ONLINE, MachineStatus.OFFLINE, at
    )
    await manager.alert_changed(hub, event)
    await manager.shutdown(hub)
    return {"hub": hub, "machine": machine, "samples": samples, "event": event, "at": at}


def test_hook_recorder_records_every_event_hook(
    lunasentri_plugin_manager: PluginManager, hook_recorder: HookRecorder
) -> None:
    fired = anyio.run(_fire_every_event, lunasentri_plugin_manager)
    assert hook_recorder.hooks() == [
        "lunasentri_startup",
        "lunasentri_samples_ingested",
        "lunasentri_machine_status_changed",
        "lunasentri_alert_changed",
        "lunasentri_shutdown",
    ]
    assert set(hook_recorder.hooks()) == set(EVENT_HOOKS)
    (call,) = hook_recorder.calls("lunasentri_samples_ingested")
    hook, kwargs = call
    assert hook == "lunasentri_samples_ingested"
    assert kwargs == {"hub": fired["hub"], "machine": fired["machine"], "samples": fired["samples"]}
    status = hook_recorder.last("lunasentri_machine_status_changed").kwargs
    assert (status["old"], status["new"], status["at"]) == (
        MachineStatus.ONLINE,
        MachineStatus.OFFLINE,
        fired["at"],
    )
    assert hook_recorder.last("lunasentri_alert_changed").kwargs["event"] is fired["event"]
    assert len(hook_recorder) == 5
    hook_recorder.clear()
    assert hook_recorder.calls() == []


def test_hook_recorder_refuses_names_that_are_not_event_hooks(hook_recorder: HookRecorder) -> None:
    with pytest.raises(ValueError, match="not an event hook"):
        hook_recorder.calls("lunasentri_samples_ingestd")
    with pytest.raises(AssertionError, match="lunasentri_startup was never called"):
        hook_recorder.last("lunasentri_startup")


def test_resolve_returns_values_and_awaits_awaitables() -> None:
    async def answer() -> int:
        await anyio.sleep(0)
        return 42

    assert resolve(41) == 41
    assert resolve(answer()) == 42


def test_importing_the_core_does_not_import_pytest() -> None:
    code = (
        "import sys, lunasentri_core, lunasentri_core.plugins, lunasentri_core.storage\n"
        "print(sorted(m for m in sys.modules if m == 'pytest' or m.endswith('.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_kit_is_opt_in() -> None:
    entry_points = importlib.metadata.distribution("lunasentri-core").entry_points
    assert [ep for ep in entry_points if ep.group == "pytest11"] == []


def test_importing_the_kit_before_enabling_it_does_not_warn(kit_run: KitRun) -> None:
    # conftest imports from the kit and then enables it: assertion rewriting must
    # not complain that the module was imported first (warnings are errors here).
    kit_run.pytester.makeconftest(
        """
        from lunasentri_core.testing import CollectorContract
        pytest_plugins = ["lunasentri_core.testing"]
        """
    )
    result = kit_run.run(
        """
        def test_fixtures_are_there(hook_recorder):
            assert hook_recorder.calls() == []
        """
    )
    result.assert_outcomes(passed=1)
