"""Bad input to every operation of the OpenAPI document: always a documented 4xx.

Table-driven from the document itself, so a new endpoint is swept without being
listed here (except for a valid example body, which the table below must have):
missing, wrong and wrong-kind credentials; malformed, mistyped, incomplete,
over-long, over-large and non-finite bodies; bad content encodings; unknown ids
and bad query parameters. Every answer is a 4xx with the error shape, documented
for the operation, never a 500, and no refused request changes anything.
"""

from __future__ import annotations

import gzip
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import pytest
from agentless.door import PASSWORD as DOOR_PASSWORD
from agentless.door import USERNAME as DOOR_USERNAME
from agentless.door import door_plugins

from lunasentri_core import __version__
from lunasentri_core.security import CLAIM_PREFIX, hash_token, issue_token
from lunasentri_core.server import routes
from lunasentri_core.server.openapi import openapi_document

from .conftest import LiveServer
from .notifier_double import plugins
from .openapi_check import ApiDoc, Http, Operation, fetch_document, is_stream, running

PASSWORD = "a long enough password 42"
BODY_LIMIT = 256 * 1024
BATCH_LIMIT = 50

DOC = ApiDoc(openapi_document(routes.ALL, __version__))
OPERATIONS = DOC.operations
PROTECTED = [op for op in OPERATIONS if not op.public]
WITH_BODY = [op for op in OPERATIONS if op.has_body]
ids: Callable[[Operation], str] = repr


def now(offset: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + offset).isoformat()


# A valid body per operation with one: the sweep breaks it in every way.
VALID_BODIES: dict[str, Callable[[], dict[str, Any]]] = {
    "login": lambda: {"username": "admin", "password": "not the password"},
    "change_password": lambda: {"current_password": "nope", "new_password": PASSWORD},
    "reset_password": lambda: {"token": "lsr_unknown", "new_password": PASSWORD},
    "create_user": lambda: {"username": "zed", "password": PASSWORD, "role": "user"},
    "update_user": lambda: {"role": "user"},
    "create_machine": lambda: {"name": "new", "hostname": "h", "labels": {"a": "b"}},
    "update_machine": lambda: {
        "name": "renamed",
        "hostname": "h2",
        "labels": {"c": "d"},
        "offline_after": 300,
    },
    "rotate_key": lambda: {"grace_seconds": 0},
    "set_agent_config": lambda: {"interval": 9, "collectors": ["cpu"], "labels": {"x": "y"}},
    "register_agent": lambda: {
        "agent_id": "agent-new",
        "claim_token_hash": "ab" * 32,
        "hostname": "h",
        "version": "1.0",
    },
    "claim_status": lambda: {"agent_id": "agent-new", "claim_token": "lsc_unknown"},
    "claim_agent": lambda: {"claim_token": "lsc_wrong", "name": "claimed", "labels": {}},
    "ingest": lambda: {"samples": [{"timestamp": now(), "metrics": {"cpu.percent": 1.5}}]},
    "create_alert_rule": lambda: {
        "name": "hot",
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": 90,
        "for_duration": 60,
        "scope": {"labels": {"env": "prod"}},
        "severity": "critical",
        "enabled": True,
    },
    "update_alert_rule": lambda: {
        "name": "hotter",
        "metric": "mem.percent",
        "comparison": ">=",
        "threshold": 95,
        "for_duration": 0,
        "scope": {"machine_id": None},
        "severity": "info",
        "enabled": False,
    },
    "create_channel": lambda: {
        "name": "pager",
        "type": "loopback",
        "config": {"url": "http://127.0.0.1:9/hook"},
        "enabled": True,
    },
    "update_channel": lambda: {
        "name": "pager-2",
        "config": {"url": "http://127.0.0.1:9/other"},
        "enabled": False,
    },
    "create_discovery_profile": lambda: {
        "name": "lan-2",
        "targets": ["127.71.40.1", "127.71.40.2-3"],
        "credential_profile_id": None,
        "ports": [9],
        "concurrency": 4,
        "timeout": 1.5,
        "collector": "wmi",
    },
    "update_discovery_profile": lambda: {
        "name": "lan-3",
        "targets": ["127.71.40.0/30"],
        "credential_profile_id": None,
        "ports": [9, 10],
        "concurrency": 2,
        "timeout": 0.5,
        "collector": "winrm",
    },
    "run_discovery_profile": lambda: {"confirm_large": False},
    "create_silence": lambda: {
        "labels": {"env": "prod"},
        "duration": 600,
        "starts_at": now(),
        "machine_id": None,
        "rule_id": None,
        "comment": "maintenance",
    },
    "create_credential_profile": lambda: {
        "name": "corp",
        "transport": "ntlm",
        "username": "svc",
        "domain": "CORP",
        "password": "a password",
        "https": True,
        "port": 5986,
        "verify_tls": True,
        "ca_path": None,
        "cert_path": None,
        "key_path": None,
    },
    "update_credential_profile": lambda: {"name": "corp-2", "password": "another", "port": 5985},
    "test_credential_profile": lambda: {"host": "127.0.0.1", "collector": "door", "timeout": 5},
    "create_device": lambda: {"address": "127.0.0.8"},
    "create_monitor": lambda: {
        "device_id": "not-a-device",
        "credential_profile_id": "not-a-profile",
        "collector": "door",
        "interval": 60,
        "enabled": True,
        "options": {},
    },
    "update_monitor": lambda: {"interval": 30, "enabled": False, "options": {"a": 1}},
}


