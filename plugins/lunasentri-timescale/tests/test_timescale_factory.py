"""The factory: URL checks, connection settings, errors, and the mode it reports."""

from __future__ import annotations

import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from lunasentri_core import PluginError, RetentionPolicy, StorageError, StorageUnavailable
from lunasentri_core.plugins import PluginManager
from lunasentri_core.storage import Capability, storage_mode
from lunasentri_timescale import (
    Mode,
    Probe,
    TimescaleSettings,
    TimescaleStorage,
    TimescaleStorageFactory,
    choose_mode,
)
from lunasentri_timescale.factory import parse_url

SECRET = "s3cr3t-pw"


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql://u:{SECRET}@db/x", "is not a postgresql:// URL"),
        (f"postgresql+psycopg2://u:{SECRET}@db/x", "uses psycopg 3, not psycopg2"),
        (f"postgresql+asyncpg://u:{SECRET}@db/x", "uses psycopg 3, not asyncpg"),
        (f"postgresql://u:{SECRET}@db", "names no database"),
        (f"postgresql://u:{SECRET}@db:70000/x", "out of range"),
        (f"postgresql://u:{SECRET}@db:port/x", "is not a storage URL"),
        ("not a url", "is not a storage URL"),
    ],
)
def test_a_wrong_url_is_refused_without_its_password(url: str, expected: str) -> None:
    with pytest.raises(StorageError, match=expected) as raised:
        TimescaleStorageFactory.open(url)
    assert SECRET not in str(raised.value)
    assert not isinstance(raised.value, StorageUnavailable)


@pytest.mark.parametrize(
    "url", ["postgresql://u@db/x", "postgresql+psycopg://u@db/x", "postgresql://u@/x?host=/run"]
)
def test_both_schemes_mean_psycopg_3(url: str) -> None:
    assert parse_url(url).drivername == "postgresql+psycopg"


def test_the_factory_registers_both_schemes() -> None:
    assert TimescaleStorageFactory.schemes == ("postgresql", "postgresql+psycopg")
    assert TimescaleStorageFactory.settings_class is TimescaleSettings


# --------------------------------------------------------------------------- settings


def test_settings_come_from_the_plugins_table() -> None:
    manager = PluginManager(
        plugin_settings={
            "timescale": {
                "pool_size": 3,
                "max_overflow": 0,
                "pool_timeout": 5,
                "statement_timeout": 60,
                "application_name": "lunasentri-eu1",
                "mode": "postgres",
            }
        }
    )
    manager.register(sys.modules["lunasentri_timescale"], "timescale")
    component = manager.storage_for_scheme("postgresql+psycopg")
    assert component.cls is TimescaleStorageFactory
    assert manager.storage_for_scheme("postgresql").cls is TimescaleStorageFactory
    assert component.settings == TimescaleSettings(
        pool_size=3,
        max_overflow=0,
        pool_timeout=timedelta(seconds=5),
        statement_timeout=timedelta(seconds=60),
        application_name="lunasentri-eu1",
        mode=Mode.POSTGRES,
    )


def test_wrong_settings_name_their_path() -> None:
    manager = PluginManager(plugin_settings={"timescale": {"pool_size": 0, "pool_sise": 1}})
    manager.register(sys.modules["lunasentri_timescale"], "timescale")
    with pytest.raises(PluginError):
        manager.storage_for_scheme("postgresql")
    (failure,) = manager.failures
    assert "plugins.timescale" in failure.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_size", 0),
        ("max_overflow", -1),
        ("pool_timeout", timedelta(0)),
        ("connect_timeout", timedelta(0)),
        ("statement_timeout", timedelta(seconds=-1)),
    ],
)
def test_settings_out_of_range_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TimescaleSettings(**{field: value})  # type: ignore[arg-type]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="hypertable"):
        TimescaleSettings(mode="hypertable")


