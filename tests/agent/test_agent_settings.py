"""The agent reads its settings without the server's, and gets what they would give.

``load_agent_settings`` reads the plain, common forms itself and hands anything
else to the full settings (``Settings.load``); these tests hold both paths to
the same results and the same error messages, and check that the plain forms
really take the light path (no cattrs).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from lunasentri_core import config
from lunasentri_core.agent import settings_reader
from lunasentri_core.agent.settings import (
    AgentRunSettings,
    AgentSettings,
    agent_settings_from_mapping,
    load_agent_settings,
)
from lunasentri_core.config import Settings, settings_from_mapping
from lunasentri_core.errors import ConfigError

LIGHT: list[dict[str, Any]] = [
    {},
    {"data_dir": "/var/lib/x", "log_level": "DEBUG"},
    {"agent": {"server_url": "http://h:1", "api_key": "lsk_a", "interval": 10}},
    {"agent": {"interval": "30s", "send_interval": "2m", "timeout": 2.5, "backoff_max": "1h"}},
    {"agent": {"collectors": ["psutil", "other"], "labels": {"rack": "r1", "env": "prod"}}},
    {"agent": {"spool_dir": "/tmp/s", "spool_max_bytes": 4096, "batch_max_samples": 7.0}},
    {"agent": {"agent_id": "a1", "hostname": "h", "verify_tls": False, "ca_file": "/ca.pem"}},
    {"agent": {"config_poll_interval": "500ms"}},
    {"collect": {"timeout": "3s", "interval": 1, "collectors": ["psutil"]}},
    {"plugins": {"psutil": {"per_cpu": True}, "other": {}}},
    {"disabled_plugins": ["sqlite"], "enabled_plugins": ["psutil"]},
]
"""Valid settings the agent reads itself."""
FULL: list[dict[str, Any]] = [
    {"server": {"port": 9000}, "agent": {"interval": 3}},
    {"heartbeat_interval": 60},
]
"""Valid settings the agent leaves to the full settings (the server's keys)."""


@pytest.mark.parametrize(
    ("data", "light"),
    [(data, True) for data in LIGHT] + [(data, False) for data in FULL],
    ids=range(len(LIGHT) + len(FULL)),
)
def test_the_same_settings_as_the_full_ones(
    data: dict[str, Any], light: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"data_dir": str(tmp_path), **data}
    expected = AgentRunSettings.from_settings(settings_from_mapping(data))
    if light:
        monkeypatch.setattr(config, "settings_from_mapping", _not_called)
    assert agent_settings_from_mapping(data) == expected


def _not_called(data: object) -> None:
    raise AssertionError("the full settings were asked")


INVALID: list[dict[str, Any]] = [
    {"agent": {"interval": 0}},
    {"agent": {"interval": -1}},
    {"agent": {"interval": "soon"}},
    {"agent": {"interval": True}},
    {"agent": {"batch_max_samples": 0}},
    {"agent": {"batch_max_samples": 1.5}},
    {"agent": {"bogus": 1}},
    {"agent": {"verify_tls": "maybe"}},
    {"agent": {"collectors": "psutil"}},
    {"agent": {"collectors": ["psutil", 3]}},
    {"agent": {"labels": {"env": 1}}},
    {"agent": {"server_url": 8080, "interval": "x"}},
    {"agent": 3},
    {"collect": {"timeout": 0}},
    {"collect": {"intervall": 5}},
    {"log_level": "loud"},
    {"data_dir": 3},
    {"plugins": 3},
    {"plugins": {"psutil": 3}},
    {"disabled_plugins": "sqlite"},
    {"agnet": {"interval": 5}},
    {"server": {"port": "x"}},
]


@pytest.mark.parametrize("data", INVALID, ids=range(len(INVALID)))
def test_the_same_errors_as_the_full_settings(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as full:
        settings_from_mapping(data)
    with pytest.raises(ConfigError) as light:
        agent_settings_from_mapping(data)
    assert str(light.value) == str(full.value)


def test_defaults_match_the_full_settings() -> None:
    full = Settings()
    light = AgentRunSettings()
    assert light.agent == full.agent == AgentSettings()
    assert light.collect_timeout == full.collect.timeout
    assert light.data_dir == full.data_dir
    assert (light.plugins, light.disabled_plugins, light.enabled_plugins) == (
        full.plugins,
        full.disabled_plugins,
        full.enabled_plugins,
    )


def test_file_environment_and_overrides_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "lunasentri.toml"
    path.write_text("[agent]\nserver_url = 'http://file'\ninterval = 10\ntimeout = 3\n")
    environ = {"LUNASENTRI_AGENT__INTERVAL": "20", "LUNASENTRI_AGENT__API_KEY": "lsk_env"}
    settings = load_agent_settings(path, environ=environ, agent={"timeout": 4}, data_dir=tmp_path)
    assert settings.agent.server_url == "http://file"
    assert settings.agent.interval == timedelta(seconds=20)
    assert settings.agent.api_key == "lsk_env"
    assert settings.agent.timeout == timedelta(seconds=4)
    assert settings.spool_dir == tmp_path / "agent-spool"


def test_every_agent_setting_has_a_light_reader() -> None:
    """A new field of a new type would silently send every agent down the full path."""
    for name, annotation in AgentSettings.__annotations__.items():
        assert settings_reader.reader_for(annotation), name  # postponed: an agent's view
    # Resolved, as they are once cattrs has structured the class in a process.
    for field in attrs.fields(attrs.resolve_types(AgentSettings)):
        assert settings_reader.reader_for(field.type), field.name


def test_the_light_path_loads_no_cattrs(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            """
            data_dir = "data"
            [agent]
            server_url = "https://monitor.example.com"
            interval = "10s"
            labels = { rack = "r1" }
            [collect]
            timeout = 5
            [plugins.psutil]
            per_cpu = true
            """
        )
    )
    code = (
        "import sys\n"
        "from lunasentri_core.agent.settings import load_agent_settings\n"
        f"settings = load_agent_settings({str(path)!r}, environ={{}})\n"
        "assert settings.agent.interval.total_seconds() == 10\n"
        "print(sorted(m for m in sys.modules if m.startswith(('cattrs', 'lunasentri_core.'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "cattrs" not in result.stdout
    assert "lunasentri_core.config'" not in result.stdout
    assert "lunasentri_core.model'" not in result.stdout
