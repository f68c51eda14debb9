"""Engines for the shared SQL storage tests: a SQLite file, and a real PostgreSQL server.

Tests that take the ``engine`` (or ``storage``) fixture run once per database.
PostgreSQL comes from ``LUNASENTRI_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test run works in
a schema of its own (migrated once, emptied before each test) and drops it at
the end, so parallel and earlier runs never collide. Where no server answers,
those tests skip and say which URL they tried, or fail when
``LUNASENTRI_TEST_REQUIRE_POSTGRES=1`` (CI, and anyone who must know they ran).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sql_support import NO_RETENTION, OpenStorage
from sqlalchemy.engine import Engine, make_url

from lunasentri_core.model import RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage, metadata
from lunasentri_core.storage.sql.schema import storage_meta

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("LUNASENTRI_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
REQUIRE_POSTGRES = os.environ.get("LUNASENTRI_TEST_REQUIRE_POSTGRES", "") not in ("", "0")


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _unavailable(reason: str) -> NoReturn:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (LUNASENTRI_TEST_REQUIRE_POSTGRES is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server's URL, or a skip naming it when it does not answer."""
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    except Exception as error:  # a bad URL or a missing driver
        _unavailable(f"cannot use PostgreSQL at {_shown(POSTGRES_URL)}: {error}")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        _unavailable(
            f"PostgreSQL is not reachable at {_shown(POSTGRES_URL)} ({reason}); "
            "set LUNASENTRI_TEST_POSTGRES_URL"
        )
    finally:
        engine.dispose()
    return POSTGRES_URL


def _schema_engine(url: str, schema: str) -> Engine:
    return sa.create_engine(
        url, connect_args={"options": f"-c search_path={schema}", "connect_timeout": 5}
    )


@contextmanager
def _schema(url: str) -> Iterator[str]:
    """A schema of its own for this process, dropped on the way out."""
    name = f"lstest_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        yield name
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """This test run's schema, migrated once; tests empty its tables before they start."""
    with _schema(postgres_url) as name:
        engine = _schema_engine(postgres_url, name)
        SqlStorage(engine).migrate()
        engine.dispose()
        yield name


@pytest.fixture
def postgres_engine(postgres_url: str, postgres_schema: str) -> Iterator[Engine]:
    """An engine on this run's migrated schema, with every table emptied."""
    engine = _schema_engine(postgres_url, postgres_schema)
    with engine.begin() as conn:
        # DELETE beats TRUNCATE on tables this small.
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        conn.execute(sa.insert(storage_meta).values(key="series_epoch", value=0))
    yield engine
    engine.dispose()


@pytest.fixture
def empty_postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine on a schema of its own that nothing has touched yet."""
    with _schema(postgres_url) as name:
        engine = _schema_engine(postgres_url, name)
        yield engine
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; tests start from copies, which is much faster than migrating."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    SqlStorage(engine).migrate()
    engine.dispose()
    return path


@pytest.fixture
def sqlite_engine(tmp_path: Path, sqlite_template: Path) -> Iterator[Engine]:
    """An engine on a migrated, empty SQLite file of this test's own."""
    path = tmp_path / "store.db"
    shutil.copyfile(sqlite_template, path)
    # The SQLite plugin's default busy timeout (30 s), not the driver's 5 s: concurrency
    # tests check correctness, and a loaded CI machine can hold the write lock that long.
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    yield engine
    engine.dispose()


@pytest.fixture
def empty_sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    yield engine
    engine.dispose()


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """A plain engine of each supported database (the shared code must not need more)."""
    result: Engine = request.getfixturevalue(f"{request.param}_engine")
    return result


@pytest.fixture(params=DATABASES)
def empty_engine(request: pytest.FixtureRequest) -> Engine:
    """An engine on a database no migration has run on."""
    name = f"empty_{request.param}_engine"
    result: Engine = request.getfixturevalue(name)
    return result


@pytest.fixture
def open_storage(engine: Engine) -> Iterator[OpenStorage]:
    """Open (and later close) migrated stores on ``engine``; each is a separate "process"."""
    opened: list[SqlStorage] = []

    def open_(retention: RetentionPolicy = NO_RETENTION, **kwargs: object) -> SqlStorage:
        store = SqlStorage(engine, retention=retention, **kwargs)  # type: ignore[arg-type]
        store.migrate()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def storage(open_storage: OpenStorage) -> SqlStorage:
    """A migrated store that keeps everything (no retention)."""
    return open_storage()
