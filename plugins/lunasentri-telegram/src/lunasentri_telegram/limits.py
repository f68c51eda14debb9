"""Telegram's sending limits, kept by one notifier for every send of the process.

The Bot FAQ gives three: about one message a second to one chat, 20 a minute
to one group or channel, about 30 a second from one bot overall. Each is a
sliding window ("at most N in any W seconds") over the times of the sends,
including sends that were granted a slot in the future and are waiting for it.
A 429 answer blocks its chat for the ``retry_after`` Telegram gave.

A limiter cannot see the sends of the process before a restart (or of another
process), so it counts every chat's window as full at the moment it was made:
its first send to any chat waits out that first second. Every send of the
process then comes at least a second after the start, which keeps the bot's
one-second window too; a group's minute is left to Telegram's 429.

A send whose slot is further away than it may wait is refused, to be retried
later. With a ``booking`` key (the notification's id) the refused send still
books that slot, and its retry gets it: a storm of alerts to one chat is spread
over distinct slots instead of every retry coming back at the same moment.

Every method takes a lock and never awaits, so one limiter serves threads and
tasks on any number of event loops.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Hashable

import attrs

Clock = Callable[[], float]

_SWEEP_AT = 4096
"""Number of tracked keys past which idle ones are dropped (at least)."""
BOOKING_GRACE = 300.0
"""Seconds past its slot that a booking is kept for a late retry."""


@attrs.frozen
class Window:
    """At most ``limit`` sends in any ``seconds``."""

    limit: int
    seconds: float


@attrs.frozen
class Slot:
    """A limiter's answer: send after ``delay`` seconds, or (not granted) try again then."""

    granted: bool
    delay: float


@attrs.define
class _Log:
    times: list[float] = attrs.field(factory=list)
    """Sorted times of the sends that still count against a window."""
    blocked_until: float = float("-inf")

    def admits(self, at: float, window: Window) -> bool:
        # Counting both sides of `at` keeps sends granted for later honest too.
        first = bisect_right(self.times, at - window.seconds)
        last = bisect_left(self.times, at + window.seconds)
        return last - first < window.limit

    def forget_before(self, moment: float) -> None:
        del self.times[: bisect_right(self.times, moment)]

    def idle(self, now: float) -> bool:
        return not self.times and self.blocked_until <= now


class RateLimiter:
    """Hands out send slots for (bot, chat) pairs under the three windows."""

    def __init__(
        self, *, per_chat: Window, per_group: Window, per_bot: Window, clock: Clock = time.monotonic
    ) -> None:
        self.per_chat = per_chat
        self.per_group = per_group
        self.per_bot = per_bot
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._logs: dict[Hashable, tuple[_Log, Window]] = {}
        self._bookings: dict[Hashable, tuple[str, int | str, float]] = {}
        self._sweep_at = _SWEEP_AT

    def acquire(
        self, bot: str, chat: int | str, *, max_wait: float, booking: Hashable | None = None
    ) -> Slot:
        """Reserve the earliest slot for one message from ``bot`` to ``chat``.

        Granted when it is at most ``max_wait`` seconds away; otherwise refused,
        with ``delay`` saying when to ask again. A refused request with a
        ``booking`` key keeps that slot for the next request with the same key;
        without one nothing is reserved.
        """
        with self._lock:
            now = self._clock()
            self._sweep(now)
            booked = self._bookings.get(booking) if booking is not None else None
            if booked is not None and booked[:2] == (bot, chat):
                at = booked[2]
                if at - now > max_wait:
                    return Slot(granted=False, delay=at - now)
                del self._bookings[booking]
                return Slot(granted=True, delay=max(0.0, at - now))
            logs = self._logs_for(bot, chat, now)
            at = self._earliest(logs, now)
            if at - now > max_wait and booking is None:
                return Slot(granted=False, delay=at - now)
            for log, _ in logs:
                insort(log.times, at)
            if at - now > max_wait:
                self._bookings[booking] = (bot, chat, at)
                return Slot(granted=False, delay=at - now)
            return Slot(granted=True, delay=at - now)

    def block(self, bot: str, chat: int | str, seconds: float) -> None:
        """Keep ``chat`` closed for ``seconds`` (Telegram answered 429 with retry_after)."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            log, _ = self._chat_log(bot, chat, now)
            log.blocked_until = max(log.blocked_until, now + seconds)
            # Slots booked before Telegram said to stop are void; retries book anew.
            for key, (booked_bot, booked_chat, _) in list(self._bookings.items()):
                if (booked_bot, booked_chat) == (bot, chat):
                    del self._bookings[key]

    def _logs_for(self, bot: str, chat: int | str, now: float) -> list[tuple[_Log, Window]]:
        logs = [
            self._log(("bot", bot), self.per_bot, now),
            self._chat_log(bot, chat, now),
        ]
        if is_group(chat):
            logs.append(self._log(("group", bot, chat), self.per_group, now))
        return logs

    def _chat_log(self, bot: str, chat: int | str, now: float) -> tuple[_Log, Window]:
        # Sends from before this limiter began are unseen: count the window as
        # full at the start. A log swept as idle is past that, so its new seed
        # is dropped at once.
        seed = [self._started] * self.per_chat.limit
        return self._log(("chat", bot, chat), self.per_chat, now, seed=seed)

    def _log(
        self, key: Hashable, window: Window, now: float, *, seed: list[float] | None = None
    ) -> tuple[_Log, Window]:
        entry = self._logs.get(key)
        if entry is None:
            entry = self._logs[key] = (_Log(times=seed or []), window)
        entry[0].forget_before(now - window.seconds)
        return entry

    def _sweep(self, now: float) -> None:
        # Only between operations: a log dropped while one holds it would lose sends.
        if len(self._logs) + len(self._bookings) < self._sweep_at:
            return
        for key, (log, window) in list(self._logs.items()):
            log.forget_before(now - window.seconds)
            if log.idle(now):
                del self._logs[key]
        for key, (_, _, at) in list(self._bookings.items()):
            if at < now - BOOKING_GRACE:
                del self._bookings[key]
        # Sweep again only when the live keys have doubled: each sweep then
        # costs no more than the keys added since the last one.
        self._sweep_at = max(_SWEEP_AT, 2 * (len(self._logs) + len(self._bookings)))

    @staticmethod
    def _earliest(logs: list[tuple[_Log, Window]], now: float) -> float:
        start = max(now, *(log.blocked_until for log, _ in logs))
        if all(log.admits(start, window) for log, window in logs):
            return start
        # A window opens up again `seconds` after one of its sends, so the
        # earliest free slot is the start or one of those moments; the last
        # of them is free in every window.
        candidates = {start}
        for log, window in logs:
            candidates.update(t + window.seconds for t in log.times if t + window.seconds > start)
        for at in sorted(candidates):
            if all(log.admits(at, window) for log, window in logs):
                return at
        raise AssertionError("unreachable: the latest candidate is free in every window")


def is_group(chat: int | str) -> bool:
    """Groups, supergroups and channels have negative ids; only channels have @names."""
    return isinstance(chat, str) or chat < 0
