"""Deliveries, the outbox and the heartbeat over real HTTP.

Alerts and status changes become events; the dispatcher delivers them to the
owner's channels through a loopback notifier and a real receiver. Dead
deliveries are listed and retried; a receiver that says 410 disables its channel,
whose events are then recorded as skipped and sent once it is enabled and they
are resent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .alerting_support import Team, make_team, unique, wait_for
from .conftest import MakeServer
from .notifier_double import Receiver, plugins
from .openapi_check import Http, running

NOTIFICATIONS = "/api/v1/notifications"
EVENTS = "/api/v1/notification-events"
FAST_RETRIES = {"max_attempts": 2, "backoff": 0.1, "max_backoff": 0.2, "poll_interval": 0.2}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    overrides = {"notifications": FAST_RETRIES}
    for server in running(
        tmp_path_factory.mktemp("notifications"), plugins=plugins(), overrides=overrides
    ):
        with Http(server) as http:
            yield make_team(server, http)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def channel(team: Team, token: str, receiver: Receiver) -> dict[str, Any]:
    body = {"name": unique("ch"), "type": "loopback", "config": {"url": receiver.url}}
    created: dict[str, Any] = team.json(token, "POST", "/api/v1/channels", 201, json=body)
    return created


def firing_machine(team: Team, token: str) -> tuple[str, str, dict[str, Any]]:
    """A machine whose own rule fires once it reports cpu.percent above 80."""
    machine_id, key = team.machine(token)
    body = {
        "name": unique("hot"),
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": 80,
        "scope": {"machine_id": machine_id},
    }
    rule = team.json(token, "POST", "/api/v1/alert-rules", 201, json=body)
    return machine_id, key, rule


def deliveries(team: Team, token: str, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = team.json(token, "GET", NOTIFICATIONS, 200, params=params)[
        "items"
    ]
    return items


def test_a_dead_delivery_is_listed_and_retried_by_hand(team: Team, receiver: Receiver) -> None:
    receiver.status = 500
    target = channel(team, team.alice, receiver)
    _, key, rule = firing_machine(team, team.alice)
    team.ingest(key, {"cpu.percent": 91.0})

    [dead] = wait_for(
        lambda: deliveries(team, team.alice, state="dead", channel_id=target["id"]),
        what="a dead delivery",
    )
    assert (dead["owner_id"], dead["attempts"]) == (team.alice_id, 2)
    assert dead["last_error"] == "gave up after 2 attempts: the receiver answered 500"
    assert dead["event"]["kind"] == "alert.firing"
    assert rule["name"] in dead["event"]["title"]
    assert [m.body["id"] for m in receiver.messages()] == [dead["id"], dead["id"]], (
        "every attempt carries the delivery's id as its idempotency key"
    )

    path = f"{NOTIFICATIONS}/{dead['id']}/retry"
    assert team.error(team.bob, "POST", path, 404)["code"] == "not_found"
    assert deliveries(team, team.bob) == []
    receiver.status = 200
    queued = team.json(team.alice, "POST", path, 200)
    assert (queued["id"], queued["state"], queued["attempts"]) == (dead["id"], "pending", 0)
    assert queued["event"] == dead["event"]
    [done] = wait_for(
        lambda: deliveries(team, team.alice, state="delivered", channel_id=target["id"]),
        what="the retried delivery",
    )
    assert done["id"] == dead["id"]
    assert done["delivered_at"] is not None
    assert [m.body["id"] for m in receiver.messages()] == [dead["id"]] * 3
    assert team.error(team.alice, "POST", path, 409)["code"] == "conflict"

    by_event = deliveries(team, team.alice, event_id=dead["event_id"])
    assert [d["id"] for d in by_event] == [dead["id"]]
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"action": "delivery.retry"})
    assert dead["id"] in {e["target_id"] for e in audit["items"]}


def test_the_outbox_lists_each_users_own_events(team: Team, receiver: Receiver) -> None:
    channel(team, team.alice, receiver)
    _, key, rule = firing_machine(team, team.alice)
    team.ingest(key, {"cpu.percent": 99.0})

    def mine(token: str, **params: str) -> list[dict[str, Any]]:
        items = team.json(token, "GET", EVENTS, 200, params=params)["items"]
        return [e for e in items if e["rule_id"] == rule["id"]]

    [event] = wait_for(lambda: mine(team.alice, state="dispatched"), what="a dispatched event")
    assert (event["kind"], event["owner_id"], event["silence_id"]) == (
        "alert.firing",
        team.alice_id,
        None,
    )
    assert event["data"]["rule"]["id"] == rule["id"]
    assert event["data"]["value"] == 99.0
    assert mine(team.alice, state="silenced") == []
    assert mine(team.bob) == []
    assert [e["id"] for e in mine(team.admin)] == [event["id"]]
    wait_for(
        lambda: deliveries(team, team.alice, event_id=event["id"], state="delivered"),
        what="its delivery",
    )
    assert deliveries(team, team.bob, event_id=event["id"]) == []


def test_a_channel_gone_for_good_is_disabled_until_enabled_again(
    team: Team, receiver: Receiver
) -> None:
    receiver.status = 410
    gone = channel(team, team.bob, receiver)
    _, key, _ = firing_machine(team, team.bob)
    team.ingest(key, {"cpu.percent": 95.0})
    path = f"/api/v1/channels/{gone['id']}"
    disabled = wait_for(
        lambda: (c := team.json(team.bob, "GET", path, 200))["disabled_reason"] and c,
        what="the channel disabled",
    )
    assert disabled["enabled"] is False
    assert "410" in disabled["disabled_reason"]
    [dead] = deliveries(team, team.bob, channel_id=gone["id"])
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert len(receiver.messages()) == 1

    # An event while the channel is disabled is recorded for it, visibly, and not sent.
    _, later_key, _ = firing_machine(team, team.bob)
    team.ingest(later_key, {"cpu.percent": 97.0})
    [held] = wait_for(
        lambda: deliveries(team, team.bob, state="skipped", channel_id=gone["id"]),
        what="a skipped delivery",
    )
    assert held["last_error"] == f"channel disabled: {disabled['disabled_reason']}"
    assert (held["attempts"], held["event"]["kind"]) == (0, "alert.firing")
    resend = f"{path}/resend-skipped"
    refused = team.error(team.bob, "POST", resend, 409)
    assert (refused["code"], refused["field"]) == ("channel_disabled", "enabled")
    assert team.error(team.alice, "POST", resend, 404)["code"] == "not_found"

    enabled = team.json(team.bob, "PATCH", path, 200, json={"enabled": True})
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    receiver.status = 200
    assert team.json(team.bob, "POST", resend, 200) == {"resent": 1}
    [done] = wait_for(
        lambda: deliveries(team, team.bob, state="delivered", channel_id=gone["id"]),
        what="the skipped delivery sent",
    )
    assert done["id"] == held["id"]
    assert [m.body["id"] for m in receiver.messages()] == [dead["id"], held["id"]]
    assert team.json(team.bob, "POST", resend, 200) == {"resent": 0}
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"action": "channel.resend"})
    assert gone["id"] in {e["target_id"] for e in audit["items"]}


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        (NOTIFICATIONS, {"state": "lost"}, "state"),
        (NOTIFICATIONS, {"limit": "0"}, "limit"),
        (NOTIFICATIONS, {"limit": "x"}, "limit"),
        (NOTIFICATIONS, {"channel": "x"}, "channel"),
        (NOTIFICATIONS, {"event_id": "a" * 300}, "event_id"),
        (EVENTS, {"state": "sent"}, "state"),
        (EVENTS, {"limit": "1001"}, "limit"),
        (EVENTS, {"state": ["new", "silenced"]}, "state"),
    ],
)
def test_bad_filters_are_422_naming_them(
    team: Team, path: str, query: dict[str, Any], field: str
) -> None:
    assert team.error(team.alice, "GET", path, 422, params=query)["field"] == field


def test_an_unknown_delivery_is_not_found(team: Team) -> None:
    team.error(team.alice, "POST", f"{NOTIFICATIONS}/nope/retry", 404)


# --------------------------------------------------------------------------- heartbeat


@pytest.fixture
def quick(make_server: MakeServer) -> Iterator[Team]:
    """A server whose machines go offline after one silent second."""
    server = make_server(heartbeat_interval=0.2, offline_threshold=1)
    with Http(server) as http:
        yield make_team(server, http)


def statuses(team: Team, token: str, machine_id: str, **params: str) -> list[tuple[str, str]]:
    path = f"/api/v1/machines/{machine_id}/status-changes"
    items = team.json(token, "GET", path, 200, params=params)["items"]
    return [(item["previous"], item["status"]) for item in items]


def test_status_changes_and_a_machines_own_offline_threshold(quick: Team) -> None:
    team = quick
    machine_id, key = team.machine(team.alice)
    path = f"/api/v1/machines/{machine_id}"
    assert team.json(team.alice, "GET", path, 200)["offline_after"] is None
    team.ingest(key, {"cpu.percent": 1.0})
    wait_for(
        lambda: (
            statuses(team, team.alice, machine_id) == [("online", "offline"), ("unknown", "online")]
        ),
        what="online, then offline",
    )
    assert statuses(team, team.alice, machine_id, limit="1") == [("online", "offline")]
    events = team.json(team.alice, "GET", EVENTS, 200)["items"]
    assert [e["kind"] for e in events if e["machine_id"] == machine_id] == ["machine.offline"]
    team.error(team.bob, "GET", f"{path}/status-changes", 404)

    patched = team.json(team.alice, "PATCH", path, 200, json={"offline_after": 3600})
    assert patched["offline_after"] == 3600.0
    assert team.json(team.alice, "GET", path, 200)["offline_after"] == 3600.0
    team.ingest(key, {"cpu.percent": 2.0})
    wait_for(lambda: len(statuses(team, team.alice, machine_id)) == 3, what="back online")
    time.sleep(2.0)  # twice the server's threshold: this machine's own one applies
    assert statuses(team, team.alice, machine_id)[0] == ("offline", "online")
    kinds = [e["kind"] for e in team.json(team.alice, "GET", EVENTS, 200)["items"]]
    assert kinds[:2] == ["machine.online", "machine.offline"]

    cleared = team.json(team.alice, "PATCH", path, 200, json={"offline_after": None})
    assert cleared["offline_after"] is None
    wait_for(lambda: len(statuses(team, team.alice, machine_id)) == 4, what="offline again")
    audit = team.json(team.admin, "GET", "/api/v1/audit", 200, params={"action": "machine.update"})
    changes = [e["detail"]["offline_after"] for e in audit["items"] if e["target_id"] == machine_id]
    assert changes == [{"from": 3600.0, "to": None}, {"from": None, "to": 3600.0}]


def test_bad_offline_thresholds_and_filters_are_422(quick: Team) -> None:
    team = quick
    machine_id, _ = team.machine(team.alice)
    path = f"/api/v1/machines/{machine_id}"
    for value in (0, 0.5, 31 * 86400, 1e300, "soon", True):
        error = team.error(team.alice, "PATCH", path, 422, json={"offline_after": value})
        assert error["field"] == "offline_after", (value, error)
    assert team.json(team.alice, "GET", path, 200)["offline_after"] is None
    team.error(team.bob, "PATCH", path, 404, json={"offline_after": 60})
    for query, field in (({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit")):
        got = team.error(team.alice, "GET", f"{path}/status-changes", 422, params=query)
        assert got["field"] == field
