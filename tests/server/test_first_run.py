"""The first run: someone can always log in, and what the server prints works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import free_port
from .test_operations import stop, wait_ready

LOGIN = re.compile(r"log in:\s+user 'admin', password(?: '(?P<password>[^']+)'|: (?P<other>.*))")


def _env() -> dict[str, str]:
    """No admin password from the environment: the server is on its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}


def _serve(*args: str, data_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "lunasentri_core.cli", "serve", *args]
    return [*command, "--data-dir", str(data_dir), "--port", str(free_port())]


def _users(*args: str, data_dir: Path, password: str) -> None:
    """``lunasentri users ...`` on the same data directory, the password on stdin."""
    subprocess.run(
        [sys.executable, "-m", "lunasentri_core.cli", "users", *args, "--password-stdin"],
        input=password + "\n",
        env={**_env(), "LUNASENTRI_DATA_DIR": str(data_dir)},
        check=True,
        capture_output=True,
        text=True,
    )


def _url(command: list[str]) -> str:
    return f"http://127.0.0.1:{command[-1]}"


def _password(line: str) -> str | None:
    match = LOGIN.search(line)
    assert match is not None, line
    return match["password"]


def _demo(processes: list[subprocess.Popen[str]], data_dir: Path) -> tuple[str, bool]:
    """Run the demo until its banner is out: its login line, and whether the password
    it shows (if any) logs in."""
    command = _serve("--demo", data_dir=data_dir)
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    processes.append(process)
    wait_ready(_url(command), process)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    line = ""
    while "log in:" not in line:
        assert time.monotonic() < deadline, "no banner"
        line = process.stdout.readline()
    password = _password(line)
    works = False
    if password is not None:
        answer = httpx.post(
            f"{_url(command)}/api/v1/auth/login",
            json={"username": "admin", "password": password},
        )
        works = answer.status_code == 200
    stop(process)
    return line, works


def test_the_demo_run_again_prints_a_password_that_works(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    first, works = _demo(processes, tmp_path)
    assert "generated now" in first
    assert works

    again, works = _demo(processes, tmp_path)
    assert _password(again) == _password(first)
    assert "as before" in again
    assert works
    assert (tmp_path / "demo-admin-password").stat().st_mode & 0o077 == 0


def test_the_demo_says_so_when_its_password_was_changed(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    first, _ = _demo(processes, tmp_path)
    _users("set-password", "admin", data_dir=tmp_path, password="a new long password")

    again, _ = _demo(processes, tmp_path)
    assert _password(again) is None
    assert str(_password(first)) not in again
    assert "set for it since the demo made it" in again
    assert "lunasentri users set-password admin" in again


def test_serve_without_an_admin_refuses_and_says_how_to_make_one(tmp_path: Path) -> None:
    result = subprocess.run(
        _serve(data_dir=tmp_path), env=_env(), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert "no administrator exists" in result.stderr
    assert f"LUNASENTRI_DATA_DIR={tmp_path} lunasentri users create admin --admin" in (
        result.stderr
    )
    assert "LUNASENTRI_ADMIN_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_starts_once_an_admin_exists(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    _users("create", "root", "--admin", data_dir=tmp_path, password="a long enough password")
    command = _serve(data_dir=tmp_path)
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    processes.append(process)
    wait_ready(_url(command), process)
    login = httpx.post(
        f"{_url(command)}/api/v1/auth/login",
        json={"username": "root", "password": "a long enough password"},
    )
    assert login.status_code == 200
    stop(process)
