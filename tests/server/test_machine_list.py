"""GET /api/v1/machines over real HTTP: pages and cursors, filters, owner scoping,
and the choice of latest values."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from lunasentri_core.hub import open_storage
from lunasentri_core.model import MachineSamples, MachineStatus, Reading, Sample
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.storage.protocols import StorageBackend
from lunasentri_core.testing.builders import make_machine

from .conftest import LiveServer
from .test_machines import add_user, create


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


@pytest.fixture
def storage(server: LiveServer) -> Iterator[StorageBackend]:
    """The live server's own database, opened a second time to plant machines."""
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    yield backend
    backend.close()


def user_id(server: LiveServer, token: str) -> str:
    with server.client(token) as client:
        found: str = client.get("/api/v1/auth/me").json()["id"]
    return found


def plant(storage: StorageBackend, owner_id: str, names: list[str], **fields: Any) -> list[str]:
    """Machines added straight to the store (faster than registering each)."""
    machines = [make_machine(owner_id=owner_id, name=name, **fields) for name in names]
    return [storage.state.add_machine(m).id for m in machines]


def page(client: httpx.Client, **query: Any) -> dict[str, Any]:
    response = client.get("/api/v1/machines", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def walk(client: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    """Every item of every page, following next_cursor as a client does."""
    items: list[dict[str, Any]] = []
    cursor = query.pop("cursor", None)
    while True:
        body = page(client, **query, **({"cursor": cursor} if cursor else {}))
        assert len(body["items"]) <= int(query.get("limit", 100))
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def test_pages_hold_limit_machines_in_name_order_and_end_with_a_null_cursor(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    names = [f"node-{n:03d}" for n in range(23)]
    plant(storage, user_id(server, admin), names[::-1])
    with server.client(admin) as client:
        first = page(client, limit=10)
        assert [m["name"] for m in first["items"]] == names[:10]
        assert isinstance(first["next_cursor"], str)
        second = page(client, limit=10, cursor=first["next_cursor"])
        assert [m["name"] for m in second["items"]] == names[10:20]
        last = page(client, limit=10, cursor=second["next_cursor"])
        assert [m["name"] for m in last["items"]] == names[20:]
        assert last["next_cursor"] is None
        # A page that ends exactly at the last machine says so at once.
        assert page(client, limit=23)["next_cursor"] is None
        assert [m["name"] for m in walk(client, limit=4)] == names
        # The default page is 100 machines.
        assert len(page(client)["items"]) == 23


def test_a_walk_sees_every_machine_once_while_machines_come_and_go(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    owner = user_id(server, admin)
    plant(storage, owner, [f"node-{n:03d}" for n in range(0, 30, 2)])
    with server.client(admin) as client:
        first = page(client, limit=5)
        seen = [m["id"] for m in first["items"]]
        client.delete(f"/api/v1/machines/{first['items'][0]['id']}").raise_for_status()
        (behind,) = plant(storage, owner, ["node-001"])
        (ahead,) = plant(storage, owner, ["node-021"])
        doomed = next(m for m in walk(client) if m["name"] == "node-024")
        client.delete(f"/api/v1/machines/{doomed['id']}").raise_for_status()
        cursor = first["next_cursor"]
        while cursor is not None:
            body = page(client, limit=5, cursor=cursor)
            seen.extend(m["id"] for m in body["items"])
            cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)), "a machine came twice"
    assert ahead in seen
    assert behind not in seen
    assert doomed["id"] not in seen
    assert len(seen) == 15 - 1 + 1


def test_a_cursor_never_reveals_another_owners_machines(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    alice = add_user(server, admin, "alice")
    bob = add_user(server, admin, "bob")
    hers = plant(storage, user_id(server, alice), [f"box-{n}" for n in (1, 3, 5, 7)])
    his = plant(storage, user_id(server, bob), [f"box-{n}" for n in (0, 2, 4, 6, 8)])
    with server.client(admin) as client:
        everyone = walk(client, limit=3)
        assert {m["id"] for m in everyone} == set(hers) | set(his)
        # The admin's first page is bob's box-0 and alice's box-1.
        admins_cursor = page(client, limit=2)["next_cursor"]
    with server.client(alice) as client:
        assert [m["id"] for m in walk(client, limit=1)] == hers
        # Another user's cursor is only a position in the caller's own list.
        assert [m["id"] for m in walk(client, cursor=admins_cursor)] == hers[1:]
        forged = _cursor(["box-4", his[2]])
        assert [m["id"] for m in page(client, cursor=forged)["items"]] == hers[2:]
    with server.client(bob) as client:
        assert [m["id"] for m in walk(client, limit=2)] == his


def test_filters_by_status_labels_and_name(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    owner = user_id(server, admin)
    now = datetime.now(UTC)
    plant(storage, owner, ["Web-1"], labels={"env": "prod", "role": "web"})
    plant(storage, owner, ["web-2"], labels={"env": "dev", "role": "web"}, last_seen=now)
    plant(storage, owner, ["db-1"], labels={"env": "prod", "role": "db"})
    plant(storage, owner, ["gone"], status=MachineStatus.OFFLINE, labels={"env": "prod"})
    old = now - timedelta(days=1)
    plant(storage, owner, ["quiet-web"], last_seen=old, labels={"env": "a,b:c"})
    with server.client(admin) as client:

        def names(**query: Any) -> list[str]:
            return [m["name"] for m in walk(client, **query)]

        assert names(labels="env:prod") == ["Web-1", "db-1", "gone"]
        assert names(labels="env:prod,role:web") == ["Web-1"]
        assert names(labels="role:web,env:dev") == ["web-2"]
        assert names(labels="env:Prod") == []
        assert names(labels="env:a,b:c") == []  # a value cannot hold a comma
        assert names(name="WEB") == ["Web-1", "quiet-web", "web-2"]
        assert names(name="web-", labels="env:prod") == ["Web-1"]
        # Status as reported: never seen is unknown, seen lately online, long ago offline.
        assert names(status="unknown") == ["Web-1", "db-1"]
        assert names(status="online") == ["web-2"]
        assert names(status="offline") == ["gone", "quiet-web"]
        for status in ("unknown", "online", "offline"):
            assert all(m["status"] == status for m in walk(client, status=status))
        assert names(status="offline", name="web", limit=1) == ["quiet-web"]


def test_latest_values_come_along_unless_refused(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    with server.client(admin) as client:
        busy = create(client, "busy")["machine"]["id"]
        create(client, "idle")
        at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        sample = Sample(at, [Reading("cpu.percent", 7.0)])
        storage.metrics.write([MachineSamples(busy, [sample])])
        with_values = {m["name"]: m for m in page(client)["items"]}
        assert with_values["busy"]["latest"]["values"][0]["value"] == 7.0
        assert with_values["idle"]["latest"] == {"timestamp": None, "values": []}
        assert page(client, latest="true") == page(client)
        without = page(client, latest="false")
        assert [set(m) for m in without["items"]] == [
            set(m) - {"latest"} for m in with_values.values()
        ]
        assert all("latest" not in m for m in without["items"])
        assert without["items"][0]["id"] == busy


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "bm90IGpzb24"}, "cursor"),  # "not json"
        ({"cursor": "WyJhIl0"}, "cursor"),  # ["a"]
        ({"cursor": "WzEsMl0"}, "cursor"),  # [1,2]
        ({"cursor": "x" * 2000}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"status": "sleeping"}, "status"),
        ({"labels": "env"}, "labels"),
        ({"labels": "Env:prod"}, "labels"),
        ({"labels": "env:a,env:b"}, "labels"),
        ({"labels": ""}, "labels"),
        ({"name": ""}, "name"),
        ({"name": "a\x01b"}, "name"),
        ({"latest": "yes"}, "latest"),
        ({"sort": "name"}, "sort"),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    server: LiveServer, admin: str, query: dict[str, str], field: str
) -> None:
    with server.client(admin) as client:
        response = client.get("/api/v1/machines", params=query)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_a_cursor_with_a_control_character_or_lone_surrogate_is_refused(
    server: LiveServer, admin: str
) -> None:
    with server.client(admin) as client:
        for key in (["a\x00b", "id"], ["a", "\x7f"], ["a", ""]):
            response = client.get("/api/v1/machines", params={"cursor": _cursor(key)})
            assert response.status_code == 422, key
        raw = base64.urlsafe_b64encode(b'["\\ud800","x"]').rstrip(b"=").decode()
        assert client.get("/api/v1/machines", params={"cursor": raw}).status_code == 422


def _cursor(key: list[str]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
