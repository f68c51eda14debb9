"""The agent's identity files, its settings table and the central configuration."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from lunasentri_core.agent.central import InvalidCentralConfig, parse_central_config
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.settings import AgentSettings
from lunasentri_core.config import Settings
from lunasentri_core.errors import ConfigError
from lunasentri_core.security import hash_token


def test_agent_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = Identity(tmp_path / "spool").agent_id()
    assert first == Identity(tmp_path / "spool").agent_id()
    assert Identity(tmp_path / "spool", agent_id="fixed").agent_id() == "fixed"
    renewed = Identity(tmp_path / "spool").new_agent_id()
    assert renewed != first
    assert Identity(tmp_path / "spool").agent_id() == renewed


def test_secrets_are_private_and_the_token_goes_with_the_key(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    token = identity.new_claim_token()
    assert token.secret.startswith("lsc_")
    assert token.hash == hash_token(token.secret)
    assert identity.claim_token() == token.secret
    identity.save_api_key("lsk_abc")
    assert identity.api_key() == "lsk_abc"
    assert identity.claim_token() is None
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600
    identity.forget_api_key()
    assert identity.api_key() is None


def test_agent_table_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "lunasentri.toml"
    path.write_text(
        "data_dir = 'data'\n"
        "[agent]\nserver_url = 'http://127.0.0.1:8080'\ninterval = 10\n"
        "collectors = ['psutil', 'filesize']\nlabels = {env = 'prod'}\n"
    )
    settings = Settings.load(path, environ={"LUNASENTRI_AGENT__API_KEY": "lsk_env"})
    agent = settings.agent
    assert agent.server_url == "http://127.0.0.1:8080"
    assert agent.api_key == "lsk_env"
    assert agent.interval == timedelta(seconds=10)
    assert agent.collectors == ("psutil", "filesize")
    assert agent.labels == (("env", "prod"),)
    assert agent.resolved_spool_dir(settings.data_dir) == Path("data") / "agent-spool"


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ("interval = 0", "agent.interval"),
        ("batch_max_samples = 0", "agent.batch_max_samples"),
        ("bogus = 1", "agent.bogus"),
        ("verify_tls = 'maybe'", "agent.verify_tls"),
    ],
)
def test_bad_agent_settings_name_their_path(tmp_path: Path, table: str, path: str) -> None:
    file = tmp_path / "lunasentri.toml"
    file.write_text(f"[agent]\n{table}\n")
    section, name = path.split(".")
    with pytest.raises(ConfigError, match=rf"{section}\W.*{name}"):
        Settings.load(file, environ={})


def test_defaults() -> None:
    agent = AgentSettings()
    assert agent.interval == timedelta(seconds=5)
    assert agent.collectors == ("psutil",)
    assert agent.api_key is None
    assert agent.verify_tls
    assert agent.resolved_spool_dir(Path("/d")) == Path("/d/agent-spool")


def test_central_config() -> None:
    body = {
        "machine_id": "m1",
        "interval": 30,
        "collectors": ["psutil", "psutil", "filesize"],
        "labels": {"env": "prod"},
        "version": 4,
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    config = parse_central_config(body, None)
    assert config.interval == timedelta(seconds=30)
    assert config.collectors == ("psutil", "filesize")
    assert config.labels == (("env", "prod"),)
    assert config.etag == '"4"'
    assert parse_central_config(body, 'W/"abc"').etag == 'W/"abc"'
    fast = parse_central_config({**body, "interval": 0.01}, None)
    assert fast.interval == timedelta(seconds=1)


@pytest.mark.parametrize(
    "change",
    [
        {"interval": 0},
        {"interval": "5"},
        {"interval": True},
        {"collectors": []},
        {"collectors": ["bad name"]},
        {"collectors": "psutil"},
        {"labels": {"Bad-Name": "x"}},
        {"labels": {"env": 1}},
        {"version": None},
    ],
)
def test_invalid_central_config(change: dict[str, object]) -> None:
    body = {"interval": 5, "collectors": ["psutil"], "labels": {}, "version": 1, **change}
    with pytest.raises(InvalidCentralConfig):
        parse_central_config(body, None)
