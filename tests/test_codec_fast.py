"""The codec's fast sample path decodes exactly as the general path does.

Ingest decodes samples on a fast path; anything it does not handle goes through
the general path. These tests compare both on well-formed and broken input:
same samples, or the same errors.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.codec import decode, encode, make_converter
from lunasentri_core.errors import ValidationError
from lunasentri_core.model import ReadingColumns, Sample

GENERAL = make_converter(fast_samples=False)


@attrs.frozen
class Batch:
    samples: tuple[Sample, ...]


def outcome(data: object, **kwargs: object) -> object:
    try:
        return decode(data, Batch, **kwargs)  # type: ignore[arg-type]
    except ValidationError as error:
        return [str(e) for e in error.errors]


def assert_same(data: object) -> None:
    fast, general = outcome(data), outcome(data, conv=GENERAL)
    assert fast == general
    if isinstance(fast, Batch):
        assert isinstance(general, Batch)
        for a, b in zip(fast.samples, general.samples, strict=True):
            assert [type(r.value) for r in a.readings] == [type(r.value) for r in b.readings]


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**60), max_value=2**60),
)
odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and infinities too: Python callers can pass them
    st.text(max_size=4),
    st.just(10**400),
)
scalars = st.one_of(numbers, odd_scalars)
good_names = st.sampled_from(["cpu.percent", "disk.used", "mem.total", "net.rx_bytes"])
names = st.one_of(good_names, good_names, st.text(max_size=6), st.integers())
good_labels = st.dictionaries(
    st.sampled_from(["mount", "nic", "core"]), st.sampled_from(["/", "eth0", "x" * 256])
)
labels = st.one_of(
    good_labels,
    good_labels,
    st.dictionaries(
        st.text(max_size=4),
        st.one_of(st.text(max_size=3), odd_scalars, st.lists(st.integers(), max_size=1)),
    ),
    st.just({"mount": "x" * 257}),
    odd_scalars,
    st.lists(st.text(max_size=2), max_size=2),
)
entries = st.one_of(
    st.fixed_dictionaries({"value": numbers, "labels": good_labels}),
    st.fixed_dictionaries({"value": numbers}),
    st.fixed_dictionaries({"value": scalars, "labels": labels}),
    st.fixed_dictionaries({"labels": labels}),
    st.fixed_dictionaries({"value": numbers, "labels": good_labels, "extra": scalars}),
    scalars,
)
metric_values = st.one_of(numbers, numbers, st.lists(entries, max_size=3), odd_scalars)
good_timestamps = st.sampled_from([0, 1_700_000_000.25, "2026-11-23T16:00:00+02:00"])
timestamps = st.one_of(
    good_timestamps,
    good_timestamps,
    st.sampled_from(["2026-11-23T16:00:00", "soon", 1e20, "0001-01-01T00:00:00+01:00"]),
    odd_scalars,
)
samples = st.one_of(
    st.fixed_dictionaries(
        {"timestamp": timestamps, "metrics": st.dictionaries(names, metric_values, max_size=4)}
    ),
    st.fixed_dictionaries(
        {"timestamp": timestamps, "metrics": st.dictionaries(good_names, metric_values)}
    ),
    st.fixed_dictionaries({"timestamp": timestamps}),
    st.fixed_dictionaries({"timestamp": timestamps, "metrics": scalars, "extra": scalars}),
    odd_scalars,
)


@given(st.lists(samples, max_size=3))
def test_fast_and_general_paths_agree(items: list[object]) -> None:
    assert_same({"samples": items})


def test_typical_batch_decodes_the_same_on_both_paths() -> None:
    sample = {
        "timestamp": "2026-11-23T16:00:00+02:00",
        "metrics": {
            "cpu.percent": 12.5,
            "proc.count": 301,
            "disk.used": [
                {"labels": {"mount": "/", "device": "sda1"}, "value": 3},
                {"labels": {"mount": "/home"}, "value": 4.5},
                {"value": 1},
            ],
        },
    }
    assert_same({"samples": [sample, {**sample, "timestamp": 1_700_000_000}]})
    fast = outcome({"samples": [sample]})
    assert isinstance(fast, Batch)
    readings = fast.samples[0].readings
    # No Reading object per value on the fast path: the readings stay in columns.
    assert isinstance(readings, ReadingColumns)
    assert readings.keys[2] == ("disk.used", (("device", "sda1"), ("mount", "/")))
    assert readings.values == (12.5, 301.0, 3.0, 4.5, 1.0)
    # Encoded from the columns exactly as from Reading objects.
    general = outcome({"samples": [sample]}, conv=GENERAL)
    assert isinstance(general, Batch)
    assert type(general.samples[0].readings) is tuple
    assert encode(fast.samples[0]) == encode(general.samples[0])
    assert encode(fast.samples[0])["metrics"]["disk.used"][2] == {"labels": {}, "value": 1.0}


def test_the_same_series_twice_is_reported_by_both_paths() -> None:
    twice = {"disk.used": [{"labels": {"mount": "/"}, "value": 1}] * 2}
    assert_same({"samples": [{"timestamp": 0, "metrics": twice}]})


def test_unhashable_label_values_are_reported_by_both_paths() -> None:
    odd = {"disk.used": [{"labels": {"mount": ["/"]}, "value": 1}]}
    assert_same({"samples": [{"timestamp": 0, "metrics": odd}]})
