"""Ingest over real HTTP: JSON and gzip, durability, idempotence, limits, bad input."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import pytest

from lunasentri_core.config import Settings
from lunasentri_core.hub import open_storage
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.services.ingest import TokenBucket
from lunasentri_core.storage.protocols import StorageBackend

from .conftest import ADMIN_PASSWORD, LiveServer, MakeServer, free_port

PASSWORD = "a long enough password 42"


# --------------------------------------------------------------------------- helpers (shared)


def register(server: LiveServer, token: str, name: str) -> tuple[str, str]:
    """Register a machine as the token's user: its id and API key."""
    with server.client(token) as client:
        response = client.post("/api/v1/machines", json={"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["machine"]["id"], body["api_key"]


def add_user(server: LiveServer, admin: str, username: str) -> str:
    """A new (non-admin) user's session token."""
    with server.client(admin) as client:
        created = client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return server.login(username, PASSWORD)


def at(minutes_ago: float) -> datetime:
    """A whole-second time this many minutes ago (inside the accepted window)."""
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(minutes=minutes_ago)


def sample(when: datetime | float | str, **metrics: Any) -> dict[str, Any]:
    stamp = when.isoformat() if isinstance(when, datetime) else when
    wire = {name.replace("__", "."): value for name, value in metrics.items()}
    return {"timestamp": stamp, "metrics": wire}


def post(server: LiveServer, key: str | None, body: object, **kwargs: Any) -> httpx.Response:
    with server.client(key) as client:
        if isinstance(body, bytes):
            # As the agent sends it (gzip or not); test_cross_site checks other types.
            headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
            return client.post("/api/v1/ingest", content=body, headers=headers, **kwargs)
        return client.post("/api/v1/ingest", json=body, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def latest(server: LiveServer, token: str, machine_id: str) -> dict[tuple[str, str], float]:
    with server.client(token) as client:
        response = client.get(f"/api/v1/machines/{machine_id}/latest")
    assert response.status_code == 200, response.text
    return {
        (item["metric"], json.dumps(item["labels"], sort_keys=True)): item["value"]
        for item in response.json()["items"]
    }


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


@pytest.fixture
def machine(server: LiveServer, admin: str) -> tuple[str, str]:
    return register(server, admin, "web-1")


@attrs.frozen
class Shared:
    """One server for the many read-only or refused-request tests of a module."""

    server: LiveServer
    admin: str
    machine_id: str
    key: str


def shared_server(tmp_path_factory: pytest.TempPathFactory, **extra: Any) -> Iterator[Shared]:
    """A server with a registered machine; ``extra`` settings are added to the defaults."""
    settings = Settings.load(
        environ={},
        data_dir=tmp_path_factory.mktemp("shared"),
        admin_password=ADMIN_PASSWORD,
        server={"host": "127.0.0.1"},
        **extra,
    )
    server = LiveServer(settings, port=free_port())
    server.start()
    try:
        admin = server.login()
        machine_id, key = register(server, admin, "shared")
        yield Shared(server, admin, machine_id, key)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


def read_storage(server: LiveServer) -> Iterator[StorageBackend]:
    backend = open_storage(server.settings, create_plugin_manager(server.settings))
    try:
        yield backend
    finally:
        backend.close()


# --------------------------------------------------------------------------- storing


def test_a_batch_is_stored_and_counted(
    server: LiveServer, admin: str, machine: tuple[str, str]
) -> None:
    machine_id, key = machine
    disks = [{"labels": {"mount": "/"}, "value": 10}, {"labels": {"mount": "/home"}, "value": 20}]
    body = {
        "samples": [
            sample(at(2), cpu__percent=12.5, disk__used=disks),
            sample(at(1).timestamp(), cpu__percent=14.0, proc__count=300),
        ]
    }

    response = post(server, key, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 5}
    assert latest(server, admin, machine_id) == {
        ("cpu.percent", "{}"): 14.0,
        ("proc.count", "{}"): 300.0,
        ("disk.used", '{"mount": "/"}'): 10.0,
        ("disk.used", '{"mount": "/home"}'): 20.0,
    }
    with server.client(admin) as client:
        seen = client.get(f"/api/v1/machines/{machine_id}").json()
        metrics = client.get("/metrics").text
    assert seen["last_seen"] is not None
    assert "lunasentri_ingested_points_total 5.0" in metrics
    (transactions,) = (
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("lunasentri_write_transaction_points_count")
    )
    assert transactions >= 1


def test_gzip_bodies_are_accepted_and_the_api_key_header_works(shared: Shared) -> None:
    server, admin = shared.server, shared.admin
    machine_id, key = register(server, admin, "gzip")
    raw = json.dumps({"samples": [sample(at(1), cpu__percent=3.0)]}).encode()

    with server.client() as client:
        response = client.post(
            "/api/v1/ingest",
            content=gzip.compress(raw),
            headers={
                "content-type": "application/json",
                "content-encoding": "gzip",
                "x-api-key": key,
            },
        )

    assert response.status_code == 200, response.text
    assert latest(server, admin, machine_id) == {("cpu.percent", "{}"): 3.0}


def test_a_retried_batch_is_stored_once_and_the_first_value_wins(shared: Shared) -> None:
    server, admin = shared.server, shared.admin
    machine_id, key = register(server, admin, "retried")
    when = at(1)
    assert post(server, key, {"samples": [sample(when, cpu__percent=1.0)]}).status_code == 200

    retried = post(server, key, {"samples": [sample(when, cpu__percent=99.0)]})

    assert retried.status_code == 200
    assert latest(server, admin, machine_id) == {("cpu.percent", "{}"): 1.0}
    with server.client(admin) as client:
        history = client.get(
            f"/api/v1/machines/{machine_id}/history",
            params={"metric": "cpu.percent", "step": "1s", "start": at(5).timestamp()},
        ).json()
    assert [s["points"] for s in history["series"]] == [[[when.isoformat(), 1.0]]]


def test_an_acknowledged_batch_survives_the_server_stopping(
    server: LiveServer, machine: tuple[str, str]
) -> None:
    machine_id, key = machine
    samples = [sample(at(3 - i / 60), cpu__percent=float(i)) for i in range(50)]
    assert post(server, key, {"samples": samples}).status_code == 200

    server.stop()

    for storage in read_storage(server):
        (value,) = storage.metrics.latest([machine_id], "cpu.percent")
        assert value.value == 49.0
        assert storage.state.get_machine(machine_id).last_seen is not None


def test_concurrent_ingests_from_many_machines_all_land(shared: Shared) -> None:
    server, admin = shared.server, shared.admin
    machines = [register(server, admin, f"node-{i}") for i in range(8)]
    batches, per_batch = 5, 20
    failures: list[str] = []

    def agent(key: str) -> None:
        with server.client(key) as client:
            for b in range(batches):
                samples = [
                    sample(at(30 - (b * per_batch + s) / 60), cpu__percent=float(s), mem__used=1.0)
                    for s in range(per_batch)
                ]
                response = client.post("/api/v1/ingest", json={"samples": samples})
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=agent, args=(key,)) for _, key in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    with server.client(admin) as client:
        for machine_id, _ in machines:
            history = client.get(
                f"/api/v1/machines/{machine_id}/history",
                params={"metric": "cpu.percent", "step": "1s", "start": at(40).timestamp()},
            ).json()
            (series,) = history["series"]
            assert len(series["points"]) == batches * per_batch


# --------------------------------------------------------------------------- limits


def test_a_body_over_the_limit_is_refused(make_server: MakeServer) -> None:
    server = make_server(server={"max_body_bytes": 2_000})
    _, key = register(server, server.login(), "web-1")
    samples = [sample(at(1 + i / 60), cpu__percent=1.0) for i in range(100)]

    plain = post(server, key, {"samples": samples})
    bomb = post(
        server,
        key,
        gzip.compress(json.dumps({"samples": samples}).encode()),
        headers={"content-encoding": "gzip"},
    )

    assert plain.status_code == 413
    assert error_of(plain)["code"] == "too_large"
    assert bomb.status_code == 413
    assert "decompressed" in error_of(bomb)["message"]


def test_a_batch_with_too_many_points_is_refused(make_server: MakeServer) -> None:
    server = make_server(server={"max_batch_points": 5})
    admin = server.login()
    machine_id, key = register(server, admin, "web-1")
    samples = [sample(at(1 + i / 60), cpu__percent=1.0, mem__used=2.0) for i in range(3)]

    response = post(server, key, {"samples": samples})

    assert response.status_code == 413
    assert error_of(response)["code"] == "too_many_points"
    assert "6 readings" in error_of(response)["message"]
    assert latest(server, admin, machine_id) == {}


def test_a_machine_over_its_rate_gets_429_and_nothing_is_stored(
    make_server: MakeServer,
) -> None:
    # So slow a refill that the test's own duration adds no token.
    server = make_server(server={"ingest_rate": 0.01, "ingest_burst": 10})
    admin = server.login()
    machine_id, key = register(server, admin, "web-1")
    _, other_key = register(server, admin, "web-2")

    def send(machine_key: str, **metrics: float) -> httpx.Response:
        return post(server, machine_key, {"samples": [sample(at(1), **metrics)]})

    eight = [sample(at(5 - i / 60), cpu__percent=float(i)) for i in range(8)]
    assert post(server, key, {"samples": eight}).status_code == 200
    too_big = send(key, **{f"m__m{i}": i for i in range(11)})
    three = send(key, a__b=1, c__d=2, e__f=3)
    two = send(key, cpu__percent=1.0, extra__x=1)
    one = send(key, g__h=1)
    other = send(other_key, cpu__percent=1.0)

    assert too_big.status_code == 413  # more than the burst: it could never pass
    assert error_of(too_big)["code"] == "too_many_points"
    assert three.status_code == 429  # 2 tokens left, 3 wanted
    assert two.status_code == 200
    assert one.status_code == 429  # none left: refused before the body is read
    for refused in (three, one):
        assert error_of(refused)["code"] == "rate_limited"
        retry_after = refused.headers["retry-after"]
        assert retry_after.isdigit()
        assert int(retry_after) >= 1
    assert other.status_code == 200  # buckets are per machine
    stored = latest(server, admin, machine_id)
    assert ("extra.x", "{}") in stored
    assert not {("a.b", "{}"), ("g.h", "{}"), ("m.m0", "{}")} & set(stored)


# --------------------------------------------------------------------------- bad input


def test_callers_without_a_machine_key_are_refused(shared: Shared) -> None:
    server, admin = shared.server, shared.admin
    body = {"samples": [sample(at(1), cpu__percent=1.0)]}

    assert post(server, None, body).status_code == 401
    assert post(server, "lsk_not-a-real-key", body).status_code == 401
    assert post(server, "nonsense", body).status_code == 401
    as_user = post(server, admin, body)
    assert as_user.status_code == 403
    assert error_of(as_user)["code"] == "forbidden"


FUTURE = "2999-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b'{"samples": [', 400, "malformed_json", None),
        (b"", 400, "malformed_json", None),
        (b'{"samples": [{"timestamp": 0, "metrics": {"cpu.percent": NaN}}]}', 400, None, None),
        (b'{"samples": [{"timestamp": 0, "metrics": {"a.b": Infinity}}]}', 400, None, None),
        (
            b'{"samples": [{"timestamp": "%NOW%", "metrics": {"a.b": 1e999}}]}',
            422,
            "invalid",
            "samples[0].metrics.a.b",
        ),
        ([], 422, "invalid", None),
        ({}, 422, "invalid", "samples"),
        ({"samples": []}, 422, "invalid", "samples"),
        ({"samples": "lots"}, 422, "invalid", "samples"),
        ({"samples": ["%SAMPLE%"], "extra": 1}, 422, "invalid", "extra"),
        (
            {"samples": [{"timestamp": "%NOW%", "metrics": {"cpu.percent": "12"}}]},
            422,
            None,
            "samples[0].metrics.cpu.percent",
        ),
        (
            {"samples": [{"timestamp": "%NOW%", "metrics": {"cpu.percent": True}}]},
            422,
            None,
            "samples[0].metrics.cpu.percent",
        ),
        (
            {"samples": [{"timestamp": "%NOW%", "metrics": {"Bad Name": 1}}]},
            422,
            None,
            "samples[0].metrics.Bad Name",
        ),
        (
            {"samples": [{"timestamp": "%NOW%", "metrics": {"d.u": [{"value": 1, "x": 2}]}}]},
            422,
            None,
            "samples[0].metrics.d.u[0].x",
        ),
        (
            {"samples": [{"timestamp": "%NOW%", "metrics": {}, "host": "a"}]},
            422,
            None,
            "samples[0].host",
        ),
        (
            {"samples": [{"timestamp": "2026-01-01T00:00:00", "metrics": {}}]},
            422,
            None,
            "samples[0].timestamp",
        ),
        ({"samples": [{"timestamp": 1e20, "metrics": {}}]}, 422, None, "samples[0].timestamp"),
        (
            {"samples": ["%SAMPLE%", {"timestamp": FUTURE, "metrics": {"a.b": 1}}]},
            422,
            None,
            "samples[1].timestamp",
        ),
        (
            {"samples": [{"timestamp": "2000-01-01T00:00:00Z", "metrics": {"a.b": 1}}]},
            422,
            None,
            "samples[0].timestamp",
        ),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(
    shared: Shared, body: object, status: int, code: str | None, field: str | None
) -> None:
    server, admin, machine_id, key = shared.server, shared.admin, shared.machine_id, shared.key
    now = at(1).isoformat()
    if isinstance(body, bytes):
        body = body.replace(b"%NOW%", now.encode())
    else:
        text = json.dumps(body).replace('"%SAMPLE%"', json.dumps(sample(now, z__z=1)))
        body = json.loads(text.replace("%NOW%", now))

    response = post(server, key, body)

    assert response.status_code == status, response.text
    error = error_of(response)
    if code is not None:
        assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    assert error["message"]
    assert latest(server, admin, machine_id) == {}


def test_bad_gzip_and_unknown_encodings_are_refused(shared: Shared) -> None:
    server, key = shared.server, shared.key
    raw = json.dumps({"samples": [sample(at(1), cpu__percent=1.0)]}).encode()

    not_gzip = post(server, key, raw, headers={"content-encoding": "gzip"})
    truncated = post(server, key, gzip.compress(raw)[:-12], headers={"content-encoding": "gzip"})
    brotli = post(server, key, raw, headers={"content-encoding": "br"})

    assert (not_gzip.status_code, error_of(not_gzip)["code"]) == (400, "malformed_gzip")
    assert (truncated.status_code, error_of(truncated)["code"]) == (400, "malformed_gzip")
    assert (brotli.status_code, error_of(brotli)["code"]) == (415, "unsupported_encoding")


def test_timestamp_errors_name_each_sample(shared: Shared) -> None:
    server, key = shared.server, shared.key
    samples = [sample(at(1), a__b=1), sample(FUTURE, a__b=1), sample(0, a__b=1)]

    response = post(server, key, {"samples": samples})

    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == ["samples[1].timestamp", "samples[2].timestamp"]
    assert "ahead of the server's clock" in details[0]["message"]
    assert "older than" in details[1]["message"]


# --------------------------------------------------------------------------- the token bucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=100, clock=clock, max_keys=2)

    assert bucket.take("a", 100) == 0
    assert bucket.take("a", 5) == pytest.approx(0.5)  # 5 tokens at 10/s
    assert bucket.wait("a") == pytest.approx(0.1)
    clock.now += 0.5
    assert bucket.take("a", 5) == 0
    bucket.give_back("a", 5)  # the write failed: the tokens come back
    assert bucket.take("a", 5) == 0
    clock.now += 1_000
    assert bucket.take("a", 101) == pytest.approx(0.1)  # never more than the burst


def test_token_bucket_forgets_refilled_buckets_and_can_be_off() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=10, clock=clock, max_keys=2)
    for key in "abc":
        bucket.take(key, 10)
    clock.now += 10
    bucket.take("d", 1)  # over max_keys: the full ones (a, b, c) are dropped

    assert set(bucket._buckets) == {"d"}
    assert TokenBucket(rate=0, burst=0).take("a", 10**9) == 0
