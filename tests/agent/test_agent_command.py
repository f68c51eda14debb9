"""``lunasentri agent`` as a user runs it: flags, errors, the unit file, signals, imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lunasentri_core.cli import main

HEAVY = ("sqlalchemy", "starlette", "uvicorn", "prometheus_client", "alembic", "lunasentri_sqlite")


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


def test_the_agent_imports_no_server_or_storage_code(tmp_path: Path) -> None:
    """Building a running agent must not load SQLAlchemy, starlette & co (its footprint)."""
    script = textwrap.dedent(
        f"""
        import sys
        import anyio
        from lunasentri_core.agent import command
        from lunasentri_core.agent.collectors import load_collectors
        from lunasentri_core.agent.runner import Agent
        from lunasentri_core.agent.transport import make_http_client
        from lunasentri_core.config import Settings

        settings = Settings.load(environ={{}}, data_dir={str(tmp_path)!r})
        collectors = load_collectors(settings, ("psutil",))
        client = make_http_client(settings.agent.__class__(server_url="http://x"), "1")
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print(",".join(heavy) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "none", result.stdout


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
