"""The codec's fast sample path decodes exactly as the general path does.

Ingest decodes samples on a fast path; anything it does not handle goes through
the general path. These tests compare both on well-formed and broken input:
same samples, or the same errors.
"""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from lunasentri_core.codec import decode, encode, fast_samples, make_converter
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


good_entries = st.one_of(
    st.fixed_dictionaries({"value": numbers, "labels": good_labels}),
    st.fixed_dictionaries({"value": numbers}),
)


@st.composite
def repeated_samples(draw: st.DrawFn) -> list[object]:
    """A well-formed sample, then ones like it with new values and at most one other change."""
    first = draw(
        st.dictionaries(
            good_names,
            st.one_of(numbers, st.lists(good_entries, min_size=1, max_size=3)),
            min_size=1,
        )
    )

    def changed(entry: dict[str, object]) -> object:
        change = draw(
            st.sampled_from(["labels", "labels", "odd value", "extra", "other", "scalar"])
        )
        if change == "odd value":
            return {**entry, "value": draw(scalars)}
        if change == "labels":
            return {**entry, "labels": draw(st.one_of(good_labels, labels))}
        if change == "extra":
            return {**entry, "extra": 1}
        if change == "scalar":
            return draw(scalars)
        return draw(entries)

    def again(metrics: dict[str, object]) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, value in metrics.items():
            if isinstance(value, list):
                out[name] = [{**e, "value": draw(numbers)} for e in value]
            else:
                out[name] = draw(numbers)
        where = draw(st.sampled_from([None, "order", *out]))
        if where == "order":
            out = dict(reversed(out.items()))
        elif where is not None:
            value = out[where]
            if isinstance(value, list):
                at = draw(st.integers(0, len(value) - 1))
                out[where] = [*value[:at], changed(value[at]), *value[at + 1 :]]
            else:
                out[where] = draw(metric_values)
        return out

    later = [again(first) for _ in range(draw(st.integers(1, 3)))]
    return [{"timestamp": draw(good_timestamps), "metrics": metrics} for metrics in [first, *later]]


def assert_body_same(body: object) -> tuple[Sample, ...]:
    """What ingest decodes with :func:`fast_samples` is what the general path gives."""
    general = outcome(body, conv=GENERAL)
    fast = fast_samples(body)
    if fast is None:  # the general path decides
        return ()
    assert isinstance(general, Batch), f"fast path took what the general one refuses: {general}"
    assert fast == general.samples
    for a, b in zip(fast, general.samples, strict=True):
        assert [type(r.value) for r in a.readings] == [type(r.value) for r in b.readings]
    return fast


@settings(max_examples=300)
@given(repeated_samples())
def test_samples_like_the_one_before_decode_as_on_the_general_path(items: list[object]) -> None:
    assert_body_same({"samples": items})


@given(st.lists(samples, max_size=3))
def test_fast_bodies_and_general_path_agree(items: list[object]) -> None:
    assert_body_same({"samples": items})


def test_samples_of_one_shape_share_their_series_keys() -> None:
    def sample(at: int, value: float, mount: str = "/") -> dict[str, object]:
        entries = [{"labels": {"mount": mount}, "value": value}, {"value": 1}]
        return {"timestamp": at, "metrics": {"cpu.percent": value, "disk.used": entries}}

    body = {"samples": [sample(0, 1), sample(1, 2), sample(2, 3, "/home"), sample(3, 4, "/home")]}
    fast = assert_body_same(body)
    columns = [s.readings for s in fast]
    assert all(isinstance(c, ReadingColumns) for c in columns)
    keys = [c.keys for c in columns]  # type: ignore[attr-defined]
    assert keys[0] is keys[1]
    assert keys[2] is keys[3]
    assert keys[2][1] == ("disk.used", (("mount", "/home"),))
    assert [c.values for c in columns] == [  # type: ignore[attr-defined]
        (1.0, 1.0, 1.0),
        (2.0, 2.0, 1.0),
        (3.0, 3.0, 1.0),
        (4.0, 4.0, 1.0),
    ]
