"""The per-machine series limit through the hub (``Sentri``) and over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from lunasentri_core import Reading, Sample, Sentri, SeriesLimitError, Settings
from lunasentri_core.config import StorageSettings

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
