"""MetricStore.latest for many machines on the shared SQL store: past one statement's
500 machines, and series keys that are equal to (and hash as) freshly made ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from lunasentri_core.model import MachineSamples, Reading, Sample, SeriesKey, new_id
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing.builders import BASE_TIME


@pytest.fixture
def storage(engine: Engine) -> Iterator[SqlStorage]:
    backend = SqlStorage(engine, name="sql")
    backend.migrate()
    yield backend
    backend.close()


def test_latest_of_more_machines_than_one_statement_takes(storage: SqlStorage) -> None:
    machines = [new_id() for _ in range(620)]
    readings = [Reading("cpu.percent", 1.0), Reading("disk.used", 2.0, {"mount": "/"})]
    batch = [
        MachineSamples(m, [Sample(BASE_TIME, [*readings, Reading("proc.count", float(i))])])
        for i, m in enumerate(machines)
    ]
    storage.metrics.write(batch)
    found = storage.metrics.latest([*machines, new_id()])
    assert len(found) == 3 * len(machines)
    expected = {
        SeriesKey(m, metric, labels): value
        for i, m in enumerate(machines)
        for metric, labels, value in [
            ("cpu.percent", {}, 1.0),
            ("disk.used", {"mount": "/"}, 2.0),
            ("proc.count", {}, float(i)),
        ]
    }
    assert {v.series: v.value for v in found} == expected
    assert all(v.timestamp == BASE_TIME for v in found)
    by_metric = storage.metrics.latest(machines[::-1], "proc.count")
    assert [v.series.machine_id for v in by_metric] == sorted(machines)
    assert [v.series for v in by_metric] == [SeriesKey(m, "proc.count") for m in sorted(machines)]
