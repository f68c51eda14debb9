"""The OpenAPI document: valid 3.1, complete, and true of what the server answers.

The conformance run drives every documented operation of a real server through a
realistic scenario (users, machines, ingest, queries, keys, the claim workflow,
agent configuration, audit, export, logout) and checks every response it got:
its status is documented for the operation, and its body matches the schema
documented for that status.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from agentless.door import PASSWORD as DOOR_PASSWORD
from agentless.door import USERNAME, door_plugins
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from lunasentri_core import __version__
from lunasentri_core.security import CLAIM_PREFIX, hash_token, issue_token
from lunasentri_core.server import routes
from lunasentri_core.server.api import Api, Auth, Call
from lunasentri_core.server.dashboard import pages as dashboard
from lunasentri_core.server.openapi import openapi_document

from .alerting_support import wait_for
from .conftest import LiveServer
from .notifier_double import Receiver, plugins
from .openapi_check import ApiDoc, Http, Recorder, fetch_document, running

PASSWORD = "a long enough password 42"
NEW_PASSWORD = "another long password 43"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module: the document tests only read, the scenario runs once."""
    overrides = {"notifications": {"max_attempts": 1, "poll_interval": 0.2}}
    yield from running(
        tmp_path_factory.mktemp("openapi"),
        plugins={**plugins(), **door_plugins()},
        overrides=overrides,
    )


@pytest.fixture(scope="module")
def document(server: LiveServer) -> dict[str, Any]:
    return fetch_document(server)


@pytest.fixture(scope="module")
def session(server: LiveServer, document: dict[str, Any]) -> Scenario:
    """The conformance run, done once for the checks below."""
    with Scenario(server) as scenario:
        run_scenario(scenario)
    return scenario


# --------------------------------------------------------------------------- the document


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == __version__


