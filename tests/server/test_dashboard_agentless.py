"""The dashboard's agentless pages over real HTTP: credential profiles (the password
write-only), discovery profiles with a run followed to its end, devices, monitors
with their last poll outcome; forms refused with the field named and what was typed
kept; every page and form refused for another user's record, from another site, and
without a session.

Discovery runs scan loopback addresses only (127.0.0.0/8): a WS-Management test
server on its own loopback address, found and identified by the real wmi plugin.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentless.door import PASSWORD as DOOR_PASSWORD
from agentless.door import USERNAME as DOOR_USERNAME
from agentless.door import door_plugins
from markupsafe import escape

from lunasentri_core.config import Settings
from lunasentri_core.testing import WsmanServer
from lunasentri_core.testing.wsman_data import HOST

from .alerting_support import unique, wait_for
from .conftest import ADMIN_PASSWORD, LiveServer, free_port
from .test_dashboard import browser
from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user

WINDOWS = "127.74.16.2"
"""The loopback address the discovery test's Windows host listens on (port 5985)."""
WIN_USER, WIN_PASSWORD = "monitor", "a windows password <7>"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    settings = Settings.load(
        environ={},
        data_dir=tmp_path_factory.mktemp("agentless-pages"),
        admin_password=ADMIN_PASSWORD,
        server={"host": "127.0.0.1"},
    )
    server = LiveServer(settings, port=free_port(), plugins=door_plugins())
    server.start()
    try:
        yield Shared(server, server.login(), "", "")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    """Session tokens of two ordinary users (made once for the module)."""
    return {name: add_user(shared.server, shared.admin, name) for name in ("ana", "ben")}


# ---------------------------------------------------------------------------- helpers


def items(shared: Shared, token: str, path: str) -> list[dict[str, Any]]:
    with shared.server.client(token) as api:
        answer = api.get(path)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["items"]
    return found


def by_name(shared: Shared, token: str, path: str) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items(shared, token, path)}


