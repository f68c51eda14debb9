"""Helpers of the Telegram plugin's tests."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import attrs
from botapi_server import TOKEN, BotApiServer

from lunasentri_telegram import TelegramNotifier, TelegramSettings

SETTLED = 1.0
"""Seconds a new limiter holds every chat back (its window counted full at its start)."""


@attrs.define
class FakeClock:
    """Monotonic seconds that move only when told, or when a send sleeps on them."""

    now: float = 1000.0
    sleeps: list[float] = attrs.field(factory=list)
    advance_on_sleep: bool = True

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advance_on_sleep:
            self.now += seconds


def settings_for(bot_api: BotApiServer, **overrides: Any) -> TelegramSettings:
    fields: dict[str, Any] = {"api_url": bot_api.url, "timeout": timedelta(seconds=5)}
    fields.update(overrides)
    return TelegramSettings(**fields)


def settled_notifier(bot_api: BotApiServer, clock: FakeClock, **overrides: Any) -> TelegramNotifier:
    """A notifier on ``clock`` whose process has been up past its first second."""
    notifier = TelegramNotifier(settings_for(bot_api, **overrides), clock=clock, sleep=clock.sleep)
    clock.now += SETTLED
    return notifier


def channel_config(chat_id: int | str, **extra: Any) -> dict[str, Any]:
    """A stored channel config, as the core hands it to ``send``."""
    return {"bot_token": TOKEN, "chat_id": chat_id, **extra}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
