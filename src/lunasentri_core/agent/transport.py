"""The agent's side of the HTTP API: ingest, enrolment by claim, central configuration.

Every method returns what the server said as a small value; deciding what to do
about it (retry, dead-letter, re-register) is the caller's job. Connection
failures and timeouts surface as :class:`ServerUnreachable`. Requests block
(``httpx.Client``): the agent does one thing at a time.
"""

from __future__ import annotations

import enum
import json
import ssl
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import httpcore
import httpx

from lunasentri_core.agent.backoff import parse_retry_after
from lunasentri_core.agent.settings import AgentSettings
from lunasentri_core.samples import Sample

INGEST_PATH = "/api/v1/ingest"
REGISTER_PATH = "/api/v1/agents/register"
CLAIM_STATUS_PATH = "/api/v1/agents/claim-status"
CONFIG_PATH = "/api/v1/agent/config"
LIVE_PATH = "/healthz/live"
PROBE_TIMEOUT = 5.0
"""Seconds a probe waits: a live server answers it at once."""

RETRY_LATER = frozenset({401, 403, 404, 405, 408, 429})
"""4xx answers to an ingest that say nothing about the batch itself.

408 and 429 are transient. 401 and 403 (a revoked or rotated key) and 404 or 405
(a wrong server URL) are configuration problems an operator fixes: treating
them as a bad batch would silently throw the whole spool away meanwhile.
"""


class ServerUnreachable(Exception):
    """No HTTP answer: connection refused, DNS, TLS or a timeout."""


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    """Transient (5xx, 408, 429, no answer) or fixable elsewhere (401, 403, 404)."""
    BAD_BATCH = "bad-batch"
    """The server refused the batch's content (400, 413, 422 ...): retrying cannot help."""


class SendResult(NamedTuple):
    outcome: Outcome
    detail: str
    status: int | None = None
    retry_after: float | None = None
    accepted: int | None = None


class Reply(NamedTuple):
    """A non-ingest answer: its status and JSON body (``{}`` if it had none)."""

    status: int
    body: Mapping[str, Any]
    etag: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        return describe_error(self.status, self.body)


LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=60)
"""One connection, kept alive between sends: the agent talks to one server."""


def make_http_client(settings: AgentSettings, version: str) -> httpx.Client:
    if not settings.server_url:
        raise ValueError("no server URL")
    url = settings.server_url.rstrip("/")
    tls: dict[str, Any]
    if url.lower().startswith("https:"):
        tls = {"verify": tls_context(settings)}
    else:
        tls = {"transport": PlainHTTPTransport(LIMITS)}
    return httpx.Client(
        base_url=url,
        timeout=settings.timeout.total_seconds(),
        headers={"user-agent": f"lunasentri-agent/{version}"},
        limits=LIMITS,
        **tls,
    )


