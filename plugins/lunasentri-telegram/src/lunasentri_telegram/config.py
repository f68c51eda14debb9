"""What a Telegram channel is configured with, and the plugin's own settings."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import attrs

# BotFather hands out "<bot id>:<secret>"; the secret is URL-safe base64, which
# also keeps it a single path segment of /bot<token>/sendMessage.
BOT_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")
# Public channel and supergroup usernames: 5 to 32 letters, digits and underscores.
CHAT_USERNAME = re.compile(r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")
NUMERIC_CHAT_ID = re.compile(r"^-?[0-9]{1,20}$")

ChatId = int | str


def _bot_token(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    # The message never repeats the value: it is a secret.
    if not isinstance(value, str) or not BOT_TOKEN.match(value):
        raise ValueError(
            f"{attribute.name} must be the token @BotFather gave: the bot id, a colon, "
            "then at least 20 letters, digits, '_' or '-'"
        )


def chat_id(value: object) -> ChatId:
    """A chat id as Telegram takes it: an integer, or ``@channelusername``.

    A numeric string (as a form field gives it) becomes the integer.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            "chat_id must be an integer chat id (such as -1001234567890) "
            "or a public channel username (such as '@my_alerts')"
        )
    if isinstance(value, int):
        if value == 0:
            raise ValueError("chat_id must not be 0")
        return value
    if NUMERIC_CHAT_ID.match(value):
        return chat_id(int(value))
    if not CHAT_USERNAME.match(value):
        raise ValueError(
            f"chat_id {value!r} is neither an integer chat id nor a channel username "
            "('@' and 5 to 32 letters, digits or '_')"
        )
    return value


def _positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= type(value)(0):
        raise ValueError(f"{attribute.name} must be positive")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value < type(value)(0):
        raise ValueError(f"{attribute.name} must not be negative")


def _http_url(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL, not {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{attribute.name} must not have a query or a fragment")


@attrs.frozen
class TelegramChannel:
    """The ``config`` of a ``telegram`` notification channel."""

    bot_token: str = attrs.field(validator=_bot_token, repr=False, metadata={"secret": True})
    """The bot's token from @BotFather. Secret: never logged, masked by the API."""
    # Typed Any for the codec, which has no int-or-string union; the converter
    # below checks the type and makes it a ChatId.
    chat_id: Any = attrs.field(converter=chat_id)
    """Where messages go: a user, group or channel id, or ``@channelusername``."""
    message_thread_id: int | None = attrs.field(default=None, validator=_positive)
    """A forum topic of a supergroup to post into."""
    disable_notification: bool = False
    """Deliver silently: members get the message without a sound."""


@attrs.frozen
class TelegramSettings:
    """``[plugins.telegram]`` in the settings file."""

    api_url: str = attrs.field(default="https://api.telegram.org", validator=_http_url)
    """Bot API server: Telegram's, or a self-hosted ``telegram-bot-api``."""
    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    """How long one request may take (connect, send, wait for the answer)."""
    proxy: str | None = attrs.field(default=None, validator=_http_url)
    """An HTTP proxy for the Bot API (environment proxy variables are not read)."""
    per_chat_per_second: int = attrs.field(default=1, validator=_positive)
    """Messages to one chat in any second (Telegram: about one)."""
    per_group_per_minute: int = attrs.field(default=20, validator=_positive)
    """Messages to one group or channel in any minute (Telegram: 20)."""
    per_bot_per_second: int = attrs.field(default=30, validator=_positive)
    """Messages from one bot, to all its chats, in any second (Telegram: about 30)."""
    max_wait: timedelta = attrs.field(default=timedelta(seconds=5), validator=_not_negative)
    """Longest a send waits for its turn; beyond it the send returns RETRY at once."""
