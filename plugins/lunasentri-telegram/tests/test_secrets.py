"""The bot token never shows: not in any log line (httpx's included), error or detail."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import anyio
import pytest
from botapi_server import (
    BLOCKED,
    OLD_GROUP,
    OTHER_BOT_TOKEN,
    PRIVATE,
    TOKEN,
    UNKNOWN,
    BotApiServer,
    Scripted,
)
from support import FakeClock, channel_config, closed_port, settings_for, settled_notifier

from lunasentri_core import DeliveryResult
from lunasentri_core.testing import make_notification
from lunasentri_telegram.api import BotApi, Unreachable, masked, redact

SECRETS = [TOKEN, TOKEN.partition(":")[2], OTHER_BOT_TOKEN, OTHER_BOT_TOKEN.partition(":")[2]]


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message, arguments and traceback, as any handler could print them."""
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a bot token shows in {where}"


@pytest.mark.parametrize(
    ("scripted", "config"),
    [
        (None, channel_config(PRIVATE)),
        (
            Scripted(429, "Too Many Requests: retry after 9", {"retry_after": 9}),
            channel_config(PRIVATE),
        ),
        (Scripted(500, "Internal Server Error"), channel_config(PRIVATE)),
        (
            Scripted(502, raw=f"<html>proxy error for /bot{TOKEN}/sendMessage</html>"),
            channel_config(PRIVATE),
        ),
        (Scripted(400, f"Bad Request: echoing bot{TOKEN} back"), channel_config(PRIVATE)),
        (None, channel_config(BLOCKED)),
        (None, channel_config(UNKNOWN)),
        (None, channel_config(OLD_GROUP)),
        (None, {"bot_token": OTHER_BOT_TOKEN, "chat_id": PRIVATE}),
    ],
)
def test_no_answer_puts_the_token_in_logs_or_details(
    bot_api: BotApiServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    scripted: Scripted | None,
    config: dict[str, Any],
) -> None:
    notifier = settled_notifier(bot_api, clock)
    if scripted is not None:
        bot_api.script(scripted)
    caplog.set_level(logging.DEBUG)
    result = anyio.run(notifier.send, config, make_notification())
    assert_no_secret(result.detail, "the result's detail")
    logged = everything_logged(caplog)
    assert_no_secret(logged, "the log")
    # The log was on: httpx wrote its request line, with the token masked...
    assert f"/bot{masked(config['bot_token'])}/sendMessage" in logged
    # ...and the server got the real one.
    assert bot_api.requests[-1][0] == config["bot_token"]


@pytest.mark.parametrize("failure", ["closed port", "timeout"])
def test_network_failures_keep_the_token_out_too(
    bot_api: BotApiServer, clock: FakeClock, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    if failure == "timeout":
        notifier = settled_notifier(bot_api, clock, timeout=timedelta(seconds=0.2))
        bot_api.script(Scripted(delay=2.0))
    else:
        notifier = settled_notifier(bot_api, clock, api_url=f"http://127.0.0.1:{closed_port()}")
    caplog.set_level(logging.DEBUG)
    result: DeliveryResult = anyio.run(notifier.send, channel_config(PRIVATE), make_notification())
    assert result.detail
    assert_no_secret(result.detail, "the result's detail")
    assert_no_secret(everything_logged(caplog), "the log")


def test_an_error_from_the_client_is_raised_without_the_token(bot_api: BotApiServer) -> None:
    api = BotApi(settings_for(bot_api, api_url=f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(Unreachable) as raised:
        anyio.run(api.call, TOKEN, "sendMessage", {"chat_id": PRIVATE, "text": "x"})
    error = raised.value
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert_no_secret(str(error), "the exception")


def test_the_client_only_ever_sees_the_masked_url(bot_api: BotApiServer) -> None:
    api = BotApi(settings_for(bot_api))
    assert api.url(TOKEN, "sendMessage") == f"{bot_api.url}/bot7000000001:***/sendMessage"
    answer = anyio.run(api.call, TOKEN, "sendMessage", {"chat_id": PRIVATE, "text": "x"})
    assert answer.status == 200
    assert bot_api.requests[-1] == (TOKEN, "sendMessage")


def test_redact() -> None:
    assert redact(f"GET /bot{TOKEN}/x", TOKEN) == "GET /bot7000000001:***/x"
    assert redact(f"secret {TOKEN.partition(':')[2]}", TOKEN) == "secret ***"
    # Any token-shaped text, even of a bot it was not told about.
    assert OTHER_BOT_TOKEN.partition(":")[2] not in redact(f"/bot{OTHER_BOT_TOKEN}/x")
    assert redact("chat -1001234567890 at 12:30") == "chat -1001234567890 at 12:30"
