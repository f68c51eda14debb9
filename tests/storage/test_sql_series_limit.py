"""The per-machine series limit of the shared SQL store, and what adding a series costs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sql_support import OpenStorage
from sqlalchemy.engine import Engine

from lunasentri_core.errors import SeriesLimitError
from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.protocols import Capability
from lunasentri_core.storage.sql import SqlStorage, alembic_config
from lunasentri_core.storage.sql import metrics as sql_metrics
from lunasentri_core.storage.sql.schema import samples_head

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def disks(machine: str, *mounts: int, at: datetime = T0) -> list[MachineSamples]:
    """One sample of ``disk.used`` for each mount ``/m<i>``, plus ``cpu.percent``."""
    readings = [Reading("cpu.percent", 1.0)]
    readings += [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in mounts]
    return [MachineSamples(machine, [Sample(at, readings)])]


def head_rows(storage: SqlStorage, machine: str) -> int:
    with storage.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(samples_head.c.machine_id == machine)
        return int(conn.execute(query).scalar_one())


def test_the_sql_store_declares_the_capability(storage: SqlStorage) -> None:
    assert Capability.SERIES_LIMIT in storage.capabilities


def test_a_batch_that_would_pass_the_limit_is_refused_whole(storage: SqlStorage) -> None:
    machine, other = new_id(), new_id()
    storage.metrics.write(disks(machine, 1, 2), max_series=4)  # 3 series
    before = storage.metrics.latest([machine])

    with pytest.raises(SeriesLimitError) as caught:
        # Two new series (one too many) next to points of existing ones.
        storage.metrics.write(disks(machine, 1, 3, 4, at=T0 + SECOND), max_series=4)

    error = caught.value
    assert (error.machine_id, error.limit, error.new) == (machine, 4, 2)
    assert "4" in str(error)
    assert len(storage.metrics.list_series(machine)) == 3
    assert storage.metrics.latest([machine]) == before, "a refused batch stored points"
    assert head_rows(storage, machine) == 1
    # The limit is per machine; the store is usable after a refusal.
    assert storage.metrics.write(disks(other, 1, 2, 3), max_series=4) == 4


def test_reaching_the_limit_and_reusing_series_at_it_is_accepted(storage: SqlStorage) -> None:
    machine = new_id()
    storage.metrics.write(disks(machine, 1), max_series=3)
    assert storage.metrics.write(disks(machine, 1, 2, at=T0 + SECOND), max_series=3) == 3
    # At the limit: only existing series are taken, by this store and by a fresh one.
    assert storage.metrics.write(disks(machine, 2, 1, at=T0 + 2 * SECOND), max_series=3) == 3
    with pytest.raises(SeriesLimitError):
        storage.metrics.write(disks(machine, 3, at=T0 + 3 * SECOND), max_series=3)
    assert len(storage.metrics.list_series(machine)) == 3


def test_a_fresh_process_counts_the_series_already_stored(open_storage: OpenStorage) -> None:
    one, two = open_storage(), open_storage()
    machine = new_id()
    one.metrics.write(disks(machine, 1), max_series=3)
    with pytest.raises(SeriesLimitError):
        two.metrics.write(disks(machine, 3, 4), max_series=3)
    assert two.metrics.write(disks(machine, 3, at=T0 + SECOND), max_series=3) == 2


def test_deleting_a_machine_frees_its_series(storage: SqlStorage) -> None:
    machine = new_id()
    storage.metrics.write(disks(machine, 1, 2), max_series=3)
    storage.metrics.delete_machine(machine)
    assert storage.metrics.write(disks(machine, 5, 6), max_series=3) == 3


def test_without_a_limit_nothing_is_refused(storage: SqlStorage) -> None:
    machine = new_id()
    assert storage.metrics.write(disks(machine, *range(50))) == 51


def _race(stores: list[SqlStorage], machine: str) -> list[object]:
    """Each store adds one more series to ``machine`` at the same moment."""
    barrier = threading.Barrier(len(stores), timeout=30)
    outcomes: list[object] = []

    def add(index: int) -> None:
        barrier.wait()
        try:
            batch = disks(machine, 0, 100 + index, at=T0 + SECOND)
            outcomes.append(stores[index].metrics.write(batch, max_series=3))
        except SeriesLimitError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_two_processes_at_once_never_pass_the_limit(open_storage: OpenStorage) -> None:
    stores = [open_storage(), open_storage()]
    for round_ in range(5):
        machine = new_id()
        stores[0].metrics.write(disks(machine, 0), max_series=3)  # 2 of 3 series
        outcomes = _race(stores, machine)
        assert len(outcomes) == 2, f"round {round_}: a writer failed otherwise: {outcomes}"
        assert sum(isinstance(o, SeriesLimitError) for o in outcomes) == 1, outcomes
        assert len(stores[1].metrics.list_series(machine)) == 3


def _count_label_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    decode = sql_metrics.labels_from_json

    def counting(text: str) -> object:
        calls[0] += 1
        return decode(text)

    monkeypatch.setattr(sql_metrics, "labels_from_json", counting)
    return calls


def test_adding_a_series_reads_only_the_new_ones(
    open_storage: OpenStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = open_storage()
    machine = new_id()
    one.metrics.write(disks(machine, *range(2_000)))
    calls = _count_label_decodes(monkeypatch)

    one.metrics.write(disks(machine, 1, 5_000, at=T0 + SECOND))
    assert calls[0] <= 2, f"{calls[0]} stored series read to add one"

    # A process that has cached nothing (a restart) looks up only the batch's series.
    calls[0] = 0
    two = open_storage()
    two.metrics.write(disks(machine, 1, 5_001, at=T0 + 2 * SECOND))
    assert calls[0] <= 4, f"{calls[0]} stored series read for a batch of four"
    assert len(one.metrics.list_series(machine)) == 2_003


def test_the_migration_counts_the_series_already_stored(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    storage.migrate()
    machine = new_id()
    storage.metrics.write(disks(machine, 1, 2))
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0005")
        conn.execute(sa.delete(samples_head))  # series written before the counts existed
    storage = SqlStorage(empty_engine)
    storage.migrate()
    with pytest.raises(SeriesLimitError):
        storage.metrics.write(disks(machine, 3, at=T0 + SECOND), max_series=3)
    assert storage.metrics.write(disks(machine, 2, at=T0 + SECOND), max_series=3) == 2
