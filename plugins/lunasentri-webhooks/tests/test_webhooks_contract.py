"""The contract suites every notifier and every plugin distribution pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from webhook_receiver import WebhookReceiver
from webhook_support import make_channel

from lunasentri_core.testing import EntryPointContract, NotifierContract, ReceivedMessage
from lunasentri_webhooks import WebhookNotifier


class TestWebhookNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, loopback_notifier: WebhookNotifier) -> WebhookNotifier:
        return loopback_notifier

    @pytest.fixture
    def channel(self, receiver: WebhookReceiver, secret: str) -> dict[str, Any]:
        # An extra header holding a credential: the suite checks it is never shown.
        return make_channel(receiver.url(), secret, Authorization="Bearer contract-credential")

    @pytest.fixture
    def received(self, receiver: WebhookReceiver) -> Callable[[], Sequence[ReceivedMessage]]:
        def messages() -> list[ReceivedMessage]:
            for delivery in receiver.deliveries:
                assert delivery.problem is None, f"the receiver refused: {delivery.problem}"
            return [
                ReceivedMessage(d.body.decode(), d.headers.get("webhook-id"), raw=d)
                for d in receiver.deliveries
            ]

        return messages

    # No failing_channel: the suite derives one from 'channel', its URL pointed at a
    # loopback port that refuses connections (held for the test, so no race).


class TestWebhooksEntryPoint(EntryPointContract):
    plugin = "webhook"
    distribution = "lunasentri-webhooks"
    components = frozenset({"notifier:webhook"})