def test_other_settings_objects_are_refused() -> None:
    with pytest.raises(StorageError, match="expected TimescaleSettings"):
        TimescaleStorageFactory.open("postgresql://u@db/x", settings=object())


# --------------------------------------------------------------------------- modes


NONE = Probe(server_version="15.4")
INSTALLED = Probe(server_version="16.2", extension_version="2.14.2", license="timescale")
AVAILABLE = Probe(server_version="16.2", extension_available=True)


@pytest.mark.parametrize(
    ("probe", "requested", "expected"),
    [
        (NONE, Mode.AUTO, Mode.POSTGRES),
        (INSTALLED, Mode.AUTO, Mode.TIMESCALE),
        (AVAILABLE, Mode.AUTO, Mode.TIMESCALE),
        (INSTALLED, Mode.POSTGRES, Mode.POSTGRES),
        (NONE, Mode.POSTGRES, Mode.POSTGRES),
        (INSTALLED, Mode.TIMESCALE, Mode.TIMESCALE),
        (AVAILABLE, Mode.TIMESCALE, Mode.TIMESCALE),
    ],
)
def test_the_mode_follows_the_extension_and_the_setting(
    probe: Probe, requested: Mode, expected: Mode
) -> None:
    assert choose_mode(probe, requested) is expected


def test_timescale_mode_without_the_extension_says_what_is_missing() -> None:
    with pytest.raises(StorageError, match="neither installed in this database nor available"):
        choose_mode(NONE, Mode.TIMESCALE)


def test_a_probe_describes_what_it_found() -> None:
    assert NONE.describe() == "PostgreSQL 15.4, no timescaledb"
    assert INSTALLED.describe() == (
        "PostgreSQL 16.2, timescaledb 2.14.2 installed, license timescale"
    )
    assert AVAILABLE.describe() == "PostgreSQL 16.2, timescaledb available, not installed"


def _has_timescaledb(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
            return bool(conn.exec_driver_sql(query).scalar())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_backend_reports_the_mode_the_server_allows(postgres_url: str) -> None:
    storage = TimescaleStorageFactory.open(postgres_url, retention=RetentionPolicy())
    try:
        assert isinstance(storage, TimescaleStorage)
        expected = "timescale" if _has_timescaledb(postgres_url) else "postgres"
        assert storage.mode == expected
        assert storage_mode(storage) == expected
        assert (Capability.TIMESCALEDB in storage.capabilities) == (expected == "timescale")
        assert storage.probe.server_version.split(".")[0].isdigit()
    finally:
        storage.close()


@pytest.mark.postgres
def test_mode_timescale_is_refused_where_the_extension_is_missing(postgres_url: str) -> None:
    if _has_timescaledb(postgres_url):
        pytest.skip("this server has TimescaleDB: the refusal cannot happen here")
    with pytest.raises(StorageError, match="timescaledb extension"):
        TimescaleStorageFactory.open(postgres_url, settings=TimescaleSettings(mode=Mode.TIMESCALE))


# --------------------------------------------------------------------------- connections


@pytest.mark.postgres
def test_connections_carry_the_settings_and_the_url_s_options(migrated_url: str) -> None:
    settings = TimescaleSettings(
        pool_size=2, max_overflow=1, statement_timeout=timedelta(seconds=90)
    )
    storage = TimescaleStorageFactory.open(migrated_url, settings=settings)
    assert isinstance(storage, TimescaleStorage)
    try:
        with storage.engine.connect() as conn:
            shown = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                for name in ("search_path", "statement_timeout", "application_name")
            }
        schema = migrated_url.rsplit("search_path%3D", 1)[1]
        assert shown == {
            "search_path": schema,
            "statement_timeout": "90s",
            "application_name": "lunasentri",
        }
        assert storage.engine.pool.size() == 2  # type: ignore[attr-defined]
        assert storage.schema_revision() is not None  # found the migrated schema
    finally:
        storage.close()


