"""Machines and API keys over real HTTP: registration, scoping, rotation, revocation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from lunasentri_core.hub import open_storage
from lunasentri_core.model import MachineSamples, Reading, Sample
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.security import hash_token
from lunasentri_core.storage.protocols import StorageBackend

from .conftest import LiveServer, MakeServer

PASSWORD = "a long enough password 42"


def add_user(server: LiveServer, admin: str, username: str) -> str:
    """A new user's session token (created by the admin, then logged in)."""
    with server.client(admin) as client:
        created = client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return server.login(username, PASSWORD)


def create(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/machines", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def key_works(server: LiveServer, key: str) -> bool:
    with server.client(key) as client:
        status = client.get("/api/v1/agent/config").status_code
    assert status in (200, 401), status
    return status == 200


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


@pytest.fixture
def storage(server: LiveServer) -> Iterator[StorageBackend]:
    """The live server's own database, opened a second time to plant data."""
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    yield backend
    backend.close()


# --------------------------------------------------------------------------- registration


def test_registration_returns_the_key_once_and_an_install_command(
    server: LiveServer, admin: str
) -> None:
    with server.client(admin) as client:
        body = create(client, "web-1", hostname="web-1.example", labels={"env": "prod"})
        machine, key = body["machine"], body["api_key"]
        assert key.startswith("lsk_")
        assert machine["name"] == "web-1"
        assert machine["hostname"] == "web-1.example"
        assert machine["labels"] == {"env": "prod"}
        assert machine["kind"] == "agent"
        assert machine["status"] == "unknown"
        assert machine["last_seen"] is None
        me = client.get("/api/v1/auth/me").json()
        assert machine["owner_id"] == me["id"]
        assert body["key"]["prefix"] == key[: len(body["key"]["prefix"])]
        assert body["key"]["active"] is True
        base = server.settings.server.base_url
        command = body["install_command"]
        assert "\n" not in command
        assert f"LUNASENTRI_AGENT__API_KEY={key} lunasentri agent --server {base}" in command
        assert "--api-key" not in command  # arguments are visible to every user
        # The agent's wheels, from this server (they are on no package index).
        assert command.startswith(f"pip install {server.url}/agent/dist/lunasentri_core-")
        assert f" {server.url}/agent/dist/lunasentri_psutil-" in command
        assert body["install_error"] is None

        keys = client.get(f"/api/v1/machines/{machine['id']}/keys").json()["items"]
        assert [k["id"] for k in keys] == [body["key"]["id"]]
        # Only the prefix and metadata come back, never the key or its hash.
        listed = repr(keys) + client.get(f"/api/v1/machines/{machine['id']}").text
        assert key not in listed
        assert hash_token(key) not in listed
    assert key_works(server, key)


def test_names_are_unique_per_owner(server: LiveServer, admin: str) -> None:
    bob = add_user(server, admin, "bob")
    with server.client(admin) as client:
        create(client, "db")
        response = client.post("/api/v1/machines", json={"name": "db"})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "conflict"
    with server.client(bob) as client:
        create(client, "db")  # another owner may use the same name


def test_an_admin_registers_for_another_user_and_users_cannot(
    server: LiveServer, admin: str
) -> None:
    bob = add_user(server, admin, "bob")
    with server.client(bob) as client:
        bob_id = client.get("/api/v1/auth/me").json()["id"]
    with server.client(admin) as client:
        body = create(client, "bobs-box", owner_id=bob_id)
        assert body["machine"]["owner_id"] == bob_id
        unknown = client.post("/api/v1/machines", json={"name": "x", "owner_id": "nobody"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["field"] == "owner_id"
        admin_id = client.get("/api/v1/auth/me").json()["id"]
    with server.client(bob) as client:
        names = [m["name"] for m in client.get("/api/v1/machines").json()["items"]]
        assert names == ["bobs-box"]
        response = client.post("/api/v1/machines", json={"name": "y", "owner_id": admin_id})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "owner_id"
        # Naming oneself is allowed.
        create(client, "own", owner_id=bob_id)


# --------------------------------------------------------------------------- owner scope


def test_every_machine_endpoint_is_scoped_to_the_owner(server: LiveServer, admin: str) -> None:
    alice = add_user(server, admin, "alice")
    bob = add_user(server, admin, "bob")
    with server.client(alice) as client:
        mine = create(client, "alice-1")
        key_id = mine["key"]["id"]
        machine_id = mine["machine"]["id"]
    with server.client(bob) as client:
        create(client, "bob-1")
        assert [m["name"] for m in client.get("/api/v1/machines").json()["items"]] == ["bob-1"]
        base = f"/api/v1/machines/{machine_id}"
        attempts = [
            client.get(base),
            client.patch(base, json={"name": "stolen"}),
            client.delete(base),
            client.get(f"{base}/keys"),
            client.post(f"{base}/keys/rotate", json={}),
            client.post(f"{base}/keys/{key_id}/revoke"),
            client.get(f"{base}/agent-config"),
            client.put(f"{base}/agent-config", json={"interval": 10, "collectors": ["psutil"]}),
        ]
        # Another user's machine does not exist for bob: 404, never 403.
        assert [r.status_code for r in attempts] == [404] * len(attempts)
        assert {r.json()["error"]["code"] for r in attempts} == {"not_found"}
    with server.client(alice) as client:
        machine = client.get(f"/api/v1/machines/{machine_id}").json()
        assert machine["name"] == "alice-1"
    assert key_works(server, mine["api_key"])
    with server.client(admin) as client:
        names = sorted(m["name"] for m in client.get("/api/v1/machines").json()["items"])
        assert names == ["alice-1", "bob-1"]
        assert client.get(f"/api/v1/machines/{machine_id}").status_code == 200


def test_rename_relabel_and_clear_hostname(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        machine = create(client, "old", hostname="h1", labels={"a": "1"})["machine"]
        create(client, "taken")
        url = f"/api/v1/machines/{machine['id']}"
        renamed = client.patch(url, json={"name": "new"})
        assert renamed.status_code == 200
        assert renamed.json()["name"] == "new"
        assert renamed.json()["hostname"] == "h1"  # untouched
        relabelled = client.patch(url, json={"labels": {"b": "2"}, "hostname": None}).json()
        assert relabelled["labels"] == {"b": "2"}
        assert relabelled["hostname"] is None
        assert relabelled["name"] == "new"
        assert client.patch(url, json={}).json() == relabelled
        conflict = client.patch(url, json={"name": "taken"})
        assert conflict.status_code == 409
        assert client.get(url).json()["name"] == "new"
        audit = client.get("/api/v1/audit", params={"action": "machine.rename"})
        if audit.status_code == 200:  # the audit endpoint is another module's
            assert any(e["target_id"] == machine["id"] for e in audit.json()["items"])


def test_delete_removes_the_machine_its_keys_and_series(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    with server.client(admin) as client:
        body = create(client, "doomed")
        machine_id = body["machine"]["id"]
        now = datetime.now(UTC)
        storage.metrics.write([MachineSamples(machine_id, [Sample(now, [Reading("x.y", 1.0)])])])
        assert storage.metrics.list_series(machine_id)
        deleted = client.delete(f"/api/v1/machines/{machine_id}")
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert client.get(f"/api/v1/machines/{machine_id}").status_code == 404
        assert client.delete(f"/api/v1/machines/{machine_id}").status_code == 404
        assert client.get("/api/v1/machines").json() == {"items": [], "next_cursor": None}
    assert storage.metrics.list_series(machine_id) == []
    assert not key_works(server, body["api_key"])


def test_the_list_carries_latest_values_and_derived_percentages(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    with server.client(admin) as client:
        machine_id = create(client, "busy")["machine"]["id"]
        idle_id = create(client, "idle")["machine"]["id"]
        at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        readings = [
            Reading("cpu.percent", 12.5),
            Reading("mem.total", 1000.0),
            Reading("mem.available", 250.0),
            Reading("mem.used", 600.0),
            Reading("disk.total", 200.0, {"mount": "/"}),
            Reading("disk.used", 50.0, {"mount": "/"}),
            Reading("disk.total", 100.0, {"mount": "/data"}),
            Reading("disk.used", 100.0, {"mount": "/data"}),
        ]
        storage.metrics.write([MachineSamples(machine_id, [Sample(at, readings)])])
        items = {m["name"]: m for m in client.get("/api/v1/machines").json()["items"]}
    assert items["idle"]["latest"] == {"timestamp": None, "values": []}
    assert items["idle"]["id"] == idle_id
    latest = items["busy"]["latest"]
    assert datetime.fromisoformat(latest["timestamp"]) == at
    values = {(v["metric"], tuple(sorted(v["labels"].items()))): v for v in latest["values"]}
    assert values[("cpu.percent", ())]["value"] == 12.5
    # Derived as the queries derive them: used over total.
    assert values[("mem.percent", ())]["value"] == pytest.approx(60.0)
    assert values[("disk.percent", (("mount", "/"),))]["value"] == pytest.approx(25.0)
    assert values[("disk.percent", (("mount", "/data"),))]["value"] == pytest.approx(100.0)
    assert all(datetime.fromisoformat(v["timestamp"]) == at for v in latest["values"])


def test_status_follows_last_seen(server: LiveServer, admin: str, storage: StorageBackend) -> None:
    with server.client(admin) as client:
        fresh = create(client, "fresh")["machine"]["id"]
        stale = create(client, "stale")["machine"]["id"]
        now = datetime.now(UTC)
        storage.state.touch_machines([(fresh, now), (stale, datetime(2020, 1, 1, tzinfo=UTC))])
        assert client.get(f"/api/v1/machines/{fresh}").json()["status"] == "online"
        body = client.get(f"/api/v1/machines/{stale}").json()
        assert body["status"] == "offline"
        assert datetime.fromisoformat(body["last_seen"]) == datetime(2020, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- keys


def test_rotation_keeps_the_old_key_for_the_grace_period(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        body = create(client, "rotating")
        url = f"/api/v1/machines/{body['machine']['id']}/keys"
        first = body["api_key"]
        rotated = client.post(f"{url}/rotate", json={"grace_seconds": 3600})
        assert rotated.status_code == 201
        second = rotated.json()["api_key"]
        assert second.startswith("lsk_")
        assert second != first
        assert key_works(server, first)
        assert key_works(server, second)
        keys = {k["id"]: k for k in client.get(url).json()["items"]}
        old = keys[body["key"]["id"]]
        assert old["expires_at"] is not None
        assert old["active"] is True
        assert keys[rotated.json()["key"]["id"]]["expires_at"] is None

        # A rotation without grace ends every earlier key at once.
        third = client.post(f"{url}/rotate", json={"grace_seconds": 0}).json()["api_key"]
        assert not key_works(server, first)
        assert not key_works(server, second)
        assert key_works(server, third)
        assert [k["active"] for k in client.get(url).json()["items"]] == [False, False, True]


def test_a_short_grace_ends(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        body = create(client, "short")
        url = f"/api/v1/machines/{body['machine']['id']}/keys/rotate"
        new = client.post(url, json={"grace_seconds": 1}).json()["api_key"]
    wait_for(lambda: not key_works(server, body["api_key"]))
    assert key_works(server, new)


def test_rotation_defaults_to_the_configured_grace(make_server: MakeServer) -> None:
    server = make_server(server={"key_rotation_grace": "2h"})
    with server.client(server.login()) as client:
        body = create(client, "default-grace")
        before = datetime.now(UTC)
        # An empty body takes every default.
        rotated = client.post(f"/api/v1/machines/{body['machine']['id']}/keys/rotate")
        assert rotated.status_code == 201
        keys = client.get(f"/api/v1/machines/{body['machine']['id']}/keys").json()["items"]
    expires = datetime.fromisoformat(keys[0]["expires_at"])
    assert 7190 <= (expires - before).total_seconds() <= 7300
    assert key_works(server, body["api_key"])


def test_revocation_is_immediate(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        body = create(client, "revoked")
        machine_id, key_id = body["machine"]["id"], body["key"]["id"]
        assert key_works(server, body["api_key"])
        revoked = client.post(f"/api/v1/machines/{machine_id}/keys/{key_id}/revoke")
        assert revoked.status_code == 204
        assert not key_works(server, body["api_key"])
        key = client.get(f"/api/v1/machines/{machine_id}/keys").json()["items"][0]
        assert key["revoked_at"] is not None
        assert key["active"] is False
        # Again: still revoked, same time.
        assert client.post(f"/api/v1/machines/{machine_id}/keys/{key_id}/revoke").status_code == 204
        again = client.get(f"/api/v1/machines/{machine_id}/keys").json()["items"][0]
        assert again["revoked_at"] == key["revoked_at"]
        other = create(client, "other")
        # A key of another machine is not this machine's.
        wrong = client.post(f"/api/v1/machines/{machine_id}/keys/{other['key']['id']}/revoke")
        assert wrong.status_code == 404
        missing = client.post(f"/api/v1/machines/{machine_id}/keys/nope/revoke")
        assert missing.status_code == 404
    assert key_works(server, other["api_key"])


# --------------------------------------------------------------------------- bad input


def test_bad_input_to_create(server: LiveServer, admin: str) -> None:
    cases: list[tuple[Any, int, str | None]] = [
        ({}, 422, "name"),
        ({"name": 5}, 422, "name"),
        ({"name": ""}, 422, "name"),
        ({"name": "  padded "}, 422, "name"),
        ({"name": "x" * 101}, 422, "name"),
        ({"name": "tab\there"}, 422, "name"),
        ({"name": "ok", "hostname": 3}, 422, "hostname"),
        ({"name": "ok", "hostname": "has space"}, 422, "hostname"),
        ({"name": "ok", "labels": ["a"]}, 422, "labels"),
        ({"name": "ok", "labels": {"a": 1}}, 422, "labels.a"),
        ({"name": "ok", "labels": {"Bad-Name": "v"}}, 422, "labels.Bad-Name"),
        ({"name": "ok", "labels": {"a": "v" * 257}}, 422, "labels.a"),
        ({"name": "ok", "labels": {f"l{i}": "v" for i in range(33)}}, 422, "labels"),
        ({"name": "ok", "surprise": True}, 422, "surprise"),
        ([], 422, None),
        ("a string", 422, None),
    ]
    with server.client(admin) as client:
        for body, status, field in cases:
            response = client.post("/api/v1/machines", json=body)
            assert response.status_code == status, (body, response.text)
            if field is not None:
                assert response.json()["error"]["field"] == field, (body, response.text)
        assert client.get("/api/v1/machines").json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/machines", {"name": "ok", "labels": {"": "v"}}, "labels"),
        ("/api/v1/machines", {"name": "ok", "labels": {"": 1}}, "labels"),
        ("/api/v1/machines", {"name": "ok", "labels": {"": "v", "Bad": "v"}}, "labels"),
        ("/api/v1/alert-rules", {"scope": {"labels": {"": "v"}}}, "scope.labels"),
    ],
)
def test_a_label_with_an_empty_name_is_reported_on_its_labels(
    server: LiveServer, admin: str, path: str, body: dict[str, Any], field: str
) -> None:
    rule = {"name": "r", "metric": "cpu.percent", "comparison": ">", "threshold": 90}
    with server.client(admin) as client:
        response = client.post(path, json={**rule, **body} if "alert" in path else body)
        assert client.get("/api/v1/machines").json() == {"items": [], "next_cursor": None}

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert "''" in error["message"], error
    assert "empty" in error["message"], error
    fields = [detail["field"] for detail in error.get("details", [error])]
    assert all(not name.endswith(".") for name in fields), fields


def _requests(machine_id: str, key_id: str) -> list[tuple[str, str, Any]]:
    base = f"/api/v1/machines/{machine_id}"
    return [
        ("POST", "/api/v1/machines", {"name": "n"}),
        ("GET", "/api/v1/machines", None),
        ("GET", base, None),
        ("PATCH", base, {"name": "renamed"}),
        ("GET", f"{base}/keys", None),
        ("POST", f"{base}/keys/rotate", {"grace_seconds": 10}),
        ("POST", f"{base}/keys/{key_id}/revoke", None),
        ("DELETE", base, None),
    ]


def test_every_endpoint_needs_a_user(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        body = create(client, "guarded")
    requests = _requests(body["machine"]["id"], body["key"]["id"])
    with server.client() as anonymous, server.client(body["api_key"]) as machine:
        for method, url, payload in requests:
            response = anonymous.request(method, url, json=payload)
            assert response.status_code == 401, (method, url)
            assert response.json()["error"]["code"] == "unauthenticated"
            # A machine key is not a user.
            assert machine.request(method, url, json=payload).status_code == 403, (method, url)
        bogus = httpx.Client(base_url=server.url, headers={"authorization": "Bearer lss_nope"})
        with bogus:
            assert bogus.get("/api/v1/machines").status_code == 401
    with server.client(admin) as client:
        assert client.get(f"/api/v1/machines/{body['machine']['id']}").json()["name"] == "guarded"


def test_malformed_unknown_and_huge_bodies(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        body = create(client, "target")
        machine_id = body["machine"]["id"]
        with_bodies = [
            ("POST", "/api/v1/machines"),
            ("PATCH", f"/api/v1/machines/{machine_id}"),
            ("POST", f"/api/v1/machines/{machine_id}/keys/rotate"),
        ]
        headers = {"content-type": "application/json"}
        for method, url in with_bodies:
            malformed = client.request(method, url, content=b'{"name": ', headers=headers)
            assert malformed.status_code == 400, (url, malformed.text)
            assert malformed.json()["error"]["code"] == "malformed_json"
            nan = client.request(method, url, content=b'{"grace_seconds": NaN}', headers=headers)
            assert nan.status_code == 400, (url, nan.text)
            unknown = client.request(method, url, json={"nope": 1})
            assert unknown.status_code == 422, (url, unknown.text)
            fields = [d["field"] for d in unknown.json()["error"]["details"]]
            assert "nope" in fields, (url, unknown.text)
            huge = client.request(method, url, json={"name": "x" * 200_000})
            assert huge.status_code == 413, (url, huge.text)
            assert huge.json()["error"]["code"] == "too_large"
        url = f"/api/v1/machines/{machine_id}"
        for patch in ({"name": None}, {"labels": None}, {"name": 1}, {"hostname": []}, "x"):
            assert client.patch(url, json=patch).status_code == 422, patch
        rotate = f"{url}/keys/rotate"
        for grace in (-1, "1h", True, 10**12, 31 * 86400):
            response = client.post(rotate, json={"grace_seconds": grace})
            assert response.status_code == 422, (grace, response.text)
            assert response.json()["error"]["field"] == "grace_seconds"
        assert client.get(url).json()["name"] == "target"
        assert len(client.get(f"{url}/keys").json()["items"]) == 1
    assert key_works(server, body["api_key"])
