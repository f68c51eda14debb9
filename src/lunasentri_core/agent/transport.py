"""The agent's side of the HTTP API: ingest, enrolment by claim, central configuration.

Every method returns what the server said as a small value; deciding what to do
about it (retry, dead-letter, re-register) is the caller's job. Connection
failures and timeouts surface as :class:`ServerUnreachable`.
"""

from __future__ import annotations

import enum
import gzip
import importlib.util
import json
import ssl
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import httpx

from lunasentri_core.agent.backoff import parse_retry_after
from lunasentri_core.agent.settings import AgentSettings

INGEST_PATH = "/api/v1/ingest"
REGISTER_PATH = "/api/v1/agents/register"
CLAIM_STATUS_PATH = "/api/v1/agents/claim-status"
CONFIG_PATH = "/api/v1/agent/config"

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


@attrs.frozen
class SendResult:
    outcome: Outcome
    detail: str
    status: int | None = None
    retry_after: float | None = None
    accepted: int | None = None


@attrs.frozen
class Reply:
    """A non-ingest answer: its status and JSON body (``{}`` if it had none)."""

    status: int
    body: Mapping[str, Any]
    etag: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        return describe_error(self.status, self.body)


def make_http_client(settings: AgentSettings, version: str) -> httpx.AsyncClient:
    if not settings.server_url:
        raise ValueError("no server URL")
    _remember_missing_sniffio()
    return httpx.AsyncClient(
        base_url=settings.server_url.rstrip("/"),
        timeout=settings.timeout.total_seconds(),
        verify=tls_context(settings),
        headers={"user-agent": f"lunasentri-agent/{version}"},
        # One connection, kept alive between sends: the agent talks to one server.
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=60),
    )


def _remember_missing_sniffio() -> None:
    """Make httpcore's per-request ``import sniffio`` fail fast when it is not installed.

    httpcore imports sniffio inside every request (encode/httpcore#1102); anyio 4.11+
    no longer installs it, and a failed import is not cached, so each request scans
    sys.path again: a fifth of the agent's CPU per send. ``None`` in sys.modules is
    Python's own "known to be absent" marker, so nothing changes but the speed.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def tls_context(settings: AgentSettings) -> ssl.SSLContext:
    """The TLS settings for the server, or a context that trusts nothing for plain HTTP.

    Loading a CA bundle costs a few MB of memory; an ``http://`` server never needs
    one, and a context that trusts no CA fails closed if TLS were ever attempted.
    """
    url = settings.server_url or ""
    if not url.lower().startswith("https:"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    if not settings.verify_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    import certifi  # httpx's own dependency; its bundle is httpx's default trust

    return ssl.create_default_context(cafile=certifi.where())


def ingest_body(samples: Iterable[bytes]) -> bytes:
    """The gzip JSON ``{"samples": [...]}`` for already-encoded samples."""
    raw = b'{"samples":[' + b",".join(samples) + b"]}"
    return gzip.compress(raw, compresslevel=6, mtime=0)


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
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def ingest(self, api_key: str, body: bytes) -> SendResult:
        try:
            response = await self.http.post(
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

    async def register(
        self, agent_id: str, claim_token_hash: str, hostname: str, version: str
    ) -> Reply:
        body = {
            "agent_id": agent_id,
            "claim_token_hash": claim_token_hash,
            "hostname": hostname,
            "version": version,
        }
        return await self._call("POST", REGISTER_PATH, json=body)

    async def claim_status(self, agent_id: str, claim_token: str) -> Reply:
        body = {"agent_id": agent_id, "claim_token": claim_token}
        return await self._call("POST", CLAIM_STATUS_PATH, json=body)

    async def agent_config(self, api_key: str, etag: str | None) -> Reply:
        headers = {"authorization": f"Bearer {api_key}"}
        if etag:
            headers["if-none-match"] = etag
        return await self._call("GET", CONFIG_PATH, headers=headers)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            response = await self.http.request(method, path, **kwargs)
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
