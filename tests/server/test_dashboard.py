"""The dashboard's pages over real HTTP: log in with the form, see only your own machines."""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from lunasentri_core.model import HistoryPoint
from lunasentri_core.server.dashboard.assets import ASSETS
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
        sparks = client.get(f"/machines/{machine_id}/sparklines")

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
    # The card fetches its sparklines once shown: they take a query each.
    assert f'hx-get="/machines/{machine_id}/sparklines" hx-trigger="load"' in card
    cpu_line = re.search(
        r'data-metric="cpu.percent"[^>]*><polyline points="[0-9., ]+"', sparks.text
    )
    assert cpu_line is not None
    assert 'data-metric="disk.percent"' not in sparks.text  # none stored
    assert detail.status_code == 200
    assert 'data-metric="mem.percent" data-value="75.0"' in detail.text
    assert 'data-metrics="cpu.percent"' in detail.text  # the cpu chart, drawn by machine.js
    counted = httpx.get(f"{shared.server.url}/metrics").text
    assert 'route="/machines/{machine_id}",status="200"' in counted


def test_the_cpu_sparkline_draws_the_whole_machine_else_its_highest_core(
    shared: Shared,
) -> None:
    cores = [{"labels": {"cpu": "0"}, "value": 80.0}, {"labels": {"cpu": "1"}, "value": 90.0}]
    machines = {}
    for name, metrics in (
        ("spark-whole", {"cpu.percent": [{"labels": {}, "value": 12.5}, *cores]}),
        ("spark-cores", {"cpu.percent": cores}),
    ):
        machines[name], key = register(shared.server, shared.admin, name)
        body = {"samples": [{"timestamp": at(2).isoformat(), "metrics": metrics}]}
        assert post(shared.server, key, body).status_code == 200

    def cpu_label(machine_id: str) -> str:
        with browser(shared.server) as client:
            log_in(client, "admin", ADMIN_PASSWORD)
            text = client.get(f"/machines/{machine_id}/sparklines").text
        found = re.search(r'data-metric="cpu.percent"[^>]*aria-label="([^"]*)"', text)
        assert found is not None, text
        return found.group(1)

    assert cpu_label(machines["spark-whole"]) == "CPU, last hour: 12.5 to 12.5 %"  # not a core
    # Without a whole-machine series: the core ending highest.
    assert cpu_label(machines["spark-cores"]) == "CPU, last hour: 90.0 to 90.0 %"


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


def test_a_custom_range_in_the_address_is_drawn_or_its_problem_named(shared: Shared) -> None:
    """The range form works without script too: the page carries the range it was
    given (read as UTC) for the charts, or says what was wrong with it."""
    page = f"/machines/{shared.machine_id}"
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        chosen = client.get(page, params={"from": "2026-12-01T08:30", "to": "2026-12-02T09:00"})
        zoned = client.get(
            page, params={"from": "2026-12-01T10:30+02:00", "to": "2026-12-02T09:00Z"}
        )
        backwards = client.get(page, params={"from": "2026-12-02T09:00", "to": "2026-12-01T08:30"})
        garbled = client.get(page, params={"from": "yesterday", "to": "2026-12-01T08:30"})
    assert chosen.status_code == zoned.status_code == 200
    for response in (chosen, zoned):
        assert 'data-start="2026-12-01T08:30:00+00:00"' in response.text
        assert 'data-end="2026-12-02T09:00:00+00:00"' in response.text
        assert 'name="from" required value="2026-12-01T08:30"' in response.text
        assert "aria-current" not in response.text.split('class="ranges"')[1].split("</nav>")[0]
    for response, problem in (
        (backwards, "To must be after From."),
        (garbled, "From: give a date and time such as 2026-12-07T08:30 (UTC)."),
    ):
        assert response.status_code == 200
        assert f'id="range-problem">{html.escape(problem)}</p>' in response.text
        assert "data-start" not in response.text  # the preset range is drawn instead


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


def test_static_files_are_served_under_their_digest_for_a_year(shared: Shared) -> None:
    with browser(shared.server) as client:
        log_in(client, "admin", ADMIN_PASSWORD)
        page = client.get("/").text
    (htmx_url,) = re.findall(r'src="(/static/[0-9a-f]{12}/vendor/htmx-[^"]+)"', page)
    (css_url,) = re.findall(r'href="(/static/[0-9a-f]{12}/dashboard\.css)"', page)
    # Served without a session: they are the same for everyone.
    with httpx.Client(base_url=shared.server.url) as anonymous:
        plain = anonymous.get(htmx_url, headers={"accept-encoding": "identity"})
        zipped = anonymous.get(css_url, headers={"accept-encoding": "gzip, br"})
        refused_gzip = anonymous.get(css_url, headers={"accept-encoding": "gzip;q=0"})
        wrong_digest = anonymous.get(
            re.sub(r"/static/[0-9a-f]{12}/", "/static/0123456789ab/", css_url)
        )
        unknown = anonymous.get(re.sub(r"dashboard\.css$", "nothing.css", css_url))
    assert plain.status_code == 200
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.headers["content-type"].startswith("text/javascript")
    assert "content-encoding" not in plain.headers
    assert plain.content == ASSETS["vendor/htmx-2.0.11/htmx.min.js"].body
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "accept-encoding"
    assert zipped.content == ASSETS["dashboard.css"].body  # httpx unzipped it
    assert "content-encoding" not in refused_gzip.headers
    for missing in (wrong_digest, unknown):
        assert missing.status_code == 404
        assert "immutable" not in missing.headers["cache-control"]


