"""Every page of the dashboard, found from the app's own routes, for the checks that
must hold on all of them (security headers, escaping, accessibility).

The GET and POST routes are read from the running app (route names start with
``dashboard.``), so a page added later is checked without changing the tests.
Pages with an id in their path are found by following the links of the pages
themselves from ``/``, over data seeded with hostile names (:func:`seed`): a
page no link reaches is reported, so that a new kind of page gets seed data
rather than going unchecked.
"""

from __future__ import annotations

import html.parser
import urllib.parse
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import attrs
import httpx
from starlette.routing import Route

from lunasentri_core.server.dashboard.pages import PAGE

from .alerting_support import wait_for
from .conftest import LiveServer
from .test_claims import Agent

NOT_PAGES = {f"{PAGE}static", f"{PAGE}live"}
"""GET routes that are no page: the static files and the live event stream."""
VARIANTS = 6
"""How many addresses of one route (other ids, other queries) a crawl visits at most."""

PROBE = "xss-probe"
"""The class of the element every hostile name tries to inject."""


def hostile(what: str) -> str:
    """A name that breaks out of any unescaped context: element, either attribute quote."""
    return f"{what} <i class={PROBE}>\"'&amp;</i>"


RAW = (f"<i class={PROBE}>", "\"'")
"""What no page may contain as it is: the injected element, the two quotes in a row."""


@attrs.frozen
class Hostile:
    """What :func:`seed` made, each named with :func:`hostile`."""

    machine_id: str
    machine: str
    label: str
    rule: str
    channel: str
    comment: str
    agentless: tuple[str, ...]
    """Names of a credential profile, its user and a discovery profile: on no page yet
    (the API has them), so only checked to be escaped wherever they are shown."""

    def names(self) -> list[str]:
        return [self.machine, self.label, self.rule, self.channel, self.comment]


def routes(server: LiveServer, method: str) -> list[Route]:
    """The dashboard's routes for ``method``, as the app has them, in its order."""
    return [
        route
        for route in server.app.routes
        if isinstance(route, Route)
        and route.name.startswith(PAGE)
        and method in (route.methods or ())
    ]


def page_routes(server: LiveServer) -> list[Route]:
    return [route for route in routes(server, "GET") if route.name not in NOT_PAGES]


def route_of(candidates: Iterable[Route], path: str) -> Route | None:
    """The route that answers ``path`` (the first whose pattern matches, as Starlette does)."""
    for route in candidates:
        if route.path_regex.match(path):
            return route
    return None


def filled(route: Route, value: str = "no-such-id") -> str:
    """The route's path with every parameter set to ``value``."""
    return route.url_path_for(route.name, **dict.fromkeys(route.param_convertors, value))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "hx-get" or (tag == "a" and name == "href")):
                self.found.append(value)


def links(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.found


@attrs.frozen
class Visit:
    url: str
    """Path and query, as requested."""
    route: Route
    response: httpx.Response

    @property
    def document(self) -> bool:
        """A whole page (not a fragment htmx swaps into one)."""
        return self.response.text.lstrip().lower().startswith("<!doctype html>")


def crawl(client: httpx.Client, server: LiveServer, start: str = "/") -> list[Visit]:
    """Every dashboard address reachable from ``start`` (at most :data:`VARIANTS` for
    each route), fetched with ``client``.

    Links are ``<a href>`` and htmx's ``hx-get``. Pages only a script asks for (a
    card drawn again on new samples) are visited with the ids seen in other pages'
    addresses under the same parameter name (``machine_id`` and so on).
    """
    pages = page_routes(server)
    seen: set[str] = set()
    per_route: dict[str, int] = {}
    ids: dict[str, list[str]] = {}
    queue = [start]
    visits: list[Visit] = []
    while queue:
        while queue:
            url = queue.pop(0)
            if url in seen:
                continue
            seen.add(url)
            path = urllib.parse.urlsplit(url).path
            route = route_of(pages, path)
            if route is None or per_route.get(route.name, 0) >= VARIANTS:
                continue
            per_route[route.name] = per_route.get(route.name, 0) + 1
            match = route.path_regex.match(path)
            for name, value in (match.groupdict() if match else {}).items():
                ids.setdefault(name, []).append(value)
            response = client.get(url)
            visits.append(Visit(url, route, response))
            if response.headers.get("content-type", "").startswith("text/html"):
                queue.extend(_local(url, links(response.text)))
        for route in pages:
            names = list(route.param_convertors)
            if route.name not in per_route and names and all(n in ids for n in names):
                queue.append(route.url_path_for(route.name, **{n: ids[n][0] for n in names}))
    return visits


def _local(base: str, found: Iterable[str]) -> Iterator[str]:
    for link in found:
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(base, link))
        if not parts.scheme and not parts.netloc:
            yield parts.path + (f"?{parts.query}" if parts.query else "")