@attrs.frozen
class Case:
    what: str
    request: dict[str, Any]
    """httpx request arguments (content, headers, params)."""
    expect: tuple[int, ...]
    field: str | None = None
    """The error's ``field`` when it must name one ('' is the body itself)."""


@attrs.define
class World:
    """A server with a little state, and everything needed to address it."""

    server: LiveServer
    doc: ApiDoc
    admin: str
    user: str
    key: str
    params: dict[str, str]
    http: Http
    baseline: dict[str, Any] = attrs.field(factory=dict)

    def send(self, operation: Operation, token: str | None, **request: Any) -> httpx.Response:
        path = operation.path.format(**self.params)
        return self.http.request(operation.method, path, token, **request)

    def token_for(self, operation: Operation) -> str:
        """Credentials that pass the operation's authorization."""
        return self.key if operation.for_machines else self.admin

    def snapshot(self) -> dict[str, Any]:
        machine = self.params["machine_id"]
        get = self._get
        return {
            "machines": get("/api/v1/machines"),
            "users": get("/api/v1/users"),
            "keys": get(f"/api/v1/machines/{machine}/keys"),
            "config": get(f"/api/v1/machines/{machine}/agent-config"),
            "latest": get(f"/api/v1/machines/{machine}/latest"),
            "pending": get("/api/v1/agents/pending"),
            "sessions": get("/api/v1/auth/sessions"),
            "audit": get("/api/v1/audit", limit="1000"),
            "rules": get("/api/v1/alert-rules"),
            "channels": get("/api/v1/channels"),
            "silences": get("/api/v1/silences"),
            "deliveries": get("/api/v1/notifications"),
            "events": get("/api/v1/notification-events"),
            "alert_events": get("/api/v1/alert-events"),
            "credential_profiles": get("/api/v1/credential-profiles"),
            "devices": get("/api/v1/devices"),
            "monitors": get("/api/v1/monitors"),
            "discovery": get("/api/v1/discovery-profiles"),
            "discovery_runs": get(
                f"/api/v1/discovery-profiles/{self.params['discovery_profile_id']}/runs"
            ),
        }

    def _get(self, path: str, **params: str) -> Any:
        response = self.http.request("GET", path, self.admin, params=params)
        assert response.status_code == 200, (path, response.text)
        return response.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for server in running(
        tmp_path_factory.mktemp("bad-input"),
        plugins={**plugins(), **door_plugins()},
        # No scheduled polls: a poll changes the monitors the sweep checks unchanged.
        overrides={"agentless": {"enabled": False}},
        max_body_bytes=BODY_LIMIT,
        max_batch_points=BATCH_LIMIT,
    ):
        with Http(server) as http:
            yield _populate(server, http)


