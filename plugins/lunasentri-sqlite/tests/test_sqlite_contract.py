"""The contract suites every storage backend and every plugin distribution pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lunasentri_core.storage import Capability, StorageBackend
from lunasentri_core.testing import EntryPointContract, StorageContract
from lunasentri_sqlite import SQLiteSettings, SQLiteStorageFactory


class TestSQLiteStorage(StorageContract):
    expected_capabilities = frozenset(
        {
            Capability.ROLLUPS,
            Capability.RETENTION,
            Capability.CONCURRENT_WRITERS,
            Capability.SERIES_LIMIT,
        }
    )

    @pytest.fixture
    def storage(self, migrated_copy: Path) -> Iterator[StorageBackend]:
        backend = SQLiteStorageFactory.open(
            f"sqlite:///{migrated_copy}",
            settings=SQLiteSettings(),
            retention=self.retention,
        )
        backend.migrate()  # already at the newest revision: a no-op, as the contract needs
        yield backend
        backend.close()


class TestSQLiteEntryPoint(EntryPointContract):
    plugin = "sqlite"
    distribution = "lunasentri-sqlite"
    components = frozenset({"storage:sqlite"})
