"""Targets on non-public addresses are refused, and the checked address is the one used.

Only loopback is ever connected to: refusals of other private addresses are shown
on the transport with a recording inner transport, which never opens a socket.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import httpx
import pytest
from webhook_receiver import WebhookReceiver
from webhook_support import deliver, make_channel

from lunasentri_core import DeliveryStatus
from lunasentri_webhooks import WebhookNotifier, WebhookSettings
from lunasentri_webhooks.addresses import AddressRefused, Resolver, refusal_reason
from lunasentri_webhooks.transport import PinnedTransport

HINT = "set allow_private_addresses = true under [plugins.webhook]"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a00:1", "private"),
        ("2002:a9fe:a9fe::1", "link-local"),
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert refusal_reason(address) == reason


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(address) is None


# ------------------------------------------------------------------ end to end, loopback only


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_a_loopback_target_is_refused_by_default(
    receiver: WebhookReceiver, secret: str, host: str
) -> None:
    url = f"http://{host}:{receiver.port}/hook"
    result = deliver(WebhookNotifier(), make_channel(url, secret))
    assert result.status is DeliveryStatus.FAILED
    address = host.strip("[]")
    assert (
        result.detail == f"refused: {address} is a loopback address; {HINT} to allow such targets"
    )
    assert receiver.deliveries == []


def test_a_name_resolving_to_loopback_is_refused(receiver: WebhookReceiver, secret: str) -> None:
    result = deliver(WebhookNotifier(), make_channel(receiver.url("localhost"), secret))
    assert result.status is DeliveryStatus.FAILED
    assert result.detail.startswith("refused: localhost resolves to ")
    assert "a loopback address" in result.detail
    assert receiver.deliveries == []


def test_the_address_checked_is_the_address_connected_to(
    receiver: WebhookReceiver, secret: str
) -> None:
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        # A rebinding DNS server answers differently each time; only the first is used.
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["192.0.2.1"]

    notifier = WebhookNotifier(WebhookSettings(allow_private_addresses=True), resolver=rebinding)
    result = deliver(notifier, make_channel(receiver.url("rebind.lunasentri.test"), secret))
    assert result.status is DeliveryStatus.DELIVERED, result
    assert lookups == ["rebind.lunasentri.test"]
    assert receiver.deliveries[0].headers["host"] == f"rebind.lunasentri.test:{receiver.port}"


# ------------------------------------------------------------------ the transport, no sockets


class Recording(httpx.AsyncBaseTransport):
    """An inner transport that opens nothing: it records requests and answers 204."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.requests: list[httpx.Request] = []
        self.refuse = set(refuse)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        if request.url.host in self.refuse:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(204)


def fixed(*addresses: str) -> Resolver:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


def post(transport: PinnedTransport, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(url, content=b"{}")

    return anyio.run(run)


@pytest.mark.parametrize(
    "addresses",
    [("10.0.0.7",), ("169.254.169.254",), ("93.184.216.34", "10.0.0.7"), ("fd00::7",)],
)
def test_any_refused_address_stops_the_request_before_connecting(
    addresses: tuple[str, ...],
) -> None:
    inner = Recording()
    transport = PinnedTransport(inner, fixed(*addresses), allow_private=False)
    with pytest.raises(AddressRefused, match=r"^internal\.example resolves to .*, a "):
        post(transport, "https://internal.example/hook")
    assert inner.requests == []


def test_a_public_target_is_sent_to_the_checked_address_under_its_name() -> None:
    inner = Recording()
    transport = PinnedTransport(inner, fixed("93.184.216.34"), allow_private=False)
    assert post(transport, "https://hooks.example.com:8443/in?x=1").status_code == 204
    (request,) = inner.requests
    assert str(request.url) == "https://93.184.216.34:8443/in?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.content == b"{}"


def test_an_ipv6_address_is_bracketed_in_the_pinned_url() -> None:
    inner = Recording()
    transport = PinnedTransport(inner, fixed("2606:4700:4700::1111"), allow_private=False)
    post(transport, "http://hooks.example.com/in")
    assert str(inner.requests[0].url) == "http://[2606:4700:4700::1111]/in"
    assert inner.requests[0].headers["host"] == "hooks.example.com"


def test_the_next_checked_address_is_tried_when_one_refuses_connections() -> None:
    inner = Recording(refuse=["2606:4700:4700::1111"])
    resolver = fixed("2606:4700:4700::1111", "93.184.216.34")
    transport = PinnedTransport(inner, resolver, allow_private=False)
    assert post(transport, "https://hooks.example.com/in").status_code == 204
    assert [r.url.host for r in inner.requests] == ["2606:4700:4700::1111", "93.184.216.34"]


def test_when_every_address_refuses_the_last_error_is_raised() -> None:
    inner = Recording(refuse=["93.184.216.34"])
    transport = PinnedTransport(inner, fixed("93.184.216.34"), allow_private=False)
    with pytest.raises(httpx.ConnectError, match="connection refused"):
        post(transport, "https://hooks.example.com/in")


def test_private_addresses_pass_when_allowed() -> None:
    inner = Recording()
    transport = PinnedTransport(inner, fixed("10.0.0.7"), allow_private=True)
    assert post(transport, "http://nas.lan/in").status_code == 204
    assert inner.requests[0].url.host == "10.0.0.7"


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    for resolver in (failing, fixed()):
        transport = PinnedTransport(Recording(), resolver, allow_private=False)
        with pytest.raises(httpx.ConnectError, match=r"the name (does not resolve|resolves to no)"):
            post(transport, "https://nowhere.example/in")
