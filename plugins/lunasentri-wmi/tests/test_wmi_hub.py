"""The collector as the hub builds it: registered by module, configured from ``[plugins.wmi]``."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import anyio
import pytest
from wmi_support import target_of

import lunasentri_wmi
from lunasentri_core import Identifier, Sentri, Settings
from lunasentri_core.testing import WsmanServer
from lunasentri_wmi import WmiCollector, WmiSettings


def _unless_installed() -> dict[str, object]:
    """The plugin module, for the hub to register, unless its entry point already is."""
    if importlib.metadata.entry_points(group="lunasentri", name="wmi"):
        return {}
    return {"wmi": lunasentri_wmi}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_hub_builds_the_collector_from_its_settings_table(
    tmp_path: Path, wsman_server: WsmanServer
) -> None:
    settings = Settings.load(
        environ={},
        data_dir=tmp_path / "data",
        plugins={"wmi": {"per_cpu": True, "max_elements": 5, "skip_nics": ["Intel*"]}},
    )
    async with Sentri(settings, plugins=_unless_installed()) as hub:
        collector = hub.collector("wmi")
        assert isinstance(collector, WmiCollector)
        assert isinstance(collector, Identifier)
        assert collector.settings == WmiSettings(
            per_cpu=True, max_elements=5, skip_nics=("Intel*",)
        )
        target = target_of(wsman_server)
        # Blocking client code runs in a worker thread, as the poller runs it.
        await anyio.to_thread.run_sync(collector.collect, target)
        readings = await anyio.to_thread.run_sync(collector.collect, target)
    cpu_labels = {r.labels for r in readings if r.metric == "cpu.percent"}
    assert cpu_labels == {(), (("cpu", "0"),), (("cpu", "1"),)}
    nics = {r.labels for r in readings if r.metric == "net.rx_rate"}
    assert nics == {(("nic", "RedHat PV NIC Driver _2"),)}
