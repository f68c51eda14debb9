"""The contract suite every collector passes, from lunasentri_core.testing."""

from __future__ import annotations

import pytest
from winrm_support import PowerShellHost, basic_credential, target_of

from lunasentri_core import Target
from lunasentri_core.testing import CollectorContract, WsmanServer
from lunasentri_winrm import WinrmCollector, WinrmSettings


class TestWinrmCollector(CollectorContract):
    # The shortest the settings allow: pywinrm's read timeout must outlast the operation's.
    timeout_settings = {"read_timeout_sec": 2, "operation_timeout_sec": 1}
    timeout_seconds = 2.0

    @pytest.fixture(
        params=[WinrmSettings(), WinrmSettings(per_cpu=True, skip_nics=())],
        ids=["defaults", "per-cpu-all-nics"],
    )
    def collector(self, request: pytest.FixtureRequest) -> WinrmCollector:
        settings: WinrmSettings = request.param
        return WinrmCollector(settings)

    @pytest.fixture
    def target(self, wsman_server: WsmanServer) -> Target:
        PowerShellHost(wsman_server)
        return target_of(wsman_server)

    @pytest.fixture
    def unresponsive_target(self, silent_server: tuple[str, int]) -> Target:
        host, port = silent_server
        return Target(machine_id="win-hung", host=host, credential=basic_credential(port))