def api_post(shared: Shared, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with shared.server.client(token) as api:
        answer = api.post(path, json=body)
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


def door_profile(shared: Shared, token: str, name: str | None = None) -> dict[str, Any]:
    body = {"name": name or unique("door"), "username": DOOR_USERNAME, "password": DOOR_PASSWORD}
    return api_post(shared, token, "/api/v1/credential-profiles", body)


def door_monitor(shared: Shared, token: str, **given: Any) -> dict[str, Any]:
    """A monitor of a new device through the door collector (nothing on the network)."""
    profile = door_profile(shared, token)
    device = api_post(
        shared, token, "/api/v1/devices", {"address": f"{unique('host')}.example.test"}
    )
    body = {
        "device_id": device["id"],
        "credential_profile_id": profile["id"],
        "collector": "door",
        "interval": 3600,
        **given,
    }
    return api_post(shared, token, "/api/v1/monitors", body)


def error_in(page: str) -> str:
    found = re.search(r'<p class="error" role="alert"[^>]*>([^<]+)</p>', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def marked(page: str, field: str) -> bool:
    """Whether the form marks ``field`` as the one the refusal is about."""
    element = re.search(rf'<(?:input|select|textarea)[^>]* name="{field}"[^>]*>', page)
    assert element is not None, (field, page)
    return 'aria-invalid="true"' in element.group(0)


def credential_form(**changes: str) -> dict[str, str]:
    fields = {
        "name": "corp",
        "transport": "ntlm",
        "username": "svc-monitor",
        "domain": "CORP",
        "password": "pw <secret> 1",
        "https": "true",
        "port": "",
        "verify_tls": "true",
        "ca_path": "",
        "cert_path": "",
        "key_path": "",
    }
    return {k: v for k, v in {**fields, **changes}.items() if v is not None}


def discovery_form(**changes: str) -> dict[str, str]:
    fields = {
        "name": "lab",
        "targets": "127.74.17.0/30",
        "credential_profile_id": "",
        "ports": "5985, 5986",
        "concurrency": "16",
        "timeout": "0.5",
        "collector": "wmi",
    }
    return {**fields, **changes}


def monitor_form(**changes: str) -> dict[str, str]:
    fields = {
        "device_id": "",
        "address": "",
        "credential_profile_id": "",
        "collector": "door",
        "interval": "3600",
        "options": "{}",
        "enabled": "true",
    }
    return {**fields, **changes}


# ---------------------------------------------------------------------------- pages


def test_every_agentless_page_renders_in_the_navigation(
    shared: Shared, users: dict[str, str]
) -> None:
    with logged_in(shared, "ana") as client:
        pages = {
            path: client.get(path)
            for path in (
                "/agentless",
                "/agentless/monitors/new",
                "/agentless/devices",
                "/agentless/discovery",
                "/agentless/credentials",
            )
        }
    for path, page in pages.items():
        assert page.status_code == 200, path
        assert 'href="/agentless" aria-current="page">Agentless</a>' in page.text, path
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert "<script>" not in page.text  # no inline script
    assert "No monitors yet." in pages["/agentless"].text
    assert 'href="/agentless/devices" aria-current="page"' in pages["/agentless/devices"].text
    # Without a credential profile, the monitor form says to make one first.
    assert "create one</a> first" in pages["/agentless/monitors/new"].text


# ---------------------------------------------------------------------------- credentials


def test_a_credential_profile_is_created_edited_and_deleted_its_password_never_shown(
    shared: Shared, users: dict[str, str]
) -> None:
    secret, other = "pw <secret> 1", "second <secret> 2"
    with logged_in(shared, "ana") as client:
        made = client.post("/agentless/credentials", data=credential_form(name="corp <a>"))
        listed = client.get(made.headers["location"])
        profile = by_name(shared, users["ana"], "/api/v1/credential-profiles")["corp <a>"]
        page = client.get(f"/agentless/credentials/{profile['id']}")
        kept = client.post(
            f"/agentless/credentials/{profile['id']}",
            data=credential_form(name="corp <a>", username="svc-2", password="", https=""),
        )
        after_keep = by_name(shared, users["ana"], "/api/v1/credential-profiles")["corp <a>"]
        replaced = client.post(
            f"/agentless/credentials/{profile['id']}",
            data=credential_form(name="corp <a>", password=other),
        )
        replaced_page = client.get(replaced.headers["location"])
        cleared = client.post(
            f"/agentless/credentials/{profile['id']}",
            data=credential_form(
                name="corp <a>", transport="kerberos", password="", clear_password="true"
            ),
        )
        after_clear = by_name(shared, users["ana"], "/api/v1/credential-profiles")["corp <a>"]
        ask = client.get(f"/agentless/credentials/{profile['id']}/delete")
        deleted = client.post(f"/agentless/credentials/{profile['id']}/delete")
        gone = client.get(f"/agentless/credentials/{profile['id']}")
    assert made.status_code == 303, made.text
    assert made.headers["location"] == "/agentless/credentials?saved=created"
    assert "Credential profile created." in listed.text
    assert html.escape("corp <a>") in listed.text
    assert (profile["transport"], profile["username"], profile["domain"]) == (
        "ntlm",
        "svc-monitor",
        "CORP",
    )
    assert (profile["https"], profile["port"], profile["has_password"]) == (True, 5986, True)
    assert 'value="svc-monitor"' in page.text
    assert 'type="password"' in page.text
    assert kept.status_code == 303
    # An empty password keeps the stored one; an unticked box is false.
    assert (after_keep["username"], after_keep["has_password"]) == ("svc-2", True)
    assert (after_keep["https"], after_keep["port"]) == (False, 5985)
    assert after_keep["version"] == profile["version"] + 1
    assert "Credential profile updated." in replaced_page.text
    assert 'name="clear_password"' in replaced_page.text
    assert cleared.status_code == 303, cleared.text
    assert (after_clear["transport"], after_clear["has_password"]) == ("kerberos", False)
    assert ask.status_code == 200
    assert f'action="/agentless/credentials/{profile["id"]}/delete"' in ask.text
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/agentless/credentials?saved=deleted"
    assert gone.status_code == 404
    for answer in (made, listed, page, kept, replaced, replaced_page, cleared, ask):
        for word in (secret, other, html.escape(secret), html.escape(other)):
            assert word not in answer.text


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        ({"name": ""}, "name: must not be empty", "name"),
        ({"username": ""}, "username: the ntlm transport needs a user name", "username"),
        ({"password": ""}, "password: the ntlm transport needs a password", "password"),
        ({"transport": "telnet"}, "transport: choose one of", "transport"),
        ({"port": "x"}, "port: 'x' is not a whole number", "port"),
        ({"port": "70000"}, "port: 70000 is not a TCP port", "port"),
        ({"username": "u" * 257}, "username: must be at most 256 characters", "username"),
        ({"password": "p" * 1025}, "password: must be at most 1024 characters", "password"),
        (
            {"transport": "certificate", "https": "", "username": ""},
            "https: the certificate transport works over HTTPS only",
            "https",
        ),
    ],
)
def test_a_bad_credential_profile_is_shown_again_with_the_field_marked(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str, field: str
) -> None:
    before = by_name(shared, users["ben"], "/api/v1/credential-profiles")
    typed = {**credential_form(name="typed <here>", domain="DOM <1>"), **fields}
    with logged_in(shared, "ben") as client:
        answer = client.post("/agentless/credentials", data=typed)
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    assert marked(answer.text, field)
    assert f'value="{html.escape("DOM <1>")}"' in answer.text  # nothing typed is lost
    if field != "name":
        assert f'value="{html.escape("typed <here>")}"' in answer.text
    assert "secret" not in answer.text  # but the password is never written back
    assert by_name(shared, users["ben"], "/api/v1/credential-profiles") == before


