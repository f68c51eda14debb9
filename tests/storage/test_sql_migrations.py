"""Migrations: the schema they build is the one the code expects, and failures change nothing."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SAWarning

from lunasentri_core.errors import StorageError
from lunasentri_core.model import HistoryQuery, MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import (
    VERSION_TABLE,
    SqlStorage,
    alembic_config,
    head_revision,
    metadata,
)
from lunasentri_core.storage.sql.partitions import is_partition_name
from lunasentri_core.testing import BASE_TIME, make_user


def tables(engine: Engine) -> set[str]:
    """The tables, less PostgreSQL's partitions of ``metric_chunks`` (checked on their own)."""
    return {t for t in sa.inspect(engine).get_table_names() if not is_partition_name(t)}


def _not_a_partition(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not (type_ == "table" and name is not None and is_partition_name(name))


def test_migrate_creates_the_schema_the_code_expects(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    assert storage.schema_revision() is None
    storage.migrate()
    assert storage.schema_revision() == head_revision()
    assert {t.name for t in metadata.sorted_tables} | {VERSION_TABLE} == tables(empty_engine)
    with empty_engine.connect() as conn, warnings.catch_warnings():
        # SQLite's reflection skips expression indexes (uq_machines_owner_name),
        # so on SQLite that one index is left out of the comparison.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
        warnings.filterwarnings("ignore", "autogenerate skipping .* expression-based index")
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_object": _not_a_partition,
            },
        )
        assert compare_metadata(context, metadata) == []
    storage.close()


def test_migrate_is_idempotent_and_keeps_data(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    storage.migrate()
    user = storage.state.add_user(make_user(), "h")
    sample = Sample(BASE_TIME, [Reading("proc.count", 7)])
    storage.metrics.write([MachineSamples("m", [sample])])
    storage.migrate()
    SqlStorage(empty_engine).migrate()
    assert storage.state.get_user(user.id) == user
    assert [v.value for v in storage.metrics.latest(["m"])] == [7.0]
    storage.close()


def test_a_failed_migration_changes_nothing(empty_engine: Engine) -> None:
    # A table in the way makes the first revision fail half-way through.
    with empty_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO users (id) VALUES (1)"))
    storage = SqlStorage(empty_engine)
    with pytest.raises(StorageError) as raised:
        storage.migrate()
    assert str(empty_engine.url.database or "") in str(raised.value) or "users" in str(raised.value)
    assert tables(empty_engine) == {"users"}, "the tables created before the failure remain"
    with empty_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM users")).scalars().all() == [1]
    storage.close()


def test_a_database_from_a_newer_version_is_refused(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    storage.migrate()
    with empty_engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(StorageError, match="newer LunaSentri"):
        storage.migrate()
    storage.close()


def test_using_an_unmigrated_database_says_what_to_do(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    with pytest.raises(StorageError, match="run `lunasentri db migrate`"):
        storage.metrics.latest(["m"])
    with pytest.raises(StorageError, match="run `lunasentri db migrate`"):
        storage.state.list_users()
    storage.close()


def test_downgrade_and_upgrade_again(empty_engine: Engine) -> None:
    # What a maintainer does while writing the next revision.
    storage = SqlStorage(empty_engine)
    storage.migrate()
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert tables(empty_engine) == {VERSION_TABLE}
    storage.migrate()
    assert storage.schema_revision() == head_revision()
    storage.close()


def test_points_not_compacted_yet_survive_the_change_of_head_and_back(
    empty_engine: Engine,
) -> None:
    # 0004 packs points_head's points into samples; its downgrade unpacks them.
    storage = SqlStorage(empty_engine)
    storage.migrate()
    first = [
        Sample(BASE_TIME + timedelta(seconds=i), [Reading("cpu.percent", i), Reading("load", -i)])
        for i in range(5)
    ]
    retry = [Sample(BASE_TIME + timedelta(seconds=4), [Reading("cpu.percent", 99)])]
    storage.metrics.write([MachineSamples("m", first), MachineSamples("m", retry)])
    storage.metrics.write([MachineSamples("other", first[:1])])
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    with empty_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.machine_id, s.metric, p.ts, p.value FROM points_head p "
                "JOIN series s ON s.id = p.series_id"
            )
        ).all()
    base = int(BASE_TIME.timestamp() * 1000)
    expected = {("m", "cpu.percent", base + i * 1000, float(i)) for i in range(5)}
    expected |= {("m", "load", base + i * 1000, float(-i)) for i in range(5)}
    expected |= {("other", "cpu.percent", base, 0.0), ("other", "load", base, 0.0)}
    assert sorted(rows) == sorted(expected), "one row per point; the retry's value is not kept"

    storage.migrate()
    assert storage.schema_revision() == head_revision()
    query = HistoryQuery(
        "m", "cpu.percent", BASE_TIME, BASE_TIME + timedelta(minutes=1), timedelta(seconds=1)
    )
    (history,) = storage.metrics.history(query)
    assert [p.value for p in history.points] == [0.0, 1.0, 2.0, 3.0, 4.0]
    with empty_engine.connect() as conn:
        samples = conn.execute(sa.text("SELECT count(*) FROM samples_head")).scalar()
    assert samples == 5 + 1, "a machine's points of one timestamp become one sample"
    assert storage.metrics.maintain(BASE_TIME + timedelta(days=1)).compacted_points == 12
    storage.close()


@pytest.mark.postgres
def test_series_latest_leaves_room_for_updates_in_place_on_postgresql(
    empty_postgres_engine: Engine,
) -> None:
    # 0011: fillfactor 50, so updating a series' latest value stays on its page.
    def options() -> list[str] | None:
        with empty_postgres_engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT reloptions FROM pg_class "
                    "WHERE oid = to_regclass(current_schema() || '.series_latest')"
                )
            ).scalar_one()

    storage = SqlStorage(empty_postgres_engine)
    storage.migrate()
    assert options() == ["fillfactor=50"]
    with empty_postgres_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0010")
    assert options() is None
    storage.migrate()
    assert options() == ["fillfactor=50"]
    storage.close()


