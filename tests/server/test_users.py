"""Users over real HTTP (admin endpoints, scoping, deletion, export) and ``lunasentri users``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lunasentri_core.config import Settings
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hub import open_storage
from lunasentri_core.model import (
    AlertRule,
    ApiKey,
    Comparison,
    Machine,
    MachineSamples,
    Reading,
    Sample,
    new_id,
)
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.security import issue_token
from lunasentri_core.storage.protocols import StorageBackend

from .conftest import ADMIN_PASSWORD, LiveServer, MakeServer, free_port

PASSWORD = "a perfectly fine password"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests that only add uniquely named users (logins are slow)."""
    settings = Settings.load(
        environ={},
        data_dir=tmp_path_factory.mktemp("shared"),
        admin_password=ADMIN_PASSWORD,
        server={"host": "127.0.0.1"},
    )
    live = LiveServer(settings, port=free_port())
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def shared_admin(shared: LiveServer) -> str:
    return shared.login()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def create_user(
    server: LiveServer, username: str, role: str = "user", admin: str | None = None
) -> tuple[str, str]:
    """A new user's id and session token."""
    with server.client(admin or server.login()) as client:
        response = client.post(
            "/api/v1/users", json={"username": username, "password": PASSWORD, "role": role}
        )
    assert response.status_code == 201, response.text
    return response.json()["id"], server.login(username, PASSWORD)


@pytest.fixture
def storage(server: LiveServer) -> Iterator[StorageBackend]:
    """The running server's storage, opened beside it (as a second process would)."""
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    yield backend
    backend.close()


def add_machine_with_data(storage: StorageBackend, owner_id: str, name: str) -> dict[str, Any]:
    machine = storage.state.add_machine(
        Machine(
            id=new_id(), name=name, owner_id=owner_id, hostname=f"{name}.lan", labels={"a": "b"}
        )
    )
    issued = issue_token()
    key = storage.state.add_api_key(
        ApiKey(id=new_id(), machine_id=machine.id, prefix=issued.visible, key_hash=issued.hash)
    )
    now = datetime.now(UTC).replace(microsecond=0)
    samples = [
        Sample(
            now - timedelta(minutes=minutes),
            [Reading("cpu.percent", 10.0 + minutes), Reading("disk.used", 5.0, {"mount": "/"})],
        )
        for minutes in (10, 5, 1)
    ]
    storage.metrics.write([MachineSamples(machine.id, samples)])
    return {"machine": machine, "key": key, "secret": issued.secret, "now": now}


def add_rule(storage: StorageBackend, owner_id: str) -> AlertRule:
    return storage.state.add_alert_rule(
        AlertRule(
            id=new_id(),
            owner_id=owner_id,
            name="busy",
            metric="cpu.percent",
            comparison=Comparison.GT,
            threshold=90,
            for_duration=timedelta(minutes=5),
        )
    )


# --------------------------------------------------------------------------- create, list, get


def test_an_admin_creates_lists_and_gets_users(server: LiveServer) -> None:
    with server.client(server.login()) as admin:
        created = admin.post(
            "/api/v1/users", json={"username": "root2", "password": PASSWORD, "role": "admin"}
        )
        plain = admin.post("/api/v1/users", json={"username": "bob", "password": PASSWORD})
        listed = admin.get("/api/v1/users").json()["items"]
        got = admin.get(f"/api/v1/users/{plain.json()['id']}")

    assert created.status_code == 201
    assert created.json()["role"] == "admin"
    assert plain.json()["role"] == "user"
    assert [u["username"] for u in listed] == ["admin", "bob", "root2"]
    assert got.json() == plain.json()
    assert server.login("root2", PASSWORD).startswith("lss_")