def test_a_credential_profile_in_use_is_kept_and_the_page_says_by_what(
    shared: Shared, users: dict[str, str]
) -> None:
    monitor = door_monitor(shared, users["ana"])
    profile_id = monitor["credential_profile_id"]
    with logged_in(shared, "ana") as client:
        refused = client.post(f"/agentless/credentials/{profile_id}/delete")
        device_refused = client.post(f"/agentless/devices/{monitor['device_id']}/delete")
    assert refused.status_code == 409
    assert "in use by 1 monitors" in error_in(refused.text)
    assert monitor["id"] in refused.text
    assert device_refused.status_code == 409
    assert "in use by 1 monitors" in error_in(device_refused.text)
    assert profile_id in {
        p["id"] for p in items(shared, users["ana"], "/api/v1/credential-profiles")
    }


# ---------------------------------------------------------------------------- discovery


def test_a_discovery_profile_is_created_edited_and_deleted(
    shared: Shared, users: dict[str, str]
) -> None:
    creds = door_profile(shared, users["ana"], name="door for discovery")
    with logged_in(shared, "ana") as client:
        form = client.get("/agentless/discovery")
        made = client.post(
            "/agentless/discovery",
            data=discovery_form(
                name="lab <1>",
                targets="127.74.17.0/30\n127.74.18.5-9, 127.74.19.1",
                credential_profile_id=creds["id"],
            ),
        )
        listed = client.get(made.headers["location"])
        profile = by_name(shared, users["ana"], "/api/v1/discovery-profiles")["lab <1>"]
        page = client.get(f"/agentless/discovery/{profile['id']}")
        changed = client.post(
            f"/agentless/discovery/{profile['id']}",
            data=discovery_form(name="lab <1>", ports="5985", timeout="2"),
        )
        after = by_name(shared, users["ana"], "/api/v1/discovery-profiles")["lab <1>"]
        ask = client.get(f"/agentless/discovery/{profile['id']}/delete")
        deleted = client.post(f"/agentless/discovery/{profile['id']}/delete")
        gone = client.get(f"/agentless/discovery/{profile['id']}")
    assert 'value="135, 5985, 5986"' in form.text  # the API's defaults
    assert made.status_code == 303, made.text
    assert "Discovery profile created." in listed.text
    assert html.escape("lab <1>") in listed.text
    assert profile["targets"] == ["127.74.17.0/30", "127.74.18.5-9", "127.74.19.1"]
    assert (profile["ports"], profile["concurrency"], profile["timeout"]) == ([5985, 5986], 16, 0.5)
    assert profile["credential_profile_id"] == creds["id"]
    assert "Not run yet." in page.text
    assert f'<option value="{creds["id"]}" selected>' in page.text
    assert changed.status_code == 303
    assert changed.headers["location"] == f"/agentless/discovery/{profile['id']}?saved=updated"
    assert (after["ports"], after["timeout"], after["credential_profile_id"]) == ([5985], 2, None)
    assert ask.status_code == 200
    assert "the devices it found stay" in ask.text
    assert deleted.status_code == 303
    assert gone.status_code == 404


def test_a_discovery_profile_may_have_many_targets(shared: Shared, users: dict[str, str]) -> None:
    """Beyond the few kilobytes of the other forms: 200 host names (never scanned here)."""
    names = [f"host-{n:03d}.a-rather-long-domain.example.test" for n in range(200)]
    with logged_in(shared, "ben") as client:
        made = client.post(
            "/agentless/discovery", data=discovery_form(name="many", targets="\n".join(names))
        )
    assert made.status_code == 303, made.text
    assert by_name(shared, users["ben"], "/api/v1/discovery-profiles")["many"]["targets"] == names


