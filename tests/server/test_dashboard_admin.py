"""The administrators' dashboard pages over real HTTP: users (create, change role, reset
token shown once, delete after asking, never the last administrator away), the audit
log (filters, pages) and the plugins report; each refused to ordinary users, to a
visitor without a session, and to posts from another site."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MakeServer
from .test_dashboard import browser, log_in
from .test_dashboard_alerts import error_in
from .test_dashboard_forms import logged_in
from .test_ingest import PASSWORD, Shared, add_user, shared_server
from .test_plugins_api import MakeDistribution, broken_plugins

ADMIN_PAGES = ("/users", "/audit", "/plugins")
NEW_PASSWORD = "a brand new password"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("olga", "pim")}


def users_of(shared: Shared) -> dict[str, dict[str, Any]]:
    with shared.server.client(shared.admin) as api:
        items = api.get("/api/v1/users").json()["items"]
    return {user["username"]: user for user in items}


def audit_of(shared: Shared, **params: str) -> list[dict[str, Any]]:
    with shared.server.client(shared.admin) as api:
        answer = api.get("/api/v1/audit", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def rows(page: str, table: str) -> list[str]:
    body = page[page.index(f'id="{table}"') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    return re.findall(r"<tr[ >].*?</tr>", body, flags=re.S)


def saved_in(page: str) -> str:
    found = re.search(r'<p class="saved" role="status">([^<]+)</p>', page)
    assert found is not None, page
    return html.unescape(found.group(1))


# --------------------------------------------------------------------------- access


def test_only_administrators_see_the_admin_pages_and_their_links(
    shared: Shared, users: dict[str, str]
) -> None:
    olga = users_of(shared)["olga"]
    with logged_in(shared, "olga") as client:
        home = client.get("/")
        refused = [client.get(path) for path in ADMIN_PAGES]
        refused.append(client.get(f"/users/{olga['id']}/delete"))
        posts = [
            client.post("/users", data={"username": "sneaky", "password": PASSWORD}),
            client.post(f"/users/{olga['id']}/role", data={"role": "admin"}),
            client.post(f"/users/{olga['id']}/reset-token"),
            client.post(f"/users/{users_of(shared)['pim']['id']}/delete"),
        ]
    with logged_in(shared, "admin") as client:
        admin_home = client.get("/")
    for answer in refused + posts:
        assert answer.status_code == 403, answer.url
        assert "Only an administrator" in answer.text
    for path in ADMIN_PAGES:
        assert f'href="{path}"' not in home.text
        assert f'href="{path}"' in admin_home.text
    assert "sneaky" not in users_of(shared)
    assert users_of(shared)["olga"]["role"] == "user"
    assert "pim" in users_of(shared)
    assert not audit_of(shared, action="reset_token.create", target_id=olga["id"])


def test_the_admin_pages_send_a_visitor_without_a_session_to_log_in(shared: Shared) -> None:
    with browser(shared.server) as client:
        pages = [client.get(path) for path in (*ADMIN_PAGES, "/users/x/delete")]
        posts = [
            client.post("/users", data={"username": "ghost", "password": PASSWORD}),
            client.post("/users/x/role", data={"role": "admin"}),
            client.post("/users/x/reset-token"),
            client.post("/users/x/delete"),
        ]
    for answer in pages + posts:
        assert answer.status_code == 303, answer.url
        assert answer.headers["location"].startswith("/login?next=")
    assert "ghost" not in users_of(shared)


def test_every_admin_form_refuses_posts_from_another_site(
    shared: Shared, users: dict[str, str]
) -> None:
    pim = users_of(shared)["pim"]
    with logged_in(shared, "admin") as client:
        token = client.cookies["lunasentri_session"]
    forms = {
        "/users": {"username": "forged", "password": PASSWORD, "role": "admin"},
        f"/users/{pim['id']}/role": {"role": "admin"},
        f"/users/{pim['id']}/reset-token": {},
        f"/users/{pim['id']}/delete": {},
    }
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    after = users_of(shared)
    assert "forged" not in after
    assert after["pim"]["role"] == "user"
    assert not audit_of(shared, action="reset_token.create", target_id=pim["id"])


# --------------------------------------------------------------------------- users


def test_an_administrator_creates_a_user_who_can_log_in(shared: Shared) -> None:
    with logged_in(shared, "admin") as client:
        page = client.get("/users")
        made = client.post(
            "/users", data={"username": "quinn", "password": PASSWORD, "role": "admin"}
        )
        shown = client.get(made.headers["location"])
    assert 'href="/users" aria-current="page"' in page.text
    assert made.status_code == 303
    assert made.headers["location"] == "/users?saved=created"
    assert saved_in(shown.text) == "User created."
    assert any("quinn" in row for row in rows(shown.text, "users"))
    assert users_of(shared)["quinn"]["role"] == "admin"
    assert shared.server.login("quinn", PASSWORD).startswith("lss_")
    (entry,) = audit_of(shared, action="user.create", target_id=users_of(shared)["quinn"]["id"])
    assert entry["detail"] == {"username": "quinn", "role": "admin"}
    assert entry["via"] == "session"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"username": "bad name!", "password": PASSWORD, "role": "user"}, 400, "username"),
        ({"username": "shorty", "password": "xq7z", "role": "user"}, 400, "at least 8"),
        ({"username": "rolf", "password": PASSWORD, "role": "owner"}, 400, "choose one of"),
        ({"username": "admin", "password": PASSWORD, "role": "user"}, 409, "already taken"),
    ],
)
def test_a_refused_user_is_shown_again_without_the_password(
    shared: Shared, fields: dict[str, str], status: int, message: str
) -> None:
    before = users_of(shared)
    with logged_in(shared, "admin") as client:
        answer = client.post("/users", data=fields)
    assert answer.status_code == status, answer.text
    assert message in error_in(answer.text)
    assert f'value="{html.escape(fields["username"])}"' in answer.text
    assert fields["password"] not in answer.text
    assert users_of(shared) == before


def test_roles_change_but_the_last_administrator_stays(shared: Shared) -> None:
    add_user(shared.server, shared.admin, "rita")
    with shared.server.client(shared.admin) as api:  # only "admin" is an administrator now
        for user in users_of(shared).values():
            if user["role"] == "admin" and user["username"] != "admin":
                assert api.patch(f"/api/v1/users/{user['id']}", json={"role": "user"}).is_success
    every = users_of(shared)
    admin, rita = every["admin"], every["rita"]
    with logged_in(shared, "admin") as client:
        page = client.get("/users")
        alone = client.post(f"/users/{admin['id']}/role", data={"role": "user"})
        bad = client.post(f"/users/{rita['id']}/role", data={"role": "root"})
        unknown = client.post("/users/no-such-user/role", data={"role": "admin"})
        promoted = client.post(f"/users/{rita['id']}/role", data={"role": "admin"})
        shown = client.get(promoted.headers["location"])
        stepped_down = client.post(f"/users/{admin['id']}/role", data={"role": "user"})
        after = client.get("/users")
    # The only administrator's button says why it is off; the service refuses anyway.
    own_row = next(row for row in rows(page.text, "users") if "(you)" in row)
    assert "disabled" in own_row
    assert alone.status_code == 409
    assert "only administrator" in error_in(alone.text)
    assert bad.status_code == 400
    assert "role: choose one of admin, user" in error_in(bad.text)
    assert unknown.status_code == 404
    assert promoted.status_code == 303
    assert saved_in(shown.text).startswith("Role changed")
    assert stepped_down.status_code == 303
    # From the next request on, the former administrator is an ordinary user.
    assert after.status_code == 403
    with shared.server.client(shared.server.login("rita", PASSWORD)) as api:
        back = api.patch(f"/api/v1/users/{admin['id']}", json={"role": "admin"})
    assert back.status_code == 200, back.text
    assert users_of(shared)["rita"]["role"] == "admin"
    (entry, *_) = audit_of(shared, action="user.role", target_id=admin["id"])
    assert entry["detail"] == {"username": "admin", "from": "user", "role": "admin"}


def test_a_reset_token_is_shown_once_and_sets_a_new_password(shared: Shared) -> None:
    add_user(shared.server, shared.admin, "sven")
    sven = users_of(shared)["sven"]
    with logged_in(shared, "admin") as client:
        issued = client.post(f"/users/{sven['id']}/reset-token")
        listed = client.get("/users")
        unknown = client.post("/users/no-such-user/reset-token")
    assert issued.status_code == 201, issued.text
    found = re.search(r'<code id="reset-token">(lsr_[^<]+)</code>', issued.text)
    assert found is not None, issued.text
    token = html.unescape(found.group(1))
    assert token not in listed.text
    assert unknown.status_code == 404
    with shared.server.client() as api:
        reset = api.post("/api/v1/auth/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert reset.status_code == 204, reset.text
    assert shared.server.login("sven", NEW_PASSWORD).startswith("lss_")


def test_a_user_is_deleted_after_asking_but_never_oneself(shared: Shared) -> None:
    add_user(shared.server, shared.admin, "tove")
    every = users_of(shared)
    tove, admin = every["tove"], every["admin"]
    with logged_in(shared, "admin") as client:
        asked = client.get(f"/users/{tove['id']}/delete")
        own_form = client.get(f"/users/{admin['id']}/delete")
        own = client.post(f"/users/{admin['id']}/delete")
        unknown = client.get("/users/no-such-user/delete")
        deleted = client.post(f"/users/{tove['id']}/delete")
        again = client.post(f"/users/{tove['id']}/delete")
        page = client.get("/users")
    assert asked.status_code == 200
    assert f'action="/users/{tove["id"]}/delete"' in asked.text
    assert "Delete the user tove?" in asked.text
    assert f'href="/users/{admin["id"]}/delete"' not in page.text  # no link to oneself
    for answer in (own_form, own):
        assert answer.status_code == 409
        assert "your own account" in error_in(answer.text)
    assert unknown.status_code == 404
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/users?saved=deleted"
    assert again.status_code == 404
    assert "tove" not in users_of(shared)
    assert "admin" in users_of(shared)


# --------------------------------------------------------------------------- audit log


def test_the_audit_log_filters_and_pages(shared: Shared) -> None:
    add_user(shared.server, shared.admin, "uma")
    uma = users_of(shared)["uma"]
    with shared.server.client(shared.admin) as api:
        for n in range(56):  # 55 role changes after the first (a no-op is not recorded)
            role = "admin" if n % 2 else "user"
            assert api.patch(f"/api/v1/users/{uma['id']}", json={"role": role}).is_success
    changes = audit_of(shared, action="user.role", target_id=uma["id"], limit="1000")
    assert len(changes) == 55
    filters = {"action": "user.role", "target_id": uma["id"], "actor": "admin"}
    with logged_in(shared, "admin") as client:
        first = client.get("/audit", params=filters)
        older = re.search(r'<a href="(/audit\?[^"]+)" rel="next">', first.text)
        assert older is not None, first.text
        second = client.get(html.unescape(older.group(1)))
        via = client.get("/audit", params={**filters, "via": "api-key"})
        late = client.get("/audit", params={**filters, "since": "2999-01-01T00:00"})
        early = client.get("/audit", params={**filters, "until": "2000-01-01T00:00"})
        span = client.get(
            "/audit",
            params={**filters, "since": changes[-1]["at"][:19], "until": "2999-01-01T00:00"},
        )
        wrong = client.get("/audit", params={"since": "yesterday"})
        too_early = client.get("/audit", params={"until": "0001-01-01T00:00:00+14:00"})
    page_one, page_two = rows(first.text, "audit"), rows(second.text, "audit")
    assert (len(page_one), len(page_two)) == (50, 5)
    assert all("user.role" in row and "uma" in row for row in page_one + page_two)
    shown = [re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row)[0] for row in page_one + page_two]
    assert shown == sorted(shown, reverse=True)
    assert 'rel="next"' not in second.text
    assert "← Newest" in second.text
    assert "← Newest" not in first.text
    assert "action=user.role" in older.group(1)  # the filters carry over
    assert "No audit entries match" in via.text
    assert "No audit entries match" in late.text
    assert "No audit entries match" in early.text
    assert len(rows(span.text, "audit")) == 50
    assert wrong.status_code == 400
    assert "since: 'yesterday' is not a time" in error_in(wrong.text)
    assert too_early.status_code == 400
    assert "until: " in error_in(too_early.text)
    assert 'value="user.role"' in first.text  # the form keeps what was asked


def test_the_audit_log_names_actors_and_links_targets(shared: Shared) -> None:
    with logged_in(shared, "admin") as client:
        page = client.get("/audit", params={"action": "user.create"})
    body = rows(page.text, "audit")
    assert body
    admin_id = users_of(shared)["admin"]["id"]
    made_by_admin = [row for row in body if f'<a href="?actor={admin_id}">admin</a>' in row]
    assert made_by_admin  # the users this module made
    # The first administrator was made by the server itself, from the settings.
    (first,) = [row for row in body if f'<a href="?target_id={admin_id}">admin</a>' in row]
    assert '<span class="muted">system</span>' in first
    assert all('<a href="?target_id=' in row for row in body)


# --------------------------------------------------------------------------- plugins


def test_the_plugins_page_shows_what_runs_and_what_failed(
    make_distribution: MakeDistribution, make_server: MakeServer, tmp_path: Path
) -> None:
    broken_plugins(make_distribution)
    tables = {"portcheck": {"port": "hunter2"}, "pstuil": {"per_cpu": True}}
    server = make_server(plugin_settings=tables, disabled_plugins=["wmi"])
    with browser(server) as client:
        log_in(client, "admin", "correct horse battery staple")
        page = client.get("/plugins")
    assert page.status_code == 200
    assert 'href="/plugins" aria-current="page"' in page.text
    plugins = rows(page.text, "plugins")
    psutil = next(row for row in plugins if '<td data-title="Name">psutil</td>' in row)
    assert "lunasentri-psutil" in psutil
    assert "collector:psutil" in psutil
    failures = page.text[page.text.index('id="failures"') :]
    assert "needy" in failures
    assert "missing-dependency" in failures
    assert "surely_not_installed_module" in failures
    assert "invalid settings: plugins.portcheck.port" in failures
    assert "Turned off by the settings: wmi." in page.text
    assert "[plugins.pstuil]" in page.text