def test_a_duplicate_username_is_a_conflict(shared: LiveServer, shared_admin: str) -> None:
    with shared.client(shared_admin) as admin:
        response = admin.post("/api/v1/users", json={"username": "admin", "password": PASSWORD})

    assert response.status_code == 409
    assert "already taken" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "bob", "password": "x" * 1025}, "password"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "has space", "password": PASSWORD}, "username"),
        ({"username": "-dash", "password": PASSWORD}, "username"),
        ({"username": "b" * 65, "password": PASSWORD}, "username"),
        ({"username": "bob", "password": PASSWORD, "role": "root"}, "role"),
        ({"username": "bob", "password": PASSWORD, "role": None}, "role"),
        ({"username": "bob"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": 5, "password": PASSWORD}, "username"),
        ({"username": "bob", "password": PASSWORD, "id": "chosen"}, "id"),
    ],
)
def test_bad_new_users_are_422_naming_the_field(
    shared: LiveServer, shared_admin: str, body: dict[str, Any], field: str
) -> None:
    with shared.client(shared_admin) as admin:
        response = admin.post("/api/v1/users", json=body)
        users = admin.get("/api/v1/users").json()["items"]

    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert "bob" not in [u["username"] for u in users]


def test_malformed_and_huge_bodies(shared: LiveServer, shared_admin: str) -> None:
    with shared.client(shared_admin) as admin:
        json_type = {"content-type": "application/json"}
        malformed = admin.post("/api/v1/users", content=b'{"username": ', headers=json_type)
        huge = admin.post("/api/v1/users", content=b"{" + b" " * 200_000 + b"}", headers=json_type)
        not_object = admin.post("/api/v1/users", json="bob")

    assert malformed.status_code == 400
    assert huge.status_code == 413
    assert not_object.status_code == 422


def test_a_user_sees_only_themselves(shared: LiveServer, shared_admin: str) -> None:
    alice_id, alice = create_user(shared, unique("alice"), admin=shared_admin)
    bob_id, _ = create_user(shared, unique("bob"), admin=shared_admin)

    with shared.client(alice) as client:
        assert client.get(f"/api/v1/users/{alice_id}").json()["id"] == alice_id
        other = client.get(f"/api/v1/users/{bob_id}")
        unknown = client.get("/api/v1/users/does-not-exist")

    assert other.status_code == 404
    assert unknown.status_code == 404
    assert other.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"


ADMIN_ENDPOINTS = [
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users"),
    ("DELETE", "/api/v1/users/{other}"),
    ("PATCH", "/api/v1/users/{other}"),
    ("POST", "/api/v1/users/{other}/reset-token"),
    ("GET", "/api/v1/audit"),
]


def test_admin_endpoints_refuse_users_and_anonymous_callers(
    shared: LiveServer, shared_admin: str
) -> None:
    _, alice = create_user(shared, unique("alice"), admin=shared_admin)
    bob_id, _ = create_user(shared, unique("bob"), admin=shared_admin)
    body = {"username": "mallory", "password": PASSWORD}

    for method, path in ADMIN_ENDPOINTS:
        url = path.format(other=bob_id)
        with shared.client(alice) as client:
            as_user = client.request(method, url, json=body)
        with shared.client() as client:
            anonymous = client.request(method, url, json=body)

        assert as_user.status_code == 403, (method, path)
        assert as_user.json()["error"]["code"] == "forbidden"
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.json()["error"]["code"] == "unauthenticated"
    with shared.client(shared_admin) as admin:
        usernames = [u["username"] for u in admin.get("/api/v1/users").json()["items"]]
        assert "mallory" not in usernames
        assert admin.get(f"/api/v1/users/{bob_id}").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/users/{id}", "/api/v1/users/{id}/export"])
def test_user_endpoints_refuse_anonymous_and_machine_callers(
    server: LiveServer, storage: StorageBackend, path: str
) -> None:
    alice_id, _ = create_user(server, "alice")
    data = add_machine_with_data(storage, alice_id, "web")

    with server.client() as anonymous:
        assert anonymous.get(path.format(id=alice_id)).status_code == 401
    with server.client(data["secret"]) as machine:
        assert machine.get(path.format(id=alice_id)).status_code == 403