def unreached(server: LiveServer, *crawls: list[Visit]) -> list[str]:
    reached = {visit.route.name for visits in crawls for visit in visits}
    return [route.path for route in page_routes(server) if route.name not in reached]


def seed(server: LiveServer, admin: str) -> Hostile:
    """One of everything a page lists, named with hostile names, as the admin: a machine
    with samples and a label, a firing rule on it, a channel with a failed delivery, a
    silence, a pending agent."""
    names = {what: hostile(what) for what in ("machine", "label", "rule", "channel", "comment")}
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    with server.client(admin) as api:
        made = api.post(
            "/api/v1/machines", json={"name": names["machine"], "labels": {"team": names["label"]}}
        )
        assert made.status_code == 201, made.text
        machine_id, key = made.json()["machine"]["id"], made.json()["api_key"]
        quiet = api.post("/api/v1/machines", json={"name": hostile("quiet machine")})
        assert quiet.status_code == 201, quiet.text
        rule = {
            "name": names["rule"],
            "metric": "cpu.percent",
            "comparison": ">",
            "threshold": 50,
            "scope": {"machine_id": machine_id},
        }
        assert api.post("/api/v1/alert-rules", json=rule).status_code == 201
        # Nothing listens on port 9: the delivery fails, and the log offers a retry.
        channel = {
            "name": names["channel"],
            "type": "webhook",
            "config": {"url": "http://127.0.0.1:9/"},
        }
        assert api.post("/api/v1/channels", json=channel).status_code == 201
        silence = {
            "machine_id": quiet.json()["machine"]["id"],
            "duration": 3600,
            "comment": names["comment"],
        }
        assert api.post("/api/v1/silences", json=silence).status_code == 201
        agentless = _seed_agentless(api)
    disk = [{"labels": {"mount": names["label"]}, "value": 10.0 * 2**30}]
    reading = {
        "timestamp": now,
        "metrics": {"cpu.percent": 97.0, "disk.used": disk, "disk.total": disk},
    }
    with server.client(key) as agent:
        assert agent.post("/api/v1/ingest", json={"samples": [reading]}).status_code == 200
    assert Agent(server, hostname="pending-agent").register().status_code == 202

    def fired() -> bool:
        with server.client(admin) as api:
            events = api.get("/api/v1/alert-events", params={"machine_id": machine_id})
        return bool(events.json()["items"])

    wait_for(fired, what="the hostile rule firing")
    return Hostile(
        machine_id,
        names["machine"],
        names["label"],
        names["rule"],
        names["channel"],
        names["comment"],
        agentless,
    )


def _seed_agentless(api: httpx.Client) -> tuple[str, ...]:
    """A credential profile, a device with a (disabled) monitor, one without (deletable),
    a discovery profile and a run of it (over 127.0.0.1 alone, where nothing answers WinRM)."""
    names = (hostile("credentials"), hostile("user"), hostile("discovery"))
    profile = {"name": names[0], "username": names[1], "password": "a long secret 42"}
    made = api.post("/api/v1/credential-profiles", json=profile)
    assert made.status_code == 201, made.text
    profile_id = made.json()["id"]
    device = api.post("/api/v1/devices", json={"address": "127.0.0.1"})
    assert device.status_code == 201, device.text
    monitor = {
        "device_id": device.json()["id"],
        "credential_profile_id": profile_id,
        "collector": "winrm",
        "enabled": False,
    }
    assert api.post("/api/v1/monitors", json=monitor).status_code == 201
    assert api.post("/api/v1/devices", json={"address": "127.0.0.2"}).status_code == 201
    discovery = {"name": names[2], "targets": ["127.0.0.1/32"], "credential_profile_id": profile_id}
    made = api.post("/api/v1/discovery-profiles", json=discovery)
    assert made.status_code == 201, made.text
    run = api.post(f"/api/v1/discovery-profiles/{made.json()['id']}/run")
    assert run.status_code == 202, run.text
    return names
