"""GET /api/v1/latest over real HTTP: many machines' latest values in one call, their
filters, pages and owner scoping, and refusals of bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from lunasentri_core.hub import open_storage
from lunasentri_core.model import MachineSamples, Reading, Sample
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.storage.protocols import StorageBackend
from lunasentri_core.testing.builders import make_machine

from .conftest import LiveServer
from .test_machines import add_user

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


@pytest.fixture
def storage(server: LiveServer) -> Iterator[StorageBackend]:
    """The live server's own database, opened a second time to plant machines and points."""
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    yield backend
    backend.close()


def user_id(server: LiveServer, token: str) -> str:
    with server.client(token) as client:
        found: str = client.get("/api/v1/auth/me").json()["id"]
    return found


def fleet(
    storage: StorageBackend, owner_id: str, count: int, prefix: str = "node", **fields: Any
) -> list[str]:
    """``count`` machines, each with cpu.percent of two cores, memory and a disk."""
    ids = []
    for n in range(count):
        machine = storage.state.add_machine(
            make_machine(owner_id=owner_id, name=f"{prefix}-{n:03d}", **fields)
        )
        ids.append(machine.id)
    batch = []
    for n, machine_id in enumerate(ids):
        readings = [
            Reading("cpu.percent", n + 0.5, {"cpu": "0"}),
            Reading("cpu.percent", n + 0.25, {"cpu": "1"}),
            Reading("mem.used", 25.0, {}),
            Reading("mem.total", 100.0, {}),
            Reading("disk.used", 3.0, {"mount": "/"}),
            Reading("disk.total", 4.0, {"mount": "/"}),
        ]
        old = Sample(AT - timedelta(seconds=5), [Reading("cpu.percent", -1.0, {"cpu": "0"})])
        batch.append(MachineSamples(machine_id, [old, Sample(AT, readings)]))
    storage.metrics.write(batch)
    return ids


def latest(client: httpx.Client, **query: Any) -> dict[str, Any]:
    response = client.get("/api/v1/latest", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def values(item: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(v["metric"], tuple(sorted(v["labels"].items()))): v["value"] for v in item["items"]}


def test_every_machine_of_the_caller_comes_with_its_newest_values(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    ids = fleet(storage, user_id(server, admin), 25)
    with server.client(admin) as client:
        body = latest(client)
    assert body["next_cursor"] is None
    assert [item["machine_id"] for item in body["items"]] == ids
    third = body["items"][3]
    assert third["name"] == "node-003"
    assert values(third) == {
        ("cpu.percent", (("cpu", "0"),)): 3.5,
        ("cpu.percent", (("cpu", "1"),)): 3.25,
        ("mem.used", ()): 25.0,
        ("mem.total", ()): 100.0,
        ("disk.used", (("mount", "/"),)): 3.0,
        ("disk.total", (("mount", "/"),)): 4.0,
    }
    assert all(v["timestamp"] == AT.isoformat() for v in third["items"])
    assert {(v["metric"], v["value"]) for v in third["derived"]} == {
        ("mem.percent", 25.0),
        ("disk.percent", 75.0),
    }


def test_machine_metric_and_label_filters(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    owner = user_id(server, admin)
    prod = fleet(storage, owner, 3, "prod", labels={"env": "prod"})
    fleet(storage, owner, 3, "test", labels={"env": "test"})
    with server.client(admin) as client:
        by_label = latest(client, labels="env:prod", metric="cpu.percent")
        assert [item["machine_id"] for item in by_label["items"]] == prod
        assert all(
            {v["metric"] for v in item["items"]} == {"cpu.percent"} for item in by_label["items"]
        )
        assert all(item["derived"] == [] for item in by_label["items"])

        chosen = latest(client, machine=f"{prod[2]},{prod[0]},no-such-machine")
        assert [item["machine_id"] for item in chosen["items"]] == [prod[0], prod[2]]

        one_core = latest(client, machine=prod[1], metric="cpu.percent", series_labels="cpu:1")
        assert values(one_core["items"][0]) == {("cpu.percent", (("cpu", "1"),)): 1.25}

        derived = latest(client, machine=prod[1], metric="disk.percent")["items"][0]
        assert derived["items"] == []
        assert [(v["metric"], v["labels"], v["value"]) for v in derived["derived"]] == [
            ("disk.percent", {"mount": "/"}, 75.0)
        ]

        nothing = latest(client, machine=prod[1], metric="load.1")["items"]
        assert [(item["items"], item["derived"]) for item in nothing] == [([], [])]

        by_name = latest(client, name="TEST-00", metric="mem.used")
        assert [item["name"] for item in by_name["items"]] == ["test-000", "test-001", "test-002"]


def test_large_answers_come_a_page_at_a_time(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    ids = fleet(storage, user_id(server, admin), 12)
    seen: list[str] = []
    with server.client(admin) as client:
        cursor = None
        while True:
            body = latest(client, limit=5, **({"cursor": cursor} if cursor else {}))
            assert len(body["items"]) <= 5
            seen.extend(item["machine_id"] for item in body["items"])
            assert all(len(item["items"]) == 6 for item in body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert seen == ids


def test_a_user_sees_only_their_machines_and_an_admin_sees_all(
    server: LiveServer, admin: str, storage: StorageBackend
) -> None:
    alice = add_user(server, admin, "alice")
    bob = add_user(server, admin, "bob")
    hers = fleet(storage, user_id(server, alice), 3, "alice")
    his = fleet(storage, user_id(server, bob), 2, "bob")
    with server.client(alice) as client:
        assert [item["machine_id"] for item in latest(client)["items"]] == hers
        # Another owner's machine named explicitly matches nothing, like an unknown id.
        assert latest(client, machine=",".join(his))["items"] == []
        assert [
            i["machine_id"] for i in latest(client, machine=f"{his[0]},{hers[1]}")["items"]
        ] == [hers[1]]
    with server.client(admin) as client:
        assert {item["machine_id"] for item in latest(client)["items"]} == {*hers, *his}


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ({"machine": ""}, "machine", "not a machine id"),
        ({"machine": "a,,b"}, "machine", "not a machine id"),
        ({"machine": "has space"}, "machine", "not a machine id"),
        ({"machine": ",".join(f"m{i}" for i in range(1001))}, "machine", "at most 1000"),
        ({"machine": "a" * 8001}, "machine", "at most 8000 characters"),
        ({"metric": "CPU percent"}, "metric", "not a metric name"),
        ({"series_labels": "cpu"}, "series_labels", "not name:value"),
        ({"labels": "Env:prod"}, "labels", "not name:value"),
        ({"limit": "0"}, "limit", "1 to 1000"),
        ({"cursor": "not a cursor"}, "cursor", ""),
        ({"latest": "true"}, "latest", "unknown parameter"),
    ],
)
def test_bad_input_is_a_422_naming_the_parameter(
    server: LiveServer, admin: str, query: dict[str, str], field: str, words: str
) -> None:
    with server.client(admin) as client:
        response = client.get("/api/v1/latest", params=query)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert words in error["message"]


def test_without_credentials_it_is_a_401(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/api/v1/latest").status_code == 401
