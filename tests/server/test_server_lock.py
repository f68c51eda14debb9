"""A second ``lunasentri serve`` on the same SQLite database is refused unless shared."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lunasentri_core.config import Settings
from lunasentri_core.server.instance_lock import DatabaseInUse, server_lock, sqlite_database

from .conftest import free_port
from .test_operations import serve_process, stop, wait_ready


def _serve(
    processes: list[subprocess.Popen[str]], data_dir: Path, **env: str
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = serve_process("--port", str(port), data_dir=data_dir, env=env)
    processes.append(process)
    return process, f"http://127.0.0.1:{port}"


def test_a_second_server_on_the_same_data_directory_is_refused(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    first, url = _serve(processes, tmp_path)
    wait_ready(url, first)

    second, _ = _serve(processes, tmp_path)
    _, err = second.communicate(timeout=60)

    assert second.returncode == 1
    assert f"is in use by another server (process {first.pid})" in err
    assert "shared_database = true" in err
    assert "Traceback" not in err
    stop(first)
    # Once the first is gone, the lock goes with it.
    third, url = _serve(processes, tmp_path)
    wait_ready(url, third)
    stop(third)


def test_servers_that_all_say_so_share_a_database(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    shared = {"LUNASENTRI_SERVER__SHARED_DATABASE": "true"}
    first, first_url = _serve(processes, tmp_path, **shared)
    # One after the other: a free port is picked before the server binds it, so two
    # picked at once may be the same; and two servers creating a fresh database at
    # the same moment would race in its migrations, which is not what this tests.
    wait_ready(first_url, first)
    second, second_url = _serve(processes, tmp_path, **shared)
    wait_ready(second_url, second)

    # One that wants the database alone is refused while they run.
    alone, _ = _serve(processes, tmp_path)
    _, err = alone.communicate(timeout=60)
    assert alone.returncode == 1
    assert "is in use by other servers" in err
    stop(first)
    stop(second)


def test_an_exclusive_holder_refuses_a_sharing_newcomer(tmp_path: Path) -> None:
    alone = Settings.load(environ={}, data_dir=tmp_path)
    sharing = Settings.load(environ={}, data_dir=tmp_path, server={"shared_database": True})
    with (
        server_lock(alone),
        pytest.raises(DatabaseInUse, match="is held alone by another server"),
        server_lock(sharing),
    ):
        pass
    with server_lock(sharing), server_lock(sharing):
        pass  # shared holders coexist


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/x/lunasentri.db", Path("/var/lib/x/lunasentri.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://db.example/lunasentri", None),
        ("not a url", None),
    ],
)
def test_only_sqlite_files_are_locked(url: str, path: Path | None) -> None:
    assert sqlite_database(url) == path
