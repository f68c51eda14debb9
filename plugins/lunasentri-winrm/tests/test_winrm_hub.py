"""The collector as the hub builds it: registered by module, configured from ``[plugins.winrm]``."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import anyio
import pytest
from winrm_support import PowerShellHost, target_of

import lunasentri_winrm
from lunasentri_core import Sentri, Settings
from lunasentri_core.testing import WsmanServer
from lunasentri_winrm import WinrmCollector, WinrmSettings


def _unless_installed() -> dict[str, object]:
    """The plugin module, for the hub to register, unless its entry point already is."""
    if importlib.metadata.entry_points(group="lunasentri", name="winrm"):
        return {}
    return {"winrm": lunasentri_winrm}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_hub_builds_the_collector_from_its_settings_table(
    tmp_path: Path, wsman_server: WsmanServer
) -> None:
    PowerShellHost(wsman_server)
    settings = Settings.load(
        environ={},
        data_dir=tmp_path / "data",
        plugins={"winrm": {"per_cpu": True, "read_timeout_sec": 15, "operation_timeout_sec": 10}},
    )
    async with Sentri(settings, plugins=_unless_installed()) as hub:
        collector = hub.collector("winrm")
        assert isinstance(collector, WinrmCollector)
        assert collector.settings == WinrmSettings(
            per_cpu=True, read_timeout_sec=15, operation_timeout_sec=10
        )
        target = target_of(wsman_server)
        # Blocking client code runs in a worker thread, as the poller runs it.
        await anyio.to_thread.run_sync(collector.collect, target)
        readings = await anyio.to_thread.run_sync(collector.collect, target)
    cpu_labels = {r.labels for r in readings if r.metric == "cpu.percent"}
    assert cpu_labels == {(), (("cpu", "0"),), (("cpu", "1"),)}