# --------------------------------------------------------------------------- delete


def test_deleting_a_user_removes_their_machines_data_and_sessions(
    server: LiveServer, storage: StorageBackend
) -> None:
    alice_id, alice = create_user(server, "alice")
    bob_id, bob = create_user(server, "bob")
    alices = [add_machine_with_data(storage, alice_id, name) for name in ("web", "db")]
    bobs = add_machine_with_data(storage, bob_id, "bobs")
    add_rule(storage, alice_id)

    with server.client(server.login()) as admin:
        response = admin.delete(f"/api/v1/users/{alice_id}")
        again = admin.delete(f"/api/v1/users/{alice_id}")
        users = [u["username"] for u in admin.get("/api/v1/users").json()["items"]]

    assert response.status_code == 204
    assert response.content == b""
    assert again.status_code == 404
    assert users == ["admin", "bob"]
    for data in alices:
        with pytest.raises(NotFoundError):
            storage.state.get_machine(data["machine"].id)
        assert storage.metrics.list_series(data["machine"].id) == []
        assert storage.state.find_api_key(data["key"].key_hash) is None
        with server.client(data["secret"]) as machine:
            assert machine.get(f"/api/v1/users/{alice_id}").status_code == 401
    assert storage.state.list_alert_rules(alice_id) == []
    with server.client(alice) as client:
        assert client.get("/api/v1/auth/me").status_code == 401
    # Another user's things are untouched.
    assert storage.state.get_machine(bobs["machine"].id).owner_id == bob_id
    assert len(storage.metrics.list_series(bobs["machine"].id)) == 2
    with server.client(bob) as client:
        assert client.get("/api/v1/auth/me").status_code == 200


def test_an_admin_cannot_delete_themselves(shared: LiveServer, shared_admin: str) -> None:
    with shared.client(shared_admin) as admin:
        me = admin.get("/api/v1/auth/me").json()["id"]
        response = admin.delete(f"/api/v1/users/{me}")
        still_there = admin.get("/api/v1/auth/me")

    assert response.status_code == 409
    assert "own account" in response.json()["error"]["message"]
    assert still_there.status_code == 200


def test_a_role_change_applies_from_the_next_request_but_never_leaves_no_admin(
    server: LiveServer,
) -> None:
    admin = server.login()
    alice_id, alice = create_user(server, "alice", admin=admin)
    with server.client(admin) as client:
        me = client.get("/api/v1/auth/me").json()["id"]
        alone = client.patch(f"/api/v1/users/{me}", json={"role": "user"})
        promoted = client.patch(f"/api/v1/users/{alice_id}", json={"role": "admin"})
        bad = client.patch(f"/api/v1/users/{alice_id}", json={"role": "root"})
    with server.client(alice) as client:  # the same session, now an admin's
        listed = client.get("/api/v1/users")
        demoted = client.patch(f"/api/v1/users/{me}", json={"role": "user"})
        alice_alone = client.patch(f"/api/v1/users/{alice_id}", json={"role": "user"})
    with server.client(admin) as client:
        refused = client.get("/api/v1/users")
    with server.client(alice) as client:
        entries = client.get("/api/v1/audit", params={"action": "user.role"}).json()["items"]

    assert alone.status_code == 409
    assert "only administrator" in alone.json()["error"]["message"]
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    assert bad.status_code == 422
    assert listed.status_code == 200
    assert demoted.status_code == 200
    assert alice_alone.status_code == 409
    assert refused.status_code == 403
    assert [(e["target_id"], e["detail"]["role"]) for e in entries] == [
        (me, "user"),
        (alice_id, "admin"),
    ]


