"""The ``telegram`` notifier: one Bot API ``sendMessage`` per delivery."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import anyio

from lunasentri_core import DeliveryResult, DeliveryStatus, Notification, ValidationError
from lunasentri_core.codec import decode
from lunasentri_telegram.api import BotApi, Unreachable, redact
from lunasentri_telegram.config import ChatId, TelegramChannel, TelegramSettings
from lunasentri_telegram.limits import Clock, RateLimiter, Window
from lunasentri_telegram.message import PARSE_MODE, compose
from lunasentri_telegram.responses import interpret, migrated_to, retry_after

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class TelegramNotifier:
    """Sends notifications to Telegram chats through a bot.

    Telegram has no idempotency key: a delivery retried after a lost answer may
    show twice in the chat.
    """

    name: ClassVar[str] = "telegram"
    settings_class: ClassVar[type[Any] | None] = TelegramSettings
    channel_class: ClassVar[type[Any]] = TelegramChannel

    def __init__(
        self,
        settings: TelegramSettings | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        """``clock`` (monotonic seconds) and ``sleep`` let tests run the limits on a fake clock."""
        self.settings = settings if settings is not None else TelegramSettings()
        self._api = BotApi(self.settings)
        self._max_wait = self.settings.max_wait.total_seconds()
        self._sleep = sleep
        self.limiter = RateLimiter(
            per_chat=Window(self.settings.per_chat_per_second, 1.0),
            per_group=Window(self.settings.per_group_per_minute, 60.0),
            per_bot=Window(self.settings.per_bot_per_second, 1.0),
            clock=clock or time.monotonic,
        )

    async def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        try:
            config = decode(channel, TelegramChannel, what="telegram channel config")
        except ValidationError as error:
            return DeliveryResult(DeliveryStatus.FAILED, redact(str(error)))
        result = await self._deliver(config, notification.id, compose(notification))
        return _redacted(result, config.bot_token)

    async def _deliver(self, config: TelegramChannel, key: str, text: str) -> DeliveryResult:
        chat = config.chat_id
        result, new_chat = await self._attempt(config, chat, key, text)
        if new_chat is None:
            return result
        # A group upgraded to a supergroup gets a new id. Following it once keeps
        # this alert; the channel keeps the old id until someone updates it.
        log.warning(
            "telegram chat %s was upgraded to a supergroup: set the channel's chat_id to %s",
            chat,
            new_chat,
        )
        result, _ = await self._attempt(config, new_chat, key, text)
        note = f"chat {chat} is now supergroup {new_chat}: update the channel's chat_id"
        return DeliveryResult(result.status, f"{note}; {result.detail}", result.retry_after)

    async def _attempt(
        self, config: TelegramChannel, chat: ChatId, key: str, text: str
    ) -> tuple[DeliveryResult, int | None]:
        """One sendMessage in its turn: the result, and the chat's new id if it moved.

        ``key`` (the notification's id, the same on every retry of a delivery)
        books the slot a refused send is told to come back for.
        """
        bot = _bot_id(config)
        slot = self.limiter.acquire(bot, chat, max_wait=self._max_wait, booking=key)
        if not slot.granted:
            detail = f"Telegram's rate limit for chat {chat} is used up for {slot.delay:.1f} s"
            return DeliveryResult(DeliveryStatus.RETRY, detail, retry_after=slot.delay), None
        if slot.delay > 0:
            await self._sleep(slot.delay)
        payload = _payload(config, chat, text)
        try:
            answer = await self._api.call(config.bot_token, "sendMessage", payload)
        except Unreachable as error:
            log.debug("telegram chat %s: no answer: %s", chat, error)
            return DeliveryResult(DeliveryStatus.RETRY, f"Bot API unreachable: {error}"), None
        result = _redacted(interpret(answer), config.bot_token)
        if answer.status == 429:
            # Other sends to this chat wait too, instead of earning more 429s.
            self.limiter.block(bot, chat, retry_after(answer) or 1.0)
        log.debug("telegram chat %s: %s %s", chat, result.status, result.detail)
        return result, migrated_to(answer)


def _redacted(result: DeliveryResult, token: str) -> DeliveryResult:
    # Telegram's descriptions are not ours: should one ever echo the URL, the
    # token still stays out of details and logs.
    return DeliveryResult(result.status, redact(result.detail, token), result.retry_after)


def _bot_id(config: TelegramChannel) -> str:
    # Limits are per bot, and its id (the token's public part) names it.
    return config.bot_token.partition(":")[0]


def _payload(config: TelegramChannel, chat: ChatId, text: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "chat_id": chat,
        "text": text,
        "parse_mode": PARSE_MODE,
        "link_preview_options": {"is_disabled": True},
    }
    if config.message_thread_id is not None:
        payload["message_thread_id"] = config.message_thread_id
    if config.disable_notification:
        payload["disable_notification"] = True
    return payload
