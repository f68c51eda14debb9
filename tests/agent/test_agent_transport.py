"""How the agent reads the server's answers, and the requests it makes."""

from __future__ import annotations

import gzip
import json
import ssl
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from lunasentri_core.agent.settings import AgentSettings
from lunasentri_core.agent.transport import (
    Outcome,
    ServerClient,
    ServerUnreachable,
    classify_ingest,
    describe_error,
    ingest_body,
    make_http_client,
    tls_context,
)

pytestmark = pytest.mark.anyio

ERROR = {"error": {"code": "invalid", "message": "bad value", "field": "samples[0].timestamp"}}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (400, Outcome.BAD_BATCH),
        (413, Outcome.BAD_BATCH),
        (415, Outcome.BAD_BATCH),
        (422, Outcome.BAD_BATCH),
        (401, Outcome.RETRY),
        (403, Outcome.RETRY),
        (404, Outcome.RETRY),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_classify_ingest(status: int, outcome: Outcome) -> None:
    assert classify_ingest(status, {}, {}).outcome is outcome


def test_classify_reads_accepted_retry_after_and_the_error() -> None:
    assert classify_ingest(200, {}, {"accepted": 3}).accepted == 3
    limited = classify_ingest(429, {"retry-after": "12"}, ERROR)
    assert limited.retry_after == 12.0
    assert limited.detail == "HTTP 429: bad value (at samples[0].timestamp)"
    assert classify_ingest(503, {}, {}).retry_after is None


def test_describe_error_without_a_json_error() -> None:
    assert describe_error(502, {}) == "HTTP 502"
    assert describe_error(422, {"error": {"code": "invalid"}}) == "HTTP 422: invalid"


def test_ingest_body_is_gzip_json_of_the_samples() -> None:
    body = ingest_body([b'{"a":1}', b'{"b":2}'])
    assert json.loads(gzip.decompress(body)) == {"samples": [{"a": 1}, {"b": 2}]}


def test_tls_context_for_plain_http_trusts_nothing() -> None:
    context = tls_context(AgentSettings(server_url="http://127.0.0.1:1"))
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0


def test_tls_context_for_https() -> None:
    default = tls_context(AgentSettings(server_url="https://example.invalid"))
    assert default.verify_mode is ssl.CERT_REQUIRED
    assert default.cert_store_stats()["x509_ca"] > 0
    insecure = tls_context(AgentSettings(server_url="https://x.invalid", verify_tls=False))
    assert insecure.verify_mode is ssl.CERT_NONE


def test_tls_context_with_a_missing_ca_file_fails(tmp_path: Path) -> None:
    settings = AgentSettings(server_url="https://x.invalid", ca_file=tmp_path / "none.pem")
    with pytest.raises(FileNotFoundError):
        tls_context(settings)


async def test_requests_carry_the_key_and_gzip() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/v1/agent/config":
            return httpx.Response(304)
        return httpx.Response(200, json={"accepted": 1})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://server"
    ) as http:
        client = ServerClient(http)
        result = await client.ingest("lsk_key", ingest_body([b"{}"]))
        reply = await client.agent_config("lsk_key", '"3"')
    assert result.outcome is Outcome.DELIVERED
    assert result.accepted == 1
    assert reply.status == 304
    ingest, config = seen
    assert ingest.headers["authorization"] == "Bearer lsk_key"
    assert ingest.headers["content-encoding"] == "gzip"
    assert config.headers["if-none-match"] == '"3"'


async def test_unreachable_server() -> None:
    settings = AgentSettings(server_url="http://127.0.0.1:9", timeout=timedelta(seconds=2))
    async with make_http_client(settings, "1.0") as http:
        client = ServerClient(http)
        result = await client.ingest("lsk_key", ingest_body([b"{}"]))
        assert result.outcome is Outcome.RETRY
        assert "ConnectError" in result.detail
        with pytest.raises(ServerUnreachable):
            await client.claim_status("agent", "lsc_token")


async def test_non_json_answers_are_empty_bodies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://server"
    ) as http:
        reply = await ServerClient(http).register("a", "0" * 64, "host", "1.0")
    assert reply.status == 502
    assert reply.body == {}
    assert not reply.ok
