"""Fixtures of the WinRM plugin's tests: the WS-Management test server and its targets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from winrm_support import PowerShellHost, target_of

from lunasentri_core import Target
from lunasentri_core.testing import WsmanServer

pytest_plugins = ["lunasentri_core.testing"]

# Timings are no assertions here: on a loaded CI machine an example may take
# longer than Hypothesis's 200 ms deadline, which would fail a correct test.
settings.register_profile("lunasentri", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lunasentri")


@pytest.fixture(autouse=True)
def _no_ca_bundle_or_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback tests must not go through a proxy or a CA bundle set for this shell."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def target(wsman_server: WsmanServer) -> Target:
    return target_of(wsman_server)


@pytest.fixture
def powershell(wsman_server: WsmanServer) -> PowerShellHost:
    """The test server's host answering the collector's scripts from its WMI classes."""
    return PowerShellHost(wsman_server)
