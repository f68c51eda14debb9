"""Block format version 3 (scaled, nearly scaled, delta, shuffled columns) is lossless;
versions 1 and 2 still read.

Round trips compare bit patterns (``array.tobytes``), not values: ``-0.0 == 0.0``
would hide a lost sign.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

from lunasentri_core.errors import StorageError
from lunasentri_core.model import Aggregation, HistoryQuery, MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import CHUNK_MS, SqlStorage, blocks
from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.storage.sql.points import (
    MINUTE_MS,
    FloatArray,
    IntArray,
    Rollups,
    bucket_stats,
    float_array,
    int_array,
)
from lunasentri_core.storage.sql.schema import metric_chunks, series

TINY = sys.float_info.min  # the smallest normal float
SUBNORMAL = 5e-324
FLOAT_CLASSES = {
    "zeros": [0.0, -0.0, 0.0, -0.0],
    "negative-zero-alone": [-0.0] * 5,
    "subnormals": [SUBNORMAL, -SUBNORMAL, TINY / 2, -TINY / 3, 2.2250738585072009e-308],
    "huge": [sys.float_info.max, -sys.float_info.max, 1e308, -1.7e308, 2.0**1000],
    "tiny": [TINY, -TINY, 1e-300, -1e-307, 2.0**-1000],
    "integers": [0.0, 1.0, -1.0, 2.0**53, 2.0**53 + 2, -(2.0**63), 2.0**63, 1e15, 123456789.0],
    "many-decimals": [0.1 + 0.2, 1 / 3, math.pi, -math.e, 1.000000000000001, 0.1234567890123],
    "decimals": [12.5, 0.01, -3.75, 99.9, 100.0, 0.3, 1e-15, 123.456],
    "constant": [42.5] * 10,
}
FLOAT_CLASSES["all-mixed"] = [v for values in FLOAT_CLASSES.values() for v in values]


def bits(column: IntArray | FloatArray) -> bytes:
    return column.tobytes()


def regular_ts(count: int, start: int = 1_700_000_000_000, step: int = 5_000) -> IntArray:
    return int_array(range(start, start + count * step, step))


def round_trip_raw(ts: IntArray, values: FloatArray) -> None:
    blob = blocks.encode_raw(ts, values)
    assert blob[0] == blocks.FORMAT_VERSION
    got_ts, got_values = blocks.decode_raw(blob)
    assert (got_ts.typecode, got_values.typecode) == ("q", "d")
    assert bits(got_ts) == bits(ts)
    assert bits(got_values) == bits(values)


def round_trip_minutes(ts: IntArray, values: FloatArray) -> None:
    columns = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS)).columns()
    blob = blocks.encode(columns)
    assert blob[0] == blocks.FORMAT_VERSION
    got = blocks.decode_minutes(blob)
    assert [c.typecode for c in got] == list(blocks.MINUTE_COLUMNS)
    assert [bits(c) for c in got] == [bits(c) for c in columns]


# --------------------------------------------------------------------------- lossless


@pytest.mark.parametrize("name", sorted(FLOAT_CLASSES))
def test_every_float_class_round_trips_in_raw_and_minute_blocks(name: str) -> None:
    values = float_array(FLOAT_CLASSES[name])
    ts = regular_ts(len(values), step=20_000)  # 3 points a minute: minute sums of them too
    round_trip_raw(ts, values)
    round_trip_minutes(ts, values)
    # Each value alone in a column, and after a decimal-looking run of 20:
    # a column is scaled only when every value comes back bit for bit.
    for value in FLOAT_CLASSES[name]:
        round_trip_raw(regular_ts(1), float_array([value]))
        prefix = [round(0.1 * i, 1) for i in range(20)]
        round_trip_raw(regular_ts(21), float_array([*prefix, value]))


def test_empty_blocks_round_trip() -> None:
    round_trip_raw(int_array(), float_array())
    assert [len(c) for c in blocks.decode_minutes(blocks.encode(Rollups.empty().columns()))] == [
        0
    ] * 6


def test_timestamps_at_the_ends_of_int64_round_trip() -> None:
    """Gaps wider than int64 cannot be stored as differences: stored as they are."""
    ts = int_array([-(2**63), -1, 0, 2**62, 2**63 - 1])
    round_trip_raw(ts, float_array([1.5, 2.5, 3.5, 4.5, 5.5]))


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
decimal_values = st.builds(
    lambda n, k: n / 10**k,
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.integers(min_value=0, max_value=18),
)
walks = st.builds(
    lambda start, steps, k: [round(start + sum(steps[:i]), k) for i in range(len(steps))],
    st.floats(min_value=-1e6, max_value=1e6),
    st.lists(st.floats(min_value=-100, max_value=100), min_size=1, max_size=200),
    st.integers(min_value=0, max_value=4),
)


@st.composite
def raw_series(draw: st.DrawFn) -> tuple[IntArray, FloatArray]:
    """Increasing timestamps with irregular gaps (no duplicates, as the store keeps them)."""
    values = draw(
        st.one_of(
            st.lists(finite, max_size=200),
            st.lists(decimal_values, max_size=200),
            walks,
            st.lists(st.sampled_from([v for vs in FLOAT_CLASSES.values() for v in vs])),
        )
    )
    gaps = draw(
        st.one_of(
            st.lists(st.integers(min_value=1, max_value=10**9), min_size=len(values)),
            st.lists(st.sampled_from([4_999, 5_000, 5_001, 10_000]), min_size=len(values)),
        )
    )
    start = draw(st.integers(min_value=-(10**13), max_value=10**13))
    ts = [start]
    for gap in gaps[: max(len(values) - 1, 0)]:
        ts.append(ts[-1] + gap)
    return int_array(ts[: len(values)]), float_array(values)


@given(raw_series())
def test_random_series_round_trip_in_raw_blocks(data: tuple[IntArray, FloatArray]) -> None:
    round_trip_raw(*data)


@given(raw_series())
def test_random_series_round_trip_in_minute_blocks(data: tuple[IntArray, FloatArray]) -> None:
    # A minute whose sum is past the float64 range keeps the largest float as its sum
    # (points.total): a limit of the rollups, not of the block format.
    assume(all(abs(v) < 1e306 for v in data[1]))
    round_trip_minutes(*data)


@given(raw_series(), st.sets(st.integers(0, 5)), st.sampled_from([1, 2, 3]))
def test_decoding_some_minute_columns_gives_them_bit_for_bit(
    data: tuple[IntArray, FloatArray], wanted: set[int], version: int
) -> None:
    """The columns asked for are those a full decode gives; the others are zeros."""
    ts, values = data
    assume(all(abs(v) < 1e306 for v in values))
    columns = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS)).columns()
    blob = blocks.encode(columns, version=version)
    got = blocks.decode_minutes(blob, wanted)
    for index, (column, stored) in enumerate(zip(got, columns, strict=True)):
        assert column.typecode == stored.typecode
        expected = stored if index in wanted else blocks.placeholder(stored.typecode, len(stored))
        assert bits(column) == bits(expected)


@given(raw_series(), st.sets(st.integers(0, 1)), st.booleans())
def test_decoding_some_raw_columns_gives_them_bit_for_bit(
    data: tuple[IntArray, FloatArray], wanted: set[int], compress: bool
) -> None:
    ts, values = data
    blob = blocks.encode_raw(ts, values, compress=compress)
    got_ts, got_values = blocks.decode(blob, blocks.RAW_COLUMNS, wanted)
    assert bits(got_ts) == bits(ts if 0 in wanted else int_array([0] * len(ts)))
    assert bits(got_values) == bits(values if 1 in wanted else float_array([0.0] * len(ts)))


def test_readers_get_ended_hours_minute_blocks_decoded_once() -> None:
    """Compressed blocks are remembered by their bytes; the open hour's are decoded anew."""
    ts = regular_ts(720)
    values = float_array(round(50 + (i * 7919 % 300) / 10, 1) for i in range(720))
    columns = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS)).columns()
    avg = frozenset((blocks.BUCKET, blocks.COUNT, blocks.SUM))
    for compress in (True, False):
        blob = blocks.encode(columns, compress=compress)
        first = blocks.read_minutes(blob, avg)
        again = blocks.read_minutes(bytes(bytearray(blob)), avg)  # equal bytes, another object
        assert [bits(c) for c in first] == [bits(c) for c in blocks.decode_minutes(blob, avg)]
        assert [bits(c) for c in again] == [bits(c) for c in first]
        assert (again is first) is compress
    with pytest.raises(StorageError, match="corrupt"):
        blocks.read_minutes(blocks.encode(columns)[:-3], avg)


