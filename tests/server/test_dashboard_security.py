"""Checks that hold on every dashboard page and form, found from the app's routes
(see :mod:`.dashboard_pages`), so that a page or form added later is checked too:

- every page, for an administrator, a user and a visitor without a session, is sent
  with the security headers (also redirects, "not found" and refused pages);
- every state-changing form is refused when the request may come from another site;
- names from users (machines, labels, rules, channels, comments) are escaped on every
  page, and no template marks anything as safe.
"""

from __future__ import annotations

import html.parser
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import markupsafe
import pytest

from lunasentri_core.server import dashboard

from .conftest import ADMIN_PASSWORD
from .dashboard_pages import (
    RAW,
    Hostile,
    Visit,
    crawl,
    filled,
    page_routes,
    route_of,
    routes,
    seed,
    unreached,
)
from .test_dashboard import browser, log_in
from .test_ingest import PASSWORD, Shared, add_user, shared_server

FORGED = (
    {"origin": "https://evil.example"},
    {"referer": "https://evil.example/page"},
    {"sec-fetch-site": "cross-site"},
    {},  # the session cookie and nothing to say where the request comes from
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def hostile(shared: Shared) -> Hostile:
    return seed(shared.server, shared.admin)


@pytest.fixture(scope="module")
def crawled(shared: Shared, hostile: Hostile) -> dict[str, list[Visit]]:
    """Every page reached by links, as the admin, as a user and without a session."""
    add_user(shared.server, shared.admin, "ursula")
    found = {}
    for who, password in (("admin", ADMIN_PASSWORD), ("ursula", PASSWORD)):
        with browser(shared.server) as client:
            log_in(client, who, password)
            found[who] = crawl(client, shared.server)
    with browser(shared.server) as client:
        found["nobody"] = crawl(client, shared.server, "/login")
        # Every page, with ids that do not exist: each sends the visitor to log in.
        found["nobody, any page"] = [
            Visit(filled(route), route, client.get(filled(route)))
            for route in page_routes(shared.server)
        ]
    return found


def assert_protected(url: str, response: httpx.Response) -> None:
    headers = response.headers
    policy = headers.get("content-security-policy", "")
    directives = {part.strip() for part in policy.split(";")}
    wanted = {"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"}
    assert wanted <= directives, (url, policy)
    assert "unsafe" not in policy, (url, policy)
    assert headers.get("x-frame-options") == "DENY", url
    assert headers.get("x-content-type-options") == "nosniff", url
    assert headers.get("referrer-policy") == "same-origin", url
    assert headers.get("cache-control") == "no-store", url


def test_every_page_is_reached_and_sent_with_the_security_headers(
    shared: Shared, crawled: dict[str, list[Visit]]
) -> None:
    missing = unreached(shared.server, crawled["admin"], crawled["nobody"])
    # A new page with an id in its address: seed something it shows (dashboard_pages.seed).
    assert missing == [], f"no link reaches {missing}: seed data that a page links to"
    for visit in crawled["admin"]:
        assert visit.response.status_code == 200, (visit.url, visit.response.status_code)
    for visit in crawled["ursula"]:
        assert visit.response.status_code == 200, (visit.url, visit.response.status_code)
    for visit in crawled["nobody"] + crawled["nobody, any page"]:
        if visit.route.name != "dashboard.login_form":
            assert visit.response.status_code == 303, visit.url
            assert visit.response.headers["location"].startswith("/login?next="), visit.url
    for visits in crawled.values():
        for visit in visits:
            assert_protected(visit.url, visit.response)


def test_pages_for_ids_that_do_not_exist_are_sent_with_the_security_headers(
    shared: Shared,
) -> None:
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        for route in page_routes(shared.server):
            url = filled(route)
            response = client.get(url)
            # The log-in form sends a visitor who is logged in on to the machines.
            expected = (303,) if route.name == "dashboard.login_form" else (200, 404)
            assert response.status_code in expected, (url, response.status_code)
            assert_protected(url, response)


class _Forms(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.posted: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = dict(attrs)
        if tag == "form" and (fields.get("method") or "").lower() == "post":
            self.posted.append(fields.get("action") or "")
        if "hx-post" in fields:
            self.posted.append(fields["hx-post"] or "")


def test_every_form_posts_to_a_dashboard_route(
    shared: Shared, crawled: dict[str, list[Visit]]
) -> None:
    posting = routes(shared.server, "POST")
    targets: set[str] = set()
    for visit in crawled["admin"] + crawled["nobody"]:
        forms = _Forms()
        forms.feed(visit.response.text)
        for action in forms.posted:
            path = urllib.parse.urlsplit(urllib.parse.urljoin(visit.url, action)).path
            route = route_of(posting, path)
            assert route is not None, f"{visit.url} posts to {path}, no dashboard route"
            targets.add(route.name)
    # The crawl's pages use most forms (a list without items shows none of its own).
    assert {"dashboard.login", "dashboard.logout", "dashboard.rule_create"} <= targets


def test_every_form_refuses_a_post_that_may_come_from_another_site(shared: Shared) -> None:
    posting = routes(shared.server, "POST")
    assert len(posting) >= 10
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        session = client.cookies["lunasentri_session"]
    for headers in FORGED:
        with httpx.Client(base_url=shared.server.url, headers=headers) as forged:
            forged.cookies.set("lunasentri_session", session)
            for route in posting:
                refused = forged.post(filled(route), data={"name": "forged"})
                assert refused.status_code == 403, (route.path, headers)
                assert refused.json()["error"]["code"] == "cross_site", (route.path, headers)
    # The same requests from the dashboard's own pages pass the guard (to the form's
    # own answer for ids that do not exist), and the session was never ended.
    with browser(shared.server) as own:
        own.cookies.set("lunasentri_session", session)
        for route in sorted(posting, key=lambda route: route.name == "dashboard.logout"):
            answer = own.post(filled(route), data={})
            refused = answer.status_code == 403 and "cross_site" in answer.text
            assert not refused, route.path


DASHBOARD = Path(dashboard.__file__).parent
MARKED_SAFE = re.compile(r"\|\s*safe\b|autoescape\s+false|Markup\(|markupsafe")


def test_no_template_or_page_module_marks_anything_as_safe() -> None:
    files = [*DASHBOARD.glob("templates/*.html"), *DASHBOARD.glob("*.py")]
    assert len(files) > 10
    marked = [
        f"{path.name}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if MARKED_SAFE.search(line)
    ]
    assert marked == []


def test_hostile_names_are_escaped_on_every_page(
    hostile: Hostile, crawled: dict[str, list[Visit]]
) -> None:
    shown = dict.fromkeys(hostile.names(), 0)
    for visit in crawled["admin"] + crawled["ursula"]:
        text = visit.response.text
        for raw in RAW:
            assert raw not in text, f"{visit.url} has {raw!r} unescaped"
        for name in shown:
            shown[name] += str(markupsafe.escape(name)) in text
    # Each name was on some page (escaped), so the pages above were tested with it.
    assert all(shown.values()), shown