def _populate(server: LiveServer, http: Http) -> World:
    admin = server.login()
    with server.client(admin) as client:
        user_id = client.post(
            "/api/v1/users", json={"username": "bob", "password": PASSWORD}
        ).json()["id"]
        created = client.post("/api/v1/machines", json={"name": "target"}).json()
        sessions = client.get("/api/v1/auth/sessions").json()["items"]
        alerting = _alerting_records(client)
        agentless = _agentless_records(client)
        discovery = _discovery_records(client)
    token = issue_token(CLAIM_PREFIX).secret
    agent_id = str(uuid.uuid4())
    register = {
        "agent_id": agent_id,
        "claim_token_hash": hash_token(token),
        "hostname": "edge",
        "version": "1.0",
    }
    with server.client() as client:
        assert client.post("/api/v1/agents/register", json=register).status_code == 202
    params = {
        "machine_id": created["machine"]["id"],
        "key_id": created["key"]["id"],
        "user_id": user_id,
        "session_id": sessions[0]["id"],
        "agent_id": agent_id,
        **alerting,
        **agentless,
        **discovery,
    }
    world = World(
        server=server,
        doc=ApiDoc(fetch_document(server)),
        admin=admin,
        user=server.login("bob", PASSWORD),
        key=created["api_key"],
        params=params,
        http=http,
    )
    world.baseline = world.snapshot()
    return world


def _alerting_records(client: httpx.Client) -> dict[str, str]:
    """A rule, a channel and a silence to aim at, and ids of an event and a delivery."""
    rule = {"name": "r", "metric": "cpu.percent", "comparison": ">", "threshold": 1}
    channel = {"name": "c", "type": "loopback", "config": {"url": "http://127.0.0.1:9/"}}
    silence = {"labels": {"a": "b"}, "duration": 600}
    ids = {
        "rule_id": client.post("/api/v1/alert-rules", json=rule).json()["id"],
        "channel_id": client.post("/api/v1/channels", json=channel).json()["id"],
        "silence_id": client.post("/api/v1/silences", json=silence).json()["id"],
    }
    # No sample crosses the rule here, so no event or delivery exists: unknown ids do.
    return {**ids, "event_id": uuid.uuid4().hex, "delivery_id": uuid.uuid4().hex}


def _agentless_records(client: httpx.Client) -> dict[str, str]:
    """A credential profile, a device and a monitor of it to aim at."""
    body = {"name": "p", "username": DOOR_USERNAME, "password": DOOR_PASSWORD}
    profile = client.post("/api/v1/credential-profiles", json=body).json()["id"]
    device = client.post("/api/v1/devices", json={"address": "127.0.0.7"}).json()["id"]
    body = {"device_id": device, "credential_profile_id": profile, "collector": "door"}
    monitor = client.post("/api/v1/monitors", json=body).json()["id"]
    return {"profile_id": profile, "device_id": device, "monitor_id": monitor}


def _discovery_records(client: httpx.Client) -> dict[str, str]:
    """A discovery profile and a finished run of it (nothing listens there: it is quick)."""
    body = {"name": "lan", "targets": ["127.71.40.1"], "ports": [9]}
    profile_id = client.post("/api/v1/discovery-profiles", json=body).json()["id"]
    run = client.post(f"/api/v1/discovery-profiles/{profile_id}/run").json()
    for _ in range(1200):
        if client.get(f"/api/v1/discovery-runs/{run['id']}").json()["state"] != "running":
            break
        time.sleep(0.05)
    return {"discovery_profile_id": profile_id, "run_id": run["id"]}


# --------------------------------------------------------------------------- checking


def problems_of(world: World, operation: Operation, case: Case, response: httpx.Response) -> list:
    where = f"{operation} [{case.what}] -> {response.status_code}"
    found = [f"{where}: {p}" for p in world.doc.check(response, streamed=is_stream(response))]
    if response.status_code not in case.expect:
        found.append(f"{where}: expected {case.expect}: {response.text[:300]}")
        return found
    error = response.json().get("error", {}) if not is_stream(response) and response.content else {}
    if case.field is not None and error.get("field") != case.field:
        found.append(f"{where}: field {error.get('field')!r}, expected {case.field!r}")
    if response.status_code == 422 and not isinstance(error.get("field"), str):
        found.append(f"{where}: a 422 must name the field")
    return found


def sweep(world: World, operation: Operation, token: str | None, cases: list[Case]) -> None:
    """Send every case; then nothing may have changed."""
    problems = []
    for case in cases:
        response = world.send(operation, token, **case.request)
        problems += problems_of(world, operation, case, response)
    assert problems == [], "\n".join(problems)
    assert world.snapshot() == world.baseline, f"{operation}: a refused request changed state"


def body_request(body: object) -> dict[str, Any]:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def raw_request(content: bytes, **headers: str) -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": "application/json", **headers}}