def test_readers_get_ended_hours_raw_chunks_decoded_once() -> None:
    """As the minute blocks: compressed raw chunks are remembered by their bytes."""
    ts = regular_ts(720)
    values = float_array(round(50 + (i * 7919 % 300) / 10, 1) for i in range(720))
    for compress in (True, False):
        blob = blocks.encode_raw(ts, values, compress=compress)
        first = blocks.read_raw(blob)
        again = blocks.read_raw(bytes(bytearray(blob)))  # equal bytes, another object
        assert [bits(c) for c in first] == [bits(ts), bits(values)]
        assert [bits(c) for c in again] == [bits(c) for c in first]
        assert (again is first) is compress
    with pytest.raises(StorageError, match="corrupt"):
        blocks.read_raw(blocks.encode_raw(ts, values)[:-3])


# --------------------------------------------------------------------------- what is stored


def test_compressed_blocks_are_version_3_and_uncompressed_ones_version_1() -> None:
    ts, values = regular_ts(3), float_array([1.0, 2.0, 3.0])
    assert blocks.encode_raw(ts, values)[:2] == bytes([3, blocks.FLAG_ZLIB])
    assert blocks.encode_raw(ts, values, compress=False)[:2] == bytes([1, 0])
    assert blocks.encode((ts, values), version=1)[:2] == bytes([1, blocks.FLAG_ZLIB])
    assert blocks.encode((ts, values), version=2)[:2] == bytes([2, blocks.FLAG_ZLIB])
    with pytest.raises(ValueError, match="unknown block format 4"):
        blocks.encode((ts, values), version=4)


