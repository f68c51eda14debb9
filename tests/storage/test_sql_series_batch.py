"""Series of a batch spanning many machines: resolved all at once, by several processes at once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sql_support import OpenStorage

from lunasentri_core.errors import SeriesLimitError
from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.head import unpack_sample
from lunasentri_core.storage.sql.schema import labels_to_json, machine_series, samples_head, series
from lunasentri_core.testing import assert_latest_equal, points_of, reference_latest

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def sample(machine: str, at: datetime, *mounts: str) -> MachineSamples:
    readings = [Reading("cpu.percent", 1.0)]
    readings += [Reading("disk.used", float(len(m)), {"mount": m}) for m in mounts]
    return MachineSamples(machine, [Sample(at, readings)])


def stored_ids(storage: SqlStorage) -> dict[tuple[str, str, str], int]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(series.c.id, series.c.machine_id, series.c.metric, series.c.labels)
        )
        return {(m, metric, labels): sid for sid, m, metric, labels in rows}


def counted(storage: SqlStorage) -> dict[str, int]:
    with storage.engine.connect() as conn:
        return dict(
            conn.execute(sa.select(machine_series.c.machine_id, machine_series.c.series)).all()
        )


def assert_consistent(storage: SqlStorage, machines: list[str]) -> None:
    """``machine_series`` counts what ``series`` holds, and the head uses only stored ids."""
    ids = stored_ids(storage)
    per_machine = Counter(machine for machine, _, _ in ids)
    assert {m: counted(storage).get(m, 0) for m in machines} == {
        m: per_machine[m] for m in machines
    }
    owner = {sid: machine for (machine, _, _), sid in ids.items()}
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                samples_head.c.machine_id, samples_head.c.series_ids, samples_head.c.series_values
            )
        ).all()
    for machine, sids_blob, values_blob in rows:
        sids, _ = unpack_sample(sids_blob, values_blob)
        assert {owner.get(sid) for sid in sids} == {machine}


@contextmanager
def statements(storage: SqlStorage) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: object, cursor: object, sql: str, *args: object) -> None:
        # Not the head and latest rows, which go in statements by size (or COPY).
        if "samples_head" not in sql and "series_latest" not in sql:
            seen.append(sql)

    sa.event.listen(storage.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", count)


def test_a_batch_mixes_new_stored_and_cached_series_of_many_machines(
    open_storage: OpenStorage,
) -> None:
    one = open_storage()
    machines = [new_id() for _ in range(60)]
    first = [sample(m, T0, "/", "/data") for m in machines[:30]]
    one.metrics.write(first)
    # A fresh process: machines with stored series, some gaining one, and new machines.
    two = open_storage()
    batch = [sample(m, T0 + SECOND, "/", "/data", "/new") for m in machines[:10]]
    batch += [sample(m, T0 + SECOND, "/", "/data") for m in machines[10:30]]
    batch += [sample(m, T0 + SECOND, "/", f"/only-{i}") for i, m in enumerate(machines[30:])]
    assert two.metrics.write(batch) == 10 * 4 + 20 * 3 + 30 * 3
    # The first process has them cached but for the new ones.
    again = [sample(m, T0 + 2 * SECOND, "/", "/data", "/new") for m in machines[:30]]
    one.metrics.write(again)

    assert len(stored_ids(one)) == 10 * 4 + 20 * 4 + 30 * 3
    assert_consistent(one, machines)
    points = points_of([first, batch, again])
    assert_latest_equal(two.metrics.latest(machines), reference_latest(points, machines))


def test_series_of_all_machines_resolve_in_the_same_statements_for_5_or_50(
    open_storage: OpenStorage,
) -> None:
    def resolving(machines: int, stored: bool) -> int:
        ids = [new_id() for _ in range(machines)]
        if stored:
            open_storage().metrics.write([sample(m, T0, "/") for m in ids])
        fresh = open_storage()
        with statements(fresh) as seen:
            fresh.metrics.write([sample(m, T0 + SECOND, "/", "/x") for m in ids])
        return len(seen)

    assert resolving(5, stored=False) == resolving(50, stored=False)
    assert resolving(5, stored=True) == resolving(50, stored=True)


def test_series_inserted_by_another_process_after_the_lookup_keep_its_ids(
    open_storage: OpenStorage,
) -> None:
    """What a writer whose lookup missed a series another process then created goes through."""
    one, two = open_storage(), open_storage()
    machines = [new_id() for _ in range(20)]
    one.metrics.write([sample(m, T0, "/") for m in machines[:10]])
    before = stored_ids(one)
    wanted = {m: {("cpu.percent", ()), ("disk.used", (("mount", "/"),))} for m in machines}
    with two.db.write() as conn:
        # Past its lookup: every key looks missing to the insert.
        keys = sorted(
            (m, metric, labels_to_json(labels)) for m in machines for metric, labels in wanted[m]
        )
        resolved = two.metrics._registry._insert(conn, keys, None)
    assert len(resolved) == 40
    assert {key: resolved[key] for key in before} == before
    assert_consistent(one, machines)


def test_one_machine_past_the_limit_refuses_the_whole_batch(open_storage: OpenStorage) -> None:
    storage = open_storage()
    machines = [new_id() for _ in range(30)]
    storage.metrics.write([sample(m, T0, "/") for m in machines], max_series=3)
    batch = [sample(m, T0 + SECOND, "/", "/b") for m in machines]
    batch[17] = sample(machines[17], T0 + SECOND, "/b", "/c")  # a fourth series
    with pytest.raises(SeriesLimitError) as raised:
        storage.metrics.write(batch, max_series=3)
    assert raised.value.machine_id == machines[17]
    assert len(stored_ids(storage)) == 60
    assert_consistent(storage, machines)
    # Within the limit, the same machines go through (nothing half-cached).
    batch[17] = sample(machines[17], T0 + SECOND, "/", "/b")
    assert storage.metrics.write(batch, max_series=3) == 90
    assert_consistent(storage, machines)


def test_processes_creating_the_same_series_of_many_machines_at_once_share_one_id(
    open_storage: OpenStorage,
) -> None:
    stores = [open_storage() for _ in range(3)]
    errors: list[BaseException] = []
    for round_ in range(3):
        machines = [new_id() for _ in range(40)]
        barrier = threading.Barrier(len(stores), timeout=60)

        def write(
            index: int, machines: list[str] = machines, barrier: threading.Barrier = barrier
        ) -> None:
            # Shared series, and one of the writer's own per machine; each
            # writer lists the machines in another order.
            order = machines[index:] + machines[:index]
            batch = [sample(m, T0, "/", f"/w{index}") for m in order]
            try:
                barrier.wait()
                stores[index].metrics.write(batch)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, f"round {round_}: {errors[0]!r}"
        ids = stored_ids(stores[0])
        assert len([key for key in ids if key[0] in set(machines)]) == 40 * (2 + len(stores))
        assert_consistent(stores[0], machines)
        # Every process cached the one stored id of each shared series.
        for store in stores:
            for machine in machines:
                cached = store.metrics._ids[machine]
                for (metric, labels), sid in cached.items():
                    assert ids[machine, metric, labels_to_json(labels)] == sid
