"""The TimescaleDB SQL of ``hypertable.py``: checked against PostgreSQL, run where the extension is.

Without the extension, the hypertable SQL is parsed and planned by PostgreSQL
against *signature stand-ins*: functions named and typed like TimescaleDB's
(``create_hypertable``, ``set_integer_now_func``, ``drop_chunks``) in a
throwaway schema, which do nothing. They catch a misspelt function or argument
name, a wrong argument type and a table or column that does not exist; they do
not emulate TimescaleDB.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lunasentri_core import RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.partitions import is_partitioned
from lunasentri_timescale import Mode, TimescaleSettings, TimescaleStorageFactory
from lunasentri_timescale.hypertable import (
    NOW_FUNCTION,
    drop_chunks_statement,
    make_hypertable,
    setup_statements,
)

pytestmark = pytest.mark.postgres

# TimescaleDB 2.x's signatures. Two liberties, both forced by PostgreSQL: no
# defaults naming TimescaleDB's internal functions, and drop_chunks' "any"
# time arguments typed bigint (a SQL function cannot take "any").
STAND_INS = """
CREATE FUNCTION {s}.create_hypertable(
    relation regclass, time_column_name name, partitioning_column name DEFAULT NULL,
    number_partitions integer DEFAULT NULL, associated_schema_name name DEFAULT NULL,
    associated_table_prefix name DEFAULT NULL, chunk_time_interval anyelement DEFAULT NULL::bigint,
    create_default_indexes boolean DEFAULT true, if_not_exists boolean DEFAULT false,
    partitioning_func regproc DEFAULT NULL, migrate_data boolean DEFAULT false,
    chunk_target_size text DEFAULT NULL, chunk_sizing_func regproc DEFAULT NULL,
    time_partitioning_func regproc DEFAULT NULL)
RETURNS TABLE(hypertable_id integer, schema_name name, table_name name, created boolean)
LANGUAGE sql AS $$ SELECT 1, NULL::name, NULL::name, true WHERE false $$;

CREATE FUNCTION {s}.set_integer_now_func(
    hypertable regclass, integer_now_func regproc, replace_if_exists boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$ SELECT $$;

CREATE FUNCTION {s}.drop_chunks(
    relation regclass, older_than bigint DEFAULT NULL, newer_than bigint DEFAULT NULL,
    verbose boolean DEFAULT false, created_before bigint DEFAULT NULL,
    created_after bigint DEFAULT NULL)
RETURNS SETOF text LANGUAGE sql AS $$ SELECT NULL::text WHERE false $$;
"""


@pytest.fixture
def plain_chunks(fresh_schema_url: Callable[[], str]) -> Iterator[sa.Engine]:
    """A schema migrated as a TimescaleDB database is (``metric_chunks`` a plain
    table), with the signature stand-ins in a throwaway schema on its search path."""
    url = make_url(fresh_schema_url())
    options = url.query["options"]
    assert isinstance(options, str)
    app = options.removeprefix("-csearch_path=")
    stand_ins = f"lstest_tsdb_stand_ins_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    engine = sa.create_engine(
        url.update_query_dict({"options": f"-csearch_path={app},{stand_ins}"})
    )
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{stand_ins}"'))
            conn.execute(sa.text(STAND_INS.format(s=f'"{stand_ins}"')))
        SqlStorage(admin).migrate()
        with admin.begin() as conn:
            command_downgrade_0009(conn)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{stand_ins}" CASCADE'))
        admin.dispose()


def command_downgrade_0009(conn: sa.Connection) -> None:
    """Back to the plain table migration 0009 leaves on a TimescaleDB database."""
    from alembic import command

    from lunasentri_core.storage.sql import alembic_config

    command.downgrade(alembic_config(conn), "0008")
    command.stamp(alembic_config(conn), "head")


def test_the_hypertable_sql_parses_and_plans_against_stand_ins(plain_chunks: sa.Engine) -> None:
    create_now, *calls = setup_statements()
    with plain_chunks.begin() as conn:
        assert not is_partitioned(conn)
        conn.execute(create_now)  # plain SQL: it really runs
        now_ms = conn.execute(sa.text(f"SELECT {NOW_FUNCTION}()")).scalar_one()
        for call in calls:
            plan = conn.execute(sa.text(f"EXPLAIN {call.text}")).scalars().all()
            assert plan, call.text
        drop = sa.text(f"EXPLAIN {drop_chunks_statement().text}")
        assert conn.execute(drop, {"horizon": now_ms}).scalars().all()
        assert make_hypertable(conn) is True  # the stand-ins take every call
    assert abs(now_ms / 1000 - datetime.now(UTC).timestamp()) < 3600


def test_a_misspelt_argument_is_caught_by_the_stand_ins(plain_chunks: sa.Engine) -> None:
    with plain_chunks.begin() as conn, pytest.raises(sa.exc.ProgrammingError):
        conn.execute(
            sa.text("EXPLAIN SELECT create_hypertable('metric_chunks', 'chunk_start', chunk => 1)")
        )


def test_a_natively_partitioned_table_is_left_alone(
    fresh_schema_url: Callable[[], str],
) -> None:
    url = fresh_schema_url()
    storage = TimescaleStorageFactory.open(url, settings=TimescaleSettings(mode=Mode.POSTGRES))
    try:
        storage.migrate()
        with storage.db.write() as conn:
            assert make_hypertable(conn) is False
            assert is_partitioned(conn)
    finally:
        storage.close()


def test_the_hypertable_sql_on_timescaledb(fresh_schema_url: Callable[[], str]) -> None:
    url = fresh_schema_url()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            installed = conn.execute(
                sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            ).first()
    finally:
        engine.dispose()
    if installed is None:
        pytest.skip(
            "timescaledb extension not installed on this server: its SQL was parsed and "
            "planned against signature stand-ins instead "
            "(test_the_hypertable_sql_parses_and_plans_against_stand_ins)"
        )
    retention = RetentionPolicy(
        raw=timedelta(days=1), minute=timedelta(days=1), hour=timedelta(days=1)
    )
    storage = TimescaleStorageFactory.open(
        url, settings=TimescaleSettings(mode=Mode.TIMESCALE), retention=retention
    )
    try:
        storage.migrate()
        facts = storage.partitioning()
        assert facts is not None
        assert facts["kind"] == "hypertable"
        storage.metrics.maintain(datetime.now(UTC))
    finally:
        storage.close()
