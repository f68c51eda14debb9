"""Discovery end to end: the HTTP API of a real server, WS-Management test servers on
loopback addresses, the real pywinrm client identifying them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from discovery.identifiers import PASSWORD, USERNAME, Sesame, identifier_plugins
from discovery.listeners import listeners
from discovery.wsman_identifier import wsman_plugins

from lunasentri_core.testing import WsmanServer
from lunasentri_core.testing.wsman_data import HOST

from .conftest import LiveServer, MakeServer

NET = "127.71.60"


@pytest.fixture
def hosts() -> Iterator[dict[str, WsmanServer]]:
    """Two Windows hosts on 5985: one lets ``vagrant`` in, the other another account."""
    made = {
        f"{NET}.2": WsmanServer({"vagrant": "vagrant"}, host=f"{NET}.2", port=5985),
        f"{NET}.5": WsmanServer({"someone": "else"}, host=f"{NET}.5", port=5985),
    }
    for server in made.values():
        server.start()
    try:
        yield made
    finally:
        for server in made.values():
            server.stop()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    Sesame.gate = threading.Event()
    try:
        yield Sesame.gate
    finally:
        Sesame.gate.set()
        Sesame.gate = None


def events(server: LiveServer, token: str, run_id: str) -> list[tuple[str, Any]]:
    """Every event of a run's stream, until it ends."""
    seen: list[tuple[str, Any]] = []
    path = f"/api/v1/discovery-runs/{run_id}/events"
    with server.client(token) as client, client.stream("GET", path) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((str(kind), json.loads(line.removeprefix("data: "))))
    return seen


@pytest.mark.parametrize("collector", ["wsid", "wmi"])
def test_a_run_through_the_api_finds_and_identifies_windows_hosts(
    make_server: MakeServer, hosts: dict[str, WsmanServer], collector: str
) -> None:
    """With a stand-in that sends one Identify, and with the real wmi plugin (when
    installed: the server loads it from its entry point) that also asks WQL."""
    if collector == "wmi":
        pytest.importorskip("lunasentri_wmi")
    server = make_server(plugins=wsman_plugins())
    token = server.login()
    with server.client(token) as client:
        creds = {
            "name": "lab",
            "transport": "basic",
            "username": "vagrant",
            "password": "vagrant",
            "https": False,
        }
        made = client.post("/api/v1/credential-profiles", json=creds)
        assert made.status_code == 201, made.text
        body = {
            "name": "lab",
            "targets": [f"{NET}.1-6"],
            "ports": [5985, 5986],
            "credential_profile_id": made.json()["id"],
            "collector": collector,
            "timeout": 2,
        }
        profile = client.post("/api/v1/discovery-profiles", json=body).json()
        started = client.post(f"/api/v1/discovery-profiles/{profile['id']}/run")
        assert started.status_code == 202, started.text
        run = started.json()
        assert (run["state"], run["total"]) == ("running", 6)

    stream = events(server, token, run["id"])
    kinds = [kind for kind, _ in stream]
    assert kinds[-1] == "end"
    final = stream[-1][1]
    assert (final["state"], final["scanned"], final["found"], final["errors"]) == ("done", 6, 2, 1)
    progress = [data["scanned"] for kind, data in stream if kind == "progress"]
    assert progress == sorted(progress)  # progress only grows
    streamed = {data["address"] for kind, data in stream if kind == "device"}
    assert streamed == {f"{NET}.2", f"{NET}.5"}

    with server.client(token) as client:
        result = client.get(f"/api/v1/discovery-runs/{run['id']}").json()
        again = client.post(f"/api/v1/discovery-profiles/{profile['id']}/run").json()
        for _ in range(1200):
            if client.get(f"/api/v1/discovery-runs/{again['id']}").json()["state"] != "running":
                break
            time.sleep(0.05)
        devices = client.get("/api/v1/devices").json()["items"]
        runs = client.get(f"/api/v1/discovery-profiles/{profile['id']}/runs").json()["items"]
    found = {d["address"]: d for d in result["devices"]}
    assert found[f"{NET}.2"]["credential_ok"] is True
    assert found[f"{NET}.2"]["os_version"] == "6.1.7601"
    if collector == "wmi":
        assert found[f"{NET}.2"]["hostname"] == HOST
        assert found[f"{NET}.2"]["os"] == "Microsoft Windows Server 2008 R2 Datacenter"
    assert found[f"{NET}.2"]["open_ports"] == [5985]
    assert found[f"{NET}.5"]["credential_ok"] is False
    assert found[f"{NET}.5"]["credential_error"].startswith("authentication: ")
    assert sorted(d["address"] for d in devices) == [f"{NET}.2", f"{NET}.5"]  # no duplicates
    assert [r["id"] for r in runs] == [again["id"], run["id"]]


def test_the_event_stream_shows_progress_while_the_run_goes_on(
    make_server: MakeServer, gate: threading.Event
) -> None:
    """Identification is held by the stand-in's gate: the run stays under way while
    the stream already tells what the scan found."""
    server = make_server(plugins=identifier_plugins())
    token = server.login()
    with listeners() as live, server.client(token) as client:
        for n in (2, 3):
            live.listen(f"{NET}.{n + 20}", 5985)
        creds = {"name": "lab", "username": USERNAME, "password": PASSWORD, "https": False}
        creds_id = client.post("/api/v1/credential-profiles", json=creds).json()["id"]
        body = {
            "name": "held",
            "targets": [f"{NET}.21-24"],
            "ports": [5985],
            "credential_profile_id": creds_id,
            "collector": "sesame",
        }
        profile = client.post("/api/v1/discovery-profiles", json=body).json()
        run = client.post(f"/api/v1/discovery-profiles/{profile['id']}/run").json()
        path = f"/api/v1/discovery-runs/{run['id']}/events"
        progress: list[dict[str, Any]] = []
        ended = None
        with client.stream("GET", path) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                    continue
                if not line.startswith("data: "):
                    continue
                data = json.loads(line.removeprefix("data: "))
                if kind == "progress":
                    progress.append(data)
                    if data["scanned"] == 4:
                        gate.set()  # the scan is over; now let identification finish
                elif kind == "end":
                    ended = data
    held = [p for p in progress if p["scanned"] == 4]
    assert held, progress
    assert (held[0]["state"], held[0]["found"]) == ("running", 2)
    assert ended is not None
    assert (ended["state"], ended["found"], ended["errors"]) == ("done", 2, 0)
