"""Central agent configuration over real HTTP: defaults, versions, ETag and 304."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import LiveServer, MakeServer

PASSWORD = "a long enough password 42"
CONFIG = "/api/v1/agent/config"


def create(server: LiveServer, token: str, name: str) -> tuple[str, str]:
    """A new machine's id and API key."""
    with server.client(token) as client:
        response = client.post("/api/v1/machines", json={"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["machine"]["id"], body["api_key"]


def put_config(client: httpx.Client, machine_id: str, **body: Any) -> httpx.Response:
    return client.put(f"/api/v1/machines/{machine_id}/agent-config", json=body)


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


def test_an_agent_gets_the_servers_defaults_until_a_config_is_set(
    make_server: MakeServer,
) -> None:
    server = make_server(collect={"interval": "15s", "collectors": ["psutil", "extra"]})
    machine_id, key = create(server, server.login(), "defaults")
    with server.client(key) as agent:
        response = agent.get(CONFIG)
    assert response.status_code == 200
    assert response.json() == {
        "machine_id": machine_id,
        "interval": 15.0,
        "collectors": ["psutil", "extra"],
        "labels": {},
        "version": 0,
        "updated_at": None,
    }
    assert response.headers["etag"].startswith('"0')


def test_versions_etags_and_not_modified(server: LiveServer, admin: str) -> None:
    machine_id, key = create(server, admin, "configured")
    with server.client(key) as agent, server.client(admin) as user:
        default = agent.get(CONFIG)
        default_etag = default.headers["etag"]
        assert agent.get(CONFIG, headers={"if-none-match": default_etag}).status_code == 304

        stored = put_config(
            user, machine_id, interval=30, collectors=["psutil"], labels={"rack": "b2"}
        )
        assert stored.status_code == 200
        assert stored.json()["version"] == 1
        assert stored.json()["interval"] == 30.0
        assert stored.json()["labels"] == {"rack": "b2"}
        assert stored.json()["updated_at"] is not None
        assert stored.headers["etag"] == '"1"'

        # The agent's old ETag no longer matches: it gets the new configuration.
        changed = agent.get(CONFIG, headers={"if-none-match": default_etag})
        assert changed.status_code == 200
        assert changed.json() == stored.json()
        etag = changed.headers["etag"]
        assert etag == '"1"'

        not_modified = agent.get(CONFIG, headers={"if-none-match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        for header in (f"W/{etag}", f'"x", {etag}', "*"):
            assert agent.get(CONFIG, headers={"if-none-match": header}).status_code == 304

        second = put_config(user, machine_id, interval=60.5, collectors=["psutil", "snmp"])
        assert second.json()["version"] == 2
        assert second.json()["labels"] == {}
        fresh = agent.get(CONFIG, headers={"if-none-match": etag})
        assert fresh.status_code == 200
        assert fresh.json()["version"] == 2
        assert fresh.json()["interval"] == 60.5
        assert fresh.json()["collectors"] == ["psutil", "snmp"]

        # The user's view is the same, with the same conditional behaviour.
        url = f"/api/v1/machines/{machine_id}/agent-config"
        viewed = user.get(url)
        assert viewed.json() == fresh.json()
        assert user.get(url, headers={"if-none-match": '"2"'}).status_code == 304


def test_each_agent_sees_its_own_configuration(server: LiveServer, admin: str) -> None:
    first_id, first_key = create(server, admin, "first")
    second_id, second_key = create(server, admin, "second")
    with server.client(admin) as user:
        assert put_config(user, first_id, interval=10, collectors=["a"]).status_code == 200
    with server.client(first_key) as agent:
        assert agent.get(CONFIG).json()["machine_id"] == first_id
        assert agent.get(CONFIG).json()["version"] == 1
    with server.client(second_key) as agent:
        assert agent.get(CONFIG).json()["machine_id"] == second_id
        assert agent.get(CONFIG).json()["version"] == 0


def test_owners_and_admins_set_configs_and_others_do_not_see_them(
    server: LiveServer, admin: str
) -> None:
    with server.client(admin) as client:
        for name in ("erin", "frank"):
            created = client.post("/api/v1/users", json={"username": name, "password": PASSWORD})
            assert created.status_code == 201
    erin, frank = server.login("erin", PASSWORD), server.login("frank", PASSWORD)
    machine_id, _ = create(server, erin, "erins")
    with server.client(erin) as client:
        assert put_config(client, machine_id, interval=20, collectors=["x"]).status_code == 200
    with server.client(admin) as client:
        response = put_config(client, machine_id, interval=25, collectors=["x"])
        assert response.status_code == 200
        assert response.json()["version"] == 2
    url = f"/api/v1/machines/{machine_id}/agent-config"
    with server.client(frank) as client:
        assert client.get(url).status_code == 404
        assert put_config(client, machine_id, interval=1, collectors=["x"]).status_code == 404
    with server.client(erin) as client:
        assert client.get(url).json()["interval"] == 25.0


def test_a_deleted_machines_key_and_config_are_gone(server: LiveServer, admin: str) -> None:
    machine_id, key = create(server, admin, "gone")
    with server.client(admin) as client:
        put_config(client, machine_id, interval=10, collectors=["psutil"])
        assert client.delete(f"/api/v1/machines/{machine_id}").status_code == 204
        url = f"/api/v1/machines/{machine_id}/agent-config"
        assert client.get(url).status_code == 404
        assert put_config(client, machine_id, interval=10, collectors=["p"]).status_code == 404
    with server.client(key) as agent:
        assert agent.get(CONFIG).status_code == 401


# --------------------------------------------------------------------------- bad input


def test_the_agent_endpoint_takes_only_a_machine_key(server: LiveServer, admin: str) -> None:
    with server.client() as anonymous:
        response = anonymous.get(CONFIG)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    with server.client(admin) as user:
        response = user.get(CONFIG)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    with server.client("lsk_not-a-real-key") as stranger:
        assert stranger.get(CONFIG).status_code == 401
    machine_id, key = create(server, admin, "keyed")
    with httpx.Client(base_url=server.url, headers={"x-api-key": key}) as agent:
        assert agent.get(CONFIG).status_code == 200
    url = f"/api/v1/machines/{machine_id}/agent-config"
    with server.client(key) as agent:  # a machine key is not a user
        assert agent.get(url).status_code == 403
        assert put_config(agent, machine_id, interval=10, collectors=["x"]).status_code == 403
    with server.client() as anonymous:
        assert anonymous.get(url).status_code == 401
        assert put_config(anonymous, machine_id, interval=10, collectors=["x"]).status_code == 401


def test_bad_configurations(server: LiveServer, admin: str) -> None:
    machine_id, _ = create(server, admin, "strict")
    url = f"/api/v1/machines/{machine_id}/agent-config"
    cases: list[tuple[Any, str]] = [
        ({"collectors": ["psutil"]}, "interval"),
        ({"interval": 10}, "collectors"),
        ({"interval": "10", "collectors": ["psutil"]}, "interval"),
        ({"interval": True, "collectors": ["psutil"]}, "interval"),
        ({"interval": 0, "collectors": ["psutil"]}, "interval"),
        ({"interval": 0.5, "collectors": ["psutil"]}, "interval"),
        ({"interval": -5, "collectors": ["psutil"]}, "interval"),
        ({"interval": 86401, "collectors": ["psutil"]}, "interval"),
        ({"interval": 1e308, "collectors": ["psutil"]}, "interval"),
        ({"interval": 10, "collectors": "psutil"}, "collectors"),
        ({"interval": 10, "collectors": []}, "collectors"),
        ({"interval": 10, "collectors": ["psutil", "psutil"]}, "collectors"),
        ({"interval": 10, "collectors": ["Bad Name"]}, "collectors[0]"),
        ({"interval": 10, "collectors": [3]}, "collectors[0]"),
        ({"interval": 10, "collectors": [f"c{i}" for i in range(33)]}, "collectors"),
        ({"interval": 10, "collectors": ["p"], "labels": {"a": 2}}, "labels.a"),
        ({"interval": 10, "collectors": ["p"], "labels": {"A": "b"}}, "labels.A"),
        ({"interval": 10, "collectors": ["p"], "version": 7}, "version"),
        ([1, 2], ""),
    ]
    with server.client(admin) as client:
        for body, field in cases:
            response = client.put(url, json=body)
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            fields = [error["field"], *(d["field"] for d in error.get("details", []))]
            assert field in fields, (body, response.text)
        headers = {"content-type": "application/json"}
        assert client.put(url, content=b'{"interval": 1', headers=headers).status_code == 400
        assert (
            client.put(url, content=b'{"interval": Infinity}', headers=headers).status_code == 400
        )
        huge = {"interval": 10, "collectors": ["p" * 60] * 5000}
        assert client.put(url, json=huge).status_code == 413
        assert (
            client.put(
                "/api/v1/machines/nope/agent-config", json={"interval": 10, "collectors": ["p"]}
            ).status_code
            == 404
        )
        # Nothing was stored by any of these.
        assert client.get(url).json()["version"] == 0
