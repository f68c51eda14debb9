from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.config import Settings, env_overrides
from lunasentri_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lunasentri.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = Settings.load(environ={"XDG_DATA_HOME": str(tmp_path)})

    assert settings.collect.interval == timedelta(seconds=5)
    assert settings.collect.collectors == ("psutil",)
    assert settings.storage_url.startswith("sqlite:///")


def test_file_then_environment_then_arguments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log_level = "debug"
        [collect]
        interval = "10s"
        collectors = ["psutil", "filesize"]
        [plugins.filesize]
        paths = ["/etc/hostname"]
        """,
    )
    env = {
        "LUNASENTRI_COLLECT__INTERVAL": "20",
        "LUNASENTRI_PLUGINS__FILESIZE__PATHS": '["/tmp"]',
        "LUNASENTRI_STORAGE__URL": "sqlite:////tmp/x.db",
    }

    settings = Settings.load(path, environ=env, log_level="warning")

    assert settings.log_level == "warning"
    assert settings.collect.interval == timedelta(seconds=20)
    assert settings.collect.collectors == ("psutil", "filesize")
    assert settings.plugins["filesize"] == {"paths": ["/tmp"]}
    assert settings.storage_url == "sqlite:////tmp/x.db"


def test_environment_values_are_toml_literals_or_strings() -> None:
    env = {
        "LUNASENTRI_A": "true",
        "LUNASENTRI_B__C": "12",
        "LUNASENTRI_D": "not toml {",
        "LUNASENTRI_TEST_POSTGRES_URL": "for the tests, not a setting",
        "OTHER": "ignored",
    }
    assert env_overrides(env) == {"a": True, "b": {"c": 12}, "d": "not toml {"}


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "error"\n')
    assert Settings.load(environ={"LUNASENTRI_CONFIG": str(path)}).log_level == "error"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[collect]\nintervall = 5\n", "collect.intervall: unknown field"),
        ("[collect]\ninterval = true\n", "collect.interval: expected a duration"),
        ("[collect]\ninterval = 0\n", "collect.interval: must be positive"),
        ("log_level = 'loud'\n", "log_level: expected one of debug, info"),
        ("[server]\nport = 99999\n", "server.port: expected a TCP port from 0 to 65535"),
        (
            "[storage.retention]\nraw = 'forever-ish'\n",
            "storage.retention.raw: expected a duration",
        ),
        ("plugins = 3\n", "plugins: expected a table"),
        ("[collect]\ncollectors = 'psutil'\n", "collect.collectors: expected a list"),
        ("[collect]\ncollectors = ['psutil', 3]\n", "collect.collectors[1]: expected a string"),
    ],
)
def test_wrong_settings_name_their_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as caught:
        Settings.load(write(tmp_path, text), environ={})
    assert message in str(caught.value)


def test_wrong_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"collect\.interval: expected a duration"):
        Settings.load(environ={"LUNASENTRI_COLLECT__INTERVAL": "[1]"})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Settings.load(write(tmp_path, "[collect\n"), environ={})


def test_heartbeat_settings_come_from_their_environment_variables() -> None:
    settings = Settings.load(
        environ={"LUNASENTRI_HEARTBEAT_INTERVAL": "10s", "LUNASENTRI_OFFLINE_THRESHOLD": "5m"}
    )
    assert settings.heartbeat_interval == timedelta(seconds=10)
    assert settings.offline_threshold == timedelta(minutes=5)
    with pytest.raises(ConfigError, match="offline_threshold"):
        Settings.load(environ={"LUNASENTRI_OFFLINE_THRESHOLD": "0"})


def _as_toml_literal(raw: str) -> object:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


@given(
    st.one_of(
        st.text(),
        st.from_regex(r"\A[ \t0-9+_.-]{1,24}\Z"),
        st.integers().map(str),
        st.sampled_from(["true", "false", "inf", "nan", "0x1f", "007", "0", "http://h:1/"]),
    )
)
def test_an_environment_value_reads_as_the_toml_literal_it_is_or_else_as_text(raw: str) -> None:
    # The shortcuts for plain text and whole numbers agree with tomllib
    # (compared by repr, where nan is nan).
    read = env_overrides({"LUNASENTRI_X": raw})
    assert repr(read) == repr({"x": _as_toml_literal(raw)})


def test_secret_settings_never_show_in_a_repr(tmp_path: Path) -> None:
    settings = Settings.load(
        environ={},
        data_dir=tmp_path,
        admin_password="hunter2-hunter2",
        agent={"api_key": "lsk_very_secret"},
    )
    shown = repr(settings)
    assert "hunter2" not in shown
    assert "lsk_very_secret" not in shown
    assert "admin_password='***'" in shown
    assert "api_key='***'" in shown
    assert "api_key=None" in repr(Settings.load(environ={}, data_dir=tmp_path).agent)
