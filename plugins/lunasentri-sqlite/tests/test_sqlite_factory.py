"""Opening SQLite files: pragmas, settings, and clear refusals that never touch the file."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from lunasentri_core import (
    HistoryQuery,
    MachineSamples,
    PluginError,
    Reading,
    RetentionPolicy,
    Sample,
    StorageError,
)
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import PluginManager, create_plugin_manager
from lunasentri_sqlite import (
    SQLiteSettings,
    SQLiteStorageFactory,
    Synchronous,
    lunasentri_register_storage,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def open_sqlite(url: str, settings: SQLiteSettings | None = None) -> SqlStorage:
    storage = SQLiteStorageFactory.open(url, settings=settings, retention=RetentionPolicy())
    assert isinstance(storage, SqlStorage)
    return storage


def pragma(storage: SqlStorage, name: str) -> object:
    with storage.engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


# --------------------------------------------------------------------------- opening


def test_a_new_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "lunasentri.db"
    storage = open_sqlite(f"sqlite:///{path}")
    storage.migrate()
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert pragma(storage, "journal_mode") == "wal"
    assert storage.name == "sqlite"
    assert str(path) in repr(storage)
    storage.close()


def test_pragmas_are_set_on_every_connection(tmp_path: Path) -> None:
    settings = SQLiteSettings(
        busy_timeout=timedelta(seconds=2.5), synchronous=Synchronous.FULL, cache_size_mib=8
    )
    storage = open_sqlite(f"sqlite:///{tmp_path / 'p.db'}", settings)
    # Two connections at once: the pool must open a second one, configured alike.
    with storage.engine.connect() as first, storage.engine.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -8 * 1024
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    storage.close()


def test_default_settings_are_wal_normal(tmp_path: Path) -> None:
    storage = open_sqlite(f"sqlite:///{tmp_path / 'd.db'}")
    assert pragma(storage, "synchronous") == 1  # NORMAL
    assert pragma(storage, "busy_timeout") == 30_000
    storage.close()


def test_home_directory_in_the_path_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    storage = open_sqlite("sqlite:///~/home.db")
    storage.migrate()
    assert (tmp_path / "home.db").exists()
    storage.close()


def test_in_memory_database() -> None:
    storage = open_sqlite("sqlite://")
    storage.migrate()
    storage.metrics.write([MachineSamples("m", [Sample(T0, [Reading("proc.count", 3)])])])
    assert [v.value for v in storage.metrics.latest(["m"])] == [3.0]
    storage.close()


def test_data_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    storage = open_sqlite(url)
    storage.migrate()
    storage.metrics.write([MachineSamples("m", [Sample(T0, [Reading("proc.count", 3)])])])
    storage.close()
    again = open_sqlite(url)
    again.migrate()
    assert [v.value for v in again.metrics.latest(["m"])] == [3.0]
    again.close()


# --------------------------------------------------------------------------- refusals


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "y"
    with pytest.raises(StorageError) as raised:
        open_sqlite(f"sqlite:///{missing / 'l.db'}")
    assert str(raised.value) == (
        f"directory {missing} does not exist (create it or change storage_url)"
    )
    assert not (tmp_path / "x").exists(), "nothing may be created"


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        open_sqlite(f"sqlite:///{tmp_path / 'file' / 'l.db'}")


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory, not a database file"):
        open_sqlite(f"sqlite:///{tmp_path}")


def test_a_file_that_is_not_a_database_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    content = b"my precious notes, not a database\n" * 100
    path.write_bytes(content)
    with pytest.raises(StorageError) as raised:
        open_sqlite(f"sqlite:///{path}")
    assert str(raised.value).startswith(f"{path} is not a SQLite database")
    assert path.read_bytes() == content
    assert not Path(f"{path}-wal").exists()


def test_a_read_only_uri_says_read_only(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    sqlite3.connect(path).close()
    with pytest.raises(StorageError, match="is read-only"):
        open_sqlite(f"sqlite:///file:{path}?mode=ro&uri=true")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://localhost/x", "is not a sqlite: URL"),
        ("sqlite+aiosqlite:///x.db", "only the standard sqlite3 driver"),
        ("::not a url::", "is not a storage URL"),
    ],
)
def test_urls_it_does_not_handle(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_sqlite(url)


def test_wrong_settings_object() -> None:
    with pytest.raises(StorageError, match="expected SQLiteSettings"):
        SQLiteStorageFactory.open(
            "sqlite://", settings={"busy_timeout": 1}, retention=RetentionPolicy()
        )


# --------------------------------------------------------------------------- permissions


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def run_unprivileged(action: Callable[[], None]) -> str:
    """Run ``action`` as a user the file permissions apply to; return its error message.

    As root (which ignores permissions) the action runs in a forked child that
    drops to ``nobody``, so the operating system checks the permissions for real.
    """
    if os.geteuid() != 0:
        try:
            action()
        except StorageError as error:
            return str(error)
        return ""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            uid, gid = _nobody()
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                action()
                message = ""
            except StorageError as error:
                message = str(error)
            os.write(write_end, message.encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child crashed"
    return message


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="lunasentri-perm-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.chmod(0o644)
    path.chmod(0o755)
    shutil.rmtree(path)


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@posix_only
def test_read_only_database_file(shared_dir: Path) -> None:
    path = shared_dir / "ro.db"
    storage = open_sqlite(f"sqlite:///{path}")
    storage.migrate()
    storage.close()
    before = path.read_bytes()
    path.chmod(0o444)
    message = run_unprivileged(lambda: open_sqlite(f"sqlite:///{path}").close())
    assert message.startswith(f"{path} is read-only"), message
    assert path.read_bytes() == before


@posix_only
def test_read_only_directory_of_a_new_database(shared_dir: Path) -> None:
    shared_dir.chmod(0o555)
    message = run_unprivileged(lambda: open_sqlite(f"sqlite:///{shared_dir / 'new.db'}").close())
    assert message == (
        f"directory {shared_dir} is read-only: cannot create the database new.db there"
    )


@posix_only
def test_read_only_directory_of_an_existing_database(shared_dir: Path) -> None:
    path = shared_dir / "l.db"
    sqlite3.connect(path).close()
    path.chmod(0o666)
    shared_dir.chmod(0o555)
    message = run_unprivileged(lambda: open_sqlite(f"sqlite:///{path}").close())
    assert message.startswith(f"directory {shared_dir} is read-only: SQLite needs to create"), (
        message
    )


# --------------------------------------------------------------------------- plugin


def test_registers_the_factory() -> None:
    assert list(lunasentri_register_storage()) == [SQLiteStorageFactory]
    manager = create_plugin_manager()
    assert manager.storage_for_scheme("sqlite").cls is SQLiteStorageFactory
    assert manager.storage_for_scheme("sqlite+pysqlite").cls is SQLiteStorageFactory


def test_settings_come_from_the_plugins_table() -> None:
    manager = PluginManager(plugin_settings={"sqlite": {"busy_timeout": 2, "synchronous": "FULL"}})
    manager.register(sys.modules["lunasentri_sqlite"], "sqlite")
    settings = manager.storage_for_scheme("sqlite").settings
    assert settings == SQLiteSettings(
        busy_timeout=timedelta(seconds=2), synchronous=Synchronous.FULL
    )


def test_wrong_settings_name_their_path() -> None:
    manager = PluginManager(plugin_settings={"sqlite": {"cache_size_mib": 0, "synchronus": "x"}})
    manager.register(sys.modules["lunasentri_sqlite"], "sqlite")
    with pytest.raises(PluginError):
        manager.storage_for_scheme("sqlite")
    (failure,) = manager.failures
    assert "plugins.sqlite" in failure.reason


def test_settings_validate_their_values() -> None:
    with pytest.raises(ValueError, match="cache_size_mib must be positive"):
        SQLiteSettings(cache_size_mib=0)
    with pytest.raises(ValueError, match="busy_timeout must be positive"):
        SQLiteSettings(busy_timeout=timedelta(0))


# --------------------------------------------------------------------------- processes


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, UTC
    from lunasentri_core import MachineSamples, Reading, RetentionPolicy, Sample
    from lunasentri_sqlite import SQLiteStorageFactory

    url, machine = sys.argv[1], sys.argv[2]
    storage = SQLiteStorageFactory.open(url, retention=RetentionPolicy())
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(60):
        sample = Sample(t0 + timedelta(seconds=i), [Reading("proc.count", i)])
        storage.metrics.write([MachineSamples(machine, [sample])])
        if i % 20 == 0:
            storage.metrics.maintain(t0 + timedelta(seconds=i))
    storage.close()
    """
)


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = open_sqlite(url)
    storage.migrate()
    machines = ["alpha", "beta"]
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, machine]) for machine in machines
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    latest = {v.series.machine_id: v.value for v in storage.metrics.latest(machines)}
    assert latest == dict.fromkeys(machines, 59.0)
    storage.metrics.maintain(T0 + timedelta(days=1))
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samples_head")).scalar() == 0
    for machine in machines:
        (history,) = storage.metrics.history(
            HistoryQuery(machine, "proc.count", T0, T0 + timedelta(hours=1), timedelta(seconds=1))
        )
        assert [p.value for p in history.points] == [float(i) for i in range(60)]
    storage.close()


def test_in_memory_database_serves_several_threads() -> None:
    # sqlite:// is one shared connection: transactions must take turns.
    storage = open_sqlite("sqlite://")
    storage.migrate()
    machines = [f"m{i}" for i in range(4)]
    errors: list[BaseException] = []

    def work(machine: str) -> None:
        try:
            for i in range(25):
                sample = Sample(T0 + timedelta(seconds=i), [Reading("proc.count", i)])
                storage.metrics.write([MachineSamples(machine, [sample])])
                storage.metrics.latest(machines)
                storage.metrics.maintain(T0 + timedelta(seconds=i))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(m,)) for m in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, repr(errors[0])
    latest = {v.series.machine_id: v.value for v in storage.metrics.latest(machines)}
    assert latest == dict.fromkeys(machines, 24.0)
    storage.close()
