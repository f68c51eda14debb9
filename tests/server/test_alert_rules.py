"""Alert rules, current alerts and alert events over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .alerting_support import Team, make_team, unique, wait_for
from .openapi_check import Http, running

RULES = "/api/v1/alert-rules"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    for server in running(tmp_path_factory.mktemp("alert-rules")):
        with Http(server) as http:
            yield make_team(server, http)


def rule_body(**fields: Any) -> dict[str, Any]:
    return {
        "name": unique("rule"),
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": 80,
        **fields,
    }


def create_rule(team: Team, token: str, **fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = team.json(token, "POST", RULES, 201, json=rule_body(**fields))
    return rule


def firing(team: Team, token: str, rule_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = team.json(
        token, "GET", "/api/v1/alert-events", 200, params={"rule_id": rule_id}
    )["items"]
    return items


# --------------------------------------------------------------------------- CRUD


def test_a_rule_is_created_read_changed_and_deleted(team: Team) -> None:
    machine_id, _ = team.machine(team.alice)
    body = rule_body(
        metric="disk.percent",
        comparison=">=",
        threshold=90.5,
        for_duration=120,
        scope={"machine_id": machine_id, "labels": {"mount": "x"}},
        severity="critical",
        enabled=False,
    )
    created = team.json(team.alice, "POST", RULES, 201, json=body)
    assert created["owner_id"] == team.alice_id
    assert {k: created[k] for k in body} == {**body, "for_duration": 120.0}
    rule_id = created["id"]
    assert team.json(team.alice, "GET", f"{RULES}/{rule_id}", 200) == created
    listed = team.json(team.alice, "GET", RULES, 200)["items"]
    assert created in listed

    patch = {"threshold": 95, "enabled": True, "scope": {"labels": {"env": "prod"}}}
    changed = team.json(team.alice, "PATCH", f"{RULES}/{rule_id}", 200, json=patch)
    assert changed["threshold"] == 95
    assert changed["enabled"] is True
    assert changed["scope"] == {"machine_id": None, "labels": {"env": "prod"}}
    assert changed["name"] == created["name"]
    assert changed["created_at"] == created["created_at"]

    team.call(team.alice, "DELETE", f"{RULES}/{rule_id}", 204)
    team.call(team.alice, "GET", f"{RULES}/{rule_id}", 404)
    team.call(team.alice, "DELETE", f"{RULES}/{rule_id}", 404)

    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"limit": "1000"})
    actions = {(e["action"], e["target_id"]) for e in audit["items"]}
    for action in ("alert_rule.create", "alert_rule.update", "alert_rule.delete"):
        assert (action, rule_id) in actions
    update = next(
        e for e in audit["items"] if (e["action"], e["target_id"]) == ("alert_rule.update", rule_id)
    )
    assert update["detail"]["threshold"] == {"from": 90.5, "to": 95.0}


def test_defaults_and_derived_metrics(team: Team) -> None:
    rule = create_rule(team, team.alice, metric="mem.percent")
    assert rule["metric"] == "mem.percent"
    assert rule["for_duration"] == 0
    assert rule["scope"] == {"machine_id": None, "labels": {}}
    assert (rule["severity"], rule["enabled"]) == ("warning", True)


def test_other_users_rules_are_not_found_and_admins_see_all(team: Team) -> None:
    rule = create_rule(team, team.alice)
    path = f"{RULES}/{rule['id']}"
    for method, body in (("GET", None), ("PATCH", {"threshold": 1}), ("DELETE", None)):
        kwargs = {} if body is None else {"json": body}
        error = team.error(team.bob, method, path, 404, **kwargs)
        assert error["code"] == "not_found"
    assert rule["id"] not in {r["id"] for r in team.json(team.bob, "GET", RULES, 200)["items"]}
    assert team.json(team.alice, "GET", path, 200) == rule
    assert rule["id"] in {r["id"] for r in team.json(team.admin, "GET", RULES, 200)["items"]}
    changed = team.json(team.admin, "PATCH", path, 200, json={"severity": "info"})
    assert (changed["owner_id"], changed["severity"]) == (team.alice_id, "info")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metric": "CPU load"}, "metric"),
        ({"comparison": "=>"}, "comparison"),
        ({"threshold": "high"}, "threshold"),
        ({"for_duration": -1}, "for_duration"),
        ({"for_duration": 8 * 86400}, "for_duration"),
        ({"for_duration": 1e300}, "for_duration"),
        ({"severity": "fatal"}, "severity"),
        ({"name": ""}, "name"),
        ({"name": " padded "}, "name"),
        ({"scope": "all"}, "scope"),
        ({"scope": {"labels": {"Bad Name": "x"}}}, "scope.labels.Bad Name"),
        ({"scope": {"owner": "me"}}, "scope.owner"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_bad_rules_are_422_naming_the_field(team: Team, fields: dict[str, Any], field: str) -> None:
    error = team.error(team.alice, "POST", RULES, 422, json=rule_body(**fields))
    assert error["field"] == field, error


def test_a_scope_names_only_the_callers_own_machine(team: Team) -> None:
    bobs, _ = team.machine(team.bob)
    error = team.error(team.alice, "POST", RULES, 422, json=rule_body(scope={"machine_id": bobs}))
    assert error["field"] == "scope.machine_id"
    assert bobs in error["message"]
    body = rule_body(scope={"machine_id": "no-such-machine"})
    assert team.error(team.alice, "POST", RULES, 422, json=body)["field"] == "scope.machine_id"
    # An admin's rule watches the admin's machines: another user's machine would never fire.
    error = team.error(team.admin, "POST", RULES, 422, json=rule_body(scope={"machine_id": bobs}))
    assert error["field"] == "scope.machine_id"
    rule = create_rule(team, team.alice)
    patch = {"scope": {"machine_id": bobs}}
    error = team.error(team.alice, "PATCH", f"{RULES}/{rule['id']}", 422, json=patch)
    assert error["field"] == "scope.machine_id"


def test_a_patch_refuses_nulls_and_unknown_fields(team: Team) -> None:
    rule = create_rule(team, team.alice)
    path = f"{RULES}/{rule['id']}"
    assert team.error(team.alice, "PATCH", path, 422, json={"threshold": None})["field"] == (
        "threshold"
    )
    assert team.error(team.alice, "PATCH", path, 422, json={"owner_id": "x"})["field"] == (
        "owner_id"
    )
    assert team.json(team.alice, "PATCH", path, 200, json={}) == rule


# --------------------------------------------------------------------------- evaluation


def test_a_rule_fires_resolves_and_its_events_are_acknowledged(team: Team) -> None:
    machine_id, key = team.machine(team.alice)
    rule = create_rule(team, team.alice, scope={"machine_id": machine_id})
    start = datetime.now(UTC) - timedelta(seconds=30)
    team.ingest(key, {"cpu.percent": 95.0}, start)

    alerts = wait_for(
        lambda: team.json(team.alice, "GET", "/api/v1/alerts", 200, params={"rule_id": rule["id"]})[
            "items"
        ],
        what="a firing alert",
    )
    assert [(a["machine_id"], a["metric"], a["state"], a["value"]) for a in alerts] == [
        (machine_id, "cpu.percent", "firing", 95.0)
    ]
    [event] = wait_for(lambda: firing(team, team.alice, rule["id"]), what="a firing event")
    assert (event["state"], event["machine_id"], event["acknowledged_at"]) == (
        "firing",
        machine_id,
        None,
    )

    path = f"/api/v1/alert-events/{event['id']}/acknowledge"
    team.error(team.bob, "POST", path, 404)
    acked = team.json(team.alice, "POST", path, 200)
    assert acked["acknowledged_by"] == team.alice_id
    assert acked["acknowledged_at"] is not None
    again = team.json(team.admin, "POST", path, 200)
    assert again == acked, "the first acknowledgement stays"
    params = {"action": "alert_event.acknowledge"}
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params=params)["items"]
    assert [(e["actor_id"], e["target_id"]) for e in audit if e["target_id"] == event["id"]] == [
        (team.alice_id, event["id"])
    ], "only the acknowledgement that counted is recorded"

    def events(**params: str) -> list[str]:
        query = {"rule_id": rule["id"], **params}
        items = team.json(team.alice, "GET", "/api/v1/alert-events", 200, params=query)["items"]
        return [item["id"] for item in items]

    assert events(acknowledged="true") == [event["id"]]
    assert events(acknowledged="false") == []
    assert events(machine_id=machine_id, state="firing") == [event["id"]]
    assert events(since=(datetime.now(UTC) + timedelta(minutes=1)).isoformat()) == []

    team.ingest(key, {"cpu.percent": 10.0}, start + timedelta(seconds=10))
    resolved = wait_for(lambda: events(state="resolved"), what="a resolved event")
    assert len(resolved) == 1
    assert events(limit="1") == resolved, "newest first"
    params = {"rule_id": rule["id"]}
    assert team.json(team.alice, "GET", "/api/v1/alerts", 200, params=params)["items"] == []
    params["state"] = "resolved"
    [now] = team.json(team.alice, "GET", "/api/v1/alerts", 200, params=params)["items"]
    assert (now["state"], now["value"]) == ("resolved", 10.0)
    assert team.json(team.bob, "GET", "/api/v1/alerts", 200, params=params)["items"] == []
    assert team.json(team.bob, "GET", "/api/v1/alert-events", 200)["items"] == []


def test_a_rule_with_a_for_duration_is_pending_first(team: Team) -> None:
    machine_id, key = team.machine(team.alice)
    rule = create_rule(team, team.alice, for_duration=600, scope={"machine_id": machine_id})
    team.ingest(key, {"cpu.percent": 99.0})
    params = {"rule_id": rule["id"]}
    [alert] = wait_for(
        lambda: team.json(team.alice, "GET", "/api/v1/alerts", 200, params=params)["items"],
        what="a pending alert",
    )
    assert alert["state"] == "pending"
    assert firing(team, team.alice, rule["id"]) == []


def test_a_changed_rule_is_evaluated_at_once_and_derived_metrics_fire(team: Team) -> None:
    machine_id, key = team.machine(team.alice, labels={"role": "db"})
    rule = create_rule(
        team, team.alice, metric="mem.percent", threshold=90, scope={"labels": {"role": "db"}}
    )
    start = datetime.now(UTC) - timedelta(seconds=30)
    team.ingest(key, {"mem.used": 3000, "mem.total": 4000}, start)
    path = f"{RULES}/{rule['id']}"
    team.json(team.alice, "PATCH", path, 200, json={"threshold": 50})
    team.ingest(key, {"mem.used": 3100, "mem.total": 4000}, start + timedelta(seconds=2))
    [event] = wait_for(lambda: firing(team, team.alice, rule["id"]), what="a firing event")
    assert (event["metric"], event["machine_id"]) == ("mem.percent", machine_id)
    assert event["value"] == pytest.approx(77.5)


def test_a_deleted_rule_takes_its_alerts_and_events_along(team: Team) -> None:
    machine_id, key = team.machine(team.alice)
    rule = create_rule(team, team.alice, scope={"machine_id": machine_id})
    team.ingest(key, {"cpu.percent": 99.0})
    wait_for(lambda: firing(team, team.alice, rule["id"]), what="a firing event")
    team.call(team.alice, "DELETE", f"{RULES}/{rule['id']}", 204)
    assert firing(team, team.alice, rule["id"]) == []
    params = {"rule_id": rule["id"], "state": "firing"}
    assert team.json(team.alice, "GET", "/api/v1/alerts", 200, params=params)["items"] == []


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/v1/alerts", {"state": "burning"}, "state"),
        ("/api/v1/alerts", {"rule": "x"}, "rule"),
        ("/api/v1/alert-events", {"acknowledged": "yes"}, "acknowledged"),
        ("/api/v1/alert-events", {"state": "pending"}, "state"),
        ("/api/v1/alert-events", {"since": "yesterday"}, "since"),
        ("/api/v1/alert-events", {"limit": "0"}, "limit"),
        ("/api/v1/alert-events", {"limit": "5000"}, "limit"),
        ("/api/v1/alert-events", {"machine_id": ""}, "machine_id"),
    ],
)
def test_bad_filters_are_422_naming_them(
    team: Team, path: str, query: dict[str, str], field: str
) -> None:
    assert team.error(team.alice, "GET", path, 422, params=query)["field"] == field


def test_an_unknown_event_is_not_found(team: Team) -> None:
    team.error(team.alice, "POST", "/api/v1/alert-events/nope/acknowledge", 404)
