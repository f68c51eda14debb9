"""Fixtures of the SQLite plugin's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lunasentri_core import RetentionPolicy
from lunasentri_sqlite import SQLiteStorageFactory


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database file; copying it is much faster than migrating each time."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    storage = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    storage.migrate()
    storage.close()
    return path


@pytest.fixture
def migrated_copy(tmp_path: Path, migrated_template: Path) -> Path:
    """A migrated, empty database file of this test's own."""
    path = tmp_path / "lunasentri.db"
    shutil.copyfile(migrated_template, path)
    return path