def test_behind_a_proxy_every_link_and_redirect_carries_its_prefix(shared: Shared) -> None:
    prefixed = {"x-forwarded-prefix": "/watch/"}
    with browser(shared.server) as client:
        to_login = client.get("/", headers=prefixed)
        login = client.post(
            "/login",
            data={"username": "admin", "password": ADMIN_PASSWORD, "next": "/"},
            headers=prefixed,
        )
        page = client.get("/", headers=prefixed).text
        machine = client.get(f"/machines/{shared.machine_id}", headers=prefixed).text
        forged = client.get("/", headers={"x-forwarded-prefix": '/a"><script>'}).text
        logout = client.post("/logout", headers=prefixed)
    assert to_login.headers["location"] == "/watch/login?next=%2F"
    assert login.headers["location"] == "/watch/"
    assert logout.headers["location"] == "/watch/login"
    for text in (page, machine):
        links = re.findall(r'(?:href|src|action|hx-get)="([^"?#]*)', text)
        absolute = [link for link in links if link.startswith("/")]
        assert absolute, text
        assert all(link.startswith("/watch/") for link in absolute), absolute
        assert 'data-base="/watch"' in text
    # Anything but a plain path is ignored, not written into the page.
    assert "<script>" not in forged
    assert 'data-base=""' in forged


def test_the_list_filters_by_name_status_and_labels_and_sorts(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "fiona")
    with shared.server.client(token) as api:
        for name, labels in (
            ("f-db", {"env": "prod", "role": "db"}),
            ("f-web", {"env": "prod"}),
            ("f-dev", {"env": "dev"}),
        ):
            created = api.post("/api/v1/machines", json={"name": name, "labels": labels})
            assert created.status_code == 201, created.text
            if name != "f-dev":
                key = created.json()["api_key"]
                cpu = 90.0 if name == "f-web" else 10.0
                assert (
                    post(
                        shared.server, key, {"samples": [sample(at(0.2), cpu__percent=cpu)]}
                    ).status_code
                    == 200
                )
    shown = re.compile(r">(f-\w+)</a>")
    with browser(shared.server) as client:
        log_in(client, "fiona", PASSWORD)

        def names(query: str) -> list[str]:
            response = client.get(f"/?{query}")
            assert response.status_code == 200
            return shown.findall(response.text)

        assert names("") == ["f-db", "f-dev", "f-web"]
        assert names("name=WE") == ["f-web"]
        assert names("labels=env:prod") == ["f-db", "f-web"]
        assert names("labels=env:prod,role:db") == ["f-db"]
        assert names("status=online") == ["f-db", "f-web"]
        assert names("status=unknown") == ["f-dev"]
        assert names("sort=cpu") == ["f-web", "f-db", "f-dev"]
        assert names("sort=status") == ["f-dev", "f-db", "f-web"]
        bad = client.get("/?labels=not a label")
        none = client.get("/?name=nothing-like-this")
        # htmx asks for the list alone when the filters change.
        partial = client.get(
            "/?name=f-d", headers={"hx-request": "true", "hx-target": "machine-list"}
        )
    assert "is not a label as name:value" in bad.text
    assert "No machine matches these filters." in none.text
    assert partial.text.lstrip().startswith('<section id="machine-list"')
    assert "<html" not in partial.text
    assert shown.findall(partial.text) == ["f-db", "f-dev"]


def test_a_card_alone_is_drawn_for_its_owner_only(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "gina")
    own_id, key = register(shared.server, token, "ginas-box")
    assert (
        post(shared.server, key, {"samples": [sample(at(0.1), cpu__percent=12.25)]}).status_code
        == 200
    )
    with browser(shared.server) as client:
        log_in(client, "gina", PASSWORD)
        own = client.get(f"/machines/{own_id}/card")
        foreign = client.get(f"/machines/{shared.machine_id}/card")
        foreign_lines = client.get(f"/machines/{shared.machine_id}/sparklines")
    with browser(shared.server) as anonymous:
        out = anonymous.get(f"/machines/{own_id}/card")
        # htmx asking after the session ended: the whole page goes to the login form.
        ended = anonymous.get(f"/machines/{own_id}/card", headers={"hx-request": "true"})
    assert ended.status_code == 200
    assert ended.headers["hx-redirect"] == "/login?next=%2F"
    assert ended.content == b""
    assert own.status_code == 200
    assert own.text.lstrip().startswith(f'<li class="card" id="card-{own_id}"')
    assert "12.2 %" in own.text or "12.3 %" in own.text
    for refused in (foreign, foreign_lines):
        assert refused.status_code == 404
        assert "shared" not in refused.text
    assert out.status_code == 303


def test_the_live_stream_names_own_machines_with_new_samples(shared: Shared) -> None:
    token = add_user(shared.server, shared.admin, "hana")
    own_id, key = register(shared.server, token, "hanas-box")
    with browser(shared.server) as client:
        log_in(client, "hana", PASSWORD)
        watched = f"{own_id},{shared.machine_id},no-such-machine"
        with client.stream("GET", f"/live?machines={watched}") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "retry: 3000"
            assert next(lines) == ": subscribed"
            # Another owner's machine is not watched: its samples say nothing here.
            assert (
                post(
                    shared.server, shared.key, {"samples": [sample(at(0.1), cpu__percent=1.0)]}
                ).status_code
                == 200
            )
            assert (
                post(
                    shared.server, key, {"samples": [sample(at(0.1), cpu__percent=2.0)]}
                ).status_code
                == 200
            )
            event = [line for line in itertools.islice(lines, 4) if line]
        logged_out = client.post("/logout")
    assert logged_out.status_code == 303
    assert event == ["event: changed", f'data: ["{own_id}"]']
    with browser(shared.server) as anonymous:
        refused = anonymous.get(f"/live?machines={own_id}")
    assert refused.status_code == 401