def test_a_run_deleted_with_its_profile_stops_its_page_asking(
    shared: Shared, users: dict[str, str]
) -> None:
    profile = api_post(
        shared,
        users["ben"],
        "/api/v1/discovery-profiles",
        # A loopback address nothing listens on: the scan finds nothing.
        {"name": unique("gone"), "targets": ["127.74.22.1"], "ports": [5985]},
    )
    with shared.server.client(users["ben"]) as api:
        run = api.post(f"/api/v1/discovery-profiles/{profile['id']}/run")
        assert run.status_code == 202, run.text
        assert api.delete(f"/api/v1/discovery-profiles/{profile['id']}").status_code == 204
    run_id = run.json()["id"]
    with logged_in(shared, "ben") as client:
        part = client.get(f"/agentless/runs/{run_id}/progress", headers={"hx-request": "true"})
        page = client.get(f"/agentless/runs/{run_id}")
    assert part.status_code == 200
    assert "This run is gone" in part.text
    assert "hx-trigger" not in part.text
    assert page.status_code == 404


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        ({"name": ""}, "name: must not be empty", "name"),
        ({"targets": ""}, "targets", "targets"),
        ({"targets": "127.74.17.1\nno such target!"}, "targets[1]", "targets"),
        ({"ports": "5985, http"}, "ports: 'http' is not a port number", "ports"),
        ({"ports": "0"}, "ports", "ports"),
        ({"concurrency": "many"}, "concurrency: 'many' is not a whole number", "concurrency"),
        ({"timeout": "0"}, "timeout", "timeout"),
        ({"timeout": "nan"}, "timeout: must be a finite number of seconds", "timeout"),
        (
            {"credential_profile_id": "nope"},
            "no credential profile with id 'nope'",
            "credential_profile_id",
        ),
    ],
)
def test_a_bad_discovery_profile_is_shown_again_with_the_field_marked(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str, field: str
) -> None:
    before = by_name(shared, users["ben"], "/api/v1/discovery-profiles")
    typed = discovery_form(name="typed <d>", targets="127.74.20.1\n127.74.20.9")
    typed.update(fields)
    with logged_in(shared, "ben") as client:
        answer = client.post("/agentless/discovery", data=typed)
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    assert marked(answer.text, field)
    if field != "name":
        assert f'value="{html.escape("typed <d>")}"' in answer.text
    if field != "targets":
        assert "127.74.20.1\n127.74.20.9</textarea>" in answer.text
    assert by_name(shared, users["ben"], "/api/v1/discovery-profiles") == before


def test_a_run_the_service_refuses_is_not_started_and_the_page_says_why(
    shared: Shared, users: dict[str, str]
) -> None:
    creds = door_profile(shared, users["ben"])
    large = api_post(
        shared,
        users["ben"],
        "/api/v1/discovery-profiles",
        {"name": unique("large"), "targets": ["127.75.0.0/19"]},  # 8,190 hosts
    )
    blind = api_post(
        shared,
        users["ben"],
        "/api/v1/discovery-profiles",
        {
            "name": unique("blind"),
            "targets": ["127.75.64.1"],
            "credential_profile_id": creds["id"],
            "collector": "plain",  # cannot identify hosts
        },
    )
    with logged_in(shared, "ben") as client:
        too_large = client.post(f"/agentless/discovery/{large['id']}/run")
        unidentified = client.post(f"/agentless/discovery/{blind['id']}/run")
    assert too_large.status_code == 400
    assert "confirm_large" in error_in(too_large.text)
    assert "8190 hosts" in error_in(too_large.text)
    assert 'name="confirm_large"' in too_large.text
    assert unidentified.status_code == 400
    assert "collector: collector 'plain' cannot identify hosts" in error_in(unidentified.text)
    for profile in (large, blind):
        runs = items(shared, users["ben"], f"/api/v1/discovery-profiles/{profile['id']}/runs")
        assert runs == []


def progress_of(client: httpx.Client, run_id: str) -> str:
    answer = client.get(f"/agentless/runs/{run_id}/progress", headers={"hx-request": "true"})
    assert answer.status_code == 200, answer.text
    assert answer.text.lstrip().startswith('<section id="run-progress"')  # the part alone
    return answer.text


