"""Accessibility of every dashboard page, in Chromium, with axe-core; and the keyboard.

The pages are those :mod:`.dashboard_pages` finds from the app's routes and the pages'
own links (so a page added later is checked too), over data named with hostile
names: every page must have no axe violation (the issue asks for none serious or
critical; the lesser ones are fixed too and kept so), no element injected by a name,
and (as in every browser test) no console error or failed request. The keyboard
tests log in and make a rule with the keyboard alone, and check that what has the
focus shows a ring.

axe-core is vendored for the tests only (``vendor/axe-core-*/``, see its README); the
server never serves it. Playwright's ``add_script_tag`` would insert it as an inline
script, which the pages' Content-Security-Policy (``script-src 'self'``) refuses,
so the file is given to ``add_init_script`` instead: the browser runs it in each new
document through the DevTools protocol, which the policy does not govern, and the
policy stays in force for everything the page itself does (``bypass_csp`` would
have turned it off, hiding the violations the other checks look for).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import ADMIN_PASSWORD
from .dashboard_pages import PROBE, Hostile, crawl, seed
from .test_dashboard import browser as http_browser
from .test_dashboard import log_in as http_log_in
from .test_dashboard_browser import PHONE, Watched, launch, log_in, watching
from .test_ingest import Shared, shared_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

VENDOR = Path(__file__).with_name("vendor")
(AXE,) = VENDOR.glob("axe-core-*/axe.min.js")
BLOCKING = ("serious", "critical")
READY = """() => document.readyState === "complete"
    && !document.querySelector("[hx-trigger=load], .htmx-request")
    && [...document.querySelectorAll("[data-metrics] .plot")].every(
        plot => plot.querySelector(".uplot") || !plot.textContent.includes("Loading"))"""
"""A page is drawn: htmx fetched what it loads at once, the charts have their data."""
RUN_AXE = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations.map(v => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ") + ": " + n.failureSummary),
    }));
}"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    yield from launch()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


@pytest.fixture
def watched(chromium: Browser, screenshots: Path) -> Iterator[Watched]:
    yield from watching(chromium, screenshots)


@pytest.fixture(scope="module")
def hostile(shared: Shared) -> Hostile:
    return seed(shared.server, shared.admin)


@pytest.fixture(scope="module")
def documents(shared: Shared, hostile: Hostile) -> list[str]:
    """The addresses of the whole pages an administrator reaches: one for each route
    and set of query parameters (``/machines/{id}`` and ``/machines/{id}?range=7d``)."""
    with http_browser(shared.server) as client:
        http_log_in(client, "admin", ADMIN_PASSWORD)
        visits = crawl(client, shared.server)
    kinds: dict[tuple[str, frozenset[str]], str] = {}
    for visit in visits:
        query = frozenset(urllib.parse.parse_qs(urllib.parse.urlsplit(visit.url).query))
        if visit.document:
            kinds.setdefault((visit.route.name, query), visit.url)
    return list(kinds.values())


def violations(watched: Watched) -> list[dict[str, Any]]:
    page = watched.page
    page.wait_for_function(READY)
    found: list[dict[str, Any]] = page.evaluate(RUN_AXE)
    return found


def test_every_page_passes_axe_and_no_name_injects_an_element(
    shared: Shared, hostile: Hostile, documents: list[str], watched: Watched
) -> None:
    page = watched.page
    url = shared.server.url
    # Run in every document before its own scripts, through the DevTools protocol.
    page.context.add_init_script(path=AXE)
    page.goto(f"{url}/login")
    problems = {"/login": violations(watched)}
    log_in(watched, url)
    for path in documents:
        page.goto(url + path)
        problems[path] = violations(watched)
        watched.shot("page-" + (re.sub(r"[/?=&]+", "-", path.strip("/")) or "overview"))
        assert page.locator(f".{PROBE}").count() == 0, f"{path}: a name made an element"
    assert len(documents) >= 10  # not empty by mistake
    # The machine with charts and hostile names in them, whichever machine came first.
    machine = f"/machines/{hostile.machine_id}"
    page.goto(url + machine)
    problems[machine] = violations(watched)
    shown = page.inner_text("main")
    assert hostile.machine in shown  # as text, not markup
    assert hostile.label in shown  # the disk's mount, in the table and the chart's legend
    assert hostile.label in page.inner_text("#chart-disk")
    assert page.locator(f".{PROBE}").count() == 0
    blocking = {
        path: [v for v in found if v["impact"] in BLOCKING] for path, found in problems.items()
    }
    assert {path: found for path, found in blocking.items() if found} == {}
    # Lesser ones (moderate, minor) are fixed as well; the test keeps it so.
    assert {path: found for path, found in problems.items() if found} == {}


def expected_error_answers(watched: Watched, answers: dict[str, str]) -> None:
    """The pages answered these forms with an error status on purpose (``answers``
    maps a URL to its status and reason): they are not among the problems, once."""
    for url, status in answers.items():
        watched.problems.remove(f"HTTP {status.split()[0]}: {url}")
        loaded = f"console: Failed to load resource: the server responded with a status of {status}"
        watched.problems.remove(loaded)


def test_the_answers_to_forms_pass_axe_too(
    shared: Shared, hostile: Hostile, watched: Watched
) -> None:
    """Pages only a form's answer shows: a refused log-in, a new machine's key, a
    rotated key, a refused agent configuration, a new channel's secret, a rule form
    with a mistake."""
    page = watched.page
    url = shared.server.url
    page.context.add_init_script(path=AXE)
    problems = {}
    page.goto(f"{url}/login")
    page.fill("#username", "admin")
    page.fill("#password", "not the password")
    page.press("#password", "Enter")
    page.wait_for_selector("form.login p.error")
    problems["log-in refused"] = violations(watched)
    log_in(watched, url)

    page.goto(f"{url}/machines/new")
    page.fill("#name", "answered")
    page.press("#name", "Enter")
    page.wait_for_selector("#install-command")
    problems["machine registered"] = violations(watched)
    page.goto(f"{url}/machines/{hostile.machine_id}/settings")
    page.click("text=Issue a new key")
    page.wait_for_selector("#api-key")
    problems["key rotated"] = violations(watched)
    page.goto(f"{url}/machines/{hostile.machine_id}/settings")
    page.fill("#interval", "soon")
    page.click("text=Save agent configuration")
    page.wait_for_selector("#agent-config-problem")
    problems["agent configuration refused"] = violations(watched)
    page.goto(f"{url}/channels/new?type=webhook")
    page.fill("#name", "answered hook")
    page.get_by_label("url", exact=True).fill("http://127.0.0.1:9/")
    page.click("form.panel button[type=submit]")
    page.wait_for_selector("h1:has-text('created')")
    problems["channel created"] = violations(watched)
    page.goto(f"{url}/rules")
    page.fill("#name", "mistaken")
    page.fill("#metric", "cpu.percent")
    page.fill("#threshold", "lots")
    page.press("#threshold", "Enter")
    page.wait_for_selector("form.panel p.error")
    problems["rule refused"] = violations(watched)
    refused = {
        f"{url}/login": "401 (Unauthorized)",
        f"{url}/machines/{hostile.machine_id}/agent-config": "400 (Bad Request)",
        f"{url}/rules": "400 (Bad Request)",
    }
    expected_error_answers(watched, refused)
    assert {what: found for what, found in problems.items() if found} == {}


@pytest.mark.parametrize("viewport", [PHONE])
def test_every_page_fits_a_phone_without_scrolling_sideways(
    shared: Shared,
    hostile: Hostile,
    documents: list[str],
    chromium: Browser,
    screenshots: Path,
    viewport: dict[str, int],
) -> None:
    for watched in watching(chromium, screenshots, viewport):
        page = watched.page
        log_in(watched, shared.server.url)
        wide = {}
        for path in documents:
            page.goto(shared.server.url + path)
            page.wait_for_function(READY)
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > viewport["width"]:
                wide[path] = width
        assert wide == {}


def focused(watched: Watched) -> dict[str, str]:
    """The focused element's id, and whether it shows that it has the focus."""
    described: dict[str, str] = watched.page.evaluate(
        """() => {
            const el = document.activeElement, style = getComputedStyle(el);
            const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
            return {id: el.id || el.tagName.toLowerCase(), ring: String(ring),
                    visible: String(el.matches(":focus-visible"))};
        }"""
    )
    return described


