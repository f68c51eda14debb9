"""Agentless monitoring end to end: the reference server, the real wmi plugin and
pywinrm, and a WS-Management test server on a loopback address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from server.alerting_support import Team, make_team, wait_for
from server.openapi_check import Http, running

from lunasentri_core.testing import WsmanServer
from lunasentri_core.testing.wsman_data import HOST

pytest.importorskip("lunasentri_wmi")

ADDRESS = "127.0.0.61"
USER, PASSWORD = "monitor", "a windows password"


@pytest.fixture(scope="module")
def windows() -> Iterator[WsmanServer]:
    with WsmanServer({USER: PASSWORD}, host=ADDRESS) as server:
        yield server


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    overrides = {"agentless": {"tick": "0.2s", "poll_timeout": "5s", "retry_backoff": "0.1s"}}
    for server in running(tmp_path_factory.mktemp("e2e"), overrides=overrides):
        with Http(server) as http:
            yield make_team(server, http)


def profile(
    team: Team, windows: WsmanServer, user: str = USER, password: str = PASSWORD
) -> dict[str, Any]:
    body = {
        "name": f"{user} {password}",
        "transport": "basic",
        "username": user,
        "password": password,
        "https": False,
        "port": windows.port,
    }
    path = "/api/v1/credential-profiles"
    made: dict[str, Any] = team.json(team.alice, "POST", path, 201, json=body)
    return made


def test_a_credential_test_logs_in_and_names_the_host(team: Team, windows: WsmanServer) -> None:
    made = profile(team, windows)
    path = f"/api/v1/credential-profiles/{made['id']}/test"
    found = team.json(team.alice, "POST", path, 200, json={"host": ADDRESS})
    assert found["ok"] is True, found
    assert found["hostname"].upper() == HOST
    assert "Windows" in found["os"]
    wrong = profile(team, windows, password="not the password")
    path = f"/api/v1/credential-profiles/{wrong['id']}/test"
    refused = team.json(team.alice, "POST", path, 200, json={"host": ADDRESS})
    assert (refused["ok"], refused["error"]["kind"]) == (False, "authentication")


def test_a_monitor_polls_the_host_and_its_machine_reports(team: Team, windows: WsmanServer) -> None:
    windows.users["poller"] = PASSWORD
    made = profile(team, windows, user="poller")
    device = team.json(team.alice, "POST", "/api/v1/devices", 201, json={"address": ADDRESS})
    body = {
        "device_id": device["id"],
        "credential_profile_id": made["id"],
        "collector": "wmi",
        "interval": 5,
    }
    monitor = team.json(team.alice, "POST", "/api/v1/monitors", 201, json=body)
    path = f"/api/v1/monitors/{monitor['id']}"
    machine = f"/api/v1/machines/{monitor['machine_id']}"

    def metrics() -> set[str]:
        latest = team.json(team.alice, "GET", f"{machine}/latest", 200)["items"]
        return {item["metric"] for item in latest}

    wait_for(lambda: {"cpu.percent", "mem.total", "poll.up"} <= metrics(), 60, "two polls")
    polled = team.json(team.alice, "GET", path, 200)
    assert polled["state"] == "ok"
    assert polled["last_polled"] is not None
    assert team.json(team.alice, "GET", machine, 200)["status"] == "online"

    # The host stops accepting the account: the monitor fails and says why.
    del windows.users["poller"]
    failing = wait_for(
        lambda: (m := team.json(team.alice, "GET", path, 200))["state"] == "failing" and m,
        60,
        "a failed poll",
    )
    assert failing["last_error"].startswith("authentication:")
    assert failing["failures"] >= 1
    latest = team.json(team.alice, "GET", f"{machine}/latest", 200, params={"metric": "poll.up"})
    assert [item["value"] for item in latest["items"]] == [0]