def progress_until(client: httpx.Client, run_id: str, text: str) -> str:
    """The run's progress part once it says ``text`` (asked as the page's htmx does)."""
    found: list[str] = []

    def says() -> bool:
        found[:] = [progress_of(client, run_id)]
        return text in found[0]

    wait_for(says, what=f"progress saying {text!r}")
    return found[0]


def test_a_discovery_run_shows_its_progress_then_its_device_and_a_monitor_of_it_polls(
    shared: Shared, users: dict[str, str]
) -> None:
    pytest.importorskip("lunasentri_wmi")
    with WsmanServer({WIN_USER: WIN_PASSWORD}, host=WINDOWS, port=5985) as windows:
        creds = api_post(
            shared,
            users["ben"],
            "/api/v1/credential-profiles",
            {
                "name": "lab windows",
                "transport": "basic",
                "username": WIN_USER,
                "password": WIN_PASSWORD,
                "https": False,
            },
        )
        with logged_in(shared, "ben") as client:
            made = client.post(
                "/agentless/discovery",
                data=discovery_form(
                    name="loopback lab",
                    targets=WINDOWS,
                    ports="5985",
                    credential_profile_id=creds["id"],
                    timeout="2",
                ),
            )
            assert made.status_code == 303, made.text
            profile = by_name(shared, users["ben"], "/api/v1/discovery-profiles")["loopback lab"]
            windows.hang_requests()  # identification waits: the run stays under way
            started = client.post(f"/agentless/discovery/{profile['id']}/run")
            assert started.status_code == 303, started.text
            run_id = started.headers["location"].rsplit("/", 1)[1]
            page = client.get(started.headers["location"])
            again = client.post(f"/agentless/discovery/{profile['id']}/run")
            held = progress_until(client, run_id, "scanned 1 of 1 host(s), found 1")
            windows.hang_requests(False)
            done = progress_until(client, run_id, 'data-state="done"')
            device = next(
                d for d in items(shared, users["ben"], "/api/v1/devices") if d["address"] == WINDOWS
            )
            new = client.get(f"/agentless/monitors/new?device={device['id']}")
            created = client.post(
                "/agentless/monitors/new",
                data=monitor_form(
                    device_id=device["id"], credential_profile_id=creds["id"], collector="wmi"
                ),
            )
            before = client.get("/agentless")
            monitor = next(
                m
                for m in items(shared, users["ben"], "/api/v1/monitors")
                if m["device_id"] == device["id"]
            )
            polled = client.post(f"/agentless/monitors/{monitor['id']}/poll")
            one = client.get(f"/agentless/monitors/{monitor['id']}")
            windows.users[WIN_USER] = "changed on the host"
            failed = client.post(f"/agentless/monitors/{monitor['id']}/poll")
    assert page.status_code == 200
    assert 'data-state="running"' in page.text
    assert f'hx-get="/agentless/runs/{run_id}/progress" hx-trigger="every 1s"' in page.text
    assert again.status_code == 409  # one run of a profile at a time
    assert "already" in error_in(again.text) or "running" in error_in(again.text)
    assert 'data-state="running"' in held
    assert "hx-trigger" in held  # still asking for itself
    assert "hx-trigger" not in done  # finished: it stops asking
    assert "Done:</strong>" in done
    assert HOST in done.upper()
    assert "Microsoft Windows Server 2008 R2 Datacenter" in done
    assert f'href="/agentless/monitors/new?device={device["id"]}"' in done
    assert device["address"] == WINDOWS
    assert f'<option value="{device["id"]}" selected>' in new.text
    assert created.status_code == 303, created.text
    row = before.text[before.text.index(f'id="monitor-{monitor["id"]}"') :]
    assert "pending" in row[: row.index("</tr>")]
    assert "never" in row[: row.index("</tr>")]
    assert polled.status_code == 200
    assert "Poll of the wmi monitor: ok." in polled.text
    row = polled.text[polled.text.index(f'id="monitor-{monitor["id"]}"') :]
    row = row[: row.index("</tr>")]
    assert '<span class="poll-state poll-ok">ok</span>' in row
    assert "UTC (" in row  # the time of the last successful poll
    assert '<dd><span class="poll-state poll-ok">ok</span>' in one.text
    assert "Poll of the wmi monitor: failed." in failed.text
    row = failed.text[failed.text.index(f'id="monitor-{monitor["id"]}"') :]
    row = row[: row.index("</tr>")]
    assert "poll-failing" in row
    assert "authentication: " in html.unescape(row)
    assert "(1 failed in a row)" in row


