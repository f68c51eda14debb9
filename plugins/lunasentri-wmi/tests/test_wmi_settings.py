"""Settings structured from ``[plugins.wmi]`` the way the plugin manager does it."""

from __future__ import annotations

import pytest

from lunasentri_core.codec import decode
from lunasentri_core.errors import ValidationError
from lunasentri_winrm import DEFAULT_SKIP_NICS as WINRM_SKIP_NICS
from lunasentri_wmi import DEFAULT_SKIP_NICS, WmiSettings


def test_an_empty_table_gives_the_defaults() -> None:
    settings = decode({}, WmiSettings, what="[plugins.wmi]")
    assert settings == WmiSettings()
    assert (settings.read_timeout_sec, settings.operation_timeout_sec) == (30, 20)
    assert settings.max_elements == 32000
    assert settings.per_cpu is False
    # The same interfaces as the winrm collector, so both give the same series.
    assert settings.skip_nics == DEFAULT_SKIP_NICS == WINRM_SKIP_NICS


def test_a_table_is_structured() -> None:
    table = {
        "read_timeout_sec": 12,
        "operation_timeout_sec": 8,
        "max_elements": 50,
        "per_cpu": True,
        "skip_nics": [],
    }
    assert decode(table, WmiSettings, what="[plugins.wmi]") == WmiSettings(
        read_timeout_sec=12, operation_timeout_sec=8, max_elements=50, per_cpu=True, skip_nics=()
    )


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"read_timeout_sec": 10, "operation_timeout_sec": 10}, "operation_timeout_sec"),
        ({"operation_timeout_sec": 0}, "operation_timeout_sec"),
        ({"max_elements": 0}, "max_elements"),
        ({"read_timeout_sec": True}, "read_timeout_sec"),
        ({"skip_nics": [""]}, "skip_nics"),
        ({"skip_nics": "isatap*"}, "skip_nics"),
        ({"timeout": 5}, "timeout"),
    ],
)
def test_a_wrong_value_names_its_field(table: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        decode(table, WmiSettings, what="[plugins.wmi]")
    assert field in str(caught.value)
