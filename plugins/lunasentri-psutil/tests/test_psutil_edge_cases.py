"""What real machines rarely show on demand, with small fakes in place of psutil calls."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Iterator

import psutil
import pytest

from lunasentri_core import Labels, Reading, Target
from lunasentri_psutil import PsutilCollector, PsutilSettings
from lunasentri_psutil.deltas import CpuTimesLayout, counter_rate

TARGET = Target(machine_id="local")

NetIO = namedtuple("NetIO", "bytes_sent bytes_recv")
Partition = namedtuple("Partition", "device mountpoint fstype opts")
Usage = namedtuple("Usage", "total used free percent")
LinuxTimes = namedtuple(
    "LinuxTimes",
    "user nice system idle iowait irq softirq steal guest guest_nice",
)


def values(readings: Iterable[Reading], metric: str) -> dict[Labels, float]:
    return {r.labels: r.value for r in readings if r.metric == metric}


def eth0(metric: str, readings: Iterable[Reading]) -> float | None:
    return values(readings, metric).get((("nic", "eth0"),))


class FakeNet:
    """Returns the given counters, one set per call."""

    def __init__(self, *snapshots: dict[str, tuple[int, int]]) -> None:
        self._snapshots: Iterator[dict[str, tuple[int, int]]] = iter(snapshots)

    def __call__(self, pernic: bool = False) -> dict[str, NetIO]:
        assert pernic
        return {
            nic: NetIO(bytes_recv=rx, bytes_sent=tx)
            for nic, (rx, tx) in next(self._snapshots).items()
        }


def test_a_counter_that_goes_backwards_gives_no_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNet(
        {"eth0": (1_000, 1_000)},
        {"eth0": (500, 3_000)},  # rx reset (interface re-created), tx still counting
        {"eth0": (900, 4_000)},
    )
    monkeypatch.setattr(psutil, "net_io_counters", fake)
    collector = PsutilCollector(PsutilSettings(skip_nics=()))

    first = collector.collect(TARGET)
    assert eth0("net.rx_rate", first) is None
    second = collector.collect(TARGET)
    assert eth0("net.rx_bytes", second) == 500
    assert eth0("net.rx_rate", second) is None
    tx_rate = eth0("net.tx_rate", second)
    assert tx_rate is not None
    assert tx_rate > 0
    # The reset counter is the new base: the next collection has a rate again.
    third = collector.collect(TARGET)
    rx_rate = eth0("net.rx_rate", third)
    assert rx_rate is not None
    assert rx_rate > 0


def test_an_interface_that_appears_has_its_rate_from_the_next_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNet(
        {"eth0": (1, 1)}, {"eth0": (2, 2), "wg0": (5, 5)}, {"eth0": (3, 3), "wg0": (9, 9)}
    )
    monkeypatch.setattr(psutil, "net_io_counters", fake)
    collector = PsutilCollector()
    collector.collect(TARGET)
    second = collector.collect(TARGET)
    assert set(values(second, "net.rx_rate")) == {(("nic", "eth0"),)}
    third = collector.collect(TARGET)
    assert set(values(third, "net.rx_rate")) == {(("nic", "eth0"),), (("nic", "wg0"),)}


@pytest.mark.parametrize("error", [PermissionError, FileNotFoundError, OSError])
def test_a_disk_that_vanishes_or_is_unreadable_is_skipped(
    monkeypatch: pytest.MonkeyPatch, error: type[OSError]
) -> None:
    partitions = [
        Partition("/dev/sda1", "/", "ext4", "rw"),
        Partition("/dev/sdb1", "/gone", "ext4", "rw"),
        Partition("/dev/sdc1", "/data", "xfs", "rw"),
    ]

    def usage(path: str) -> Usage:
        if path == "/gone":
            raise error(13, "cannot stat", path)
        return Usage(100, 40, 60, 40.0)

    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: partitions)
    monkeypatch.setattr(psutil, "disk_usage", usage)
    readings = PsutilCollector().collect(TARGET)
    assert set(values(readings, "disk.total")) == {(("mount", "/"),), (("mount", "/data"),)}
    assert set(values(readings, "disk.used")) == {(("mount", "/"),), (("mount", "/data"),)}
    assert values(readings, "mem.total")


def test_mounts_are_deduplicated_and_driveless_entries_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    partitions = [
        Partition("/dev/sda1", "/", "ext4", "rw"),
        Partition("tmpfs", "/dev/shm", "tmpfs", "rw"),
        Partition("/dev/sda1", "/", "ext4", "rw"),  # stacked mount on the same point
        Partition("D:\\", "D:\\", "", "cdrom"),  # a drive without a medium
        Partition("/dev/sdb1", "/" + "x" * 300, "ext4", "rw"),  # too long for a label
        Partition("/dev/sdc1", "/var/lib/docker/overlay2/abc/merged", "ext4", "rw"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: partitions)
    monkeypatch.setattr(psutil, "disk_usage", lambda path: Usage(100, 40, 60, 40.0))
    collector = PsutilCollector()
    assert collector.mounts() == ["/"]
    assert list(values(collector.collect(TARGET), "disk.total")) == [(("mount", "/"),)]


def test_no_cpu_percent_without_a_clock_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    times = [LinuxTimes(100, 0, 50, 1000, 10, 0, 0, 0, 0, 0)]
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: times[0])
    collector = PsutilCollector()
    assert not values(collector.collect(TARGET), "cpu.percent")
    # Still the construction-time base: the next collection covers both intervals.
    times[0] = LinuxTimes(130, 0, 60, 1060, 10, 0, 0, 0, 0, 0)
    assert values(collector.collect(TARGET), "cpu.percent") == {(): pytest.approx(40.0)}


def test_a_cpu_going_offline_drops_per_cpu_percent_that_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def snapshot(step: int, cpus: int) -> list[LinuxTimes]:
        return [LinuxTimes(step, 0, 0, step, 0, 0, 0, 0, 0, 0) for _ in range(cpus)]

    calls = iter([snapshot(1, 4), snapshot(2, 3), snapshot(3, 3)])
    total = iter([LinuxTimes(n, 0, 0, n, 0, 0, 0, 0, 0, 0) for n in (1, 1, 2, 3)])

    def cpu_times(percpu: bool = False) -> object:
        return next(calls) if percpu else next(total)

    monkeypatch.setattr(psutil, "cpu_times", cpu_times)
    collector = PsutilCollector(PsutilSettings(per_cpu=True))
    assert list(values(collector.collect(TARGET), "cpu.percent")) == [()]
    third = values(collector.collect(TARGET), "cpu.percent")
    assert set(third) == {(), (("cpu", "0"),), (("cpu", "1"),), (("cpu", "2"),)}
    assert all(value == pytest.approx(50.0) for value in third.values())


# ----------------------------------------------------------------- the arithmetic


def test_busy_percent_counts_iowait_as_idle_and_guest_not_twice() -> None:
    layout = CpuTimesLayout(LinuxTimes._fields)
    before = LinuxTimes(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    # 30 user (of which 20 guest), 10 system, 40 idle, 20 iowait: 40 busy of 100.
    after = LinuxTimes(30, 0, 10, 40, 20, 0, 0, 0, 20, 0)
    assert layout.busy_percent(before, after) == pytest.approx(40.0)


def test_busy_percent_on_other_layouts() -> None:
    windows = namedtuple("windows", "user system idle interrupt dpc")
    layout = CpuTimesLayout(windows._fields)
    assert layout.busy_percent(windows(0, 0, 0, 0, 0), windows(10, 10, 75, 5, 0)) == 25.0


def test_busy_percent_ignores_fields_that_went_backwards() -> None:
    layout = CpuTimesLayout(LinuxTimes._fields)
    before = LinuxTimes(10, 0, 0, 100, 50, 0, 0, 0, 0, 0)
    after = LinuxTimes(20, 0, 0, 110, 40, 0, 0, 0, 0, 0)  # iowait decreased
    assert layout.busy_percent(before, after) == pytest.approx(50.0)


def test_busy_percent_is_none_when_no_time_passed() -> None:
    layout = CpuTimesLayout(LinuxTimes._fields)
    same = LinuxTimes(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert layout.busy_percent(same, same) is None


@pytest.mark.parametrize(
    ("before", "after", "seconds", "rate"),
    [
        (100, 600, 5.0, 100.0),
        (100, 100, 5.0, 0.0),
        (600, 100, 5.0, None),
        (100, 600, 0.0, None),
    ],
)
def test_counter_rate(before: int, after: int, seconds: float, rate: float | None) -> None:
    assert counter_rate(before, after, seconds) == rate
