"""Ingest: what a batch of samples must pass before the hub stores it.

The codec has already checked types, names and finiteness. Here come the checks
that need the server's settings and clock: the number of readings in a request,
the timestamp window, and a per-machine token bucket. A batch that fails any
of them is refused whole; nothing of it is stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from lunasentri_core.errors import FieldError, LunaSentriError, ValidationError
from lunasentri_core.model import Sample

if TYPE_CHECKING:
    from lunasentri_core.config import ServerSettings
    from lunasentri_core.hub import Sentri

MAX_REPORTED = 20
"""Timestamp errors listed per refused batch (the rest are counted)."""


@attrs.frozen
class IngestBatch:
    """The body of ``POST /api/v1/ingest``."""

    samples: tuple[Sample, ...]


class BatchTooLargeError(LunaSentriError):
    """More readings in one request than the server takes."""

    def __init__(self, points: int, limit: int, why: str) -> None:
        super().__init__(f"{points} readings in one request; at most {limit} ({why})")
        self.points = points
        self.limit = limit


class RateLimitedError(LunaSentriError):
    """The machine sends faster than its rate; ``retry_after`` seconds until it may."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("this machine is sending faster than the server's ingest rate")
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class TokenBucket:
    """Per-key token buckets: ``rate`` tokens a second, at most ``burst`` saved up.

    A rate of 0 or less disables the limit. Buckets that have refilled are
    forgotten once there are many, so memory follows the active machines.
    Not thread-safe: call it from the event loop.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait(self, key: str, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are there (0: now), without taking any."""
        if not self.enabled:
            return 0.0
        missing = amount - self._level(key, self._clock())
        return missing / self.rate if missing > 0 else 0.0

    def take(self, key: str, amount: float) -> float:
        """Take ``amount`` tokens and return 0, or return the seconds until there are enough."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        level = self._level(key, now)
        if amount > level:
            return (amount - level) / self.rate
        self._buckets[key] = (level - amount, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return 0.0

    def give_back(self, key: str, amount: float) -> None:
        """Return tokens taken for work that did not happen."""
        if self.enabled and key in self._buckets:
            now = self._clock()
            self._buckets[key] = (min(self.burst, self._level(key, now) + amount), now)

    def _level(self, key: str, now: float) -> float:
        found = self._buckets.get(key)
        if found is None:
            return self.burst
        tokens, at = found
        return min(self.burst, tokens + (now - at) * self.rate)

    def _forget_full(self, now: float) -> None:
        full = [key for key in self._buckets if self._level(key, now) >= self.burst]
        for key in full:
            del self._buckets[key]


def count_points(samples: Sequence[Sample]) -> int:
    return sum(len(sample.readings) for sample in samples)


def check_window(
    samples: Sequence[Sample], now: datetime, max_skew: timedelta, max_age: timedelta
) -> None:
    """Refuse timestamps too far in the future or the past, naming each sample."""
    latest, earliest = now + max_skew, now - max_age
    bad = [
        (index, sample.timestamp)
        for index, sample in enumerate(samples)
        if not earliest <= sample.timestamp <= latest
    ]
    if not bad:
        return
    errors = [
        FieldError(f"samples[{index}].timestamp", _window_problem(at, now, max_skew, max_age))
        for index, at in bad[:MAX_REPORTED]
    ]
    if len(bad) > MAX_REPORTED:
        errors.append(FieldError("samples", f"and {len(bad) - MAX_REPORTED} more timestamps"))
    raise ValidationError(errors, what="request body")


def _window_problem(at: datetime, now: datetime, max_skew: timedelta, max_age: timedelta) -> str:
    if at > now:
        return (
            f"{at.isoformat()} is more than {_seconds(max_skew)} s ahead of the server's "
            f"clock ({now.isoformat()}); check the machine's clock"
        )
    return f"{at.isoformat()} is older than the {_seconds(max_age)} s the server accepts"


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}"


class Ingestor:
    """Checks batches against the server's limits and hands them to the hub."""

    def __init__(
        self,
        hub: Sentri,
        settings: ServerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.limiter = TokenBucket(settings.ingest_rate, settings.ingest_burst, clock=clock)

    def admit(self, machine_id: str) -> None:
        """Refuse a machine whose bucket is empty before its body is even read."""
        wait = self.limiter.wait(machine_id)
        if wait > 0:
            raise RateLimitedError(wait)

    async def ingest(self, machine_id: str, samples: Sequence[Sample]) -> int:
        """Check ``samples`` and store them; returns the points, once committed."""
        if not samples:
            raise ValidationError(
                [FieldError("samples", "at least one sample is required")], what="request body"
            )
        points = count_points(samples)
        self._check_size(points)
        check_window(
            samples, self.hub.clock(), self.settings.max_clock_skew, self.settings.max_sample_age
        )
        wait = self.limiter.take(machine_id, points)
        if wait > 0:
            raise RateLimitedError(wait)
        try:
            return await self.hub.ingest(machine_id, samples)
        except BaseException:
            self.limiter.give_back(machine_id, points)
            raise

    def _check_size(self, points: int) -> None:
        limit = self.settings.max_batch_points
        if points > limit:
            raise BatchTooLargeError(points, limit, "server.max_batch_points")
        if self.limiter.enabled and points > self.limiter.burst:
            # Such a batch could never pass the token bucket: say so instead of 429.
            raise BatchTooLargeError(points, int(self.limiter.burst), "server.ingest_burst")
