"""Settings structured from ``[plugins.winrm]`` the way the plugin manager does it."""

from __future__ import annotations

import pytest

from lunasentri_core.codec import decode
from lunasentri_core.errors import ValidationError
from lunasentri_winrm import DEFAULT_SKIP_NICS, WinrmSettings


def test_an_empty_table_gives_the_defaults() -> None:
    settings = decode({}, WinrmSettings, what="[plugins.winrm]")
    assert settings == WinrmSettings()
    assert (settings.read_timeout_sec, settings.operation_timeout_sec) == (30, 20)
    assert settings.skip_nics == DEFAULT_SKIP_NICS
    assert settings.per_cpu is False


def test_a_table_is_structured() -> None:
    settings = decode(
        {"read_timeout_sec": 12, "operation_timeout_sec": 8, "per_cpu": True, "skip_nics": []},
        WinrmSettings,
        what="[plugins.winrm]",
    )
    assert settings == WinrmSettings(
        read_timeout_sec=12, operation_timeout_sec=8, per_cpu=True, skip_nics=()
    )


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"read_timeout_sec": 10, "operation_timeout_sec": 10}, "operation_timeout_sec"),
        ({"operation_timeout_sec": 0}, "operation_timeout_sec"),
        ({"script_timeout_sec": -1}, "script_timeout_sec"),
        ({"skip_nics": [""]}, "skip_nics"),
        ({"timeout": 5}, "timeout"),
    ],
)
def test_a_wrong_value_names_its_field(table: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        decode(table, WinrmSettings, what="[plugins.winrm]")
    assert field in str(caught.value)
