"""Silences over real HTTP: windows, matchers, scoping, and what ending one sends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .alerting_support import Team, make_team, unique, wait_for
from .notifier_double import Receiver, plugins
from .openapi_check import Http, running

SILENCES = "/api/v1/silences"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    for server in running(tmp_path_factory.mktemp("silences"), plugins=plugins()):
        with Http(server) as http:
            yield make_team(server, http)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def test_a_silence_is_created_listed_and_ended(team: Team) -> None:
    machine_id, _ = team.machine(team.alice)
    body = {"machine_id": machine_id, "duration": 3600, "comment": "kernel upgrade"}
    created = team.json(team.alice, "POST", SILENCES, 201, json=body)
    assert created["owner_id"] == created["created_by"] == team.alice_id
    assert (created["machine_id"], created["labels"], created["rule_id"]) == (machine_id, {}, None)
    assert created["active"] is True
    starts = datetime.fromisoformat(created["starts_at"])
    ends = datetime.fromisoformat(created["ends_at"])
    assert ends - starts == timedelta(hours=1)
    assert abs(starts - datetime.now(UTC)) < timedelta(minutes=1)
    path = f"{SILENCES}/{created['id']}"
    assert team.json(team.alice, "GET", path, 200) == created
    active = team.json(team.alice, "GET", SILENCES, 200, params={"active": "true"})["items"]
    assert created["id"] in {s["id"] for s in active}

    team.call(team.alice, "DELETE", path, 204)
    ended = team.json(team.alice, "GET", path, 200)
    assert ended["active"] is False
    assert datetime.fromisoformat(ended["ends_at"]) <= datetime.now(UTC)
    inactive = team.json(team.alice, "GET", SILENCES, 200, params={"active": "false"})["items"]
    assert created["id"] in {s["id"] for s in inactive}
    team.call(team.alice, "DELETE", path, 204)  # ending an ended silence changes nothing
    assert team.json(team.alice, "GET", path, 200)["ends_at"] == ended["ends_at"]
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"limit": "1000"})
    actions = {(e["action"], e["target_id"]) for e in audit["items"]}
    assert {("silence.create", created["id"]), ("silence.end", created["id"])} <= actions


def test_a_planned_silence_by_labels_with_an_end_time(team: Team) -> None:
    body = {
        "labels": {"rack": "r7"},
        "starts_at": iso(timedelta(days=1)),
        "ends_at": iso(timedelta(days=2)),
    }
    created = team.json(team.alice, "POST", SILENCES, 201, json=body)
    assert (created["labels"], created["active"]) == ({"rack": "r7"}, False)


def test_a_silence_of_a_rule(team: Team) -> None:
    rule = {"name": unique("r"), "metric": "cpu.percent", "comparison": ">", "threshold": 1}
    rule_id = team.json(team.alice, "POST", "/api/v1/alert-rules", 201, json=rule)["id"]
    created = team.json(
        team.alice, "POST", SILENCES, 201, json={"rule_id": rule_id, "duration": 60}
    )
    assert created["rule_id"] == rule_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"duration": 60}, "machine_id"),
        ({"labels": {"a": "b"}}, "ends_at"),
        ({"labels": {"a": "b"}, "duration": 60, "ends_at": "@+1h"}, "duration"),
        ({"labels": {"a": "b"}, "ends_at": "@-1h"}, "ends_at"),
        ({"labels": {"a": "b"}, "starts_at": "@+2h", "ends_at": "@+1h"}, "ends_at"),
        ({"labels": {"a": "b"}, "starts_at": "@-3h", "duration": 3600}, "duration"),
        ({"labels": {"a": "b"}, "duration": 91 * 86400}, "duration"),
        ({"labels": {"a": "b"}, "ends_at": "@+2200h"}, "ends_at"),
        ({"labels": {"a": "b"}, "starts_at": "@+9000h", "duration": 60}, "starts_at"),
        ({"labels": {"a": "b"}, "duration": 0}, "duration"),
        ({"labels": {"a": "b"}, "duration": 1e300}, "duration"),
        ({"labels": {"a": "b"}, "starts_at": 1700000000, "duration": 60}, "starts_at"),
        ({"labels": {"a": "b"}, "ends_at": "tomorrow"}, "ends_at"),
        ({"labels": {"a": "b"}, "ends_at": "2030-01-01T00:00:00"}, "ends_at"),
        ({"labels": {"Bad": "b"}, "duration": 60}, "labels.Bad"),
        ({"labels": {"a": "b"}, "duration": 60, "comment": "x\x00y"}, "comment"),
        ({"labels": {"a": "b"}, "duration": 60, "comment": "x" * 1001}, "comment"),
        ({"machine_id": "no-such-machine", "duration": 60}, "machine_id"),
        ({"rule_id": "no-such-rule", "duration": 60}, "rule_id"),
    ],
)
def test_bad_silences_are_422_naming_the_field(
    team: Team, body: dict[str, Any], field: str
) -> None:
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return iso(timedelta(hours=float(value[1:-1])))
        return value

    sent = {name: resolve(value) for name, value in body.items()}
    error = team.error(team.alice, "POST", SILENCES, 422, json=sent)
    assert error["field"] == field, error


def test_a_silence_names_only_the_callers_machines_and_rules(team: Team) -> None:
    bobs_machine, _ = team.machine(team.bob)
    rule = {"name": unique("r"), "metric": "cpu.percent", "comparison": ">", "threshold": 1}
    bobs_rule = team.json(team.bob, "POST", "/api/v1/alert-rules", 201, json=rule)["id"]
    for body, field in (
        ({"machine_id": bobs_machine, "duration": 60}, "machine_id"),
        ({"rule_id": bobs_rule, "duration": 60}, "rule_id"),
    ):
        assert team.error(team.alice, "POST", SILENCES, 422, json=body)["field"] == field
        team.call(team.admin, "POST", SILENCES, 201, json=body)


def test_other_users_silences_are_not_found(team: Team) -> None:
    created = team.json(
        team.alice, "POST", SILENCES, 201, json={"labels": {"a": "b"}, "duration": 60}
    )
    path = f"{SILENCES}/{created['id']}"
    assert team.error(team.bob, "GET", path, 404)["code"] == "not_found"
    assert team.error(team.bob, "DELETE", path, 404)["code"] == "not_found"
    assert team.json(team.alice, "GET", path, 200)["active"] is True
    assert created["id"] not in {
        s["id"] for s in team.json(team.bob, "GET", SILENCES, 200)["items"]
    }
    assert created["id"] in {s["id"] for s in team.json(team.admin, "GET", SILENCES, 200)["items"]}


@pytest.mark.parametrize(
    ("query", "field"), [({"active": "maybe"}, "active"), ({"mine": "true"}, "mine")]
)
def test_bad_filters_are_422(team: Team, query: dict[str, str], field: str) -> None:
    assert team.error(team.alice, "GET", SILENCES, 422, params=query)["field"] == field


def test_events_during_a_silence_are_held_and_what_persists_is_sent_at_its_end(
    team: Team, receiver: Receiver
) -> None:
    machine_id, key = team.machine(team.bob)
    channel = {"name": unique("ch"), "type": "loopback", "config": {"url": receiver.url}}
    team.call(team.bob, "POST", "/api/v1/channels", 201, json=channel)
    rule = {
        "name": unique("hot"),
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": 80,
        "scope": {"machine_id": machine_id},
    }
    rule_id = team.json(team.bob, "POST", "/api/v1/alert-rules", 201, json=rule)["id"]
    silence = team.json(
        team.bob, "POST", SILENCES, 201, json={"machine_id": machine_id, "duration": 3600}
    )
    team.ingest(key, {"cpu.percent": 97.0})

    def held() -> list[dict[str, Any]]:
        events = team.json(
            team.bob, "GET", "/api/v1/notification-events", 200, params={"state": "silenced"}
        )["items"]
        return [e for e in events if e["rule_id"] == rule_id]

    [event] = wait_for(held, what="a silenced event")
    assert (event["kind"], event["silence_id"]) == ("alert.firing", silence["id"])
    assert receiver.messages() == []
    assert team.json(team.bob, "GET", "/api/v1/notifications", 200)["items"] == []

    team.call(team.bob, "DELETE", f"{SILENCES}/{silence['id']}", 204)

    def sent() -> list[Any]:
        # Rules of other tests may watch this machine too.
        return [m for m in receiver.messages() if m.body["data"]["rule"]["id"] == rule_id]

    [message] = wait_for(sent, what="the notice at the end of the silence")
    assert message.body["kind"] == "alert.firing"
    assert "Still the case" in message.body["text"]
    ended = team.json(team.bob, "GET", f"{SILENCES}/{silence['id']}", 200)
    assert ended["ended_at"] is not None
