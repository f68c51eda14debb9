"""The dashboard's alerts and silences pages over real HTTP: the current alerts
(polled by htmx) and acknowledging them, the filtered history, creating and ending
silences; each refused for another user's data, from another site, and without a
session."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from .alerting_support import wait_for
from .test_dashboard import browser
from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user, at, post, register, sample, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("ulla", "vic")}


def firing(shared: Shared, token: str, machine: str, rule: str) -> dict[str, str]:
    """A machine of ``token``'s user whose CPU breaks a new rule; waits for it to fire."""
    machine_id, key = register(shared.server, token, machine)
    with shared.server.client(token) as api:
        body = {
            "name": rule,
            "metric": "cpu.percent",
            "comparison": ">",
            "threshold": 80,
            "scope": {"machine_id": machine_id},
        }
        made = api.post("/api/v1/alert-rules", json=body)
        assert made.status_code == 201, made.text
        rule_id = made.json()["id"]
        ingested = post(shared.server, key, {"samples": [sample(at(0.1), cpu__percent=97.0)]})
        assert ingested.status_code == 200

        def event() -> str | None:
            found = api.get("/api/v1/alert-events", params={"rule_id": rule_id}).json()["items"]
            return found[0]["id"] if found else None

        event_id = wait_for(event, what="the firing event")
    return {"machine_id": machine_id, "rule_id": rule_id, "event_id": event_id, "key": key}


