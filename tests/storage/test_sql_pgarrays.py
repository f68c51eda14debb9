"""Number arrays packed in PostgreSQL's binary format for the bulk inserts (psycopg 3).

Each packed array goes to the real server and is read back: what PostgreSQL
receives is exactly the list it stands for. Columns whose values cannot be
packed (a ``None``, a number out of range) go as plain lists.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import Database, SqlStorage, pgarrays
from lunasentri_core.testing import BASE_TIME

pytestmark = pytest.mark.postgres

INT4 = [0, 1, -1, 2**31 - 1, -(2**31), 123_456]
INT8 = [0, 1, -1, 2**63 - 1, -(2**63), 1_733_550_000_123]
FLOAT8 = [0.0, -0.0, 1.5, -2.25, 1e-300, 1.7976931348623157e308, math.inf, -math.inf, 0.1]


def round_trip(engine: Engine, packed: pgarrays.PackedArray, cast: str) -> Any:
    with engine.connect() as conn:
        pgarrays.ensure_registered(conn.connection.driver_connection)
        return conn.exec_driver_sql(f"SELECT %s::{cast}", (packed,)).scalar_one()


@pytest.mark.parametrize(
    ("kind", "values", "cast"),
    [
        (pgarrays.Int4Array, INT4, "integer[]"),
        (pgarrays.Int8Array, INT8, "bigint[]"),
        (pgarrays.Float8Array, FLOAT8, "float8[]"),
        (pgarrays.Int8Array, [], "bigint[]"),
        (pgarrays.Float8Array, [7], "float8[]"),
    ],
)
def test_a_packed_array_reaches_postgresql_as_the_list_it_stands_for(
    postgres_engine: Engine, kind: type[pgarrays.PackedArray], values: list[Any], cast: str
) -> None:
    packed = pgarrays.pack(kind, values)
    assert isinstance(packed, kind)
    back = round_trip(postgres_engine, packed, cast)
    assert back == values
    # -0.0 == 0.0: the sign must survive too.
    assert [math.copysign(1, v) for v in back] == [math.copysign(1, v) for v in values]


def test_nan_survives_packing(postgres_engine: Engine) -> None:
    packed = pgarrays.pack(pgarrays.Float8Array, [math.nan, 1.0])
    assert packed is not None
    (nan, one) = round_trip(postgres_engine, packed, "float8[]")
    assert math.isnan(nan)
    assert one == 1.0


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (pgarrays.Int4Array, [1, None]),
        (pgarrays.Int4Array, [2**31]),
        (pgarrays.Int8Array, [2**63]),
        (pgarrays.Float8Array, [1.0, None]),
        (pgarrays.Float8Array, ["1.0"]),
    ],
)
def test_values_that_do_not_fit_are_not_packed(
    kind: type[pgarrays.PackedArray], values: list[Any]
) -> None:
    assert pgarrays.pack(kind, values) is None


def test_registering_twice_is_harmless(postgres_engine: Engine) -> None:
    with postgres_engine.connect() as conn:
        driver = conn.connection.driver_connection
        pgarrays.ensure_registered(driver)
        pgarrays.register(driver.adapters)
        pgarrays.ensure_registered(driver)
        packed = pgarrays.pack(pgarrays.Int8Array, [5, 6])
        assert conn.exec_driver_sql("SELECT %s::bigint[]", (packed,)).scalar_one() == [5, 6]


def test_bulk_insert_sends_what_it_cannot_pack_as_lists(postgres_engine: Engine) -> None:
    table = sa.Table(
        "bulk_mixed",
        sa.MetaData(),
        sa.Column("a", sa.Integer, primary_key=True),
        sa.Column("b", sa.BigInteger, nullable=True),
        sa.Column("c", sa.Float(precision=53), nullable=True),
        sa.Column("d", sa.Text, nullable=True),
    )
    table.create(postgres_engine)
    try:
        db = Database(postgres_engine)
        bulk = db.bulk_insert(table, ("a", "b", "c", "d"), lambda ins: ins)
        sent: list[tuple[Any, ...]] = []

        def record(conn: object, cursor: object, sql: str, params: Any, *_: object) -> None:
            if sql.startswith("INSERT INTO bulk_mixed"):
                sent.append(tuple(type(p) for p in params))

        sa.event.listen(postgres_engine, "before_cursor_execute", record)
        with db.write() as conn:
            bulk.run(conn, ([1, 2], [10, 2**40], [0.5, 1.5], ["x", None]))
            bulk.run(conn, ([3, 4], [None, 7], [None, 2.5], ["y", "z"]))
        sa.event.remove(postgres_engine, "before_cursor_execute", record)
        packed = (pgarrays.Int4Array, pgarrays.Int8Array, pgarrays.Float8Array, list)
        assert sent == [packed, (pgarrays.Int4Array, list, list, list)]
        with postgres_engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.a)).all()
        assert [tuple(row) for row in rows] == [
            (1, 10, 0.5, "x"),
            (2, 2**40, 1.5, None),
            (3, None, None, "y"),
            (4, 7, 2.5, "z"),
        ]
    finally:
        table.drop(postgres_engine)


def test_a_write_leaves_its_pooled_connection_transactional(
    postgres_url: str, postgres_schema: str
) -> None:
    # The write looks up watched machines in autocommit after its commit, on its
    # own connection: the pool must hand that connection out transactional again.
    engine = sa.create_engine(
        postgres_url,
        pool_size=1,
        max_overflow=0,
        connect_args={"options": f"-c search_path={postgres_schema}"},
    )
    storage = SqlStorage(engine)
    try:
        machine = new_id()
        sample = Sample(BASE_TIME, [Reading("proc.count", 1)])
        assert storage.metrics.write([MachineSamples(machine, [sample])]) == 1
        table = sa.table("series_latest", sa.column("series_id"), sa.column("ts"))
        seen: list[bool] = []

        def undone_write() -> None:
            with storage.db.write() as conn:
                seen.append(conn.connection.driver_connection.autocommit)
                conn.execute(sa.update(table).values(ts=0))
                raise RuntimeError("undo")

        with pytest.raises(RuntimeError, match="undo"):
            undone_write()
        assert seen == [False]
        (latest,) = storage.metrics.latest([machine])
        assert latest.timestamp == BASE_TIME
    finally:
        storage.close()
        engine.dispose()
