"""The real agent against the real server: push, outage and restart, claim, central config."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from lunasentri_core import __version__
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.runner import Agent
from lunasentri_core.agent.settings import AgentRunSettings, load_agent_settings
from lunasentri_core.agent.spool import Spool
from lunasentri_core.agent.transport import make_http_client, sample_json
from lunasentri_core.model import Reading, Sample, utcnow

from .conftest import LiveServer

pytestmark = pytest.mark.anyio


def create_machine(server: LiveServer, admin: str, name: str) -> tuple[str, str]:
    with server.client(admin) as client:
        response = client.post("/api/v1/machines", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["machine"]["id"], response.json()["api_key"]


def agent_settings(tmp_path: Path, server: LiveServer, **agent: Any) -> AgentRunSettings:
    options = {
        "server_url": server.url,
        "interval": 0.2,
        "send_interval": 0.2,
        "backoff_max": 0.5,
        **agent,
    }
    return load_agent_settings(environ={}, data_dir=tmp_path / "agent", agent=options)


def build_agent(
    settings: AgentRunSettings,
    http: httpx.Client,
    api_key: str | None,
    *,
    announce: Callable[[str, str], None] = lambda *_: None,
    clock: Callable[[], datetime] = utcnow,
) -> Agent:
    directory = settings.spool_dir
    return Agent(
        settings,
        spool=Spool.open(directory, settings.agent.spool_max_bytes),
        identity=Identity(directory),
        http=http,
        version=__version__,
        api_key=api_key,
        announce=announce,
        clock=clock,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[None]:
    """The (synchronous) agent runs in a thread meanwhile; then it stops gracefully."""
    thread = threading.Thread(target=agent.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive(), "the agent did not stop"


def agent_env(tmp_path: Path, server: LiveServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    env.update(
        LUNASENTRI_DATA_DIR=str(tmp_path / "cli-agent"),
        LUNASENTRI_AGENT__SERVER_URL=server.url,
        LUNASENTRI_LOG_LEVEL="info",
        **extra,
    )
    return env


def history_timestamps(
    server: LiveServer, admin: str, machine_id: str, start: datetime, end: datetime
) -> list[str]:
    with server.client(admin) as client:
        response = client.get(
            f"/api/v1/machines/{machine_id}/history",
            params={
                "metric": "mem.used",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "step": "0.01",
                "agg": "last",
            },
        )
    assert response.status_code == 200, response.text
    (series,) = response.json()["series"]
    return [point[0] for point in series["points"]]


def bucket(at: datetime) -> str:
    epoch = datetime(1970, 1, 1, tzinfo=at.tzinfo)
    return (at - (at - epoch) % timedelta(milliseconds=10)).isoformat()


# --------------------------------------------------------------------------- tests


def test_once_from_the_command_line_and_the_points_are_queryable(
    server: LiveServer, tmp_path: Path
) -> None:
    admin = server.login()
    machine_id, key = create_machine(server, admin, "cli")
    result = subprocess.run(
        [sys.executable, "-m", "lunasentri_core.agent", "--once"],
        env=agent_env(tmp_path, server, LUNASENTRI_AGENT__API_KEY=key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered 1 sample(s)" in result.stdout
    with server.client(admin) as client:
        latest = client.get(f"/api/v1/machines/{machine_id}/latest").json()
    metrics = {item["metric"] for item in latest["items"]}
    assert {"cpu.percent", "mem.used", "mem.total"} <= metrics


def test_once_with_a_wrong_key_fails_and_keeps_the_sample(
    server: LiveServer, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lunasentri_core.agent", "--once"],
        env=agent_env(tmp_path, server, LUNASENTRI_AGENT__API_KEY="lsk_not_a_key"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not delivered: HTTP 401" in result.stderr
    assert "the API key was refused" in result.stderr
    assert "1 sample(s) stay spooled" in result.stderr


def test_a_healthy_agent_says_so_at_start_and_now_and_then(
    server: LiveServer, tmp_path: Path
) -> None:
    _, key = create_machine(server, server.login(), "chatty")
    env = agent_env(tmp_path, server, LUNASENTRI_AGENT__API_KEY=key)
    del env["LUNASENTRI_LOG_LEVEL"]  # the default level
    env.update(LUNASENTRI_AGENT__SUMMARY_INTERVAL="1", LUNASENTRI_AGENT__SEND_INTERVAL="0.5")
    process = subprocess.Popen(
        [sys.executable, "-m", "lunasentri_core.agent", "--interval", "0.5"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        summary = re.compile(r"(\d+) sample\(s\) collected, (\d+) delivered")
        while not any((m := summary.search(x)) and int(m.group(2)) > 0 for x in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(process.stderr.readline())
    finally:
        process.terminate()
        process.communicate(timeout=30)
    start = next(line for line in lines if "sends to" in line)
    assert server.url in start
    assert "collects every 0.5 s with psutil" in start
    assert not any("HTTP Request" in line for line in lines), "httpx's request lines"


def test_a_ten_minute_backlog_drains_within_30_s_of_the_server_returning(
    server: LiveServer, tmp_path: Path
) -> None:
    admin = server.login()
    machine_id, key = create_machine(server, admin, "backlog")
    # The default interval, send interval and backoff.
    settings = load_agent_settings(
        environ={}, data_dir=tmp_path / "agent", agent={"server_url": server.url}
    )
    start = utcnow() - timedelta(minutes=10)
    with make_http_client(settings.agent, __version__) as http:
        agent = build_agent(settings, http, key)
        for n in range(120):  # ten minutes at 5 s, spooled while the server was down
            at = start + timedelta(seconds=5 * n)
            agent.spool.append(sample_json(Sample(at, [Reading("backlog.n", n)])))
        server.stop()
        # A long outage: the backoff has reached its ceiling, and draws it.
        agent._backoff.attempts = 30
        agent._backoff._rng = lambda: 1.0
        with running(agent):
            wait_for(lambda: agent.stats.send_failures >= 1)
            server.start()
            wait_for(lambda: agent.stats.delivered >= 120, timeout=30)
    with server.client(admin) as client:
        latest = client.get(f"/api/v1/machines/{machine_id}/latest").json()["items"]
        history = client.get(
            f"/api/v1/machines/{machine_id}/history",
            params={"metric": "backlog.n", "start": "-11m", "step": "5s", "agg": "last"},
        ).json()
    assert {item["metric"]: item["value"] for item in latest}["backlog.n"] == 119
    (series,) = history["series"]
    assert [value for _, value in series["points"]] == [float(n) for n in range(120)]


def test_no_sample_is_lost_while_the_server_restarts(server: LiveServer, tmp_path: Path) -> None:
    admin = server.login()
    machine_id, key = create_machine(server, admin, "bounce")
    collected: list[datetime] = []

    def clock() -> datetime:
        collected.append(utcnow())
        return collected[-1]

    # Steps count from the start given: aligned, they match bucket() below.
    started = datetime.fromisoformat(bucket(utcnow()))
    settings = agent_settings(tmp_path, server)
    with make_http_client(settings.agent, __version__) as http:
        agent = build_agent(settings, http, key, clock=clock)
        with running(agent):
            wait_for(lambda: agent.stats.delivered >= 3)
            server.stop()
            down_at = agent.stats.collected
            wait_for(lambda: agent.stats.collected >= down_at + 5)
            assert agent.stats.send_failures >= 1
            assert len(agent.spool) >= 4
            server.start()
            wait_for(lambda: len(agent.spool) == 0 and agent.stats.collected > down_at + 6)
    # A sample collected after the last send waits in the spool for the next run.
    spooled = {
        bucket(datetime.fromisoformat(json.loads(s.data)["timestamp"]))
        for s in agent.spool.peek(len(agent.spool))
    }
    assert agent.stats.delivered + len(spooled) == agent.stats.collected == len(collected)
    assert len(spooled) <= 1
    stored = history_timestamps(server, admin, machine_id, started, utcnow())
    assert sorted([*stored, *spooled]) == sorted(bucket(at) for at in collected)


async def test_claim_workflow_with_the_real_agent(server: LiveServer, tmp_path: Path) -> None:
    lines: queue.Queue[str] = queue.Queue()
    process = subprocess.Popen(
        [sys.executable, "-m", "lunasentri_core.agent", "--interval", "0.5"],
        env=agent_env(tmp_path, server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    output: list[str] = []

    def read_until(prefix: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            output.append(line)
            if line.strip().startswith(prefix):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"no {prefix!r} line in:\n{''.join(output)}")

    try:
        agent_id = read_until("agent id")
        token = read_until("claim token")
        assert token.startswith("lsc_")
        admin = await anyio.to_thread.run_sync(server.login)
        async with httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {admin}"}
        ) as client:
            pending = (await client.get("/api/v1/agents/pending")).json()["items"]
            assert [p["agent_id"] for p in pending] == [agent_id]
            claimed = await client.post(
                f"/api/v1/agents/{agent_id}/claim", json={"claim_token": token, "name": "claimed"}
            )
            assert claimed.status_code == 201, claimed.text
            machine_id = claimed.json()["machine"]["id"]

            async def has_data() -> bool:
                latest = await client.get(f"/api/v1/machines/{machine_id}/latest")
                return bool(latest.json()["items"])

            with anyio.fail_after(30):
                while not await has_data():
                    await anyio.sleep(0.1)
        # The agent says so where it showed the token (read_until fails if not).
        await anyio.to_thread.run_sync(read_until, f"Agent {agent_id} is claimed")
        assert server.url in output[-1]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=5)
        while not lines.empty():
            output.append(lines.get())
        assert process.returncode == 0, "".join(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        process.stdout.close()

    spool = tmp_path / "cli-agent" / "agent-spool"
    assert (spool / "api-key").read_text().startswith("lsk_")
    assert not (spool / "claim-token").exists()
    # After a restart the stored key is used: no second claim.
    again = subprocess.run(
        [sys.executable, "-m", "lunasentri_core.agent", "--once"],
        env=agent_env(tmp_path, server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "claim token" not in again.stdout


def test_a_central_config_change_is_noticed(server: LiveServer, tmp_path: Path) -> None:
    admin = server.login()
    machine_id, key = create_machine(server, admin, "config")
    settings = agent_settings(tmp_path, server, interval=0.5, config_poll_interval=0.2)
    with make_http_client(settings.agent, __version__) as http:
        agent = build_agent(settings, http, key)
        with running(agent):
            wait_for(lambda: agent.stats.delivered >= 1)
            assert agent.interval == 0.5  # the server's defaults (version 0) leave it alone
            with server.client(admin) as client:
                response = client.put(
                    f"/api/v1/machines/{machine_id}/agent-config",
                    json={"interval": 2, "collectors": ["psutil"], "labels": {"rack": "r1"}},
                )
            assert response.status_code == 200, response.text
            wait_for(lambda: agent.interval == 2.0)
            assert agent.target.labels == (("rack", "r1"),)
            assert agent.central is not None
            assert agent.central.version == "1"
