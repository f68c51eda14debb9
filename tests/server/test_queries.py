"""Queries over real HTTP: latest values, history, derived percentages, the live stream."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from lunasentri_core.builtin import SESSION_COOKIE
from lunasentri_core.model import Reading, Sample
from lunasentri_core.server.routes import queries as query_routes
from lunasentri_core.services import queries
from lunasentri_core.services.live import LiveFeed

from .conftest import LiveServer, MakeServer
from .test_ingest import (
    PASSWORD,
    Shared,
    add_user,
    at,
    post,
    register,
    sample,
    shared_server,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


def minute_start(minutes_ago: int) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes_ago)


def get(server: LiveServer, token: str, path: str, **params: Any) -> httpx.Response:
    with server.client(token) as client:
        return client.get(path, params=params)


def values(items: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(i["metric"], json.dumps(i["labels"], sort_keys=True)): i["value"] for i in items}


@pytest.fixture(scope="module")
def filled(shared: Shared) -> tuple[str, datetime]:
    """A machine with a minute of known points, every 10 s from ``base``."""
    machine_id, key = register(shared.server, shared.admin, "filled")
    base = minute_start(20)
    samples = []
    for k in range(6):
        samples.append(
            sample(
                base + timedelta(seconds=10 * k),
                cpu__percent=float(k + 1),
                mem__used=float(100 + 10 * k),
                mem__total=400.0,
                swap__used=0.0,
                swap__total=0.0,
                disk__used=[
                    {"labels": {"mount": "/"}, "value": 50.0},
                    {"labels": {"mount": "/home"}, "value": 10.0 * (k + 1)},
                    {"labels": {"mount": "/boot"}, "value": 5.0},
                ],
                disk__total=[
                    {"labels": {"mount": "/"}, "value": 200.0},
                    {"labels": {"mount": "/home"}, "value": 100.0},
                ],
            )
        )
    response = post(shared.server, key, {"samples": samples})
    assert response.status_code == 200, response.text
    return machine_id, base


# --------------------------------------------------------------------------- latest


def test_latest_values_with_derived_percentages(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, base = filled

    response = get(shared.server, shared.admin, f"/api/v1/machines/{machine_id}/latest")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["machine_id"] == machine_id
    assert values(body["items"])[("cpu.percent", "{}")] == 6.0
    assert values(body["items"])[("disk.used", '{"mount": "/home"}')] == 60.0
    assert len(body["items"]) == 10
    # swap.total is 0 and /boot has no total: neither gets a percentage.
    assert values(body["derived"]) == {
        ("disk.percent", '{"mount": "/"}'): 25.0,
        ("disk.percent", '{"mount": "/home"}'): 60.0,
        ("mem.percent", "{}"): 37.5,
    }
    newest = (base + timedelta(seconds=50)).isoformat()
    assert {d["timestamp"] for d in body["derived"]} == {newest}


def test_latest_of_one_metric_stored_or_derived(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, _ = filled
    path = f"/api/v1/machines/{machine_id}/latest"

    cpu = get(shared.server, shared.admin, path, metric="cpu.percent").json()
    disk = get(shared.server, shared.admin, path, metric="disk.percent").json()
    absent = get(shared.server, shared.admin, path, metric="gpu.percent").json()

    assert values(cpu["items"]) == {("cpu.percent", "{}"): 6.0}
    assert cpu["derived"] == []
    assert disk["items"] == []
    assert len(disk["derived"]) == 2
    assert absent == {"machine_id": machine_id, "items": [], "derived": []}


def test_a_collector_s_own_percentage_wins_over_the_derived_one(shared: Shared) -> None:
    machine_id, key = register(shared.server, shared.admin, "own-percent")
    when = at(1)
    metrics = {"mem__used": 1.0, "mem__total": 4.0, "mem__percent": 30.0}
    assert post(shared.server, key, {"samples": [sample(when, **metrics)]}).status_code == 200

    body = get(shared.server, shared.admin, f"/api/v1/machines/{machine_id}/latest").json()
    history = get(
        shared.server,
        shared.admin,
        f"/api/v1/machines/{machine_id}/history",
        metric="mem.percent",
        start=at(5).isoformat(),
    ).json()

    assert values(body["items"])[("mem.percent", "{}")] == 30.0
    assert body["derived"] == []
    assert [p[1] for p in history["series"][0]["points"]] == [30.0]


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("avg", [2.0, 5.0]), ("min", [1.0, 4.0]), ("max", [3.0, 6.0]), ("last", [3.0, 6.0])],
)
def test_history_aggregates_each_step(
    shared: Shared, filled: tuple[str, datetime], agg: str, expected: list[float]
) -> None:
    machine_id, base = filled
    end = base + timedelta(minutes=1)

    response = get(
        shared.server,
        shared.admin,
        f"/api/v1/machines/{machine_id}/history",
        metric="cpu.percent",
        start=base.isoformat(),
        end=end.isoformat(),
        step="30s",
        agg=agg,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metric"] == "cpu.percent"
    assert body["step"] == 30
    assert body["aggregation"] == agg
    assert body["start"] == base.isoformat()
    (series,) = body["series"]
    assert series["labels"] == {}
    assert series["resolution"] == "raw"
    stamps = [base.isoformat(), (base + timedelta(seconds=30)).isoformat()]
    assert series["points"] == [[t, v] for t, v in zip(stamps, expected, strict=True)]


def test_history_step_starts_are_spelled_as_isoformat_spells_them(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    # Steps of 7.5 s: some start on a whole second, others half-way through one.
    machine_id, base = filled
    response = get(
        shared.server,
        shared.admin,
        f"/api/v1/machines/{machine_id}/history",
        metric="cpu.percent",
        start=base.isoformat(),
        end=(base + timedelta(minutes=1)).isoformat(),
        step=7.5,
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    (series,) = response.json()["series"]
    steps = [0, 1, 2, 4, 5, 6]  # the points every 10 s fall in these steps
    expected = [
        [(base + k * timedelta(seconds=7.5)).isoformat(), float(i + 1)] for i, k in enumerate(steps)
    ]
    assert series["points"] == expected
    assert expected[1][0].endswith(".500000+00:00")
    assert expected[2][0].endswith(":15+00:00")


def test_history_selects_series_by_labels_and_takes_epoch_seconds(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, base = filled
    path = f"/api/v1/machines/{machine_id}/history"
    start, end = base.timestamp(), (base + timedelta(minutes=1)).timestamp()

    every = get(shared.server, shared.admin, path, metric="disk.used", start=start, end=end)
    home = get(
        shared.server,
        shared.admin,
        path,
        metric="disk.used",
        start=start,
        end=end,
        step=60,
        labels="mount:/home",
    )

    assert every.status_code == 200, every.text
    assert sorted(s["labels"]["mount"] for s in every.json()["series"]) == ["/", "/boot", "/home"]
    (series,) = home.json()["series"]
    assert series["labels"] == {"mount": "/home"}
    assert series["points"] == [[base.isoformat(), 35.0]]


def test_history_of_several_metrics_and_of_exactly_the_labels_asked_for(
    shared: Shared,
) -> None:
    machine_id, key = register(shared.server, shared.admin, "per-core")
    base = minute_start(20)
    cpu = [{"value": 50.0}] + [{"labels": {"cpu": str(n)}, "value": 10.0 * n} for n in range(8)]
    samples = [
        sample(
            base + timedelta(seconds=10 * k),
            cpu__percent=cpu,
            load__1=1.0,
            mem__used=100.0,
            mem__total=400.0,
            disk__used=[{"labels": {"mount": "/"}, "value": 50.0}],
            disk__total=[{"labels": {"mount": "/"}, "value": 200.0}],
        )
        for k in range(3)
    ]
    assert post(shared.server, key, {"samples": samples}).status_code == 200
    path = f"/api/v1/machines/{machine_id}/history"
    window = {"start": base.isoformat(), "end": (base + timedelta(minutes=1)).isoformat()}

    def series(**params: Any) -> list[tuple[str, dict[str, str], float]]:
        response = get(shared.server, shared.admin, path, step=60, **window, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["metric"] == params["metric"]
        return [(s["metric"], s["labels"], s["points"][0][1]) for s in body["series"]]

    assert len(series(metric="cpu.percent")) == 9
    assert series(metric="cpu.percent", exact="true") == [("cpu.percent", {}, 50.0)]
    assert series(metric="cpu.percent", exact="false", labels="cpu:3") == [
        ("cpu.percent", {"cpu": "3"}, 30.0)
    ]
    assert series(metric="cpu.percent", exact="true", labels="cpu:3") == [
        ("cpu.percent", {"cpu": "3"}, 30.0)
    ]
    # In the order asked for, derived ones included; a metric without data has no series.
    assert series(
        metric="mem.percent,load.1,cpu.percent,disk.percent,swap.percent", exact="true"
    ) == [
        ("mem.percent", {}, 25.0),
        ("load.1", {}, 1.0),
        ("cpu.percent", {}, 50.0),
    ]
    assert series(metric="load.1,disk.percent") == [
        ("load.1", {}, 1.0),
        ("disk.percent", {"mount": "/"}, 25.0),
    ]


def test_derived_history_divides_each_step(shared: Shared, filled: tuple[str, datetime]) -> None:
    machine_id, base = filled
    path = f"/api/v1/machines/{machine_id}/history"
    window = {"start": base.isoformat(), "end": (base + timedelta(minutes=1)).isoformat()}

    mem = get(shared.server, shared.admin, path, metric="mem.percent", step="30s", **window)
    disk = get(
        shared.server, shared.admin, path, metric="disk.percent", step=60, agg="max", **window
    )
    swap = get(shared.server, shared.admin, path, metric="swap.percent", **window)

    (series,) = mem.json()["series"]
    # avg(used) / avg(total): (100+110+120)/3 / 400, then (130+140+150)/3 / 400.
    assert [p[1] for p in series["points"]] == pytest.approx([27.5, 35.0])
    by_mount = {s["labels"]["mount"]: s["points"] for s in disk.json()["series"]}
    assert by_mount == {"/": [[base.isoformat(), 25.0]], "/home": [[base.isoformat(), 60.0]]}
    assert swap.json()["series"] == []


def test_history_defaults_to_the_last_hour_in_round_steps(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, _ = filled

    body = get(
        shared.server, shared.admin, f"/api/v1/machines/{machine_id}/history", metric="cpu.percent"
    ).json()

    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    assert body["step"] == 10
    assert body["aggregation"] == "avg"
    assert start.timestamp() % 10 == 0
    assert timedelta(hours=1) <= end - start < timedelta(hours=1, seconds=10)
    assert (end - start) / timedelta(seconds=10) <= 500
    (series,) = body["series"]
    assert [p[1] for p in series["points"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_history_takes_times_relative_to_now(shared: Shared, filled: tuple[str, datetime]) -> None:
    machine_id, base = filled
    path = f"/api/v1/machines/{machine_id}/history"

    before = datetime.now(UTC)
    relative = get(
        shared.server, shared.admin, path, metric="cpu.percent", start="-30m", end="-90s", step=60
    ).json()
    after = datetime.now(UTC)

    start, end = datetime.fromisoformat(relative["start"]), datetime.fromisoformat(relative["end"])
    assert start.timestamp() % 60 == 0  # rounded down to a whole step, like the default range
    assert before - timedelta(minutes=31) < start <= after - timedelta(minutes=30)
    assert before - timedelta(seconds=90) <= end <= after - timedelta(seconds=90)
    window = {"start": relative["start"], "end": relative["end"]}
    explicit = get(shared.server, shared.admin, path, metric="cpu.percent", step=60, **window)
    assert relative["series"] == explicit.json()["series"]
    assert [base.isoformat(), 3.5] in relative["series"][0]["points"]  # avg of 1..6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "metric"),
        ({"metric": "cpu.percent", "start": "-5x"}, "start"),
        ({"metric": "cpu.percent", "start": "-99999999w"}, "start"),
        ({"metric": "cpu.percent", "start": "-5m", "end": "-10m"}, "end"),
        ({"metric": "Not A Metric"}, "metric"),
        ({"metric": "cpu.percent", "start": "yesterday"}, "start"),
        ({"metric": "cpu.percent", "start": "2026-01-01T00:00:00"}, "start"),
        ({"metric": "cpu.percent", "end": "1e400"}, "end"),
        ({"metric": "cpu.percent", "end": "0001-01-01T00:00:30Z"}, "end"),
        ({"metric": "cpu.percent", "start": 2_000_000_000, "end": 1_000_000_000}, "end"),
        ({"metric": "cpu.percent", "step": "0"}, "step"),
        ({"metric": "cpu.percent", "step": "-5"}, "step"),
        ({"metric": "cpu.percent", "step": "soon"}, "step"),
        ({"metric": "cpu.percent", "step": "nan"}, "step"),
        ({"metric": "cpu.percent", "step": "100ms"}, "step"),
        ({"metric": "cpu.percent", "agg": "median"}, "agg"),
        ({"metric": "cpu.percent", "labels": "mount"}, "labels"),
        ({"metric": "cpu.percent", "labels": "Mount:/"}, "labels"),
        ({"metric": "cpu.percent", "labels": "a:1,a:2"}, "labels"),
        ({"metric": "cpu.percent", "resolution": "raw"}, "resolution"),
        ({"metric": ["cpu.percent", "mem.used"]}, "metric"),
        ({"metric": "cpu.percent,"}, "metric"),
        ({"metric": "cpu.percent,cpu.percent"}, "metric"),
        ({"metric": ",".join(f"m.n{k}" for k in range(17))}, "metric"),
        ({"metric": "cpu.percent", "exact": "yes"}, "exact"),
    ],
)
def test_bad_history_parameters_are_named(
    shared: Shared, filled: tuple[str, datetime], params: dict[str, Any], field: str
) -> None:
    machine_id, _ = filled

    response = get(shared.server, shared.admin, f"/api/v1/machines/{machine_id}/history", **params)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["field"] == field
    assert field in error["message"]


def test_a_plus_sign_decoded_as_a_space_still_reads_as_an_offset(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, base = filled
    local = base.astimezone(UTC).replace(tzinfo=None).isoformat() + " 00:00"
    path = f"/api/v1/machines/{machine_id}/history?metric=cpu.percent&step=60&start={local}"

    with shared.server.client(shared.admin) as client:
        response = client.get(path)

    assert response.status_code == 200, response.text
    assert response.json()["start"] == base.isoformat()


# --------------------------------------------------------------------------- scoping


def test_other_users_machines_are_not_found_on_every_query(
    shared: Shared, filled: tuple[str, datetime]
) -> None:
    machine_id, _ = filled
    stranger = add_user(shared.server, shared.admin, "stranger")
    own_id, own_key = register(shared.server, stranger, "strangers-own")
    paths = [
        f"/api/v1/machines/{machine_id}/latest",
        f"/api/v1/machines/{machine_id}/history?metric=cpu.percent",
        f"/api/v1/machines/{machine_id}/stream",
    ]

    with shared.server.client(stranger) as client:
        for path in paths:
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        for path in (p.replace(machine_id, "no-such-machine") for p in paths):
            assert client.get(path).status_code == 404, path
        assert client.get(f"/api/v1/machines/{own_id}/latest").status_code == 200
    with shared.server.client(own_key) as client:
        assert client.get(f"/api/v1/machines/{own_id}/latest").status_code == 403
    with shared.server.client() as client:
        assert client.get(paths[0]).status_code == 401
    # The admin sees everyone's machines.
    assert get(shared.server, shared.admin, f"/api/v1/machines/{own_id}/latest").status_code == 200


# --------------------------------------------------------------------------- live stream


class StreamReader:
    """Reads an event stream in a thread; lines arrive on ``lines`` (None at the end)."""

    def __init__(
        self, server: LiveServer, token: str, machine_id: str, *, cookie: bool = False
    ) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.status: int | None = None
        self.content_type = ""
        self.error: BaseException | None = None
        # The dashboard's way: the session in its cookie rather than a bearer token.
        client = server.client(cookies={SESSION_COOKIE: token}) if cookie else server.client(token)
        self._thread = threading.Thread(target=self._read, args=(client, machine_id), daemon=True)
        self._thread.start()

    def _read(self, client: httpx.Client, machine_id: str) -> None:
        try:
            with (
                client,
                client.stream("GET", f"/api/v1/machines/{machine_id}/stream") as response,
            ):
                self.status = response.status_code
                self.content_type = response.headers["content-type"]
                for line in response.iter_lines():
                    self.lines.put(line)
        except BaseException as error:
            self.error = error
        finally:
            self.lines.put(None)

    def next_line(self, timeout: float = 10.0) -> str | None:
        return self.lines.get(timeout=timeout)

    def next_event(self) -> tuple[str, str]:
        """The next ``(event, data)``, skipping comments and blank lines."""
        event = data = None
        while True:
            line = self.next_line()
            assert line is not None, f"the stream ended ({self.error!r})"
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and event is not None and data is not None:
                return event, data

    def wait_subscribed(self) -> None:
        while (line := self.next_line()) != ": subscribed":
            assert line is not None, f"the stream ended ({self.error!r})"

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive()

    def wait_end(self, deadline: float = 15.0) -> list[str]:
        """The lines that came before the stream ended, which it must do within ``deadline`` s."""
        ends_by = time.monotonic() + deadline
        lines = []
        while (line := self.lines.get(timeout=max(0.0, ends_by - time.monotonic()))) is not None:
            lines.append(line)
        return lines


def test_the_stream_pushes_each_new_sample(shared: Shared) -> None:
    machine_id, key = register(shared.server, shared.admin, "streamed")
    reader = StreamReader(shared.server, shared.admin, machine_id)
    reader.wait_subscribed()
    assert reader.status == 200
    assert reader.content_type.startswith("text/event-stream")
    first, second = at(2), at(1)

    assert (
        post(shared.server, key, {"samples": [sample(first, cpu__percent=7.5)]}).status_code == 200
    )
    event, data = reader.next_event()
    disks = [{"labels": {"mount": "/"}, "value": 3.0}]
    body = {"samples": [sample(second, disk__used=disks)]}
    assert post(shared.server, key, body).status_code == 200
    later = reader.next_event()

    assert event == "sample"
    assert json.loads(data) == {"timestamp": first.isoformat(), "metrics": {"cpu.percent": 7.5}}
    assert later[0] == "sample"
    assert json.loads(later[1]) == {
        "timestamp": second.isoformat(),
        "metrics": {"disk.used": disks},
    }
    shared.server.app.state.live.close()
    reader.join()


def test_the_stream_sends_keepalives_and_ends_cleanly_at_shutdown(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_routes, "KEEPALIVE_SECONDS", 0.2)
    admin = server.login()
    machine_id, _ = register(server, admin, "idle")
    reader = StreamReader(server, admin, machine_id)
    reader.wait_subscribed()

    while (line := reader.next_line()) != ": keepalive":
        assert line is not None
    server.app.state.live.close()
    reader.join()
    server.stop()

    assert reader.error is None  # the response ended properly, not cut off


def _open_checked_stream(
    server: LiveServer, token: str, machine_id: str, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> StreamReader:
    """A stream that has been quiet long enough to be re-checked several times (recheck
    0.1 s, keepalive 0.5 s), so that ending it later is the credential's doing."""
    monkeypatch.setattr(query_routes, "KEEPALIVE_SECONDS", 0.5)
    reader = StreamReader(server, token, machine_id, **kw)
    reader.wait_subscribed()
    assert reader.status == 200
    while (line := reader.next_line()) != ": keepalive":
        assert line is not None, f"the stream ended early ({reader.error!r})"
    return reader


