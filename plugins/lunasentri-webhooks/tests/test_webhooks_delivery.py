"""Deliveries over real HTTP to the loopback receiver: the request, and every kind of answer."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from webhook_receiver import Reply, WebhookReceiver
from webhook_support import closed_port, deliver, make_channel
from webhook_tls import make_certificates

from lunasentri_core import DeliveryStatus, NotificationKind
from lunasentri_core.testing import make_notification
from lunasentri_webhooks import WebhookNotifier, WebhookSettings, __version__, generate_secret
from lunasentri_webhooks.outcome import classify, parse_retry_after

# ------------------------------------------------------------------ the request


def test_the_request_is_a_signed_json_event(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    notification = make_notification(
        kind=NotificationKind.MACHINE_OFFLINE,
        title="db-1 is offline",
        text="No report for 5 minutes.",
        occurred_at=datetime(2026, 11, 23, 16, 0, tzinfo=UTC),
        data={"machine": {"id": "m1", "name": "db-1", "labels": {"env": "prod"}}, "since": 300},
    )
    before = int(time.time())
    result = deliver(loopback_notifier, channel, notification)
    assert result.status is DeliveryStatus.DELIVERED, result
    assert result.detail == "HTTP 204 from 127.0.0.1"
    (delivery,) = receiver.deliveries
    assert delivery.problem is None, "the receiver's verify() refused the signature"
    assert delivery.path == "/hook"
    assert delivery.event == {
        "type": "machine.offline",
        "timestamp": "2026-11-23T16:00:00+00:00",
        "id": notification.id,
        "title": "db-1 is offline",
        "text": "No report for 5 minutes.",
        "data": {"machine": {"id": "m1", "name": "db-1", "labels": {"env": "prod"}}, "since": 300},
    }
    headers = delivery.headers
    assert headers["webhook-id"] == notification.id
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"LunaSentri-Webhooks/{__version__}"
    assert headers["host"] == f"127.0.0.1:{receiver.port}"


def test_the_body_is_compact_utf8_json(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    notification = make_notification(title="Ünïcode ✓", text="a\nb")
    deliver(loopback_notifier, channel, notification)
    body = receiver.deliveries[0].body
    assert "Ünïcode ✓".encode() in body
    assert b": " not in body
    assert b", " not in body
    assert json.loads(body)["text"] == "a\nb"


def test_a_retry_carries_the_same_id_and_body(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    notification = make_notification()
    receiver.answer(Reply(503))
    assert deliver(loopback_notifier, channel, notification).status is DeliveryStatus.RETRY
    assert deliver(loopback_notifier, channel, notification).status is DeliveryStatus.DELIVERED
    first, second = receiver.deliveries
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == notification.id
    assert first.body == second.body
    assert first.problem is second.problem is None


def test_extra_headers_are_sent(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, secret: str
) -> None:
    channel = make_channel(
        receiver.url(), secret, Authorization="Bearer abc123", **{"X-Env": "prod"}
    )
    assert deliver(loopback_notifier, channel).status is DeliveryStatus.DELIVERED
    headers = receiver.deliveries[0].headers
    assert headers["authorization"] == "Bearer abc123"
    assert headers["x-env"] == "prod"


def test_a_receiver_with_another_secret_refuses_and_the_delivery_fails(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver
) -> None:
    channel = make_channel(receiver.url(), generate_secret())
    result = deliver(loopback_notifier, channel)
    assert result.status is DeliveryStatus.FAILED
    assert result.detail.startswith("HTTP 401 from 127.0.0.1: 'no v1 signature matches")


def test_sends_on_one_event_loop_overlap(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    # The receiver answers only when all four requests are in: sends that waited
    # for each other would break the barrier and come back as retries.
    together = threading.Barrier(4, timeout=10)
    receiver.answer(*[Reply(204, barrier=together)] * 4)
    results: list[Any] = []

    async def send_four() -> None:
        async def one() -> None:
            results.append(await loopback_notifier.send(channel, make_notification()))

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)

    anyio.run(send_four)
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 4
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 4


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize(
    ("reply", "status", "detail"),
    [
        (Reply(200), DeliveryStatus.DELIVERED, "HTTP 200 from 127.0.0.1"),
        (Reply(202, body=b"queued"), DeliveryStatus.DELIVERED, "HTTP 202 from 127.0.0.1"),
        (
            Reply(500, body=b"boom\n  at x"),
            DeliveryStatus.RETRY,
            "HTTP 500 from 127.0.0.1: 'boom at x'",
        ),
        (Reply(502), DeliveryStatus.RETRY, "HTTP 502 from 127.0.0.1"),
        (
            Reply(429, {"Retry-After": "7"}),
            DeliveryStatus.RETRY,
            "HTTP 429 from 127.0.0.1, retry after 7 s",
        ),
        (
            Reply(410, body=b"endpoint deleted"),
            DeliveryStatus.DISABLE_CHANNEL,
            "HTTP 410 from 127.0.0.1: the receiver is gone for good: 'endpoint deleted'",
        ),
        (Reply(404), DeliveryStatus.FAILED, "HTTP 404 from 127.0.0.1"),
        (
            Reply(400, body=b'{"error": "bad event"}'),
            DeliveryStatus.FAILED,
            'HTTP 400 from 127.0.0.1: \'{"error": "bad event"}\'',
        ),
    ],
)
def test_each_answer_maps_to_a_result(
    loopback_notifier: WebhookNotifier,
    receiver: WebhookReceiver,
    channel: dict[str, Any],
    reply: Reply,
    status: DeliveryStatus,
    detail: str,
) -> None:
    receiver.answer(reply)
    result = deliver(loopback_notifier, channel)
    assert (result.status, result.detail) == (status, detail)
    assert len(receiver.deliveries) == 1, "a delivery is one request; the dispatcher retries"


def test_429_honours_retry_after_seconds(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    receiver.answer(Reply(429, {"Retry-After": "120"}))
    result = deliver(loopback_notifier, channel)
    assert (result.status, result.retry_after) == (DeliveryStatus.RETRY, 120.0)


def test_503_honours_retry_after_as_an_http_date(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    receiver.answer(Reply(503, {"Retry-After": format_datetime(when, usegmt=True)}))
    result = deliver(loopback_notifier, channel)
    assert result.status is DeliveryStatus.RETRY
    assert result.retry_after is not None
    assert 80 <= result.retry_after <= 90


def test_a_redirect_is_refused_not_followed(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    receiver.answer(Reply(302, {"Location": receiver.url(path="/elsewhere")}))
    result = deliver(loopback_notifier, channel)
    assert result.status is DeliveryStatus.FAILED
    assert f"redirect to {receiver.url(path='/elsewhere')} refused" in result.detail
    assert receiver.other_requests == [], "the redirect was followed"
    assert len(receiver.deliveries) == 1


def test_a_slow_receiver_times_out_and_is_retried(
    receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    notifier = WebhookNotifier(
        WebhookSettings(allow_private_addresses=True, timeout=timedelta(seconds=0.3))
    )
    receiver.answer(Reply(204, delay=5))
    result = deliver(notifier, channel)
    assert result.status is DeliveryStatus.RETRY
    assert result.detail == "no answer from 127.0.0.1 within 0.3 s"


def test_a_closed_port_is_retried(loopback_notifier: WebhookNotifier, secret: str) -> None:
    result = deliver(loopback_notifier, make_channel(f"http://127.0.0.1:{closed_port()}/", secret))
    assert result.status is DeliveryStatus.RETRY
    assert result.detail.startswith("cannot reach 127.0.0.1: ConnectError:")


def test_an_echoed_secret_is_redacted_from_the_detail(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, secret: str
) -> None:
    channel = make_channel(receiver.url(), secret, Authorization="Bearer 9f8e7d6c5b")
    echo = f"got secret={secret} auth=Bearer 9f8e7d6c5b".encode()
    receiver.answer(Reply(400, body=echo))
    result = deliver(loopback_notifier, channel)
    assert result.detail == "HTTP 400 from 127.0.0.1: 'got secret=*** auth=***'"


def test_only_the_start_of_a_large_error_body_is_read(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver, channel: dict[str, Any]
) -> None:
    receiver.answer(Reply(500, body=b"x" * 5_000_000))
    result = deliver(loopback_notifier, channel)
    assert result.status is DeliveryStatus.RETRY
    assert len(result.detail) < 600


def test_a_stored_channel_without_a_secret_is_not_sent(
    loopback_notifier: WebhookNotifier, receiver: WebhookReceiver
) -> None:
    result = deliver(loopback_notifier, {"url": receiver.url()})
    assert result.status is DeliveryStatus.FAILED
    assert result.detail == "invalid webhook channel config: secret: required field is missing"
    assert receiver.deliveries == []


def test_an_invalid_stored_channel_fails_with_the_field_named(
    loopback_notifier: WebhookNotifier, secret: str
) -> None:
    result = deliver(loopback_notifier, {"url": "gopher://x", "secret": secret})
    assert result.status is DeliveryStatus.FAILED
    assert "url must be an http:// or https:// URL" in result.detail


# ------------------------------------------------------------------ HTTPS to a pinned address


@pytest.fixture
def tls_receiver(tmp_path: Path, secret: str) -> Any:
    certificates = make_certificates(tmp_path, "hooks.lunasentri.test")
    server = WebhookReceiver(secret, tls=certificates.server_context())
    yield server, certificates
    server.close()


async def hooks_test_resolver(host: str, port: int) -> list[str]:
    """Resolves only the test name, to loopback; the system resolver never sees it."""
    if host != "hooks.lunasentri.test":
        raise OSError(f"unexpected lookup of {host}")
    return ["127.0.0.1"]


def test_https_keeps_the_host_name_for_sni_host_and_the_certificate(
    tls_receiver: Any, secret: str
) -> None:
    receiver, certificates = tls_receiver
    notifier = WebhookNotifier(
        WebhookSettings(allow_private_addresses=True, ca_bundle=certificates.ca_file),
        resolver=hooks_test_resolver,
    )
    channel = make_channel(receiver.url("hooks.lunasentri.test"), secret)
    result = deliver(notifier, channel)
    assert result.status is DeliveryStatus.DELIVERED, result
    assert result.detail == "HTTP 204 from hooks.lunasentri.test"
    assert receiver.server_names == ["hooks.lunasentri.test"]
    (delivery,) = receiver.deliveries
    assert delivery.headers["host"] == f"hooks.lunasentri.test:{receiver.port}"
    assert delivery.problem is None


def test_https_to_a_certificate_of_another_name_fails(tls_receiver: Any, secret: str) -> None:
    receiver, certificates = tls_receiver

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    notifier = WebhookNotifier(
        WebhookSettings(allow_private_addresses=True, ca_bundle=certificates.ca_file),
        resolver=resolver,
    )
    result = deliver(notifier, make_channel(receiver.url("other.lunasentri.test"), secret))
    assert result.status is DeliveryStatus.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert receiver.deliveries == []


def test_https_to_an_untrusted_ca_fails(tls_receiver: Any, secret: str) -> None:
    receiver, _ = tls_receiver
    notifier = WebhookNotifier(
        WebhookSettings(allow_private_addresses=True), resolver=hooks_test_resolver
    )
    result = deliver(notifier, make_channel(receiver.url("hooks.lunasentri.test"), secret))
    assert result.status is DeliveryStatus.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail


# ------------------------------------------------------------------ outcome units


def test_retry_after_parsing() -> None:
    now = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("  ", now) is None
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Mon, 23 Nov 2026 16:02:00 GMT", now) == 120.0
    assert parse_retry_after("Mon, 23 Nov 2026 15:00:00 GMT", now) == 0.0
    assert parse_retry_after("next tuesday", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("99999999", now) == 86400.0


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (204, DeliveryStatus.DELIVERED),
        (299, DeliveryStatus.DELIVERED),
        (301, DeliveryStatus.FAILED),
        (308, DeliveryStatus.FAILED),
        (401, DeliveryStatus.FAILED),
        (408, DeliveryStatus.FAILED),
        (410, DeliveryStatus.DISABLE_CHANNEL),
        (429, DeliveryStatus.RETRY),
        (503, DeliveryStatus.RETRY),
        (599, DeliveryStatus.RETRY),
    ],
)
def test_classify_statuses(code: int, status: DeliveryStatus) -> None:
    result = classify(code, host="h.example")
    assert result.status is status
    assert result.detail.startswith(f"HTTP {code} from h.example")
