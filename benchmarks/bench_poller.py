"""Benchmark: the agentless poller keeping 10,000 monitors on schedule.

``--monitors`` monitors (each its own device and machine, in a SQLite file) are
due every ``--interval`` seconds, spread over the interval by
:func:`~lunasentri_core.services.scheduling.first_due` as the monitor service
spreads new ones. A WS-Management test server
(:class:`~lunasentri_core.testing.WsmanServer`) runs in its own process and
answers every request after ``--delay`` seconds (200 ms: a remote site). Each
poll is one WS-Management Identify over pywinrm's transport, in a worker
thread, with the credential decrypted by the hub: a light stand-in for the
WinRM and WMI collectors, whose scripts and queries cost the same round trip
plus parsing. Every device points at the one server (the test server listens
on one address). The hub runs with its default ``[agentless]`` settings (64
workers, 1 s tick) for ``--window`` seconds: three intervals by default, not
an hour.

Reported:

* the share of polls started within 1 s of their due time (target >= 95 %);
* the hub's CPU per poll (this process: scheduler, pywinrm, SQLite, writer;
  the test server runs elsewhere), against the limit measured in the same run:
  the CPU of the same Identify call made alone from 64 threads, with no poller;
* memory: the process's peak RSS, and its growth over the window.

    python benchmarks/bench_poller.py [--monitors 10000] [--interval 60]
        [--window 180] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import _common as c
import anyio
from winrm.transport import Transport

from lunasentri_core import Reading, Sentri, Settings, Target, hookimpl
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    Machine,
    MachineKind,
    Monitor,
    Role,
    User,
    new_id,
)
from lunasentri_core.remote import Transport as Auth
from lunasentri_core.server.serve import SWITCH_INTERVAL
from lunasentri_core.services.scheduling import first_due

TARGET_ON_TIME = 0.95
WORKERS = 64
USER, PASSWORD = "bench", "bench-password"
IDENTIFY = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
    "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
)


# ------------------------------------------------------------------ the test server


def serve(delay: float, ready: Any, stop: Any) -> None:
    from lunasentri_core.testing import WsmanServer

    with WsmanServer({USER: PASSWORD}) as server:
        server.set_delay(delay)
        ready.send(server.url)
        stop.wait()


# ------------------------------------------------------------------ the light collector


class IdentifyCollector:
    """One WS-Management Identify per poll, over pywinrm's transport (blocking).

    Each worker thread keeps its own transport (a keep-alive connection), as a
    collector keeping a session per host would. Every target goes to ``URL``.
    """

    name = "bench_identify"
    settings_class = None
    url: ClassVar[str] = ""
    _local = threading.local()

    def collect(self, target: Target) -> list[Reading]:
        credential = target.credential
        if credential is None or credential.password != PASSWORD:
            raise RuntimeError("the credential was not decrypted for the poll")
        answer = identify(self.url, credential.username or "", credential.password)
        return [Reading("wsman.identify_bytes", len(answer))]


def identify(url: str, username: str, password: str) -> bytes:
    transport = getattr(IdentifyCollector._local, "transport", None)
    if transport is None:
        transport = Transport(
            url, username=username, password=password, auth_method="basic", read_timeout_sec=30
        )
        IdentifyCollector._local.transport = transport
    answer: bytes = transport.send_message(IDENTIFY)
    if b"IdentifyResponse" not in answer:
        raise RuntimeError("not an Identify response")
    return answer


class BenchPlugin:
    @hookimpl
    def lunasentri_register_collectors(self) -> list[type]:
        return [IdentifyCollector]


def bare_cpu_per_call(url: str, calls: int) -> float:
    """CPU seconds of one Identify made from 64 threads, with nothing else running."""

    def one(_: int) -> None:
        identify(url, USER, PASSWORD)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(WORKERS)))  # connect every thread's transport first
        started = time.process_time()
        list(pool.map(one, range(calls)))
        return (time.process_time() - started) / calls


# ------------------------------------------------------------------ the fleet


def load_fleet(hub: Sentri, count: int, interval: timedelta, start: datetime) -> None:
    """One user, one credential profile, and ``count`` devices with a monitor each."""
    state = hub.storage.state
    user = state.add_user(User(id=new_id(), username="bench", role=Role.ADMIN), "x")
    profile = CredentialProfile(
        id=new_id(),
        owner_id=user.id,
        name="bench",
        transport=Auth.BASIC,
        username=USER,
        https=False,
    )
    profile = state.add_credential_profile(hub.credentials.seal(profile, PASSWORD))
    devices = state.upsert_devices(
        [
            Device(
                id=new_id(), owner_id=user.id, address=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
            )
            for i in range(count)
        ]
    )
    for device in devices:
        machine = Machine(
            id=new_id(),
            name=f"host-{device.address}",
            owner_id=user.id,
            kind=MachineKind.AGENTLESS,
            hostname=device.address,
        )
        monitor = Monitor(
            id=new_id(),
            owner_id=user.id,
            device_id=device.id,
            credential_profile_id=profile.id,
            collector="bench_identify",
            machine_id=machine.id,
            interval=interval,
            due_at=first_due(start, interval),
        )
        state.add_monitor(monitor, machine)


class ShiftedClock:
    """Real time, moved back so that polling starts at the fleet's ``start``."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) - self.offset


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def measure(data_dir: Path, url: str, args: argparse.Namespace) -> None:
    IdentifyCollector.url = url
    interval = timedelta(seconds=args.interval)
    start = datetime.now(UTC).replace(microsecond=0)
    base = {"data_dir": data_dir, "heartbeat_interval": "1d"}

    loading = Settings.load(environ={}, agentless={"enabled": False}, **base)
    began = time.perf_counter()
    async with Sentri(loading, plugins={"bench": BenchPlugin()}) as hub:
        await anyio.to_thread.run_sync(load_fleet, hub, args.monitors, interval, start)
    print(f"loaded {args.monitors:,} monitors in {time.perf_counter() - began:.1f} s")

    clock = ShiftedClock()
    settings = Settings.load(environ={}, **base)
    rounds = max(1, round(args.window / args.interval))
    async with Sentri(settings, plugins={"bench": BenchPlugin()}, clock=clock) as hub:
        clock.offset = datetime.now(UTC) - start  # polling starts at the fleet's start
        rss = [rss_mb()]
        cpu = [time.process_time()]
        busy: list[list[int]] = [[] for _ in range(rounds)]
        late: list[list[float]] = [[] for _ in range(rounds)]
        count_start = hub.poller._count_start

        def noting_start(monitor: Monitor) -> None:  # every start's lateness, by round
            index = int((monitor.due_at - start) / interval)
            if index < rounds:
                late[index].append((clock() - monitor.due_at).total_seconds())
            count_start(monitor)

        hub.poller._count_start = noting_start  # type: ignore[method-assign]
        for index in range(rounds):
            with anyio.move_on_after((start + interval * (index + 1) - clock()).total_seconds()):
                while True:  # how many workers are busy, ten times a second
                    await anyio.sleep(0.1)
                    busy[index].append(hub.poller.stats.collecting)
            cpu.append(time.process_time())
            rss.append(rss_mb())
        # Polls due in the last round but started after it are not waited for.
        stats = hub.poller.stats

    print(f"polls started {stats.started:,}, failed {stats.failed:,}")
    for index in range(rounds):
        report_round(index, late[index], busy[index], cpu[index + 1] - cpu[index], args)
    steady = [value for values in late[1:] for value in values] or late[0]
    on_time = sum(1 for value in steady if value <= 1.0) / max(1, len(steady))
    what = "after the first round" if rounds > 1 else "in the window"
    print(
        f"started within 1 s of due {what}: {on_time:.1%} of {len(steady):,}; "
        f"target >= {TARGET_ON_TIME:.0%}: "
        f"{c.verdict(on_time >= TARGET_ON_TIME and len(steady) >= 0.95 * args.monitors)}"
    )
    polls = sum(len(values) for values in late[1:]) or len(late[0])
    per_poll = (cpu[-1] - cpu[1 if rounds > 1 else 0]) / max(1, polls)
    print(
        f"CPU per poll {what} {per_poll * 1000:.2f} ms; the Identify call alone "
        f"{args.bare * 1000:.2f} ms; ratio {per_poll / args.bare:.1f}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"memory: peak RSS {peak:.0f} MiB; RSS at the start of each round and the end: "
        + ", ".join(f"{value:.0f}" for value in rss)
        + " MiB"
    )


