"""The audit log: user operations are recorded with who, what, when and from where."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar

import anyio
import pytest

from lunasentri_core import hookimpl
from lunasentri_core.components import Credentials, Principal
from lunasentri_core.errors import StorageError
from lunasentri_core.model import AuditEntry
from lunasentri_core.services import audit
from lunasentri_core.storage.protocols import StateStore

from .conftest import ADMIN_PASSWORD, LiveServer, MakeServer

PASSWORD = "a perfectly fine password"
ENTRY_KEYS = {
    "id",
    "at",
    "action",
    "actor_kind",
    "actor_id",
    "target_type",
    "target_id",
    "client",
    "detail",
    "via",
}


def entries(server: LiveServer, token: str, **params: Any) -> list[dict[str, Any]]:
    with server.client(token) as client:
        response = client.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def one(items: list[dict[str, Any]], action: str, **match: Any) -> dict[str, Any]:
    found = [
        item
        for item in items
        if item["action"] == action and all(item.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (action, match, items)
    return found[0]


def test_user_operations_are_recorded(server: LiveServer) -> None:
    admin = server.login()
    with server.client(admin) as client:
        admin_id = client.get("/api/v1/auth/me").json()["id"]
        alice_id = client.post(
            "/api/v1/users", json={"username": "alice", "password": PASSWORD}
        ).json()["id"]
    with server.client() as anonymous:
        anonymous.post("/api/v1/auth/login", json={"username": "alice", "password": "nope nope"})
        anonymous.post("/api/v1/auth/login", json={"username": "ghost", "password": "nope nope"})
    alice = server.login("alice", PASSWORD)
    spare = server.login("alice", PASSWORD)
    with server.client(alice) as client:
        client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "second password"},
        )
    another = server.login("alice", "second password")
    with server.client(alice) as client:
        sessions = client.get("/api/v1/auth/sessions").json()["items"]
        other_session = next(s["id"] for s in sessions if not s["current"])
        client.delete(f"/api/v1/auth/sessions/{other_session}")
        client.post("/api/v1/auth/logout")
    with server.client(admin) as client:
        token = client.post(f"/api/v1/users/{alice_id}/reset-token").json()["token"]
    with server.client() as anonymous:
        anonymous.post("/api/v1/auth/reset", json={"token": token, "new_password": "third one!"})
    with server.client(admin) as client:
        client.delete(f"/api/v1/users/{alice_id}")
    assert spare != another

    items = entries(server, admin, limit=1000)

    for item in items:
        assert set(item) == ENTRY_KEYS
        assert datetime.fromisoformat(item["at"]).utcoffset() == timedelta(0)
    first_admin = one(items, "user.create", target_id=admin_id)
    assert first_admin["actor_kind"] == "system"
    assert first_admin["actor_id"] is None
    created = one(items, "user.create", target_id=alice_id)
    assert (created["actor_kind"], created["actor_id"]) == ("user", admin_id)
    assert created["client"] == "127.0.0.1"
    assert created["detail"] == {"username": "alice", "role": "user"}
    failed = one(items, "user.login", target_id=alice_id, actor_kind="anonymous")
    assert failed["detail"] == {"username": "alice", "success": False, "reason": "bad_credentials"}
    assert failed["client"] == "127.0.0.1"
    assert failed["actor_id"] is None
    ghost = one(items, "user.login", target_id=None)
    assert ghost["detail"]["username"] == "ghost"
    logins = [i for i in items if i["action"] == "user.login" and i["target_id"] == alice_id]
    assert sum(i["detail"]["success"] for i in logins) == 3
    change = one(items, "user.password_change")
    assert (change["actor_id"], change["detail"]) == (alice_id, {"revoked_sessions": 1})
    revoke = one(items, "session.revoke")
    assert (revoke["actor_id"], revoke["target_id"]) == (alice_id, other_session)
    logout = one(items, "user.logout")
    assert (logout["actor_id"], logout["target_type"]) == (alice_id, "session")
    issued = one(items, "reset_token.create")
    assert (issued["actor_id"], issued["target_id"]) == (admin_id, alice_id)
    reset = one(items, "user.password_reset")
    assert reset["target_id"] == alice_id
    assert reset["detail"]["reset_token_id"] == issued["detail"]["reset_token_id"]
    deleted = one(items, "user.delete")
    assert (deleted["actor_id"], deleted["target_id"]) == (admin_id, alice_id)
    assert deleted["detail"] == {"username": "alice", "machines": 0}
    # Newest first, and the entries about a deleted user are kept.
    assert items[0]["action"] == "user.delete"
    assert [i["at"] for i in items] == sorted((i["at"] for i in items), reverse=True)


def test_filters_and_limit(server: LiveServer) -> None:
    admin = server.login()
    with server.client(admin) as client:
        admin_id = client.get("/api/v1/auth/me").json()["id"]
        for name in ("u1", "u2", "u3"):
            client.post("/api/v1/users", json={"username": name, "password": PASSWORD})
    middle = entries(server, admin, action="user.create")[1]["at"]

    creates = entries(server, admin, action="user.create")
    by_admin = entries(server, admin, actor_id=admin_id)
    recent = entries(server, admin, action="user.create", since=middle)
    newest = entries(server, admin, limit=1)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()

    assert [i["detail"]["username"] for i in creates] == ["u3", "u2", "u1", "admin"]
    assert {i["action"] for i in by_admin} == {"user.create", "user.login"}
    assert [i["detail"]["username"] for i in recent] == ["u3", "u2"]
    assert len(newest) == 1
    assert newest[0]["detail"]["username"] == "u3"
    assert entries(server, admin, since=future) == []
    assert entries(server, admin, action="no.such.action") == []


class ProxyHeaderAuthenticator:
    """Trusts ``X-Proxy-User`` (as behind an authenticating proxy); forgets ``via``."""

    name: ClassVar[str] = "proxy-header"
    settings_class: ClassVar[type[Any] | None] = None

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        user = state.find_user(credentials.headers.get("x-proxy-user", ""))
        if user is None:
            return None
        return Principal(kind="user", id=user.id, role=user.role)


class ProxyHeaderPlugin:
    @hookimpl
    def lunasentri_register_authenticators(self) -> list[type[ProxyHeaderAuthenticator]]:
        return [ProxyHeaderAuthenticator]


def test_entries_record_the_authenticator_that_accepted_the_request(
    make_server: MakeServer,
) -> None:
    server = make_server(plugins={"proxy-header": ProxyHeaderPlugin()})
    admin = server.login()
    with server.client(admin) as client:
        client.post("/api/v1/users", json={"username": "by-session", "password": PASSWORD})
    with server.client() as client:
        created = client.post(
            "/api/v1/users",
            json={"username": "by-proxy", "password": PASSWORD},
            headers={"x-proxy-user": "admin"},
        )
        assert created.status_code == 201, created.text

    creates = {i["detail"]["username"]: i for i in entries(server, admin, action="user.create")}
    via_proxy = entries(server, admin, via="proxy-header")

    assert creates["by-session"]["via"] == "session"
    assert creates["by-proxy"]["via"] == "proxy-header"  # set by the hub, not the plugin
    assert creates["admin"]["via"] is None  # the server itself, at its first start
    assert [i["detail"]["username"] for i in via_proxy] == ["by-proxy"]
    assert entries(server, admin, via="no-such-authenticator") == []
    # A login happens before any authenticator has accepted the caller.
    assert {i["via"] for i in entries(server, admin, action="user.login")} == {None}


BAD_QUERIES = [
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "9" * 5000}, "limit"),
    ({"since": "last week"}, "since"),
    ({"since": "2024-01-01T00:00:00"}, "since"),
]


def test_bad_queries_are_422(server: LiveServer) -> None:
    with server.client(server.login()) as client:
        for params, field in BAD_QUERIES:
            response = client.get("/api/v1/audit", params=params)

            assert response.status_code == 422, params
            assert response.json()["error"]["field"] == field, params


def test_only_admins_read_the_audit_log(server: LiveServer) -> None:
    admin = server.login()
    with server.client(admin) as client:
        client.post("/api/v1/users", json={"username": "alice", "password": PASSWORD})

    with server.client(server.login("alice", PASSWORD)) as client:
        as_user = client.get("/api/v1/audit")
    with server.client() as client:
        anonymous = client.get("/api/v1/audit")

    assert as_user.status_code == 403
    assert anonymous.status_code == 401
    assert server.login("admin", ADMIN_PASSWORD)


# --------------------------------------------------------------------------- the service


class _BrokenState:
    def add_audit(self, entry: AuditEntry) -> None:
        raise StorageError("database is locked")


class _FakeHub:
    """Just enough hub for ``audit.record``: a clock, run_sync and a broken store."""

    def __init__(self) -> None:
        self.storage = SimpleNamespace(state=_BrokenState())

    def clock(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC)

    async def run_sync(self, func: Any, *args: Any) -> Any:
        return func(*args)


def test_a_storage_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    actor = Principal(kind="machine", id="m1", machine_id="m1")

    async def main() -> AuditEntry:
        return await audit.record(
            _FakeHub(),  # type: ignore[arg-type]
            action="key.rotate",
            actor=actor,
            target_type="machine",
            target_id="m1",
            detail={"grace": 60},
        )

    with caplog.at_level(logging.ERROR, logger="lunasentri_core.services.audit"):
        made = anyio.run(main)

    assert (made.actor_kind, made.actor_id, made.action) == ("machine", "m1", "key.rotate")
    assert made.at == datetime(2025, 1, 1, tzinfo=UTC)
    assert "key.rotate" in caplog.text


def test_entries_without_an_actor_are_the_systems() -> None:
    made = audit.entry(action="claim.expire", actor=None, at=datetime(2025, 1, 1, tzinfo=UTC))

    assert (made.actor_kind, made.actor_id, made.detail) == ("system", None, {})