@pytest.mark.parametrize("name", sorted(FLOAT_CLASSES))
def test_version_2_blocks_still_decode(name: str) -> None:
    """Compaction wrote version 2 before version 3: those blocks stay readable."""
    values = float_array(FLOAT_CLASSES[name])
    ts = regular_ts(len(values))
    got_ts, got_values = blocks.decode_raw(blocks.encode((ts, values), version=2))
    assert (bits(got_ts), bits(got_values)) == (bits(ts), bits(values))


@given(raw_series())
def test_random_series_round_trip_in_version_2(data: tuple[IntArray, FloatArray]) -> None:
    ts, values = data
    got_ts, got_values = blocks.decode_raw(blocks.encode((ts, values), version=2))
    assert (bits(got_ts), bits(got_values)) == (bits(ts), bits(values))


def minute_sums_of_percentages() -> FloatArray:
    """Sums of twelve one-decimal values: a few units in the last place off any decimal."""
    percent = [round(50 + 30 * math.sin(i / 40) + (i * 7919 % 13) / 10, 1) for i in range(2880)]
    return float_array(sum(percent[i : i + 12]) for i in range(0, 2880, 12))


def test_nearly_decimal_sums_are_stored_smaller_than_their_raw_bits() -> None:
    sums = minute_sums_of_percentages()
    assert any(round(v, 1) != v for v in sums), "the data must not be exactly decimal"
    ts = regular_ts(len(sums))
    v2, v3 = (blocks.encode((ts, sums), version=v) for v in (2, 3))
    assert len(v3) * 4 < len(v2) * 3, (len(v3), len(v2))
    round_trip_raw(ts, sums)


