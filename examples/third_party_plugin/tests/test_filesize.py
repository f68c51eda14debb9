"""What the collector measures, and how it treats paths it cannot measure."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lunasentri_core import Reading
from lunasentri_core.testing import make_target

from lunasentri_filesize import FileSizeCollector, FileSizeSettings


def collect(*paths: str | Path) -> dict[tuple[str, str], float]:
    collector = FileSizeCollector(FileSizeSettings(paths=tuple(str(p) for p in paths)))
    readings: list[Reading] = collector.collect(make_target())
    return {(r.metric, dict(r.labels)["path"]): r.value for r in readings}


def test_reports_size_and_age_of_each_file(tmp_path: Path) -> None:
    log_file, db_file = tmp_path / "app.log", tmp_path / "queue.db"
    log_file.write_bytes(b"x" * 1234)
    db_file.write_bytes(b"")
    an_hour_ago = time.time() - 3600
    os.utime(log_file, (an_hour_ago, an_hour_ago))

    values = collect(log_file, db_file)

    assert values[("file.size", str(log_file))] == 1234
    assert values[("file.size", str(db_file))] == 0
    assert 3600 <= values[("file.mtime_age", str(log_file))] < 3600 + 300
    assert 0 <= values[("file.mtime_age", str(db_file))] < 300
    assert len(values) == 4


def test_a_future_modification_time_counts_as_now(tmp_path: Path) -> None:
    path = tmp_path / "skewed"
    path.touch()
    tomorrow = time.time() + 86400
    os.utime(path, (tomorrow, tomorrow))
    assert collect(path)[("file.mtime_age", str(path))] == 0


def test_missing_paths_and_directories_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    present = tmp_path / "present"
    present.write_text("ok")
    caplog.set_level(logging.WARNING, logger="lunasentri_filesize")

    values = collect(tmp_path / "missing", tmp_path, present)

    assert set(values) == {("file.size", str(present)), ("file.mtime_age", str(present))}
    messages = [record.getMessage() for record in caplog.records]
    assert f"filesize: {tmp_path / 'missing'} does not exist; skipped" in messages
    assert f"filesize: {tmp_path} is not a regular file; skipped" in messages


def test_a_path_that_cannot_be_read_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a_file = tmp_path / "a-file"
    a_file.touch()
    # Treating a file as a directory fails with ENOTDIR, even for root.
    assert collect(a_file / "child") == {}
    assert f"filesize: cannot read {a_file / 'child'} (Not a directory); skipped" in caplog.text


def test_a_path_listed_twice_is_one_series(tmp_path: Path) -> None:
    path = tmp_path / "twice"
    path.touch()
    collector = FileSizeCollector(FileSizeSettings(paths=(str(path), str(path))))
    assert len(collector.collect(make_target())) == 2


def test_without_paths_nothing_is_collected() -> None:
    assert FileSizeCollector().collect(make_target()) == []


@pytest.mark.parametrize("bad", ["", "   ", "/" + "x" * 300, "/tmp/nul\x00byte"])
def test_settings_refuse_unusable_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="path"):
        FileSizeSettings(paths=(bad,))


def test_lunasentri_plugins_lists_it() -> None:
    # The command-line tool of the core lists every plugin it discovered.
    command = Path(sys.executable).with_name("lunasentri")
    if not command.exists():
        pytest.skip(f"the lunasentri command is not installed next to {sys.executable}")
    listing = subprocess.run(
        [str(command), "plugins"], capture_output=True, text=True, check=True
    ).stdout
    assert "filesize" in listing
    assert "lunasentri-filesize" in listing