@pytest.mark.postgres
def test_chunk_rows_stay_in_their_pages_on_postgresql(empty_postgres_engine: Engine) -> None:
    # 0012: every partition of metric_chunks (a partitioned table takes no
    # storage parameters) keeps rows of up to a page out of TOAST.
    def options() -> dict[str, list[str] | None]:
        with empty_postgres_engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT c.relname, c.reloptions FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = to_regclass(current_schema() || '.metric_chunks')"
                )
            )
            return dict(rows.all())

    storage = SqlStorage(empty_postgres_engine)
    storage.migrate()
    wanted = ["toast_tuple_target=8160"]
    made = options()
    assert "metric_chunks_default" in made
    assert len(made) > 1
    assert all(found == wanted for found in made.values()), made
    with empty_postgres_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0011")
    assert all(found is None for found in options().values())
    storage.migrate()
    assert all(found == wanted for found in options().values())

    # A partition made later (the next days, by maintenance) is made with it.
    later = datetime.now(UTC) + timedelta(days=10)
    storage.metrics.maintain(later)
    assert len(options()) > len(made)
    assert all(found == wanted for found in options().values())

    # A row of 3 KB of blocks (past the default target of about 2 KB) stays whole.
    with empty_postgres_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO series (id, machine_id, metric, labels) "
                "VALUES (1, 'm', 'cpu.percent', '{}')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO metric_chunks (series_id, chunk_start, raw) VALUES (1, 0, :raw)"),
            {"raw": bytes(range(256)) * 12},
        )
        toasted = conn.execute(
            sa.text(
                "SELECT pg_relation_size(reltoastrelid) FROM pg_class "
                "WHERE oid = to_regclass(current_schema() || '.metric_chunks_default')"
            )
        ).scalar_one()
    assert toasted == 0
    storage.close()
