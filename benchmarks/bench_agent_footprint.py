"""Benchmark (b): the push agent's memory and CPU, beside a bare Python floor.

In one run: a real server (``lunasentri serve``, its own process, loopback), a
machine registered on it, then side by side for ``--duration`` seconds:

* the floor: ``python -c "import psutil, httpx; sleep"``, what any Python agent
  using those two libraries costs before it does anything;
* ``lunasentri agent`` at ``--interval`` seconds (the command users run);
* ``python -m lunasentri_core.agent``, the same agent without the rest of the CLI;
* for reference, not a limit: the libraries the agent is built on (httpcore,
  attrs, pluggy, tomllib) imported in a plain process that then sleeps, with no
  LunaSentri code. The agent's RSS above this line is LunaSentri's own; below it,
  its dependencies'.

LunaSentri's modules are byte-compiled first (``.pyc`` files beside the
sources), as installing them does: a development checkout run with
``PYTHONDONTWRITEBYTECODE`` would otherwise compile every module at every start,
which costs peak RSS (the compiler's memory) that no installed agent pays, while
the floor's psutil and httpx are installed, so compiled.

Peak RSS is the kernel's high-water mark (``VmHWM``) where available, else the
largest sampled RSS. CPU is the agent's user+system time from ``--warmup``
seconds on (start-up imports excluded; reported separately), as a share of one
core; it is counted in 10 ms clock ticks, so run longer for a finer figure.
The samples the server stored are counted, so an agent that silently failed
cannot pass.

    python benchmarks/bench_agent_footprint.py [--duration 60] [--interval 5] [--warmup 10]
        [--send-interval S]

Targets are reported, not asserted (``--strict`` exits 1 when one is missed).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
from _server import ServerProcess, verdict

from lunasentri_core.agent.settings import AgentSettings

AGENT_PACKAGES = ("lunasentri_core", "lunasentri_psutil")
TARGET_RSS_RATIO = 1.15
TARGET_CPU_PERCENT = 0.1
LIBRARIES = "reference: the agent's libraries"
BIN = Path(sys.executable).parent


class Watched:
    """A child process and its resource figures."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        # A file, not a pipe: nobody reads a pipe during the run, and a full one blocks.
        with log.open("wb") as output:
            self.popen = subprocess.Popen(
                list(argv), env=env, stdout=output, stderr=subprocess.STDOUT
            )
        self.process = psutil.Process(self.popen.pid)
        self.peak_sampled = 0
        self.started = time.monotonic()
        self.cpu_at_warmup: float | None = None
        self.warmup_at = 0.0

    def sample(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.peak_sampled = max(self.peak_sampled, self.process.memory_info().rss)

    def cpu(self) -> float:
        # Clock ticks (10 ms on Linux): over the default 50 s window the CPU share
        # moves in steps of 0.02 %, which the report states.
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def mark_warmup(self) -> None:
        self.cpu_at_warmup, self.warmup_at = self.cpu(), time.monotonic()

    def peak_rss(self) -> int:
        """The kernel's high-water mark, which no sampling interval can miss."""
        try:
            with open(f"/proc/{self.popen.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.peak_sampled

    def steady_cpu_percent(self) -> float:
        assert self.cpu_at_warmup is not None
        elapsed = time.monotonic() - self.warmup_at
        return 100.0 * (self.cpu() - self.cpu_at_warmup) / elapsed

    def stop(self) -> str:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return self.log.read_text(errors="replace")


def byte_compile(packages: Sequence[str]) -> None:
    """Write the packages' ``.pyc`` files beside their sources, as an install does."""
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{name} is not installed")
        if not compileall.compile_dir(Path(spec.origin).parent, quiet=1):
            raise SystemExit(f"cannot byte-compile {name}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    env.update(extra)
    return env


def machine_ids(server: ServerProcess, token: str) -> dict[str, str]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/api/v1/machines", headers={"authorization": f"Bearer {token}"})
        response.raise_for_status()
    return {item["name"]: item["id"] for item in response.json()["items"]}


def stored_samples(url: str, token: str, machine_id: str, since: datetime) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.get(
            f"/api/v1/machines/{machine_id}/history",
            params={
                "metric": "mem.used",
                "start": since.isoformat(),
                "end": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
                "step": "1",
            },
            headers={"authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        series = response.json()["series"]
    return sum(len(s["points"]) for s in series)


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--interval", type=float, default=5.0, help="agent interval, s")
    parser.add_argument("--warmup", type=float, default=10.0, help="CPU counted after this")
    parser.add_argument(
        "--send-interval",
        type=float,
        default=None,
        help="[agent] send_interval, s (default: the agent's, 15; 5 sends every sample)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    byte_compile(AGENT_PACKAGES)

    with (
        tempfile.TemporaryDirectory(prefix="lunasentri-bench-agent-") as tmp,
        ServerProcess() as server,
    ):
        return run(args, Path(tmp), server)


def run(args: argparse.Namespace, root: Path, server: ServerProcess) -> int:
    url = server.url
    cli_key, module_key = server.register(["bench-cli", "bench-module"])
    token = server.login()
    ids = machine_ids(server, token)
    cli_machine, module_machine = ids["bench-cli"], ids["bench-module"]
    since = datetime.now(UTC)

    def agent_env(name: str, key: str) -> dict[str, str]:
        env = clean_env(
            LUNASENTRI_DATA_DIR=str(root / name),
            LUNASENTRI_AGENT__SERVER_URL=url,
            LUNASENTRI_AGENT__API_KEY=key,
            LUNASENTRI_AGENT__INTERVAL=f"{args.interval:g}",
        )
        if args.send_interval is not None:
            env["LUNASENTRI_AGENT__SEND_INTERVAL"] = f"{args.send_interval:g}"
        return env

    sleep_for = args.duration + 30
    sleep = f"import psutil, httpx, time; time.sleep({sleep_for})"
    idle_libraries = (
        f"import psutil, httpx, httpcore, attrs, pluggy, tomllib, time; time.sleep({sleep_for})"
    )
    watched = [
        Watched(
            "floor: import psutil, httpx",
            [sys.executable, "-c", sleep],
            clean_env(),
            root / "floor.log",
        ),
        Watched(
            "lunasentri agent",
            [str(BIN / "lunasentri"), "agent"],
            agent_env("cli", cli_key),
            root / "cli.log",
        ),
        Watched(
            "python -m lunasentri_core.agent",
            [sys.executable, "-m", "lunasentri_core.agent"],
            agent_env("module", module_key),
            root / "module.log",
        ),
        Watched(LIBRARIES, [sys.executable, "-c", idle_libraries], clean_env(), root / "libs.log"),
    ]
    started = time.monotonic()
    warmed = False
    while (elapsed := time.monotonic() - started) < args.duration:
        for item in watched:
            item.sample()
        if not warmed and elapsed >= args.warmup:
            for item in watched:
                item.mark_warmup()
            warmed = True
        time.sleep(0.1)
    for item in watched:
        item.sample()
    figures = [
        (item.name, item.peak_rss(), item.steady_cpu_percent(), item.cpu_at_warmup or 0.0)
        for item in watched
    ]
    outputs = [item.stop() for item in watched]
    stored = {
        "lunasentri agent": stored_samples(url, token, cli_machine, since),
        "python -m lunasentri_core.agent": stored_samples(url, token, module_machine, since),
    }

    floor = figures[0][1]
    expected = int(args.duration // args.interval)
    # The last samples may still wait in the spool for their send when the run ends.
    send_interval = args.send_interval or AgentSettings().send_interval.total_seconds()
    least = max(1, expected - math.ceil(send_interval / args.interval) - 1)
    sending = "default" if args.send_interval is None else f"{args.send_interval:g} s"
    resolution = 100 * 0.01 / (args.duration - args.warmup)
    print(
        f"agent footprint: {args.duration:g} s at a {args.interval:g} s interval "
        f"(send_interval {sending}), CPU counted after {args.warmup:g} s "
        f"in steps of {resolution:.3f} %"
    )
    print(f"{'process':34} {'peak RSS':>10} {'ratio':>6} {'CPU %core':>10} {'CPU to warmup':>14}")
    ok = True
    for (name, peak, cpu, start_cpu), output in zip(figures, outputs, strict=True):
        ratio = peak / floor
        print(f"{name:34} {mib(peak):>10} {ratio:6.2f} {cpu:10.3f} {start_cpu:13.2f}s")
        if name in stored:
            delivered = stored[name]
            good = ratio <= TARGET_RSS_RATIO and cpu <= TARGET_CPU_PERCENT and delivered >= least
            ok = ok and good
            print(
                f"  {delivered} samples stored ({least} to {expected} expected); "
                f"RSS <= {TARGET_RSS_RATIO}x floor: {verdict(ratio <= TARGET_RSS_RATIO)}; "
                f"CPU <= {TARGET_CPU_PERCENT}% of a core: {verdict(cpu <= TARGET_CPU_PERCENT)}"
            )
            if "Traceback" in output or "ERROR" in output:
                print("  agent output:\n    " + "\n    ".join(output.splitlines()[-20:]))
    libraries = next(peak for name, peak, *_ in figures if name == LIBRARIES)
    own = [peak - libraries for name, peak, *_ in figures if name in stored]
    print(
        f"the agent's libraries alone take {libraries / floor:.2f}x the floor "
        f"(target {TARGET_RSS_RATIO}x); LunaSentri's own code and data add "
        f"{mib(min(own))} to {mib(max(own))} in the agents"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