@pytest.mark.parametrize("cookie", [False, True], ids=["bearer", "cookie"])
@pytest.mark.parametrize(
    "ending", ["logout", "password change", "user deletion", "machine deletion"]
)
def test_the_stream_ends_with_its_session_or_machine(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, ending: str, cookie: bool
) -> None:
    server = make_server(server={"stream_recheck": "0.1s"})
    admin = server.login()
    user = add_user(server, admin, "watcher")
    machine_id, _ = register(server, user, "watched")
    reader = _open_checked_stream(server, user, machine_id, monkeypatch, cookie=cookie)

    with server.client(admin) as as_admin, server.client(user) as as_user:
        if ending == "logout":
            assert as_user.post("/api/v1/auth/logout").status_code == 204
        elif ending == "password change":
            other = server.login("watcher", PASSWORD)  # the change keeps only this session
            change = {"current_password": PASSWORD, "new_password": "a new password!"}
            with server.client(other) as as_other:
                assert as_other.post("/api/v1/auth/password", json=change).status_code == 204
        elif ending == "machine deletion":
            assert as_admin.delete(f"/api/v1/machines/{machine_id}").status_code == 204
        else:
            user_id = as_user.get("/api/v1/auth/me").json()["id"]
            assert as_admin.delete(f"/api/v1/users/{user_id}").status_code == 204
    reader.wait_end()
    assert reader.error is None