def error_in(page: str) -> str:
    found = re.search(r'<p class="error" role="alert">([^<]+)</p>', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def silences_of(shared: Shared, token: str) -> list[dict[str, Any]]:
    with shared.server.client(token) as api:
        items: list[dict[str, Any]] = api.get("/api/v1/silences").json()["items"]
    return items


def test_the_alerts_page_shows_what_fires_and_acknowledges_it(
    shared: Shared, users: dict[str, str]
) -> None:
    made = firing(shared, users["ulla"], "hot-<a>", "cpu <hot>")
    ack = f"/alerts/events/{made['event_id']}/acknowledge"
    with logged_in(shared, "ulla") as client:
        page = client.get("/alerts")
        part = client.get("/alerts/current", headers={"hx-request": "true"})
        acknowledged = client.post(ack)
        after = client.get("/alerts/current").text
    assert page.status_code == 200
    current = page.text[page.text.index('<section id="current"') : page.text.index("</section>")]
    assert html.escape("hot-<a>") in current
    assert html.escape("cpu <hot>") in current
    assert "firing" in current
    assert "97" in current
    assert f'action="{ack}"' in current
    assert 'href="/alerts" aria-current="page"' in page.text  # in the navigation
    assert part.text.startswith('<section id="current" hx-get="/alerts/current"')
    assert 'hx-trigger="every 5s"' in part.text
    assert "<html" not in part.text
    assert acknowledged.status_code == 303
    assert acknowledged.headers["location"] == "/alerts"
    assert f'action="{ack}"' not in after
    assert "acknowledged" in after
    with shared.server.client(users["ulla"]) as api:
        event = api.get("/api/v1/alert-events", params={"rule_id": made["rule_id"]}).json()
    assert event["items"][0]["acknowledged_at"] is not None


def test_acknowledging_from_htmx_answers_with_the_current_alerts(
    shared: Shared, users: dict[str, str]
) -> None:
    made = firing(shared, users["ulla"], "htmx-ack", "cpu htmx")
    with logged_in(shared, "ulla") as client:
        answer = client.post(
            f"/alerts/events/{made['event_id']}/acknowledge", headers={"hx-request": "true"}
        )
        again = client.post(f"/alerts/events/{made['event_id']}/acknowledge")
        missing = client.post("/alerts/events/no-such-event/acknowledge")
    assert answer.status_code == 200
    assert answer.text.startswith('<section id="current"')
    assert "htmx-ack" in answer.text
    assert again.status_code == 303  # acknowledging again keeps the first, as the API
    assert missing.status_code == 404
    assert "No such alert event" in missing.text or "alert event" in missing.text


def test_the_history_filters_and_shows_more(shared: Shared, users: dict[str, str]) -> None:
    one = firing(shared, users["vic"], "hist-one", "hist rule one")
    two = firing(shared, users["vic"], "hist-two", "hist rule two")
    with logged_in(shared, "vic") as client:
        everything = client.get("/alerts").text
        by_machine = client.get("/alerts", params={"machine": one["machine_id"]}).text
        by_rule = client.get("/alerts", params={"rule": two["rule_id"], "range": "1h"}).text
        resolved = client.get("/alerts", params={"state": "resolved", "range": "7d"}).text
        first = client.get("/alerts", params={"limit": "1", "range": "all"}).text
        odd = client.get("/alerts", params={"machine": "nope", "limit": "x", "range": "x"})

    def history(page: str) -> str:
        return page[page.index("<h2>History</h2>") :]

    assert "hist-one" in history(everything)
    assert "hist-two" in history(everything)
    assert "hist-one" in history(by_machine)
    assert "hist-two" not in history(by_machine).split("<table")[-1]
    assert f'<option value="{one["machine_id"]}" selected>' in by_machine
    assert "hist rule two" in history(by_rule).split("<table")[-1]
    assert "hist rule one" not in history(by_rule).split("<table")[-1]
    assert "No alert events match these filters." in resolved
    table = history(first).split("<table")[-1]
    assert table.count("<tr>") == 2  # the header and one event
    assert "Show more" in first
    assert "limit=51" in first
    assert odd.status_code == 200  # unknown filters read as none, as an old bookmark would
    assert "hist-one" in history(odd.text)


def test_silences_are_created_listed_and_ended(shared: Shared, users: dict[str, str]) -> None:
    machine_id, _ = register(shared.server, users["ulla"], "quiet-box")
    with logged_in(shared, "ulla") as client:
        machine_page = client.get(f"/machines/{machine_id}").text
        form = client.get("/silences", params={"machine": machine_id}).text
        made = client.post(
            "/silences",
            data={"machine_id": machine_id, "duration": "15m", "comment": "kernel <upgrade>"},
        )
        labelled = client.post(
            "/silences", data={"labels": "env:prod", "duration": "custom", "custom": "90m"}
        )
        listed = client.get("/silences").text
    assert f'href="/silences?machine={machine_id}#new"' in machine_page
    assert f'<option value="{machine_id}" selected>quiet-box</option>' in form
    assert made.status_code == 303
    assert made.headers["location"] == "/silences?saved=created"
    assert labelled.status_code == 303
    found = {s["comment"]: s for s in silences_of(shared, users["ulla"])}
    machine_silence = found["kernel <upgrade>"]
    assert machine_silence["machine_id"] == machine_id
    assert machine_silence["active"]
    assert span(machine_silence) == timedelta(minutes=15)
    assert span(found[""]) == timedelta(minutes=90)
    assert found[""]["labels"] == {"env": "prod"}
    assert html.escape("kernel <upgrade>") in listed
    assert "quiet-box" in listed
    end = f"/silences/{machine_silence['id']}/end"
    assert f'action="{end}"' in listed
    with logged_in(shared, "ulla") as client:
        ended = client.post(end)
        after = client.get(ended.headers["location"]).text
    assert ended.status_code == 303
    assert ended.headers["location"] == "/silences?saved=ended"
    assert "Silence ended." in after
    assert f'action="{end}"' not in after
    assert not {s["id"]: s for s in silences_of(shared, users["ulla"])}[machine_silence["id"]][
        "active"
    ]


def test_a_rule_can_be_silenced(shared: Shared, users: dict[str, str]) -> None:
    made = firing(shared, users["ulla"], "rule-silenced", "cpu rule silenced")
    with logged_in(shared, "ulla") as client:
        answer = client.post("/silences", data={"rule_id": made["rule_id"], "duration": "1d"})
        page = client.get("/silences").text
    assert answer.status_code == 303
    silence = [s for s in silences_of(shared, users["ulla"]) if s["rule_id"] == made["rule_id"]]
    assert len(silence) == 1
    assert span(silence[0]) == timedelta(days=1)
    assert "rule cpu rule silenced" in page


def span(silence: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"duration": "1h"}, "a silence needs a machine_id, labels or a rule_id"),
        ({"labels": "env", "duration": "1h"}, "'env' is not a label as name:value"),
        ({"labels": "a:b", "duration": "custom", "custom": "soon"}, "'soon' is not a duration"),
        ({"labels": "a:b", "duration": "custom", "custom": "100d"}, "at most 90 days"),
        ({"labels": "a:b", "duration": "2y"}, "choose a duration"),
        ({"machine_id": "no-such-machine", "duration": "1h"}, "no machine with id"),
    ],
    ids=["nothing-chosen", "bad-label", "bad-custom", "too-long", "bad-choice", "unknown-machine"],
)
def test_a_bad_silence_is_shown_again_with_what_is_wrong(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str
) -> None:
    before = len(silences_of(shared, users["vic"]))
    with logged_in(shared, "vic") as client:
        answer = client.post("/silences", data={**fields, "comment": "kept <here>"})
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    assert f'value="{html.escape("kept <here>")}"' in answer.text
    assert len(silences_of(shared, users["vic"])) == before


