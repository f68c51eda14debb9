"""The rate limiter on a fake clock: Telegram's three windows, 429 blocks, threads."""

from __future__ import annotations

import threading

import pytest
from support import SETTLED, FakeClock

from lunasentri_telegram.limits import BOOKING_GRACE, RateLimiter, Window, is_group

BOT = "7000000001"
USER, OTHER_USER, GROUP = 111, 222, -100111


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    """A limiter that has been up past the first second it holds every chat back."""
    made = RateLimiter(
        per_chat=Window(1, 1.0), per_group=Window(20, 60.0), per_bot=Window(30, 1.0), clock=clock
    )
    clock.now += SETTLED
    return made


def delays(limiter: RateLimiter, chat: int | str, count: int, max_wait: float = 1e9) -> list[float]:
    slots = [limiter.acquire(BOT, chat, max_wait=max_wait) for _ in range(count)]
    assert all(slot.granted for slot in slots)
    return [slot.delay for slot in slots]


def test_a_burst_to_one_chat_is_spaced_a_second_apart(limiter: RateLimiter) -> None:
    assert delays(limiter, USER, 5) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_chats_do_not_wait_for_each_other(limiter: RateLimiter) -> None:
    assert delays(limiter, USER, 2) == [0.0, 1.0]
    assert delays(limiter, OTHER_USER, 1) == [0.0]


def test_a_slot_too_far_away_is_refused_without_reserving_it(limiter: RateLimiter) -> None:
    assert delays(limiter, USER, 3, max_wait=2.0) == [0.0, 1.0, 2.0]
    refused = [limiter.acquire(BOT, USER, max_wait=2.0) for _ in range(2)]
    assert [(slot.granted, slot.delay) for slot in refused] == [(False, 3.0), (False, 3.0)]


