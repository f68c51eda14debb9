"""The per-machine series limit through the hub (``Sentri``) and its ingest writer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from lunasentri_core import MachineSamples, Reading, Sample, Sentri, SeriesLimitError, Settings
from lunasentri_core.config import StorageSettings
from lunasentri_core.services.writer import BatchWriter
from lunasentri_core.storage.protocols import Capability

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def disks(at: datetime, *mounts: int) -> Sample:
    return Sample(at, [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in mounts])


def settings(tmp_path: Path, **storage: Any) -> Settings:
    return Settings.load(environ={}, data_dir=tmp_path / "data", storage=storage)


def test_the_default_limit_is_ten_thousand() -> None:
    assert StorageSettings().max_series_per_machine == 10_000


@pytest.mark.anyio
async def test_the_hub_refuses_a_batch_past_the_limit(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path, max_series_per_machine=3)) as hub:
        machine = await hub.add_machine("web-1")
        assert await hub.ingest(machine.id, [disks(NOW, 1, 2)]) == 2
        with pytest.raises(SeriesLimitError) as caught:
            await hub.ingest(machine.id, [disks(NOW, 1), disks(NOW, 3, 4)])
        assert caught.value.limit == 3
        assert len(hub.storage.metrics.list_series(machine.id)) == 2
        # Reusing series at the limit is fine.
        assert await hub.ingest(machine.id, [disks(NOW, 3)]) == 1
        assert await hub.ingest(machine.id, [disks(NOW, 1, 2, 3)]) == 3


@pytest.mark.anyio
async def test_concurrent_batches_of_one_machine_never_pass_the_limit(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path, max_series_per_machine=3)) as hub:
        machine = await hub.add_machine("web-1")
        await hub.ingest(machine.id, [disks(NOW, 1, 2)])
        outcomes: list[object] = []

        async def add(mount: int) -> None:
            try:
                outcomes.append(await hub.ingest(machine.id, [disks(NOW, 1, mount)]))
            except SeriesLimitError as error:
                outcomes.append(error)

        # Queued together, the writer takes both into one transaction.
        async with anyio.create_task_group() as tasks:
            for mount in (10, 11, 12):
                tasks.start_soon(add, mount)
        assert sum(isinstance(o, SeriesLimitError) for o in outcomes) == 2, outcomes
        assert len(hub.storage.metrics.list_series(machine.id)) == 3


class _Metrics:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def write(self, batch: object, **kwargs: Any) -> int:
        self.calls.append(kwargs)
        return 0


class _Storage:
    def __init__(self, capabilities: frozenset[Capability]) -> None:
        self.name = "fake"
        self.capabilities = capabilities
        self.metrics = _Metrics()
        self.state = self

    def touch_machines(self, seen: object) -> None:
        return None


def test_the_writer_passes_the_limit_only_to_stores_that_enforce_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    able = _Storage(frozenset({Capability.SERIES_LIMIT}))
    unable = _Storage(frozenset())
    batch = [MachineSamples("m", [disks(NOW, 1)])]
    with caplog.at_level(logging.WARNING):
        for storage in (able, unable):
            writer = BatchWriter(cast(Any, storage), clock=lambda: NOW, max_series=7)
            writer._write_sync(batch)
    assert able.metrics.calls == [{"max_series": 7}]
    assert unable.metrics.calls == [{}]
    assert "storage 'fake' cannot limit series per machine" in caplog.text
    assert "storage.max_series_per_machine is not enforced" in caplog.text
