"""Fixtures of the timescale plugin's tests: schemas of their own on a real PostgreSQL.

The server comes from ``LUNASENTRI_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Every schema a test
makes is named after this process and dropped at the end, so runs in parallel
never collide. Where no server answers, the tests skip and name the URL they
tried, or fail when ``LUNASENTRI_TEST_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lunasentri_core import RetentionPolicy
from lunasentri_core.storage.sql import metadata
from lunasentri_core.storage.sql.schema import storage_meta
from lunasentri_timescale import Mode, TimescaleSettings, TimescaleStorage, TimescaleStorageFactory

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("LUNASENTRI_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
REQUIRE_POSTGRES = os.environ.get("LUNASENTRI_TEST_REQUIRE_POSTGRES", "") not in ("", "0")


def _unavailable(reason: str) -> NoReturn:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (LUNASENTRI_TEST_REQUIRE_POSTGRES is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server's URL, or a skip naming it when it does not answer."""
    shown = make_url(POSTGRES_URL).render_as_string(hide_password=True)
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        _unavailable(f"PostgreSQL is not reachable at {shown} ({reason})")
    finally:
        engine.dispose()
    return POSTGRES_URL


def in_schema(url: str, schema: str) -> str:
    """``url`` pointed at ``schema`` through libpq's ``options`` (the documented way)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def new_schema(url: str) -> Iterator[str]:
    """A schema of this process's own, dropped on the way out."""
    name = f"lstest_ts_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        yield name
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


MakeSchema = Callable[[], str]


@pytest.fixture
def fresh_schema_url(postgres_url: str) -> Iterator[MakeSchema]:
    """Make URLs of new, empty schemas (dropped after the test)."""
    with ExitStack() as stack:

        def make() -> str:
            return in_schema(postgres_url, stack.enter_context(new_schema(postgres_url)))

        yield make


@pytest.fixture(scope="session")
def migrated_url(postgres_url: str) -> Iterator[str]:
    """A URL on this run's schema, migrated once through the plugin."""
    with new_schema(postgres_url) as name:
        url = in_schema(postgres_url, name)
        storage = TimescaleStorageFactory.open(url, retention=RetentionPolicy())
        storage.migrate()
        storage.close()
        yield url


@pytest.fixture
def emptied_url(migrated_url: str) -> str:
    """The migrated schema's URL, every table emptied first."""
    engine = sa.create_engine(migrated_url)
    try:
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
            conn.execute(sa.insert(storage_meta).values(key="series_epoch", value=0))
    finally:
        engine.dispose()
    return migrated_url


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory with a throwaway dist-info that declares the plugin's entry point.

    CI installs the plugin (editable), so its own entry point is found there;
    the throwaway one stands in where it is not installed.
    """
    directory = tmp_path / "site"
    directory.mkdir()
    if importlib.metadata.entry_points(group="lunasentri", name="timescale"):
        return directory
    dist_info = directory / "lunasentri_timescale-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lunasentri-timescale\nVersion: 0.1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[lunasentri]\ntimescale = lunasentri_timescale\n")
    return directory


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@pytest.fixture
def storage(fresh_schema_url: Callable[[], str]) -> Iterator[TimescaleStorage]:
    """A migrated store in plain PostgreSQL mode on a new schema."""
    settings = TimescaleSettings(mode=Mode.POSTGRES)
    opened = TimescaleStorageFactory.open(
        fresh_schema_url(), settings=settings, retention=RetentionPolicy()
    )
    assert isinstance(opened, TimescaleStorage)
    try:
        opened.migrate()
        yield opened
    finally:
        opened.close()