@pytest.mark.parametrize(
    "spoiler",
    [-0.0, math.pi, 2.0**60, sys.float_info.max, SUBNORMAL],
    ids=["negative-zero", "pi", "past-2**53", "huge", "subnormal"],
)
def test_a_value_no_scale_comes_near_keeps_a_nearly_decimal_column_lossless(
    spoiler: float,
) -> None:
    sums = minute_sums_of_percentages()
    for at in (0, len(sums) // 2, len(sums) - 1):
        values = float_array(sums)
        values[at] = spoiler
        round_trip_raw(regular_ts(len(values)), values)


nearly_decimal = st.lists(
    st.builds(
        lambda ns, k: math.fsum(n / 10**k for n in ns),
        st.lists(st.integers(min_value=-(10**6), max_value=10**6), min_size=1, max_size=12),
        st.integers(min_value=0, max_value=6),
    ),
    max_size=200,
)


@given(nearly_decimal)
def test_random_nearly_decimal_columns_round_trip(values: list[float]) -> None:
    round_trip_raw(regular_ts(len(values)), float_array(values))


def test_version_1_blocks_as_older_releases_wrote_them_still_decode() -> None:
    ts, values = regular_ts(720), float_array(round(i * 0.37, 2) for i in range(720))
    payload = ts.tobytes() + values.tobytes()  # little-endian machines: as written before
    for blob in (
        struct.pack("<BBI", 1, 1, 720) + zlib.compress(payload, 1),
        struct.pack("<BBI", 1, 0, 720) + payload,
    ):
        got_ts, got_values = blocks.decode_raw(blob)
        assert (bits(got_ts), bits(got_values)) == (bits(ts), bits(values))


def test_an_hour_of_collector_data_is_several_times_smaller_than_version_1() -> None:
    """Regular timestamps cost a few bytes; one-decimal percentages about a byte each."""
    ts = regular_ts(720)
    percent = float_array(
        round(50 + 30 * math.sin(i / 40) + (i * 7919 % 13) / 10, 1) for i in range(720)
    )
    v1 = blocks.encode((ts, percent), version=1)
    v2 = blocks.encode_raw(ts, percent)
    assert len(v2) * 3 < len(v1)
    only_ts = blocks.encode_raw(ts, float_array([0.0] * 720))
    assert len(only_ts) < 64


# --------------------------------------------------------------------------- corrupt blocks


def v2_blob(count: int, payload: bytes) -> bytes:
    return struct.pack("<BBI", 2, blocks.FLAG_ZLIB, count) + zlib.compress(payload)


def v3_blob(count: int, payload: bytes) -> bytes:
    deflate = zlib.compressobj(wbits=-15)
    deflated = deflate.compress(payload) + deflate.flush()
    return struct.pack("<BBI", 3, blocks.FLAG_ZLIB, count) + deflated


def column(scale: int, mode: int, code: bytes, rest: bytes = b"") -> bytes:
    return struct.pack("<BBc", scale, mode, code) + rest


REGULAR_TS = column(0, 0, b"q", struct.pack("<qq", 0, 5_000))


CORRUPT_V2 = dict(
    zip(
        [
            "missing-column",
            "short",
            "long",
            "bad-mode",
            "bad-typecode",
            "bad-scale",
            "scaled-int-column",
            "raw-bits-int-column",
            "int64-overflow",
            "not-compressed",
        ],
        [
            v2_blob(2, REGULAR_TS),  # the value column is missing
            v2_blob(2, REGULAR_TS + column(0, 2, b"b", b"\x01")),  # one value short
            v2_blob(2, REGULAR_TS + column(0, 2, b"b", b"\x01\x02\x03")),  # one too many
            v2_blob(2, REGULAR_TS + column(0, 7, b"b", b"\x01\x02")),  # unknown mode
            v2_blob(2, REGULAR_TS + column(0, 2, b"x", b"\x01\x02")),  # unknown typecode
            v2_blob(2, REGULAR_TS + column(16, 2, b"b", b"\x01\x02")),  # scale out of range
            v2_blob(
                2, column(3, 0, b"q", struct.pack("<qq", 0, 1)) + column(0, 2, b"b", b"\x01\x02")
            ),
            v2_blob(2, column(255, 2, b"q", bytes(16)) + column(0, 2, b"b", b"\x01\x02")),
            v2_blob(2, column(0, 1, b"q", struct.pack("<q", 2**63 - 1) + struct.pack("<q", 1))),
            struct.pack("<BBI", 2, 1, 2) + b"not zlib",
        ],
        strict=True,
    )
)
"""Version 2 raw blocks damaged in each way a reader checks."""


@pytest.mark.parametrize("blob", CORRUPT_V2.values(), ids=CORRUPT_V2.keys())
def test_corrupt_version_2_blocks_are_reported(blob: bytes) -> None:
    with pytest.raises(StorageError, match="corrupt"):
        blocks.decode_raw(blob)


NEARLY = 0x80


def shuffled_int64(*numbers: int) -> bytes:
    data = struct.pack(f"<{len(numbers)}q", *numbers)
    return b"".join(data[i::8] for i in range(8))


CORRUPT_V3 = dict(
    zip(
        ["missing-differences", "short-differences", "past-int64", "nearly-ints", "zlib", "junk"],
        [
            # nearly scaled values whose column of bit differences is missing
            v3_blob(2, REGULAR_TS + column(NEARLY | 1, 2, b"b", b"\x01\x02")),
            # the differences one short
            v3_blob(
                2,
                REGULAR_TS + column(NEARLY | 1, 2, b"b", b"\x01\x02") + column(0, 2, b"b", b"\x01"),
            ),
            # differences carrying a value past int64
            v3_blob(
                2,
                REGULAR_TS
                + column(NEARLY | 1, 2, b"b", b"\x01\x02")
                + column(0, 2, b"q", shuffled_int64(2**63 - 1, 2**63 - 1)),
            ),
            # a nearly scaled timestamp column
            v3_blob(
                2,
                column(NEARLY, 0, b"q", struct.pack("<qq", 0, 1)) + column(0, 2, b"b", b"\x01\x02"),
            ),
            # a version 3 payload in a zlib stream, or no stream at all
            v2_blob(2, REGULAR_TS + column(0, 2, b"b", b"\x01\x02")).replace(b"\x02", b"\x03", 1),
            struct.pack("<BBI", 3, 1, 2) + b"not deflate",
        ],
        strict=True,
    )
)


@pytest.mark.parametrize("blob", CORRUPT_V3.values(), ids=CORRUPT_V3.keys())
def test_corrupt_version_3_blocks_are_reported(blob: bytes) -> None:
    with pytest.raises(StorageError, match="corrupt"):
        blocks.decode_raw(blob)


VALUE_DAMAGE = {"int64-overflow", "past-int64"}
"""Damage only decoding the values shows: a skipped column's is not seen."""
CORRUPT_LAYOUT = {
    name: blob for name, blob in (CORRUPT_V2 | CORRUPT_V3).items() if name not in VALUE_DAMAGE
} | {
    "v1-short": blocks.encode((regular_ts(2), float_array([1.0, 2.0])), compress=False)[:-1],
    "v1-long": blocks.encode((regular_ts(2), float_array([1.0, 2.0])), compress=False) + b"\0",
}


@pytest.mark.parametrize("wanted", [(), (0,), (1,)], ids=["none", "ts", "values"])
@pytest.mark.parametrize("blob", CORRUPT_LAYOUT.values(), ids=CORRUPT_LAYOUT.keys())
def test_corrupt_blocks_are_reported_when_only_some_columns_are_decoded(
    blob: bytes, wanted: tuple[int, ...]
) -> None:
    """Skipping a column still checks its descriptor and length, and the block's."""
    with pytest.raises(StorageError, match="corrupt"):
        blocks.decode(blob, blocks.RAW_COLUMNS, wanted)


def test_a_nearly_scaled_column_is_refused_in_version_2() -> None:
    """The flag means nothing before version 3: a scale past 15."""
    payload = REGULAR_TS + column(NEARLY | 1, 2, b"b", b"\x01\x02") + column(0, 2, b"b", bytes(2))
    assert blocks.decode_raw(v3_blob(2, payload))[1].tolist() == [0.1, 0.2]
    with pytest.raises(StorageError, match="bad scale"):
        blocks.decode_raw(v2_blob(2, payload))


# --------------------------------------------------------------------------- in a store

HOUR = datetime(2025, 3, 1, 10, tzinfo=UTC)


def test_chunks_stored_in_version_1_keep_working_and_are_rewritten_in_version_3(
    storage: SqlStorage,
) -> None:
    """An existing database needs no migration: reads and compaction dispatch on the version."""
    write = storage.metrics.write
    write([MachineSamples("m1", [Sample(HOUR, [Reading("cpu.percent", 1.5)])])])
    storage.metrics.maintain(HOUR + timedelta(hours=2))
    with storage.db.read() as conn:
        (sid,) = conn.execute(sa.select(series.c.id)).scalars()
    # The chunk as an older release left it: a whole hour, version 1 blocks.
    ts = int_array(range(to_ms(HOUR), to_ms(HOUR) + CHUNK_MS, 5_000))
    values = float_array(round(i * 0.1, 1) for i in range(len(ts)))
    minutes = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS)).columns()
    c = metric_chunks.c
    with storage.db.write() as conn:
        conn.execute(
            sa.update(metric_chunks)
            .where(c.series_id == sid)
            .values(
                raw=blocks.encode((ts, values), version=1),
                minutes=blocks.encode(minutes, version=1),
            )
        )

    def day(step: timedelta) -> list[tuple[datetime, float]]:
        end = HOUR + timedelta(hours=1)
        query = HistoryQuery("m1", "cpu.percent", HOUR, end, step, Aggregation.MAX)
        (answer,) = storage.metrics.history(query)
        return [(p.timestamp, p.value) for p in answer.points]

    # 450 s steps are answered from the raw points, 5 min ones from the minute rollups.
    before_raw, before_minutes = day(timedelta(seconds=450)), day(timedelta(minutes=5))
    assert before_raw[-1] == (HOUR + timedelta(minutes=52, seconds=30), 71.9)
    assert before_minutes[0] == (HOUR, 5.9)

    # A late point in the gap between two stored ones is merged into the chunk.
    late = HOUR + timedelta(minutes=30, seconds=2)
    write([MachineSamples("m1", [Sample(late, [Reading("cpu.percent", 1000.0)])])])
    storage.metrics.maintain(HOUR + timedelta(hours=2))
    with storage.db.read() as conn:
        raw, minute_blob = conn.execute(sa.select(c.raw, c.minutes)).one()
    # Rewritten as compaction now writes a chunk whose raw points are kept:
    # no minute blob, the reads below derive the minutes from the raw points.
    assert (raw[0], minute_blob) == (blocks.FORMAT_VERSION, None)
    merged_ts, merged_values = blocks.decode_raw(raw)
    assert len(merged_ts) == len(ts) + 1
    assert merged_values[list(merged_ts).index(to_ms(late))] == 1000.0
    assert day(timedelta(minutes=5))[6] == (HOUR + timedelta(minutes=30), 1000.0)
    assert day(timedelta(minutes=5))[:6] == before_minutes[:6]
    assert day(timedelta(seconds=450))[4] == (HOUR + timedelta(minutes=30), 1000.0)