def report_round(
    index: int, lateness: list[float], busy: list[int], cpu: float, args: argparse.Namespace
) -> None:
    lateness = sorted(lateness)
    if not lateness:
        print(f"round {index + 1}: no polls")
        return
    p50, p95, p99 = (
        lateness[min(len(lateness) - 1, int(len(lateness) * q))] for q in (0.5, 0.95, 0.99)
    )
    on_time = sum(1 for value in lateness if value <= 1.0) / len(lateness)
    print(
        f"round {index + 1} ({'new series' if index == 0 else 'steady'}): "
        f"{len(lateness):,} polls of {args.monitors:,}, {on_time:.1%} within 1 s of due; "
        f"lateness p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s, max {lateness[-1]:.2f} s; "
        f"workers busy {sum(busy) / max(1, len(busy)):.1f} of {WORKERS} on average; "
        f"CPU {cpu / len(lateness) * 1000:.2f} ms a poll"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitors", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=180.0)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    for line in c.environment():
        print(line)
    print(
        f"{args.monitors:,} monitors every {args.interval:g} s, {args.delay * 1000:g} ms "
        f"per answer, for {args.window:g} s"
    )
    # The interpreter as `lunasentri serve` sets it up for the hub it runs.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    stop = context.Event()
    server = context.Process(target=serve, args=(args.delay, send, stop), daemon=True)
    server.start()
    try:
        url = receive.recv()
        args.bare = bare_cpu_per_call(url, 2_000)
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(measure, Path(tmp), url, args)
    finally:
        stop.set()
        server.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
