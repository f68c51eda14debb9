"""Once-only jobs: one holder per name among the processes sharing a database.

Two :class:`Singletons` on two engines stand for two server processes. On
PostgreSQL the lock is a session advisory lock: ending the holder's session
(as its process dying does) frees the job for the other at its next ``hold``,
and the old holder learns it lost it. Schemas of one database are separate
deployments, each with its own holders. On a SQLite file the lock is a file
lock beside it; in memory there is one process, always holding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core import RetentionPolicy
from lunasentri_core.storage import hold_singleton
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.singleton import Singletons, lock_key


def schema_of(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(sa.func.current_schema())).scalar())


@pytest.fixture
def two_engines(
    postgres_url: str, empty_postgres_engine: Engine
) -> Iterator[tuple[Engine, Engine, str]]:
    """Two engines (two "processes") on one schema of this test's own."""
    schema = schema_of(empty_postgres_engine)
    second = sa.create_engine(postgres_url, connect_args={"options": f"-c search_path={schema}"})
    yield empty_postgres_engine, second, schema
    second.dispose()


def holder_pids(engine: Engine, name: str, schema: str) -> list[int]:
    classid, objid = lock_key(name, schema)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = :c AND objid = :o AND objsubid = 2"
            ),
            {"c": classid, "o": objid & 0xFFFFFFFF},
        )
        return list(rows.scalars())


@pytest.mark.postgres
def test_one_holder_per_job_and_a_dead_holder_is_taken_over(
    two_engines: tuple[Engine, Engine, str],
) -> None:
    first_engine, second_engine, schema = two_engines
    first, second = Singletons(first_engine), Singletons(second_engine)
    try:
        assert first.hold("heartbeat")
        assert first.hold("heartbeat")  # kept from pass to pass
        assert not second.hold("heartbeat")
        assert second.hold("maintenance")  # each name on its own
        assert first.held() == {"heartbeat"}
        pids = holder_pids(first_engine, "heartbeat", schema)
        assert len(pids) == 1

        with first_engine.connect() as conn:  # the holder's process "dies"
            conn.execute(sa.select(sa.func.pg_terminate_backend(pids[0])))
        assert second.hold("heartbeat")  # at its next pass
        assert not first.hold("heartbeat")  # and the old holder knows it lost it
        assert first.held() == frozenset()
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_release_and_close_hand_the_job_over(two_engines: tuple[Engine, Engine, str]) -> None:
    first_engine, second_engine, schema = two_engines
    first, second = Singletons(first_engine), Singletons(second_engine)
    try:
        assert first.hold("purge")
        first.release("purge")
        assert second.hold("purge")
        assert not first.hold("purge")
        second.close()
        assert first.hold("purge")
        assert len(holder_pids(first_engine, "purge", schema)) == 1
    finally:
        first.close()
        second.close()
    assert holder_pids(first_engine, "purge", schema) == []


@pytest.mark.postgres
def test_schemas_of_one_database_hold_their_jobs_apart(
    empty_postgres_engine: Engine, postgres_engine: Engine
) -> None:
    assert schema_of(empty_postgres_engine) != schema_of(postgres_engine)
    locks = [Singletons(empty_postgres_engine), Singletons(postgres_engine)]
    try:
        assert all(lock.hold("heartbeat") for lock in locks)
    finally:
        for lock in locks:
            lock.close()


def test_a_sqlite_file_has_one_holder_per_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lunasentri.db'}"
    first = SqlStorage(sa.create_engine(url), retention=RetentionPolicy())
    second = SqlStorage(sa.create_engine(url), retention=RetentionPolicy())
    try:
        assert hold_singleton(first, "heartbeat")
        assert not hold_singleton(second, "heartbeat")
        assert hold_singleton(second, "silences")
        first.release_singleton("heartbeat")
        assert hold_singleton(second, "heartbeat")
        second.close()
        assert hold_singleton(first, "heartbeat")
    finally:
        first.close()
        second.close()


def test_in_memory_and_backends_without_locks_always_hold() -> None:
    storage = SqlStorage(sa.create_engine("sqlite://"), serialize=True)
    try:
        assert hold_singleton(storage, "heartbeat")
        assert hold_singleton(storage, "heartbeat")
    finally:
        storage.close()
    assert hold_singleton(object(), "heartbeat")  # a backend one process uses
