"""Backoff delays and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lunasentri_core.agent.backoff import MAX_RETRY_AFTER, Backoff, parse_retry_after


def test_full_jitter_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=10.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_jitter_spans_zero_to_the_ceiling() -> None:
    low = Backoff(base=2.0, cap=100.0, rng=lambda: 0.0)
    half = Backoff(base=2.0, cap=100.0, rng=lambda: 0.5)
    assert [low.next_delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [half.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]


def test_real_randomness_stays_within_bounds() -> None:
    backoff = Backoff(base=1.0, cap=5.0)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 100


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(base=1.0, cap=300.0, rng=lambda: 1.0)
    backoff.attempts = 10_000
    assert backoff.next_delay() == 300.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("999999", MAX_RETRY_AFTER),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
    ],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    def now() -> datetime:
        return datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)

    assert parse_retry_after(header, now) == expected
