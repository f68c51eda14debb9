"""Fixtures of the Telegram plugin's tests: a Bot API stand-in on loopback, a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botapi_server import BotApiServer, running
from hypothesis import HealthCheck, settings
from support import FakeClock, settled_notifier

from lunasentri_telegram import TelegramNotifier

# Test timings are no assertions here: on a loaded 2-core CI machine an example may
# take longer than Hypothesis's 200 ms deadline, which would fail a correct test.
settings.register_profile("lunasentri", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lunasentri")

pytest_plugins = ["lunasentri_core.testing"]


@pytest.fixture(scope="session")
def bot_api_session() -> Iterator[BotApiServer]:
    yield from running()


@pytest.fixture
def bot_api(bot_api_session: BotApiServer) -> BotApiServer:
    """The running Bot API stand-in, with its chats and records as new."""
    bot_api_session.reset()
    return bot_api_session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def telegram(bot_api: BotApiServer, clock: FakeClock) -> TelegramNotifier:
    """A notifier for the stand-in whose rate limits run on ``clock``, up for a while."""
    return settled_notifier(bot_api, clock)
