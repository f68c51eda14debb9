"""When monitors are due: first and next due times, retry waits (property tests)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.config import AgentlessSettings, settings_from_mapping
from lunasentri_core.errors import ConfigError, InvalidValue
from lunasentri_core.services.scheduling import (
    CATCH_UP_SPREAD,
    first_due,
    next_due,
    retry_delay,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)
intervals = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=1))
seeds = st.integers(0, 2**32)


@given(due_at=instants, interval=intervals, now=instants, seed=seeds)
def test_next_due_keeps_the_phase_or_comes_soon_after_now(
    due_at: datetime, interval: timedelta, now: datetime, seed: int
) -> None:
    due = next_due(due_at, interval, now, random.Random(seed))
    if due_at + interval > now:
        # On time (or a little late): one interval after the due time polled for, so
        # monitors keep their places in the spread and never drift.
        assert due == due_at + interval
    else:
        # An interval or more behind: no catch-up polls, the next one soon.
        assert now <= due <= now + interval * CATCH_UP_SPREAD
    assert due > due_at  # a poll never makes its monitor due again at the same time


@given(due_at=instants, interval=intervals, steps=st.lists(st.floats(0, 0.99), max_size=20))
def test_a_monitor_polled_on_time_is_due_every_interval(
    due_at: datetime, interval: timedelta, steps: list[float]
) -> None:
    # However late within its interval each poll finishes, the due times form a grid.
    start = due = due_at
    for index, lag in enumerate(steps, start=1):
        now = due + interval * lag
        due = next_due(due, interval, now)
        assert due == start + interval * index


@given(now=instants, interval=intervals, seed=seeds)
def test_first_due_is_within_the_first_interval(
    now: datetime, interval: timedelta, seed: int
) -> None:
    assert now <= first_due(now, interval, random.Random(seed)) < now + interval


def test_first_due_spreads_monitors_over_their_interval() -> None:
    rng = random.Random(13)
    interval = timedelta(seconds=60)
    offsets = [(first_due(T0, interval, rng) - T0).total_seconds() for _ in range(6000)]
    per_ten_seconds = [sum(1 for o in offsets if k * 10 <= o < (k + 1) * 10) for k in range(6)]
    # 1000 expected in each sixth of the minute; a burst would put them all in one.
    assert all(800 < count < 1200 for count in per_ten_seconds), per_ten_seconds


@given(retry=st.integers(1, 10), base_ms=st.integers(1, 60_000), seed=seeds)
def test_retry_delays_grow_exponentially_with_jitter(retry: int, base_ms: int, seed: int) -> None:
    base = timedelta(milliseconds=base_ms)
    delay = retry_delay(retry, base, random.Random(seed))
    nominal = base * 2 ** (retry - 1)
    assert nominal * 0.5 <= delay <= nominal * 1.5


def test_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(0, timedelta(seconds=1))


def test_the_default_lease_outlasts_the_longest_poll() -> None:
    settings = AgentlessSettings()
    assert settings.longest_poll == timedelta(seconds=30 * 3 + 1.5 * (1 + 2))
    assert settings.effective_lease > settings.longest_poll
    explicit = AgentlessSettings(lease=timedelta(minutes=5))
    assert explicit.effective_lease == timedelta(minutes=5)


def test_a_lease_shorter_than_a_poll_is_refused() -> None:
    with pytest.raises(InvalidValue, match="longer than a poll can take"):
        AgentlessSettings(poll_timeout=timedelta(seconds=30), lease=timedelta(seconds=60))


def test_agentless_settings_are_read_from_their_table() -> None:
    settings = settings_from_mapping(
        {"agentless": {"workers": 16, "poll_timeout": "10s", "retries": 0, "tick": 0.5}}
    )
    assert settings.agentless.workers == 16
    assert settings.agentless.longest_poll == timedelta(seconds=10)
    assert settings.agentless.tick == timedelta(milliseconds=500)
    with pytest.raises(ConfigError, match=r"agentless\.lease"):
        settings_from_mapping({"agentless": {"lease": "5s"}})
    with pytest.raises(ConfigError, match=r"agentless\.workers"):
        settings_from_mapping({"agentless": {"workers": 0}})
