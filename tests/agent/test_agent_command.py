"""``lunasentri agent`` as a user runs it: flags, errors, the unit file, signals.

What it imports is pinned in test_agent_imports.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lunasentri_core.cli import main


def run(args: list[str], env: dict[str, str | None]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    return {"LUNASENTRI_DATA_DIR": str(tmp_path / "data"), "LUNASENTRI_CONFIG": None}


def test_needs_a_server_url(env: dict[str, str | None], tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    code, output = run(["--config", str(config), "agent", "--once"], env)
    assert code == 1
    assert "no server URL" in output


def test_once_against_an_unreachable_server_keeps_the_sample(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nserver_url = 'http://127.0.0.1:9'\napi_key = 'lsk_x'\n")
    code, output = run(["--config", str(config), "agent", "--once"], env)
    assert code == 1
    assert "not delivered: ConnectError" in output
    assert "1 sample(s) stay spooled" in output
    assert len(list((tmp_path / "data" / "agent-spool" / "queue").glob("*.json"))) == 1


def test_once_and_claim_do_not_mix(env: dict[str, str | None], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("")
    code, output = run(
        ["--config", str(config), "agent", "--server", "http://x", "--once", "--claim"], env
    )
    assert code == 2
    assert "--once" in output


def test_unknown_collector_is_a_clear_error(env: dict[str, str | None], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("")
    code, output = run(
        [
            "--config",
            str(config),
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--collector",
            "nosuch",
            "--once",
        ],
        env,
    )
    assert code == 1
    assert "no collector named 'nosuch'" in output


def test_bad_settings_are_a_clear_error(env: dict[str, str | None], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[agent]\ninterval = -1\n")
    code, output = run(["--config", str(config), "agent", "--once"], env)
    assert code == 1
    assert "agent.interval" in output


def test_print_systemd_unit(env: dict[str, str | None], tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nserver_url = 'https://monitor.example.com'\napi_key = 'lsk_x'\n")
    code, unit = run(
        ["--config", str(config), "agent", "--interval", "10", "--print-systemd-unit"], env
    )
    assert code == 0
    assert "Restart=on-failure" in unit
    assert "User=lunasentri" in unit
    assert "Environment=LUNASENTRI_AGENT__SERVER_URL=https://monitor.example.com" in unit
    assert "Environment=LUNASENTRI_AGENT__INTERVAL=10" in unit
    assert f"Environment=LUNASENTRI_CONFIG={config}" in unit
    assert "lsk_x" not in unit  # unit files are world-readable: the key goes elsewhere
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    command = exec_start.removeprefix("ExecStart=").split(" ")
    assert Path(command[0]).is_absolute()
    assert command[-1] in ("agent", "lunasentri_core.agent")


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_gracefully_and_keeps_the_spool(
    tmp_path: Path, signum: signal.Signals
) -> None:
    queue = tmp_path / "agent-spool" / "queue"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")},
        "LUNASENTRI_DATA_DIR": str(tmp_path),
        "LUNASENTRI_AGENT__SERVER_URL": "http://127.0.0.1:9",
        "LUNASENTRI_AGENT__API_KEY": "lsk_x",
        "LUNASENTRI_AGENT__INTERVAL": "0.2",
        "LUNASENTRI_LOG_LEVEL": "info",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lunasentri_core.agent"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(queue.glob("*.json"))) < 2:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the agent spooled nothing"
            time.sleep(0.05)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"{signum.name}: stopping" in output
    assert "agent stopped:" in output
    assert len(list(queue.glob("*.json"))) >= 2


def test_an_unusable_spool_directory_is_a_clear_error(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "c.toml"
    config.write_text(f"[agent]\nserver_url = 'http://127.0.0.1:9'\nspool_dir = '{blocker}'\n")
    code, output = run(["--config", str(config), "agent", "--once"], env)
    assert code == 1
    assert f"cannot use the spool directory {blocker}" in output


def test_two_agents_cannot_share_a_spool(env: dict[str, str | None], tmp_path: Path) -> None:
    from lunasentri_core.agent.spool import lock_directory

    spool = tmp_path / "data" / "agent-spool"
    fd = lock_directory(spool)
    try:
        config = tmp_path / "c.toml"
        config.write_text("[agent]\nserver_url = 'http://127.0.0.1:9'\napi_key = 'lsk_x'\n")
        code, output = run(["--config", str(config), "agent", "--once"], env)
    finally:
        os.close(fd)
    assert code == 1
    assert f"another agent is using the spool directory {spool}" in output
    code, output = run(["--config", str(config), "agent", "--once"], env)
    assert "another agent" not in output


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_second_stop_signal_cancels_the_send_in_flight(tmp_path: Path) -> None:
    # A server that has no central configuration, and never answers an ingest.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    ingest_arrived = threading.Event()

    def handle(connection: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while data := connection.recv(65536):
                buffer += data
                if buffer.startswith(b"POST"):
                    ingest_arrived.set()
                elif b"\r\n\r\n" in buffer:
                    connection.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    buffer = buffer.split(b"\r\n\r\n", 1)[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                accepted.append(connection)
                threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    queue = tmp_path / "agent-spool" / "queue"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")},
        "LUNASENTRI_DATA_DIR": str(tmp_path),
        "LUNASENTRI_AGENT__SERVER_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
        "LUNASENTRI_AGENT__API_KEY": "lsk_x",
        "LUNASENTRI_AGENT__TIMEOUT": "120",
        "LUNASENTRI_LOG_LEVEL": "info",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lunasentri_core.agent"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert ingest_arrived.wait(30), "the agent sent nothing"
        process.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)  # still waiting for the answer
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()
        for connection in accepted:
            connection.close()
    assert process.returncode == 0, output
    assert "SIGTERM: stopping after the send in flight" in output
    assert "second stop signal: cancelled the send in flight" in output
    assert len(list(queue.glob("*.json"))) == 1  # not acknowledged, so still spooled
