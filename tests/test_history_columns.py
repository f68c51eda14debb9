"""HistoryColumns: a SeriesHistory as two columns, and back."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core import HistoryColumns, HistoryPoint, Resolution, SeriesHistory, SeriesKey
from lunasentri_core.services.queries import derive_columns, derive_history

KEY = SeriesKey("m1", "cpu.percent", {"cpu": "0"})
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def histories(draw: st.DrawFn, key: SeriesKey = KEY) -> SeriesHistory:
    stamps = sorted(set(draw(st.lists(instants, max_size=30))))
    points = tuple(HistoryPoint(t, draw(finite)) for t in stamps)
    return SeriesHistory(key, draw(st.sampled_from(Resolution)), points)


@given(histories())
def test_columns_round_trip(history: SeriesHistory) -> None:
    columns = HistoryColumns.from_history(history)
    assert columns.to_history() == history
    assert list(columns.datetimes()) == [p.timestamp for p in history.points]
    assert all(t.tzinfo is UTC for t in columns.datetimes())


@pytest.mark.parametrize(
    "offsets",
    [
        [0, 60, 120, 180, 240],  # every step: made by adding the step
        [0, 60, 90, 180, 240],  # a step missing, the same span: made one by one
        [0, 60, 120, 200, 240],
        [0, 60],
        [0],
        [],
    ],
)
@pytest.mark.parametrize(
    "first", [datetime(1969, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)]
)
def test_step_starts_evenly_spaced_or_not(offsets: list[int], first: datetime) -> None:
    wanted = [first + timedelta(seconds=s, microseconds=s) for s in offsets]
    history = SeriesHistory(KEY, Resolution.RAW, tuple(HistoryPoint(t, 1.0) for t in wanted))
    made = list(HistoryColumns.from_history(history).datetimes())
    assert made == wanted
    assert all(t.tzinfo is UTC for t in made)


def test_columns_are_microseconds_since_the_epoch() -> None:
    at = datetime(2026, 12, 5, 0, 0, 7, 200_000, tzinfo=UTC)
    columns = HistoryColumns.from_history(
        SeriesHistory(KEY, Resolution.RAW, (HistoryPoint(at, 1.5),))
    )
    assert list(columns.timestamps) == [1_796_428_807_200_000]
    assert list(columns.values) == [1.5]


def test_columns_must_be_equally_long() -> None:
    with pytest.raises(ValueError, match="as long as each other"):
        HistoryColumns(KEY, Resolution.RAW, array("q", [1, 2]), array("d", [1.0]))


@given(st.data())
def test_derived_columns_equal_derived_points(data: st.DataObject) -> None:
    used = data.draw(histories(SeriesKey("m1", "mem.used", {})))
    # The total shares some of used's steps, with values of either sign (only > 0 divides).
    shared = [p.timestamp for p in used.points if data.draw(st.booleans())]
    extra = data.draw(st.lists(instants, max_size=5))
    stamps = sorted(set(shared) | set(extra))
    total = SeriesHistory(
        SeriesKey("m1", "mem.total", {}),
        used.resolution,
        tuple(HistoryPoint(t, data.draw(finite)) for t in stamps),
    )
    want = derive_history("mem.percent", [used], [total])
    got = derive_columns(
        "mem.percent", [HistoryColumns.from_history(used)], [HistoryColumns.from_history(total)]
    )
    assert [c.to_history() for c in got] == want


def test_derived_columns_leave_out_series_without_a_total() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    used = SeriesHistory(
        SeriesKey("m1", "disk.used", {"mount": "/"}), Resolution.RAW, (HistoryPoint(at, 1.0),)
    )
    other = SeriesHistory(
        SeriesKey("m1", "disk.total", {"mount": "/home"}),
        Resolution.RAW,
        (HistoryPoint(at + timedelta(seconds=1), 2.0),),
    )
    columns = HistoryColumns.from_history
    assert derive_columns("disk.percent", [columns(used)], [columns(other)]) == []
