"""Helpers the webhook tests share."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import anyio

from lunasentri_core import DeliveryResult, Notification
from lunasentri_core.codec import encode
from lunasentri_core.testing import make_notification
from lunasentri_webhooks import WebhookChannel, WebhookNotifier


def make_channel(url: str, secret: str, **headers: str) -> dict[str, Any]:
    """The stored form of a channel: what the core keeps and passes to ``send``."""
    stored: dict[str, Any] = encode(WebhookChannel(url=url, secret=secret, headers=headers))
    return stored


def deliver(
    notifier: WebhookNotifier,
    channel: Mapping[str, Any],
    notification: Notification | None = None,
) -> DeliveryResult:
    """``notifier.send`` on a fresh event loop, as the contract suite runs it."""
    return anyio.run(notifier.send, channel, notification or make_notification())


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
