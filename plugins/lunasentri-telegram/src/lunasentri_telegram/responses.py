"""What each Bot API answer means for a delivery.

| answer | result |
| --- | --- |
| ``ok: true`` | DELIVERED |
| 429 | RETRY after ``parameters.retry_after`` |
| 5xx, no answer, not a Bot API answer with a 5xx status | RETRY |
| 401 (token revoked), 403 (bot blocked, kicked, not a member) | DISABLE_CHANNEL |
| 400 chat not found, no rights to post, topic not found | DISABLE_CHANNEL |
| 400 with ``migrate_to_chat_id`` | followed by the notifier, once |
| any other 4xx | FAILED with Telegram's description |

DISABLE_CHANNEL is for answers no later send can get past until a person
changes the chat or the channel's config; retrying them would only spend the
bot's limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lunasentri_core import DeliveryResult, DeliveryStatus
from lunasentri_telegram.api import Answer

# Descriptions of 400 answers that no later send can get past (Telegram's wording).
_CHAT_UNUSABLE = (
    "chat not found",
    "have no rights to send",
    "not enough rights",
    "need administrator rights",
    "message thread not found",
)
_RETRY_AFTER_TEXT = re.compile(r"retry after (\d+)", re.IGNORECASE)


def migrated_to(answer: Answer) -> int | None:
    """The supergroup id a group was upgraded to, when Telegram says so."""
    value = _parameters(answer).get("migrate_to_chat_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def interpret(answer: Answer) -> DeliveryResult:
    """The delivery result of one sendMessage answer."""
    body = answer.body
    if body is None:
        return _not_bot_api(answer)
    if body.get("ok") is True and 200 <= answer.status < 300:
        return DeliveryResult(DeliveryStatus.DELIVERED, _delivered(body))
    code = body.get("error_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else answer.status
    description = str(body.get("description") or f"error {code}")
    if code == 429:
        return DeliveryResult(
            DeliveryStatus.RETRY, f"Telegram: {description}", retry_after=retry_after(answer)
        )
    if code >= 500:
        return DeliveryResult(DeliveryStatus.RETRY, f"Telegram: {description}")
    if code == 401:
        return DeliveryResult(
            DeliveryStatus.DISABLE_CHANNEL,
            f"Telegram rejected the bot token ({description}): get a new token from "
            "@BotFather and update the channel",
        )
    if code == 403 or (code == 400 and _chat_unusable(description)):
        return DeliveryResult(
            DeliveryStatus.DISABLE_CHANNEL,
            f"Telegram: {description} (add the bot to the chat, or unblock it, "
            "or fix chat_id and message_thread_id, then enable the channel again)",
        )
    if code == 404:
        return DeliveryResult(
            DeliveryStatus.FAILED, f"Telegram: {description} (check [plugins.telegram] api_url)"
        )
    return DeliveryResult(DeliveryStatus.FAILED, f"Telegram: {description}")


def retry_after(answer: Answer) -> float | None:
    """Seconds Telegram asked to wait: its parameters, its description or the header."""
    value = _parameters(answer).get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    found = _RETRY_AFTER_TEXT.search(str((answer.body or {}).get("description", "")))
    if found:
        return float(found.group(1))
    header = answer.retry_after_header
    if header is not None and header.strip().isdigit():
        return float(header.strip())
    return None


def _parameters(answer: Answer) -> Mapping[str, Any]:
    parameters = (answer.body or {}).get("parameters")
    return parameters if isinstance(parameters, Mapping) else {}


def _chat_unusable(description: str) -> bool:
    lowered = description.lower()
    return any(phrase in lowered for phrase in _CHAT_UNUSABLE)


def _delivered(body: Mapping[str, Any]) -> str:
    result = body.get("result")
    if isinstance(result, Mapping) and "message_id" in result:
        return f"message {result['message_id']}"
    return ""


def _not_bot_api(answer: Answer) -> DeliveryResult:
    detail = f"HTTP {answer.status} with no Bot API answer"
    if answer.status == 429 or answer.status >= 500:
        return DeliveryResult(DeliveryStatus.RETRY, detail, retry_after=retry_after(answer))
    return DeliveryResult(DeliveryStatus.FAILED, f"{detail} (check [plugins.telegram] api_url)")
