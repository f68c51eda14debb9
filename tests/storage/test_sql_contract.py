"""The test kit's storage contract, run on the shared SQL storage (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from lunasentri_core.storage import Capability
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import StorageContract


class TestSqlStorage(StorageContract):
    expected_capabilities = frozenset(
        {
            Capability.ROLLUPS,
            Capability.RETENTION,
            Capability.CONCURRENT_WRITERS,
            Capability.SERIES_LIMIT,
        }
    )

    @pytest.fixture
    def storage(self, engine: Engine) -> Iterator[SqlStorage]:
        backend = SqlStorage(engine, retention=self.retention, name="sql")
        backend.migrate()
        yield backend
        backend.close()
