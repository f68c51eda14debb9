"""Enrolment by claim against a scripted stand-in for the server's claim endpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import pytest

from lunasentri_core.agent.backoff import Backoff
from lunasentri_core.agent.claim import Enrolment, EnrolmentFailed
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.transport import ServerClient
from lunasentri_core.security import hash_token


@attrs.define
class Registration:
    token_hash: str
    status: str = "pending"
    delivered: bool = False


@attrs.define
class ClaimServer:
    """Registrations keyed by agent id; ``on_poll`` may change one before it answers."""

    registrations: dict[str, Registration] = attrs.field(factory=dict)
    on_poll: Callable[[str, int], None] | None = None
    register_status: int | None = None
    polls: int = 0
    registers: list[dict[str, str]] = attrs.field(factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/api/v1/agents/register":
            return self.register(body)
        self.polls += 1
        agent_id = body["agent_id"]
        if self.on_poll:
            self.on_poll(agent_id, self.polls)
        found = self.registrations.get(agent_id)
        if found is None or found.token_hash != hash_token(body["claim_token"]):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
        if found.status == "claimed" and not found.delivered:
            found.delivered = True
            return httpx.Response(200, json={"status": "claimed", "api_key": "lsk_delivered"})
        status = "delivered" if found.delivered else found.status
        return httpx.Response(200, json={"status": status})

    def register(self, body: dict[str, str]) -> httpx.Response:
        self.registers.append(body)
        if self.register_status is not None:
            return httpx.Response(self.register_status, json={"error": {"message": "refused"}})
        current = self.registrations.get(body["agent_id"])
        if (
            current
            and current.status == "pending"
            and current.token_hash != body["claim_token_hash"]
        ):
            return httpx.Response(409, json={"error": {"message": "other token"}})
        if not current or current.token_hash != body["claim_token_hash"]:
            self.registrations[body["agent_id"]] = Registration(body["claim_token_hash"])
        return httpx.Response(201, json={"status": "pending"})

    def claim(self, agent_id: str) -> None:
        self.registrations[agent_id].status = "claimed"


def enrol(
    server: ClaimServer, identity: Identity, *, max_waits: int = 50
) -> tuple[str | None, list[tuple[str, str]], list[float]]:
    announced: list[tuple[str, str]] = []
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) >= max_waits

    with httpx.Client(
        transport=httpx.MockTransport(server.handle), base_url="http://server"
    ) as http:
        enrolment = Enrolment(
            ServerClient(http),
            identity,
            hostname="host-1",
            version="1.2.3",
            poll_interval=5.0,
            backoff=Backoff(base=1.0, cap=8.0, rng=lambda: 1.0),
            announce=lambda agent_id, token: announced.append((agent_id, token)),
            wait=wait,
        )
        key = enrolment.api_key()
    return key, announced, waits


def test_pending_then_claimed_delivers_and_stores_the_key(tmp_path: Path) -> None:
    server = ClaimServer()
    server.on_poll = lambda agent_id, n: server.claim(agent_id) if n == 3 else None
    identity = Identity(tmp_path)
    key, announced, waits = enrol(server, identity)
    assert key == "lsk_delivered"
    assert identity.api_key() == "lsk_delivered"
    assert identity.claim_token() is None  # no longer needed
    ((agent_id, token),) = announced
    assert agent_id == identity.agent_id()
    assert token.startswith("lsc_")
    assert server.registers == [
        {
            "agent_id": agent_id,
            "claim_token_hash": hash_token(token),
            "hostname": "host-1",
            "version": "1.2.3",
        }
    ]
    assert waits == [5.0, 5.0]


def test_a_restart_keeps_polling_with_the_stored_token(tmp_path: Path) -> None:
    server = ClaimServer()
    identity = Identity(tmp_path)
    key, announced, _ = enrol(server, identity, max_waits=2)
    assert key is None  # stopped while pending
    server.on_poll = lambda agent_id, n: server.claim(agent_id)
    key, again, _ = enrol(server, Identity(tmp_path))
    assert key == "lsk_delivered"
    assert again == announced  # the same token, shown again after the restart
    assert len(server.registrations) == 1


def test_expired_registration_gets_a_fresh_token(tmp_path: Path) -> None:
    server = ClaimServer()

    def expire_first(agent_id: str, n: int) -> None:
        if n == 1:
            server.registrations[agent_id].status = "expired"
        elif n == 3:
            server.claim(agent_id)

    server.on_poll = expire_first
    key, announced, _ = enrol(server, Identity(tmp_path))
    assert key == "lsk_delivered"
    assert len(announced) == 2
    assert announced[0][1] != announced[1][1]
    assert announced[0][0] == announced[1][0]  # same agent id


def test_a_lost_delivery_re_registers(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    server = ClaimServer()
    server.registrations[identity.agent_id()] = Registration(
        hash_token(identity.new_claim_token().secret), status="claimed", delivered=True
    )
    server.on_poll = lambda agent_id, n: server.claim(agent_id) if n == 2 else None
    key, announced, _ = enrol(server, identity)
    assert key == "lsk_delivered"
    assert [a[0] for a in announced] == [identity.agent_id()] * 2
    assert announced[0][1] != announced[1][1]


def test_conflicting_registration_takes_a_new_agent_id(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    old_id = identity.agent_id()
    server = ClaimServer()
    server.registrations[old_id] = Registration(hash_token("lsc_someone_else"))
    server.on_poll = lambda agent_id, n: server.claim(agent_id)
    key, announced, _ = enrol(server, identity)
    assert key == "lsk_delivered"
    assert announced[0][0] != old_id
    assert identity.agent_id() == announced[0][0]


def test_forgotten_registration_registers_again(tmp_path: Path) -> None:
    server = ClaimServer()

    def forget_then_claim(agent_id: str, n: int) -> None:
        if n == 1:
            del server.registrations[agent_id]
        elif n == 2:
            server.claim(agent_id)

    server.on_poll = forget_then_claim
    key, _, waits = enrol(server, Identity(tmp_path))
    assert key == "lsk_delivered"
    assert len(server.registers) == 2
    assert waits == [1.0]  # backed off before registering again


def test_server_errors_back_off_exponentially(tmp_path: Path) -> None:
    server = ClaimServer(register_status=503)
    key, announced, waits = enrol(server, Identity(tmp_path), max_waits=5)
    assert key is None
    assert announced == []
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_unreachable_server_backs_off(tmp_path: Path) -> None:
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) == 3

    with httpx.Client(base_url="http://127.0.0.1:9", timeout=2) as http:
        enrolment = Enrolment(
            ServerClient(http),
            Identity(tmp_path),
            hostname="h",
            version="1",
            poll_interval=5.0,
            backoff=Backoff(base=1.0, cap=8.0, rng=lambda: 1.0),
            announce=lambda *_: None,
            wait=wait,
        )
        assert enrolment.api_key() is None
    assert waits == [1.0, 2.0, 4.0]


def test_a_refused_registration_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EnrolmentFailed, match="refused"):
        enrol(ClaimServer(register_status=422), Identity(tmp_path))
