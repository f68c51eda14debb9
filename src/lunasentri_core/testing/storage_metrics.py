"""The contract of a :class:`~lunasentri_core.storage.MetricStore`."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

import pytest

from lunasentri_core.errors import LunaSentriError, SeriesLimitError
from lunasentri_core.model import (
    Aggregation,
    HistoryQuery,
    MachineSamples,
    Reading,
    Resolution,
    RetentionPolicy,
    Sample,
    SeriesKey,
    new_id,
)
from lunasentri_core.storage.protocols import (
    Capability,
    MaintenanceReport,
    MetricStore,
    StorageBackend,
)
from lunasentri_core.testing.assertions import assert_history_equal, assert_latest_equal
from lunasentri_core.testing.builders import BASE_TIME
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.reference import (
    StoredPoint,
    points_of,
    reference_history,
    reference_latest,
)

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

LABEL_VALUES = ("/", "/home", "C:\\", "/mnt/ünï code", 'a,b=c"d', "x" * 256)
"""Label values that break naive encodings of a series key."""


def require(storage: StorageBackend, capability: Capability) -> None:
    """Skip the calling test, saying why, unless ``storage`` declares ``capability``."""
    if capability not in storage.capabilities:
        pytest.skip(f"backend lacks capability {capability.value!r}")


class _Boom(Exception):
    """Raised from inside a batch to check that a failed write stores nothing."""


class _ExplodingSample:
    """Looks like a sample until its readings are read."""

    timestamp = BASE_TIME

    @property
    def readings(self) -> tuple[Reading, ...]:
        raise _Boom("this sample fails on purpose, in the middle of a batch")


def _series_readings(rng: random.Random) -> list[Reading]:
    return [
        Reading("cpu.percent", round(rng.uniform(0, 100), 3)),
        Reading("disk.used", rng.uniform(1e9, 5e11), {"mount": "/"}),
        Reading("disk.used", rng.uniform(1e9, 5e11), {"mount": "/home"}),
    ]


def history_batch(
    machine_id: str,
    *,
    start: datetime,
    span: timedelta,
    every: timedelta,
    seed: int,
    gaps: bool = True,
) -> list[MachineSamples]:
    """Samples of three series (one plain, two labelled) with pseudo-random values.

    With ``gaps``, some samples are missing and one stretch is empty, so that
    some steps of a query have no points.
    """
    rng = random.Random(seed)
    samples = []
    count = span // every
    for index in range(count):
        if gaps and (index % 17 == 5 or count // 2 <= index < count // 2 + count // 10):
            continue
        samples.append(Sample(start + index * every, _series_readings(rng)))
    return [MachineSamples(machine_id, samples)]


class MetricStoreContract(Contract):
    """Tests of ``storage.metrics``; part of :class:`~lunasentri_core.testing.StorageContract`."""

    __test__ = False

    retention: ClassVar[RetentionPolicy] = RetentionPolicy(
        raw=timedelta(days=1), minute=timedelta(days=7), hour=None
    )
    """The retention the ``storage`` fixture must open the backend with."""

    @pytest.fixture
    def storage(self) -> StorageBackend:
        pytest.fail(
            f"{type(self).__name__} must define a 'storage' fixture: a migrated, empty backend "
            "opened with retention=self.retention (close it at teardown)",
            pytrace=False,
        )

    @pytest.fixture
    def metrics(self, storage: StorageBackend) -> MetricStore:
        return storage.metrics

    # ------------------------------------------------------------ helpers

    def load(self, metrics: MetricStore, *batches: Sequence[MachineSamples]) -> list[StoredPoint]:
        """Write ``batches`` in order; return the points the store must now hold."""
        for batch in batches:
            metrics.write(batch)
        return points_of(batches)

    # ------------------------------------------------------------ write

    def test_write_returns_the_number_of_points(self, metrics: MetricStore) -> None:
        a, b = new_id(), new_id()
        batch = [
            *history_batch(a, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=1, gaps=False),
            MachineSamples(b, [Sample(BASE_TIME, [Reading("proc.count", 42)])]),
        ]
        assert metrics.write(batch) == 6 * 3 + 1

    def test_write_empty_batches(self, metrics: MetricStore) -> None:
        machine = new_id()
        assert metrics.write([]) == 0
        assert metrics.write([MachineSamples(machine, [])]) == 0
        assert metrics.write([MachineSamples(machine, [Sample(BASE_TIME, [])])]) == 0
        assert metrics.list_series(machine) == []

    def test_rewriting_a_batch_changes_nothing(self, metrics: MetricStore) -> None:
        machine = new_id()
        batch = history_batch(machine, start=BASE_TIME, span=10 * MINUTE, every=10 * SECOND, seed=2)
        points = self.load(metrics, batch)
        metrics.write(batch)
        query = HistoryQuery(machine, "disk.used", BASE_TIME, BASE_TIME + HOUR, SECOND)
        assert_history_equal(metrics.history(query), reference_history(points, query))
        assert_latest_equal(metrics.latest([machine]), reference_latest(points, [machine]))
        assert len(metrics.list_series(machine)) == 3

    def test_first_value_wins(self, metrics: MetricStore) -> None:
        machine = new_id()
        at = BASE_TIME + 10 * SECOND
        metrics.write([MachineSamples(machine, [Sample(at, [Reading("proc.count", 1)])])])
        metrics.write(
            [
                MachineSamples(
                    machine,
                    [
                        Sample(at, [Reading("proc.count", 2)]),
                        Sample(at + 10 * SECOND, [Reading("proc.count", 3)]),
                    ],
                )
            ]
        )
        query = HistoryQuery(machine, "proc.count", BASE_TIME, BASE_TIME + MINUTE, SECOND)
        (history,) = metrics.history(query)
        assert [(p.timestamp, p.value) for p in history.points] == [
            (at, 1.0),
            (at + 10 * SECOND, 3.0),
        ]

    def test_duplicates_within_one_batch_are_stored_once(self, metrics: MetricStore) -> None:
        # The ingest writer coalesces batches, so a retried request can meet its
        # original inside one write.
        machine = new_id()
        at = BASE_TIME + 20 * SECOND
        batch = [
            MachineSamples(machine, [Sample(at, [Reading("proc.count", 5)])]),
            MachineSamples(
                machine,
                [Sample(at, [Reading("proc.count", 6)]), Sample(at, [Reading("proc.count", 7)])],
            ),
        ]
        metrics.write(batch)
        query = HistoryQuery(machine, "proc.count", BASE_TIME, BASE_TIME + MINUTE, SECOND)
        (history,) = metrics.history(query)
        assert [(p.timestamp, p.value) for p in history.points] == [(at, 5.0)]
        (latest,) = metrics.latest([machine])
        assert (latest.timestamp, latest.value) == (at, 5.0)

    def test_failed_write_stores_nothing(self, metrics: MetricStore) -> None:
        first, second = new_id(), new_id()
        good = history_batch(
            first, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=3, gaps=False
        )
        exploding = cast(Sample, _ExplodingSample())
        bad = MachineSamples(second, [Sample(BASE_TIME, [Reading("proc.count", 1)]), exploding])
        with pytest.raises((_Boom, LunaSentriError)):
            metrics.write([*good, bad])
        assert metrics.latest([first, second]) == [], "a failed write left points behind"
        assert metrics.list_series(first) == []
        assert metrics.list_series(second) == []
        # The store is still usable after the failure.
        assert metrics.write(good) == 6 * 3

    def test_series_limit_refuses_a_batch_whole(self, storage: StorageBackend) -> None:
        require(storage, Capability.SERIES_LIMIT)
        write = cast(Any, storage.metrics).write
        machine = new_id()

        def disks(at: datetime, *mounts: int) -> list[MachineSamples]:
            readings = [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in mounts]
            return [MachineSamples(machine, [Sample(at, readings)])]

        assert write(disks(BASE_TIME, 1, 2), max_series=3) == 2
        with pytest.raises(SeriesLimitError):
            write(disks(BASE_TIME + SECOND, 1, 3, 4), max_series=3)
        assert len(storage.metrics.list_series(machine)) == 2, "a refused batch added series"
        assert [v.timestamp for v in storage.metrics.latest([machine])] == [BASE_TIME] * 2
        assert write(disks(BASE_TIME + SECOND, 1, 3), max_series=3) == 2
        # At the limit, a batch of existing series is taken.
        assert write(disks(BASE_TIME + 2 * SECOND, 3, 2, 1), max_series=3) == 3

    def test_many_series_in_one_batch(self, metrics: MetricStore) -> None:
        machine = new_id()
        readings = [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in range(600)]
        assert metrics.write([MachineSamples(machine, [Sample(BASE_TIME, readings)])]) == 600
        assert len(metrics.list_series(machine)) == 600
        assert len(metrics.latest([machine])) == 600

    def test_concurrent_writes_and_reads(self, metrics: MetricStore) -> None:
        machines = [new_id() for _ in range(4)]
        batches = [
            history_batch(m, start=BASE_TIME, span=5 * MINUTE, every=10 * SECOND, seed=i)
            for i, m in enumerate(machines)
        ]
        barrier = threading.Barrier(len(machines) + 1, timeout=60)
        errors: list[BaseException] = []

        def write(batch: list[MachineSamples]) -> None:
            try:
                barrier.wait()
                for sample in batch[0].samples:
                    metrics.write([MachineSamples(batch[0].machine_id, [sample])])
            except BaseException as error:
                errors.append(error)

        def read() -> None:
            try:
                barrier.wait()
                for _ in range(20):
                    metrics.latest(machines)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(b,), daemon=True) for b in batches]
        threads.append(threading.Thread(target=read, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads), "writes from several threads hung"
        assert not errors, f"concurrent use failed: {errors[0]!r}"
        points = points_of(batches)
        assert_latest_equal(metrics.latest(machines), reference_latest(points, machines))

    # ------------------------------------------------------------ latest and series

    def test_latest_returns_the_newest_point_of_each_series(self, metrics: MetricStore) -> None:
        a, b, c = new_id(), new_id(), new_id()
        points = self.load(
            metrics,
            history_batch(a, start=BASE_TIME, span=10 * MINUTE, every=10 * SECOND, seed=4),
            history_batch(b, start=BASE_TIME, span=5 * MINUTE, every=10 * SECOND, seed=5),
            history_batch(c, start=BASE_TIME, span=5 * MINUTE, every=10 * SECOND, seed=6),
        )
        assert_latest_equal(metrics.latest([a, b]), reference_latest(points, [a, b]))
        assert_latest_equal(
            metrics.latest([a], "disk.used"), reference_latest(points, [a], "disk.used")
        )
        assert metrics.latest([a], "no.such_metric") == []
        assert metrics.latest([new_id()]) == []
        assert metrics.latest([]) == []

    def test_latest_ignores_older_points_written_later(self, metrics: MetricStore) -> None:
        machine = new_id()
        newer = BASE_TIME + MINUTE
        metrics.write([MachineSamples(machine, [Sample(newer, [Reading("proc.count", 2)])])])
        metrics.write([MachineSamples(machine, [Sample(BASE_TIME, [Reading("proc.count", 1)])])])
        (latest,) = metrics.latest([machine])
        assert (latest.timestamp, latest.value) == (newer, 2.0)

    def test_list_series(self, metrics: MetricStore) -> None:
        machine, other = new_id(), new_id()
        self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=7),
            history_batch(other, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=8),
        )
        assert set(metrics.list_series(machine)) == {
            SeriesKey(machine, "cpu.percent"),
            SeriesKey(machine, "disk.used", {"mount": "/"}),
            SeriesKey(machine, "disk.used", {"mount": "/home"}),
        }
        assert metrics.list_series(new_id()) == []

    def test_labels_round_trip(self, metrics: MetricStore) -> None:
        machine = new_id()
        readings = [
            Reading("disk.used", float(i), {"mount": value, "fs": "ext4"})
            for i, value in enumerate(LABEL_VALUES)
        ]
        metrics.write([MachineSamples(machine, [Sample(BASE_TIME, readings)])])
        expected = {SeriesKey(machine, r.metric, r.labels) for r in readings}
        assert set(metrics.list_series(machine)) == expected
        by_series = {v.series: v.value for v in metrics.latest([machine])}
        assert by_series == {SeriesKey(machine, r.metric, r.labels): r.value for r in readings}
        for reading in readings:
            query = HistoryQuery(
                machine, "disk.used", BASE_TIME, BASE_TIME + MINUTE, MINUTE, labels=reading.labels
            )
            (history,) = metrics.history(query)
            assert history.series.labels == reading.labels
            assert [p.value for p in history.points] == [reading.value]

    def test_delete_machine_removes_its_series(self, metrics: MetricStore) -> None:
        machine, other = new_id(), new_id()
        points = self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=9),
            history_batch(other, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=10),
        )
        assert metrics.delete_machine(machine) == 3
        assert metrics.list_series(machine) == []
        assert metrics.latest([machine]) == []
        query = HistoryQuery(machine, "cpu.percent", BASE_TIME, BASE_TIME + HOUR, MINUTE)
        assert metrics.history(query) == []
        assert_latest_equal(metrics.latest([other]), reference_latest(points, [other]))
        assert metrics.delete_machine(machine) == 0
        assert metrics.delete_machine(new_id()) == 0

    # ------------------------------------------------------------ history

    @pytest.mark.parametrize("aggregation", list(Aggregation))
    def test_history_matches_the_reference(
        self, metrics: MetricStore, aggregation: Aggregation
    ) -> None:
        machine, other = new_id(), new_id()
        span = 30 * MINUTE
        points = self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=span, every=10 * SECOND, seed=11),
            history_batch(other, start=BASE_TIME, span=span, every=10 * SECOND, seed=12),
        )
        for step in (SECOND, 10 * SECOND, MINUTE, 7 * MINUTE, span, DAY):
            for metric in ("cpu.percent", "disk.used"):
                query = HistoryQuery(
                    machine, metric, BASE_TIME, BASE_TIME + span, step, aggregation
                )
                assert_history_equal(
                    metrics.history(query),
                    reference_history(points, query),
                    context=f"{metric} {aggregation} step={step}",
                )

    def test_history_range_is_half_open(self, metrics: MetricStore) -> None:
        machine = new_id()
        points = self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=10 * MINUTE, every=10 * SECOND, seed=13),
        )
        # start and end fall exactly on points: the first counts, the last does not.
        start, end = BASE_TIME + 30 * SECOND, BASE_TIME + 4 * MINUTE
        for aggregation in Aggregation:
            query = HistoryQuery(machine, "cpu.percent", start, end, MINUTE, aggregation)
            assert_history_equal(
                metrics.history(query), reference_history(points, query), context=str(aggregation)
            )
        query = HistoryQuery(machine, "cpu.percent", start, end, 10 * SECOND)
        (history,) = metrics.history(query)
        assert history.points[0].timestamp == start
        assert history.points[-1].timestamp == end - 10 * SECOND

    def test_history_steps_start_at_query_start(self, metrics: MetricStore) -> None:
        machine = new_id()
        points = self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=30 * MINUTE, every=10 * SECOND, seed=14),
        )
        start = BASE_TIME + 25 * SECOND
        for step in (MINUTE, 7 * MINUTE):
            query = HistoryQuery(
                machine, "cpu.percent", start, BASE_TIME + 17 * MINUTE, step, Aggregation.LAST
            )
            assert_history_equal(
                metrics.history(query), reference_history(points, query), context=f"step={step}"
            )

    def test_history_omits_empty_steps(self, metrics: MetricStore) -> None:
        machine = new_id()
        at = [BASE_TIME, BASE_TIME + 10 * SECOND, BASE_TIME + 5 * MINUTE]
        metrics.write(
            [
                MachineSamples(
                    machine, [Sample(t, [Reading("proc.count", i)]) for i, t in enumerate(at)]
                )
            ]
        )
        query = HistoryQuery(machine, "proc.count", BASE_TIME, BASE_TIME + 10 * MINUTE, MINUTE)
        (history,) = metrics.history(query)
        assert [(p.timestamp, p.value) for p in history.points] == [
            (BASE_TIME, 0.5),
            (BASE_TIME + 5 * MINUTE, 2.0),
        ]

    def test_history_label_filter(self, metrics: MetricStore) -> None:
        machine = new_id()
        points = self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=10 * MINUTE, every=10 * SECOND, seed=15),
        )
        for labels in ({"mount": "/"}, {"mount": "/home"}, {}, {"mount": "/nope"}, {"nic": "x"}):
            query = HistoryQuery(
                machine, "disk.used", BASE_TIME, BASE_TIME + HOUR, MINUTE, labels=labels
            )
            assert_history_equal(
                metrics.history(query), reference_history(points, query), context=f"{labels}"
            )

    def test_history_selects_machine_and_metric(self, metrics: MetricStore) -> None:
        machine, other = new_id(), new_id()
        self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=16),
            history_batch(other, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=17),
        )
        for machine_id, metric in ((machine, "mem.used"), (new_id(), "cpu.percent")):
            query = HistoryQuery(machine_id, metric, BASE_TIME, BASE_TIME + HOUR, MINUTE)
            assert metrics.history(query) == []
        query = HistoryQuery(machine, "cpu.percent", BASE_TIME, BASE_TIME + HOUR, MINUTE)
        assert [h.series for h in metrics.history(query)] == [SeriesKey(machine, "cpu.percent")]

    def test_history_of_a_range_without_points_is_empty(self, metrics: MetricStore) -> None:
        machine = new_id()
        self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=MINUTE, every=10 * SECOND, seed=18),
        )
        # The first range ends exactly on the first point, which it must not include.
        for start in (BASE_TIME - MINUTE, BASE_TIME - DAY, BASE_TIME + 2 * MINUTE):
            query = HistoryQuery(machine, "cpu.percent", start, start + MINUTE, SECOND)
            assert metrics.history(query) == [], "a series with no point in range is left out"

    def test_history_of_fine_steps_is_raw(self, metrics: MetricStore) -> None:
        machine = new_id()
        self.load(
            metrics,
            history_batch(machine, start=BASE_TIME, span=10 * MINUTE, every=10 * SECOND, seed=19),
        )
        query = HistoryQuery(machine, "disk.used", BASE_TIME, BASE_TIME + 10 * MINUTE, 10 * SECOND)
        answer = metrics.history(query)
        assert answer
        assert {h.resolution for h in answer} == {Resolution.RAW}

    # ------------------------------------------------------------ maintenance

    def test_maintain_an_empty_store(self, metrics: MetricStore) -> None:
        report = metrics.maintain(BASE_TIME)
        assert isinstance(report, MaintenanceReport)

    def test_maintain_does_not_change_answers(self, metrics: MetricStore) -> None:
        machine = new_id()
        start = BASE_TIME + 20 * DAY
        points = self.load(
            metrics,
            history_batch(machine, start=start, span=3 * HOUR, every=10 * SECOND, seed=20),
        )
        queries = [
            HistoryQuery(machine, metric, query_start, start + 3 * HOUR, step, aggregation)
            for metric in ("cpu.percent", "disk.used")
            for aggregation in Aggregation
            for step in (10 * SECOND, MINUTE, 7 * MINUTE, HOUR)
            for query_start in (start, start + 13 * SECOND)
        ]
        before = [metrics.history(query) for query in queries]
        latest = metrics.latest([machine])
        series = set(metrics.list_series(machine))
        for query, answer in zip(queries, before, strict=True):
            assert_history_equal(answer, reference_history(points, query), context="before")
        now = start + 5 * HOUR
        assert isinstance(metrics.maintain(now), MaintenanceReport)
        metrics.maintain(now)
        for query, answer in zip(queries, before, strict=True):
            context = f"after maintain: {query.metric} {query.aggregation} step={query.step}"
            assert_history_equal(metrics.history(query), answer, context=context)
        assert_latest_equal(metrics.latest([machine]), latest)
        assert set(metrics.list_series(machine)) == series

    # ------------------------------------------------------------ rollups and retention

    @pytest.mark.parametrize("step", [HOUR, 15 * MINUTE], ids=["1h", "15m"])
    def test_rollups_answer_long_ranges(
        self, storage: StorageBackend, metrics: MetricStore, step: timedelta
    ) -> None:
        require(storage, Capability.ROLLUPS)
        machine = new_id()
        start = BASE_TIME + 40 * DAY
        points = self.load(
            metrics,
            history_batch(machine, start=start, span=2 * DAY, every=MINUTE, seed=21, gaps=False),
        )
        # Three hours after the data, every hour is complete; with the contract's
        # retention the first day's raw points have expired.
        metrics.maintain(start + 2 * DAY + 3 * HOUR)
        for aggregation in Aggregation:
            for metric in ("cpu.percent", "disk.used"):
                query = HistoryQuery(machine, metric, start, start + 2 * DAY, step, aggregation)
                answer = metrics.history(query)
                context = f"{metric} {aggregation} step={step}"
                assert_history_equal(answer, reference_history(points, query), context=context)
                resolutions = {h.resolution for h in answer}
                assert resolutions <= {Resolution.MINUTE, Resolution.HOUR}, (
                    f"{context}: a two-day range was answered at {sorted(resolutions)}, "
                    "not from rollups"
                )

    def test_retention_expires_raw_points(
        self, storage: StorageBackend, metrics: MetricStore
    ) -> None:
        require(storage, Capability.RETENTION)
        raw_kept = self.retention.raw
        assert raw_kept is not None, "the contract's retention must keep raw points for a while"
        machine = new_id()
        now = BASE_TIME + 60 * DAY
        old_start, recent_start = now - raw_kept - 2 * DAY, now - HOUR
        span = 10 * MINUTE
        points = self.load(
            metrics,
            history_batch(machine, start=old_start, span=span, every=10 * SECOND, seed=22),
            history_batch(machine, start=recent_start, span=span, every=10 * SECOND, seed=23),
        )
        report = metrics.maintain(now)
        assert report.expired_rows > 0, "maintain() reported no expired rows"
        old = HistoryQuery(machine, "cpu.percent", old_start, old_start + span, 10 * SECOND)
        raw_answers = [h for h in metrics.history(old) if h.resolution is Resolution.RAW]
        assert raw_answers == [], "raw points older than the raw retention are still served"
        recent = HistoryQuery(machine, "disk.used", recent_start, now, 10 * SECOND)
        assert_history_equal(metrics.history(recent), reference_history(points, recent))
        assert_latest_equal(metrics.latest([machine]), reference_latest(points, [machine]))

    def test_rollups_outlive_expired_resolutions(
        self, storage: StorageBackend, metrics: MetricStore
    ) -> None:
        require(storage, Capability.ROLLUPS)
        require(storage, Capability.RETENTION)
        minute_kept = self.retention.minute
        assert minute_kept is not None, "this test expects minute rollups to expire"
        assert self.retention.hour is None, "this test expects hourly rollups to be kept"
        machine = new_id()
        now = BASE_TIME + 90 * DAY
        start = now - minute_kept - 3 * DAY
        points = self.load(
            metrics,
            history_batch(machine, start=start, span=6 * HOUR, every=MINUTE, seed=24, gaps=False),
        )
        # One pass sees the points for the first time: it must roll them up
        # before it expires them.
        metrics.maintain(now)
        fine = HistoryQuery(machine, "cpu.percent", start, start + 6 * HOUR, MINUTE)
        served = {h.resolution for h in metrics.history(fine)}
        assert served <= {Resolution.HOUR}, f"expired resolutions still served: {sorted(served)}"
        for aggregation in Aggregation:
            query = HistoryQuery(machine, "cpu.percent", start, start + 6 * HOUR, HOUR, aggregation)
            answer = metrics.history(query)
            assert_history_equal(answer, reference_history(points, query), context=str(aggregation))
            assert {h.resolution for h in answer} == {Resolution.HOUR}
