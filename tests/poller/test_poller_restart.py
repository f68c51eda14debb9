"""A server killed in the middle of a poll round polls each due monitor once after restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from lunasentri_core import Sentri
from lunasentri_core.model import utcnow

from .fakes import wait_until
from .hub_support import add_monitors, host_plugins, hub_settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# A hub whose collector notes every poll it starts in a file, then (when slow) never
# finishes: the process is killed with its polls under way.
SERVER = textwrap.dedent(
    """
    import sys, time
    import anyio
    from lunasentri_core import Reading, Sentri, Settings
    from lunasentri_core.testing import make_plugin

    data_dir, log, phase = sys.argv[1], sys.argv[2], sys.argv[3]

    class Noting:
        name = "hosts"
        settings_class = None

        def collect(self, target):
            with open(log, "a") as file:
                file.write(f"{phase} {target.host}\\n")
            if phase == "slow":
                time.sleep(3600)
            return [Reading("proc.count", 1)]

    async def main():
        settings = Settings.load(
            environ={}, data_dir=data_dir, heartbeat_interval="1d",
            agentless={"workers": 2, "tick": 0.05, "poll_timeout": "1h", "retries": 0},
        )
        plugins = {"hosts": make_plugin("hosts", lunasentri_register_collectors=lambda: [Noting])}
        async with Sentri(settings, plugins=plugins):
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def start(tmp_path: Path, phase: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "polls.log"), phase],
        env=env,
    )


def polls(tmp_path: Path) -> Counter[tuple[str, str]]:
    log = tmp_path / "polls.log"
    lines = log.read_text().split() if log.exists() else []
    return Counter(zip(lines[::2], lines[1::2], strict=True))


async def test_after_a_crash_each_due_monitor_is_polled_exactly_once(
    tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    addresses = [f"10.9.0.{i}" for i in range(1, 7)]
    reader = hub_settings(tmp_path / "data", enabled=False)
    async with Sentri(reader, plugins=host_plugins()) as hub:
        monitors = await hub.run_sync(
            add_monitors, hub, addresses, due_at=utcnow(), interval=timedelta(hours=1)
        )

    servers.append(first := start(tmp_path, "slow"))
    # Two workers: two polls under way (leased), four monitors due and waiting.
    await wait_until(lambda: sum(polls(tmp_path).values()) == 2, "two polls under way", 60)
    first.send_signal(signal.SIGKILL)
    first.wait()

    servers.append(start(tmp_path, "fast"))
    await wait_until(
        lambda: sum(n for (phase, _), n in polls(tmp_path).items() if phase == "fast") >= 6,
        "every monitor polled after the restart",
        60,
    )
    async with Sentri(reader, plugins=host_plugins()) as hub:

        async def recorded() -> list[object]:
            stored = await hub.run_sync(hub.storage.state.list_monitors)
            return [m.last_polled for m in stored]

        with anyio.fail_after(60):
            while None in await recorded():
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # a few more of the server's ticks: nothing else is due
    after = {host: n for (phase, host), n in polls(tmp_path).items() if phase == "fast"}
    assert after == dict.fromkeys(addresses, 1)
    assert len(monitors) == 6