@pytest.mark.postgres
def test_the_connection_returned_last_is_drawn_first(postgres_url: str) -> None:
    """The pool is LIFO: a quiet server keeps reusing its warm connections."""
    storage = TimescaleStorageFactory.open(postgres_url, settings=TimescaleSettings(pool_size=3))
    assert isinstance(storage, TimescaleStorage)
    try:
        first, second = storage.engine.connect(), storage.engine.connect()
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in (first, second)]
        first.close()
        second.close()
        for _ in range(3):
            with storage.engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pids[1]
    finally:
        storage.close()


@pytest.mark.postgres
def test_an_application_name_in_the_url_wins(postgres_url: str) -> None:
    storage = TimescaleStorageFactory.open(f"{postgres_url}?application_name=from-url")
    assert isinstance(storage, TimescaleStorage)
    try:
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "from-url"
    finally:
        storage.close()


@pytest.mark.postgres
def test_a_statement_past_the_timeout_is_cancelled(postgres_url: str) -> None:
    settings = TimescaleSettings(statement_timeout=timedelta(milliseconds=300))
    storage = TimescaleStorageFactory.open(postgres_url, settings=settings)
    assert isinstance(storage, TimescaleStorage)
    try:
        with pytest.raises(StorageError, match="statement timeout"), storage.db.read() as conn:
            conn.exec_driver_sql("SELECT pg_sleep(5)")
    finally:
        storage.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_an_unreachable_server_is_unavailable_without_the_password() -> None:
    url = f"postgresql://lunasentri:{SECRET}@127.0.0.1:{_closed_port()}/lunasentri"
    settings = TimescaleSettings(connect_timeout=timedelta(seconds=2))
    settings = TimescaleSettings(connect_timeout=timedelta(seconds=2))
    with pytest.raises(StorageUnavailable, match="cannot reach") as raised:
        TimescaleStorageFactory.open(url, settings=settings)
    assert SECRET not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


@pytest.mark.postgres
def test_a_missing_database_says_to_create_it(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url).set(database="lunasentri_no_such_db")
    with pytest.raises(StorageError, match="create it") as raised:
        TimescaleStorageFactory.open(url.render_as_string(hide_password=False))
    assert not isinstance(raised.value, StorageUnavailable)


@pytest.mark.postgres
def test_an_unknown_role_is_a_refused_login(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url).set(username="lunasentri_nobody", password=SECRET)
    with pytest.raises(StorageError, match="refused the login") as raised:
        TimescaleStorageFactory.open(url.render_as_string(hide_password=False))
    assert not isinstance(raised.value, StorageUnavailable)
    assert SECRET not in str(raised.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TimescaleSettings().pool_size = 9  # type: ignore[misc]


DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "timescale.md"


def test_the_docs_show_the_default_settings() -> None:
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("```toml\n[plugins.timescale]\n", 1)[1].split("\n```", 1)[0]
    manager = PluginManager(plugin_settings={"timescale": tomllib.loads(block)})
    manager.register(sys.modules["lunasentri_timescale"], "timescale")
    assert manager.storage_for_scheme("postgresql").settings == TimescaleSettings()
    assert {f.name for f in attrs.fields(TimescaleSettings)} == set(tomllib.loads(block))


@pytest.mark.postgres
def test_an_exhausted_pool_is_unavailable_not_broken(migrated_url: str) -> None:
    settings = TimescaleSettings(
        pool_size=1, max_overflow=0, pool_timeout=timedelta(milliseconds=200)
    )
    storage = TimescaleStorageFactory.open(migrated_url, settings=settings)
    assert isinstance(storage, TimescaleStorage)
    try:
        # The first block holds the only connection while the call waits for one.
        with storage.db.read(), pytest.raises(StorageUnavailable, match="no free connection"):
            storage.state.list_machines(None)
        assert isinstance(storage.state.list_machines(None), list)  # free again: works
    finally:
        storage.close()