def valid_request(operation: Operation) -> dict[str, Any]:
    return body_request(VALID_BODIES[operation.id]()) if operation.has_body else {}


# --------------------------------------------------------------------------- the table


def test_the_sweep_covers_the_served_document(world: World) -> None:
    assert world.doc.document == DOC.document
    assert sorted(VALID_BODIES) == sorted(op.id for op in WITH_BODY)
    for operation in WITH_BODY:
        validator = DOC.request_validator(operation)
        errors = [e.message for e in validator.iter_errors(VALID_BODIES[operation.id]())]
        assert errors == [], (operation, errors)


# --------------------------------------------------------------------------- credentials


def _random_secret() -> str:
    return secrets.token_urlsafe(32)


def wrong_credentials() -> list[Case]:
    unauthenticated = (401,)
    return [
        Case("no credentials", {}, unauthenticated),
        Case("random lsk_ bearer", {"headers": _bearer("lsk_")}, unauthenticated),
        Case("random lss_ bearer", {"headers": _bearer("lss_")}, unauthenticated),
        Case("unprefixed bearer", {"headers": _bearer("")}, unauthenticated),
        Case("empty bearer", {"headers": {"authorization": "Bearer"}}, unauthenticated),
        Case("basic auth", {"headers": {"authorization": "Basic YWRtaW46YWRtaW4="}}, (401,)),
        Case("random X-API-Key", {"headers": {"x-api-key": "lsk_" + _random_secret()}}, (401,)),
        Case(
            "random cookie",
            # As a browser sends it: saying the request is from this server's own page.
            {
                "cookies": {"lunasentri_session": "lss_" + _random_secret()},
                "headers": {"sec-fetch-site": "same-origin"},
            },
            (401,),
        ),
        Case("lsr_ token", {"headers": _bearer("lsr_")}, unauthenticated),
        Case("huge bearer", {"headers": {"authorization": "Bearer lss_" + "a" * 6000}}, (401,)),
    ]


def _bearer(prefix: str) -> dict[str, str]:
    return {"authorization": f"Bearer {prefix}{_random_secret()}"}


@pytest.mark.parametrize("operation", PROTECTED, ids=ids)
def test_missing_or_wrong_credentials_are_401(world: World, operation: Operation) -> None:
    valid = valid_request(operation)
    cases = [
        attrs.evolve(
            case, request={**valid, **case.request, "headers": _merged(valid, case.request)}
        )
        for case in wrong_credentials()
    ]
    sweep(world, operation, None, cases)


