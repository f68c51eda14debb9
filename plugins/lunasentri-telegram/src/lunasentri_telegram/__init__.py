"""LunaSentri notifications through a Telegram bot.

Registered through the ``lunasentri`` entry point as the notifier ``telegram``:
each channel names a bot token and a chat; settings come from
``[plugins.telegram]`` (see :class:`TelegramSettings`).
"""

from __future__ import annotations

from collections.abc import Iterable

from lunasentri_core import Notifier, hookimpl
from lunasentri_telegram.config import TelegramChannel, TelegramSettings
from lunasentri_telegram.notifier import TelegramNotifier

__all__ = [
    "TelegramChannel",
    "TelegramNotifier",
    "TelegramSettings",
    "lunasentri_register_notifiers",
]


@hookimpl
def lunasentri_register_notifiers() -> Iterable[type[Notifier]]:
    return [TelegramNotifier]