def test_reset_token_for_an_unknown_user_is_404(shared: LiveServer, shared_admin: str) -> None:
    with shared.client(shared_admin) as admin:
        response = admin.post("/api/v1/users/nobody/reset-token")

    assert response.status_code == 404


# --------------------------------------------------------------------------- export


def test_export_has_the_users_machines_keys_series_and_rules(
    server: LiveServer, storage: StorageBackend
) -> None:
    alice_id, alice = create_user(server, "alice")
    data = add_machine_with_data(storage, alice_id, "web")
    rule = add_rule(storage, alice_id)
    bob_id, _ = create_user(server, "bob")
    add_machine_with_data(storage, bob_id, "bobs")

    with server.client(alice) as client:
        response = client.get(f"/api/v1/users/{alice_id}/export")

    assert response.status_code == 200
    export = response.json()
    assert export["format"] == "lunasentri-export"
    assert export["version"] == 1
    assert export["user"]["username"] == "alice"
    assert export["history"] is None
    [machine] = export["machines"]
    assert machine["id"] == data["machine"].id
    assert machine["name"] == "web"
    assert machine["hostname"] == "web.lan"
    assert machine["labels"] == {"a": "b"}
    assert machine["api_keys"] == [
        {
            "id": data["key"].id,
            "prefix": data["key"].prefix,
            "created_at": data["key"].created_at.isoformat(),
            "expires_at": None,
            "revoked_at": None,
        }
    ]
    series = {s["metric"]: s for s in machine["series"]}
    assert series["cpu.percent"]["latest"] == {
        "timestamp": (data["now"] - timedelta(minutes=1)).isoformat(),
        "value": 11.0,
    }
    assert series["disk.used"]["labels"] == {"mount": "/"}
    assert series["cpu.percent"]["history"] is None
    [exported_rule] = export["alert_rules"]
    assert exported_rule["id"] == rule.id
    assert exported_rule["for_duration"] == 300
    assert exported_rule["comparison"] == ">"
    # Secrets never leave: neither the key nor its hash.
    assert data["key"].key_hash not in response.text
    assert data["secret"] not in response.text
    assert "bobs" not in response.text


def test_export_with_since_includes_history(server: LiveServer, storage: StorageBackend) -> None:
    alice_id, alice = create_user(server, "alice")
    data = add_machine_with_data(storage, alice_id, "web")
    since = (data["now"] - timedelta(minutes=30)).isoformat()

    with server.client(alice) as client:
        response = client.get(
            f"/api/v1/users/{alice_id}/export", params={"since": since, "step": 60}
        )

    assert response.status_code == 200, response.text
    export = response.json()
    assert export["history"]["since"] == since
    assert export["history"]["step"] == 60
    series = {s["metric"]: s for s in export["machines"][0]["series"]}
    assert [p["value"] for p in series["cpu.percent"]["history"]] == [20.0, 15.0, 11.0]
    assert len(series["disk.used"]["history"]) == 3


def test_an_admin_exports_anyone_and_a_user_only_themselves(
    shared: LiveServer, shared_admin: str
) -> None:
    alice_id, alice = create_user(shared, unique("alice"), admin=shared_admin)
    bob_id, _ = create_user(shared, unique("bob"), admin=shared_admin)

    with shared.client(shared_admin) as admin:
        assert admin.get(f"/api/v1/users/{alice_id}/export").status_code == 200
    with shared.client(alice) as client:
        assert client.get(f"/api/v1/users/{bob_id}/export").status_code == 404
        assert client.get("/api/v1/users/nobody/export").status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-01-01T00:00:00"}, "since"),  # no timezone
        ({"since": "2999-01-01T00:00:00Z"}, "since"),
        ({"since": "2000-01-01T00:00:00Z", "step": "1"}, "step"),  # too many points
        ({"step": "0"}, "step"),
        ({"step": "-5"}, "step"),
        ({"step": "nan"}, "step"),
        ({"step": "1e300"}, "step"),
        ({"step": "ten"}, "step"),
    ],
)
def test_bad_export_queries_are_422(
    shared: LiveServer, shared_admin: str, params: dict[str, str], field: str
) -> None:
    with shared.client(shared_admin) as admin:
        me = admin.get("/api/v1/auth/me").json()["id"]
        response = admin.get(f"/api/v1/users/{me}/export", params=params)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


