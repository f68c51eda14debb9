"""The notifier and entry-point contracts of the LunaSentri test kit."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from botapi_server import BLOCKED, CHANNEL, CHANNEL_USERNAME, PRIVATE, BotApiServer
from support import FakeClock, channel_config, settled_notifier

from lunasentri_core.testing import EntryPointContract, NotifierContract, ReceivedMessage
from lunasentri_telegram import TelegramNotifier


def received_by(bot_api: BotApiServer, chat_id: int) -> Callable[[], Sequence[ReceivedMessage]]:
    # Telegram carries no delivery id, so there is no idempotency key to report.
    return lambda: [
        ReceivedMessage(body=sent.text, idempotency_key=None, raw=sent)
        for sent in bot_api.messages(chat_id)
    ]


class TestTelegramNotifier(NotifierContract):
    supports_idempotency_key = False

    @pytest.fixture
    def notifier(self, bot_api: BotApiServer, clock: FakeClock) -> TelegramNotifier:
        return settled_notifier(bot_api, clock)

    @pytest.fixture
    def channel(self) -> Mapping[str, Any]:
        return channel_config(PRIVATE)

    @pytest.fixture
    def received(self, bot_api: BotApiServer) -> Callable[[], Sequence[ReceivedMessage]]:
        return received_by(bot_api, PRIVATE)

    @pytest.fixture
    def failing_channel(self) -> Mapping[str, Any]:
        return channel_config(BLOCKED)


class TestTelegramNotifierToAChannelByUsername(TestTelegramNotifier):
    @pytest.fixture
    def channel(self) -> Mapping[str, Any]:
        return channel_config(f"@{CHANNEL_USERNAME}", disable_notification=True)

    @pytest.fixture
    def received(self, bot_api: BotApiServer) -> Callable[[], Sequence[ReceivedMessage]]:
        return received_by(bot_api, CHANNEL)


class TestTelegramEntryPoint(EntryPointContract):
    plugin = "telegram"
    distribution = "lunasentri-telegram"
    components = frozenset({"notifier:telegram"})
