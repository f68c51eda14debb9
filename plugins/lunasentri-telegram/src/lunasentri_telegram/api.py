"""Calls to the Bot API, with the bot token kept out of every log line and message.

The token is part of the URL path (``/bot<token>/sendMessage``). httpx logs the
URL of every request at INFO on the ``httpx`` logger, and its exceptions and
responses carry the request, so the client only ever sees a masked URL
(``/bot123456:***/sendMessage``, the bot id is public); a transport puts the
real token in when the request leaves, below anything that logs.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from lunasentri_telegram.config import TelegramSettings

MASK = "***"
# Not \b: in "/bot123:..." the digits follow a letter.
_ANY_TOKEN = re.compile(r"(?<![0-9])([0-9]{1,20}):[A-Za-z0-9_-]{20,100}")


def masked(token: str) -> str:
    """The token with its secret part replaced: ``123456:***``."""
    return f"{token.partition(':')[0]}:{MASK}"


def redact(text: str, token: str | None = None) -> str:
    """``text`` with ``token``, its secret part and anything shaped like a token masked."""
    if token:
        text = text.replace(token, masked(token))
        secret = token.partition(":")[2]
        if secret:
            text = text.replace(secret, MASK)
    return _ANY_TOKEN.sub(rf"\1:{MASK}", text)


class Unreachable(Exception):
    """The Bot API gave no answer (network error, timeout); the message is safe to show."""


@attrs.frozen
class Answer:
    """What the Bot API answered to one call."""

    status: int
    body: Mapping[str, Any] | None
    """The Bot API's JSON object (``ok``, ``result`` or ``error_code``...), if it was one."""
    retry_after_header: str | None = None


class _TokenTransport(httpx.AsyncBaseTransport):
    """Swaps the masked token in the path for the real one as the request leaves."""

    def __init__(self, token: str, inner: httpx.AsyncBaseTransport) -> None:
        self._token = token
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.replace(
            f"/bot{masked(self._token)}/".encode(), f"/bot{self._token}/".encode(), 1
        )
        real = httpx.Request(
            request.method,
            request.url.copy_with(raw_path=path),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        return await self._inner.handle_async_request(real)

    async def aclose(self) -> None:
        await self._inner.aclose()


class BotApi:
    """Calls methods of one Bot API server for any bot token.

    A client lives for one call only, so calls work from any thread and any event
    loop; the TLS context, the costly part, is made once.
    """

    def __init__(self, settings: TelegramSettings) -> None:
        self._base = settings.api_url.rstrip("/")
        self._timeout = settings.timeout.total_seconds()
        self._proxy = settings.proxy
        self._ssl: ssl.SSLContext = httpx.create_ssl_context()

    def url(self, token: str, method: str) -> str:
        """The URL as logs may show it: with the token masked."""
        return f"{self._base}/bot{masked(token)}/{method}"

    async def call(self, token: str, method: str, payload: Mapping[str, Any]) -> Answer:
        """POST ``payload`` as JSON; raises :class:`Unreachable` when no answer came."""
        inner = httpx.AsyncHTTPTransport(verify=self._ssl, proxy=self._proxy)
        transport = _TokenTransport(token, inner)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=self._timeout) as client:
                response = await client.post(self.url(token, method), json=dict(payload))
        except httpx.TimeoutException as error:
            raise Unreachable(
                f"no answer within {self._timeout:g} s ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            reason = redact(str(error), token) or "no details"
            raise Unreachable(f"{type(error).__name__}: {reason}") from None
        return Answer(response.status_code, _body(response), response.headers.get("retry-after"))


def _body(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("ok"), bool):
        return body
    return None
