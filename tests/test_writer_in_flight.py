"""The ingest writer with two write transactions in flight (a store that takes them)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest

from lunasentri_core import MachineSamples, Reading, Sample
from lunasentri_core.errors import StorageUnavailable
from lunasentri_core.services.writer import BatchWriter

NOW = datetime(2026, 12, 7, tzinfo=UTC)


class _Metrics:
    """Writes that wait, per machine id, until the test lets them go."""

    writes_last_seen = False

    def __init__(self, in_flight: int) -> None:
        self.write_transactions = in_flight
        self.gates: dict[str, threading.Event] = {}
        self.failures: dict[str, BaseException] = {}
        self.started: list[list[str]] = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def write(self, batch: Sequence[MachineSamples], **_: Any) -> int:
        ids = [ms.machine_id for ms in batch]
        with self._lock:
            self.started.append(ids)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            for machine_id in ids:
                gate = self.gates.get(machine_id)
                if gate is not None:
                    assert gate.wait(10), f"{machine_id} was never let go"
                if machine_id in self.failures:
                    raise self.failures[machine_id]
            return sum(len(s.readings) for ms in batch for s in ms.samples)
        finally:
            with self._lock:
                self.running -= 1


class _State:
    def touch_machines(self, seen: object) -> None:
        pass


class _Storage:
    name = "fake"
    capabilities = frozenset()

    def __init__(self, in_flight: int) -> None:
        self.metrics = _Metrics(in_flight)
        self.state = _State()


def _batch(machine_id: str) -> MachineSamples:
    return MachineSamples(machine_id, [Sample(NOW, [Reading("cpu.percent", 1.0)])])


def _writer(storage: _Storage) -> tuple[BatchWriter, list[list[str]]]:
    """A writer on ``storage``, and the machine ids of each group it commits, in order."""
    committed: list[list[str]] = []
    writer = BatchWriter(
        cast(Any, storage),
        clock=lambda: NOW,
        on_committed=lambda batches: committed.append([b.machine_id for b in batches]),
    )
    return writer, committed


async def _wait_until(condition: Any) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_a_second_transaction_starts_while_the_first_is_in_flight() -> None:
    storage = _Storage(in_flight=2)
    writer, committed = _writer(storage)
    assert writer.in_flight == 2
    first_gate = storage.metrics.gates["a"] = threading.Event()
    results: dict[str, int] = {}

    async def write(machine_id: str) -> None:
        results[machine_id] = await writer.write(_batch(machine_id))

    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        tasks.start_soon(write, "a")
        await _wait_until(lambda: storage.metrics.started == [["a"]])
        tasks.start_soon(write, "b")
        # "b" is written while "a" still waits, but completes after it.
        await _wait_until(lambda: len(storage.metrics.started) == 2)
        await anyio.sleep(0.05)
        assert results == {}
        assert committed == []
        first_gate.set()
        await _wait_until(lambda: len(results) == 2)
        await writer.aclose()
    assert storage.metrics.most_running == 2
    assert committed == [["a"], ["b"]]
    assert results == {"a": 1, "b": 1}
    assert writer.stats.transactions == 2


@pytest.mark.anyio
async def test_writes_queued_while_every_slot_is_busy_go_in_one_transaction() -> None:
    storage = _Storage(in_flight=2)
    writer = BatchWriter(cast(Any, storage), clock=lambda: NOW)
    gates = {m: threading.Event() for m in ("a", "b")}
    storage.metrics.gates.update(gates)
    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        for machine_id in ("a", "b"):
            tasks.start_soon(writer.write, _batch(machine_id))
            await _wait_until(lambda m=machine_id: [m] in storage.metrics.started)
        for machine_id in ("c", "d", "e"):
            tasks.start_soon(writer.write, _batch(machine_id))
        await _wait_until(lambda: writer.queue_depth == 3)
        for gate in gates.values():
            gate.set()
        await _wait_until(lambda: writer.stats.batches == 5)
        await writer.aclose()
    assert storage.metrics.started == [["a"], ["b"], ["c", "d", "e"]]
    assert storage.metrics.most_running == 2


@pytest.mark.anyio
async def test_a_failed_transaction_fails_its_callers_only_and_order_holds() -> None:
    storage = _Storage(in_flight=2)
    writer, committed = _writer(storage)
    gate = storage.metrics.gates["a"] = threading.Event()
    storage.metrics.failures["a"] = StorageUnavailable("down for a moment")
    outcome: dict[str, object] = {}

    async def write(machine_id: str) -> None:
        try:
            outcome[machine_id] = await writer.write(_batch(machine_id))
        except StorageUnavailable as error:
            outcome[machine_id] = error

    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        tasks.start_soon(write, "a")
        await _wait_until(lambda: storage.metrics.started == [["a"]])
        tasks.start_soon(write, "b")
        await _wait_until(lambda: len(storage.metrics.started) == 2)
        gate.set()
        await _wait_until(lambda: len(outcome) == 2)
        await writer.aclose()
    assert isinstance(outcome["a"], StorageUnavailable)
    assert outcome["b"] == 1
    assert committed == [["b"]]


@pytest.mark.anyio
async def test_one_transaction_at_a_time_unless_the_store_says_otherwise() -> None:
    storage = _Storage(in_flight=1)
    del storage.metrics.write_transactions
    writer = BatchWriter(cast(Any, storage), clock=lambda: NOW)
    assert writer.in_flight == 1
    gate = storage.metrics.gates["a"] = threading.Event()
    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        tasks.start_soon(writer.write, _batch("a"))
        await _wait_until(lambda: storage.metrics.started == [["a"]])
        tasks.start_soon(writer.write, _batch("b"))
        await anyio.sleep(0.05)
        assert storage.metrics.started == [["a"]]
        gate.set()
        await _wait_until(lambda: writer.stats.batches == 2)
        await writer.aclose()
    assert storage.metrics.most_running == 1