class PlainHTTPTransport(httpx.HTTPTransport):
    """httpx's own transport for an ``http://`` server, without a TLS context.

    ``httpx.HTTPTransport`` makes an OpenSSL context whatever the URL, 0.45 MiB
    of the agent's memory that plain HTTP never uses. This one has none and
    refuses any other scheme, so it fails closed rather than trust anything.
    Requests go through HTTPTransport's own code, which needs only its pool.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        # Not super().__init__(): that is where the context would be made.
        self._pool = httpcore.ConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"{request.url.scheme}://: this client speaks plain HTTP only", request=request
            )
        return super().handle_request(request)


def tls_context(settings: AgentSettings) -> ssl.SSLContext:
    """The TLS settings for an ``https://`` server.

    The default trusts httpx's bundle (certifi), loaded only here: it costs over
    a megabyte of memory that an ``http://`` agent never spends.
    """
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    if not settings.verify_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    import certifi  # httpx's own dependency; its bundle is httpx's default trust

    return ssl.create_default_context(cafile=certifi.where())


def sample_json(sample: Sample) -> bytes:
    """A sample in the ingest API's compact form, as the codec writes it.

    Written out here so that the agent need not load the codec (cattrs and the
    server's model); tests/agent/test_agent_transport.py checks that both agree.
    """
    metrics: dict[str, Any] = {}
    for reading in sample.readings:
        if not reading.labels and reading.metric not in metrics:
            metrics[reading.metric] = reading.value
            continue
        # A metric with labelled series (or several series) is a list of entries.
        entries = metrics.setdefault(reading.metric, [])
        if not isinstance(entries, list):
            entries = metrics[reading.metric] = [{"labels": {}, "value": entries}]
        entries.append({"labels": dict(reading.labels), "value": reading.value})
    data = {"timestamp": sample.timestamp.isoformat(), "metrics": metrics}
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


GZIP_WINDOW_BITS = 16 + 12
"""A gzip stream (16 +) with a 4 KiB window (2**12)."""
GZIP_MEM_LEVEL = 4


def ingest_body(samples: Iterable[bytes]) -> bytes:
    """The gzip JSON ``{"samples": [...]}`` for already-encoded samples.

    zlib's defaults (a 32 KiB window, memory level 8) allocate 256 KiB per body,
    which would show in the agent's peak memory at every send. A 4 KiB window
    and level 4 take 24 KiB, and compress these bodies — the same keys sample
    after sample — within a few bytes of the defaults.
    """
    raw = b'{"samples":[' + b",".join(samples) + b"]}"
    compressor = zlib.compressobj(6, zlib.DEFLATED, GZIP_WINDOW_BITS, GZIP_MEM_LEVEL)
    return compressor.compress(raw) + compressor.flush()


def describe_error(status: int, body: Mapping[str, Any]) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = str(error.get("message") or error.get("code") or "")
        field = error.get("field")
        if field:
            message = f"{message} (at {field})"
        return f"HTTP {status}: {message}" if message else f"HTTP {status}"
    return f"HTTP {status}"


def classify_ingest(status: int, headers: Mapping[str, str], body: Mapping[str, Any]) -> SendResult:
    detail = describe_error(status, body)
    if 200 <= status < 300:
        accepted = body.get("accepted") if isinstance(body, Mapping) else None
        return SendResult(
            Outcome.DELIVERED,
            f"HTTP {status}",
            status,
            accepted=accepted if isinstance(accepted, int) else None,
        )
    retry_after = parse_retry_after(headers.get("retry-after"))
    if 400 <= status < 500 and status not in RETRY_LATER:
        return SendResult(Outcome.BAD_BATCH, detail, status)
    return SendResult(Outcome.RETRY, detail, status, retry_after=retry_after)


class ServerClient:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def ingest(self, api_key: str, body: bytes) -> SendResult:
        try:
            response = self.http.post(
                INGEST_PATH,
                content=body,
                headers={
                    "authorization": f"Bearer {api_key}",
                    "content-type": "application/json",
                    "content-encoding": "gzip",
                },
            )
        except httpx.HTTPError as error:
            return SendResult(Outcome.RETRY, _describe_failure(error))
        return classify_ingest(response.status_code, response.headers, _json(response))

    def probe(self) -> bool:
        """Whether the server answers at all (``/healthz/live``: no storage, no key)."""
        timeout = min(PROBE_TIMEOUT, self.http.timeout.read or PROBE_TIMEOUT)
        try:
            response = self.http.get(LIVE_PATH, timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    def register(self, agent_id: str, claim_token_hash: str, hostname: str, version: str) -> Reply:
        body = {
            "agent_id": agent_id,
            "claim_token_hash": claim_token_hash,
            "hostname": hostname,
            "version": version,
        }
        return self._call("POST", REGISTER_PATH, json=body)

    def claim_status(self, agent_id: str, claim_token: str) -> Reply:
        body = {"agent_id": agent_id, "claim_token": claim_token}
        return self._call("POST", CLAIM_STATUS_PATH, json=body)

    def agent_config(self, api_key: str, etag: str | None) -> Reply:
        headers = {"authorization": f"Bearer {api_key}"}
        if etag:
            headers["if-none-match"] = etag
        return self._call("GET", CONFIG_PATH, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServerUnreachable(_describe_failure(error)) from None
        return Reply(response.status_code, _json(response), response.headers.get("etag"))


def _json(response: httpx.Response) -> Mapping[str, Any]:
    if not response.content:
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}


def _describe_failure(error: httpx.HTTPError) -> str:
    kind = type(error).__name__
    text = str(error)
    return f"{kind}: {text}" if text else kind
