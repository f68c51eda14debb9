"""ReadingColumns: a sample's readings in two columns, equal to the tuple of readings."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

from lunasentri_core import Reading, ReadingColumns, Sample
from lunasentri_core.model import reading_columns

AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
READINGS = (
    Reading("cpu.percent", 12.5),
    Reading("disk.used", 3.0, {"mount": "/"}),
    Reading("disk.used", 4.0, {"mount": "/home"}),
)


def columns(readings: tuple[Reading, ...] = READINGS) -> ReadingColumns:
    return ReadingColumns(
        tuple((r.metric, r.labels) for r in readings), tuple(r.value for r in readings)
    )


def test_reads_as_the_tuple_of_its_readings() -> None:
    found = columns()
    assert len(found) == 3
    assert tuple(found) == READINGS
    assert found[1] == READINGS[1]
    assert found[-1] == READINGS[-1]
    assert found[1:] == READINGS[1:]
    assert READINGS[0] in found
    assert found.index(READINGS[2]) == 2
    with pytest.raises(IndexError):
        found[3]


def test_equal_to_and_hashed_like_the_tuple() -> None:
    found = columns()
    assert found == READINGS
    assert READINGS == found  # noqa: SIM300 (the tuple on the left: the reflected comparison)
    assert found == list(READINGS)
    assert found == columns()
    assert hash(found) == hash(READINGS)
    assert found != READINGS[:2]
    assert found != columns(READINGS[:2])
    assert found != "cpu.percent"
    assert repr(found) == repr(READINGS)


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 series keys but 1 values"):
        ReadingColumns((("a", ()), ("b", ())), (1.0,))


def test_a_sample_made_by_hand_from_columns_checks_them() -> None:
    sample = Sample(AT, columns())
    assert sample.readings == READINGS
    assert type(sample.readings) is tuple
    with pytest.raises(ValueError, match="is not a metric name"):
        Sample(AT, ReadingColumns((("Bad Name", ()),), (1.0,)))
    with pytest.raises(ValueError, match="finite"):
        Sample(AT, ReadingColumns((("cpu.percent", ()),), (float("nan"),)))


def test_samples_with_columns_equal_samples_with_tuples() -> None:
    hand = Sample(AT, READINGS)
    decoded = attrs.evolve(hand)  # a tuple again, through the converter
    fast = object.__new__(Sample)
    object.__setattr__(fast, "timestamp", AT)
    object.__setattr__(fast, "readings", columns())
    assert fast == hand == decoded
    assert hash(fast) == hash(hand)


def test_reading_columns_of_either_form() -> None:
    keys, values = reading_columns(columns())
    assert (list(keys), list(values)) == reading_columns(READINGS)
    assert list(values) == [12.5, 3.0, 4.0]
    assert list(keys)[1] == ("disk.used", (("mount", "/"),))
    assert reading_columns(()) == ([], [])
