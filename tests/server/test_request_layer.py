"""The server's one request layer, as a unit: the headers every response gets and the
cross-site refusal, in the order the three middlewares it replaced gave them."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from lunasentri_core.builtin import SESSION_COOKIE
from lunasentri_core.server.app import RequestContextMiddleware
from lunasentri_core.server.metrics import ServerMetrics

pytestmark = pytest.mark.anyio


def inner(headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def call(
    layer: RequestContextMiddleware, method: str = "GET", scheme: str = "http", **headers: str
) -> tuple[int, list[tuple[bytes, bytes]]]:
    sent: list[Message] = []
    scope = {
        "type": "http", "method": method, "scheme": scheme, "path": "/x", "query_string": b"",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
    }  # fmt: skip

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await layer(scope, receive, send)
    return sent[0]["status"], sent[0]["headers"]


async def test_every_response_gets_the_security_headers_then_the_request_id() -> None:
    layer = RequestContextMiddleware(inner([(b"a", b"1")]), ServerMetrics(), hsts_max_age=60)
    status, headers = await call(layer, x_request_id="trace-1")
    assert status == 200
    assert headers == [
        (b"a", b"1"), (b"x-content-type-options", b"nosniff"), (b"x-request-id", b"trace-1"),
    ]  # fmt: skip
    _, headers = await call(layer, scheme="https")
    names = [name for name, _ in headers]
    assert names[:3] == [b"a", b"x-content-type-options", b"strict-transport-security"]
    assert names[3] == b"x-request-id"
    assert (b"strict-transport-security", b"max-age=60") in headers


async def test_a_response_s_own_security_headers_are_kept() -> None:
    own = [(b"X-Content-Type-Options", b"nosniff")]
    layer = RequestContextMiddleware(inner(own), ServerMetrics())
    _, headers = await call(layer)
    assert [name.lower() for name, _ in headers].count(b"x-content-type-options") == 1


async def test_a_cookie_write_from_another_site_is_refused_with_the_same_headers() -> None:
    layer = RequestContextMiddleware(inner([]), ServerMetrics(), trusted_origins=[])
    cookie = f"{SESSION_COOKIE}=lss_x"
    status, headers = await call(layer, "POST", origin="https://evil.example", cookie=cookie)
    assert status == 403
    names = [name for name, _ in headers]
    assert b"x-content-type-options" in names
    assert names[-1] == b"x-request-id"
    # The same request's own origin, or a script's credentials, pass.
    assert (await call(layer, "POST", origin="http://h", host="h", cookie=cookie))[0] == 200
    assert (await call(layer, "POST", origin="https://evil.example", x_api_key="k"))[0] == 200


async def test_without_trusted_origins_the_layer_leaves_cross_site_checks_to_another() -> None:
    # With CORS configured the check sits inside CORS, in its own CrossSiteGuard.
    layer = RequestContextMiddleware(inner([]), ServerMetrics())
    cookie = f"{SESSION_COOKIE}=lss_x"
    assert (await call(layer, "POST", origin="https://evil.example", cookie=cookie))[0] == 200
