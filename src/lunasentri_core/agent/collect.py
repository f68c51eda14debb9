"""One collection: every collector on the target, each within the collection timeout.

Each collector runs in a thread of its own, so that one that hangs (a stuck
mount, a driver call that never returns) costs its readings, not the agent:
after ``timeout`` it is abandoned — the thread finishes or not on its own, and
its result is dropped — and the other collectors' readings are kept. Threads
are made per collection rather than pooled: one every few seconds costs
microseconds, and an idle agent then holds no thread at all.

A collector whose ``collect`` is a coroutine function runs in its thread's own
event loop (``asyncio.run``), so only an agent that uses one loads asyncio.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from lunasentri_core.samples import Collector, Reading, Sample, Target


class Collected(NamedTuple):
    sample: Sample | None
    """``None`` when every collector failed."""
    failures: Mapping[str, str]
    """Collectors that failed this time (name -> reason); the others' readings are kept."""


def collect(
    collectors: Mapping[str, Collector],
    target: Target,
    *,
    timeout: float,
    clock: Callable[[], datetime],
) -> Collected:
    timestamp = clock()
    calls = {name: _Call(collector, target) for name, collector in collectors.items()}
    deadline = time.monotonic() + timeout
    for call in calls.values():
        call.join(deadline - time.monotonic())
    readings: list[Reading] = []
    failures: dict[str, str] = {}
    for name, call in calls.items():
        if call.failure is not None:
            failures[name] = call.failure
        elif call.readings is None:
            failures[name] = f"timed out after {timeout:g}s"
        else:
            readings.extend(call.readings)
    if calls and len(failures) == len(calls):
        return Collected(None, failures)
    return Collected(Sample(timestamp, readings), failures)


class _Call:
    """One collector's ``collect(target)``, running in its own daemon thread."""

    def __init__(self, collector: Collector, target: Target) -> None:
        self.readings: Sequence[Reading] | None = None
        self.failure: str | None = None
        # A daemon thread: a hung collector must not keep the agent from exiting.
        self._thread = threading.Thread(
            target=self._run, args=(collector, target), name=f"collect-{collector.name}"
        )
        self._thread.daemon = True
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(max(timeout, 0.0))

    def _run(self, collector: Collector, target: Target) -> None:
        try:
            result: Any = collector.collect(target)
            if inspect.isawaitable(result):
                result = _resolve(result)
            self.readings = _check_readings(result)
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"


def _resolve(awaitable: Awaitable[Any]) -> Any:
    import asyncio  # only for collectors that are coroutines

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


def _check_readings(result: object) -> Sequence[Reading]:
    if not isinstance(result, list | tuple) or not all(isinstance(r, Reading) for r in result):
        raise TypeError("collect() must return a list of lunasentri_core.Reading")
    return result
