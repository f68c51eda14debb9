"""The contract suites every storage backend and every plugin distribution pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lunasentri_core.storage import Capability, StorageBackend
from lunasentri_core.testing import EntryPointContract, StorageContract
from lunasentri_timescale import TimescaleSettings, TimescaleStorageFactory

pytestmark = pytest.mark.postgres


class TestTimescaleStorage(StorageContract):
    """Through the plugin's factory, on the real PostgreSQL (``postgres`` mode here)."""

    expected_capabilities = frozenset(
        {
            Capability.ROLLUPS,
            Capability.RETENTION,
            Capability.CONCURRENT_WRITERS,
            Capability.SERIES_LIMIT,
        }
    )

    @pytest.fixture
    def storage(self, emptied_url: str) -> Iterator[StorageBackend]:
        # mode = "postgres" pins the capabilities above on a server with TimescaleDB too.
        backend = TimescaleStorageFactory.open(
            emptied_url, settings=TimescaleSettings(mode="postgres"), retention=self.retention
        )
        backend.migrate()  # already at the newest revision: a no-op, as the contract needs
        yield backend
        backend.close()


class TestTimescaleEntryPoint(EntryPointContract):
    plugin = "timescale"
    distribution = "lunasentri-timescale"
    components = frozenset({"storage:timescale"})