def test_the_stream_ends_when_its_session_expires(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(server={"stream_recheck": "0.1s", "session_ttl": "8s"})
    machine_id, _ = register(server, server.login(), "watched")
    reader = _open_checked_stream(server, server.login(), machine_id, monkeypatch)

    reader.wait_end(deadline=15.0)

    assert reader.error is None


def test_the_stream_ends_with_a_logout_through_another_server(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    a = make_server(data_dir=shared, server={"stream_recheck": "0.1s"})
    b = make_server(data_dir=shared)
    token = a.login()
    machine_id, _ = register(a, token, "watched")
    reader = _open_checked_stream(a, token, machine_id, monkeypatch)

    with b.client(token) as on_b:
        assert on_b.post("/api/v1/auth/logout").status_code == 204

    reader.wait_end()
    assert reader.error is None


def test_a_slow_subscriber_loses_its_oldest_samples_not_memory() -> None:
    samples = [Sample(datetime(2026, 1, 1, tzinfo=UTC), [Reading("a.b", i)]) for i in range(5)]

    async def main() -> None:
        feed = LiveFeed(queue_size=3)
        with feed.subscribe("m1") as subscription, feed.subscribe("m2") as other:
            feed.publish("m1", samples[:2])
            feed.publish("m1", samples[2:])
            delivery = await subscription.receive(timeout=1)
            assert delivery is not None
            assert delivery.samples == tuple(samples[2:])
            assert delivery.dropped == 2
            assert await other.receive(timeout=0.01) == type(delivery)(())
            feed.close()
            assert await subscription.receive(timeout=1) is None
        assert feed.subscribers == 0

    anyio.run(main)


def test_a_watch_of_several_machines_says_which_ones_got_samples() -> None:
    samples = [Sample(datetime(2026, 1, 1, tzinfo=UTC), [Reading("a.b", 1)])]

    async def main() -> None:
        feed = LiveFeed()
        with feed.subscribe("m1") as single:
            async with feed.watch_changes(["m1", "m2", "m3"]) as changes:
                assert feed.subscribers == 4
                assert await changes.receive(timeout=0.01) == set()
                feed.publish("m1", samples)
                feed.publish("m3", samples)
                feed.publish("m3", samples)
                feed.publish("elsewhere", samples)
                assert await changes.receive(timeout=1) == {"m1", "m3"}
                assert await changes.receive(timeout=0.01) == set()
                # the machine's own stream still gets them
                delivery = await single.receive(timeout=1)
                assert delivery is not None
                assert delivery.samples == tuple(samples)
                feed.close()
                assert await changes.receive(timeout=1) is None
        assert feed.subscribers == 0
        async with feed.watch_changes(["m1"]) as late:  # a closed feed closes new watches at once
            assert await late.receive(timeout=1) is None

    anyio.run(main)


def test_the_stream_is_documented_as_server_sent_events(shared: Shared) -> None:
    document = get(shared.server, shared.admin, "/api/v1/openapi.json").json()

    stream = document["paths"]["/api/v1/machines/{machine_id}/stream"]["get"]
    history = document["paths"]["/api/v1/machines/{machine_id}/history"]["get"]

    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {p["name"]: p["required"] for p in history["parameters"]} == {
        "machine_id": True,
        "metric": True,
        "start": False,
        "end": False,
        "step": False,
        "agg": False,
        "labels": False,
        "exact": False,
    }


@pytest.mark.parametrize(
    ("span", "step"),
    [
        (timedelta(minutes=1), timedelta(seconds=1)),
        (timedelta(hours=1), timedelta(seconds=10)),
        (timedelta(days=1), timedelta(minutes=5)),
        (timedelta(days=30), timedelta(hours=2)),
        (timedelta(days=365 * 50), timedelta(days=37)),
    ],
)
def test_default_steps_are_round_and_keep_histories_short(span: timedelta, step: timedelta) -> None:
    end = datetime(2026, 11, 23, 16, 0, 7, tzinfo=UTC)

    assert queries.auto_step(end - span, end) == step
    assert queries.align(end, timedelta(seconds=10)) == end.replace(second=0)
