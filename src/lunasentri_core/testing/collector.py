"""The contract every collector passes."""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Sequence
from typing import ClassVar, cast

import anyio
import attrs
import pytest

from lunasentri_core.codec import decode_json, encode_json
from lunasentri_core.components import Collector
from lunasentri_core.model import LABEL_NAME, METRIC_NAME, Reading, Sample, Target, utcnow
from lunasentri_core.plugins import ComponentKind, create_plugin_manager
from lunasentri_core.testing.aio import is_async, resolve
from lunasentri_core.testing.builders import make_target
from lunasentri_core.testing.contract import Contract, check_name, check_settings_class
from lunasentri_core.testing.recorder import make_plugin

_THREAD_TIMEOUT = 60.0
"""Seconds two concurrent collections may take before the test gives up on them."""


def check_readings(result: object, who: str) -> list[Reading]:
    """Assert ``result`` is a sequence of valid readings with unique series; return them."""
    assert isinstance(result, Sequence), (
        f"{who}.collect() must return a sequence (list or tuple) of Reading, "
        f"not {type(result).__name__}"
    )
    readings = list(result)
    for index, reading in enumerate(readings):
        assert isinstance(reading, Reading), (
            f"{who}.collect()[{index}] is a {type(reading).__name__}, not a Reading"
        )
        assert METRIC_NAME.match(reading.metric), f"metric name {reading.metric!r} is invalid"
        for name, _ in reading.labels:
            assert LABEL_NAME.match(name), f"{reading.metric}: label name {name!r} is invalid"
        assert isinstance(reading.value, float), f"{reading.metric}: value is not a float"
        assert math.isfinite(reading.value), (
            f"{reading.metric}{dict(reading.labels)} has a non-finite value {reading.value!r}"
        )
    series = [(r.metric, r.labels) for r in readings]
    duplicates = sorted({s for s in series if series.count(s) > 1})
    assert not duplicates, (
        f"{who}.collect() returned these series more than once (one value would be lost): "
        + ", ".join(f"{metric}{dict(labels)}" for metric, labels in duplicates)
    )
    return readings


class CollectorContract(Contract):
    """Tests every collector must pass.

    Subclass it in a test module (``class TestMyCollector(CollectorContract)``) and
    provide a ``collector`` fixture returning the instance to test, set up so that
    it measures something. Override ``target`` when the collector needs a
    particular target (e.g. a host and port of a loopback test server).
    """

    __test__ = False

    expect_readings: ClassVar[bool] = True
    """Whether one collection of ``target`` must return at least one reading."""

    @pytest.fixture
    def collector(self) -> Collector:
        pytest.fail(
            f"{type(self).__name__} must define a 'collector' fixture returning the collector "
            "instance to test",
            pytrace=False,
        )

    @pytest.fixture
    def target(self) -> Target:
        """The local machine; override for remote collectors."""
        return make_target()

    # ------------------------------------------------------------ helpers

    def collect(self, collector: Collector, target: Target) -> list[Reading]:
        """One collection, awaited if ``collect`` is a coroutine function, checked."""
        result = resolve(collector.collect(target), backend=self.async_backend)
        return check_readings(result, type(collector).__name__)

    # ------------------------------------------------------------ identity and settings

    def test_has_a_name(self, collector: Collector) -> None:
        check_name(type(collector), "collector")

    def test_implements_the_collector_protocol(self, collector: Collector) -> None:
        assert isinstance(collector, Collector), (
            f"{type(collector).__name__} lacks 'name', 'settings_class' or 'collect'"
        )

    def test_settings_class_has_defaults(self, collector: Collector) -> None:
        check_settings_class(type(collector), "collector")

    # ------------------------------------------------------------ collecting

    def test_collect_returns_readings(self, collector: Collector, target: Target) -> None:
        readings = self.collect(collector, target)
        if self.expect_readings:
            assert readings, (
                "collect() returned no readings; configure the 'collector' fixture so it "
                "measures something, or set expect_readings = False"
            )

    def test_collect_repeatedly(self, collector: Collector, target: Target) -> None:
        for _ in range(3):
            self.collect(collector, target)

    def test_readings_round_trip_through_the_codec(
        self, collector: Collector, target: Target
    ) -> None:
        sample = Sample(utcnow(), self.collect(collector, target))
        decoded = decode_json(encode_json(sample), Sample, what="encoded sample")
        assert decoded.timestamp == sample.timestamp
        assert sorted(decoded.readings, key=_reading_order) == sorted(
            sample.readings, key=_reading_order
        )

    def test_collect_concurrently(self, collector: Collector, target: Target) -> None:
        """Collections of two targets at once (in threads, or tasks for coroutine methods)."""
        # Another machine id, so that per-target state (rates) does not collide.
        targets = (target, attrs.evolve(target, machine_id=f"{target.machine_id}-2"))
        if is_async(collector.collect):
            results = anyio.run(
                self._collect_in_tasks, collector, targets, backend=self.async_backend
            )
        else:
            results = self._collect_in_threads(collector, targets)
        for result in results:
            check_readings(result, type(collector).__name__)

    def _collect_in_threads(
        self, collector: Collector, targets: tuple[Target, Target]
    ) -> list[object]:
        barrier = threading.Barrier(2, timeout=_THREAD_TIMEOUT)
        results: list[object] = [None, None]
        errors: list[BaseException] = []

        def run(index: int) -> None:
            try:
                barrier.wait()
                result = collector.collect(targets[index])
                results[index] = resolve(result, backend=self.async_backend)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(_THREAD_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "collect() did not return (deadlock?)"
        if errors:
            raise AssertionError(f"collect() failed when called from two threads: {errors[0]!r}")
        return results

    @staticmethod
    async def _collect_in_tasks(
        collector: Collector, targets: tuple[Target, Target]
    ) -> list[object]:
        results: list[object] = [None, None]

        async def run(index: int) -> None:
            results[index] = await cast(Awaitable[object], collector.collect(targets[index]))

        async with anyio.create_task_group() as group:
            group.start_soon(run, 0)
            group.start_soon(run, 1)
        return results

    # ------------------------------------------------------------ registration

    def test_registers_through_a_hook(self, collector: Collector) -> None:
        cls = type(collector)
        plugin = make_plugin(lunasentri_register_collectors=lambda: [cls])
        manager = create_plugin_manager(entry_points=False, plugins={"contract-plugin": plugin})
        assert not manager.failures, f"registration failed: {[str(f) for f in manager.failures]}"
        assert manager.collectors() == {cls.name: cls}
        created = manager.component(ComponentKind.COLLECTOR, cls.name).create()
        assert isinstance(created, cls), (
            "the plugin manager could not build it with default settings"
        )


def _reading_order(reading: Reading) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (reading.metric, reading.labels)
