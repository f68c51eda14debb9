"""Reading Bot API answers: the fields Telegram may or may not send."""

from __future__ import annotations

from typing import Any

import pytest

from lunasentri_core import DeliveryStatus
from lunasentri_telegram.api import Answer
from lunasentri_telegram.responses import interpret, migrated_to, retry_after


def error(code: int, description: str, **parameters: Any) -> Answer:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Answer(code, body)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (error(429, "Too Many Requests: retry after 12", retry_after=12), 12.0),
        (error(429, "Too Many Requests: retry after 12"), 12.0),
        (Answer(429, {"ok": False, "error_code": 429}, retry_after_header="8"), 8.0),
        (Answer(429, None, retry_after_header="8"), 8.0),
        (error(429, "Too Many Requests", retry_after="soon"), None),
        (Answer(429, None, retry_after_header="Wed, 21 Oct 2015 07:28:00 GMT"), None),
    ],
)
def test_retry_after_from_parameters_description_or_header(
    answer: Answer, expected: float | None
) -> None:
    assert retry_after(answer) == expected
    assert interpret(answer).status is DeliveryStatus.RETRY


def test_the_new_id_of_an_upgraded_group() -> None:
    assert migrated_to(error(400, "upgraded", migrate_to_chat_id=-1001)) == -1001
    assert migrated_to(error(400, "upgraded", migrate_to_chat_id="-1001")) is None
    assert migrated_to(error(400, "Bad Request: chat not found")) is None


def test_a_delivered_message_names_its_id() -> None:
    result = interpret(Answer(200, {"ok": True, "result": {"message_id": 41}}))
    assert (result.status, result.detail) == (DeliveryStatus.DELIVERED, "message 41")


def test_an_error_without_a_code_is_judged_by_the_http_status() -> None:
    assert interpret(Answer(503, {"ok": False})).status is DeliveryStatus.RETRY
    assert interpret(Answer(403, {"ok": False})).status is DeliveryStatus.DISABLE_CHANNEL
    assert interpret(Answer(200, None)).status is DeliveryStatus.FAILED