def _merged(*requests: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for request in requests:
        headers.update(request.get("headers", {}))
    return headers


@pytest.mark.parametrize("operation", PROTECTED, ids=ids)
def test_the_wrong_kind_of_credential_is_403(world: World, operation: Operation) -> None:
    valid = valid_request(operation)
    if operation.for_machines:
        tokens = {"a user session": world.admin}
    else:
        tokens = {"a machine API key": world.key}
        if _admin_only(operation):
            tokens["a non-admin session"] = world.user
    problems = []
    for what, token in tokens.items():
        response = world.send(operation, token, **valid)
        problems += problems_of(world, operation, Case(what, valid, (403,)), response)
    assert problems == [], "\n".join(problems)
    assert world.snapshot() == world.baseline


def _admin_only(operation: Operation) -> bool:
    """Whether the declaration says administrators only (not in the document's terms)."""
    return any(
        endpoint.auth.value == "admin"
        for api in routes.ALL
        for endpoint in api.endpoints
        if endpoint.handler.__name__ == operation.id
    )


# --------------------------------------------------------------------------- bodies


def malformed_bodies(operation: Operation) -> list[Case]:
    cases = [
        Case("truncated JSON", raw_request(b'{"a": '), (400,)),
        Case("single quotes", raw_request(b"{'a': 1}"), (400,)),
        Case("trailing garbage", raw_request(b'{"a": 1}}'), (400,)),
        Case("not UTF-8", raw_request(b'{"a": "\xff\xfe"}'), (400,)),
        Case("plain text", raw_request(b"hello"), (400,)),
    ]
    if operation.spec["requestBody"]["required"]:
        cases.append(Case("empty body", raw_request(b""), (400,)))
    return cases


def wrong_shapes() -> list[Case]:
    return [
        Case(f"a JSON {name}", body_request(value), (422,), "")
        for name, value in (("array", []), ("null", None), ("number", 1), ("string", "x"))
    ] + [Case("a JSON boolean", body_request(True), (422,), "")]


def field_cases(operation: Operation) -> list[Case]:
    schema = DOC.request_schema(operation)
    valid = VALID_BODIES[operation.id]()
    cases = [Case("unknown field", body_request({**valid, "zz_unknown": 1}), (422,), "zz_unknown")]
    for name in schema.get("required", []):
        missing = {k: v for k, v in valid.items() if k != name}
        cases.append(Case(f"missing {name}", body_request(missing), (422,), name))
    for name, prop in schema["properties"].items():
        for wrong in _wrong_values(DOC.deref(prop)):
            cases.append(
                Case(f"{name}={wrong!r}", body_request({**valid, name: wrong}), (422,), name)
            )
    return cases


def _wrong_values(schema: dict[str, Any]) -> list[object]:
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "string" in types or "enum" in schema:
        return [12345, ["a"], {"a": "b"}]
    if "number" in types or "integer" in types:
        return ["five", True, [1]]
    if "object" in types:
        return ["text", [["a", "b"]], 7]
    if "array" in types:
        return ["text", {"a": 1}]
    return []


def non_finite(operation: Operation) -> list[Case]:
    valid = VALID_BODIES[operation.id]()
    name = next(iter(valid))
    cases = []
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps({**valid, name: "@@"}).replace('"@@"', literal)
        cases.append(Case(f"{name}={literal}", raw_request(text.encode()), (400, 422)))
    cases.append(
        Case(
            "1e400",
            raw_request(json.dumps({**valid, name: "@@"}).replace('"@@"', "1e400").encode()),
            (400, 422),
        )
    )
    return cases


def oversized(operation: Operation) -> list[Case]:
    valid = VALID_BODIES[operation.id]()
    big = json.dumps({**valid, "padding": "x" * (BODY_LIMIT + 1)}).encode()
    bomb = gzip.compress(b'{"padding": "' + b"0" * (8 * BODY_LIMIT) + b'"}')

    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 4096 + 2):
            yield b" " * 4096

    return [
        Case("over the body limit", raw_request(big), (413,)),
        Case("over the limit, chunked", {"content": chunks()}, (413,)),
        Case("gzip bomb", raw_request(bomb, **{"content-encoding": "gzip"}), (413,)),
    ]


def encodings(operation: Operation) -> list[Case]:
    valid = json.dumps(VALID_BODIES[operation.id]()).encode()
    return [
        Case("gzip garbage", raw_request(b"not gzip", **{"content-encoding": "gzip"}), (400,)),
        Case(
            "truncated gzip",
            raw_request(gzip.compress(valid)[:-12], **{"content-encoding": "gzip"}),
            (400,),
        ),
        Case("brotli", raw_request(valid, **{"content-encoding": "br"}), (415,)),
    ]


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_malformed_bodies_are_400(world: World, operation: Operation) -> None:
    sweep(world, operation, world.token_for(operation), malformed_bodies(operation))


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_wrong_shapes_and_fields_are_422_naming_the_field(
    world: World, operation: Operation
) -> None:
    cases = wrong_shapes() + field_cases(operation)
    sweep(world, operation, world.token_for(operation), cases)


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_non_finite_numbers_are_refused(world: World, operation: Operation) -> None:
    sweep(world, operation, world.token_for(operation), non_finite(operation))


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_oversized_bodies_are_413(world: World, operation: Operation) -> None:
    sweep(world, operation, world.token_for(operation), oversized(operation))


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_bad_content_encodings_are_refused(world: World, operation: Operation) -> None:
    sweep(world, operation, world.token_for(operation), encodings(operation))


# --------------------------------------------------------------------------- ingest


def _ingest_case(what: str, samples: list[dict[str, Any]], field: str | None = None) -> Case:
    expect = (413,) if field == "samples" and what.startswith("too many") else (422,)
    return Case(what, body_request({"samples": samples}), expect, field)


def _at(timestamp: object, **metrics: object) -> dict[str, Any]:
    return {"timestamp": timestamp, "metrics": metrics or {"cpu.percent": 1.0}}