def test_refused_sends_with_a_booking_get_distinct_later_slots(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    asked = [limiter.acquire(BOT, USER, max_wait=2.0, booking=f"n{n}") for n in range(8)]
    assert [slot.granted for slot in asked] == [True] * 3 + [False] * 5
    assert [slot.delay for slot in asked] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # Asking again early is refused with the same slot; a request without a
    # booking queues behind all of them.
    assert limiter.acquire(BOT, USER, max_wait=2.0, booking="n7").delay == 7.0
    assert limiter.acquire(BOT, USER, max_wait=0.0).delay == 8.0
    clock.now += 5.5
    again = limiter.acquire(BOT, USER, max_wait=2.0, booking="n7")
    assert (again.granted, again.delay) == (True, 1.5)
    late = limiter.acquire(BOT, USER, max_wait=2.0, booking="n3")
    assert (late.granted, late.delay) == (True, 0.0)


def test_a_booking_is_for_its_own_chat_only(limiter: RateLimiter) -> None:
    delays(limiter, USER, 1)
    assert not limiter.acquire(BOT, USER, max_wait=0.0, booking="n").granted
    assert limiter.acquire(BOT, OTHER_USER, max_wait=0.0, booking="n").granted


def test_a_429_voids_the_chats_bookings(limiter: RateLimiter) -> None:
    delays(limiter, USER, 1)
    assert limiter.acquire(BOT, USER, max_wait=0.0, booking="n").delay == 1.0
    limiter.block(BOT, USER, 30)
    assert limiter.acquire(BOT, USER, max_wait=0.0, booking="n").delay == 30.0


def test_forgotten_bookings_are_dropped(clock: FakeClock) -> None:
    limiter = RateLimiter(
        per_chat=Window(1, 1.0), per_group=Window(20, 60.0), per_bot=Window(10**6, 1.0), clock=clock
    )
    for chat in range(3000):
        limiter.acquire(BOT, chat, max_wait=0)
        limiter.acquire(BOT, chat, max_wait=0, booking=chat)
    clock.now += BOOKING_GRACE + 2
    for chat in range(3000, 6000):
        limiter.acquire(BOT, chat, max_wait=0)
    assert len(limiter._bookings) == 0


def test_time_frees_the_slots(limiter: RateLimiter, clock: FakeClock) -> None:
    delays(limiter, USER, 3)
    clock.now += 10
    assert delays(limiter, USER, 2) == [0.0, 1.0]


def test_a_group_gets_twenty_a_minute(limiter: RateLimiter, clock: FakeClock) -> None:
    start = clock.now
    sent_at = []
    for _ in range(23):
        slot = limiter.acquire(BOT, GROUP, max_wait=1e9)
        clock.now += slot.delay
        sent_at.append(clock.now - start)
    assert sent_at[:20] == [float(n) for n in range(20)]
    assert sent_at[20:] == [60.0, 61.0, 62.0]


def test_any_window_of_a_minute_holds_at_most_twenty_group_messages(
    limiter: RateLimiter,
) -> None:
    # Granted in advance, as concurrent sends are: each waits for its own slot.
    at = sorted(delays(limiter, GROUP, 45))
    for first in at:
        assert sum(1 for t in at if first <= t < first + 60) <= 20


def test_a_bot_sends_thirty_a_second_over_all_its_chats(limiter: RateLimiter) -> None:
    first = [limiter.acquire(BOT, 1000 + n, max_wait=10).delay for n in range(35)]
    assert first[:30] == [0.0] * 30
    assert first[30:] == [1.0] * 5
    # Another bot has its own budget.
    assert limiter.acquire("7000000002", 1000, max_wait=0).granted


def test_a_429_closes_the_chat_for_retry_after(limiter: RateLimiter, clock: FakeClock) -> None:
    limiter.block(BOT, USER, 7)
    refused = limiter.acquire(BOT, USER, max_wait=5)
    assert (refused.granted, refused.delay) == (False, 7.0)
    assert limiter.acquire(BOT, OTHER_USER, max_wait=0).granted
    clock.now += 7
    assert limiter.acquire(BOT, USER, max_wait=0).granted


def test_a_429_within_max_wait_is_waited_for(limiter: RateLimiter) -> None:
    limiter.block(BOT, USER, 2)
    assert delays(limiter, USER, 2, max_wait=5) == [2.0, 3.0]


def test_threads_share_the_windows(limiter: RateLimiter) -> None:
    got: list[float] = []
    lock = threading.Lock()

    def burst() -> None:
        for _ in range(10):
            slot = limiter.acquire(BOT, USER, max_wait=1e9)
            with lock:
                got.append(slot.delay)

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [float(n) for n in range(80)]


def test_idle_chats_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(
        per_chat=Window(1, 1.0), per_group=Window(20, 60.0), per_bot=Window(10**6, 1.0), clock=clock
    )
    for chat in range(5000):
        limiter.acquire(BOT, chat, max_wait=0)
    clock.now += 2
    for chat in range(5000, 10_000):
        limiter.acquire(BOT, chat, max_wait=0)
    # The first 5000 went idle and were dropped; the bot's own log stays.
    assert len(limiter._logs) <= 5001
    assert limiter.acquire(BOT, 0, max_wait=0).granted


def test_a_new_limiter_counts_each_chat_as_sent_to_when_it_started(clock: FakeClock) -> None:
    # The process before a restart may have sent to any chat just before this
    # one began; its sends are unseen here.
    started = clock.now
    limiter = RateLimiter(
        per_chat=Window(1, 1.0), per_group=Window(20, 60.0), per_bot=Window(30, 1.0), clock=clock
    )
    assert delays(limiter, USER, 3) == [1.0, 2.0, 3.0]
    assert delays(limiter, GROUP, 1) == [1.0]
    clock.now = started + 0.5
    assert delays(limiter, OTHER_USER, 1) == [0.5]
    clock.now = started + 10
    assert delays(limiter, 333, 1) == [0.0]


def test_a_new_limiter_holds_every_slot_of_a_chats_first_second(clock: FakeClock) -> None:
    limiter = RateLimiter(
        per_chat=Window(3, 1.0), per_group=Window(20, 60.0), per_bot=Window(30, 1.0), clock=clock
    )
    assert delays(limiter, USER, 4) == [1.0, 1.0, 1.0, 2.0]


def test_a_429_right_after_the_start_blocks_for_retry_after(clock: FakeClock) -> None:
    limiter = RateLimiter(
        per_chat=Window(1, 1.0), per_group=Window(20, 60.0), per_bot=Window(30, 1.0), clock=clock
    )
    limiter.block(BOT, USER, 5)
    assert delays(limiter, USER, 2) == [5.0, 6.0]


@pytest.mark.parametrize(
    ("chat", "group"), [(123, False), (-123, True), (-1001234567890, True), ("@alerts", True)]
)
def test_groups_and_channels_are_told_by_their_id(chat: int | str, group: bool) -> None:
    assert is_group(chat) is group
