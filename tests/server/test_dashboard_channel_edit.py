"""Editing, enabling, disabling and deleting a notification channel in the dashboard,
over real HTTP: the form is filled in except for the secrets, a secret left blank is
kept (unless the destination changes), mistakes are shown in the form; another user's
channel is not found, and posts from another site or without a session are refused."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .test_dashboard import browser
from .test_dashboard_alerts import error_in
from .test_dashboard_channels import SECRET, channels_of, webhook
from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user, read_storage, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    return {name: add_user(shared.server, shared.admin, name) for name in ("xena", "yann")}


def stored_config(shared: Shared, channel_id: str) -> dict[str, Any]:
    """The channel's config as stored (secrets unmasked), read from the storage."""
    for storage in read_storage(shared.server):
        return dict(storage.state.get_channel(channel_id).config)
    raise AssertionError("no storage")


def make(shared: Shared, token: str, user: str, name: str, **config: str) -> dict[str, Any]:
    with logged_in(shared, user) as client:
        made = client.post("/channels/new", data=webhook(name, **config))
    assert made.status_code == 201, made.text
    return channels_of(shared, token)[name]


def test_the_edit_form_is_filled_in_except_for_the_secrets(
    shared: Shared, users: dict[str, str]
) -> None:
    channel = make(shared, users["xena"], "xena", "filled", secret=SECRET, headers="X-Key: k1")
    with logged_in(shared, "xena") as client:
        listed = client.get("/channels")
        form = client.get(f"/channels/{channel['id']}")
    assert f'href="/channels/{channel["id"]}">Edit</a>' in listed.text
    assert form.status_code == 200
    assert f'action="/channels/{channel["id"]}"' in form.text
    assert 'name="name" value="filled"' in form.text
    assert 'name="config.url" value="http://127.0.0.1:9/hook"' in form.text
    assert "the stored one is kept" in form.text
    assert SECRET not in form.text
    assert "k1" not in form.text
    assert '<textarea id="config.headers" name="config.headers" rows="3"></textarea>' in form.text


def test_a_blank_secret_is_kept_and_a_typed_one_replaces_it(
    shared: Shared, users: dict[str, str]
) -> None:
    channel = make(shared, users["xena"], "xena", "kept", secret=SECRET, headers="X-Key: k1")
    changed = {"name": "kept renamed", "config.url": "http://127.0.0.1:9/hook"}
    new_secret = "whsec_" + "TkVXTkVXTkVXTkVXTkVXTkVXTkVXTkVXTkVXTkVX"
    with logged_in(shared, "xena") as client:
        saved = client.post(f"/channels/{channel['id']}", data={**changed, "type": "webhook"})
        shown = client.get(saved.headers["location"])
        kept = stored_config(shared, channel["id"])
        replaced = client.post(
            f"/channels/{channel['id']}",
            data={**changed, "config.secret": new_secret, "config.headers": "X-Key: k2"},
        )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == "/channels?saved=updated"
    assert "Channel saved." in shown.text
    assert "kept renamed" in channels_of(shared, users["xena"])
    assert kept["secret"] == SECRET
    assert kept["headers"] == {"X-Key": "k1"}
    assert replaced.status_code == 303, replaced.text
    after = stored_config(shared, channel["id"])
    assert after["secret"] == new_secret
    assert after["headers"] == {"X-Key": "k2"}


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        # A new destination does not take the stored secrets along.
        ({"config.url": "http://127.0.0.1:9/elsewhere"}, 400, "give it again"),
        ({"config.url": "ftp://example.com/x"}, 400, "config.url"),
        ({"config.headers": "no colon here"}, 400, "one 'Name: value' a line"),
        ({"name": ""}, 400, "name"),
        ({"name": "taken"}, 409, "taken"),
    ],
)
def test_a_bad_edit_is_shown_again_and_changes_nothing(
    shared: Shared, users: dict[str, str], fields: dict[str, str], status: int, message: str
) -> None:
    channels = channels_of(shared, users["yann"])
    if "taken" not in channels:
        make(shared, users["yann"], "yann", "taken")
    if "edited" not in channels:
        make(shared, users["yann"], "yann", "edited", secret=SECRET)
    channel = channels_of(shared, users["yann"])["edited"]
    before = stored_config(shared, channel["id"])
    typed = {"name": "edited", "config.url": "http://127.0.0.1:9/hook", **fields}
    with logged_in(shared, "yann") as client:
        answer = client.post(f"/channels/{channel['id']}", data={**typed, "config.secret": ""})
        with_secret = client.post(
            f"/channels/{channel['id']}", data={**typed, "config.secret": "typed-secret-value"}
        )
    assert answer.status_code == status, answer.text
    assert message in error_in(answer.text)
    assert f'action="/channels/{channel["id"]}"' in answer.text
    if typed["name"]:
        assert f'value="{html.escape(typed["name"])}"' in answer.text
    assert "typed-secret-value" not in with_secret.text  # a secret is never written back
    assert stored_config(shared, channel["id"]) == before
    assert channels_of(shared, users["yann"])["edited"]["name"] == "edited"