def tab_to(watched: Watched, element_id: str, presses: int = 40) -> None:
    for _ in range(presses):
        watched.page.keyboard.press("Tab")
        now = focused(watched)
        if now["id"] == element_id:
            assert now == {"id": element_id, "ring": "true", "visible": "true"}
            return
    raise AssertionError(f"#{element_id} was not reached with Tab")


def test_logging_in_and_making_a_rule_with_the_keyboard_alone(
    shared: Shared, watched: Watched
) -> None:
    page = watched.page
    url = shared.server.url
    page.goto(f"{url}/login")
    assert focused(watched)["id"] == "username"  # autofocus
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    assert focused(watched) == {"id": "password", "ring": "true", "visible": "true"}
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/")

    page.goto(f"{url}/rules")
    tab_to(watched, "name")
    page.keyboard.type("typed rule")
    for field, typed in (("metric", "load.1"), ("comparison", None), ("threshold", "4")):
        page.keyboard.press("Tab")
        assert focused(watched)["id"] == field
        if typed is not None:
            page.keyboard.type(typed)
        else:
            page.keyboard.press("End")  # the last comparison in the list
    page.keyboard.press("Enter")
    page.wait_for_url("**/rules?saved=created")
    row = page.locator("#rules tr", has_text="typed rule")
    assert "load.1 != 4" in row.inner_text()  # End chose the last comparison


def test_the_focus_ring_shows_on_links_and_buttons(shared: Shared, watched: Watched) -> None:
    page = watched.page
    log_in(watched, shared.server.url)
    page.goto(f"{shared.server.url}/alerts")
    seen = set()
    # Through the top bar's links to its log-out button, however many links it holds.
    for _ in range(40):
        page.keyboard.press("Tab")
        now = focused(watched)
        assert now["ring"] == "true", now
        seen.add(page.evaluate("document.activeElement.tagName"))
        if {"A", "BUTTON"} <= seen:
            break
    assert {"A", "BUTTON"} <= seen