# ---------------------------------------------------------------------------- monitors


def test_a_monitor_is_created_for_a_new_address_changed_switched_polled_and_deleted(
    shared: Shared, users: dict[str, str]
) -> None:
    creds = door_profile(shared, users["ana"], name="door for monitors")
    address = f"{unique('srv')}.example.test"
    with logged_in(shared, "ana") as client:
        made = client.post(
            "/agentless/monitors/new",
            data=monitor_form(address=address, credential_profile_id=creds["id"]),
        )
        assert made.status_code == 303, error_in(made.text)
        monitor = next(
            m
            for m in items(shared, users["ana"], "/api/v1/monitors")
            if m["credential_profile_id"] == creds["id"]
        )
        page = client.get(f"/agentless/monitors/{monitor['id']}")
        changed = client.post(
            f"/agentless/monitors/{monitor['id']}",
            data={"credential_profile_id": creds["id"], "interval": "120", "options": '{"a": 1}'},
        )
        after = next(
            m for m in items(shared, users["ana"], "/api/v1/monitors") if m["id"] == monitor["id"]
        )
        off = client.post(f"/agentless/monitors/{monitor['id']}/enabled", data={"enabled": "false"})
        listed_off = client.get("/agentless")
        on = client.post(f"/agentless/monitors/{monitor['id']}/enabled", data={"enabled": "true"})
        odd = client.post(f"/agentless/monitors/{monitor['id']}/enabled", data={"enabled": "?"})
        polled = client.post(f"/agentless/monitors/{monitor['id']}/poll")
        devices = client.get("/agentless/devices")
        ask = client.get(f"/agentless/monitors/{monitor['id']}/delete")
        deleted = client.post(f"/agentless/monitors/{monitor['id']}/delete")
        gone = client.get(f"/agentless/monitors/{monitor['id']}")
    assert made.status_code == 303, made.text
    assert made.headers["location"] == f"/agentless?saved=created#monitor-{monitor['id']}"
    device = next(
        d for d in items(shared, users["ana"], "/api/v1/devices") if d["id"] == monitor["device_id"]
    )
    assert device["address"] == address
    assert (monitor["collector"], monitor["interval"], monitor["enabled"]) == ("door", 3600, True)
    assert page.status_code == 200
    assert 'value="3600"' in page.text
    assert '<dd><span class="poll-state poll-pending">pending</span>' in page.text
    assert changed.status_code == 303
    assert (after["interval"], after["options"]) == (120, {"a": 1})
    assert off.status_code == 303
    assert off.headers["location"] == f"/agentless?saved=disabled#monitor-{monitor['id']}"
    row = listed_off.text[listed_off.text.index(f'id="monitor-{monitor["id"]}"') :]
    assert "poll-disabled" in row[: row.index("</tr>")]
    assert 'name="enabled" value="true"><button type="submit">Enable' in row
    assert on.status_code == 303
    assert odd.status_code == 400
    assert "Poll of the door monitor: ok." in polled.text
    assert f'id="device-{device["id"]}"' in devices.text
    assert 'door</a> <span class="poll-state poll-ok">ok</span>' in devices.text
    assert "the device&#39;s machine goes with it" in ask.text
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/agentless?saved=deleted"
    assert gone.status_code == 404
    assert monitor["id"] not in {m["id"] for m in items(shared, users["ana"], "/api/v1/monitors")}