def test_a_channel_is_disabled_enabled_and_deleted_after_asking(
    shared: Shared, users: dict[str, str]
) -> None:
    channel = make(shared, users["xena"], "xena", "switched")
    path = f"/channels/{channel['id']}"
    with logged_in(shared, "xena") as client:
        off = client.post(f"{path}/enabled", data={"enabled": "false"})
        off_page = client.get(off.headers["location"])
        disabled = channels_of(shared, users["xena"])["switched"]
        on = client.post(f"{path}/enabled", data={"enabled": "true"})
        neither = client.post(f"{path}/enabled", data={"enabled": "maybe"})
        enabled = channels_of(shared, users["xena"])["switched"]
        asked = client.get(f"{path}/delete")
        deleted = client.post(f"{path}/delete")
        deleted_page = client.get(deleted.headers["location"])
        again = client.get(path)
    assert off.headers["location"] == "/channels?saved=disabled"
    assert "Channel disabled." in off_page.text
    assert f'action="{path}/enabled"><input type="hidden" name="enabled" value="true">' in (
        off_page.text
    )
    assert disabled["enabled"] is False
    assert on.headers["location"] == "/channels?saved=enabled"
    assert neither.status_code == 400
    assert enabled["enabled"] is True
    assert "Delete the channel switched?" in asked.text
    assert f'action="{path}/delete"' in asked.text
    assert deleted.headers["location"] == "/channels?saved=deleted"
    assert "Channel deleted." in deleted_page.text
    assert again.status_code == 404
    assert "switched" not in channels_of(shared, users["xena"])


def test_another_users_channel_cannot_be_edited_switched_or_deleted(
    shared: Shared, users: dict[str, str]
) -> None:
    channel = make(shared, users["xena"], "xena", "xenas own")
    path = f"/channels/{channel['id']}"
    with logged_in(shared, "yann") as client:
        answers = [
            client.get(path),
            client.post(path, data={"name": "stolen", "config.url": "http://127.0.0.1:9/x"}),
            client.post(f"{path}/enabled", data={"enabled": "false"}),
            client.get(f"{path}/delete"),
            client.post(f"{path}/delete"),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.request.url
    after = channels_of(shared, users["xena"])["xenas own"]
    assert after == channel


def test_channel_changes_are_refused_from_another_site_and_without_a_session(
    shared: Shared, users: dict[str, str]
) -> None:
    channel = make(shared, users["xena"], "xena", "guarded")
    path = f"/channels/{channel['id']}"
    forms = {
        path: {"name": "forged", "config.url": "http://127.0.0.1:9/hook"},
        f"{path}/enabled": {"enabled": "false"},
        f"{path}/delete": {},
    }
    with logged_in(shared, "xena") as client:
        token = client.cookies["lunasentri_session"]
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for form_path, fields in forms.items():
                refused = other.post(form_path, data=fields)
                assert refused.status_code == 403, (form_path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    with browser(shared.server) as anonymous:
        for form_path, fields in forms.items():
            answer = anonymous.post(form_path, data=fields)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/login?next=")
        for page in (path, f"{path}/delete"):
            assert anonymous.get(page).status_code == 303
    assert channels_of(shared, users["xena"])["guarded"] == channel
