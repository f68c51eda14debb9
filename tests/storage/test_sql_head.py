"""The head's packed samples: their byte form, reading series out of them, building them."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.errors import StorageError
from lunasentri_core.model import MachineSamples, Reading, Sample
from lunasentri_core.storage.sql.head import (
    SeriesIds,
    build_rows,
    first_points,
    pack_series_ids,
    pack_values,
    series_columns,
    series_points,
    unpack_sample,
)
from lunasentri_core.storage.sql.points import FloatArray, IntArray

T0 = datetime(2025, 3, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def test_packed_form_is_little_endian_int64_and_float64() -> None:
    assert pack_series_ids([1, 2**40]) == struct.pack("<qq", 1, 2**40)
    assert pack_values([1.5, -0.0]) == struct.pack("<dd", 1.5, -0.0)
    sids, values = unpack_sample(struct.pack("<qq", 7, 9), struct.pack("<dd", 0.25, 3.0))
    assert (list(sids), list(values)) == ([7, 9], [0.25, 3.0])


@pytest.mark.parametrize(
    ("sids", "values", "message"),
    [
        (b"\x01\x02\x03", struct.pack("<d", 1.0), "corrupt"),
        (struct.pack("<qq", 1, 2), struct.pack("<d", 1.0), "2 series, 1 values"),
    ],
)
def test_a_corrupt_sample_is_a_storage_error(sids: bytes, values: bytes, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        unpack_sample(sids, values)


def row(ts: int, points: dict[int, float]) -> tuple[int, bytes, bytes]:
    return ts, pack_series_ids(list(points)), pack_values(list(points.values()))


def test_series_points_takes_the_wanted_series_sorted_by_time() -> None:
    rows = [
        row(30, {1: 3.0, 2: 30.0}),
        row(10, {1: 1.0, 2: 10.0}),
        row(20, {2: 20.0, 3: 200.0}),  # another layout
    ]
    found = series_points(rows, [2, 3, 4])
    assert {sid: (list(ts), list(v)) for sid, (ts, v) in found.items()} == {
        2: ([10, 20, 30], [10.0, 20.0, 30.0]),
        3: ([20], [200.0]),
    }
    assert set(series_points(rows)) == {1, 2, 3}, "every series when none is named"


def test_of_a_point_stored_twice_the_first_row_wins() -> None:
    rows = [row(10, {1: 1.0}), row(20, {1: 2.0}), row(10, {1: 9.0})]
    ts, values = series_points(rows)[1]
    assert (list(ts), list(values)) == ([10, 20], [1.0, 2.0])


LAYOUTS = [[1, 2, 3], [2, 4], [5], [3, 1], [6, 6]]
"""Packed ids of head rows: series in one layout or several, in any order, one twice."""


@st.composite
def head_rows(draw: st.DrawFn) -> list[tuple[int, bytes, bytes]]:
    layouts = draw(st.lists(st.sampled_from(LAYOUTS), min_size=1, max_size=3))
    rising = draw(st.booleans())  # an agent's samples in the order it sent them
    out = []
    for n in range(draw(st.integers(0, 30))):
        ts = n * 5 if rising else draw(st.integers(0, 40))
        sids = draw(st.sampled_from(layouts))
        values = draw(st.lists(st.floats(allow_nan=False), min_size=len(sids), max_size=len(sids)))
        out.append((ts, pack_series_ids(sids), pack_values(values)))
    return out


def as_bytes(found: dict[int, tuple[IntArray, FloatArray]]) -> dict[int, tuple[bytes, bytes]]:
    return {sid: (ts.tobytes(), v.tobytes()) for sid, (ts, v) in found.items()}


@given(head_rows(), st.none() | st.sets(st.integers(0, 7)))
def test_series_columns_match_series_points(
    rows: list[tuple[int, bytes, bytes]], wanted: set[int] | None
) -> None:
    assert as_bytes(series_columns(rows, wanted)) == as_bytes(series_points(rows, wanted))


@pytest.mark.parametrize(
    "damaged",
    [
        (5, b"\x01\x02\x03", pack_values([1.0])),
        (5, pack_series_ids([1, 2]), pack_values([1.0])),
        (5, pack_series_ids([9]), pack_values([1.0]) + b"\x00"),
    ],
    ids=["ids", "values-short", "values-ragged"],
)
def test_series_columns_report_a_damaged_row_of_any_series(
    damaged: tuple[int, bytes, bytes],
) -> None:
    rows = [row(0, {1: 1.0, 2: 2.0}), damaged]
    with pytest.raises(StorageError, match="corrupt"):
        series_columns(rows, [1])


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(allow_nan=False))))
def test_first_points_matches_a_first_wins_reference(points: list[tuple[int, float]]) -> None:
    reference: dict[int, float] = {}
    for ts, value in points:
        reference.setdefault(ts, value)
    ts, values = first_points(points)
    assert list(zip(ts, values, strict=True)) == sorted(reference.items())


def test_build_rows_makes_a_row_per_sample_and_finds_each_newest_point() -> None:
    ids = {"m": {("cpu", ()): 1, ("mem", ()): 2}}
    samples = [
        Sample(T0 + timedelta(seconds=s), [Reading("cpu", s), Reading("mem", -s)]) for s in (2, 1)
    ]
    built = build_rows([MachineSamples("m", [*samples, Sample(T0, [])])], ids)
    assert built is not None
    rows, latest, points = built
    assert points == 4
    assert [(m, ts) for m, ts, _, _ in rows] == [("m", T0_MS + 2000), ("m", T0_MS + 1000)]
    sids, values = unpack_sample(rows[1][2], rows[1][3])
    assert (list(sids), list(values)) == ([1, 2], [1.0, -1.0])
    assert latest == [("m", ([1, 2], [T0_MS + 2000] * 2, [2.0, -2.0]))]


def test_build_rows_gives_each_machine_its_newest_points_once_by_machine_id() -> None:
    """A machine may come twice in a batch (two requests): its points are merged
    newest-wins, and the machines come in id order (the lock order of their rows)."""
    ids: dict[str, SeriesIds] = {"b": {("cpu", ()): 3, ("mem", ()): 1}, "a": {("cpu", ()): 2}}
    batch = [
        MachineSamples("b", [Sample(T0 + timedelta(seconds=2), [Reading("cpu", 2)])]),
        MachineSamples("a", [Sample(T0, [Reading("cpu", 9)])]),
        MachineSamples(
            "b", [Sample(T0 + timedelta(seconds=1), [Reading("cpu", 1), Reading("mem", 5)])]
        ),
        MachineSamples("c", [Sample(T0, [])]),
    ]
    built = build_rows(batch, ids)
    assert built is not None
    assert built[1] == [
        ("a", ([2], [T0_MS], [9.0])),
        ("b", ([1, 3], [T0_MS + 1000, T0_MS + 2000], [5.0, 2.0])),
    ]


def test_build_rows_wants_every_series_resolved() -> None:
    batch = [MachineSamples("m", [Sample(T0, [Reading("cpu", 1), Reading("new", 2)])])]
    assert build_rows(batch, {"m": {("cpu", ()): 1}}) is None
    assert build_rows(batch, {}) is None