# --------------------------------------------------------------------------- the command


def lunasentri(*args: str, data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    script = shutil.which("lunasentri", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "lunasentri_core.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    env["LUNASENTRI_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [*command, "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=data_dir.parent,
    )


def test_the_command_manages_users_the_server_then_serves(
    tmp_path: Path, make_server: MakeServer
) -> None:
    data = tmp_path / "cli-data"

    created = lunasentri(
        "create", "root", "--admin", "--password-stdin", data_dir=data, stdin="root password 1\n"
    )
    prompted = lunasentri("create", "bob", data_dir=data, stdin="bob password 1\nbob password 1\n")
    duplicate = lunasentri("create", "bob", "--password-stdin", data_dir=data, stdin="password\n")
    changed = lunasentri(
        "set-password", "root", "--password-stdin", data_dir=data, stdin="root password 2\n"
    )
    listed = lunasentri("list", "--json", data_dir=data)

    assert created.returncode == 0, created.stderr
    assert "created admin root" in created.stdout
    assert prompted.returncode == 0, prompted.stderr
    assert duplicate.returncode == 1
    assert "'bob' is already taken" in duplicate.stderr
    assert changed.returncode == 0, changed.stderr
    users = json.loads(listed.stdout)["items"]
    assert [(u["username"], u["role"]) for u in users] == [("bob", "user"), ("root", "admin")]
    # An admin exists, so the server does not make one from admin_password.
    server = make_server(data_dir=data)
    assert server.login("root", "root password 2").startswith("lss_")
    assert server.login("bob", "bob password 1").startswith("lss_")
    with server.client() as client:
        old = client.post(
            "/api/v1/auth/login", json={"username": "root", "password": "root password 1"}
        )
        default_admin = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
    assert old.status_code == default_admin.status_code == 401
    with server.client(server.login("root", "root password 2")) as admin:
        actions = [e["action"] for e in admin.get("/api/v1/audit").json()["items"]]
        entry = admin.get("/api/v1/audit", params={"action": "user.create"}).json()["items"][-1]
    assert {"user.create", "user.password_reset"} <= set(actions)
    assert entry["actor_kind"] == "system"
    assert entry["detail"]["via"] == "cli"


def test_the_command_deletes_users_with_their_data(tmp_path: Path) -> None:
    data = tmp_path / "cli-data"
    lunasentri("create", "bob", "--password-stdin", data_dir=data, stdin="bob password 1\n")

    declined = lunasentri("delete", "bob", data_dir=data, stdin="n\n")
    deleted = lunasentri("delete", "bob", "--yes", data_dir=data)
    missing = lunasentri("delete", "bob", "--yes", data_dir=data)
    listed = lunasentri("list", data_dir=data)

    assert declined.returncode == 1
    assert "Aborted" in declined.stderr
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted bob" in deleted.stdout
    assert missing.returncode == 1
    assert "no user named 'bob'" in missing.stderr
    assert "bob" not in listed.stdout
    assert listed.stdout.startswith("username")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "root", "--password-stdin"), "short\n", "at least 8 characters"),
        (("create", "bad name", "--password-stdin"), "long enough pw\n", "username"),
        (("create", "root", "--password-stdin"), "", "no password"),
        (("create", "root"), "one password\nanother one\n", "Aborted"),
        (("set-password", "ghost", "--password-stdin"), "long enough pw\n", "no user named"),
    ],
)
def test_the_command_reports_bad_input_clearly(
    tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    result = lunasentri(*args, data_dir=tmp_path / "cli-data", stdin=stdin)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
