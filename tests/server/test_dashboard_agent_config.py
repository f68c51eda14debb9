"""The machine settings page's agent configuration form, over real HTTP: prefilled with
the effective configuration, saved as the API's PUT saves it (audited, a new version and
ETag the agent then gets), refused with a clear field error, reset to the server's
defaults, scoped to the machine's owner and refused from another site."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest

from .test_dashboard_forms import logged_in
from .test_ingest import Shared, add_user, register, shared_server

CONFIG = "/api/v1/agent/config"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(
        tmp_path_factory, collect={"interval": "15s", "collectors": ["psutil"]}
    )


@pytest.fixture(scope="module")
def users(shared: Shared) -> dict[str, str]:
    return {name: add_user(shared.server, shared.admin, name) for name in ("wes", "xia")}


def offered(page: str) -> dict[str, bool]:
    """The collectors' checkboxes of the page: name → checked."""
    boxes = re.findall(r'<input type="checkbox" name="collectors" value="([^"]+)"([^>]*)>', page)
    return {html.unescape(name): " checked" in rest for name, rest in boxes}


def interval_shown(page: str) -> str:
    found = re.search(
        r'<input id="interval" name="interval" inputmode="decimal" value="([^"]*)"', page
    )
    assert found is not None, page
    return html.unescape(found.group(1))


def agent_config(shared: Shared, key: str, etag: str | None = None) -> httpx.Response:
    headers = {"if-none-match": etag} if etag else {}
    with shared.server.client(key) as agent:
        return agent.get(CONFIG, headers=headers)


