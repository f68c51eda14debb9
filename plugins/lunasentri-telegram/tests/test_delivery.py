"""What each Bot API answer makes of a delivery, and how sends keep Telegram's limits."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from botapi_server import (
    BLOCKED,
    FORUM,
    FORUM_TOPIC,
    GROUP,
    KICKED,
    OLD_GROUP,
    OTHER_BOT_TOKEN,
    PRIVATE,
    SUPERGROUP,
    TOKEN,
    UNKNOWN,
    BotApiServer,
    Scripted,
)
from support import FakeClock, channel_config, closed_port, settings_for, settled_notifier

from lunasentri_core import DeliveryResult, DeliveryStatus, Notification
from lunasentri_core.testing import make_notification
from lunasentri_telegram import TelegramNotifier


def send(notifier: TelegramNotifier, config: dict[str, Any]) -> DeliveryResult:
    return anyio.run(notifier.send, config, make_notification())


def test_the_request_carries_the_channel_options(
    telegram: TelegramNotifier, bot_api: BotApiServer
) -> None:
    config = channel_config(FORUM, message_thread_id=FORUM_TOPIC, disable_notification=True)
    result = send(telegram, config)
    assert result == DeliveryResult(DeliveryStatus.DELIVERED, "message 1")
    (sent,) = bot_api.messages(FORUM)
    assert sent.content_type == "application/json"
    assert sent.parameters["parse_mode"] == "HTML"
    assert sent.parameters["link_preview_options"] == {"is_disabled": True}
    assert sent.parameters["message_thread_id"] == FORUM_TOPIC
    assert sent.parameters["disable_notification"] is True


def test_optional_fields_are_left_out_when_unset(
    telegram: TelegramNotifier, bot_api: BotApiServer
) -> None:
    assert send(telegram, channel_config(PRIVATE)).status is DeliveryStatus.DELIVERED
    (sent,) = bot_api.messages(PRIVATE)
    assert "message_thread_id" not in sent.parameters
    assert "disable_notification" not in sent.parameters


# ------------------------------------------------------------------ answers


def test_429_is_retried_after_what_telegram_says(
    telegram: TelegramNotifier, bot_api: BotApiServer, clock: FakeClock
) -> None:
    bot_api.script(Scripted(429, "Too Many Requests: retry after 7", {"retry_after": 7}))
    result = send(telegram, channel_config(PRIVATE))
    assert result.status is DeliveryStatus.RETRY
    assert result.retry_after == 7.0
    assert "Too Many Requests" in result.detail

    # The chat stays closed for those 7 s: the next send does not even ask.
    asked = bot_api.request_count()
    again = send(telegram, channel_config(PRIVATE))
    assert (again.status, again.retry_after) == (DeliveryStatus.RETRY, 7.0)
    assert bot_api.request_count() == asked
    # Another chat of the same bot is not held up.
    assert send(telegram, channel_config(GROUP)).status is DeliveryStatus.DELIVERED

    clock.now += 7
    assert send(telegram, channel_config(PRIVATE)).status is DeliveryStatus.DELIVERED
    assert len(bot_api.messages(PRIVATE)) == 1


def test_a_short_429_is_waited_out_by_the_next_send(
    telegram: TelegramNotifier, bot_api: BotApiServer, clock: FakeClock
) -> None:
    bot_api.script(Scripted(429, "Too Many Requests: retry after 3", {"retry_after": 3}))
    assert send(telegram, channel_config(PRIVATE)).retry_after == 3.0
    assert send(telegram, channel_config(PRIVATE)).status is DeliveryStatus.DELIVERED
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize(
    "scripted",
    [
        Scripted(500, "Internal Server Error"),
        Scripted(502, "Bad Gateway"),
        Scripted(502, raw="<html><body>502 Bad Gateway</body></html>"),
    ],
)
def test_server_errors_are_retried(
    telegram: TelegramNotifier, bot_api: BotApiServer, scripted: Scripted
) -> None:
    bot_api.script(scripted)
    result = send(telegram, channel_config(PRIVATE))
    assert result.status is DeliveryStatus.RETRY
    assert result.retry_after is None
    assert send(telegram, channel_config(PRIVATE)).status is DeliveryStatus.DELIVERED


def test_an_unreachable_api_is_retried(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock, api_url=f"http://127.0.0.1:{closed_port()}")
    result = send(notifier, channel_config(PRIVATE))
    assert result.status is DeliveryStatus.RETRY
    assert result.detail.startswith("Bot API unreachable: ConnectError")


def test_a_slow_api_times_out_and_is_retried(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock, timeout=timedelta(seconds=0.2))
    bot_api.script(Scripted(delay=2.0))
    result = send(notifier, channel_config(PRIVATE))
    assert result.status is DeliveryStatus.RETRY
    assert "no answer within 0.2 s" in result.detail


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (channel_config(BLOCKED), "Forbidden: bot was blocked by the user"),
        (channel_config(KICKED), "Forbidden: bot was kicked from the supergroup chat"),
        (channel_config(UNKNOWN), "Bad Request: chat not found"),
        (channel_config("@nobody_here"), "Bad Request: chat not found"),
        (channel_config(FORUM, message_thread_id=99), "Bad Request: message thread not found"),
        ({"bot_token": OTHER_BOT_TOKEN, "chat_id": PRIVATE}, "Unauthorized"),
    ],
)
def test_a_chat_the_bot_cannot_post_to_disables_the_channel(
    telegram: TelegramNotifier, bot_api: BotApiServer, config: dict[str, Any], reason: str
) -> None:
    result = send(telegram, config)
    assert result.status is DeliveryStatus.DISABLE_CHANNEL
    assert reason in result.detail
    assert not bot_api.sent


def test_a_revoked_token_says_to_get_a_new_one(telegram: TelegramNotifier) -> None:
    result = send(telegram, {"bot_token": OTHER_BOT_TOKEN, "chat_id": PRIVATE})
    assert "@BotFather" in result.detail


@pytest.mark.parametrize(
    "description",
    ["Bad Request: TOPIC_CLOSED", "Bad Request: can't parse entities: Unsupported start tag"],
)
def test_other_bad_requests_fail_with_telegrams_description(
    telegram: TelegramNotifier, bot_api: BotApiServer, description: str
) -> None:
    bot_api.script(Scripted(400, description))
    result = send(telegram, channel_config(PRIVATE))
    assert result == DeliveryResult(DeliveryStatus.FAILED, f"Telegram: {description}")


def test_a_wrong_api_url_fails_and_says_so(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock, api_url=f"{bot_api.url}/wrong/prefix")
    result = send(notifier, channel_config(PRIVATE))
    assert result.status is DeliveryStatus.FAILED
    assert "api_url" in result.detail


def test_an_upgraded_group_is_followed_to_its_supergroup(
    telegram: TelegramNotifier, bot_api: BotApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lunasentri_telegram"):
        result = send(telegram, channel_config(OLD_GROUP))
    assert result.status is DeliveryStatus.DELIVERED
    assert "update the channel's chat_id" in result.detail
    assert str(SUPERGROUP) in result.detail
    assert len(bot_api.messages(SUPERGROUP)) == 1
    assert f"set the channel's chat_id to {SUPERGROUP}" in caplog.text


def test_a_stored_config_that_no_longer_decodes_fails_naming_the_field(
    telegram: TelegramNotifier, bot_api: BotApiServer
) -> None:
    result = send(telegram, {"bot_token": "oops", "chat_id": PRIVATE})
    assert result.status is DeliveryStatus.FAILED
    assert "bot_token" in result.detail
    assert not bot_api.requests


# ------------------------------------------------------------------ limits


def test_a_burst_to_one_chat_is_spaced(
    telegram: TelegramNotifier, bot_api: BotApiServer, clock: FakeClock
) -> None:
    clock.advance_on_sleep = False  # all four ask at the same moment

    async def burst() -> list[DeliveryResult]:
        results: list[DeliveryResult] = []

        async def one() -> None:
            results.append(await telegram.send(channel_config(PRIVATE), make_notification()))

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)
        return results

    results = anyio.run(burst)
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 4
    assert sorted(clock.sleeps) == [1.0, 2.0, 3.0]
    assert len(bot_api.messages(PRIVATE)) == 4


def test_sends_beyond_max_wait_are_retried_later_not_waited_for(
    bot_api: BotApiServer, clock: FakeClock
) -> None:
    notifier = settled_notifier(bot_api, clock, max_wait=timedelta(seconds=2))
    clock.advance_on_sleep = False
    results = [send(notifier, channel_config(PRIVATE)) for _ in range(4)]
    assert [r.status for r in results[:3]] == [DeliveryStatus.DELIVERED] * 3
    assert (results[3].status, results[3].retry_after) == (DeliveryStatus.RETRY, 3.0)
    assert "rate limit" in results[3].detail
    assert len(bot_api.messages(PRIVATE)) == 3


def test_a_storm_to_one_chat_is_spread_over_the_retries(
    bot_api: BotApiServer, clock: FakeClock
) -> None:
    notifier = settled_notifier(bot_api, clock, max_wait=timedelta(seconds=2))
    clock.advance_on_sleep = False
    storm = [make_notification() for _ in range(8)]

    def deliver(notification: Notification) -> DeliveryResult:
        return anyio.run(notifier.send, channel_config(PRIVATE), notification)

    first = [deliver(notification) for notification in storm]
    assert [r.status for r in first] == [DeliveryStatus.DELIVERED] * 3 + [DeliveryStatus.RETRY] * 5
    # Each refused send is told a slot of its own, not one moment for all.
    retry_at = {
        n.id: clock.now + r.retry_after for n, r in zip(storm, first, strict=True) if r.retry_after
    }
    assert sorted(retry_at.values()) == [clock.now + s for s in (3.0, 4.0, 5.0, 6.0, 7.0)]
    # Retried when told (as the dispatcher does), each goes out at once.
    for notification in sorted(storm[3:], key=lambda n: retry_at[n.id]):
        clock.now = retry_at[notification.id]
        assert deliver(notification).status is DeliveryStatus.DELIVERED
    assert len(bot_api.messages(PRIVATE)) == 8
    assert clock.sleeps == [1.0, 2.0]


def test_a_group_gets_twenty_messages_a_minute(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock, max_wait=timedelta(minutes=2))
    start = clock.now
    sent_at = []
    for _ in range(21):
        assert send(notifier, channel_config(GROUP)).status is DeliveryStatus.DELIVERED
        sent_at.append(clock.now - start)
    assert sent_at[:20] == [float(n) for n in range(20)]
    assert sent_at[20] == 60.0
    assert len(bot_api.messages(GROUP)) == 21


def test_a_restarted_process_keeps_a_second_after_the_last_ones_send(
    bot_api: BotApiServer, clock: FakeClock
) -> None:
    # Each notifier is a process of its own: the limits of the one before are
    # gone, and the next starts a fraction of a second after its last send.
    bot_api.clock = clock
    for chat in (PRIVATE, GROUP):
        for _ in range(3):
            notifier = TelegramNotifier(settings_for(bot_api), clock=clock, sleep=clock.sleep)
            assert send(notifier, channel_config(chat)).status is DeliveryStatus.DELIVERED
            clock.now += 0.1
        times = bot_api.send_times(chat)
        assert len(times) == 3
        assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 1.0, times


def test_only_the_first_second_of_a_process_is_held_back(
    bot_api: BotApiServer, clock: FakeClock
) -> None:
    bot_api.clock = clock
    notifier = TelegramNotifier(settings_for(bot_api), clock=clock, sleep=clock.sleep)
    started = clock.now
    assert send(notifier, channel_config(PRIVATE)).status is DeliveryStatus.DELIVERED
    clock.now += 30
    assert send(notifier, channel_config(GROUP)).status is DeliveryStatus.DELIVERED
    assert bot_api.send_times(PRIVATE) == [started + 1.0]
    assert bot_api.send_times(GROUP) == [started + 31.0]
    assert clock.sleeps == [1.0]


# The notifier of a process of its own: imported, then made and sent with on "go"
# (the hub too makes its notifier at the first delivery, not at start).
ONE_PROCESS = """
import sys
from datetime import timedelta

