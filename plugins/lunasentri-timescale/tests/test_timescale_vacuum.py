"""PostgreSQL: maintenance vacuums the head after moving many points out of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lunasentri_core import RetentionPolicy
from lunasentri_core.model import Machine, MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import vacuum
from lunasentri_timescale import Mode, TimescaleSettings, TimescaleStorage, TimescaleStorageFactory

pytestmark = pytest.mark.postgres

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
SAMPLES = 40
READINGS = 50


@pytest.fixture
def storage(fresh_schema_url: Callable[[], str]) -> Iterator[TimescaleStorage]:
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


def fill_head(storage: TimescaleStorage) -> None:
    """``SAMPLES`` samples of ``READINGS`` readings, 5 s apart, an hour that has ended."""
    machine = storage.state.add_machine(Machine(id=new_id(), name="m1"))
    samples = tuple(
        Sample(
            START + timedelta(seconds=5 * i),
            tuple(Reading(f"metric{j}", float(i * j)) for j in range(READINGS)),
        )
        for i in range(SAMPLES)
    )
    storage.metrics.write([MachineSamples(machine.id, samples)])


def head_pages(storage: TimescaleStorage) -> int:
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT pg_relation_size('samples_head') / current_setting('block_size')::int"
                )
            ).scalar_one()
        )


def test_a_pass_moving_many_points_gives_the_emptied_head_back(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS)
    fill_head(storage)
    before = head_pages(storage)
    assert before > 0

    report = storage.metrics.maintain(datetime.now(UTC))

    assert report.compacted_points == SAMPLES * READINGS
    assert head_pages(storage) == 0
    assert report.freed_pages == before


def test_a_smaller_pass_leaves_the_head_to_autovacuum(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS + 1)
    fill_head(storage)
    before = head_pages(storage)

    report = storage.metrics.maintain(datetime.now(UTC))

    assert report.compacted_points == SAMPLES * READINGS
    assert report.freed_pages == 0
    assert head_pages(storage) == before  # the rows are gone, their pages not yet
