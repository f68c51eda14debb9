"""The collector against the real psutil of this machine."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable

import psutil
import pytest

from lunasentri_core import Collector, ConfigError, Labels, Reading, Target
from lunasentri_psutil import PsutilCollector, PsutilSettings

KNOWN_METRICS = {
    "cpu.percent",
    "mem.total",
    "mem.used",
    "mem.available",
    "swap.total",
    "swap.used",
    "disk.total",
    "disk.used",
    "net.rx_bytes",
    "net.tx_bytes",
    "net.rx_rate",
    "net.tx_rate",
    "proc.count",
    "load.1",
    "load.5",
    "load.15",
}
RATES = ("net.rx_rate", "net.tx_rate")


def values(readings: Iterable[Reading], metric: str) -> dict[Labels, float]:
    return {r.labels: r.value for r in readings if r.metric == metric}


def single(readings: Iterable[Reading], metric: str) -> float:
    found = values(readings, metric)
    assert list(found) == [()], f"{metric}: expected one unlabelled reading, got {found}"
    return found[()]


def let_cpu_clock_tick() -> None:
    # CPU times advance in clock ticks (10 ms on Linux); wait for a few.
    time.sleep(0.05)


def loopback_traffic(size: int = 256 * 1024) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"x" * size)
                received = 0
                while received < size:
                    received += len(peer.recv(65536))


@pytest.fixture
def target() -> Target:
    return Target(machine_id="local")


def test_is_a_collector() -> None:
    collector = PsutilCollector()
    assert isinstance(collector, Collector)
    assert PsutilCollector.name == "psutil"
    assert PsutilCollector.settings_class is PsutilSettings


def test_every_metric_is_known_and_no_series_repeats(target: Target) -> None:
    collector = PsutilCollector(PsutilSettings(per_cpu=True, skip_nics=()))
    let_cpu_clock_tick()
    collector.collect(target)
    let_cpu_clock_tick()
    readings = collector.collect(target)
    assert {r.metric for r in readings} <= KNOWN_METRICS
    keys = [(r.metric, r.labels) for r in readings]
    assert len(keys) == len(set(keys))


def test_memory_and_swap_are_plausible(target: Target) -> None:
    readings = PsutilCollector().collect(target)
    total = single(readings, "mem.total")
    assert total == psutil.virtual_memory().total
    assert 0 < single(readings, "mem.used") <= total
    assert 0 < single(readings, "mem.available") <= total
    assert 0 <= single(readings, "swap.used") <= single(readings, "swap.total")


def test_cpu_percent_is_a_percentage_from_the_first_collection(target: Target) -> None:
    collector = PsutilCollector()
    let_cpu_clock_tick()
    assert 0 <= single(collector.collect(target), "cpu.percent") <= 100


def test_per_cpu_percent_is_labelled_by_cpu(target: Target) -> None:
    collector = PsutilCollector(PsutilSettings(per_cpu=True))
    let_cpu_clock_tick()
    per_cpu = values(collector.collect(target), "cpu.percent")
    labels = {dict(key).get("cpu") for key in per_cpu}
    assert labels == {None} | {str(i) for i in range(len(psutil.cpu_times(percpu=True)))}
    assert all(0 <= value <= 100 for value in per_cpu.values())


def test_no_per_cpu_percent_by_default(target: Target) -> None:
    collector = PsutilCollector()
    let_cpu_clock_tick()
    assert list(values(collector.collect(target), "cpu.percent")) == [()]


@pytest.mark.skipif(os.name != "posix", reason="'/' is a POSIX mount point")
def test_root_filesystem_is_measured(target: Target) -> None:
    readings = PsutilCollector().collect(target)
    totals = values(readings, "disk.total")
    used = values(readings, "disk.used")
    root = (("mount", "/"),)
    assert root in totals
    assert totals.keys() == used.keys()
    assert all(0 <= used[key] <= totals[key] for key in totals)
    assert totals[root] == psutil.disk_usage("/").total


def test_pseudo_filesystems_are_skipped_by_default(target: Target) -> None:
    mounts = {dict(key)["mount"] for key in values(PsutilCollector().collect(target), "disk.total")}
    pseudo = {p.mountpoint for p in psutil.disk_partitions(all=True)} & {
        "/proc",
        "/sys",
        "/dev",
        "/dev/shm",
        "/sys/fs/cgroup",
    }
    assert not mounts & pseudo


def test_counters_every_time_and_rates_from_the_second_collection(target: Target) -> None:
    collector = PsutilCollector(PsutilSettings(skip_nics=()))
    first = collector.collect(target)
    nics = set(values(first, "net.rx_bytes"))
    assert nics == {(("nic", name),) for name in psutil.net_io_counters(pernic=True)}
    assert values(first, "net.tx_bytes").keys() == nics
    assert not values(first, "net.rx_rate")
    assert not values(first, "net.tx_rate")

    loopback_traffic()
    second = collector.collect(target)
    for metric in RATES:
        rates = values(second, metric)
        assert rates.keys() == nics
        assert all(rate >= 0 for rate in rates.values())
    if (("nic", "lo"),) in nics:
        assert values(second, "net.rx_rate")[(("nic", "lo"),)] > 0


def test_rates_are_kept_per_target() -> None:
    collector = PsutilCollector()
    collector.collect(Target(machine_id="a"))
    collector.collect(Target(machine_id="a"))
    first_of_b = collector.collect(Target(machine_id="b"))
    assert not [r for r in first_of_b if r.metric in RATES]


def test_process_count_and_load(target: Target) -> None:
    readings = PsutilCollector().collect(target)
    assert single(readings, "proc.count") >= 1
    if hasattr(os, "getloadavg"):
        for metric in ("load.1", "load.5", "load.15"):
            assert single(readings, metric) >= 0
    else:
        assert not values(readings, "load.1")


@pytest.mark.parametrize("host", ["db1.example.com", "127.0.0.1", ""])
def test_a_remote_target_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="only the machine it runs on") as caught:
        PsutilCollector().collect(Target(machine_id="db1", host=host))
    assert repr(host) in str(caught.value)
    assert "'db1'" in str(caught.value)


def test_concurrent_collections_never_fail_or_go_negative() -> None:
    collector = PsutilCollector(PsutilSettings(per_cpu=True, skip_nics=()))
    errors: list[BaseException] = []
    results: list[list[Reading]] = []
    lock = threading.Lock()

    def work(machine_id: str) -> None:
        try:
            for _ in range(10):
                readings = collector.collect(Target(machine_id=machine_id))
                with lock:
                    results.append(readings)
        except BaseException as error:  # collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"m{i % 2}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 40
    for readings in results:
        for reading in readings:
            if reading.metric in RATES:
                assert reading.value >= 0
            if reading.metric == "cpu.percent":
                assert 0 <= reading.value <= 100