import anyio

from lunasentri_core.testing import make_notification
from lunasentri_telegram import TelegramNotifier, TelegramSettings

print("ready", flush=True)
sys.stdin.readline()
settings = TelegramSettings(api_url=sys.argv[1], timeout=timedelta(seconds=10))
config = {"bot_token": sys.argv[2], "chat_id": int(sys.argv[3])}
result = anyio.run(TelegramNotifier(settings).send, config, make_notification())
print(result.status.name, flush=True)
"""


def test_a_second_process_keeps_a_second_after_the_firsts_send(bot_api: BotApiServer) -> None:
    # Real processes on the real clock: the stand-in stamps arrivals with the
    # same system-wide monotonic clock the notifiers sleep on.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", ONE_PROCESS, bot_api.url, TOKEN, str(PRIVATE)]
    processes = [
        subprocess.Popen(command, stdin=PIPE, stdout=PIPE, text=True, env=env) for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:  # one after the other, as a restart does
            out, _ = process.communicate("go\n", timeout=60)
            assert out.strip() == "DELIVERED"
    finally:
        for process in processes:
            process.kill()
            process.wait()
    first, second = bot_api.send_times(PRIVATE)
    assert second - first >= 1.0


# ------------------------------------------------------------------ event loops


def test_sends_from_several_event_loops_and_threads(bot_api: BotApiServer) -> None:
    notifier = TelegramNotifier(settings_for(bot_api))
    chats = [PRIVATE, GROUP, FORUM, SUPERGROUP]
    results: dict[int, DeliveryResult] = {}

    def in_own_loop(chat: int) -> None:
        results[chat] = anyio.run(notifier.send, channel_config(chat), make_notification())

    in_own_loop(PRIVATE)  # a loop that has ended by the time the others run
    threads = [threading.Thread(target=in_own_loop, args=(chat,)) for chat in chats[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {chat: r.status for chat, r in results.items()} == dict.fromkeys(
        chats, DeliveryStatus.DELIVERED
    )
