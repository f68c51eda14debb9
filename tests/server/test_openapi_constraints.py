"""The OpenAPI document states the constraints the server enforces (issue 12, point 10).

Each case is a request that schemathesis found the two disagreeing on: the server
refused what the document allowed, or accepted what it refused. Here the document's
own schema must refuse the request, and the real server must refuse it too, with a
422 naming the field. ``nox -s schemathesis`` fuzzes the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from lunasentri_core.security import hash_token

from .conftest import LiveServer
from .openapi_check import ApiDoc, fetch_document, running


@attrs.frozen
class World:
    server: LiveServer
    doc: ApiDoc
    admin: str
    user_id: str
    machine_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for server in running(Path(tmp_path_factory.mktemp("constraints"))):
        admin = server.login()
        with server.client(admin) as client:
            me = client.get("/api/v1/auth/me").json()
            machine = client.post("/api/v1/machines", json={"name": "web-1"}).json()
        doc = ApiDoc(fetch_document(server))
        yield World(server, doc, admin, me["id"], machine["machine"]["id"])


@attrs.frozen
class Case:
    operation_id: str
    path: str
    field: str
    body: dict[str, Any] | None = None
    query: dict[str, str] = attrs.field(factory=dict)

    @property
    def method(self) -> str:
        return "GET" if self.body is None else ("PUT" if "agent-config" in self.path else "POST")


RULE = {"name": "cpu", "metric": "cpu.percent", "comparison": ">", "threshold": 90}
AGENT = {"agent_id": "agent-1", "claim_token_hash": hash_token("t" * 32), "hostname": "h1"}
CASES = {
    "empty metric": Case(
        "create_alert_rule", "/api/v1/alert-rules", "metric", {**RULE, "metric": ""}
    ),
    "rule name with a control character": Case(
        "create_alert_rule", "/api/v1/alert-rules", "name", {**RULE, "name": "cpu\x1f"}
    ),
    "empty channel type": Case(
        "create_channel",
        "/api/v1/channels",
        "type",
        {"name": "ops", "type": "", "config": {}},
    ),
    "empty owner_id": Case(
        "create_machine", "/api/v1/machines", "owner_id", {"name": "db-1", "owner_id": ""}
    ),
    "label name with a capital": Case(
        "create_machine", "/api/v1/machines", "labels.Env", {"name": "db-2", "labels": {"Env": "x"}}
    ),
    "empty collector name": Case(
        "set_agent_config",
        "/api/v1/machines/{machine_id}/agent-config",
        "collectors[0]",
        {"interval": 10, "collectors": [""]},
    ),
    "huge grace_seconds": Case(
        "rotate_key",
        "/api/v1/machines/{machine_id}/keys/rotate",
        "grace_seconds",
        {"grace_seconds": 8.2e307},
    ),
    "negative subnormal grace_seconds": Case(
        "rotate_key",
        "/api/v1/machines/{machine_id}/keys/rotate",
        "grace_seconds",
        {"grace_seconds": -5e-324},
    ),
    "silence with ends_at and duration": Case(
        "create_silence",
        "/api/v1/silences",
        "duration",
        {"machine_id": "m", "ends_at": "2030-01-01T00:00:00Z", "duration": 60},
    ),
    "agent version with a control character": Case(
        "register_agent", "/api/v1/agents/register", "version", {**AGENT, "version": "1.0\x18"}
    ),
    "agent version not ASCII": Case(
        "register_agent", "/api/v1/agents/register", "version", {**AGENT, "version": "1.0\u00e9"}
    ),
    "hostname with a space": Case(
        "register_agent",
        "/api/v1/agents/register",
        "hostname",
        {**AGENT, "version": "1.0", "hostname": "a b"},
    ),
    "id filter with a control character": Case(
        "list_alert_events", "/api/v1/alert-events", "machine_id", query={"machine_id": "m\x95"}
    ),
    "empty id filter": Case(
        "list_notifications", "/api/v1/notifications", "channel_id", query={"channel_id": ""}
    ),
    "empty since on audit": Case("list_audit", "/api/v1/audit", "since", query={"since": ""}),
    "empty limit on audit": Case("list_audit", "/api/v1/audit", "limit", query={"limit": ""}),
    "empty since on export": Case(
        "export_user", "/api/v1/users/{user_id}/export", "since", query={"since": ""}
    ),
    "empty step on export": Case(
        "export_user", "/api/v1/users/{user_id}/export", "step", query={"step": ""}
    ),
}


def _refused_by_document(doc: ApiDoc, case: Case) -> bool:
    operation = doc.by_id(case.operation_id)
    if case.body is not None:
        return not doc.request_validator(operation).is_valid(case.body)
    parameters = {p["name"]: p for p in operation.spec["parameters"] if p["in"] == "query"}
    return any(
        not doc.validator()
        .evolve(schema=parameters[name]["schema"])
        .is_valid(_typed(parameters[name]["schema"], value))
        for name, value in case.query.items()
    )


def _typed(schema: dict[str, Any], text: str) -> object:
    """A query value as the document's type reads it: '' is no integer or number."""
    if schema.get("type") in ("integer", "number"):
        try:
            return float(text)
        except ValueError:
            return text
    return text


@pytest.mark.parametrize("name", list(CASES))
def test_the_document_and_the_server_both_refuse(world: World, name: str) -> None:
    case = CASES[name]
    assert _refused_by_document(world.doc, case), f"the document allows {name}"
    path = case.path.format(machine_id=world.machine_id, user_id=world.user_id)
    with world.server.client(world.admin) as client:
        response = client.request(case.method, path, json=case.body, params=case.query)
    assert response.status_code == 422, response.text
    fields = [d["field"] for d in response.json()["error"].get("details", [])]
    assert case.field in [response.json()["error"]["field"], *fields], response.text
