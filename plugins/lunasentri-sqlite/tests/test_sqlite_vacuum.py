"""SQLite files give their free pages back: incremental auto-vacuum, converted once, reclaimed
by maintenance."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lunasentri_core import HistoryQuery, MachineSamples, Reading, RetentionPolicy, Sample
from lunasentri_core.storage.sql import SqlStorage, vacuum
from lunasentri_sqlite import SQLiteSettings, SQLiteStorageFactory

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=5)
SHORT = RetentionPolicy(raw=timedelta(hours=1), minute=timedelta(hours=2), hour=timedelta(hours=3))


def open_sqlite(path: Path, **settings: object) -> SqlStorage:
    storage = SQLiteStorageFactory.open(
        f"sqlite:///{path}",
        settings=SQLiteSettings(**settings),
        retention=SHORT,  # type: ignore[arg-type]
    )
    assert isinstance(storage, SqlStorage)
    return storage


def auto_vacuum(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        mode: int = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        return mode
    finally:
        conn.close()


def write_hours(storage: SqlStorage, hours: int, machines: int = 3, series: int = 20) -> None:
    """``hours`` of points every 5 s, in batches of a minute."""
    samples = int(timedelta(hours=hours) / STEP)
    for start in range(0, samples, 12):
        batch = [
            MachineSamples(
                f"m{m}",
                [
                    Sample(
                        T0 + STEP * i,
                        [
                            Reading("cpu.percent", (i * 7 + s) % 100, {"cpu": str(s)})
                            for s in range(series)
                        ],
                    )
                    for i in range(start, min(start + 12, samples))
                ],
            )
            for m in range(machines)
        ]
        storage.metrics.write(batch)


def make_none_mode(path: Path) -> None:
    """Turn a file back into what LunaSentri made before 0.1.0: no auto-vacuum."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_new_file_uses_incremental_auto_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    storage = open_sqlite(path)
    storage.migrate()
    assert vacuum.is_incremental(storage.db)
    storage.close()
    assert auto_vacuum(path) == vacuum.INCREMENTAL


def test_an_old_file_is_converted_when_migrated_and_keeps_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    storage = open_sqlite(path)
    storage.migrate()
    write_hours(storage, 1)
    storage.close()
    make_none_mode(path)
    storage = open_sqlite(path)
    query = HistoryQuery("m1", "cpu.percent", T0, T0 + timedelta(hours=1), STEP)
    before = storage.metrics.history(query)
    storage.close()

    storage = open_sqlite(path)
    with caplog.at_level(logging.INFO, logger="lunasentri_core.storage.sql.vacuum"):
        storage.migrate()
    try:
        assert vacuum.is_incremental(storage.db)
        assert storage.metrics.history(query) == before
        assert len(before) == 20
        assert len(before[0].points) == 720
    finally:
        storage.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("converting the database file to incremental auto-vacuum" in m for m in messages)
    assert any("converted to incremental auto-vacuum" in m for m in messages)
    caplog.clear()

    storage = open_sqlite(path)
    with caplog.at_level(logging.INFO, logger="lunasentri_core.storage.sql.vacuum"):
        storage.migrate()  # once: a converted file is left alone
    storage.close()
    assert not caplog.records


def test_a_conversion_that_cannot_run_is_logged_and_leaves_the_file_as_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "busy.db"
    storage = open_sqlite(path)
    storage.migrate()
    write_hours(storage, 1, machines=1)
    storage.close()
    make_none_mode(path)
    storage = open_sqlite(path, busy_timeout=timedelta(milliseconds=100))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing
        with caplog.at_level(logging.WARNING, logger="lunasentri_core.storage.sql.vacuum"):
            assert vacuum.convert(storage.db) is False
        other.execute("ROLLBACK")
        assert not vacuum.is_incremental(storage.db)
        assert len(storage.metrics.latest(["m0"])) == 20
    finally:
        other.close()
        storage.close()
    assert any("could not convert" in r.getMessage() for r in caplog.records)


def freelist(storage: SqlStorage) -> tuple[int, int]:
    _, pages, free = vacuum.file_pages(storage.db)
    return pages, free


def test_maintenance_gives_the_pages_it_frees_back(tmp_path: Path) -> None:
    storage = open_sqlite(tmp_path / "soak.db")
    storage.migrate()
    try:
        write_hours(storage, 5)
        peak, _ = freelist(storage)
        report = storage.metrics.maintain(T0 + timedelta(hours=5))
        pages, free = freelist(storage)
    finally:
        storage.close()
    # Compaction deleted the whole head, retention all but the last hours' chunks.
    assert report.compacted_points == 5 * 720 * 60
    assert report.expired_rows > 0
    assert report.freed_pages > peak // 2
    assert pages < peak // 2
    assert free <= pages // 100


def test_without_auto_vacuum_the_same_maintenance_leaves_the_file_full_of_free_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the test above guards against (and proof that it can fail)."""
    path = tmp_path / "plain.db"
    sqlite3.connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE placeholder (x)")  # fixes the mode: NONE
    conn.close()
    monkeypatch.setattr("lunasentri_core.storage.sql.backend.convert", lambda db: False)
    storage = open_sqlite(path)
    storage.migrate()
    try:
        write_hours(storage, 5)
        report = storage.metrics.maintain(T0 + timedelta(hours=5))
        pages, free = freelist(storage)
    finally:
        storage.close()
    assert report.freed_pages == 0
    assert free > pages // 2
