"""The dashboard's pages over real HTTP: log in with the form, see only your own machines."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from lunasentri_core.model import HistoryPoint
from lunasentri_core.server.dashboard.charts import HEIGHT, WIDTH, sparkline
from lunasentri_core.server.dashboard.overview import PAGE_SIZE
from lunasentri_core.server.dashboard.pages import number

from .alerting_support import wait_for
from .conftest import ADMIN_PASSWORD, LiveServer
from .test_ingest import PASSWORD, Shared, add_user, at, post, register, sample, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


def browser(server: LiveServer, origin: str | None = None) -> httpx.Client:
    """A client that keeps cookies and does not follow redirects, like a careful browser,
    and says which site's page it is on (this server's unless told)."""
    headers = {"origin": origin or server.url}
    return httpx.Client(base_url=server.url, timeout=30, headers=headers)


def log_in(client: httpx.Client, username: str, password: str, next_page: str = "/") -> None:
    response = client.post(
        "/login", data={"username": username, "password": password, "next": next_page}
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == next_page


def test_pages_send_a_visitor_without_a_session_to_the_login_form(shared: Shared) -> None:
    with browser(shared.server) as client:
        for path in ("/", f"/machines/{shared.machine_id}"):
            response = client.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        form = client.get("/login?next=/machines/x")
        # A machine's API key is no way in either.
        keyed = client.get("/", headers={"authorization": f"Bearer {shared.key}"})
    assert form.status_code == 200
    assert 'name="password"' in form.text
    assert 'value="/machines/x"' in form.text
    assert keyed.status_code == 303


def test_logging_in_shows_the_machines_with_their_latest_values(shared: Shared) -> None:
    machine_id, key = register(shared.server, shared.admin, "db-<1>")
    reading = sample(at(1), cpu__percent=42.5, mem__used=300.0, mem__total=400.0)
    assert post(shared.server, key, {"samples": [reading]}).status_code == 200

    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        page = client.get("/")
        detail = client.get(f"/machines/{machine_id}")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy  # this server's files: no inline script, no eval
    assert "unsafe" not in policy
    assert "default-src 'none'" in policy
    card = page.text[page.text.index(f'href="/machines/{machine_id}"') :]
    card = card[: card.index("</li>")]
    assert html.escape("db-<1>") in card
    assert "db-<1>" not in card
    assert "42.5 %" in card
    assert "75.0 %" in card
    assert re.search(r"<polyline points=\"[0-9., ]+\"", card)  # the cpu sparkline
    assert detail.status_code == 200
    assert 'data-metric="mem.percent" data-value="75.0"' in detail.text
    assert 'data-metrics="cpu.percent"' in detail.text  # the cpu chart, drawn by machine.js
    counted = httpx.get(f"{shared.server.url}/metrics").text
    assert 'route="/machines/{machine_id}",status="200"' in counted


def test_firing_alerts_show_on_the_list_and_on_the_machine(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "erin")
    machine_id, key = register(shared.server, token, "hot-box")
    with shared.server.client(token) as api:
        rule = {"name": "cpu <hot>", "metric": "cpu.percent", "comparison": ">", "threshold": 80}
        assert api.post("/api/v1/alert-rules", json=rule).status_code == 201
    assert (
        post(shared.server, key, {"samples": [sample(at(0.1), cpu__percent=97.0)]}).status_code
        == 200
    )
    with browser(shared.server) as client:
        log_in(client, "erin", PASSWORD)

        def listed() -> str:
            page = client.get("/").text
            return page if "1 firing" in page else ""

        page = wait_for(listed, what="the firing alert on the list")
        detail = client.get(f"/machines/{machine_id}").text
    assert page.count("1 firing") == 1
    alerts = detail[detail.index("<h2>Alerts</h2>") : detail.index("<h2>History</h2>")]
    assert html.escape("cpu <hot>") in alerts
    assert "firing" in alerts
    assert "97" in alerts


def test_a_user_sees_only_their_own_machines(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "dora")
    own_id, _ = register(shared.server, token, "doras-box")
    with browser(shared.server) as client:
        log_in(client, "dora", PASSWORD)
        page = client.get("/")
        foreign = client.get(f"/machines/{shared.machine_id}")
        own = client.get(f"/machines/{own_id}")
    assert "doras-box" in page.text
    assert shared.machine_id not in page.text
    assert ">shared<" not in page.text
    assert foreign.status_code == 404
    assert "shared" not in foreign.text
    assert own.status_code == 200


def test_a_wrong_password_keeps_the_visitor_out(shared: Shared) -> None:
    with browser(shared.server) as client:
        response = client.post(
            "/login", data={"username": "admin", "password": "wrong", "next": "/"}
        )
        after = client.get("/")
    assert response.status_code == 401
    assert "wrong username or password" in response.text
    assert "lunasentri_session" not in response.headers.get("set-cookie", "")
    assert after.status_code == 303


def test_after_login_only_a_path_on_this_server_is_followed(shared: Shared) -> None:
    with browser(shared.server) as client:
        response = client.post(
            "/login",
            data={"username": "admin", "password": ADMIN_PASSWORD, "next": "//evil.example/"},
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_logging_out_ends_the_session(shared: Shared) -> None:
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD, "/")
        token = client.cookies.get("lunasentri_session")
        assert token
        out = client.post("/logout")
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        assert client.get("/").status_code == 303
    # The session is revoked on the server, not only forgotten by the browser.
    with shared.server.client(token) as api:
        assert api.get("/api/v1/auth/me").status_code == 401


def test_the_forms_refuse_posts_from_another_site(shared: Shared) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD, "next": "/"}
    with browser(shared.server, "https://evil.example") as forged:
        login = forged.post("/login", data=form)
    assert login.status_code == 403
    assert login.json()["error"]["code"] == "cross_site"
    assert "lunasentri_session" not in login.headers.get("set-cookie", "")

    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        token = client.cookies["lunasentri_session"]
    for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/"}, {}):
        with httpx.Client(base_url=shared.server.url, headers=headers) as other:
            other.cookies.set("lunasentri_session", token)
            logout = other.post("/logout")
        assert logout.status_code == 403, headers
    # Still logged in: the forged logouts changed nothing.
    with shared.server.client(token) as api:
        assert api.get("/api/v1/auth/me").status_code == 200


def test_an_unknown_machine_is_a_not_found_page(shared: Shared) -> None:
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        response = client.get("/machines/does-not-exist")
    assert response.status_code == 404
    assert "Not found" in response.text


def test_a_sparkline_spans_its_box_and_scales_percentages_to_0_100() -> None:
    base = at(10)
    points = [
        HistoryPoint(base, 0.0),
        HistoryPoint(base + timedelta(minutes=5), 50.0),
    ]
    start = base.timestamp()
    line = sparkline(points, start, start + 600, floor=0.0, ceiling=100.0)
    assert line is not None
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in line.points.split())
    assert (x0, y0) == (0.0, HEIGHT)
    assert x1 == pytest.approx(WIDTH / 2)
    assert y1 == pytest.approx(HEIGHT / 2)
    assert (line.low, line.high, line.last) == (0.0, 50.0, 50.0)
    assert sparkline([], start, start + 600) is None
    flat = sparkline([HistoryPoint(base, 7.0)], start, start + 600)
    assert flat is not None
    assert flat.points == f"0.0,{HEIGHT / 2:.1f}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(270_553_174_016.0, "270,553,174,016"), (3.72244, "3.722"), (0.0, "0"), (-1500.4, "-1,500")],
)
def test_readings_are_shown_exactly_when_large_and_to_four_digits_when_small(
    value: float, shown: str
) -> None:
    assert number(value) == shown


def test_the_machine_list_shows_a_page_of_machines_with_a_link_to_the_next(
    shared: Shared,
) -> None:
    token = add_user(shared.server, shared.admin, "paged-erin")
    count = PAGE_SIZE + 2
    with shared.server.client(token) as api:
        for n in range(count):
            created = api.post("/api/v1/machines", json={"name": f"erin-{n:03d}"})
            assert created.status_code == 201, created.text
    with browser(shared.server) as client:
        log_in(client, "paged-erin", PASSWORD)
        first = client.get("/").text
        (link,) = re.findall(r'href="(/\?cursor=[^"]+)"', first)
        second = client.get(html.unescape(link)).text
        mangled = client.get("/?cursor=not-a-cursor")
    shown = re.compile(r">(erin-\d{3})</a>")
    assert shown.findall(first) == [f"erin-{n:03d}" for n in range(PAGE_SIZE)]
    assert shown.findall(second) == [f"erin-{n:03d}" for n in range(PAGE_SIZE, count)]
    assert "Next page" in first
    assert "First page" not in first
    assert "Next page" not in second
    assert 'href="/?">First page' in second
    # An old bookmark's cursor starts again from the first page.
    assert mangled.status_code == 200
    assert shown.findall(mangled.text) == shown.findall(first)