def ingest_cases() -> list[Case]:
    ts = "samples[0].timestamp"
    good = _at(now())
    return [
        _ingest_case("a year ahead", [_at(now(timedelta(days=365)))], ts),
        _ingest_case("an hour ahead", [_at(now(timedelta(hours=1)))], ts),
        _ingest_case("year 9999", [_at("9999-12-31T23:59:59+00:00")], ts),
        _ingest_case("a year old", [_at(now(timedelta(days=-365)))], ts),
        _ingest_case("the epoch", [_at(0)], ts),
        _ingest_case("year 1", [_at("0001-01-01T00:00:00+14:00")], ts),
        _ingest_case("epoch 1e20", [_at(1e20)], ts),
        _ingest_case("epoch -1e20", [_at(-1e20)], ts),
        _ingest_case("no timezone", [_at(now()[:19])], ts),
        _ingest_case("not a time", [_at("yesterday")], ts),
        _ingest_case("a boolean time", [_at(True)], ts),
        _ingest_case("no samples", [], "samples"),
        _ingest_case(
            "a bad one after a good one",
            [good, _at(now(timedelta(days=30)))],
            "samples[1].timestamp",
        ),
        _ingest_case(
            "bad metric name",
            [_at(now(), **{"CPU Percent!": 1.0})],
            "samples[0].metrics.CPU Percent!",
        ),
        _ingest_case(
            "string value",
            [_at(now(), **{"cpu.percent": "high"})],
            "samples[0].metrics.cpu.percent",
        ),
        _ingest_case(
            "boolean value", [_at(now(), **{"cpu.percent": True})], "samples[0].metrics.cpu.percent"
        ),
        Case(
            "overflowing value",
            raw_request(
                json.dumps({"samples": [_at(now(), **{"cpu.percent": "@@"})]})
                .replace('"@@"', "1e400")
                .encode()
            ),
            (422,),
            "samples[0].metrics.cpu.percent",
        ),
        _ingest_case(
            "labelled value missing",
            [_at(now(), **{"disk.used": [{"labels": {}}]})],
            "samples[0].metrics.disk.used[0].value",
        ),
        _ingest_case(
            "labelled value not an object",
            [_at(now(), **{"disk.used": [5]})],
            "samples[0].metrics.disk.used[0]",
        ),
        _ingest_case(
            "bad label name",
            [_at(now(), **{"disk.used": [{"labels": {"Bad Label": "/"}, "value": 1}]})],
            None,
        ),
        _ingest_case(
            "label value not a string",
            [_at(now(), **{"disk.used": [{"labels": {"mount": 1}, "value": 1}]})],
            None,
        ),
        _ingest_case(
            "lone surrogate in a label value",
            [_at(now(), **{"disk.used": [{"labels": {"mount": "/\ud800"}, "value": 1}]})],
            "samples[0].metrics.disk.used[0].labels.mount",
        ),
        _ingest_case(
            "lone surrogate in a label name, after a good sample",
            [good, _at(now(), **{"disk.used": [{"labels": {"m\udfff": "/"}, "value": 1}]})],
            "samples[1].metrics.disk.used[0].labels.m\\udfff",
        ),
        _ingest_case("unknown sample field", [{**good, "host": "x"}], "samples[0].host"),
        _ingest_case("sample not an object", ["cpu 1"], "samples[0]"),
        _ingest_case(
            "metrics not an object", [{"timestamp": now(), "metrics": [1]}], "samples[0].metrics"
        ),
        _ingest_case(
            "too many points",
            [_at(now(), **{f"m.n{i}": 1.0 for i in range(BATCH_LIMIT + 1)})],
            "samples",
        ),
    ]


def test_bad_ingest_batches_are_refused_whole(world: World) -> None:
    sweep(world, DOC.by_id("ingest"), world.key, ingest_cases())


# --------------------------------------------------------------------------- ids and queries


WEIRD_IDS = ["0" * 32, "a" * 3000, "%2E%2E", "%00", "%C3%BC", "x%2Fy", "' OR 1=1 --"]
"""A literal ``..`` never reaches the server as an id: the client resolves the dot
segment (``/machines/../latest`` asks for ``/latest``); encoded, it does."""


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.path_params], ids=ids)
def test_unknown_or_odd_ids_are_404(world: World, operation: Operation) -> None:
    problems = []
    valid = valid_request(operation)
    for weird in WEIRD_IDS:
        for name in operation.path_params:
            params = {**world.params, name: weird}
            path = operation.path.format(**params)
            response = world.http.request(
                operation.method, path, world.token_for(operation), **valid
            )
            case = Case(f"{name}={weird[:20]}", valid, (404, 422))
            problems += problems_of(world, operation, case, response)
    assert problems == [], "\n".join(problems)
    assert world.snapshot() == world.baseline


