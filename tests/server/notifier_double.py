"""A small loopback HTTP notifier and the receiver it posts to, for the server's tests.

The core's tests do not depend on the webhook or Telegram plugins: servers get
this notifier (type ``loopback``) through ``make_server(plugins=PLUGINS)``. It
POSTs each notification as JSON to a receiver on 127.0.0.1 and maps the
receiver's answer to a delivery result the way real notifiers do: 2xx delivered,
410 disables the channel, 429 and 5xx are retried, other 4xx fail.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import attrs
import httpx

from lunasentri_core import hookimpl
from lunasentri_core.components import DeliveryResult, DeliveryStatus, Notification


def _loopback_url(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError(f"{attribute.name} is not a URL") from None
    if url.scheme != "http" or url.host != "127.0.0.1":
        raise ValueError(f"{attribute.name} must be an http://127.0.0.1 URL")


@attrs.frozen
class LoopbackChannel:
    url: str = attrs.field(validator=_loopback_url)
    token: str = attrs.field(factory=lambda: secrets.token_urlsafe(16), metadata={"secret": True})
    headers: dict[str, str] = attrs.field(factory=dict, metadata={"secret": True})
    room: str = "general"


class LoopbackNotifier:
    name: ClassVar[str] = "loopback"
    settings_class: ClassVar[type[Any] | None] = None
    channel_class: ClassVar[type[Any]] = LoopbackChannel

    async def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        body = {
            "id": notification.id,
            "kind": notification.kind.value,
            "title": notification.title,
            "text": notification.text,
            "data": dict(notification.data),
            "room": channel["room"],
        }
        headers = {**channel["headers"], "x-token": channel["token"]}
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                response = await client.post(channel["url"], json=body, headers=headers)
        except httpx.TransportError as error:
            return DeliveryResult(
                DeliveryStatus.RETRY, f"cannot reach the receiver: {type(error).__name__}"
            )
        status = response.status_code
        if response.is_success:
            return DeliveryResult(DeliveryStatus.DELIVERED)
        if status == 410:
            return DeliveryResult(DeliveryStatus.DISABLE_CHANNEL, "the receiver said 410 Gone")
        if status == 429 or status >= 500:
            return DeliveryResult(DeliveryStatus.RETRY, f"the receiver answered {status}")
        return DeliveryResult(
            DeliveryStatus.FAILED, f"the receiver answered {status}: {response.text[:100]}"
        )


class LoopbackPlugin:
    @hookimpl
    def lunasentri_register_notifiers(self) -> list[type[Any]]:
        return [LoopbackNotifier]


def plugins() -> dict[str, object]:
    """What ``make_server(plugins=...)`` takes to install the loopback notifier."""
    return {"loopback-notifier": LoopbackPlugin()}


@attrs.frozen
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps what it is sent and answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(headers, body))
                    status = receiver.status
                payload = f"status {status}".encode()
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