def test_a_device_is_added_by_address_and_deleted_after_asking(
    shared: Shared, users: dict[str, str]
) -> None:
    address = f"{unique('added')}.example.test"
    with logged_in(shared, "ana") as client:
        added = client.post("/agentless/devices", data={"address": address})
        listed = client.get(added.headers["location"])
        again = client.post("/agentless/devices", data={"address": address})
        bad = client.post("/agentless/devices", data={"address": "not <a> host"})
        device = next(
            d for d in items(shared, users["ana"], "/api/v1/devices") if d["address"] == address
        )
        ask = client.get(f"/agentless/devices/{device['id']}/delete")
        deleted = client.post(f"/agentless/devices/{device['id']}/delete")
    assert added.status_code == 303
    assert added.headers["location"] == "/agentless/devices?saved=added"
    assert "Device added." in listed.text
    assert f'href="/agentless/monitors/new?device={device["id"]}">Create monitor' in listed.text
    assert "not tried" in listed.text
    assert again.status_code == 409
    assert "already" in error_in(again.text) or address in error_in(again.text)
    assert f'value="{address}"' in again.text
    assert bad.status_code == 400
    assert "address" in error_in(bad.text)
    assert marked(bad.text, "address")
    assert f'value="{html.escape("not <a> host")}"' in bad.text
    assert ask.status_code == 200
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/agentless/devices?saved=deleted"
    assert address not in {d["address"] for d in items(shared, users["ana"], "/api/v1/devices")}


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        ({"address": ""}, "device_id: choose a device, or give a new address", "device_id"),
        (
            {"credential_profile_id": ""},
            "credential_profile_id: choose a credential profile",
            "credential_profile_id",
        ),
        ({"collector": "nope"}, "collector: no collector plugin 'nope'", "collector"),
        ({"interval": "1"}, "interval: must be between 5 seconds and 1 day", "interval"),
        ({"interval": "soon"}, "interval: 'soon' is not a number", "interval"),
        ({"options": "[1]"}, "options: must be a JSON object", "options"),
        ({"options": "{nope"}, "options: not JSON", "options"),
        ({"address": "not a host!"}, "address", "address"),
    ],
)
def test_a_bad_monitor_is_shown_again_and_adds_nothing(
    shared: Shared, users: dict[str, str], fields: dict[str, str], message: str, field: str
) -> None:
    creds = door_profile(shared, users["ben"])
    address = f"{unique('typed')}.example.test"
    typed = monitor_form(address=address, credential_profile_id=creds["id"], options='{"k": "<v>"}')
    typed.update(fields)
    devices_before = items(shared, users["ben"], "/api/v1/devices")
    monitors_before = items(shared, users["ben"], "/api/v1/monitors")
    with logged_in(shared, "ben") as client:
        answer = client.post("/agentless/monitors/new", data=typed)
    assert answer.status_code == 400, answer.text
    assert message in error_in(answer.text)
    assert marked(answer.text, field)
    if "address" not in fields:
        assert f'value="{address}"' in answer.text
    if "options" not in fields:
        assert str(escape('{"k": "<v>"}')) in answer.text
    assert items(shared, users["ben"], "/api/v1/devices") == devices_before
    assert items(shared, users["ben"], "/api/v1/monitors") == monitors_before


def test_a_bad_monitor_edit_is_shown_again_and_changes_nothing(
    shared: Shared, users: dict[str, str]
) -> None:
    monitor = door_monitor(shared, users["ben"])
    with logged_in(shared, "ben") as client:
        answer = client.post(
            f"/agentless/monitors/{monitor['id']}",
            data={
                "credential_profile_id": monitor["credential_profile_id"],
                "interval": "2",
                "options": '{"x": 2}',
            },
        )
    assert answer.status_code == 400
    assert "interval: must be between" in error_in(answer.text)
    assert marked(answer.text, "interval")
    assert 'value="2"' in answer.text
    assert "{&#34;x&#34;: 2}" in answer.text
    after = next(
        m for m in items(shared, users["ben"], "/api/v1/monitors") if m["id"] == monitor["id"]
    )
    assert (after["interval"], after["options"]) == (3600, {})


# ---------------------------------------------------------------------------- access


