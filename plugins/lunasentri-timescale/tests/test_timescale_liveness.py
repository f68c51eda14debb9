"""Pooled connections: pinged only when they may be dead, replaced when they are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core import RetentionPolicy
from lunasentri_timescale import TimescaleStorageFactory, liveness


def count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ping of ``engine``'s dialect, recorded (a one-element count)."""
    pings = [0]
    real = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings[0] += 1
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


class Clock:
    """``liveness``'s clock, moved by hand: a loaded machine that pauses this test
    for a second must not make a connection look idle."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(liveness, "monotonic", clock)
    return clock


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def terminate(postgres_url: str, pid: int) -> None:
    """End a backend from another connection, and wait until it is gone.

    ``pg_terminate_backend`` with a timeout waits for the backend to leave (it has
    sent its client the fatal error by then). Polling ``pg_stat_activity`` instead
    would need a transaction per poll: it is a snapshot taken once a transaction."""
    admin = sa.create_engine(postgres_url)
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}
            ).scalar_one()
        assert ended, f"backend {pid} did not end within 10 s"
    finally:
        admin.dispose()


@pytest.fixture
def engine(postgres_url: str, clock: Clock) -> Iterator[Engine]:
    """One pooled connection, pinged after 0.3 s of rest (by ``clock``)."""
    engine = sa.create_engine(postgres_url, pool_size=1, max_overflow=0)
    liveness.install(engine, ping_after=0.3)
    yield engine
    engine.dispose()


def test_a_connection_in_use_is_not_pinged(
    engine: Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(engine, monkeypatch)
    first = backend_pid(engine)  # a new connection: not pinged either
    for _ in range(5):
        clock.now += 0.2  # used again within ping_after of its return
        assert backend_pid(engine) == first
    assert pings[0] == 0
    clock.now += 0.4  # at rest longer than ping_after: pinged, and kept
    assert backend_pid(engine) == first
    assert pings[0] == 1


def test_a_connection_the_server_ended_is_replaced_before_use(
    engine: Engine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within ping_after of its last use: its socket tells, and the ping confirms.
    pings = count_pings(engine, monkeypatch)
    first = backend_pid(engine)
    terminate(postgres_url, first)
    assert liveness.quiet(_pooled(engine)) is False
    second = backend_pid(engine)  # no error: the pool opened a new connection
    assert second != first
    assert pings[0] == 1


def test_a_connection_closed_here_is_replaced(engine: Engine) -> None:
    first = backend_pid(engine)
    _pooled(engine).close()
    assert backend_pid(engine) != first


def test_the_factory_checks_its_pool_so(
    postgres_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = TimescaleStorageFactory.open(postgres_url, retention=RetentionPolicy())
    try:
        assert storage.engine.pool._pre_ping is False  # type: ignore[attr-defined]
        pings = count_pings(storage.engine, monkeypatch)
        first = backend_pid(storage.engine)
        assert backend_pid(storage.engine) == first
        assert pings[0] == 0
        terminate(postgres_url, first)
        assert backend_pid(storage.engine) != first
        assert pings[0] == 1
        clock.now += liveness.PING_AFTER + 1  # idle for longer: pinged though quiet
        backend_pid(storage.engine)
        assert pings[0] == 2
    finally:
        storage.close()


def _pooled(engine: Engine) -> Any:
    """The driver connection waiting in the pool (it holds one: none is checked
    out), taken without a checkout, which would check it."""
    (record,) = engine.pool._pool.queue  # type: ignore[attr-defined]
    return record.driver_connection
