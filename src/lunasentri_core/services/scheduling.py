"""When monitors are polled: first and next due times, and the wait between retries.

Pure functions of time and a random source, so the rules can be tested (and
property-tested) apart from the poller that follows them.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

CATCH_UP_SPREAD = 0.1
"""A monitor that fell a whole interval behind is polled again within this share of
its interval from now: soon, but not all such monitors in the same second."""


def first_due(now: datetime, interval: timedelta, rng: random.Random | None = None) -> datetime:
    """When a new monitor is first due: a random point within its first interval.

    Monitors created together (a discovery's worth) with the same interval are
    spread over it instead of polled in one burst, every interval after.
    """
    return now + interval * (rng or random).random()


def next_due(
    due_at: datetime,
    interval: timedelta,
    now: datetime,
    rng: random.Random | None = None,
) -> datetime:
    """When a monitor polled for ``due_at`` is due next.

    One interval after the due time it was polled for, which keeps its place in
    the spread however long the poll took. If that is already past (the poll took
    longer than an interval, or the poller was down), a missed poll is not made
    up with a burst of catch-up polls: the next one comes soon after ``now``,
    within :data:`CATCH_UP_SPREAD` of an interval.
    """
    following = due_at + interval
    if following > now:
        return following
    return now + interval * CATCH_UP_SPREAD * (rng or random).random()


def retry_delay(retry: int, base: timedelta, rng: random.Random | None = None) -> timedelta:
    """How long to wait before retry number ``retry`` (1 for the first) of a poll.

    Exponential (``base``, twice that, four times...) with jitter of +-50 %, so
    the retries of monitors of one host that failed together do not meet again.
    """
    if retry < 1:
        raise ValueError(f"retries count from 1, got {retry}")
    return base * (1 << (retry - 1)) * (0.5 + (rng or random).random())
