"""The dashboard's forms that change things, over real HTTP: register a machine, claim an
agent, edit labels, rotate and revoke keys, delete; each refused for another user's
machine, for a non-administrator where the API refuses one, and from another site."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator

import httpx
import pytest

from .conftest import ADMIN_PASSWORD
from .test_claims import Agent
from .test_dashboard import browser, log_in
from .test_ingest import PASSWORD, Shared, add_user, at, post, register, sample, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("ulla", "vic")}


@contextlib.contextmanager
def logged_in(shared: Shared, username: str) -> Iterator[httpx.Client]:
    with browser(shared.server) as client:
        log_in(client, username, ADMIN_PASSWORD if username == "admin" else PASSWORD)
        yield client


def shown_secret(page: str, element: str) -> str:
    found = re.search(rf'<code id="{element}">([^<]+)</code>', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def ingest_works(shared: Shared, key: str) -> bool:
    status = post(shared.server, key, {"samples": [sample(at(0.5), cpu__percent=1.0)]})
    assert status.status_code in (200, 401), status.text
    return status.status_code == 200


def test_registering_a_machine_shows_its_key_once_and_the_install_command(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "ulla") as client:
        form = client.get("/machines/new")
        made = client.post(
            "/machines/new", data={"name": "web-<1>", "labels": "env:prod, role:web"}
        )
        overview = client.get("/")
    assert form.status_code == 200
    assert 'action="/machines/new"' in form.text
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"  # the key is in it
    key = shown_secret(made.text, "api-key")
    command = shown_secret(made.text, "install-command")
    assert key.startswith("lsk_")
    assert f"LUNASENTRI_AGENT__API_KEY={key}" in command
    # As the API's registration answers: the server's own agent wheels, its base_url.
    assert re.search(r"^pip install http://\S+/agent/dist/lunasentri_core-\S+\.whl ", command)
    assert command.endswith("lunasentri agent --server http://127.0.0.1:8080")
    assert html.escape("web-<1>") in made.text
    assert 'data-copy="api-key"' in made.text
    assert ingest_works(shared, key)
    machine_id = re.search(r'href="/machines/([^"/]+)">Go to', made.text)
    assert machine_id is not None
    with logged_in(shared, "ulla") as client:
        page = client.get(f"/machines/{machine_id.group(1)}").text
    assert key not in page  # shown once: never again
    assert "env=prod" in page
    assert "role=web" in page
    assert html.escape("web-<1>") in overview.text


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"name": "  ", "labels": ""}, 400, "name: must not be empty"),
        ({"name": "ok-name", "labels": "env"}, 400, "'env' is not a label as name:value"),
        ({"name": "ok-name", "labels": "bad name:x"}, 400, "is not a label as name:value"),
        ({"name": "shared", "labels": ""}, 409, "shared"),
    ],
    ids=["empty-name", "label-without-value", "bad-label-name", "duplicate-name"],
)
def test_a_bad_registration_is_shown_again_with_what_is_wrong(
    shared: Shared, fields: dict[str, str], status: int, message: str
) -> None:
    with logged_in(shared, "admin") as client:
        response = client.post("/machines/new", data=fields)
    assert response.status_code == status, response.text
    error = re.search(r'<p class="error" role="alert">([^<]+)</p>', response.text)
    assert error is not None
    assert message in html.unescape(error.group(1))
    assert "api-key" not in response.text
    assert f'value="{html.escape(fields["labels"])}"' in response.text  # kept for fixing


def test_a_new_user_sees_what_to_do_next(shared: Shared, users: dict[str, str]) -> None:
    with logged_in(shared, "vic") as client:
        page = client.get("/").text
    assert "No machines yet." in page
    assert 'href="/machines/new"' in page
    assert "give an administrator the claim token" in page
    assert 'href="/agents/pending"' not in page  # not theirs to claim
    with logged_in(shared, "admin") as client:
        filtered = client.get("/?name=nothing-is-called-this").text
    assert "No machine matches these filters." in filtered


def test_an_administrator_claims_a_pending_agent(shared: Shared) -> None:
    agent = Agent(shared.server, hostname="edge-<7>")
    assert agent.register().status_code == 202
    claim_path = f"/agents/{agent.agent_id}/claim"
    with logged_in(shared, "admin") as client:
        pending = client.get("/agents/pending")
        wrong = client.post(claim_path, data={"claim_token": "lsc_wrong", "name": "edge"})
        bad = client.post(claim_path, data={"claim_token": agent.token, "name": ""})
        done = client.post(
            claim_path, data={"claim_token": agent.token, "name": "edge", "labels": "site:b"}
        )
        again = client.post(claim_path, data={"claim_token": agent.token, "name": "edge2"})
        unknown = client.post(
            "/agents/no-such-agent/claim", data={"claim_token": agent.token, "name": "x"}
        )
        machine = client.get(done.headers["location"])
    assert pending.status_code == 200
    assert f'id="claim-{agent.agent_id}"' in pending.text
    assert html.escape("edge-<7>") in pending.text
    assert wrong.status_code == 403
    assert "this is not the claim token" in wrong.text
    assert bad.status_code == 400
    assert "name: must not be empty" in bad.text
    assert done.status_code == 303
    assert done.headers["location"].startswith("/machines/")
    assert machine.status_code == 200
    assert "site=b" in machine.text
    assert again.status_code == 409
    assert "is claimed" in again.text
    assert unknown.status_code in (404, 409)
    delivered = agent.poll().json()
    assert delivered["status"] == "claimed"
    assert ingest_works(shared, delivered["api_key"])


def test_only_an_administrator_claims(shared: Shared, users: dict[str, str]) -> None:
    agent = Agent(shared.server)
    assert agent.register().status_code == 202
    with logged_in(shared, "ulla") as client:
        listing = client.get("/agents/pending")
        claimed = client.post(
            f"/agents/{agent.agent_id}/claim", data={"claim_token": agent.token, "name": "mine"}
        )
        overview = client.get("/").text
    assert listing.status_code == 403
    assert "Only an administrator claims agents." in listing.text
    assert agent.agent_id not in listing.text
    assert claimed.status_code == 403
    assert 'href="/agents/pending"' not in overview
    assert agent.poll().json()["status"] == "pending"


def test_labels_are_edited_on_the_settings_page(shared: Shared, users: dict[str, str]) -> None:
    machine_id, _ = register(shared.server, users["ulla"], "labelled")
    with logged_in(shared, "ulla") as client:
        settings = client.get(f"/machines/{machine_id}/settings")
        saved = client.post(f"/machines/{machine_id}/labels", data={"labels": "env:dev, tier:1"})
        after = client.get(saved.headers["location"])
        bad = client.post(f"/machines/{machine_id}/labels", data={"labels": "env:dev, nope"})
        cleared = client.post(f"/machines/{machine_id}/labels", data={"labels": ""})
        page = client.get(f"/machines/{machine_id}").text
    assert settings.status_code == 200
    assert f'href="/machines/{machine_id}/delete"' in settings.text
    assert saved.status_code == 303
    assert "Labels saved." in after.text
    assert 'value="env:dev, tier:1"' in after.text
    assert bad.status_code == 400
    assert "&#39;nope&#39; is not a label as name:value" in bad.text
    assert 'value="env:dev, nope"' in bad.text  # what was typed, to fix
    assert cleared.status_code == 303
    assert "env=dev" not in page


def test_a_rotated_key_is_shown_once_and_a_revoked_key_stops_working(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, old_key = register(shared.server, users["ulla"], "rotating")
    with logged_in(shared, "ulla") as client:
        rotated = client.post(f"/machines/{machine_id}/keys/rotate")
        new_key = shown_secret(rotated.text, "api-key")
        settings = client.get(f"/machines/{machine_id}/settings").text
        key_ids = re.findall(rf"/machines/{machine_id}/keys/([^/]+)/revoke", settings)
        assert len(key_ids) == 2  # the old one still works, in its grace period
        for key_id in key_ids:
            revoked = client.post(f"/machines/{machine_id}/keys/{key_id}/revoke")
            assert revoked.status_code == 303
        unknown = client.post(f"/machines/{machine_id}/keys/no-such-key/revoke")
        after = client.get(f"/machines/{machine_id}/settings").text
    assert rotated.status_code == 201
    assert new_key != old_key
    assert new_key not in settings
    assert unknown.status_code == 404
    assert "no such API key" in unknown.text
    assert "/revoke" not in after
    assert after.count(">revoked<") == 2
    assert not ingest_works(shared, new_key)
    assert not ingest_works(shared, old_key)


def test_deleting_asks_first_then_deletes(shared: Shared, users: dict[str, str]) -> None:
    machine_id, key = register(shared.server, users["ulla"], "doomed")
    with logged_in(shared, "ulla") as client:
        confirm = client.get(f"/machines/{machine_id}/delete")
        assert client.get(f"/machines/{machine_id}").status_code == 200  # asking deletes nothing
        deleted = client.post(f"/machines/{machine_id}/delete")
        gone = client.get(f"/machines/{machine_id}")
        again = client.post(f"/machines/{machine_id}/delete")
    assert confirm.status_code == 200
    assert "Delete doomed?" in confirm.text
    assert f'action="/machines/{machine_id}/delete"' in confirm.text
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/"
    assert gone.status_code == 404
    assert again.status_code == 404
    assert not ingest_works(shared, key)


def test_another_users_machine_is_not_found_for_every_form(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["ulla"], "ullas-own")
    with shared.server.client(users["ulla"]) as api:
        key_id = api.get(f"/api/v1/machines/{machine_id}/keys").json()["items"][0]["id"]
    with logged_in(shared, "vic") as client:
        answers = [
            client.get(f"/machines/{machine_id}/settings"),
            client.get(f"/machines/{machine_id}/delete"),
            client.post(f"/machines/{machine_id}/labels", data={"labels": "x:y"}),
            client.post(f"/machines/{machine_id}/keys/rotate"),
            client.post(f"/machines/{machine_id}/keys/{key_id}/revoke"),
            client.post(f"/machines/{machine_id}/delete"),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.request.url
        assert "ullas-own" not in answer.text
    with shared.server.client(users["ulla"]) as api:
        machine = api.get(f"/api/v1/machines/{machine_id}").json()
    assert machine["labels"] == {}
    assert ingest_works(shared, key)


def test_every_form_refuses_posts_from_another_site(shared: Shared, users: dict[str, str]) -> None:
    machine_id, key = register(shared.server, users["ulla"], "guarded")
    agent = Agent(shared.server)
    assert agent.register().status_code == 202
    with logged_in(shared, "admin") as client:
        token = client.cookies["lunasentri_session"]
    forms = {
        "/machines/new": {"name": "forged"},
        f"/agents/{agent.agent_id}/claim": {"claim_token": agent.token, "name": "forged"},
        f"/machines/{machine_id}/labels": {"labels": "forged:yes"},
        f"/machines/{machine_id}/keys/rotate": {},
        f"/machines/{machine_id}/delete": {},
    }
    forged_headers = ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {})
    for headers in forged_headers:
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                error = refused.json()["error"]
                assert error["code"] == "cross_site"
                assert "may not change anything here" in error["message"] or (
                    "must come with an Origin header" in error["message"]
                )
    # Nothing changed.
    with shared.server.client(shared.admin) as api:
        machine = api.get(f"/api/v1/machines/{machine_id}").json()
        names = [m["name"] for m in api.get("/api/v1/machines").json()["items"]]
    assert machine["labels"] == {}
    assert "forged" not in names
    assert agent.poll().json()["status"] == "pending"
    assert ingest_works(shared, key)


def test_forms_send_a_visitor_without_a_session_to_log_in(shared: Shared) -> None:
    with browser(shared.server) as client:
        for path in ("/machines/new", "/agents/pending", f"/machines/{shared.machine_id}/settings"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=")
        posted = client.post(f"/machines/{shared.machine_id}/delete")
    assert posted.status_code == 303
    assert ingest_works(shared, shared.key)


def test_behind_a_proxy_the_forms_post_and_redirect_under_its_prefix(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, _ = register(shared.server, users["ulla"], "proxied")
    prefix = {"x-forwarded-prefix": "/monitoring"}
    with logged_in(shared, "ulla") as client:
        pages = [
            client.get(path, headers=prefix).text
            for path in ("/machines/new", f"/machines/{machine_id}/settings")
        ]
        saved = client.post(
            f"/machines/{machine_id}/labels", data={"labels": "a:b"}, headers=prefix
        )
    for page in pages:
        targets = re.findall(r'(?:action|href)="([^"]+)"', page)
        assert targets
        assert all(target.startswith("/monitoring/") for target in targets), targets
    assert saved.headers["location"] == f"/monitoring/machines/{machine_id}/settings?saved=labels"


def test_a_form_with_too_many_fields_reads_as_empty(shared: Shared) -> None:
    fields = {f"field{n}": "x" for n in range(20)} | {"name": "too-many"}
    with logged_in(shared, "admin") as client:
        response = client.post("/machines/new", data=fields)
    assert response.status_code == 400
    assert "name: must not be empty" in response.text
