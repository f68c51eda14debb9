"""The claim workflow over real HTTP: register, poll, claim, deliver once, expire."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from lunasentri_core.hub import open_storage
from lunasentri_core.model import ClaimStatus
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.security import CLAIM_PREFIX, hash_token, issue_token

from .conftest import LiveServer, MakeServer

PASSWORD = "a long enough password 42"


class Agent:
    """What an enrolling agent knows: its id and its claim token."""

    def __init__(self, server: LiveServer, hostname: str = "edge-1") -> None:
        self.server = server
        self.agent_id = str(uuid.uuid4())
        self.token = issue_token(CLAIM_PREFIX).secret
        self.hostname = hostname

    def register(self, token_hash: str | None = None) -> httpx.Response:
        body = {
            "agent_id": self.agent_id,
            "claim_token_hash": token_hash or hash_token(self.token),
            "hostname": self.hostname,
            "version": "0.1.0",
        }
        with self.server.client() as client:
            return client.post("/api/v1/agents/register", json=body)

    def poll(self, token: str | None = None) -> httpx.Response:
        body = {"agent_id": self.agent_id, "claim_token": token or self.token}
        with self.server.client() as client:
            return client.post("/api/v1/agents/claim-status", json=body)


def claim(
    server: LiveServer, admin: str, agent: Agent, name: str = "claimed", **fields: Any
) -> httpx.Response:
    body = {"claim_token": agent.token, "name": name, **fields}
    with server.client(admin) as client:
        return client.post(f"/api/v1/agents/{agent.agent_id}/claim", json=body)


def key_works(server: LiveServer, key: str) -> bool:
    with server.client(key) as client:
        status = client.get("/api/v1/agent/config").status_code
    assert status in (200, 401), status
    return status == 200


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


def pending_ids(server: LiveServer, admin: str) -> list[str]:
    with server.client(admin) as client:
        response = client.get("/api/v1/agents/pending")
    assert response.status_code == 200
    return [item["agent_id"] for item in response.json()["items"]]


# --------------------------------------------------------------------------- the workflow


def test_the_whole_claim_workflow_delivers_the_key_exactly_once(
    server: LiveServer, admin: str
) -> None:
    agent = Agent(server)
    registered = agent.register()
    assert registered.status_code == 202
    assert registered.json()["status"] == "pending"
    assert registered.json()["agent_id"] == agent.agent_id
    assert "expires_at" in registered.json()

    waiting = agent.poll()
    assert waiting.status_code == 200
    assert waiting.json()["status"] == "pending"
    assert "api_key" not in waiting.json()

    with server.client(admin) as client:
        items = client.get("/api/v1/agents/pending").json()["items"]
    (item,) = [i for i in items if i["agent_id"] == agent.agent_id]
    assert item["hostname"] == "edge-1"
    assert item["version"] == "0.1.0"
    assert item["status"] == "pending"
    assert hash_token(agent.token) not in repr(items)

    claimed = claim(server, admin, agent, name="edge", labels={"site": "lab"})
    assert claimed.status_code == 201, claimed.text
    machine = claimed.json()["machine"]
    assert machine["name"] == "edge"
    assert machine["hostname"] == "edge-1"
    assert machine["labels"] == {"site": "lab"}
    assert agent.agent_id not in pending_ids(server, admin)

    delivered = agent.poll()
    assert delivered.status_code == 200
    body = delivered.json()
    assert body["status"] == "claimed"
    assert body["machine_id"] == machine["id"]
    assert body["api_key"].startswith("lsk_")
    assert delivered.headers["cache-control"] == "no-store"
    assert key_works(server, body["api_key"])

    for _ in range(2):
        later = agent.poll()
        assert later.status_code == 200
        assert later.json()["status"] == "delivered"
        assert later.json()["machine_id"] == machine["id"]
        assert "api_key" not in later.json()

    with server.client(admin) as client:
        listed = client.get(f"/api/v1/machines/{machine['id']}").json()
        assert listed["name"] == "edge"
        keys = client.get(f"/api/v1/machines/{machine['id']}/keys").json()["items"]
        assert len(keys) == 1
        assert body["api_key"].startswith(keys[0]["prefix"])
        audit = client.get("/api/v1/audit", params={"limit": 100})
        if audit.status_code == 200:  # the audit endpoint is another module's
            actions = {e["action"] for e in audit.json()["items"]}
            assert {"claim.register", "claim.approve", "claim.deliver"} <= actions


def test_the_key_is_sealed_until_delivery(server: LiveServer, admin: str) -> None:
    agent = Agent(server)
    agent.register()
    assert claim(server, admin, agent).status_code == 201
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    try:
        stored = backend.state.get_claim(agent.agent_id)
    finally:
        backend.close()
    assert stored.status is ClaimStatus.CLAIMED
    assert stored.sealed_key is not None
    key = agent.poll().json()["api_key"]
    # The database held neither the key nor anything that contains it in clear.
    assert key.encode() not in stored.sealed_key
    assert agent.token.encode() not in stored.sealed_key


def test_concurrent_polls_deliver_the_key_once(server: LiveServer, admin: str) -> None:
    agent = Agent(server)
    agent.register()
    assert claim(server, admin, agent).status_code == 201
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: agent.poll(), range(6)))
    assert {a.status_code for a in answers} == {200}
    keys = [a.json()["api_key"] for a in answers if "api_key" in a.json()]
    assert len(keys) == 1
    assert sorted(a.json()["status"] for a in answers) == ["claimed"] + ["delivered"] * 5


def test_a_restart_between_claim_and_delivery_still_delivers(
    server: LiveServer, admin: str
) -> None:
    agent = Agent(server)
    agent.register()
    assert claim(server, admin, agent).status_code == 201
    server.stop()
    server.start()
    delivered = agent.poll()
    assert delivered.status_code == 200
    assert delivered.json()["status"] == "claimed"
    assert key_works(server, delivered.json()["api_key"])
    assert agent.poll().json()["status"] == "delivered"


# --------------------------------------------------------------------------- registration rules


def test_registration_is_idempotent_and_a_different_token_conflicts(server: LiveServer) -> None:
    agent = Agent(server)
    first = agent.register()
    again = agent.register()
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    intruder = agent.register(token_hash=hash_token(issue_token(CLAIM_PREFIX).secret))
    assert intruder.status_code == 409
    assert intruder.json()["error"]["code"] == "conflict"
    # The registration (and its token) is unchanged.
    assert agent.poll().json()["status"] == "pending"
    # An uppercase hex hash is the same hash.
    assert agent.register(token_hash=hash_token(agent.token).upper()).status_code == 202


def test_a_claimed_registration_cannot_be_taken_over(server: LiveServer, admin: str) -> None:
    agent = Agent(server)
    agent.register()
    assert claim(server, admin, agent).status_code == 201
    assert agent.register().json()["status"] == "claimed"
    other = hash_token(issue_token(CLAIM_PREFIX).secret)
    assert agent.register(token_hash=other).status_code == 409
    again = claim(server, admin, agent, name="twice")
    assert again.status_code == 409
    assert agent.poll().json()["status"] == "claimed"


def test_a_wrong_claim_token_reveals_nothing(server: LiveServer, admin: str) -> None:
    agent = Agent(server)
    agent.register()
    wrong = issue_token(CLAIM_PREFIX).secret
    polled = agent.poll(token=wrong)
    stranger = Agent(server)
    unknown = stranger.poll()
    assert polled.status_code == unknown.status_code == 404
    # The same answer as for an agent that never registered.
    message = polled.json()["error"]["message"].replace(agent.agent_id, "?")
    assert message == unknown.json()["error"]["message"].replace(stranger.agent_id, "?")

    with server.client(admin) as client:
        response = client.post(
            f"/api/v1/agents/{agent.agent_id}/claim", json={"claim_token": wrong, "name": "x"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "claim_token_mismatch"
        assert response.json()["error"]["field"] == "claim_token"
        assert client.get("/api/v1/machines").json()["items"] == []
        missing = client.post(
            "/api/v1/agents/nobody/claim", json={"claim_token": wrong, "name": "x"}
        )
        assert missing.status_code == 404
    assert agent.poll().json()["status"] == "pending"


def test_claim_for_another_owner_and_name_conflicts(server: LiveServer, admin: str) -> None:
    with server.client(admin) as client:
        created = client.post("/api/v1/users", json={"username": "carol", "password": PASSWORD})
        carol_id = created.json()["id"]
        assert client.post("/api/v1/machines", json={"name": "busy"}).status_code == 201
    agent = Agent(server)
    agent.register()
    taken = claim(server, admin, agent, name="busy")
    assert taken.status_code == 409
    unknown_owner = claim(server, admin, agent, name="fine", owner_id="ghost")
    assert unknown_owner.status_code == 422
    assert unknown_owner.json()["error"]["field"] == "owner_id"
    # Failed claims leave the registration pending and no machine behind.
    assert agent.poll().json()["status"] == "pending"
    claimed = claim(server, admin, agent, name="carols", owner_id=carol_id)
    assert claimed.status_code == 201
    assert claimed.json()["machine"]["owner_id"] == carol_id
    carol = server.login("carol", PASSWORD)
    with server.client(carol) as client:
        names = [m["name"] for m in client.get("/api/v1/machines").json()["items"]]
    assert names == ["carols"]
    with server.client(admin) as client:
        names = sorted(m["name"] for m in client.get("/api/v1/machines").json()["items"])
    assert names == ["busy", "carols"]


def test_unclaimed_registrations_expire(make_server: MakeServer) -> None:
    server = make_server(server={"claim_ttl": "1s"})
    admin = server.login()
    agent = Agent(server)
    assert agent.register().status_code == 202
    wait_for(lambda: agent.poll().json()["status"] == "expired")
    assert "api_key" not in agent.poll().json()
    assert agent.agent_id not in pending_ids(server, admin)
    late = claim(server, admin, agent)
    assert late.status_code == 409
    assert "expired" in late.json()["error"]["message"]

    # The background task records the expiry in storage, too.
    def stored_status() -> ClaimStatus:
        backend = open_storage(server.settings, create_plugin_manager(server.settings))
        try:
            return backend.state.get_claim(agent.agent_id).status
        finally:
            backend.close()

    wait_for(lambda: stored_status() is ClaimStatus.EXPIRED)

    # An expired agent registers anew, even with another token.
    agent.token = issue_token(CLAIM_PREFIX).secret
    again = agent.register()
    assert again.status_code == 202
    assert again.json()["status"] == "pending"


# --------------------------------------------------------------------------- throttling


def test_registrations_are_throttled_per_client_address(make_server: MakeServer) -> None:
    server = make_server(server={"register_rate": 0.001, "register_burst": 2})
    for _ in range(5):  # refused registrations are not counted
        assert Agent(server).register(token_hash="not a hash").status_code == 422
    admitted = [Agent(server) for _ in range(2)]
    for agent in admitted:
        assert agent.register().status_code == 202
    refused = Agent(server)

    response = refused.register()

    assert response.status_code == 429, response.text
    # Once the bucket is empty, the request is refused before it is even read.
    assert Agent(server).register(token_hash="not a hash").status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    # One token comes back every 1,000 s; the burst was just spent.
    assert 990 <= int(response.headers["retry-after"]) <= 1000
    assert refused.poll().status_code == 404, "a refused registration is not stored"
    admin = server.login()
    assert sorted(pending_ids(server, admin)) == sorted(a.agent_id for a in admitted)
    # Polls and an administrator's claim are not registrations.
    assert admitted[0].poll().json()["status"] == "pending"
    assert claim(server, admin, admitted[0]).status_code == 201


def test_a_zero_register_rate_turns_the_throttle_off(make_server: MakeServer) -> None:
    server = make_server(server={"register_rate": 0, "register_burst": 1})
    for _ in range(5):
        assert Agent(server).register().status_code == 202


def test_the_default_throttle_admits_a_burst(server: LiveServer) -> None:
    statuses = [Agent(server).register().status_code for _ in range(20)]
    assert statuses == [202] * 20
    # The bucket refills at one registration every 5 s: however slow this machine
    # is right now, it runs dry well before ten more.
    while 429 not in statuses:
        statuses.append(Agent(server).register().status_code)
        assert len(statuses) <= 30


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def registered(server: LiveServer) -> Agent:
    agent = Agent(server)
    assert agent.register().status_code == 202
    return agent


def test_bad_registrations(server: LiveServer) -> None:
    good = {
        "agent_id": "agent-1",
        "claim_token_hash": "a" * 64,
        "hostname": "h",
        "version": "1.0",
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in good.items() if k != "agent_id"}, "agent_id"),
        ({**good, "agent_id": 7}, "agent_id"),
        ({**good, "agent_id": "has space"}, "agent_id"),
        ({**good, "agent_id": "x" * 129}, "agent_id"),
        ({**good, "claim_token_hash": "abc"}, "claim_token_hash"),
        ({**good, "claim_token_hash": "g" * 64}, "claim_token_hash"),
        ({**good, "hostname": ""}, "hostname"),
        ({**good, "hostname": None}, "hostname"),
        ({**good, "version": ""}, "version"),
        ({**good, "version": "v" * 65}, "version"),
        ({**good, "extra": 1}, "extra"),
    ]
    with server.client() as client:
        for body, field in cases:
            response = client.post("/api/v1/agents/register", json=body)
            assert response.status_code == 422, (body, response.text)
            fields = [d["field"] for d in response.json()["error"]["details"]]
            assert field in fields, (body, response.text)
        headers = {"content-type": "application/json"}
        malformed = client.post("/api/v1/agents/register", content=b"{", headers=headers)
        assert malformed.status_code == 400
        huge = client.post("/api/v1/agents/register", json={**good, "hostname": "h" * 10_000})
        assert huge.status_code == 413
    assert Agent(server).poll().status_code == 404


def test_bad_polls(server: LiveServer, registered: Agent) -> None:
    url = "/api/v1/agents/claim-status"
    with server.client() as client:
        for body, field in [
            ({"agent_id": registered.agent_id}, "claim_token"),
            ({"claim_token": registered.token}, "agent_id"),
            ({"agent_id": registered.agent_id, "claim_token": 5}, "claim_token"),
            ({"agent_id": "bad id", "claim_token": "x"}, "agent_id"),
            ({"agent_id": registered.agent_id, "claim_token": registered.token, "x": 1}, "x"),
        ]:
            response = client.post(url, json=body)
            assert response.status_code == 422, (body, response.text)
            fields = [d["field"] for d in response.json()["error"].get("details", [])]
            assert field in [*fields, response.json()["error"]["field"]], (body, response.text)
        headers = {"content-type": "application/json"}
        assert client.post(url, content=b"[", headers=headers).status_code == 400
        huge = {"agent_id": registered.agent_id, "claim_token": "t" * 100_000}
        assert client.post(url, json=huge).status_code == 413


def test_claim_endpoints_need_an_admin(server: LiveServer, admin: str, registered: Agent) -> None:
    with server.client(admin) as client:
        client.post("/api/v1/users", json={"username": "dave", "password": PASSWORD})
        key = client.post("/api/v1/machines", json={"name": "m"}).json()["api_key"]
    dave = server.login("dave", PASSWORD)
    body = {"claim_token": registered.token, "name": "mine"}
    claim_url = f"/api/v1/agents/{registered.agent_id}/claim"
    with server.client() as anonymous:
        assert anonymous.get("/api/v1/agents/pending").status_code == 401
        assert anonymous.post(claim_url, json=body).status_code == 401
    for token in (dave, key):  # a plain user, a machine key
        with server.client(token) as client:
            assert client.get("/api/v1/agents/pending").status_code == 403
            assert client.post(claim_url, json=body).status_code == 403
    assert registered.poll().json()["status"] == "pending"


def test_bad_claims(server: LiveServer, admin: str, registered: Agent) -> None:
    url = f"/api/v1/agents/{registered.agent_id}/claim"
    token = registered.token
    with server.client(admin) as client:
        for body, field in [
            ({"name": "x"}, "claim_token"),
            ({"claim_token": token}, "name"),
            ({"claim_token": token, "name": ""}, "name"),
            ({"claim_token": token, "name": 3}, "name"),
            ({"claim_token": token, "name": "x", "labels": {"A": "b"}}, "labels.A"),
            ({"claim_token": token, "name": "x", "labels": "env=prod"}, "labels"),
            ({"claim_token": token, "name": "x", "owner_id": 1}, "owner_id"),
            ({"claim_token": token, "name": "x", "unknown": 1}, "unknown"),
        ]:
            response = client.post(url, json=body)
            assert response.status_code == 422, (body, response.text)
            fields = [d["field"] for d in response.json()["error"].get("details", [])]
            assert field in [*fields, response.json()["error"]["field"]], (body, response.text)
        headers = {"content-type": "application/json"}
        assert client.post(url, content=b'{"name":', headers=headers).status_code == 400
        huge = {"claim_token": token, "name": "x", "labels": {"a": "b" * 100_000}}
        assert client.post(url, json=huge).status_code == 413
        assert (
            client.post(
                "/api/v1/agents/bad%20id/claim", json={"claim_token": token, "name": "x"}
            ).status_code
            == 422
        )
        assert client.get("/api/v1/machines").json()["items"] == []
    assert registered.poll().json()["status"] == "pending"
