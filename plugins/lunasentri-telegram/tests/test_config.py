"""Channel configs and settings: what is accepted, and errors that name the field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest
from botapi_server import TOKEN

from lunasentri_core import ValidationError
from lunasentri_core.codec import decode, encode
from lunasentri_telegram import TelegramChannel, TelegramSettings


def channel(**fields: Any) -> TelegramChannel:
    return decode({"bot_token": TOKEN, "chat_id": 42, **fields}, TelegramChannel, what="config")


@pytest.mark.parametrize(
    ("chat_id", "expected"),
    [
        (123456789, 123456789),
        (-1001234567890, -1001234567890),
        ("-1001234567890", -1001234567890),
        ("@my_alerts", "@my_alerts"),
    ],
)
def test_chat_ids_telegram_takes(chat_id: object, expected: int | str) -> None:
    assert channel(chat_id=chat_id).chat_id == expected


def test_a_decoded_channel_is_stored_and_read_back_unchanged() -> None:
    config = channel(chat_id="-100123", message_thread_id=7, disable_notification=True)
    stored = encode(config)
    assert stored == {
        "bot_token": TOKEN,
        "chat_id": -100123,
        "message_thread_id": 7,
        "disable_notification": True,
    }
    assert decode(stored, TelegramChannel, what="config") == config


def test_the_bot_token_is_a_secret_kept_out_of_repr() -> None:
    field = attrs.fields(TelegramChannel).bot_token
    assert field.metadata == {"secret": True}
    config = channel()
    assert TOKEN not in repr(config)
    assert TOKEN.partition(":")[2] not in repr(config)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"bot_token": "not-a-token"}, "bot_token"),
        ({"bot_token": "123456:short"}, "bot_token"),
        ({"bot_token": f" {TOKEN}"}, "bot_token"),
        ({"bot_token": 123456}, "bot_token"),
        ({"chat_id": True}, "chat_id"),
        ({"chat_id": 12.5}, "chat_id"),
        ({"chat_id": 0}, "chat_id"),
        ({"chat_id": "my_alerts"}, "chat_id"),
        ({"chat_id": "@no"}, "chat_id"),
        ({"chat_id": None}, "chat_id"),
        ({"message_thread_id": "7"}, "message_thread_id"),
        ({"message_thread_id": 0}, "message_thread_id"),
        ({"disable_notification": "yes"}, "disable_notification"),
        ({"parse_mode": "Markdown"}, "parse_mode"),
    ],
)
def test_a_bad_channel_config_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        channel(**fields)
    assert field in str(raised.value)


@pytest.mark.parametrize("missing", ["bot_token", "chat_id"])
def test_required_fields(missing: str) -> None:
    data = {"bot_token": TOKEN, "chat_id": 42}
    del data[missing]
    with pytest.raises(ValidationError) as raised:
        decode(data, TelegramChannel, what="config")
    assert raised.value.first_path == missing


def test_a_rejected_token_is_not_repeated_in_the_error() -> None:
    almost = TOKEN + "!"
    with pytest.raises(ValidationError) as raised:
        channel(bot_token=almost)
    assert TOKEN.partition(":")[2] not in str(raised.value)


def test_settings_default_from_an_empty_table() -> None:
    settings = decode({}, TelegramSettings, what="settings")
    assert settings == TelegramSettings()
    assert settings.api_url == "https://api.telegram.org"
    assert (settings.per_chat_per_second, settings.per_group_per_minute) == (1, 20)
    assert settings.per_bot_per_second == 30


def test_settings_take_durations_with_units() -> None:
    settings = decode(
        {"timeout": "30s", "max_wait": "1m", "api_url": "http://127.0.0.1:8081/"},
        TelegramSettings,
        what="settings",
    )
    assert settings.timeout == timedelta(seconds=30)
    assert settings.max_wait == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"api_url": "ftp://api.telegram.org"}, "api_url"),
        ({"api_url": "https://api.telegram.org/?x=1"}, "api_url"),
        ({"proxy": "api.telegram.org"}, "proxy"),
        ({"timeout": 0}, "timeout"),
        ({"per_chat_per_second": 0}, "per_chat_per_second"),
        ({"per_group_per_minute": -1}, "per_group_per_minute"),
        ({"per_bot_per_second": 1.5}, "per_bot_per_second"),
        ({"max_wait": "soon"}, "max_wait"),
        ({"retries": 3}, "retries"),
    ],
)
def test_bad_settings_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        decode(fields, TelegramSettings, what="settings")
    assert field in str(raised.value)
