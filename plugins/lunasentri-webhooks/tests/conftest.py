"""Fixtures of the webhook plugin's tests: a receiver on loopback and notifiers for it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from webhook_receiver import WebhookReceiver
from webhook_support import make_channel

from lunasentri_webhooks import WebhookNotifier, WebhookSettings, generate_secret

# Test timings are no assertions here: on a loaded 2-core CI machine an example may
# take longer than Hypothesis's 200 ms deadline, which would fail a correct test.
settings.register_profile("lunasentri", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lunasentri")

pytest_plugins = ["lunasentri_core.testing"]


@pytest.fixture
def secret() -> str:
    return generate_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(secret)
    yield server
    server.close()


@pytest.fixture
def loopback_notifier() -> WebhookNotifier:
    """A notifier allowed to reach the loopback receiver, with a short timeout."""
    return WebhookNotifier(
        WebhookSettings(allow_private_addresses=True, timeout=timedelta(seconds=5))
    )


@pytest.fixture
def channel(receiver: WebhookReceiver, secret: str) -> dict[str, Any]:
    """The stored form of a channel delivering to ``receiver``."""
    return make_channel(receiver.url(), secret)
