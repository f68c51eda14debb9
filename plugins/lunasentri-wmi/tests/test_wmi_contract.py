"""The contract suite every collector passes, from lunasentri_core.testing."""

from __future__ import annotations

import pytest
from wmi_support import target_of

from lunasentri_core import Target
from lunasentri_core.testing import CollectorContract, WsmanServer
from lunasentri_wmi import WmiCollector, WmiSettings


class TestWmiCollector(CollectorContract):
    @pytest.fixture(
        params=[WmiSettings(), WmiSettings(per_cpu=True, skip_nics=(), max_elements=2)],
        ids=["defaults", "per-cpu-all-nics-small-pages"],
    )
    def collector(self, request: pytest.FixtureRequest) -> WmiCollector:
        settings: WmiSettings = request.param
        return WmiCollector(settings)

    @pytest.fixture
    def target(self, wsman_server: WsmanServer) -> Target:
        return target_of(wsman_server)
