"""Two servers on one database: what is changed through one, the other follows.

Each server keeps alert rules and machines in memory; changes made through the
other server reach it within ``sync_interval`` (2 s by default), so an agent
that keeps reporting to the other server is judged by them from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from .alerting_support import wait_for
from .conftest import LiveServer, MakeServer

RULES = "/api/v1/alert-rules"


def _json(response: httpx.Response, expect: int) -> Any:
    assert response.status_code == expect, (response.status_code, response.text)
    return response.json()


def _send(client: httpx.Client, key: str, cpu: float) -> None:
    sample = {"timestamp": datetime.now(UTC).isoformat(), "metrics": {"cpu.percent": cpu}}
    headers = {"authorization": f"Bearer {key}"}
    _json(client.post("/api/v1/ingest", json={"samples": [sample]}, headers=headers), 200)


def _events(client: httpx.Client, rule_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _json(
        client.get("/api/v1/alert-events", params={"rule_id": rule_id}), 200
    )["items"]
    return items


def _two(make_server: MakeServer, tmp_path: Path) -> tuple[LiveServer, LiveServer]:
    shared = tmp_path / "shared"
    return make_server(data_dir=shared), make_server(data_dir=shared)


def _machine(client: httpx.Client, name: str) -> tuple[str, str]:
    """A new machine registered through ``client``: (id, API key)."""
    created = _json(client.post("/api/v1/machines", json={"name": name}), 201)
    return created["machine"]["id"], created["api_key"]


def test_a_rule_made_through_one_server_fires_on_samples_sent_to_the_other(
    make_server: MakeServer, tmp_path: Path
) -> None:
    a, b = _two(make_server, tmp_path)
    with a.client(a.login()) as on_a, b.client() as on_b:
        machine_id, key = _machine(on_a, "web-1")
        _send(on_b, key, 10.0)  # b evaluates this machine's samples from now on
        rule = {"name": "hot", "metric": "cpu.percent", "comparison": ">", "threshold": 80}
        rule_id = _json(on_a.post(RULES, json=rule), 201)["id"]

        def fired() -> list[dict[str, Any]]:
            _send(on_b, key, 95.0)  # as an agent would, until b knows the rule
            return _events(on_a, rule_id)

        [event] = wait_for(fired, timeout=15, what="a firing event")
        assert (event["machine_id"], event["state"]) == (machine_id, "firing")


def test_labels_changed_through_one_server_bring_a_machine_into_a_rule_on_the_other(
    make_server: MakeServer, tmp_path: Path
) -> None:
    a, b = _two(make_server, tmp_path)
    with a.client(a.login()) as on_a, b.client() as on_b:
        machine_id, key = _machine(on_a, "db-1")
        rule = {
            "name": "hot databases",
            "metric": "cpu.percent",
            "comparison": ">",
            "threshold": 80,
            "scope": {"labels": {"role": "db"}},
        }
        rule_id = _json(on_a.post(RULES, json=rule), 201)["id"]
        hub = b.app.state.hub

        def b_knows_the_rule() -> bool:
            _send(on_b, key, 10.0)
            return bool(hub.alerts.active_rules == 1)

        wait_for(b_knows_the_rule, timeout=15, what="b loading the rule")
        _send(on_b, key, 95.0)  # no role=db label yet: nothing fires

        labels = {"labels": {"role": "db"}}
        _json(on_a.patch(f"/api/v1/machines/{machine_id}", json=labels), 200)

        def fired() -> list[dict[str, Any]]:
            _send(on_b, key, 96.0)
            return _events(on_a, rule_id)

        [event] = wait_for(fired, timeout=15, what="a firing event")
        assert (event["machine_id"], event["value"]) == (machine_id, 96.0), "95 did not fire"
