"""Credential profiles, devices and monitors over real HTTP: scoping, secrets, deletion rules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agentless.door import HANGING_HOST, PASSWORD, USERNAME, door_plugins

from .alerting_support import Team, make_team, unique
from .openapi_check import Http, running

PROFILES = "/api/v1/credential-profiles"
DEVICES = "/api/v1/devices"
MONITORS = "/api/v1/monitors"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    for server in running(tmp_path_factory.mktemp("agentless"), plugins=door_plugins()):
        with Http(server) as http:
            yield make_team(server, http)


def profile(team: Team, token: str, **given: Any) -> dict[str, Any]:
    body = {"name": unique("p"), "username": USERNAME, "password": PASSWORD, **given}
    made: dict[str, Any] = team.json(token, "POST", PROFILES, 201, json=body)
    return made


def device(team: Team, token: str, address: str | None = None) -> dict[str, Any]:
    body = {"address": address or f"{unique('host')}.example.test"}
    made: dict[str, Any] = team.json(token, "POST", DEVICES, 201, json=body)
    return made


def monitor(team: Team, token: str, device_id: str, profile_id: str, **given: Any) -> Any:
    body = {"device_id": device_id, "credential_profile_id": profile_id, "collector": "door"}
    return team.json(token, "POST", MONITORS, 201, json={**body, **given})


def test_a_profile_never_shows_its_password(team: Team) -> None:
    made = profile(team, team.alice, domain="CORP")
    assert made["has_password"] is True
    assert (made["port"], made["https"], made["verify_tls"]) == (5986, True, True)
    for answer in (
        made,
        team.json(team.alice, "GET", f"{PROFILES}/{made['id']}", 200),
        team.json(team.alice, "GET", PROFILES, 200),
    ):
        assert PASSWORD not in str(answer)
        assert "password" not in str(answer).replace("has_password", "")
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"limit": "1000"})
    assert PASSWORD not in str(audit)


def test_profiles_are_scoped_to_their_owner(team: Team) -> None:
    made = profile(team, team.alice)
    path = f"{PROFILES}/{made['id']}"
    assert team.error(team.bob, "GET", path, 404)["code"] == "not_found"
    team.call(team.bob, "PATCH", path, 404, json={"name": "mine now"})
    team.call(team.bob, "DELETE", path, 404)
    team.call(
        team.bob, "POST", f"{path}/test", 404, json={"host": "127.0.0.1", "collector": "door"}
    )
    assert made["id"] not in {p["id"] for p in team.json(team.bob, "GET", PROFILES, 200)["items"]}
    assert team.json(team.admin, "GET", path, 200)["owner_id"] == team.alice_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": None}, "password"),
        ({"username": None}, "username"),
        ({"transport": "telnet"}, "transport"),
        ({"transport": "certificate", "https": False, "username": None}, "https"),
        ({"port": 65536}, "port"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_profiles_are_refused_and_nothing_is_stored(
    team: Team, body: dict[str, Any], field: str
) -> None:
    name = unique("bad")
    full = {"name": name, "username": USERNAME, "password": PASSWORD, **body}
    error = team.error(team.alice, "POST", PROFILES, 422, json=full)
    assert field in (error["field"] or "") or field in error["message"], error
    names = {p["name"] for p in team.json(team.alice, "GET", PROFILES, 200)["items"]}
    assert name not in names


def test_the_test_endpoint_says_what_happened(team: Team) -> None:
    made = profile(team, team.alice)
    path = f"{PROFILES}/{made['id']}/test"
    ok = team.json(team.alice, "POST", path, 200, json={"host": "127.0.0.1", "collector": "door"})
    assert ok["ok"] is True
    assert (ok["hostname"], ok["os_version"], ok["error"]) == ("WIN-DOOR", "10.0.17763", None)

    team.call(team.alice, "PATCH", f"{PROFILES}/{made['id']}", 200, json={"password": "wrong"})
    refused = team.json(team.alice, "POST", path, 200, json={"host": "::1", "collector": "door"})
    assert refused["ok"] is False
    assert refused["error"]["kind"] == "authentication"
    assert "401" in refused["error"]["message"]

    slow = {"host": HANGING_HOST, "collector": "door", "timeout": 0.5}
    hung = team.json(team.alice, "POST", path, 200, json=slow)
    assert (hung["ok"], hung["error"]["kind"]) == (False, "timeout")

    for body, field in (
        ({"host": "127.0.0.1", "collector": "nope"}, "collector"),
        ({"host": "127.0.0.1", "collector": "plain"}, "collector"),
        ({"host": "https://127.0.0.1/wsman", "collector": "door"}, "host"),
        ({"host": "127.0.0.1", "collector": "door", "timeout": 0}, "timeout"),
    ):
        assert field in str(team.error(team.alice, "POST", path, 422, json=body)), body


def test_collectors_are_listed_with_what_they_can_do(team: Team) -> None:
    listed = team.json(team.alice, "GET", "/api/v1/collectors", 200)["items"]
    by_name = {item["name"]: item["identifies"] for item in listed}
    assert by_name["door"] is True
    assert by_name["plain"] is False


def test_a_monitor_makes_its_device_a_machine(team: Team) -> None:
    made = profile(team, team.alice)
    host = device(team, team.alice)
    first = monitor(team, team.alice, host["id"], made["id"], interval=30)
    assert (first["state"], first["interval"], first["failures"]) == ("pending", 30, 0)
    machine = team.json(team.alice, "GET", f"/api/v1/machines/{first['machine_id']}", 200)
    assert machine["kind"] == "agentless"
    assert machine["hostname"] == host["address"]
    # Offline after two of its longest intervals without a successful poll, plus retries.
    assert machine["offline_after"] == 2 * 30 + 120
    second = monitor(team, team.alice, host["id"], made["id"], collector="plain")
    assert second["machine_id"] == first["machine_id"]
    machine = team.json(team.alice, "GET", f"/api/v1/machines/{first['machine_id']}", 200)
    assert machine["offline_after"] == 2 * 60 + 120
    again = team.error(
        team.alice,
        "POST",
        MONITORS,
        409,
        json={"device_id": host["id"], "credential_profile_id": made["id"], "collector": "door"},
    )
    assert again["code"] == "conflict"
    assert (
        team.json(team.alice, "GET", f"{DEVICES}/{host['id']}", 200)["machine_id"]
        == (first["machine_id"])
    )
    listed = team.json(team.alice, "GET", MONITORS, 200, params={"device_id": host["id"]})
    assert {m["id"] for m in listed["items"]} == {first["id"], second["id"]}


def test_what_is_in_use_cannot_be_deleted_and_the_answer_lists_it(team: Team) -> None:
    made = profile(team, team.alice)
    host = device(team, team.alice)
    watching = monitor(team, team.alice, host["id"], made["id"])
    error = team.error(team.alice, "DELETE", f"{PROFILES}/{made['id']}", 409)
    assert error["code"] == "in_use"
    assert error["in_use_by"] == {"monitors": [watching["id"]]}
    assert "1 monitors" in error["message"] or "1 monitor" in error["message"]
    error = team.error(team.alice, "DELETE", f"{DEVICES}/{host['id']}", 409)
    assert error["in_use_by"] == {"monitors": [watching["id"]]}
    machine = f"/api/v1/machines/{watching['machine_id']}"
    assert team.error(team.alice, "DELETE", machine, 409)["in_use_by"] == {
        "monitors": [watching["id"]]
    }

    team.call(team.alice, "DELETE", f"{MONITORS}/{watching['id']}", 204)
    team.call(team.alice, "GET", machine, 404)  # the last monitor took the machine
    assert team.json(team.alice, "GET", f"{DEVICES}/{host['id']}", 200)["machine_id"] is None
    team.call(team.alice, "DELETE", f"{DEVICES}/{host['id']}", 204)
    team.call(team.alice, "DELETE", f"{PROFILES}/{made['id']}", 204)


def test_a_monitor_takes_its_machines_metrics_only_with_the_last_monitor(team: Team) -> None:
    made = profile(team, team.alice)
    host = device(team, team.alice)
    one = monitor(team, team.alice, host["id"], made["id"])
    two = monitor(team, team.alice, host["id"], made["id"], collector="plain")
    machine = f"/api/v1/machines/{one['machine_id']}"
    team.call(team.alice, "DELETE", f"{MONITORS}/{one['id']}", 204)
    team.call(team.alice, "GET", machine, 200)
    team.call(team.alice, "DELETE", f"{MONITORS}/{two['id']}", 204)
    team.call(team.alice, "GET", machine, 404)


def test_monitors_are_scoped_and_checked(team: Team) -> None:
    alices = profile(team, team.alice)
    bobs = profile(team, team.bob)
    host = device(team, team.alice)
    team.call(team.bob, "GET", f"{DEVICES}/{host['id']}", 404)
    body = {"device_id": host["id"], "credential_profile_id": bobs["id"], "collector": "door"}
    team.call(team.alice, "POST", MONITORS, 404, json=body)  # bob's profile: not found
    team.call(team.bob, "POST", MONITORS, 404, json=body)  # alice's device: not found
    for bad, field in (
        ({"collector": "nope"}, "collector"),
        ({"interval": 1}, "interval"),
        ({"interval": 86401}, "interval"),
        ({"options": []}, "options"),
    ):
        full = {**body, "credential_profile_id": alices["id"], **bad}
        assert field in str(team.error(team.alice, "POST", MONITORS, 422, json=full))
    made = monitor(team, team.alice, host["id"], alices["id"])
    path = f"{MONITORS}/{made['id']}"
    team.call(team.bob, "GET", path, 404)
    team.call(team.bob, "PATCH", path, 404, json={"enabled": False})
    team.call(team.bob, "DELETE", path, 404)
    team.call(team.alice, "PATCH", path, 404, json={"credential_profile_id": bobs["id"]})
    assert made["id"] not in {m["id"] for m in team.json(team.bob, "GET", MONITORS, 200)["items"]}


def test_a_monitor_is_changed_disabled_and_enabled(team: Team) -> None:
    made = monitor(
        team, team.alice, device(team, team.alice)["id"], profile(team, team.alice)["id"]
    )
    path = f"{MONITORS}/{made['id']}"
    changed = team.json(team.alice, "PATCH", path, 200, json={"interval": 10, "options": {"a": 1}})
    assert (changed["interval"], changed["options"]) == (10, {"a": 1})
    # A shorter interval takes effect now: the next poll is within it.
    due = datetime.fromisoformat(changed["due_at"])
    assert due <= datetime.now(UTC) + timedelta(seconds=10)
    off = team.json(team.alice, "POST", f"{path}/disable", 200)
    assert (off["enabled"], off["state"]) == (False, "disabled")
    on = team.json(team.alice, "POST", f"{path}/enable", 200)
    assert (on["enabled"], on["state"]) == (True, "pending")
    team.call(team.alice, "PATCH", path, 422, json={"enabled": None})


def test_devices_are_unique_per_owner_by_address(team: Team) -> None:
    address = f"{unique('dup')}.example.test"
    made = device(team, team.alice, address)
    assert made["machine_id"] is None
    assert team.error(team.alice, "POST", DEVICES, 409, json={"address": address})["code"] == (
        "conflict"
    )
    device(team, team.bob, address)  # another owner's device may share the address
    team.call(team.alice, "POST", DEVICES, 422, json={"address": "not a host!"})


def test_poll_now_polls_and_says_how_it_went(team: Team) -> None:
    made = profile(team, team.alice)
    host = device(team, team.alice)
    watching = monitor(team, team.alice, host["id"], made["id"], enabled=False)
    path = f"{MONITORS}/{watching['id']}"
    polled = team.json(team.alice, "POST", f"{path}/poll", 200)
    assert (polled["ok"], polled["error"]) == (True, None)
    assert polled["monitor"]["last_polled"] is not None
    assert polled["monitor"]["due_at"] == watching["due_at"]  # the schedule stays
    latest = team.json(team.alice, "GET", f"/api/v1/machines/{watching['machine_id']}/latest", 200)
    values = {item["metric"]: item["value"] for item in latest["items"]}
    assert (values["proc.count"], values["poll.up"]) == (42, 1)

    team.call(team.alice, "PATCH", f"{PROFILES}/{made['id']}", 200, json={"password": "wrong"})
    failed = team.json(team.alice, "POST", f"{path}/poll", 200)
    assert failed["ok"] is False
    assert failed["error"].startswith("authentication:")
    assert (failed["monitor"]["state"], failed["monitor"]["failures"]) == ("disabled", 1)
    assert failed["monitor"]["last_error"] == failed["error"]
    team.call(team.bob, "POST", f"{path}/poll", 404)
