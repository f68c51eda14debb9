"""The ``webhook`` notifier: one signed JSON POST per notification."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import httpx

from lunasentri_core import (
    DeliveryResult,
    DeliveryStatus,
    FieldError,
    Notification,
    ValidationError,
)
from lunasentri_core.codec import decode, encode
from lunasentri_webhooks.addresses import AddressRefused, Resolver, system_resolver
from lunasentri_webhooks.config import WebhookChannel, WebhookSettings
from lunasentri_webhooks.outcome import classify
from lunasentri_webhooks.signing import sign
from lunasentri_webhooks.transport import PinnedTransport

log = logging.getLogger(__name__)

try:
    VERSION = importlib.metadata.version("lunasentri-webhooks")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
    VERSION = "0.0.0"
USER_AGENT = f"LunaSentri-Webhooks/{VERSION}"

EXCERPT_BYTES = 512
"""How much of a failed response's body is read, to quote in the delivery's detail."""


def payload(notification: Notification) -> bytes:
    """The request body: the event as compact UTF-8 JSON."""
    event = {
        "type": notification.kind,
        "timestamp": notification.occurred_at,
        "id": notification.id,
        "title": notification.title,
        "text": notification.text,
        "data": dict(notification.data),
    }
    text = json.dumps(encode(event), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


class WebhookNotifier:
    """POSTs each notification as JSON, signed per Standard Webhooks.

    ``send`` is a coroutine and opens its own HTTP client each time, so it works
    on whichever event loop calls it; the TLS context (costly to build) is made
    once and shared.
    """

    name: ClassVar[str] = "webhook"
    settings_class: ClassVar[type[Any] | None] = WebhookSettings
    channel_class: ClassVar[type[Any]] = WebhookChannel

    def __init__(
        self, settings: WebhookSettings | None = None, *, resolver: Resolver | None = None
    ) -> None:
        """:param resolver: Resolves host names (default: the system resolver); for tests."""
        self.settings = settings if settings is not None else WebhookSettings()
        self._resolver = resolver or system_resolver
        self._ssl_context = _ssl_context(self.settings)

    async def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        try:
            config = _channel(channel)
        except ValidationError as error:
            return DeliveryResult(DeliveryStatus.FAILED, str(error))
        host = httpx.URL(config.url).host
        result = await self._attempt(config, notification, host)
        log.debug("webhook %s to %s: %s (%s)", notification.id, host, result.status, result.detail)
        return result

    async def _attempt(
        self, config: WebhookChannel, notification: Notification, host: str
    ) -> DeliveryResult:
        body = payload(notification)
        headers = {
            **config.headers,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            # The excerpt of a failure is read raw, so ask for no compression.
            "accept-encoding": "identity",
            **sign(config.secret, notification.id, int(time.time()), body),
        }
        seconds = self.settings.timeout.total_seconds()
        try:
            with anyio.fail_after(seconds):
                async with (
                    self._client() as client,
                    client.stream("POST", config.url, content=body, headers=headers) as response,
                ):
                    excerpt = await _excerpt(response)
        except AddressRefused as refused:
            return DeliveryResult(
                DeliveryStatus.FAILED,
                f"refused: {refused}; set allow_private_addresses = true "
                "under [plugins.webhook] to allow such targets",
            )
        except (TimeoutError, httpx.TimeoutException):
            return DeliveryResult(
                DeliveryStatus.RETRY, f"no answer from {host} within {seconds:g} s"
            )
        except httpx.TransportError as error:
            return DeliveryResult(DeliveryStatus.RETRY, f"cannot reach {host}: {_describe(error)}")
        return classify(
            response.status_code,
            host=host,
            retry_after=response.headers.get("retry-after"),
            location=response.headers.get("location"),
            excerpt=_redact(excerpt, config),
        )

    def _client(self) -> httpx.AsyncClient:
        inner = httpx.AsyncHTTPTransport(verify=self._ssl_context, trust_env=False)
        transport = PinnedTransport(
            inner, self._resolver, allow_private=self.settings.allow_private_addresses
        )
        # No proxies from the environment: the address check is about the target.
        return httpx.AsyncClient(
            transport=transport,
            timeout=self.settings.timeout.total_seconds(),
            follow_redirects=False,
            trust_env=False,
        )


def _channel(channel: Mapping[str, Any]) -> WebhookChannel:
    if "secret" not in channel:
        # Decoding would generate a fresh secret, which no receiver knows.
        missing = FieldError("secret", "required field is missing")
        raise ValidationError([missing], what="webhook channel config")
    return decode(channel, WebhookChannel, what="webhook channel config")


def _ssl_context(settings: WebhookSettings) -> ssl.SSLContext:
    if settings.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    return httpx.create_ssl_context()


async def _excerpt(response: httpx.Response) -> str:
    """The start of the body of a non-2xx answer (a 2xx one is not read at all)."""
    if response.is_success or response.headers.get("content-encoding", "identity") != "identity":
        return ""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= EXCERPT_BYTES:
            break
    return data[:EXCERPT_BYTES].decode("utf-8", "replace")


def _redact(text: str, config: WebhookChannel) -> str:
    """``text`` without the channel's secrets (a receiver may echo the request back)."""
    for secret in (config.secret, *config.headers.values()):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _describe(error: Exception) -> str:
    cause = error.__cause__ or error.__context__
    message = str(error) or (str(cause) if cause else "") or type(error).__name__
    return f"{type(error).__name__}: {message}"
