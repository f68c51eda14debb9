"""The dashboard's rules page over real HTTP: listing, creating and editing alert rules
(with the API's checks and messages), enabling and disabling, deleting after asking,
the preview of what a rule matches now; each refused for another user's rule, from
another site, and without a session."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .test_dashboard import browser
from .test_dashboard_alerts import error_in
from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user, at, post, register, sample, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("ulla", "vic")}


def rules_of(shared: Shared, token: str) -> dict[str, dict[str, Any]]:
    with shared.server.client(token) as api:
        items = api.get("/api/v1/alert-rules").json()["items"]
    return {rule["name"]: rule for rule in items}


def form(**changes: str) -> dict[str, str]:
    fields = {
        "name": "cpu busy",
        "metric": "cpu.percent",
        "comparison": ">",
        "threshold": "90",
        "for_duration": "0",
        "machine_id": "",
        "labels": "",
        "severity": "warning",
    }
    return {**fields, **changes}


def made_rule(shared: Shared, users: dict[str, str], username: str, name: str) -> str:
    """A rule made through the page; its id as the API lists it."""
    with logged_in(shared, username) as client:
        answer = client.post("/rules", data=form(name=name))
    assert answer.status_code == 303, answer.text
    return str(rules_of(shared, users[username])[name]["id"])


def test_a_rule_is_created_listed_edited_and_previewed(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["ulla"], "db-<1>")
    with shared.server.client(users["ulla"]) as api:
        labelled = api.patch(f"/api/v1/machines/{machine_id}", json={"labels": {"env": "prod"}})
    assert labelled.status_code == 200, labelled.text
    other_id, other_key = register(shared.server, users["ulla"], "web-quiet")
    for k, cpu in ((key, 95.0), (other_key, 5.0)):
        assert (
            post(shared.server, k, {"samples": [sample(at(0.1), cpu__percent=cpu)]}).status_code
            == 200
        )
    with logged_in(shared, "ulla") as client:
        empty = client.get("/rules")
        made = client.post(
            "/rules",
            data=form(name="cpu <hot>", for_duration="5m", labels="env:prod", severity="critical"),
        )
        listed = client.get(made.headers["location"])
        forged = client.get("/rules", params={"saved": "hacked. Call 555"})
        rule = rules_of(shared, users["ulla"])["cpu <hot>"]
        edit = client.get(f"/rules/{rule['id']}")
        changed = client.post(
            f"/rules/{rule['id']}", data=form(name="cpu <hot>", threshold="3", for_duration="60")
        )
        after = client.get(changed.headers["location"])
    assert empty.status_code == 200
    assert 'href="/rules" aria-current="page"' in empty.text  # in the navigation
    assert made.status_code == 303
    assert made.headers["location"] == "/rules?saved=created"
    assert rule["metric"] == "cpu.percent"
    assert rule["comparison"] == ">"
    assert rule["threshold"] == 90
    assert rule["for_duration"] == 300
    assert rule["scope"] == {"machine_id": None, "labels": {"env": "prod"}}
    assert rule["severity"] == "critical"
    assert rule["enabled"] is True
    table = listed.text[listed.text.index('<table class="reflow" id="rules">') :]
    assert html.escape("cpu <hot>") in table
    assert "cpu.percent &gt; 90" in table
    assert '<span class="label">env=prod</span>' in table
    assert "Rule created." in listed.text
    # Only the page's own words (not "555" alone: a random id may hold it).
    assert "hacked" not in forged.text
    assert "Call 555" not in forged.text
    # The preview: the labelled machine only, its value breaking the condition.
    preview = edit.text[edit.text.index('id="preview"') : edit.text.index("<h2>Edit</h2>")]
    assert html.escape("db-<1>") in preview
    assert "web-quiet" not in preview
    assert "95" in preview
    assert "breaks it" in preview
    assert 'value="300"' in edit.text
    assert 'value="env:prod"' in edit.text
    assert changed.status_code == 303
    assert changed.headers["location"] == f"/rules/{rule['id']}?saved=updated"
    now = rules_of(shared, users["ulla"])["cpu <hot>"]
    assert (now["threshold"], now["for_duration"], now["scope"]["labels"]) == (3, 60, {})
    assert now["severity"] == "warning"
    preview = after.text[after.text.index('id="preview"') : after.text.index("<h2>Edit</h2>")]
    assert "web-quiet" in preview  # every machine of the owner now
    assert preview.count("breaks it") == 2
    assert "Rule updated." in after.text
    assert f'href="/machines/{other_id}"' in preview


def test_a_rule_is_disabled_enabled_and_deleted_after_asking(
    shared: Shared, users: dict[str, str]
) -> None:
    rule_id = made_rule(shared, users, "vic", "toggled")
    with logged_in(shared, "vic") as client:
        off = client.post(f"/rules/{rule_id}/enabled", data={"enabled": "false"})
        disabled = rules_of(shared, users["vic"])["toggled"]["enabled"]
        listed = client.get(off.headers["location"]).text
        on = client.post(f"/rules/{rule_id}/enabled", data={"enabled": "true"})
        enabled = rules_of(shared, users["vic"])["toggled"]["enabled"]
        odd = client.post(f"/rules/{rule_id}/enabled", data={"enabled": "maybe"})
        unchanged = rules_of(shared, users["vic"])["toggled"]["enabled"]
        ask = client.get(f"/rules/{rule_id}/delete")
        still = "toggled" in rules_of(shared, users["vic"])
        deleted = client.post(f"/rules/{rule_id}/delete")
        gone = client.get(f"/rules/{rule_id}")
    assert off.status_code == 303
    assert off.headers["location"] == "/rules?saved=disabled"
    assert disabled is False
    assert "Rule disabled." in listed
    assert '<input type="hidden" name="enabled" value="true"><button type="submit">Enable' in listed
    assert on.status_code == 303
    assert enabled is True
    assert odd.status_code == 400
    assert unchanged is True
    assert ask.status_code == 200
    assert f'action="/rules/{rule_id}/delete"' in ask.text
    assert still  # asking deletes nothing
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/rules?saved=deleted"
    assert "toggled" not in rules_of(shared, users["vic"])
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "name"),
        ({"metric": "no such metric!"}, "is not a metric name"),
        ({"threshold": "lots"}, "threshold: 'lots' is not a number"),
        ({"threshold": "nan"}, "threshold: must be a finite number"),
        ({"comparison": "~"}, "comparison: choose one of"),
        ({"severity": "dire"}, "severity: choose one of"),
        ({"for_duration": "8d"}, "for_duration: must be 0 to 604800 seconds"),
        ({"for_duration": "soon"}, "'soon' is not a duration"),
        ({"labels": "no-colon"}, "is not a label as name:value"),
        ({"machine_id": "no-such-machine"}, "no machine with id 'no-such-machine'"),
    ],
)
def test_a_bad_rule_is_shown_again_with_what_is_wrong(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str
) -> None:
    before = rules_of(shared, users["vic"])
    typed = form(name="typed <here>", metric="mem.percent")
    typed.update(fields)
    with logged_in(shared, "vic") as client:
        answer = client.post("/rules", data=typed)
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    if "metric" not in fields:
        assert f'value="{html.escape(typed["metric"])}"' in answer.text
    if fields != {"name": ""}:
        assert f'value="{html.escape("typed <here>")}"' in answer.text
    assert rules_of(shared, users["vic"]) == before


def test_a_bad_edit_is_shown_again_and_changes_nothing(
    shared: Shared, users: dict[str, str]
) -> None:
    rule_id = made_rule(shared, users, "vic", "kept as is")
    with logged_in(shared, "vic") as client:
        answer = client.post(f"/rules/{rule_id}", data=form(name="kept as is", threshold="inf"))
    assert answer.status_code == 400
    assert "threshold: must be a finite number" in error_in(answer.text)
    assert 'value="inf"' in answer.text
    assert "<h1>kept as is</h1>" in answer.text
    assert rules_of(shared, users["vic"])["kept as is"]["threshold"] == 90


def test_another_users_rules_are_invisible_and_untouchable(
    shared: Shared, users: dict[str, str]
) -> None:
    rule_id = made_rule(shared, users, "ulla", "ullas secret rule")
    machine_id, _ = register(shared.server, users["ulla"], "ullas-secret-box")
    with logged_in(shared, "vic") as client:
        listed = client.get("/rules")
        answers = [
            client.get(f"/rules/{rule_id}"),
            client.post(f"/rules/{rule_id}", data=form(name="stolen")),
            client.post(f"/rules/{rule_id}/enabled", data={"enabled": "false"}),
            client.get(f"/rules/{rule_id}/delete"),
            client.post(f"/rules/{rule_id}/delete"),
        ]
        borrowed = client.post("/rules", data=form(name="borrowed", machine_id=machine_id))
    assert listed.status_code == 200
    assert "ullas secret rule" not in listed.text
    assert machine_id not in listed.text
    for answer in answers:
        assert answer.status_code == 404
        assert "ullas secret rule" not in answer.text
    assert borrowed.status_code == 400
    assert f"no machine with id {machine_id!r}" in error_in(borrowed.text)
    kept = rules_of(shared, users["ulla"])["ullas secret rule"]
    assert kept["enabled"] is True
    assert kept["id"] == rule_id
    assert "borrowed" not in rules_of(shared, users["vic"])
    with logged_in(shared, "admin") as client:
        everyone = client.get("/rules").text
    assert "ullas secret rule" in everyone  # an administrator sees every rule


def test_every_rule_form_refuses_posts_from_another_site(
    shared: Shared, users: dict[str, str]
) -> None:
    rule_id = made_rule(shared, users, "ulla", "guarded rule")
    with logged_in(shared, "ulla") as client:
        token = client.cookies["lunasentri_session"]
    forms = {
        "/rules": form(name="forged"),
        f"/rules/{rule_id}": form(name="forged edit"),
        f"/rules/{rule_id}/enabled": {"enabled": "false"},
        f"/rules/{rule_id}/delete": {},
    }
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    after = rules_of(shared, users["ulla"])
    assert "forged" not in after
    assert "forged edit" not in after
    assert after["guarded rule"]["enabled"] is True


def test_the_rules_pages_send_a_visitor_without_a_session_to_log_in(shared: Shared) -> None:
    with browser(shared.server) as client:
        for path in ("/rules", "/rules/some-id", "/rules/some-id/delete"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        posted = [
            client.post("/rules", data=form(name="logged out")),
            client.post("/rules/x", data=form(name="logged out")),
            client.post("/rules/x/enabled", data={"enabled": "false"}),
            client.post("/rules/x/delete"),
        ]
    for answer in posted:
        assert answer.status_code == 303
        assert re.match(r"/login\?next=", answer.headers["location"])
    assert "logged out" not in rules_of(shared, shared.admin)
