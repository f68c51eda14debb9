"""One collection (each collector in its own thread, within a timeout), and its wire form."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.agent.collect import collect
from lunasentri_core.agent.transport import sample_json
from lunasentri_core.codec import encode_json
from lunasentri_core.samples import Reading, Sample, Target

AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Fixed:
    name: ClassVar[str] = "fixed"
    settings_class: ClassVar[type[Any] | None] = None

    def __init__(self, *readings: Reading) -> None:
        self.readings = list(readings)
        self.threads: list[str] = []

    def collect(self, target: Target) -> list[Reading]:
        self.threads.append(threading.current_thread().name)
        return self.readings


class Failing:
    name: ClassVar[str] = "failing"
    settings_class: ClassVar[type[Any] | None] = None

    def collect(self, target: Target) -> list[Reading]:
        raise OSError("no /proc here")


class Hung:
    name: ClassVar[str] = "hung"
    settings_class: ClassVar[type[Any] | None] = None

    def __init__(self) -> None:
        self.release = threading.Event()

    def collect(self, target: Target) -> list[Reading]:
        self.release.wait(30)
        return [Reading("late.value", 1)]


class Coroutine:
    name: ClassVar[str] = "coroutine"
    settings_class: ClassVar[type[Any] | None] = None

    async def collect(self, target: Target) -> list[Reading]:
        return [Reading("async.value", 2, {"host": target.machine_id})]


class Wrong:
    name: ClassVar[str] = "wrong"
    settings_class: ClassVar[type[Any] | None] = None

    def collect(self, target: Target) -> Any:
        return {"cpu.percent": 3}


def test_readings_are_merged_and_failures_named() -> None:
    fixed = Fixed(Reading("a.value", 1), Reading("b.value", 2, {"x": "y"}))
    result = collect(
        {"fixed": fixed, "failing": Failing(), "coroutine": Coroutine(), "wrong": Wrong()},
        Target("m1"),
        timeout=5,
        clock=lambda: AT,
    )
    assert result.sample == Sample(
        AT,
        [
            Reading("a.value", 1),
            Reading("b.value", 2, {"x": "y"}),
            Reading("async.value", 2, {"host": "m1"}),
        ],
    )
    assert result.failures == {
        "failing": "OSError: no /proc here",
        "wrong": "TypeError: collect() must return a list of lunasentri_core.Reading",
    }
    assert fixed.threads == ["collect-fixed"]  # not the caller's thread


def test_a_hung_collector_is_abandoned_after_the_timeout() -> None:
    hung = Hung()
    started = time.monotonic()
    result = collect(
        {"hung": hung, "fixed": Fixed(Reading("a.value", 1))},
        Target("m1"),
        timeout=0.2,
        clock=lambda: AT,
    )
    took = time.monotonic() - started
    hung.release.set()
    assert result.failures == {"hung": "timed out after 0.2s"}
    assert result.sample == Sample(AT, [Reading("a.value", 1)])
    assert took < 5


def test_when_every_collector_fails_there_is_no_sample() -> None:
    result = collect({"failing": Failing()}, Target("m1"), timeout=5, clock=lambda: AT)
    assert result.sample is None
    assert set(result.failures) == {"failing"}


def test_no_collectors_make_an_empty_sample() -> None:
    assert collect({}, Target("m1"), timeout=5, clock=lambda: AT).sample == Sample(AT, [])


_METRICS = st.sampled_from(["cpu.percent", "disk.used", "net.rx_rate", "mem.used"])
_LABELS = st.dictionaries(
    st.sampled_from(["mount", "nic", "cpu"]), st.text(min_size=0, max_size=5), max_size=2
)
_READINGS = st.lists(
    st.builds(
        Reading,
        _METRICS,
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        _LABELS,
    ),
    max_size=12,
    unique_by=lambda r: (r.metric, r.labels),
)
_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(_TIMES, _READINGS, st.integers(-720, 840))
def test_the_wire_form_is_the_codecs(at: datetime, readings: list[Reading], offset: int) -> None:
    sample = Sample(at.astimezone(UTC) + timedelta(minutes=offset), readings)
    assert sample_json(sample) == encode_json(sample).encode()