def test_every_schema_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    doc = ApiDoc(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for operation in doc.operations:
        for status, response in operation.spec["responses"].items():
            for media in response.get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
            assert response["description"], (str(operation), status)
        if operation.has_body:
            Draft202012Validator.check_schema(doc.request_schema(operation))


def test_every_route_is_documented_and_every_operation_routed(
    server: LiveServer, document: dict[str, Any]
) -> None:
    routed: set[tuple[str, str]] = set()
    for route in server.app.routes:
        if isinstance(route, Mount) and route.path.startswith("/plugins"):
            continue
        assert isinstance(route, Route), route
        if route.name.startswith(dashboard.PAGE):
            continue  # HTML pages, not API operations
        path = re.sub(r"{(\w+)(:\w+)?}", r"{\1}", route.path)
        routed |= {(method, path) for method in route.methods or () if method != "HEAD"}
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert routed - documented == set(), "routes missing from the document"
    assert documented - routed == set(), "documented operations without a route"


def test_every_operation_is_described(document: dict[str, Any]) -> None:
    doc = ApiDoc(document)
    ids = [operation.id for operation in doc.operations]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for operation in doc.operations:
        spec = operation.spec
        assert spec.get("summary"), operation
        assert spec.get("responses"), operation
        assert any(code.startswith("2") for code in spec["responses"]), operation
        assert spec.get("tags"), operation
        if not operation.public:
            assert spec["security"], operation
            assert {"401", "403"} <= set(spec["responses"]), operation
        if operation.method.upper() not in ("GET", "HEAD"):
            assert "403" in spec["responses"], operation  # refused as cross-site
        for name in re.findall(r"{(\w+)}", operation.path):
            assert name in operation.path_params, (operation, name)
        if operation.has_body:
            assert {"400", "413", "415", "422"} <= set(spec["responses"]), operation


def test_public_operations_are_exactly_the_intended_ones(document: dict[str, Any]) -> None:
    public = {str(op) for op in ApiDoc(document).operations if op.public}
    assert public == {
        "GET /healthz",
        "GET /healthz/live",
        "GET /healthz/ready",
        "GET /metrics",
        "GET /api/v1/openapi.json",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/logout",
        "POST /api/v1/auth/reset",
        "POST /api/v1/agents/register",
        "POST /api/v1/agents/claim-status",
        "GET /agent/dist/{filename}",
    }


def test_an_optional_request_body_is_documented_as_optional(document: dict[str, Any]) -> None:
    doc = ApiDoc(document)
    assert doc.by_id("rotate_key").spec["requestBody"]["required"] is False
    assert doc.by_id("create_machine").spec["requestBody"]["required"] is True


def test_the_document_follows_the_declarations() -> None:
    api = Api("extra")

    @api.post(
        "/api/v1/extra/{thing_id}",
        auth=Auth.ADMIN,
        summary="An extra endpoint",
        request={"type": "object"},
        request_required=False,
        query={"q": {"type": "string", "x-required": True}},
        responses={201: api.schema("Thing", {"type": "object"}), 409: None},
        status=201,
    )
    async def make_thing(call: Call) -> object:
        """What it does."""
        return {}

    document = openapi_document([*routes.ALL, api], "1.2.3")
    validate(document)
    operation = document["paths"]["/api/v1/extra/{thing_id}"]["post"]
    assert operation["operationId"] == "make_thing"
    assert operation["description"] == "What it does."
    assert operation["tags"] == ["extra"]
    assert operation["requestBody"]["required"] is False
    assert operation["security"]
    assert {p["name"]: p["required"] for p in operation["parameters"]} == {
        "thing_id": True,
        "q": True,
    }
    assert "x-required" not in operation["parameters"][1]["schema"]
    assert operation["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Thing"
    }
    assert "content" not in operation["responses"]["409"]
    assert {"400", "401", "403", "404", "413", "415", "422"} <= set(operation["responses"])
    assert "Thing" in document["components"]["schemas"]


# --------------------------------------------------------------------------- conformance run


class Scenario:
    """A realistic session against the server, every response recorded."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.recorder = Recorder()
        self.http = Http(server, self.recorder)

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.client.close()

    def call(
        self, token: str | None, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        response = self.http.request(method, path, token, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        return response


def now_iso(offset: timedelta = timedelta()) -> str:
    return (datetime.now(UTC).replace(microsecond=0) + offset).isoformat()


def run_scenario(s: Scenario) -> None:
    _operations(s)
    admin = _login(s)
    alice_id, alice = _users(s, admin)
    machine_id, key, other_id = _machines(s, admin, alice)
    _ingest_and_query(s, alice, machine_id, key)
    _alerting(s, admin, alice, machine_id, key)
    _agent_config(s, admin, alice, machine_id, key)
    _keys(s, alice, machine_id, key)
    _claim_workflow(s, admin, alice_id)
    _agentless(s, admin, alice)
    _discovery(s, admin, alice)
    alice = _passwords(s, admin, alice_id, alice)
    _export_and_audit(s, admin, alice, alice_id)
    _cleanup(s, admin, alice, alice_id, other_id)


def _operations(s: Scenario) -> None:
    for path in ("/healthz", "/healthz/live", "/healthz/ready", "/metrics", "/api/v1/openapi.json"):
        s.call(None, "GET", path, 200)
    s.call(None, "POST", "/api/v1/healthz", 404)
    s.call(None, "POST", "/healthz", 405)


def _login(s: Scenario) -> str:
    s.call(None, "POST", "/api/v1/auth/login", 401, json={"username": "admin", "password": "no"})
    body = {"username": "admin", "password": s.server.settings.admin_password}
    forged = {"origin": "https://evil.example"}
    s.call(None, "POST", "/api/v1/auth/login", 403, json=body, headers=forged)
    admin: str = s.call(None, "POST", "/api/v1/auth/login", 200, json=body).json()["token"]
    s.call(admin, "GET", "/api/v1/auth/me", 200)
    s.call(None, "GET", "/api/v1/auth/me", 401)
    return admin


def _users(s: Scenario, admin: str) -> tuple[str, str]:
    user = {"username": "alice", "password": PASSWORD}
    alice_id = s.call(admin, "POST", "/api/v1/users", 201, json=user).json()["id"]
    s.call(admin, "POST", "/api/v1/users", 409, json=user)
    s.call(admin, "POST", "/api/v1/users", 422, json={"username": "bob", "password": "short"})
    body = {"username": "carol", "password": PASSWORD, "role": "admin"}
    carol_id = s.call(admin, "POST", "/api/v1/users", 201, json=body).json()["id"]
    s.call(admin, "PATCH", f"/api/v1/users/{carol_id}", 200, json={"role": "user"})
    s.call(admin, "PATCH", f"/api/v1/users/{carol_id}", 422, json={"role": "root"})
    s.call(admin, "PATCH", "/api/v1/users/nobody", 404, json={"role": "user"})
    admin_id = s.call(admin, "GET", "/api/v1/auth/me", 200).json()["id"]
    # The only administrator left cannot step down.
    s.call(admin, "PATCH", f"/api/v1/users/{admin_id}", 409, json={"role": "user"})
    s.call(admin, "GET", "/api/v1/users", 200)
    s.call(admin, "GET", f"/api/v1/users/{alice_id}", 200)
    s.call(admin, "GET", "/api/v1/users/nobody", 404)
    alice: str = s.call(None, "POST", "/api/v1/auth/login", 200, json=user).json()["token"]
    s.call(alice, "GET", "/api/v1/users", 403)
    s.call(alice, "GET", f"/api/v1/users/{alice_id}", 200)
    return alice_id, alice


def _machines(s: Scenario, admin: str, alice: str) -> tuple[str, str, str]:
    body = {"name": "web-1", "hostname": "web-1.example", "labels": {"env": "prod"}}
    created = s.call(alice, "POST", "/api/v1/machines", 201, json=body).json()
    machine_id, key = created["machine"]["id"], created["api_key"]
    s.call(alice, "POST", "/api/v1/machines", 409, json=body)
    s.call(alice, "POST", "/api/v1/machines", 422, json={"name": ""})
    wheel = created["install_command"].split()[2].split("/")[-1]  # served to new machines
    _download(s, f"/agent/dist/{wheel}")
    s.call(None, "GET", "/agent/dist/lunasentri.db", 404)
    me = s.call(alice, "GET", "/api/v1/auth/me", 200).json()
    other = {"name": "db-1", "owner_id": me["id"]}
    other_id = s.call(admin, "POST", "/api/v1/machines", 201, json=other).json()["machine"]["id"]
    s.call(alice, "GET", "/api/v1/machines", 200)
    first = s.call(admin, "GET", "/api/v1/machines", 200, params={"limit": "1"}).json()
    assert first["next_cursor"] is not None
    after = {"limit": "1", "cursor": first["next_cursor"], "latest": "false"}
    s.call(admin, "GET", "/api/v1/machines", 200, params=after)
    query = {"status": "unknown", "labels": "env:prod", "name": "WEB", "latest": "true"}
    (found,) = s.call(alice, "GET", "/api/v1/machines", 200, params=query).json()["items"]
    assert found["id"] == machine_id
    s.call(alice, "GET", "/api/v1/machines", 422, params={"cursor": "!"})
    s.call(alice, "GET", f"/api/v1/machines/{machine_id}", 200)
    s.call(alice, "GET", "/api/v1/machines/nope", 404)
    s.call(alice, "PATCH", f"/api/v1/machines/{machine_id}", 200, json={"name": "web-01"})
    s.call(alice, "PATCH", f"/api/v1/machines/{machine_id}", 200, json={"hostname": None})
    s.call(alice, "PATCH", f"/api/v1/machines/{other_id}", 409, json={"name": "web-01"})
    s.call(alice, "GET", f"/api/v1/machines/{machine_id}/keys", 200)
    return machine_id, key, other_id


def _download(s: Scenario, path: str) -> None:
    """Fetch an agent wheel as pip does: a 503 (still building, which on a busy machine
    outlasts the server's wait) is retried after its Retry-After, until the build ends."""
    deadline = time.monotonic() + 600
    while (response := s.http.request("GET", path)).status_code == 503:
        assert response.headers["Retry-After"], response.headers
        assert time.monotonic() < deadline, "the agent's wheels were never built"
        time.sleep(1)
    assert response.status_code == 200, (path, response.status_code, response.text)


def _ingest_and_query(s: Scenario, alice: str, machine_id: str, key: str) -> None:
    samples = [
        {
            "timestamp": now_iso(timedelta(seconds=-60 + 10 * k)),
            "metrics": {
                "cpu.percent": 10.0 + k,
                "mem.used": 1000 + k,
                "mem.total": 4000,
                "disk.used": [
                    {"labels": {"mount": "/"}, "value": 50.0},
                    {"labels": {"mount": "/home"}, "value": 20.0},
                ],
                "disk.total": [
                    {"labels": {"mount": "/"}, "value": 100.0},
                    {"labels": {"mount": "/home"}, "value": 80.0},
                ],
            },
        }
        for k in range(5)
    ]
    s.call(key, "POST", "/api/v1/ingest", 200, json={"samples": samples})
    gzipped = gzip.compress(json.dumps({"samples": samples[:1]}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    s.call(key, "POST", "/api/v1/ingest", 200, content=gzipped, headers=headers)
    epoch = {"samples": [{"timestamp": datetime.now(UTC).timestamp(), "metrics": {}}]}
    s.call(key, "POST", "/api/v1/ingest", 200, json=epoch)
    future = {"samples": [{"timestamp": now_iso(timedelta(days=30)), "metrics": {"x": 1}}]}
    s.call(key, "POST", "/api/v1/ingest", 422, json=future)
    s.call(key, "POST", "/api/v1/ingest", 400, content=b"{", headers=headers)
    text = {"content-type": "text/plain"}
    s.call(key, "POST", "/api/v1/ingest", 415, json={"samples": samples}, headers=text)
    s.call(alice, "POST", "/api/v1/ingest", 403, json={"samples": samples})
    s.call(None, "POST", "/api/v1/ingest", 401, json={"samples": samples})
    base = f"/api/v1/machines/{machine_id}"
    s.call(alice, "GET", f"{base}/latest", 200)
    s.call(alice, "GET", f"{base}/latest", 200, params={"metric": "disk.percent"})
    s.call(alice, "GET", f"{base}/latest", 422, params={"metric": "Not A Metric"})
    s.call(alice, "GET", f"{base}/history", 200, params={"metric": "cpu.percent"})
    params = {
        "metric": "disk.percent",
        "start": now_iso(timedelta(minutes=-5)),
        "end": now_iso(timedelta(minutes=1)),
        "step": "30s",
        "agg": "max",
        "labels": "mount:/",
    }
    s.call(alice, "GET", f"{base}/history", 200, params=params)
    s.call(alice, "GET", f"{base}/history", 422, params={"metric": "cpu.percent", "step": "-1"})
    s.call(alice, "GET", f"{base}/history", 422)
    s.call(key, "GET", f"{base}/latest", 403)
    s.call(alice, "GET", "/api/v1/latest", 200)
    many = {"machine": machine_id, "metric": "disk.percent", "series_labels": "mount:/"}
    s.call(alice, "GET", "/api/v1/latest", 200, params={**many, "limit": "1"})
    s.call(alice, "GET", "/api/v1/latest", 422, params={"machine": "a,,b"})
    s.call(key, "GET", "/api/v1/latest", 403)
    with s.http.stream("GET", f"{base}/stream", alice) as stream:
        assert stream.status_code == 200
        first = next(stream.iter_lines())
        assert first.startswith(("retry:", ":")), first
    s.call(alice, "GET", "/api/v1/machines/nope/stream", 404)


def _alerting(s: Scenario, admin: str, alice: str, machine_id: str, key: str) -> None:
    receiver = Receiver()
    receiver.status = 500
    try:
        rule_id = _rules(s, alice, machine_id)
        channel_id = _channels(s, alice, receiver)
        _silences(s, alice)
        sample = {"timestamp": now_iso(), "metrics": {"cpu.percent": 97.5}}
        s.call(key, "POST", "/api/v1/ingest", 200, json={"samples": [sample]})
        events = "/api/v1/alert-events"
        [event] = wait_for(lambda: s.call(alice, "GET", events, 200).json()["items"])
        s.call(alice, "GET", events, 200, params={"acknowledged": "false", "limit": "5"})
        s.call(alice, "GET", events, 422, params={"state": "pending"})
        s.call(alice, "POST", f"{events}/{event['id']}/acknowledge", 200)
        s.call(alice, "POST", f"{events}/nope/acknowledge", 404)
        s.call(alice, "GET", "/api/v1/alerts", 200)
        s.call(alice, "GET", "/api/v1/alerts", 200, params={"rule_id": rule_id, "state": "firing"})
        deliveries = "/api/v1/notifications"
        [dead] = wait_for(
            lambda: s.call(alice, "GET", deliveries, 200, params={"state": "dead"}).json()["items"]
        )
        s.call(alice, "POST", f"{deliveries}/{dead['id']}/retry", 200)
        s.call(alice, "POST", f"{deliveries}/nope/retry", 404)
        s.call(alice, "GET", deliveries, 422, params={"state": "lost"})
        s.call(alice, "GET", "/api/v1/notification-events", 200)
        s.call(admin, "GET", "/api/v1/notification-events", 200, params={"state": "dispatched"})
        path = f"/api/v1/machines/{machine_id}"
        s.call(alice, "GET", f"{path}/status-changes", 200)
        s.call(alice, "GET", f"{path}/status-changes", 422, params={"limit": "0"})
        s.call(alice, "PATCH", path, 200, json={"offline_after": 600})
        s.call(alice, "PATCH", path, 200, json={"offline_after": None})
        resend = f"/api/v1/channels/{channel_id}/resend-skipped"
        s.call(alice, "PATCH", f"/api/v1/channels/{channel_id}", 200, json={"enabled": False})
        s.call(alice, "POST", resend, 409)
        s.call(alice, "PATCH", f"/api/v1/channels/{channel_id}", 200, json={"enabled": True})
        s.call(alice, "POST", resend, 200)
        s.call(alice, "POST", "/api/v1/channels/nope/resend-skipped", 404)
        s.call(alice, "DELETE", f"/api/v1/channels/{channel_id}", 204)
        s.call(alice, "DELETE", f"/api/v1/channels/{channel_id}", 404)
        s.call(alice, "DELETE", f"/api/v1/alert-rules/{rule_id}", 204)
    finally:
        receiver.close()


def _rules(s: Scenario, alice: str, machine_id: str) -> str:
    rules = "/api/v1/alert-rules"
    body = {
        "name": "cpu high",
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": 90,
        "for_duration": 0,
        "scope": {"machine_id": machine_id, "labels": {}},
        "severity": "warning",
    }
    rule_id: str = s.call(alice, "POST", rules, 201, json=body).json()["id"]
    s.call(alice, "POST", rules, 422, json={**body, "metric": "CPU!"})
    s.call(alice, "GET", rules, 200)
    s.call(alice, "GET", f"{rules}/{rule_id}", 200)
    s.call(alice, "GET", f"{rules}/nope", 404)
    s.call(alice, "PATCH", f"{rules}/{rule_id}", 200, json={"severity": "critical"})
    s.call(alice, "PATCH", f"{rules}/{rule_id}", 422, json={"threshold": None})
    return rule_id


def _channels(s: Scenario, alice: str, receiver: Receiver) -> str:
    channels = "/api/v1/channels"
    body = {"name": "ops", "type": "loopback", "config": {"url": receiver.url}}
    channel_id: str = s.call(alice, "POST", channels, 201, json=body).json()["id"]
    s.call(alice, "POST", channels, 409, json=body)
    s.call(alice, "POST", channels, 422, json={**body, "type": "smoke-signals"})
    s.call(alice, "GET", channels, 200)
    s.call(alice, "GET", f"{channels}/{channel_id}", 200)
    s.call(alice, "PATCH", f"{channels}/{channel_id}", 200, json={"name": "ops-1"})
    s.call(alice, "POST", f"{channels}/{channel_id}/test", 200)
    return channel_id


def _silences(s: Scenario, alice: str) -> None:
    silences = "/api/v1/silences"
    body = {"labels": {"env": "staging"}, "duration": 600, "comment": "upgrade"}
    silence_id = s.call(alice, "POST", silences, 201, json=body).json()["id"]
    s.call(alice, "POST", silences, 422, json={"duration": 600})
    s.call(alice, "GET", silences, 200, params={"active": "true"})
    s.call(alice, "GET", f"{silences}/{silence_id}", 200)
    s.call(alice, "DELETE", f"{silences}/{silence_id}", 204)
    s.call(alice, "GET", f"{silences}/nope", 404)


def _agent_config(s: Scenario, admin: str, alice: str, machine_id: str, key: str) -> None:
    path = f"/api/v1/machines/{machine_id}/agent-config"
    etag = s.call(alice, "GET", path, 200).headers["etag"]
    s.call(alice, "GET", path, 304, headers={"if-none-match": etag})
    s.call(key, "GET", "/api/v1/agent/config", 304, headers={"if-none-match": etag})
    body = {"interval": 10, "collectors": ["cpu", "memory"], "labels": {"rack": "r1"}}
    s.call(alice, "PUT", path, 200, json=body)
    s.call(admin, "PUT", path, 422, json={"interval": 0, "collectors": ["cpu"]})
    etag = s.call(key, "GET", "/api/v1/agent/config", 200).headers["etag"]
    s.call(key, "GET", "/api/v1/agent/config", 304, headers={"if-none-match": etag})
    s.call(alice, "GET", "/api/v1/agent/config", 403)


def _keys(s: Scenario, alice: str, machine_id: str, key: str) -> None:
    base = f"/api/v1/machines/{machine_id}/keys"
    s.call(alice, "POST", f"{base}/rotate", 201)
    rotated = s.call(alice, "POST", f"{base}/rotate", 201, json={"grace_seconds": 0}).json()
    s.call(key, "GET", "/api/v1/agent/config", 401)
    s.call(rotated["api_key"], "GET", "/api/v1/agent/config", 200)
    s.call(alice, "POST", f"{base}/rotate", 422, json={"grace_seconds": "soon"})
    s.call(alice, "POST", f"{base}/{rotated['key']['id']}/revoke", 204)
    s.call(alice, "POST", f"{base}/{rotated['key']['id']}/revoke", 204)
    s.call(alice, "POST", f"{base}/unknown/revoke", 404)
    s.call(rotated["api_key"], "GET", "/api/v1/agent/config", 401)
    s.call(alice, "GET", base, 200)


def _claim_workflow(s: Scenario, admin: str, alice_id: str) -> None:
    agent_id = str(uuid.uuid4())
    token = issue_token(CLAIM_PREFIX).secret
    register = {
        "agent_id": agent_id,
        "claim_token_hash": hash_token(token),
        "hostname": "edge-1",
        "version": __version__,
    }
    s.call(None, "POST", "/api/v1/agents/register", 202, json=register)
    s.call(None, "POST", "/api/v1/agents/register", 202, json=register)
    conflict = {**register, "claim_token_hash": "0" * 64}
    s.call(None, "POST", "/api/v1/agents/register", 409, json=conflict)
    poll = {"agent_id": agent_id, "claim_token": token}
    s.call(None, "POST", "/api/v1/agents/claim-status", 200, json=poll)
    wrong = {"agent_id": agent_id, "claim_token": "lsc_wrong"}
    s.call(None, "POST", "/api/v1/agents/claim-status", 404, json=wrong)
    s.call(admin, "GET", "/api/v1/agents/pending", 200)
    path = f"/api/v1/agents/{agent_id}/claim"
    bad_claim = {"claim_token": "lsc_wrong", "name": "edge-1"}
    s.call(admin, "POST", path, 403, json=bad_claim)
    claim = {"claim_token": token, "name": "edge-1", "owner_id": alice_id, "labels": {"a": "b"}}
    s.call(admin, "POST", path, 201, json=claim)
    s.call(admin, "POST", path, 409, json=claim)
    delivered = s.call(None, "POST", "/api/v1/agents/claim-status", 200, json=poll).json()
    assert delivered["status"] == "claimed"
    assert delivered["api_key"]
    s.call(None, "POST", "/api/v1/agents/claim-status", 200, json=poll)
    s.call(delivered["api_key"], "GET", "/api/v1/agent/config", 200)


def _agentless(s: Scenario, admin: str, alice: str) -> None:
    s.call(alice, "GET", "/api/v1/collectors", 200)
    path = "/api/v1/credential-profiles"
    body = {"name": "corp", "username": USERNAME, "domain": "CORP", "password": DOOR_PASSWORD}
    profile = s.call(alice, "POST", path, 201, json=body).json()
    s.call(alice, "POST", path, 409, json=body)
    s.call(alice, "POST", path, 422, json={**body, "password": None})
    s.call(alice, "GET", path, 200)
    one = f"{path}/{profile['id']}"
    s.call(alice, "GET", one, 200)
    s.call(admin, "GET", one, 200)
    s.call(alice, "PATCH", one, 200, json={"https": False, "port": 5985})
    s.call(alice, "PATCH", one, 422, json={"port": 0})
    test = {"host": "127.0.0.1", "collector": "door"}
    s.call(alice, "POST", f"{one}/test", 200, json=test)
    s.call(alice, "POST", f"{one}/test", 422, json={**test, "host": "http://x/"})
    _devices_and_monitors(s, alice, profile["id"])
    s.call(alice, "DELETE", one, 204)
    s.call(alice, "DELETE", one, 404)


def _devices_and_monitors(s: Scenario, alice: str, profile_id: str) -> None:
    device = s.call(alice, "POST", "/api/v1/devices", 201, json={"address": "127.0.0.9"}).json()
    s.call(alice, "POST", "/api/v1/devices", 409, json={"address": "127.0.0.9"})
    s.call(alice, "GET", "/api/v1/devices", 200)
    s.call(alice, "GET", f"/api/v1/devices/{device['id']}", 200)
    body = {"device_id": device["id"], "credential_profile_id": profile_id, "collector": "door"}
    made = s.call(alice, "POST", "/api/v1/monitors", 201, json=body).json()
    s.call(alice, "POST", "/api/v1/monitors", 422, json={**body, "interval": 0})
    s.call(alice, "GET", "/api/v1/monitors", 200, params={"device_id": device["id"]})
    one = f"/api/v1/monitors/{made['id']}"
    s.call(alice, "GET", one, 200)
    s.call(alice, "PATCH", one, 200, json={"interval": 30})
    s.call(alice, "POST", f"{one}/disable", 200)
    s.call(alice, "POST", f"{one}/enable", 200)
    s.call(alice, "POST", f"{one}/poll", 200)
    s.call(alice, "DELETE", f"/api/v1/devices/{device['id']}", 409)
    s.call(alice, "DELETE", f"/api/v1/credential-profiles/{profile_id}", 409)
    s.call(alice, "DELETE", f"/api/v1/machines/{made['machine_id']}", 409)
    s.call(alice, "DELETE", one, 204)
    s.call(alice, "DELETE", f"/api/v1/devices/{device['id']}", 204)


def _discovery(s: Scenario, admin: str, alice: str) -> None:
    creds = {"name": "scan", "username": USERNAME, "password": DOOR_PASSWORD, "https": False}
    creds_id = s.call(alice, "POST", "/api/v1/credential-profiles", 201, json=creds).json()["id"]
    path = "/api/v1/discovery-profiles"
    # A loopback address nothing listens on, port 9: the run ends at once, found nothing.
    body = {
        "name": "lan",
        "targets": ["127.71.30.1"],
        "ports": [9],
        "credential_profile_id": creds_id,
        "collector": "door",
        "timeout": 2,
    }
    profile = s.call(alice, "POST", path, 201, json=body).json()
    s.call(alice, "POST", path, 409, json=body)
    s.call(alice, "POST", path, 422, json={**body, "targets": ["10.0.0.9-1"]})
    s.call(alice, "GET", path, 200)
    one = f"{path}/{profile['id']}"
    s.call(alice, "GET", one, 200)
    s.call(admin, "GET", one, 200)
    s.call(alice, "PATCH", one, 200, json={"concurrency": 8})
    s.call(alice, "PATCH", one, 422, json={"ports": []})
    run = s.call(alice, "POST", f"{one}/run", 202).json()
    for _ in range(600):
        run = s.call(alice, "GET", f"/api/v1/discovery-runs/{run['id']}", 200).json()
        if run["state"] != "running":
            break
        time.sleep(0.05)
    assert (run["state"], run["scanned"], run["found"]) == ("done", 1, 0), run
    with s.http.stream("GET", f"/api/v1/discovery-runs/{run['id']}/events", alice) as stream:
        assert stream.status_code == 200
        assert "event: end" in stream.read().decode()
    s.call(alice, "GET", f"{one}/runs", 200)
    s.call(alice, "GET", f"{one}/runs", 422, params={"limit": "0"})
    s.call(alice, "GET", "/api/v1/discovery-runs/nope", 404)
    s.call(alice, "PATCH", one, 200, json={"targets": ["127.72.0.0/19"]})
    s.call(alice, "POST", f"{one}/run", 422, json={"confirm_large": False})
    s.call(alice, "DELETE", one, 204)
    s.call(alice, "DELETE", one, 404)
    s.call(alice, "DELETE", f"/api/v1/credential-profiles/{creds_id}", 204)


def _passwords(s: Scenario, admin: str, alice_id: str, alice: str) -> str:
    issued = s.call(admin, "POST", f"/api/v1/users/{alice_id}/reset-token", 201).json()
    reset = {"token": issued["token"], "new_password": NEW_PASSWORD}
    s.call(None, "POST", "/api/v1/auth/reset", 204, json=reset)
    s.call(None, "POST", "/api/v1/auth/reset", 410, json=reset)
    s.call(None, "POST", "/api/v1/auth/reset", 400, json={**reset, "token": "lsr_nope"})
    s.call(alice, "GET", "/api/v1/auth/me", 401)
    login = {"username": "alice", "password": NEW_PASSWORD}
    first = s.call(None, "POST", "/api/v1/auth/login", 200, json=login).json()["token"]
    alice = s.call(None, "POST", "/api/v1/auth/login", 200, json=login).json()["token"]
    sessions = s.call(alice, "GET", "/api/v1/auth/sessions", 200).json()["items"]
    other = next(item["id"] for item in sessions if not item["current"])
    s.call(alice, "DELETE", f"/api/v1/auth/sessions/{other}", 204)
    s.call(alice, "DELETE", f"/api/v1/auth/sessions/{other}", 404)
    s.call(first, "GET", "/api/v1/auth/me", 401)
    wrong = {"current_password": "not it", "new_password": PASSWORD}
    s.call(alice, "POST", "/api/v1/auth/password", 400, json=wrong)
    change = {"current_password": NEW_PASSWORD, "new_password": PASSWORD}
    s.call(alice, "POST", "/api/v1/auth/password", 204, json=change)
    return alice


def _export_and_audit(s: Scenario, admin: str, alice: str, alice_id: str) -> None:
    path = f"/api/v1/users/{alice_id}/export"
    s.call(alice, "GET", path, 200)
    since = now_iso(timedelta(minutes=-10))
    s.call(alice, "GET", path, 200, params={"since": since, "step": "60"})
    s.call(admin, "GET", path, 200, params={"since": since})
    s.call(alice, "GET", path, 422, params={"since": "yesterday"})
    admin_id = s.call(admin, "GET", "/api/v1/auth/me", 200).json()["id"]
    s.call(alice, "GET", f"/api/v1/users/{admin_id}/export", 404)
    s.call(admin, "GET", "/api/v1/audit", 200)
    params = {"action": "machine.create", "since": now_iso(timedelta(hours=-1)), "limit": "5"}
    s.call(admin, "GET", "/api/v1/audit", 200, params=params)
    s.call(admin, "GET", "/api/v1/audit", 422, params={"limit": "0"})
    s.call(alice, "GET", "/api/v1/audit", 403)
    s.call(admin, "GET", "/api/v1/audit", 200, params={"via": "session"})
    window = {"target_id": alice_id, "until": now_iso(timedelta(hours=1))}
    page = s.call(admin, "GET", "/api/v1/audit", 200, params={**window, "limit": "1"}).json()
    s.call(admin, "GET", "/api/v1/audit", 200, params={"before": page["items"][0]["id"]})
    s.call(admin, "GET", "/api/v1/audit", 422, params={"until": "soon"})
    s.call(admin, "GET", "/api/v1/plugins", 200)
    s.call(alice, "GET", "/api/v1/plugins", 403)


def _cleanup(s: Scenario, admin: str, alice: str, alice_id: str, other_id: str) -> None:
    s.call(alice, "DELETE", f"/api/v1/machines/{other_id}", 204)
    s.call(alice, "DELETE", f"/api/v1/machines/{other_id}", 404)
    admin_id = s.call(admin, "GET", "/api/v1/auth/me", 200).json()["id"]
    s.call(admin, "DELETE", f"/api/v1/users/{admin_id}", 409)
    s.call(admin, "DELETE", f"/api/v1/users/{alice_id}", 204)
    s.call(admin, "GET", f"/api/v1/users/{alice_id}", 404)
    s.call(alice, "GET", "/api/v1/machines", 401)
    s.call(admin, "POST", "/api/v1/auth/logout", 204)
    s.call(admin, "GET", "/api/v1/auth/me", 401)
    s.call(None, "POST", "/api/v1/auth/logout", 204)


def test_every_response_of_a_real_session_conforms(
    session: Scenario, document: dict[str, Any]
) -> None:
    doc = ApiDoc(document)
    scenario = session
    problems = [
        problem
        for response, streamed in scenario.recorder.responses
        for problem in doc.check(response, streamed=streamed)
    ]
    assert problems == [], "\n".join(problems)

    found = (doc.find(r.request.method, r.request.url.path) for r, _ in scenario.recorder.responses)
    covered = {operation.id for operation in found if operation is not None}
    missing = [str(op) for op in doc.operations if op.id not in covered]
    assert missing == [], f"the scenario does not exercise {missing}"


def test_requests_of_a_real_session_match_the_request_schemas(
    session: Scenario, document: dict[str, Any]
) -> None:
    """Every request the server accepted is valid under its documented request schema."""
    doc = ApiDoc(document)
    scenario = session

    problems = []
    for response, _ in scenario.recorder.responses:
        request = response.request
        operation = doc.find(request.method, request.url.path)
        if operation is None or not operation.has_body or not response.is_success:
            continue
        raw = request.content
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        if not raw and not operation.spec["requestBody"]["required"]:
            continue
        validator = doc.request_validator(operation)
        problems += [
            f"{operation}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(json.loads(raw))
        ]
    assert problems == [], "\n".join(problems)


def test_the_checker_reports_what_the_document_does_not_say(document: dict[str, Any]) -> None:
    doc = ApiDoc(document)

    def answer(method: str, path: str, status: int, **kwargs: Any) -> list[str]:
        request = httpx.Request(method, f"http://127.0.0.1{path}")
        return doc.check(httpx.Response(status, request=request, **kwargs))

    machine = {
        "id": "m1",
        "name": "web",
        "hostname": None,
        "kind": "agent",
        "labels": {},
        "status": "unknown",
        "last_seen": None,
        "created_at": "2026-01-01T00:00:00+00:00",
        "owner_id": "u1",
    }
    error = {"error": {"code": "not_found", "message": "no such machine", "field": None}}
    assert answer("GET", "/api/v1/machines/m1", 200, json=machine) == []
    assert answer("GET", "/api/v1/machines/m1", 404, json=error) == []
    assert answer("DELETE", "/api/v1/machines/m1", 204) == []

    def one_problem(problems: list[str], *words: str) -> None:
        assert len(problems) == 1, problems
        assert all(word in problems[0] for word in words), problems

    naive = {**machine, "created_at": "2026-01-01T00:00:00"}
    one_problem(answer("GET", "/api/v1/machines/m1", 200, json=naive), "created_at")
    incomplete = {k: v for k, v in machine.items() if k != "name"}
    one_problem(answer("GET", "/api/v1/machines/m1", 200, json=incomplete), "name")
    one_problem(answer("GET", "/api/v1/machines/m1", 200, json={**machine, "kind": "toaster"}))
    one_problem(answer("GET", "/api/v1/machines/m1", 418, json=error), "not documented")
    one_problem(answer("GET", "/api/v1/machines/m1", 404, json={"detail": "x"}), "error")
    one_problem(answer("GET", "/api/v1/machines/m1", 200, text="<html>"), "content type")
    one_problem(answer("DELETE", "/api/v1/machines/m1", 204, content=b"{}"), "without a body")
    one_problem(answer("GET", "/api/v1/nowhere", 200, json={}), "no documented operation")
    one_problem(answer("GET", "/api/v1/nowhere", 404, json={"detail": "x"}), "error")
