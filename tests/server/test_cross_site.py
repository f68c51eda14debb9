"""Cross-site request forgery, request content types and security headers, over real HTTP.

A browser sends the session cookie with any request to this server, whichever
site's page made it; what it cannot forge is where the request came from
(``Origin``, ``Referer``, ``Sec-Fetch-Site``) or a non-form content type.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from lunasentri_core.builtin import SESSION_COOKIE

from .conftest import LiveServer
from .openapi_check import running

EVIL = "https://evil.example"
ALLOWED = "https://app.example"
MACHINES = "/api/v1/machines"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from running(tmp_path_factory.mktemp("cross-site"), cors_origins=[ALLOWED])


@pytest.fixture(scope="module")
def token(server: LiveServer) -> str:
    return server.login()


def by_cookie(server: LiveServer, token: str, **headers: str) -> httpx.Client:
    """A client that authenticates the way a browser does: by the session cookie only."""
    return httpx.Client(
        base_url=server.url, timeout=30, cookies={SESSION_COOKIE: token}, headers=headers
    )


def create(
    client: httpx.Client, name: str, content_type: str = "application/json"
) -> httpx.Response:
    body = json.dumps({"name": name}).encode()
    return client.post(MACHINES, content=body, headers={"content-type": content_type})


def machine_names(server: LiveServer, token: str) -> set[str]:
    with server.client(token) as client:
        return {m["name"] for m in client.get(MACHINES).json()["items"]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


# --------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": EVIL},
        {"origin": "null"},
        {"referer": f"{EVIL}/page"},
        {"sec-fetch-site": "cross-site"},
        {"origin": EVIL, "sec-fetch-site": "cross-site"},
        {},
    ],
    ids=["origin", "null-origin", "referer", "fetch-metadata", "both", "no-origin"],
)
def test_a_cookie_write_not_shown_to_come_from_this_server_is_refused(
    server: LiveServer, token: str, headers: dict[str, str]
) -> None:
    name = f"forged-{uuid.uuid4().hex}"
    with by_cookie(server, token, **headers) as client:
        plain = create(client, name, "text/plain")
        typed = create(client, name)

    for response in (plain, typed):
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/json"
        error = error_of(response)
        assert error["code"] == "cross_site"
        assert error["field"] == "origin"
    assert name not in machine_names(server, token)


def test_the_issue_example_is_refused_and_returns_no_key(server: LiveServer, token: str) -> None:
    with by_cookie(server, token, origin=EVIL) as client:
        response = create(client, "evil-box", "text/plain")
    assert response.status_code == 403
    assert "api_key" not in response.text
    assert "evil-box" not in machine_names(server, token)


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "SERVER"},
        {"origin": ALLOWED},
        {"referer": "SERVER/machines/x"},
        {"sec-fetch-site": "same-origin"},
        {"origin": ALLOWED, "sec-fetch-site": "cross-site"},
    ],
    ids=["own-origin", "cors-origin", "own-referer", "fetch-metadata", "cors-cross-site"],
)
def test_a_cookie_write_from_this_server_or_an_allowed_origin_passes(
    server: LiveServer, token: str, headers: dict[str, str]
) -> None:
    headers = {k: v.replace("SERVER", server.url) for k, v in headers.items()}
    name = f"fine-{uuid.uuid4().hex}"
    with by_cookie(server, token, **headers) as client:
        response = create(client, name)
        reads = client.get(MACHINES)
    assert response.status_code == 201, response.text
    assert reads.status_code == 200
    assert name in machine_names(server, token)


def test_reads_by_cookie_need_no_origin(server: LiveServer, token: str) -> None:
    with by_cookie(server, token, origin=EVIL) as client:
        assert client.get(MACHINES).status_code == 200
    with by_cookie(server, token) as client:
        assert client.get("/api/v1/auth/me").status_code == 200


def test_bearer_and_api_key_calls_are_unaffected(server: LiveServer, token: str) -> None:
    with server.client(token) as client:
        plain = client.post(MACHINES, json={"name": "by-bearer"})
        # Not from a browser (which would need a CORS preflight to send the header).
        foreign = client.post(MACHINES, json={"name": "by-bearer-2"}, headers={"origin": EVIL})
    assert plain.status_code == 201, plain.text
    assert foreign.status_code == 201, foreign.text
    key = plain.json()["api_key"]
    now = datetime.now(UTC).isoformat()
    samples = {"samples": [{"timestamp": now, "metrics": {"cpu.percent": 1.0}}]}
    with server.client(key) as agent:
        sent = agent.post(
            "/api/v1/ingest",
            content=gzip.compress(json.dumps(samples).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert sent.status_code == 200, sent.text


def test_a_login_from_another_site_is_refused(server: LiveServer) -> None:
    body = {"username": "admin", "password": "whatever it is"}
    with httpx.Client(base_url=server.url, headers={"origin": EVIL}) as client:
        response = client.post("/api/v1/auth/login", json=body)
    assert response.status_code == 403
    assert error_of(response)["code"] == "cross_site"


# --------------------------------------------------------------------------- content types


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_json_endpoints_refuse_other_content_types(
    server: LiveServer, token: str, content_type: str | None
) -> None:
    name = f"typed-{content_type}"
    headers = {"content-type": content_type} if content_type else {}
    with server.client(token) as client:
        response = client.post(MACHINES, content=json.dumps({"name": name}), headers=headers)
        rule = client.post("/api/v1/alert-rules", content=b'{"name": "r"}', headers=headers)
        key = client.post(MACHINES, json={"name": f"agent-{uuid.uuid4().hex}"}).json()["api_key"]
    with server.client(key) as agent:
        ingest = agent.post("/api/v1/ingest", content=b'{"samples": []}', headers=headers)
    for refused in (response, rule, ingest):
        assert refused.status_code == 415, refused.text
        error = error_of(refused)
        assert error["code"] == "unsupported_media_type"
        assert error["field"] == "content-type"
    assert name not in machine_names(server, token)


def test_json_with_parameters_and_empty_bodies_are_accepted(server: LiveServer, token: str) -> None:
    with server.client(token) as client:
        created = client.post(
            MACHINES,
            content=json.dumps({"name": "charset"}),
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert created.status_code == 201, created.text
        machine_id = created.json()["machine"]["id"]
        # An endpoint whose body may be empty needs no content type for an empty body.
        rotated = client.post(f"{MACHINES}/{machine_id}/keys/rotate")
    assert rotated.status_code == 201, rotated.text


# --------------------------------------------------------------------------- headers


def test_api_responses_are_nosniff(server: LiveServer, token: str) -> None:
    with server.client(token) as client:
        answers = [client.get(MACHINES), client.get("/api/v1/nothing-here")]
    with server.client() as anonymous:
        answers.append(anonymous.get(MACHINES))
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff", response.url


def test_hsts_only_when_the_request_came_over_https(server: LiveServer) -> None:
    with server.client() as client:
        plain = client.get("/healthz")
        # uvicorn trusts X-Forwarded-Proto from its forwarded_allow_ips (loopback by default).
        proxied = client.get("/healthz", headers={"x-forwarded-proto": "https"})
    assert "strict-transport-security" not in plain.headers
    assert proxied.headers["strict-transport-security"] == "max-age=31536000"