def test_another_users_records_are_invisible_and_untouchable(
    shared: Shared, users: dict[str, str]
) -> None:
    monitor = door_monitor(shared, users["ana"])
    creds_id = monitor["credential_profile_id"]
    discovery = api_post(
        shared,
        users["ana"],
        "/api/v1/discovery-profiles",
        {"name": unique("anas lab"), "targets": ["127.74.21.1"]},
    )
    run_free = {"name": "x", "targets": "127.74.21.2"}
    with logged_in(shared, "ben") as client:
        lists = [
            client.get(p)
            for p in (
                "/agentless",
                "/agentless/devices",
                "/agentless/discovery",
                "/agentless/credentials",
            )
        ]
        answers = {
            "monitor": client.get(f"/agentless/monitors/{monitor['id']}"),
            "monitor edit": client.post(
                f"/agentless/monitors/{monitor['id']}", data={"interval": "60", "options": "{}"}
            ),
            "monitor switch": client.post(
                f"/agentless/monitors/{monitor['id']}/enabled", data={"enabled": "false"}
            ),
            "monitor poll": client.post(f"/agentless/monitors/{monitor['id']}/poll"),
            "monitor ask": client.get(f"/agentless/monitors/{monitor['id']}/delete"),
            "monitor delete": client.post(f"/agentless/monitors/{monitor['id']}/delete"),
            "device ask": client.get(f"/agentless/devices/{monitor['device_id']}/delete"),
            "device delete": client.post(f"/agentless/devices/{monitor['device_id']}/delete"),
            "credential": client.get(f"/agentless/credentials/{creds_id}"),
            "credential edit": client.post(
                f"/agentless/credentials/{creds_id}", data=credential_form()
            ),
            "credential ask": client.get(f"/agentless/credentials/{creds_id}/delete"),
            "credential delete": client.post(f"/agentless/credentials/{creds_id}/delete"),
            "discovery": client.get(f"/agentless/discovery/{discovery['id']}"),
            "discovery edit": client.post(
                f"/agentless/discovery/{discovery['id']}", data=discovery_form(**run_free)
            ),
            "discovery run": client.post(f"/agentless/discovery/{discovery['id']}/run"),
            "discovery ask": client.get(f"/agentless/discovery/{discovery['id']}/delete"),
            "discovery delete": client.post(f"/agentless/discovery/{discovery['id']}/delete"),
            "run": client.get("/agentless/runs/no-such-run"),
        }
        borrowed = client.post(
            "/agentless/monitors/new",
            data=monitor_form(device_id=monitor["device_id"], credential_profile_id=creds_id),
        )
    for page in lists:
        assert page.status_code == 200
        for secret in (monitor["id"], monitor["device_id"], creds_id, discovery["id"]):
            assert secret not in page.text
    for what, answer in answers.items():
        assert answer.status_code == 404, what
    assert borrowed.status_code == 400
    assert marked(borrowed.text, "credential_profile_id")
    still = items(shared, users["ana"], "/api/v1/monitors")
    assert {m["id"]: m["enabled"] for m in still}[monitor["id"]] is True
    assert discovery["id"] in {
        p["id"] for p in items(shared, users["ana"], "/api/v1/discovery-profiles")
    }
    assert items(shared, users["ana"], "/api/v1/discovery-profiles") != []
    with logged_in(shared, "admin") as client:
        everyone = client.get("/agentless").text
        theirs = client.get(f"/agentless/monitors/{monitor['id']}")
    assert f'id="monitor-{monitor["id"]}"' in everyone  # an administrator sees all
    assert theirs.status_code == 200


def test_every_agentless_form_refuses_posts_from_another_site(
    shared: Shared, users: dict[str, str]
) -> None:
    monitor = door_monitor(shared, users["ana"])
    creds_id = monitor["credential_profile_id"]
    with logged_in(shared, "ana") as client:
        token = client.cookies["lunasentri_session"]
    forms = {
        "/agentless/credentials": credential_form(name="forged"),
        f"/agentless/credentials/{creds_id}": credential_form(name="forged"),
        f"/agentless/credentials/{creds_id}/delete": {},
        "/agentless/discovery": discovery_form(name="forged"),
        "/agentless/monitors/new": monitor_form(address="forged.example.test"),
        f"/agentless/monitors/{monitor['id']}/enabled": {"enabled": "false"},
        f"/agentless/monitors/{monitor['id']}/poll": {},
        f"/agentless/monitors/{monitor['id']}/delete": {},
        "/agentless/devices": {"address": "forged.example.test"},
    }
    for headers in ({"origin": "https://evil.example"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for path, fields in forms.items():
                refused = other.post(path, data=fields)
                assert refused.status_code == 403, (path, headers)
                assert refused.json()["error"]["code"] == "cross_site"
    assert "forged" not in by_name(shared, users["ana"], "/api/v1/credential-profiles")
    kept = {m["id"]: m for m in items(shared, users["ana"], "/api/v1/monitors")}[monitor["id"]]
    assert (kept["enabled"], kept["last_attempted"]) == (True, None)


def test_the_agentless_pages_send_a_visitor_without_a_session_to_log_in(shared: Shared) -> None:
    with browser(shared.server) as client:
        for path in ("/agentless", "/agentless/credentials", "/agentless/runs/x"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        fragment = client.get("/agentless/runs/x/progress", headers={"hx-request": "true"})
        posted = client.post("/agentless/credentials", data=credential_form(name="logged out"))
    # htmx polling after the session ended: the whole page goes to the login.
    assert fragment.headers["hx-redirect"] == "/login?next=%2F"
    assert posted.status_code == 303
    assert "logged out" not in by_name(shared, shared.admin, "/api/v1/credential-profiles")
