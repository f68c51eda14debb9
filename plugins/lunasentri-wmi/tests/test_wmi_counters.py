"""The raw performance-counter formulas."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lunasentri_wmi.counters import RawSample, bulk_count_rate, inverse_timer_percent

ticks = st.integers(0, 2**63)


@given(ticks, ticks, ticks, ticks)
def test_busy_percent_is_a_percentage_or_nothing(
    idle_before: int, idle_after: int, at_before: int, at_after: int
) -> None:
    percent = inverse_timer_percent(
        RawSample(idle_before, at_before), RawSample(idle_after, at_after)
    )
    if at_after <= at_before or idle_after < idle_before:
        assert percent is None
    else:
        assert percent is not None
        assert 0.0 <= percent <= 100.0


def test_busy_percent_of_the_formula() -> None:
    # 10 s pass, 7.5 s of them idle: 25% busy.
    assert inverse_timer_percent(RawSample(0, 0), RawSample(75_000_000, 100_000_000)) == 25.0
    # Idle longer than the interval (two clocks read apart): clamped, as Windows does.
    assert inverse_timer_percent(RawSample(0, 0), RawSample(11, 10)) == 0.0


@given(st.integers(0, 2**62), st.integers(0, 2**40), ticks, st.integers(1, 2**40))
def test_a_rate_times_its_interval_is_the_increase(
    before: int, increase: int, at: int, elapsed: int
) -> None:
    rate = bulk_count_rate(RawSample(before, at), RawSample(before + increase, at + elapsed))
    assert rate is not None
    seconds = elapsed / 10_000_000
    assert abs(rate * seconds - increase) <= 1e-6 * max(1, increase)


def test_a_reset_or_no_time_gives_no_rate() -> None:
    assert bulk_count_rate(RawSample(100, 0), RawSample(50, 10_000_000)) is None
    assert bulk_count_rate(RawSample(100, 10), RawSample(200, 10)) is None
    assert bulk_count_rate(RawSample(100, 10), RawSample(200, 5)) is None
