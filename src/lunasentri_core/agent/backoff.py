"""Waiting between failed attempts: exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from datetime import UTC, datetime

MAX_RETRY_AFTER = 3600.0
"""A server asking for a longer pause than this is probably wrong; ask again after it."""


class Backoff:
    """Delays of ``uniform(0, min(cap, base * 2**attempt))`` ("full jitter").

    Full jitter spreads a fleet of agents that lost the same server over the whole
    window, so they do not come back in lockstep when it returns.
    """

    def __init__(
        self, *, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempts, 62))
        self.attempts += 1
        return self._rng() * ceiling

    def reset(self) -> None:
        self.attempts = 0


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or _utcnow)()).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _utcnow() -> datetime:
    return datetime.now(UTC)
