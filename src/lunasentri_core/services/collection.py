"""Running collector plugins against a target without blocking the event loop."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio
import attrs

from lunasentri_core.components import Collector
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.model import Reading, Sample, Target

log = logging.getLogger(__name__)


class CollectionError(LunaSentriError):
    """Every collector failed for a target; ``failures`` maps collector name to reason."""

    def __init__(self, target: Target, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        detail = "; ".join(f"{name}: {reason}" for name, reason in self.failures.items())
        super().__init__(f"collection of machine {target.machine_id} failed ({detail})")


@attrs.frozen
class CollectionResult:
    sample: Sample
    failures: Mapping[str, str] = attrs.field(factory=dict)
    """Collectors that failed this time (name -> reason); the others' readings are kept."""


async def collect(
    collectors: Mapping[str, Collector],
    target: Target,
    *,
    timeout: timedelta,
    clock: Callable[[], datetime],
    limiter: anyio.CapacityLimiter | None = None,
) -> CollectionResult:
    """Run every collector on ``target`` concurrently and merge their readings.

    One collector failing or timing out does not lose the others' readings; if all
    of them fail, :class:`CollectionError` says why each did.
    """
    timestamp = clock()
    readings: dict[str, Sequence[Reading]] = {}
    failures: dict[str, str] = {}

    async def run_one(name: str, collector: Collector) -> None:
        try:
            with anyio.fail_after(timeout.total_seconds()):
                readings[name] = await _call_collect(collector, target, limiter)
        except TimeoutError:
            failures[name] = f"timed out after {timeout.total_seconds():g}s"
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {error}"
            log.warning("collector %s failed for %s: %s", name, target.machine_id, error)

    async with anyio.create_task_group() as group:
        for name, collector in collectors.items():
            group.start_soon(run_one, name, collector)

    if collectors and not readings:
        raise CollectionError(target, failures)
    merged = [reading for name in collectors if name in readings for reading in readings[name]]
    return CollectionResult(Sample(timestamp, merged), failures)


async def _call_collect(
    collector: Collector, target: Target, limiter: anyio.CapacityLimiter | None
) -> Sequence[Reading]:
    if inspect.iscoroutinefunction(collector.collect):
        result: Any = await collector.collect(target)
    else:
        # abandon_on_cancel: a hung plugin call must not hang the timeout with it.
        result = await anyio.to_thread.run_sync(
            collector.collect, target, limiter=limiter, abandon_on_cancel=True
        )
    return _check_readings(result)


def _check_readings(result: object) -> Sequence[Reading]:
    if not isinstance(result, list | tuple) or not all(isinstance(r, Reading) for r in result):
        raise TypeError("collect() must return a list of lunasentri_core.Reading")
    return result
