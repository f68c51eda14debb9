"""Shared steps of the alerting API tests: two users on one server, machines, samples."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import httpx

from .conftest import LiveServer
from .openapi_check import ApiDoc, Http, fetch_document, is_stream

PASSWORD = "a long enough password 42"
T = TypeVar("T")


@attrs.define
class Team:
    """A server with an admin and two users, alice and bob, and one client for all."""

    server: LiveServer
    http: Http
    doc: ApiDoc
    admin: str
    admin_id: str
    alice: str
    alice_id: str
    bob: str
    bob_id: str

    def call(
        self, token: str | None, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        """A request whose status must be ``expect`` and whose answer the document describes."""
        response = self.http.request(method, path, token, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        problems = self.doc.check(response, streamed=is_stream(response))
        assert problems == [], problems
        return response

    def json(self, token: str | None, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        return self.call(token, method, path, expect, **kwargs).json()

    def error(
        self, token: str | None, method: str, path: str, expect: int, **kwargs: Any
    ) -> dict[str, Any]:
        error: dict[str, Any] = self.json(token, method, path, expect, **kwargs)["error"]
        return error

    def machine(self, token: str, labels: dict[str, str] | None = None) -> tuple[str, str]:
        """A new machine of the token's user: (id, API key)."""
        body = {"name": f"m-{uuid.uuid4().hex[:8]}", "labels": labels or {}}
        created = self.json(token, "POST", "/api/v1/machines", 201, json=body)
        return created["machine"]["id"], created["api_key"]

    def ingest(self, key: str, metrics: dict[str, Any], at: datetime | None = None) -> None:
        sample = {"timestamp": (at or datetime.now(UTC)).isoformat(), "metrics": metrics}
        self.call(key, "POST", "/api/v1/ingest", 200, json={"samples": [sample]})


def make_team(server: LiveServer, http: Http) -> Team:
    admin = server.login()
    admin_id = http.request("GET", "/api/v1/auth/me", admin).json()["id"]
    users = {}
    for name in ("alice", "bob"):
        body = {"username": name, "password": PASSWORD}
        created = http.request("POST", "/api/v1/users", admin, json=body)
        assert created.status_code == 201, created.text
        users[name] = (server.login(name, PASSWORD), created.json()["id"])
    return Team(
        server,
        http,
        ApiDoc(fetch_document(server)),
        admin,
        admin_id,
        *users["alice"],
        *users["bob"],
    )


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """The first truthy value of ``condition()``, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