# Valid ISO 8601 whose UTC value is outside the representable years.
YEAR_1_EAST = "0001-01-01T00:00:00+14:00"
YEAR_9999_WEST = "9999-12-31T23:59:59-14:00"

QUERY_CASES: dict[str, list[tuple[dict[str, str], str]]] = {
    "list_machines": [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "bm90IGpzb24"}, "cursor"),  # base64url of "not json"
        ({"cursor": "WzEsMl0"}, "cursor"),  # [1,2]
        ({"cursor": "WyJhXHUwMDAwYiIsIngiXQ"}, "cursor"),  # ["a\u0000b","x"]
        ({"cursor": "x" * 5000}, "cursor"),
        ({"status": "asleep"}, "status"),
        ({"labels": "env"}, "labels"),
        ({"labels": "env:a,env:b"}, "labels"),
        ({"labels": "Env:prod"}, "labels"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"latest": "1"}, "latest"),
        ({"limit": ["1", "2"]}, "limit"),
        ({"bogus": "1"}, "bogus"),
    ],
    "latest_of_machines": [
        ({"machine": ""}, "machine"),
        ({"machine": "a,,b"}, "machine"),
        ({"machine": "a b"}, "machine"),
        ({"metric": "Not A Metric"}, "metric"),
        ({"series_labels": "mount"}, "series_labels"),
        ({"labels": "Env:prod"}, "labels"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"status": "asleep"}, "status"),
        ({"name": ""}, "name"),
        ({"latest": "true"}, "latest"),
        ({"bogus": "1"}, "bogus"),
    ],
    "latest_values": [
        ({"metric": "Not A Metric"}, "metric"),
        ({"metric": ""}, "metric"),
        ({"bogus": "1"}, "bogus"),
    ],
    "history": [
        ({}, "metric"),
        ({"metric": "cpu percent"}, "metric"),
        ({"metric": "cpu.percent", "step": "-1"}, "step"),
        ({"metric": "cpu.percent", "step": "0"}, "step"),
        ({"metric": "cpu.percent", "step": "NaN"}, "step"),
        ({"metric": "cpu.percent", "step": "inf"}, "step"),
        ({"metric": "cpu.percent", "step": "1e400"}, "step"),
        ({"metric": "cpu.percent", "step": "soon"}, "step"),
        ({"metric": "cpu.percent", "step": "0.000001"}, "step"),
        ({"metric": "cpu.percent", "start": "yesterday"}, "start"),
        ({"metric": "cpu.percent", "start": "1e400"}, "start"),
        ({"metric": "cpu.percent", "start": "-1e20"}, "start"),
        ({"metric": "cpu.percent", "start": YEAR_1_EAST}, "start"),
        ({"metric": "cpu.percent", "end": YEAR_9999_WEST}, "end"),
        ({"metric": "cpu.percent", "step": "99999999999999999d"}, "step"),
        ({"metric": "cpu.percent", "start": "100", "end": "50"}, "end"),
        ({"metric": "cpu.percent", "agg": "median"}, "agg"),
        ({"metric": "cpu.percent", "labels": "mount"}, "labels"),
        ({"metric": "cpu.percent", "labels": "a:1,a:2"}, "labels"),
        ({"metric": "cpu.percent", "bogus": "1"}, "bogus"),
    ],
    "stream": [({"bogus": "1"}, "bogus")],
    "list_monitors": [({"bogus": "1"}, "bogus"), ({"device_id": ["a", "b"]}, "device_id")],
    "export_user": [
        ({"since": "yesterday"}, "since"),
        ({"since": YEAR_1_EAST}, "since"),
        ({"since": YEAR_9999_WEST}, "since"),
        ({"since": "2024-01-01T00:00:00Z", "step": "0"}, "step"),
        ({"since": "2024-01-01T00:00:00Z", "step": "-5"}, "step"),
        ({"since": "2024-01-01T00:00:00Z", "step": "nan"}, "step"),
        ({"since": "2024-01-01T00:00:00Z", "step": "inf"}, "step"),
        ({"since": "2024-01-01T00:00:00Z", "step": "x"}, "step"),
    ],
    "list_alerts": [
        ({"state": "burning"}, "state"),
        ({"machine_id": ""}, "machine_id"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_alert_events": [
        ({"state": "ok"}, "state"),
        ({"acknowledged": "maybe"}, "acknowledged"),
        ({"since": YEAR_1_EAST}, "since"),
        ({"limit": "0"}, "limit"),
        ({"rule_id": "x" * 500}, "rule_id"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_notifications": [
        ({"state": "lost"}, "state"),
        ({"limit": "-1"}, "limit"),
        ({"channel_id": ""}, "channel_id"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_notification_events": [
        ({"state": "sent"}, "state"),
        ({"limit": "1e3"}, "limit"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_discovery_runs": [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_silences": [({"active": "yes"}, "active"), ({"bogus": "1"}, "bogus")],
    "list_status_changes": [
        ({"since": "yesterday"}, "since"),
        ({"since": YEAR_9999_WEST}, "since"),
        ({"limit": "0"}, "limit"),
        ({"bogus": "1"}, "bogus"),
    ],
    "list_audit": [
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1000000"}, "limit"),
        ({"limit": "١٢"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": YEAR_1_EAST}, "since"),
        ({"since": YEAR_9999_WEST}, "since"),
        ({"until": "soon"}, "until"),
        ({"until": YEAR_1_EAST}, "until"),
    ],
}


@pytest.mark.parametrize("operation_id", sorted(QUERY_CASES))
def test_bad_query_parameters_are_422_naming_them(world: World, operation_id: str) -> None:
    operation = DOC.by_id(operation_id)
    cases = [
        Case(f"{params}", {"params": params}, (422,), field)
        for params, field in QUERY_CASES[operation_id]
    ]
    sweep(world, operation, world.token_for(operation), cases)


def test_every_operation_with_query_parameters_has_bad_cases() -> None:
    with_query = {
        op.id for op in OPERATIONS if any(p["in"] == "query" for p in op.spec["parameters"])
    }
    assert with_query <= set(QUERY_CASES)


# --------------------------------------------------------------------------- hostile JSON

LONE_SURROGATE = "\ud800"
MAX_DEPTH = 64
"""How deeply a body may nest (System.Text.Json's default, see docs/api.md)."""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def with_lone_surrogate(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Copies of ``value`` with a lone surrogate in one string (value or key) each,
    with the path of the field that must be named."""
    if isinstance(value, str):
        yield path, value + LONE_SURROGATE
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for field, changed in with_lone_surrogate(item, _join(path, index)):
                yield field, [*value[:index], changed, *value[index + 1 :]]
    elif isinstance(value, dict):
        for key, item in value.items():
            for field, changed in with_lone_surrogate(item, _join(path, key)):
                yield field, {**value, key: changed}
            renamed = {(k + LONE_SURROGATE if k == key else k): v for k, v in value.items()}
            # The field names the key with the surrogate escaped: a JSON answer cannot hold it.
            yield _join(path, key + "\\ud800"), renamed


def lone_surrogates(operation: Operation) -> list[Case]:
    return [
        Case(f"lone surrogate in {field}", body_request(body), (422,), field)
        for field, body in with_lone_surrogate(VALID_BODIES[operation.id]())
    ]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_nesting(operation: Operation) -> list[Case]:
    valid = VALID_BODIES[operation.id]()
    name = next(iter(valid))
    # The body is depth 1 and `name`'s value depth 2: the first refused array is depth 65.
    field = name + "[0]" * (MAX_DEPTH - 1)
    cases = []
    # 1,800 levels is past the standard parser's recursion limit and within the
    # smallest body limit (4 KiB, agent registration).
    for depth in (MAX_DEPTH, MAX_DEPTH + 5, 1_800):
        text = json.dumps({**valid, name: "@@"}).replace('"@@"', nested(depth))
        cases.append(Case(f"{name} nested {depth} deep", raw_request(text.encode()), (400,), field))
    cases.append(Case("the body nested 1800 deep", raw_request(nested(1_800).encode()), (400,)))
    return cases


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_lone_surrogates_in_any_string_are_422_naming_the_field(
    world: World, operation: Operation
) -> None:
    sweep(world, operation, world.token_for(operation), lone_surrogates(operation))


@pytest.mark.parametrize("operation", WITH_BODY, ids=ids)
def test_deep_nesting_is_400_naming_the_field(world: World, operation: Operation) -> None:
    sweep(world, operation, world.token_for(operation), deep_nesting(operation))
