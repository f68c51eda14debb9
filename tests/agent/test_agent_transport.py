"""How the agent reads the server's answers, and the requests it makes."""

from __future__ import annotations

import gzip
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
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

ERROR = {"error": {"code": "invalid", "message": "bad value", "field": "samples[0].timestamp"}}


class LoopbackServer:
    """A real HTTP/1.1 server on 127.0.0.1 accepting ingests; it records what came."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.connections: set[tuple[str, int]] = set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                owner.requests.append(("POST", self.path, self.headers["user-agent"]))
                owner.connections.add(self.client_address)
                body = b'{"accepted": 1}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


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


def test_the_small_gzip_window_compresses_samples_nearly_as_well() -> None:
    samples = [
        json.dumps(
            {
                "timestamp": f"2026-11-23T12:00:{second:02d}+00:00",
                "metrics": {
                    "cpu.percent": 3.5 + second,
                    "mem.used": 1_000_000 + 4096 * second,
                    "disk.used": [
                        {"labels": {"mount": f"/mnt/{disk}"}, "value": 5e9 + disk * second}
                        for disk in range(12)
                    ],
                },
            }
        ).encode()
        for second in range(60)
    ]
    body = ingest_body(samples)
    default = gzip.compress(b'{"samples":[' + b",".join(samples) + b"]}", 6, mtime=0)
    assert gzip.decompress(body) == gzip.decompress(default)
    assert len(body) <= 1.05 * len(default)


def test_a_plain_http_client_speaks_http_over_loopback(loopback: LoopbackServer) -> None:
    settings = AgentSettings(server_url=loopback.url)
    with make_http_client(settings, "1.0") as http:
        client = ServerClient(http)
        results = [client.ingest("lsk_key", ingest_body([b"{}"])) for _ in range(3)]
    assert [r.accepted for r in results] == [1, 1, 1]
    assert loopback.requests == [("POST", "/api/v1/ingest", "lunasentri-agent/1.0")] * 3
    assert len(loopback.connections) == 1  # kept alive between sends


def test_a_plain_http_client_refuses_tls() -> None:
    """It has no TLS context at all, so it fails closed rather than trust anything."""
    with (
        make_http_client(AgentSettings(server_url="http://127.0.0.1:1"), "1.0") as http,
        pytest.raises(httpx.UnsupportedProtocol, match="plain HTTP only"),
    ):
        http.get("https://127.0.0.1:1/")


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


def test_requests_carry_the_key_and_gzip() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/v1/agent/config":
            return httpx.Response(304)
        return httpx.Response(200, json={"accepted": 1})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://server") as http:
        client = ServerClient(http)
        result = client.ingest("lsk_key", ingest_body([b"{}"]))
        reply = client.agent_config("lsk_key", '"3"')
    assert result.outcome is Outcome.DELIVERED
    assert result.accepted == 1
    assert reply.status == 304
    ingest, config = seen
    assert ingest.headers["authorization"] == "Bearer lsk_key"
    assert ingest.headers["content-encoding"] == "gzip"
    assert config.headers["if-none-match"] == '"3"'


def test_unreachable_server() -> None:
    settings = AgentSettings(server_url="http://127.0.0.1:9", timeout=timedelta(seconds=2))
    with make_http_client(settings, "1.0") as http:
        client = ServerClient(http)
        result = client.ingest("lsk_key", ingest_body([b"{}"]))
        assert result.outcome is Outcome.RETRY
        assert "ConnectError" in result.detail
        with pytest.raises(ServerUnreachable):
            client.claim_status("agent", "lsc_token")


def test_non_json_answers_are_empty_bodies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://server") as http:
        reply = ServerClient(http).register("a", "0" * 64, "host", "1.0")
    assert reply.status == 502
    assert reply.body == {}
    assert not reply.ok
