from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.codec import decode, decode_json, encode, encode_json, parse_duration
from lunasentri_core.errors import ValidationError
from lunasentri_core.model import (
    AlertRule,
    Comparison,
    Machine,
    MachineStatus,
    Reading,
    RuleScope,
    Sample,
)


@attrs.frozen
class Batch:
    samples: tuple[Sample, ...]


GOOD_SAMPLE = {
    "timestamp": "2026-11-23T16:00:00Z",
    "metrics": {
        "cpu.percent": 12.5,
        "disk.used": [{"labels": {"mount": "/"}, "value": 3}],
    },
}


def errors_of(data: object, cls: type = Batch) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        decode(data, cls)
    return [str(e) for e in caught.value.errors]


def test_decodes_plain_and_labelled_readings() -> None:
    batch = decode({"samples": [GOOD_SAMPLE]}, Batch)

    (sample,) = batch.samples
    assert sample.timestamp == datetime(2026, 11, 23, 16, tzinfo=UTC)
    assert sample.readings == (
        Reading("cpu.percent", 12.5),
        Reading("disk.used", 3.0, {"mount": "/"}),
    )


def test_error_names_the_sample_and_metric() -> None:
    bad = {**GOOD_SAMPLE, "metrics": {"cpu.percent": "12"}}
    data = {"samples": [GOOD_SAMPLE] * 3 + [bad]}

    assert errors_of(data) == ["samples[3].metrics.cpu.percent: expected a number"]


def test_every_problem_is_reported_with_its_path() -> None:
    bad = {
        "timestamp": "2026-11-23T16:00:00",
        "metrics": {"disk.used": [{"labels": {"mount": 1}, "value": True, "x": 0}]},
        "extra": 1,
    }

    found = errors_of({"samples": [bad], "more": 2})

    assert found == [
        "samples[0].timestamp: timestamp '2026-11-23T16:00:00' has no timezone "
        "(add 'Z' or '+00:00')",
        "samples[0].metrics.disk.used[0].value: expected a number",
        "samples[0].metrics.disk.used[0].labels.mount: expected a string",
        "samples[0].metrics.disk.used[0].x: unknown field",
        "samples[0].extra: unknown field",
        "more: unknown field",
    ]


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"cpu.percent": True}, "samples[0].metrics.cpu.percent: expected a number"),
        ({"cpu.percent": None}, "samples[0].metrics.cpu.percent: expected a number"),
        ({"cpu.percent": float("inf")}, "samples[0].metrics.cpu.percent: expected a finite number"),
        ({"Bad Name": 1}, "samples[0].metrics.Bad Name: metric 'Bad Name' is not a metric name"),
        ([1, 2], "samples[0].metrics: expected an object of metric names to values"),
    ],
)
def test_bad_metric_values(metrics: object, expected: str) -> None:
    (found,) = errors_of({"samples": [{"timestamp": 0, "metrics": metrics}]})
    assert found.startswith(expected)


def test_a_series_appears_once_per_sample() -> None:
    twice = {"disk.used": [{"labels": {"mount": "/"}, "value": 1}] * 2}
    (found,) = errors_of({"samples": [{"timestamp": 0, "metrics": twice}]})
    assert found.startswith("samples[0]: two readings of the same series disk.used")


def test_missing_fields_are_named() -> None:
    assert errors_of({"samples": [{}]}) == [
        "samples[0].timestamp: required field is missing",
        "samples[0].metrics: required field is missing",
    ]


def test_malformed_json_and_nan_are_rejected() -> None:
    with pytest.raises(ValidationError, match="malformed JSON"):
        decode_json(b'{"samples": [', Batch)
    nan_body = '{"samples": [{"timestamp": 0, "metrics": {"cpu.percent": NaN}}]}'
    with pytest.raises(ValidationError, match="NaN is not a valid JSON number"):
        decode_json(nan_body, Batch)


def test_epoch_seconds_are_accepted_and_out_of_range_is_an_error() -> None:
    sample = decode({"timestamp": 1_700_000_000.5, "metrics": {}}, Sample)
    assert sample.timestamp == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert errors_of({"timestamp": 1e20, "metrics": {}}, Sample) == [
        "timestamp: timestamp 1e+20 is out of range"
    ]


def test_no_coercion_of_scalars() -> None:
    found = errors_of({"id": 7, "name": "a", "status": "sleepy"}, Machine)
    assert found == [
        "id: expected a string",
        "status: expected one of 'unknown', 'online', 'offline'",
    ]


def test_nested_state_types_round_trip() -> None:
    rule = AlertRule(
        id="r1",
        owner_id="u1",
        name="hot",
        metric="cpu.percent",
        comparison=Comparison.GT,
        threshold=90,
        for_duration=timedelta(minutes=5),
        scope=RuleScope(labels={"env": "prod"}),
    )
    data = json.loads(encode_json(rule))

    assert data["comparison"] == ">"
    assert data["for_duration"] == "5m"
    assert data["scope"] == {"machine_id": None, "labels": {"env": "prod"}}
    assert decode(data, AlertRule) == rule


def test_machine_round_trips() -> None:
    machine = Machine("m1", "web", labels={"env": "prod"}, status=MachineStatus.ONLINE)
    assert decode(encode(machine), Machine) == machine


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(5, 5), (2.5, 2.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["soon", "-5s", True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_duration(text)


metric_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,8}){0,2}\Z")
label_sets = st.dictionaries(
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,6}\Z"), st.text(max_size=12), max_size=3
)
readings = st.builds(
    Reading,
    metric=metric_names,
    value=st.floats(allow_nan=False, allow_infinity=False),
    labels=label_sets,
)
timestamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(timestamps, st.lists(readings, max_size=8, unique_by=lambda r: (r.metric, r.labels)))
def test_samples_round_trip_through_json(timestamp: datetime, items: list[Reading]) -> None:
    # The wire form groups readings by metric, so compare regardless of order.
    sample = Sample(timestamp, items)
    decoded = decode_json(encode_json(sample), Sample)

    assert decoded.timestamp == sample.timestamp
    assert sorted(decoded.readings, key=repr) == sorted(sample.readings, key=repr)
    assert all(math.isfinite(r.value) for r in decoded.readings)


@attrs.frozen
class _Probe:
    """Validators written the ways plugin authors write them."""

    timeout: float = attrs.field(default=1.0)
    path: str = attrs.field(default="/")
    port: int = attrs.field(default=1, validator=attrs.validators.gt(0))

    @timeout.validator
    def _check_timeout(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value <= 0:
            raise ValueError("timeout must be positive")

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value.startswith("/"):
            raise RuntimeError("bad path")

    def __attrs_post_init__(self) -> None:
        if self.path == "/forbidden":
            raise ValueError("path and port disagree")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"timeout": -1}, "timeout: timeout must be positive"),
        ({"path": "relative"}, "path: RuntimeError: bad path"),
        ({"port": 0}, "port: 'port' must be > 0: 0"),
        ({"path": "/forbidden"}, "path and port disagree"),
    ],
)
def test_a_validators_error_names_its_field_whatever_it_raises(
    data: dict[str, object], expected: str
) -> None:
    assert errors_of(data, _Probe) == [expected]


def test_a_nested_validators_error_names_the_full_path() -> None:
    @attrs.frozen
    class Outer:
        inner: tuple[_Probe, ...]

    assert errors_of({"inner": [{}, {"timeout": 0}]}, Outer) == [
        "inner[1].timeout: timeout must be positive"
    ]