def test_the_form_shows_the_effective_config_and_saving_it_reaches_the_agent(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["wes"], "configured")
    before = agent_config(shared, key)
    assert before.json()["version"] == 0
    with logged_in(shared, "wes") as client:
        page = client.get(f"/machines/{machine_id}/settings")
        assert page.status_code == 200
        assert "Nothing stored: the agent runs the server's defaults." in page.text
        assert interval_shown(page.text) == "15"
        boxes = offered(page.text)
        assert boxes["psutil"] is True
        assert not any(checked for name, checked in boxes.items() if name != "psutil")
        other = sorted(name for name in boxes if name != "psutil")
        chosen = ["psutil", *other[:1]]
        saved = client.post(
            f"/machines/{machine_id}/agent-config",
            data={"interval": "30", "collectors": chosen, "action": "save"},
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == f"/machines/{machine_id}/settings?saved=agent-config"
        after = client.get(saved.headers["location"])
    assert "Agent configuration saved" in after.text
    assert "Version 1, set " in after.text
    assert interval_shown(after.text) == "30"
    assert {name for name, checked in offered(after.text).items() if checked} == set(chosen)

    # The agent sees the new version: its old ETag no longer matches.
    changed = agent_config(shared, key, before.headers["etag"])
    assert changed.status_code == 200
    assert changed.headers["etag"] != before.headers["etag"]
    assert changed.json() | {"updated_at": None} == {
        "machine_id": machine_id,
        "interval": 30.0,
        "collectors": chosen,
        "labels": {},
        "version": 1,
        "updated_at": None,
    }
    assert agent_config(shared, key, changed.headers["etag"]).status_code == 304

    # Audited as the API's PUT is, with the dashboard's caller.
    with shared.server.client(shared.admin) as api:
        entries = api.get(
            "/api/v1/audit", params={"action": "agent_config.update", "target_id": machine_id}
        ).json()["items"]
    assert len(entries) == 1
    assert entries[0]["target_type"] == "machine"
    assert entries[0]["client"] == "127.0.0.1"
    assert entries[0]["detail"] == {
        "version": 1,
        "interval": 30.0,
        "collectors": chosen,
        "labels": {},
    }


def test_mistakes_are_refused_with_a_field_error_and_change_nothing(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["wes"], "mistaken")
    before = agent_config(shared, key)
    path = f"/machines/{machine_id}/agent-config"
    with logged_in(shared, "wes") as client:
        unknown = client.post(
            path, data={"interval": "10", "collectors": ["psutil", "no-such<collector>"]}
        )
        not_a_number = client.post(path, data={"interval": "soon", "collectors": ["psutil"]})
        too_short = client.post(path, data={"interval": "0.5", "collectors": ["psutil"]})
        none_chosen = client.post(path, data={"interval": "10"})
    assert unknown.status_code == 400
    assert (
        "collectors: &#39;no-such&lt;collector&gt;&#39; is not a collector this server knows ("
        in (unknown.text)
    )
    assert 'aria-invalid="true" aria-describedby="agent-config-problem"' in unknown.text
    assert interval_shown(unknown.text) == "10", "what was typed is shown again"
    assert offered(unknown.text)["psutil"] is True
    assert "no-such" not in str(offered(unknown.text))
    assert not_a_number.status_code == 400
    assert "interval: must be a number of seconds" in not_a_number.text
    assert re.search(r'id="interval"[^>]*aria-invalid="true"', not_a_number.text)
    assert interval_shown(not_a_number.text) == "soon"
    assert too_short.status_code == 400
    assert "interval: must be 1 to 86400 seconds" in too_short.text
    assert none_chosen.status_code == 400
    assert "collectors: must name 1 to 32 collectors" in none_chosen.text
    assert not any(offered(none_chosen.text).values())
    after = agent_config(shared, key, before.headers["etag"])
    assert after.status_code == 304, "nothing was stored"


def test_using_the_server_defaults_stores_them_as_a_new_version(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["wes"], "reset")
    with shared.server.client(users["wes"]) as api:
        put = api.put(
            f"/api/v1/machines/{machine_id}/agent-config",
            json={"interval": 60, "collectors": ["psutil", "agent-only"], "labels": {"k": "v"}},
        )
    assert put.status_code == 200, put.text
    with logged_in(shared, "wes") as client:
        page = client.get(f"/machines/{machine_id}/settings").text
        # A collector only the stored configuration names is offered, so saving keeps it.
        assert offered(page)["agent-only"] is True
        kept = client.post(
            f"/machines/{machine_id}/agent-config",
            data={"interval": "45", "collectors": ["psutil", "agent-only"]},
        )
        assert kept.status_code == 303
        reset = client.post(
            f"/machines/{machine_id}/agent-config", data={"action": "default", "interval": "x"}
        )
        assert reset.status_code == 303
        assert reset.headers["location"].endswith("?saved=agent-default")
        page = client.get(reset.headers["location"]).text
    assert "The server's defaults are stored" in page
    assert interval_shown(page) == "15"
    config = agent_config(shared, key).json()
    assert (config["interval"], config["collectors"], config["version"]) == (15.0, ["psutil"], 3)
    assert config["labels"] == {"k": "v"}, "the agent's labels are kept"


def test_another_users_machine_is_not_found_and_unchanged(
    shared: Shared, users: dict[str, str]
) -> None:
    machine_id, key = register(shared.server, users["xia"], "private")
    before = agent_config(shared, key)
    with logged_in(shared, "wes") as client:
        page = client.get(f"/machines/{machine_id}/settings")
        post = client.post(
            f"/machines/{machine_id}/agent-config",
            data={"interval": "30", "collectors": ["psutil"]},
        )
        missing = client.post("/machines/no-such-machine/agent-config", data={"interval": "30"})
    assert page.status_code == post.status_code == missing.status_code == 404
    assert agent_config(shared, key, before.headers["etag"]).status_code == 304
    with logged_in(shared, "admin") as client:  # an administrator manages any machine
        done = client.post(
            f"/machines/{machine_id}/agent-config",
            data={"interval": "20", "collectors": ["psutil"]},
        )
    assert done.status_code == 303
    assert agent_config(shared, key).json()["interval"] == 20.0


def test_the_form_refuses_posts_from_another_site(shared: Shared, users: dict[str, str]) -> None:
    machine_id, key = register(shared.server, users["wes"], "guarded config")
    before = agent_config(shared, key)
    with logged_in(shared, "wes") as client:
        token = client.cookies["lunasentri_session"]
    forged_headers = ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {})
    for headers in forged_headers:
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            for action in ("save", "default"):
                refused = other.post(
                    f"/machines/{machine_id}/agent-config",
                    data={"interval": "2", "collectors": ["psutil"], "action": action},
                )
                assert refused.status_code == 403, headers
                assert refused.json()["error"]["code"] == "cross_site"
    assert agent_config(shared, key, before.headers["etag"]).status_code == 304


def test_a_visitor_without_a_session_is_sent_to_log_in(shared: Shared) -> None:
    with httpx.Client(base_url=shared.server.url) as client:
        response = client.post(
            f"/machines/{shared.machine_id}/agent-config",
            data={"interval": "2"},
            headers={"origin": shared.server.url},
        )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
