"""The contract suite every collector passes, from lunasentri_core.testing."""

from __future__ import annotations

import pytest
from winrm_support import PowerShellHost, target_of

from lunasentri_core import Target
from lunasentri_core.testing import CollectorContract, WsmanServer
from lunasentri_winrm import WinrmCollector, WinrmSettings


class TestWinrmCollector(CollectorContract):
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