def test_another_users_alerts_and_silences_are_invisible(
    shared: Shared, users: dict[str, str]
) -> None:
    made = firing(shared, users["ulla"], "ullas-secret-box", "ullas secret rule")
    with logged_in(shared, "ulla") as client:
        fields = {"machine_id": made["machine_id"], "duration": "1h", "comment": "ulla-only"}
        assert client.post("/silences", data=fields).status_code == 303
    silence_id = next(
        s["id"] for s in silences_of(shared, users["ulla"]) if s["comment"] == "ulla-only"
    )
    with logged_in(shared, "vic") as client:
        pages = [
            client.get("/alerts"),
            client.get("/alerts", params={"machine": made["machine_id"]}),
            client.get("/alerts/current"),
            client.get("/silences"),
        ]
        ack = client.post(f"/alerts/events/{made['event_id']}/acknowledge")
        end = client.post(f"/silences/{silence_id}/end")
        borrowed = client.post(
            "/silences", data={"machine_id": made["machine_id"], "duration": "1h"}
        )
        borrowed_rule = client.post(
            "/silences", data={"rule_id": made["rule_id"], "duration": "1h"}
        )
    for page in pages:
        assert page.status_code == 200
        assert "ullas-secret" not in page.text
        assert "ulla-only" not in page.text
        assert made["machine_id"] not in page.text
    assert ack.status_code == 404
    assert end.status_code == 404
    assert borrowed.status_code == 400
    assert "no machine with id" in error_in(borrowed.text)
    assert borrowed_rule.status_code == 400
    assert "no alert rule with id" in error_in(borrowed_rule.text)
    with shared.server.client(users["ulla"]) as api:
        event = api.get("/api/v1/alert-events", params={"rule_id": made["rule_id"]}).json()
        silence = api.get(f"/api/v1/silences/{silence_id}").json()
    assert event["items"][0]["acknowledged_at"] is None
    assert silence["active"]
    with logged_in(shared, "admin") as client:
        everyone = client.get("/alerts").text
    assert "ullas-secret-box" in everyone  # an administrator sees every machine's


def test_every_alert_and_silence_form_refuses_posts_from_another_site(
    shared: Shared, users: dict[str, str]
) -> None:
    made = firing(shared, users["ulla"], "guarded-alerts", "cpu guarded")
    with logged_in(shared, "ulla") as client:
        fields = {"labels": "guard:yes", "duration": "1h", "comment": "guarded"}
        assert client.post("/silences", data=fields).status_code == 303
        token = client.cookies["lunasentri_session"]
    silence = next(s for s in silences_of(shared, users["ulla"]) if s["comment"] == "guarded")
    forms = {
        "/silences": {"machine_id": made["machine_id"], "duration": "1h", "comment": "forged"},
        f"/silences/{silence['id']}/end": {},
        f"/alerts/events/{made['event_id']}/acknowledge": {},
    }
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    after = silences_of(shared, users["ulla"])
    assert "forged" not in [s["comment"] for s in after]
    assert next(s for s in after if s["id"] == silence["id"])["active"]
    with shared.server.client(users["ulla"]) as api:
        event = api.get("/api/v1/alert-events", params={"rule_id": made["rule_id"]}).json()
    assert event["items"][0]["acknowledged_at"] is None


def test_alerts_and_silences_send_a_visitor_without_a_session_to_log_in(
    shared: Shared,
) -> None:
    with browser(shared.server) as client:
        for path in ("/alerts", "/silences", "/alerts/current"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        polled = client.get("/alerts/current", headers={"hx-request": "true"})
        posted = [
            client.post("/silences", data={"labels": "logged:out", "duration": "1h"}),
            client.post("/silences/x/end"),
            client.post("/alerts/events/x/acknowledge"),
        ]
    assert polled.headers["hx-redirect"].startswith("/login?next=")
    for answer in posted:
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")
    # An administrator sees every silence: none was made.
    assert {"logged": "out"} not in [s["labels"] for s in silences_of(shared, shared.admin)]


def test_behind_a_proxy_the_pages_poll_post_and_redirect_under_its_prefix(
    shared: Shared, users: dict[str, str]
) -> None:
    made = firing(shared, users["vic"], "proxied-alerts", "cpu proxied")
    prefix = {"x-forwarded-prefix": "/monitoring"}
    with logged_in(shared, "vic") as client:
        alerts = client.get("/alerts", headers=prefix).text
        silences = client.get("/silences", headers=prefix).text
        acknowledged = client.post(f"/alerts/events/{made['event_id']}/acknowledge", headers=prefix)
        created = client.post(
            "/silences", data={"labels": "proxied:yes", "duration": "1h"}, headers=prefix
        )
    assert 'hx-get="/monitoring/alerts/current"' in alerts
    assert f'action="/monitoring/alerts/events/{made["event_id"]}/acknowledge"' in alerts
    assert 'href="/monitoring/silences"' in alerts
    assert 'action="/monitoring/silences"' in silences
    assert acknowledged.headers["location"] == "/monitoring/alerts"
    assert created.headers["location"] == "/monitoring/silences?saved=created"
