"""The dashboard's channels page over real HTTP: a channel made from a form generated
from the notifier's channel class (secrets as password inputs, never written back,
shown once), a test send and its outcome, the delivery log and *Retry*; each refused
for another user's data, from another site, and without a session."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .alerting_support import wait_for
from .test_dashboard import browser
from .test_dashboard_alerts import error_in, firing
from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user, shared_server

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("ulla", "vic")}


def channels_of(shared: Shared, token: str) -> dict[str, dict[str, Any]]:
    with shared.server.client(token) as api:
        items = api.get("/api/v1/channels").json()["items"]
    return {channel["name"]: channel for channel in items}


def webhook(name: str, **config: str) -> dict[str, str]:
    fields = {"type": "webhook", "name": name, "config.url": "http://127.0.0.1:9/hook"}
    return {**fields, **{f"config.{key}": value for key, value in config.items()}}


def test_the_form_comes_from_the_channel_class_and_secrets_are_shown_once(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "ulla") as client:
        listed = client.get("/channels")
        form = client.get("/channels/new", params={"type": "webhook"})
        telegram = client.get("/channels/new", params={"type": "telegram"})
        made = client.post(
            "/channels/new", data=webhook("hook <1>", secret=SECRET, headers="X-Team: ops")
        )
        after = client.get("/channels")
    assert 'href="/channels" aria-current="page"' in listed.text  # in the navigation
    assert 'href="/channels/new?type=webhook"' in listed.text
    assert 'href="/channels/new?type=telegram"' in listed.text
    assert '<input id="config.url" name="config.url" value="" placeholder="" required>' in form.text
    assert '<input id="config.secret" name="config.secret" type="password"' in form.text
    assert "(optional; generated when left empty)" in form.text
    assert form.text.count("generated when left empty") == 1  # the secret, not the headers
    assert '<textarea id="config.headers" name="config.headers"' in form.text
    assert 'name="config.bot_token" type="password"' in telegram.text
    assert 'type="checkbox" name="config.disable_notification"' in telegram.text
    assert 'inputmode="numeric"' in telegram.text  # message_thread_id
    assert made.status_code == 201, made.text
    assert SECRET in made.text  # this once
    assert "X-Team: ops" in made.text
    stored = channels_of(shared, users["ulla"])["hook <1>"]
    assert stored["type"] == "webhook"
    assert stored["config"]["url"] == "http://127.0.0.1:9/hook"
    assert stored["config"]["secret"] != SECRET  # masked by the API
    assert set(stored["config"]["headers"]) == {"X-Team"}
    assert stored["config"]["headers"]["X-Team"] != "ops"  # masked too
    assert html.escape("hook <1>") in after.text
    assert SECRET not in after.text
    assert "ops" not in after.text


def test_a_generated_secret_is_shown_once(shared: Shared, users: dict[str, str]) -> None:
    with logged_in(shared, "vic") as client:
        made = client.post("/channels/new", data=webhook("generated"))
    assert made.status_code == 201
    shown = re.search(r'<code id="secret-secret">(whsec_[^<]+)</code>', made.text)
    assert shown is not None, made.text
    assert "generated" in channels_of(shared, users["vic"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (webhook("bad url", url="ftp://example.com/x"), "config.url"),
        (webhook("bad secret", secret="short"), "config.secret"),
        (webhook("bad headers", headers="no colon here"), "one 'Name: value' a line"),
        (webhook(""), "name"),
        ({**webhook("no type"), "type": "carrier-pigeon"}, "choose one of the installed"),
        (
            {
                "type": "telegram",
                "name": "tg",
                "config.chat_id": "12345",
                "config.message_thread_id": "first",
            },
            "config.message_thread_id: 'first' is not a whole number",
        ),
    ],
)
def test_a_bad_channel_is_shown_again_without_its_secrets(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str
) -> None:
    before = channels_of(shared, users["vic"])
    typed = {**fields, "config.secret": fields.get("config.secret", "typed-secret-value")}
    with logged_in(shared, "vic") as client:
        answer = client.post("/channels/new", data=typed)
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    assert typed["config.secret"] not in answer.text  # a secret is never written back
    if fields["name"]:
        assert f'value="{html.escape(fields["name"])}"' in answer.text
    assert channels_of(shared, users["vic"]) == before


def test_a_duplicate_name_is_shown_in_the_form(shared: Shared, users: dict[str, str]) -> None:
    with logged_in(shared, "vic") as client:
        assert client.post("/channels/new", data=webhook("twice")).status_code == 201
        again = client.post("/channels/new", data=webhook("twice"))
    assert again.status_code == 409
    assert "twice" in error_in(again.text)


def test_send_test_shows_the_outcome(shared: Shared, users: dict[str, str]) -> None:
    with logged_in(shared, "ulla") as client:
        assert client.post("/channels/new", data=webhook("tested")).status_code == 201
        channel = channels_of(shared, users["ulla"])["tested"]
        answer = client.post(f"/channels/{channel['id']}/test")
    assert answer.status_code == 200
    outcome = answer.text[answer.text.index('id="outcome"') :]
    outcome = outcome[: outcome.index("</section>")]
    # The notifier refuses a loopback address unless the plugin settings allow it.
    assert "Test of tested: failed." in outcome
    assert "loopback" in outcome


def test_test_sends_share_the_apis_limit(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "wes")
    with logged_in(shared, "wes") as client:
        assert client.post("/channels/new", data=webhook("often")).status_code == 201
        channel = channels_of(shared, token)["often"]
        # The burst is 20, refilled by one every 3 s: far fewer than 40 come back meanwhile.
        answers = [client.post(f"/channels/{channel['id']}/test") for _ in range(40)]
    statuses = [answer.status_code for answer in answers]
    assert statuses[:20] == [200] * 20
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert re.search(
        r"Test of often: refused\.</strong> <span>too many test sends; try again in \d+ s",
        refused.text,
    )


def test_the_delivery_log_shows_skipped_deliveries_and_retries_them(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "vic") as client:
        assert client.post("/channels/new", data=webhook("off")).status_code == 201
    channel = channels_of(shared, users["vic"])["off"]
    with shared.server.client(users["vic"]) as api:
        off = api.patch(f"/api/v1/channels/{channel['id']}", json={"enabled": False})
        assert off.status_code == 200, off.text
    firing(shared, users["vic"], "log-box", "log rule")

    def skipped() -> list[dict[str, Any]]:
        with shared.server.client(users["vic"]) as api:
            found: list[dict[str, Any]] = api.get(
                "/api/v1/notifications", params={"channel_id": channel["id"], "state": "skipped"}
            ).json()["items"]
        return found

    delivery = wait_for(skipped, what="a skipped delivery")[0]
    with logged_in(shared, "vic") as client:
        log = client.get("/channels", params={"state": "skipped"})
        dead = client.get("/channels", params={"state": "dead"})
        retried = client.post(f"/notifications/{delivery['id']}/retry")
        shown = client.get(retried.headers["location"])
    table = log.text[log.text.index('id="delivery-log"') :]
    assert "log rule" in table or "log-box" in table
    assert "channel disabled" in table
    assert f'action="/notifications/{delivery["id"]}/retry"' in table
    assert '<option value="skipped" selected>' in log.text
    assert f"/notifications/{delivery['id']}/retry" not in dead.text
    assert retried.status_code == 303
    assert retried.headers["location"] == "/channels?saved=retried#deliveries"
    assert "Delivery queued again." in shown.text
    with shared.server.client(users["vic"]) as api:
        found = api.get("/api/v1/notifications", params={"channel_id": channel["id"]}).json()
    again = next(d for d in found["items"] if d["id"] == delivery["id"])
    # Queued again now; its channel still disabled, it is skipped again.
    assert again["next_attempt_at"] > delivery["next_attempt_at"]


def test_another_users_channels_and_deliveries_are_invisible(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "ulla") as client:
        assert client.post("/channels/new", data=webhook("ullas secret hook")).status_code == 201
    channel = channels_of(shared, users["ulla"])["ullas secret hook"]
    with logged_in(shared, "vic") as client:
        listed = client.get("/channels")
        tested = client.post(f"/channels/{channel['id']}/test")
        retried = client.post("/notifications/no-such-delivery/retry")
    assert "ullas secret hook" not in listed.text
    assert channel["id"] not in listed.text
    assert tested.status_code == 404
    assert retried.status_code == 404
    with logged_in(shared, "admin") as client:
        assert "ullas secret hook" in client.get("/channels").text


def test_every_channel_form_refuses_posts_from_another_site(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "ulla") as client:
        assert client.post("/channels/new", data=webhook("guarded hook")).status_code == 201
        token = client.cookies["lunasentri_session"]
    channel = channels_of(shared, users["ulla"])["guarded hook"]
    forms = {
        "/channels/new": webhook("forged hook"),
        f"/channels/{channel['id']}/test": {},
        "/notifications/x/retry": {},
    }
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    assert "forged hook" not in channels_of(shared, users["ulla"])


def test_the_channel_pages_send_a_visitor_without_a_session_to_log_in(shared: Shared) -> None:
    with browser(shared.server) as client:
        for path in ("/channels", "/channels/new"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        posted = [
            client.post("/channels/new", data=webhook("logged out hook")),
            client.post("/channels/x/test"),
            client.post("/notifications/x/retry"),
        ]
    for answer in posted:
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")
    assert "logged out hook" not in channels_of(shared, shared.admin)
