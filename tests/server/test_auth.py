"""Login, logout, the caller's own account, sessions, throttling and password resets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lunasentri_core.builtin import SESSION_COOKIE

from .conftest import ADMIN_PASSWORD, LiveServer, MakeServer

USER_PASSWORD = "a perfectly fine password"


def add_user(server: LiveServer, username: str = "alice", role: str = "user") -> str:
    with server.client(server.login()) as admin:
        response = admin.post(
            "/api/v1/users", json={"username": username, "password": USER_PASSWORD, "role": role}
        )
    assert response.status_code == 201, response.text
    user_id: str = response.json()["id"]
    return user_id


def login(server: LiveServer, username: str, password: str) -> httpx.Response:
    with server.client() as client:
        return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def wait_for(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# --------------------------------------------------------------------------- login


def test_login_returns_a_session_token_user_and_cookie(server: LiveServer) -> None:
    response = login(server, "admin", ADMIN_PASSWORD)

    assert response.status_code == 200
    body = response.json()
    assert body["token"].startswith("lss_")
    assert body["user"]["username"] == "admin"
    assert body["user"]["role"] == "admin"
    assert set(body["user"]) == {"id", "username", "role", "created_at"}
    assert body["expires_at"].endswith("+00:00")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={body['token']};")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert f"Max-Age={7 * 86400}" in cookie
    assert "Secure" not in cookie  # no TLS configured


def test_the_cookie_is_secure_when_the_public_url_is_https(make_server: MakeServer) -> None:
    server = make_server(server={"public_url": "https://monitor.example"})

    response = login(server, "admin", ADMIN_PASSWORD)

    assert "Secure" in response.headers["set-cookie"]


def test_the_token_and_the_cookie_both_authenticate(server: LiveServer) -> None:
    token = server.login()

    with server.client(token) as bearer:
        assert bearer.get("/api/v1/auth/me").json()["username"] == "admin"
    with server.client(cookies={SESSION_COOKIE: token}) as browser:
        assert browser.get("/api/v1/auth/me").json()["username"] == "admin"
        assert browser.get("/api/v1/users").status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_401(server: LiveServer) -> None:
    wrong_password = login(server, "admin", "not the password")
    unknown_user = login(server, "nobody", "not the password")

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json()
    assert "set-cookie" not in wrong_password.headers


def test_an_overlong_username_is_just_wrong_credentials(server: LiveServer) -> None:
    response = login(server, "x" * 500, "whatever password")

    assert response.status_code == 401


def test_me_needs_a_login(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert anonymous.get("/api/v1/auth/me").status_code == 401
    with server.client("lss_not-a-real-token") as forged:
        assert forged.get("/api/v1/auth/me").status_code == 401


# --------------------------------------------------------------------------- logout


def test_logout_revokes_the_session_and_clears_the_cookie(server: LiveServer) -> None:
    token = server.login()
    other = server.login()

    with server.client(token) as client:
        response = client.post("/api/v1/auth/logout")
        assert response.status_code == 204
        assert response.content == b""
        assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert client.get("/api/v1/auth/me").status_code == 401
    with server.client(other) as client:
        assert client.get("/api/v1/auth/me").status_code == 200


def test_logout_by_cookie(server: LiveServer) -> None:
    token = server.login()

    # A browser says where a request comes from; without that the cookie is not enough.
    with server.client(cookies={SESSION_COOKIE: token}) as browser:
        assert browser.post("/api/v1/auth/logout").status_code == 403
        assert (
            browser.post("/api/v1/auth/logout", headers={"origin": server.url}).status_code == 204
        )
    with server.client(token) as client:
        assert client.get("/api/v1/auth/me").status_code == 401


def test_logout_without_a_session_still_succeeds(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert anonymous.post("/api/v1/auth/logout").status_code == 204
    with server.client("lss_expired-or-forged") as client:
        assert client.post("/api/v1/auth/logout").status_code == 204


# --------------------------------------------------------------------------- password change


def test_password_change_keeps_this_session_and_revokes_the_others(server: LiveServer) -> None:
    add_user(server, "alice")
    current = login(server, "alice", USER_PASSWORD).json()["token"]
    other = login(server, "alice", USER_PASSWORD).json()["token"]

    with server.client(current) as client:
        response = client.post(
            "/api/v1/auth/password",
            json={"current_password": USER_PASSWORD, "new_password": "a brand new password"},
        )
        assert response.status_code == 204
        assert client.get("/api/v1/auth/me").status_code == 200
    with server.client(other) as client:
        assert client.get("/api/v1/auth/me").status_code == 401
    assert login(server, "alice", USER_PASSWORD).status_code == 401
    assert login(server, "alice", "a brand new password").status_code == 200


def test_password_change_rejects_a_wrong_current_password(server: LiveServer) -> None:
    with server.client(server.login()) as client:
        response = client.post(
            "/api/v1/auth/password",
            json={"current_password": "wrong guess", "new_password": "a brand new password"},
        )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "wrong_password"
    assert response.json()["error"]["field"] == "current_password"
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200


def test_password_change_rejects_a_weak_new_password(server: LiveServer) -> None:
    with server.client(server.login()) as client:
        response = client.post(
            "/api/v1/auth/password",
            json={"current_password": ADMIN_PASSWORD, "new_password": "short"},
        )

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "new_password"
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200


# --------------------------------------------------------------------------- sessions


def test_sessions_list_own_active_sessions_without_hashes(server: LiveServer) -> None:
    add_user(server, "alice")
    first = login(server, "alice", USER_PASSWORD).json()["token"]
    second = login(server, "alice", USER_PASSWORD).json()["token"]

    with server.client(second) as client:
        items = client.get("/api/v1/auth/sessions").json()["items"]

    assert len(items) == 2
    assert [item["current"] for item in items] == [True, False]  # newest first
    for item in items:
        assert set(item) == {"id", "created_at", "expires_at", "client", "current"}
        assert item["client"] == "127.0.0.1"
    assert first not in str(items)


def test_revoking_a_session_logs_it_out(server: LiveServer) -> None:
    add_user(server, "alice")
    keep = login(server, "alice", USER_PASSWORD).json()["token"]
    drop = login(server, "alice", USER_PASSWORD).json()["token"]

    with server.client(keep) as client:
        items = client.get("/api/v1/auth/sessions").json()["items"]
        other_id = next(item["id"] for item in items if not item["current"])
        assert client.delete(f"/api/v1/auth/sessions/{other_id}").status_code == 204
        assert client.delete(f"/api/v1/auth/sessions/{other_id}").status_code == 404
        assert len(client.get("/api/v1/auth/sessions").json()["items"]) == 1
    with server.client(drop) as client:
        assert client.get("/api/v1/auth/me").status_code == 401


def test_another_users_session_cannot_be_seen_or_revoked(server: LiveServer) -> None:
    add_user(server, "alice")
    alice = login(server, "alice", USER_PASSWORD).json()["token"]
    admin = server.login()
    with server.client(admin) as client:
        admin_session = client.get("/api/v1/auth/sessions").json()["items"][0]["id"]

    with server.client(alice) as client:
        assert admin_session not in str(client.get("/api/v1/auth/sessions").json())
        response = client.delete(f"/api/v1/auth/sessions/{admin_session}")
        assert response.status_code == 404
        assert client.delete("/api/v1/auth/sessions/nonexistent").status_code == 404
    with server.client(admin) as client:
        assert client.get("/api/v1/auth/me").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/auth/me"),
        ("POST", "/api/v1/auth/password"),
        ("GET", "/api/v1/auth/sessions"),
        ("DELETE", "/api/v1/auth/sessions/abc"),
    ],
)
def test_own_account_endpoints_need_a_login(server: LiveServer, method: str, path: str) -> None:
    with server.client() as anonymous:
        response = anonymous.request(method, path, json={})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


# --------------------------------------------------------------------------- throttling


def test_repeated_failures_lock_the_username(make_server: MakeServer) -> None:
    # A window no run outlasts, so the lock cannot end between the attempts
    # however slow this machine is (ageing out: the next test).
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 3})
    statuses = [login(server, "admin", "bad guess").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]

    locked = login(server, "admin", ADMIN_PASSWORD)

    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "throttled"
    assert 3500 <= int(locked.headers["retry-after"]) <= 3600


def test_a_locked_username_opens_once_its_failures_leave_the_window(
    make_server: MakeServer,
) -> None:
    server = make_server(server={"login_lockout": "3s", "login_max_failures": 3})
    # Each failure costs a password hash: keep failing until the limit is reached
    # inside the window, however slow this machine is right now.
    statuses = []
    while 429 not in statuses:
        statuses.append(login(server, "admin", "bad guess").status_code)
        assert len(statuses) < 30
    assert statuses[:3] == [401, 401, 401]
    # Once the failures age out of the window, the right password works again.
    wait_for(lambda: login(server, "admin", ADMIN_PASSWORD).status_code == 200, seconds=30)


def test_retry_after_is_what_is_left_of_the_window(make_server: MakeServer) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 2})
    assert login(server, "admin", "bad guess").status_code == 401
    time.sleep(2.5)
    assert login(server, "admin", "bad guess").status_code == 401

    locked = login(server, "admin", ADMIN_PASSWORD)

    assert locked.status_code == 429
    # The first failure is over 2 s old: it leaves the hour before a whole hour passes.
    retry_after = int(locked.headers["retry-after"])
    assert 3500 <= retry_after <= 3598
    assert f"try again in {retry_after} s" in locked.json()["error"]["message"]


def test_a_success_clears_earlier_failures(make_server: MakeServer) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 3})
    for _ in range(2):
        assert login(server, "admin", "bad guess").status_code == 401
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200

    for _ in range(2):
        assert login(server, "admin", "bad guess").status_code == 401

    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200


def test_unknown_usernames_are_throttled_too(make_server: MakeServer) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 2})
    for _ in range(2):
        assert login(server, "ghost", "bad guess").status_code == 401

    assert login(server, "ghost", "bad guess").status_code == 429
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200  # per username


def test_guesses_from_another_address_do_not_lock_the_admin_out(
    make_server: MakeServer,
) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 3})
    # The address the server sees is the proxy's X-Forwarded-For: uvicorn trusts
    # a proxy on loopback, as it would a reverse proxy on the same host.
    attacker = {"x-forwarded-for": "203.0.113.9"}

    def remote(password: str) -> int:
        with server.client() as client:
            body = {"username": "admin", "password": password}
            return client.post("/api/v1/auth/login", json=body, headers=attacker).status_code

    assert [remote("guess") for _ in range(4)] == [401, 401, 401, 429]
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200
    assert remote(ADMIN_PASSWORD) == 429  # a success elsewhere does not unlock the guesser


def test_wrong_current_passwords_count_towards_the_lockout(make_server: MakeServer) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 2})
    token = server.login()
    change = {"current_password": "bad guess", "new_password": "a brand new password"}
    with server.client(token) as client:
        for _ in range(2):
            assert client.post("/api/v1/auth/password", json=change).status_code == 400
        change["current_password"] = ADMIN_PASSWORD
        response = client.post("/api/v1/auth/password", json=change)

    assert response.status_code == 429
    assert "retry-after" in response.headers


# --------------------------------------------------------------------------- reset


def issue_reset(server: LiveServer, user_id: str) -> dict[str, Any]:
    with server.client(server.login()) as admin:
        response = admin.post(f"/api/v1/users/{user_id}/reset-token")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_reset_token_sets_a_new_password_once(server: LiveServer) -> None:
    user_id = add_user(server, "alice")
    old_session = login(server, "alice", USER_PASSWORD).json()["token"]
    issued = issue_reset(server, user_id)
    assert issued["token"].startswith("lsr_")
    assert issued["user_id"] == user_id
    reset = {"token": issued["token"], "new_password": "the reset password"}

    with server.client() as anonymous:
        assert anonymous.post("/api/v1/auth/reset", json=reset).status_code == 204
        again = anonymous.post("/api/v1/auth/reset", json=reset)

    assert again.status_code == 410
    assert again.json()["error"]["code"] == "token_used"
    assert login(server, "alice", USER_PASSWORD).status_code == 401
    assert login(server, "alice", "the reset password").status_code == 200
    with server.client(old_session) as client:
        assert client.get("/api/v1/auth/me").status_code == 401


def test_an_expired_reset_token_is_refused(make_server: MakeServer) -> None:
    server = make_server(server={"reset_token_ttl": "0.2s"})
    user_id = add_user(server, "alice")
    issued = issue_reset(server, user_id)
    time.sleep(0.3)

    with server.client() as anonymous:
        response = anonymous.post(
            "/api/v1/auth/reset", json={"token": issued["token"], "new_password": "new password!"}
        )

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "token_expired"
    assert "expired" in response.json()["error"]["message"]
    assert login(server, "alice", USER_PASSWORD).status_code == 200


@pytest.mark.parametrize("token", ["lsr_unknown", "lss_wrong-kind", "", "x" * 200])
def test_an_unknown_reset_token_is_refused(server: LiveServer, token: str) -> None:
    with server.client() as anonymous:
        response = anonymous.post(
            "/api/v1/auth/reset", json={"token": token, "new_password": "a new password"}
        )

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_token",
        "message": "the reset token is not valid",
        "field": "token",
    }


def test_a_reset_with_a_weak_password_keeps_the_token_usable(server: LiveServer) -> None:
    user_id = add_user(server, "alice")
    issued = issue_reset(server, user_id)

    with server.client() as anonymous:
        weak = anonymous.post(
            "/api/v1/auth/reset", json={"token": issued["token"], "new_password": "short"}
        )
        strong = anonymous.post(
            "/api/v1/auth/reset", json={"token": issued["token"], "new_password": "long enough!"}
        )

    assert weak.status_code == 422
    assert weak.json()["error"]["field"] == "new_password"
    assert strong.status_code == 204


def test_a_reset_unlocks_a_throttled_user(make_server: MakeServer) -> None:
    server = make_server(server={"login_lockout": "1h", "login_max_failures": 2})
    user_id = add_user(server, "alice")
    for _ in range(2):
        login(server, "alice", "bad guess")
    assert login(server, "alice", USER_PASSWORD).status_code == 429
    issued = issue_reset(server, user_id)

    with server.client() as anonymous:
        anonymous.post(
            "/api/v1/auth/reset", json={"token": issued["token"], "new_password": "fresh password"}
        )

    assert login(server, "alice", "fresh password").status_code == 200


# --------------------------------------------------------------------------- bad input

GOOD_BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/auth/login": {"username": "admin", "password": ADMIN_PASSWORD},
    "/api/v1/auth/password": {"current_password": ADMIN_PASSWORD, "new_password": "new password"},
    "/api/v1/auth/reset": {"token": "lsr_x", "new_password": "new password"},
}


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path", list(GOOD_BODIES))
def test_bad_bodies_get_clear_4xx_errors(server: LiveServer, path: str) -> None:
    good = GOOD_BODIES[path]
    first_field = next(iter(good))
    with server.client(server.login()) as client:
        malformed = client.post(path, content=b"{not json", headers=JSON)
        not_object = client.post(path, json=["a", "list"])
        missing = client.post(path, json={k: v for k, v in good.items() if k != first_field})
        wrong_type = client.post(path, json={**good, first_field: 12})
        unknown = client.post(path, json={**good, "extra": True})
        huge = client.post(path, json={**good, first_field: "x" * 100_000})
        nan = client.post(path, content=b'{"username": NaN}', headers=JSON)

    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    assert not_object.status_code == 422
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == first_field
    assert wrong_type.status_code == 422
    assert wrong_type.json()["error"]["field"] == first_field
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "extra"
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "too_large"
    assert nan.status_code == 400
    # None of it changed anything.
    assert login(server, "admin", ADMIN_PASSWORD).status_code == 200
