"""A real ``lunasentri serve`` process for the HTTP benchmarks.

The server runs in its own interpreter, as in production (uvicorn, one worker),
on a free loopback port with a temporary data directory; the benchmark is the
client. ``ServerProcess`` starts it, waits for ``/healthz/ready``, logs in as
the admin, registers machines through the API (concurrently), measures the
server's CPU time, and stops it with SIGTERM, checking that it exits cleanly.
The few reporting helpers the HTTP benchmarks share live here too.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import psutil

ADMIN_PASSWORD = "benchmark-admin-password"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

PRELUDE_ENTRY = "import sys; from lunasentri_core.cli import main; sys.exit(main())"
"""How the CLI starts after a prelude (``python -c``); without one, ``python -m``."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def lighten_httpx() -> None:
    """Make httpcore's per-request ``import sniffio`` fail fast when it is not installed.

    The agent does the same (agent/transport.py): without it every request of
    the load generator scans sys.path again, CPU taken from the server it loads.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(ok: bool) -> str:
    """Targets are reported, not asserted: a missed one reads MISS."""
    return "PASS" if ok else "MISS"


class RunQueue:
    """Seconds the threads of a process waited for a CPU since this was made (Linux).

    Read from /proc/PID/task/*/schedstat: time runnable but not running, which
    on a shared machine is other processes holding the cores. Threads that end
    in between take their share with them (an undercount); 0 without schedstat.
    """

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self._start = self._read()

    def _read(self) -> dict[str, int]:
        waits = {}
        for stat in Path(f"/proc/{self.pid}/task").glob("*/schedstat"):
            try:
                waits[stat.parent.name] = int(stat.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
        return waits

    def seconds(self) -> float:
        now = self._read()
        return sum(max(0, wait - self._start.get(tid, 0)) for tid, wait in now.items()) / 1e9


class ServerError(RuntimeError):
    """The server did not start, answered wrongly, or did not stop cleanly."""


class ServerProcess:
    """``lunasentri serve`` in a subprocess; use as a context manager.

    ``env`` adds ``LUNASENTRI_*`` settings (e.g. a higher ingest rate limit).
    The server's output goes to a log file whose tail is shown when it fails.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, prelude: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="lunasentri-bench-server-"))
        self.data_dir = self._tmp / "data"
        self.log_path = self._tmp / "server.log"
        self._env = dict(env or {})
        self._prelude = prelude
        """Python run in the server's interpreter before the CLI (for experiments)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object = None
        self.returncode: int | None = None
        self.clean = False
        """Whether the last stop() was graceful (see stopped_cleanly)."""

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self.stop(check=exc is None)
        finally:
            self.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self) -> None:
        env = {
            # The benchmarks' own variables are not server settings (it would refuse them).
            **{k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_BENCH_")},
            "LUNASENTRI_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "LUNASENTRI_ADMIN_USERNAME": "admin",
            **self._env,
        }
        env.pop("LUNASENTRI_CONFIG", None)
        command = [
            sys.executable,
            *(
                ["-c", f"{self._prelude}\n{PRELUDE_ENTRY}"]
                if self._prelude
                else ["-m", "lunasentri_core.cli"]
            ),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        log = self.log_path.open("wb")
        self._log = log
        self._proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._tmp
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise ServerError(f"the server exited at start:\n{self.log_tail()}")
                try:
                    if client.get("/healthz/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise ServerError(f"the server was not ready in {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self, *, check: bool = True) -> int:
        """SIGTERM, then wait for the graceful shutdown, which must complete.

        uvicorn re-raises the signal it caught once it has shut down, so a clean
        stop ends with status -SIGTERM (143 in a shell) as well as 0.
        """
        assert self._proc is not None, "not started"
        self._proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self._proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.returncode = self._proc.wait()
            raise ServerError(
                f"the server did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM:\n"
                f"{self.log_tail()}"
            ) from None
        self.clean = self.stopped_cleanly()
        if check and not self.clean:
            raise ServerError(
                f"the server exited with status {self.returncode} after SIGTERM:\n{self.log_tail()}"
            )
        return self.returncode

    def restart(
        self, env: Mapping[str, str] | None = None, *, between: Callable[[], None] | None = None
    ) -> None:
        """Stop gracefully and start again on the same data directory (and port).

        ``between`` runs while the server is down (on its database, say);
        ``env`` replaces the extra settings for the new process.
        """
        self.stop()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        if between is not None:
            between()
        if env is not None:
            self._env = dict(env)
        self.start()

    def database(self) -> Path:
        """The SQLite file of the data directory."""
        (path,) = self.data_dir.glob("*.db")
        return path

    def stopped_cleanly(self) -> bool:
        """Stopped by the signal, with no error or traceback in the log."""
        return self.returncode in (0, -signal.SIGTERM) and not self.errors()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as log:
                tail = collections.deque(log, maxlen=lines)
        except OSError:
            return "(no server log)"
        return b"".join(tail).decode(errors="replace")

    def errors(self) -> list[str]:
        """Log lines at ERROR or above, and tracebacks (text or JSON log format)."""
        text = self.log_path.read_text(errors="replace")
        marks = ("ERROR", "CRITICAL", "Traceback", '"level": "error"', '"level": "critical"')
        return [line for line in text.splitlines() if any(mark in line for mark in marks)]

    # ------------------------------------------------------------ measuring

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def run_queue(self) -> RunQueue:
        """From now on, how long the server's threads wait for a CPU."""
        return RunQueue(self.pid)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    # ------------------------------------------------------------ API

    def scrape(self) -> dict[str, float]:
        """The server's /metrics: each sample line's series (with labels) -> value."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            text = client.get("/metrics").text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                values[series] = float(value)
        return values

    def login(self) -> str:
        """A session token of the admin."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
        if response.status_code != 200:
            raise ServerError(f"login: {response.status_code} {response.text}")
        token: str = response.json()["token"]
        return token

    def register(self, names: Sequence[str], *, concurrency: int = 16) -> list[str]:
        """Register machines through the API; returns their API keys, in order."""
        lighten_httpx()
        return asyncio.run(self._register(self.login(), names, concurrency))

    async def _register(self, token: str, names: Sequence[str], concurrency: int) -> list[str]:
        keys: list[str] = [""] * len(names)
        queue = iter(enumerate(names))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            base_url=self.url, headers=headers, limits=limits, timeout=60
        ) as client:

            async def worker() -> None:
                # One shared iterator: each worker takes the next name until none are left.
                for index, name in queue:
                    body = {"name": name, "hostname": f"{name}.bench", "labels": {"bench": "1"}}
                    response = await client.post("/api/v1/machines", json=body)
                    if response.status_code != 201:
                        raise ServerError(
                            f"registering {name}: {response.status_code} {response.text}"
                        )
                    keys[index] = response.json()["api_key"]

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return keys
