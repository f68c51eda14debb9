"""Properties of the pure parts: reading the script's output, percentages and rates."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from lunasentri_winrm.deltas import busy_percent, counter_rate
from lunasentri_winrm.report import ReportError, parse_report

counters = st.integers(min_value=0, max_value=2**64 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
report_keys = st.sampled_from(
    ["memory", "cpu", "disks", "nics", "processes", "uptime_s", "hostname"]
)


@given(st.dictionaries(report_keys, json_values) | json_values)
def test_any_json_is_a_report_or_a_report_error(data: object) -> None:
    try:
        report = parse_report(json.dumps(data), "host")
    except ReportError as error:
        message = str(error)
    else:
        message = "host"
        assert report.memory.total_kib >= 0
    assert "host" in message


@given(st.text(max_size=50))
def test_any_text_is_a_report_or_a_report_error(text: str) -> None:
    # Anything but a ReportError escaping fails the test.
    with contextlib.suppress(ReportError):
        parse_report(text, "host")


@given(counters, counters, counters, counters)
def test_a_busy_share_is_a_percentage_or_unknown(
    idle_before: int, time_before: int, idle_after: int, time_after: int
) -> None:
    percent = busy_percent(idle_before, time_before, idle_after, time_after)
    if time_after <= time_before or idle_after < idle_before:
        assert percent is None
    else:
        assert percent is not None
        assert 0.0 <= percent <= 100.0


@given(counters, counters, st.floats(min_value=-10, max_value=1e6, allow_nan=False))
def test_a_rate_is_never_negative(before: int, after: int, seconds: float) -> None:
    rate = counter_rate(before, after, seconds)
    if after < before or seconds <= 0:
        assert rate is None
    else:
        assert rate is not None
        assert rate >= 0
