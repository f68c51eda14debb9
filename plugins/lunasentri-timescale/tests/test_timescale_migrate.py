"""Migrations on PostgreSQL: one process at a time, whoever starts first; `lunasentri db migrate`.

The processes here are real ones (subprocesses) on a schema of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from timescale_support import child_env

from lunasentri_core.storage.sql import VERSION_TABLE, head_revision
from lunasentri_core.storage.sql.database import LOCK_MIGRATE

pytestmark = pytest.mark.postgres

MakeSchema = Callable[[], str]

MIGRATOR = textwrap.dedent(
    """
    import sys
    from lunasentri_timescale import TimescaleSettings, TimescaleStorageFactory

    url, name = sys.argv[1], sys.argv[2]
    storage = TimescaleStorageFactory.open(
        url, settings=TimescaleSettings(application_name=name)
    )
    print("connected", flush=True)
    sys.stdin.readline()  # the test says go to every process at once
    storage.migrate()
    print(storage.schema_revision(), flush=True)
    storage.close()
    """
)


def start_migrator(url: str, name: str, site: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, url, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(site),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "connected":
        _, err = process.communicate(timeout=60)
        pytest.fail(f"the migrating process did not start: {line}{err}")
    return process


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.strip()


def versions(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT to_regclass(:table) IS NOT NULL"), {"table": VERSION_TABLE}
            ).scalar()
            if not exists:
                return []
            rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def test_two_processes_migrate_one_fresh_schema_at_once(
    fresh_schema_url: MakeSchema, site: Path, processes: list[subprocess.Popen[str]]
) -> None:
    url = fresh_schema_url()
    processes += [start_migrator(url, f"lstest-migrate-{i}", site) for i in range(2)]
    for process in processes:  # both are connected: let them go together
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()

    revisions = [finish(process) for process in processes]

    assert revisions == [head_revision(), head_revision()]
    assert versions(url) == [head_revision()]


def _waiting_for_the_lock(admin: sa.Connection, name: str) -> bool:
    query = sa.text(
        """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND NOT l.granted
          AND l.objid = :objid AND a.application_name = :name
        """
    )
    return bool(admin.execute(query, {"objid": LOCK_MIGRATE, "name": name}).scalar())


def test_a_migration_waits_for_the_lock_another_process_holds(
    postgres_url: str,
    fresh_schema_url: MakeSchema,
    site: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    url = fresh_schema_url()
    name = f"lstest-wait-{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as holder, engine.connect() as watcher:
            # Holds the migration lock as another migrating process would.
            holder.execute(sa.select(sa.func.pg_advisory_lock(LOCK_MIGRATE)))
            process = start_migrator(url, name, site)
            processes.append(process)
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            seen = threading.Event()
            for _ in range(6000):  # a condition to wait for, not a timing assertion
                if _waiting_for_the_lock(watcher, name) or process.poll() is not None:
                    seen.set()
                    break
                threading.Event().wait(0.01)
            assert seen.is_set(), "the process never asked for the lock"
            assert process.poll() is None, "the process did not wait for the lock"
            assert versions(url) == []  # nothing migrated while the lock is held
            holder.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_MIGRATE)))
        assert finish(process) == head_revision()
    finally:
        engine.dispose()
    assert versions(url) == [head_revision()]


def lunasentri(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lunasentri_core.cli", *args],
        capture_output=True,
        text=True,
        env=child_env(site, **env),
        timeout=120,
    )


def test_lunasentri_db_migrate_on_postgresql(fresh_schema_url: MakeSchema, site: Path) -> None:
    url = fresh_schema_url()

    first = lunasentri(site, "db", "migrate", LUNASENTRI_STORAGE__URL=url)
    again = lunasentri(site, "db", "migrate", LUNASENTRI_STORAGE__URL=url)

    assert first.returncode == 0, first.stderr
    assert "is up to date" in first.stdout
    assert again.returncode == 0, again.stderr
    assert versions(url) == [head_revision()]


def test_lunasentri_db_migrate_never_shows_the_password(site: Path, postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url).set(username="lunasentri_nobody", password="pw-x9")

    result = lunasentri(
        site, "db", "migrate", LUNASENTRI_STORAGE__URL=url.render_as_string(hide_password=False)
    )

    assert result.returncode == 1
    assert "refused the login" in result.stderr
    assert "pw-x9" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_lunasentri_plugins_shows_the_storage_mode(migrated_url: str, site: Path) -> None:
    table = lunasentri(site, "plugins", "--storage", LUNASENTRI_STORAGE__URL=migrated_url)
    as_json = lunasentri(
        site, "plugins", "--storage", "--json", LUNASENTRI_STORAGE__URL=migrated_url
    )

    assert as_json.returncode == 0, as_json.stderr
    storage = json.loads(as_json.stdout)["storage"]
    assert storage["backend"] == "timescale"
    assert storage["mode"] in ("postgres", "timescale")
    assert table.returncode == 0, table.stderr
    assert "storage:timescale" in table.stdout
    assert f"backend timescale, {storage['mode']} mode" in table.stdout
    assert "concurrent-writers" in storage["capabilities"]
    partitioning = storage["partitioning"]
    assert (partitioning["kind"], partitioning["width_hours"]) == ("native", 24)
    assert partitioning["partitions"] >= partitioning["ahead"] + 1 == 4
    assert (
        f"partitioning: native, metric_chunks by chunk_start, 24 h wide, 3 ahead, "
        f"{partitioning['partitions']} partitions"
    ) in table.stdout


def test_lunasentri_plugins_says_when_the_storage_cannot_be_opened(site: Path) -> None:
    url = "postgresql://lunasentri:pw-x9@127.0.0.1:1/lunasentri"

    result = lunasentri(site, "plugins", "--storage", LUNASENTRI_STORAGE__URL=url)

    assert result.returncode == 1
    assert "cannot open it: cannot reach" in result.stdout
    assert "pw-x9" not in result.stdout + result.stderr
