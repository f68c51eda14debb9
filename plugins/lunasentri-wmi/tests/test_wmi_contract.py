"""The contract suite every collector passes, from lunasentri_core.testing."""

from __future__ import annotations

import pytest
from wmi_support import target_of

from lunasentri_core import RemoteCredential, Target, Transport
from lunasentri_core.testing import CollectorContract, WsmanServer
from lunasentri_wmi import WmiCollector, WmiSettings


class TestWmiCollector(CollectorContract):
    # The shortest the settings allow: the read timeout must outlast the operation's.
    timeout_settings = {"read_timeout_sec": 2, "operation_timeout_sec": 1}
    timeout_seconds = 2.0

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

    @pytest.fixture
    def unresponsive_target(self, silent_server: tuple[str, int]) -> Target:
        host, port = silent_server
        credential = RemoteCredential(
            transport=Transport.BASIC,
            username="vagrant",
            password="vagrant",
            https=False,
            port=port,
        )
        return Target(machine_id="win-hung", host=host, credential=credential)
