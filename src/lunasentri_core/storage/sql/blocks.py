"""Packed blocks: parallel numeric columns stored as one compressed blob.

A block is a header (format version, flags, row count) followed by its columns.
The columns' types are fixed per kind of block, so they are not stored:

* a raw chunk holds ``ts`` (int64 ms) and ``value`` (float64);
* a minute-rollup chunk holds ``bucket`` and ``count`` (int64) and ``sum``,
  ``min``, ``max``, ``last`` (float64).

Three formats exist, told apart by the header's version byte; readers accept
all of them, so databases written by older releases keep working without a
migration:

* **version 1**: each column's values as little-endian machine numbers, the
  whole payload zlib-compressed when :data:`FLAG_ZLIB` is set. Compaction still
  writes it, uncompressed, for the chunk of the current hour, which it rewrites
  on every pass (copying arrays is the cheapest encoding there is).
* **version 2** (ended hours): each column is turned into integers first. A
  float column whose values are all ``n / 10**k`` exactly (what collectors
  report: percentages with a decimal, byte counts, load averages) is stored as
  the integers ``n`` and the scale ``k``; any other float column as its raw
  IEEE bits. Integers are stored as ``first, step`` when evenly spaced
  (timestamps every 5 s, constant gauges), else as differences from the
  previous value when those need fewer bytes (random walks, counters), else as
  they are; in the narrowest of 1, 2, 4 or 8 bytes that holds them, bytes
  shuffled (all first bytes, then all second bytes...) so that the slowly
  changing high bytes form long runs; then zlib (level 6). Each column
  starts with its descriptor, see :func:`_encode_column`.
* **version 3** (what compaction writes since): version 2's columns, plus
  *nearly scaled* floats: a float column that no scale turns into integers
  exactly but one turns into integers within a few units in the last place
  (minute sums of one-decimal percentages: ``0.1 + 0.2`` is not ``0.3``) is
  stored as those integers followed by a column of the differences between
  each value's IEEE bits and those of ``n / 10**k`` (mostly 0 and 1, which
  compress to almost nothing) instead of its raw bits. The payload is a raw
  deflate stream (no zlib header and checksum: six bytes a blob; the
  column descriptors and lengths already catch a damaged block).

Lossless by construction: the encoder decodes every scaled column and keeps the
scaling only when the result is bit for bit the input (``-0.0``, for one,
never is, and is stored as raw bits). Decoding stays in C for each point:
``zlib.decompress``, slice assignments, ``array`` conversions,
``itertools.accumulate`` and ``map`` over a bound method; no Python code runs
per point.
"""

from __future__ import annotations

import functools
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import accumulate
from operator import add, sub
from typing import Final, cast

from lunasentri_core.errors import StorageError
from lunasentri_core.storage.sql.points import (
    CHUNK_MS,
    FloatArray,
    IntArray,
    chunk_minutes,
    floor_to,
)

FORMAT_VERSION: Final = 3
"""What :func:`encode` writes for a compressed block."""
FORMAT_V2: Final = 2
"""Scaled, delta and shuffled columns in a zlib stream: compaction's format before version 3."""
FORMAT_V1: Final = 1
"""Plain columns: what :func:`encode` writes uncompressed, and every block before version 2."""
FLAG_ZLIB: Final = 0x01

RAW_COLUMNS: Final = ("q", "d")
"""``ts`` (ms since the epoch), ``value``."""
MINUTE_COLUMNS: Final = ("q", "q", "d", "d", "d", "d")
"""``bucket`` (ms), ``count``, ``sum``, ``min``, ``max``, ``last``."""
BUCKET, COUNT, SUM, MIN, MAX, LAST = range(6)
"""Indexes of :data:`MINUTE_COLUMNS`, for ``wanted`` in :func:`decode_minutes`."""

_HEADER = struct.Struct("<BBI")
_BIG_ENDIAN = sys.byteorder == "big"
# Version 1, level 1: nearly the ratio of level 6 on plain columns at a
# fraction of the cost. Version 2's transformed columns: level 6 compresses
# them a few percent better than level 1, and level 9 no better than 6.
_ZLIB_LEVEL_V1 = 1
_ZLIB_LEVEL = 6

# Version 2 column descriptor: scale, integer mode, integer typecode.
_DESCRIPTOR = struct.Struct("<BBc")
_INT64 = struct.Struct("<q")
_REGULAR: Final = 0
"""``first`` and ``step`` (two int64): evenly spaced values."""
_DELTA: Final = 1
"""``first`` (int64), then ``count - 1`` differences."""
_PLAIN: Final = 2
"""``count`` values."""
_RAW_FLOAT: Final = 255
"""Scale byte of a float column stored as its IEEE bits (integer mode plain, ``q``)."""
_MAX_SCALE: Final = 15
_NEARLY: Final = 0x80
"""Set in the scale byte (version 3): a column of IEEE-bit differences follows the integers."""
_MAX_RESIDUAL: Final = 1 << 8
"""Largest bit difference a nearly scaled column may have; more and raw bits are smaller."""
_RAW_DEFLATE: Final = -15
_EXACT: Final = 1 << 53
"""Integers below this convert to float64 exactly, so ``n / 10**k`` is exactly rounded."""
_NARROW: Final = (("b", 1 << 7), ("h", 1 << 15), ("i", 1 << 31), ("q", 1 << 63))
_TYPECODES: Final = {code.encode(): code for code, _ in _NARROW}
_SAMPLE: Final = 16
"""Values tried at each scale before the whole column is."""


def encode(
    columns: Sequence[IntArray | FloatArray],
    *,
    compress: bool = True,
    version: int = FORMAT_VERSION,
) -> bytes:
    """Pack equally long columns into one blob.

    Compressed blocks are written in :data:`FORMAT_VERSION` (``version=1`` or
    ``2`` give the older formats, for comparisons); uncompressed ones in version 1.
    """
    count = len(columns[0]) if columns else 0
    if any(len(column) != count for column in columns):
        raise ValueError("block columns must have the same length")
    if compress and version == FORMAT_VERSION:
        payload = b"".join(_encode_column(column, nearly=True) for column in columns)
        deflated = zlib.compress(payload, _ZLIB_LEVEL, wbits=_RAW_DEFLATE)
        return _HEADER.pack(FORMAT_VERSION, FLAG_ZLIB, count) + deflated
    if compress and version == FORMAT_V2:
        payload = b"".join(_encode_column(column, nearly=False) for column in columns)
        return _HEADER.pack(FORMAT_V2, FLAG_ZLIB, count) + zlib.compress(payload, _ZLIB_LEVEL)
    if version not in (FORMAT_V1, FORMAT_V2, FORMAT_VERSION):
        raise ValueError(f"unknown block format {version}")
    plain = b"".join(_little_endian(column) for column in columns)
    if not compress:
        return _HEADER.pack(FORMAT_V1, 0, count) + plain
    return _HEADER.pack(FORMAT_V1, FLAG_ZLIB, count) + zlib.compress(plain, _ZLIB_LEVEL_V1)


def decode(
    blob: bytes, typecodes: Sequence[str], wanted: Collection[int] | None = None
) -> list[IntArray | FloatArray]:
    """Unpack a blob written by :func:`encode` (any version) with the same column types.

    ``wanted``: the indexes of the columns to decode (all when ``None``); the
    others come back as :func:`placeholder` columns, skipped by their
    descriptors and lengths, which are checked as a full decode checks them.
    """
    try:
        version, flags, count = _HEADER.unpack_from(blob)
        if version not in (FORMAT_V1, FORMAT_V2, FORMAT_VERSION):
            raise ValueError(f"unknown block format {version}")
        payload = memoryview(blob)[_HEADER.size :]
        wbits = _RAW_DEFLATE if version == FORMAT_VERSION else zlib.MAX_WBITS
        data = zlib.decompress(payload, wbits) if flags & FLAG_ZLIB else bytes(payload)
        if version == FORMAT_V1:
            return _decode_v1(data, typecodes, count, wanted)
        return _decode_v2(data, typecodes, count, wanted, nearly=version == FORMAT_VERSION)
    except (struct.error, zlib.error, ValueError, OverflowError, KeyError) as exc:
        raise StorageError(f"a stored block of points is corrupt ({exc})") from exc


def placeholder(typecode: str, count: int) -> IntArray | FloatArray:
    """``count`` zeros: a column :func:`decode` was not asked for (never to be read)."""
    column: IntArray | FloatArray = array(typecode)
    column.frombytes(bytes(column.itemsize * count))
    return column


def encode_raw(ts: IntArray, values: FloatArray, *, compress: bool = True) -> bytes:
    return encode((ts, values), compress=compress)


def decode_raw(blob: bytes) -> tuple[IntArray, FloatArray]:
    ts, values = decode(blob, RAW_COLUMNS)
    return cast("IntArray", ts), cast("FloatArray", values)


def decode_minutes(
    blob: bytes, wanted: Collection[int] | None = None
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """The six minute-rollup columns; ``wanted`` as for :func:`decode` (indexes
    :data:`BUCKET` to :data:`LAST`): the others are zeros, not the stored values."""
    buckets, counts, *floats = decode(blob, MINUTE_COLUMNS, wanted)
    sums, mins, maxs, lasts = (cast("FloatArray", column) for column in floats)
    return cast("IntArray", buckets), cast("IntArray", counts), sums, mins, maxs, lasts


MINUTE_CACHE_BLOCKS: Final = 4096
"""Decoded minute blocks :func:`read_minutes` keeps (about 3 KB each for an hour of
minutes): a machine page's day of charts reads some 850."""


def read_minutes(
    blob: bytes, wanted: frozenset[int] | None = None
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """:func:`decode_minutes` for readers, which must not modify the columns.

    Compressed blocks (ended hours, which change only when a late point
    arrives) are remembered by their bytes, least recently used first out:
    the same bytes always decode to the same columns, so nothing needs
    invalidating. The open hour's uncompressed block, rewritten every few
    minutes, is decoded each time.
    """
    if _cacheable(blob):
        return _read_compressed_minutes(blob, wanted)
    return decode_minutes(blob, wanted)


_ZLIB_FLAG_BYTE: Final = bytes([FLAG_ZLIB])


def _cacheable(blob: bytes) -> bool:
    """A compressed block (an ended hour's) given as ``bytes``, hashable as a cache key."""
    return type(blob) is bytes and blob[1:2] == _ZLIB_FLAG_BYTE


@functools.lru_cache(maxsize=MINUTE_CACHE_BLOCKS)
def _read_compressed_minutes(
    blob: bytes, wanted: frozenset[int] | None
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    return decode_minutes(blob, wanted)


RAW_CACHE_BLOCKS: Final = 1024
"""Decoded raw chunks :func:`read_raw` keeps (about 12 KB each for an hour of points
every 5 s, 58 KB every second): a day of one series at raw resolution is 24."""


def read_raw(blob: bytes) -> tuple[IntArray, FloatArray]:
    """:func:`decode_raw` for readers, which must not modify the columns.

    As :func:`read_minutes`: compressed chunks (ended hours) are remembered by
    their bytes, least recently used first out; the open hour's uncompressed
    chunk is decoded each time.
    """
    if _cacheable(blob):
        return _read_compressed_raw(blob)
    return decode_raw(blob)


@functools.lru_cache(maxsize=RAW_CACHE_BLOCKS)
def _read_compressed_raw(blob: bytes) -> tuple[IntArray, FloatArray]:
    return decode_raw(blob)


MinuteColumns = tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]


def minutes_of_raw(blob: bytes) -> MinuteColumns:
    """The minute rollups of a raw chunk, as :func:`read_minutes` gives a minute
    block's: a chunk whose raw points are kept stores no minute block (its
    rollups would be a third of its bytes), readers derive them with the
    function compaction stores them with, so the answers are the same.

    Cached as :func:`read_minutes` (an ended hour's chunk by its bytes): a
    dashboard redraws the same day every few seconds, and deriving costs a raw
    decode and a rollup per minute where a minute block's decode was cheaper.
    """
    if _cacheable(blob):
        return _compressed_minutes_of_raw(blob)
    return _derive_minutes(blob)


def _derive_minutes(blob: bytes) -> MinuteColumns:
    ts, values = decode_raw(blob)
    if not ts:
        return chunk_minutes(ts, values, 0).columns()
    return chunk_minutes(ts, values, floor_to(ts[0], CHUNK_MS)).columns()


@functools.lru_cache(maxsize=MINUTE_CACHE_BLOCKS)
def _compressed_minutes_of_raw(blob: bytes) -> MinuteColumns:
    return _derive_minutes(blob)


# --------------------------------------------------------------------------- version 1


def _little_endian(column: IntArray | FloatArray) -> bytes:
    if _BIG_ENDIAN:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _from_little_endian(typecode: str, data: bytes) -> IntArray | FloatArray:
    column: IntArray | FloatArray = array(typecode)
    column.frombytes(data)
    if _BIG_ENDIAN:
        column.byteswap()
    return column


def _decode_v1(
    data: bytes, typecodes: Sequence[str], count: int, wanted: Collection[int] | None
) -> list[IntArray | FloatArray]:
    columns: list[IntArray | FloatArray] = []
    offset = 0
    for index, typecode in enumerate(typecodes):
        size = array(typecode).itemsize * count
        if offset + size > len(data):
            raise ValueError("block is shorter than its header says")
        if wanted is None or index in wanted:
            column = _from_little_endian(typecode, data[offset : offset + size])
        else:
            column = placeholder(typecode, count)
        columns.append(column)
        offset += size
    if offset != len(data):
        raise ValueError("block is longer than its header says")
    return columns


# --------------------------------------------------------------------------- versions 2 and 3


def _encode_column(column: IntArray | FloatArray, *, nearly: bool) -> bytes:
    """One column: descriptor (scale, mode, typecode), its int64 fields, shuffled integers.

    ``nearly`` (version 3) allows a nearly scaled float column: the scale byte
    has :data:`_NEARLY` set and the column of bit differences follows.
    """
    if column.typecode == "d":
        floats = cast("FloatArray", column)
        scaled = _scaled(floats)
        if scaled is None:
            raw = _DESCRIPTOR.pack(_RAW_FLOAT, _PLAIN, b"q") + _shuffle(_bits(floats))
            near = _nearly_scaled(floats) if nearly else None
            if near is None:
                return raw
            scale, ints, residuals = near
            encoded = _encode_ints(_NEARLY | scale, ints) + _encode_ints(0, residuals)
            # Values with many digits scale to large integers: their raw bits may compress better.
            return min(encoded, raw, key=_compressed_size)
        scale, ints = scaled
    else:
        scale, ints = 0, list(cast("IntArray", column))
    return _encode_ints(scale, ints)


def _encode_ints(scale: int, ints: list[int]) -> bytes:
    if not ints:
        return _DESCRIPTOR.pack(scale, _PLAIN, b"b")
    first = ints[0]
    deltas = list(map(sub, ints[1:], ints))
    if not deltas or min(deltas) == max(deltas):
        step = deltas[0] if deltas else 0
        if _narrow(step) is not None:
            header = _DESCRIPTOR.pack(scale, _REGULAR, b"q")
            return header + _INT64.pack(first) + _INT64.pack(step)
    plain = _narrow(max(ints), min(ints))
    delta = _narrow(max(deltas), min(deltas))
    if delta is not None and (plain is None or array(delta).itemsize < array(plain).itemsize):
        header = _DESCRIPTOR.pack(scale, _DELTA, delta.encode())
        return header + _INT64.pack(first) + _shuffle(array(delta, deltas))
    assert plain is not None, "int64 columns and scaled floats fit in 8 bytes"
    return _DESCRIPTOR.pack(scale, _PLAIN, plain.encode()) + _shuffle(array(plain, ints))


def _narrow(*bounds: int) -> str | None:
    """The narrowest typecode holding every one of ``bounds``; ``None`` past int64."""
    for typecode, limit in _NARROW:
        if all(-limit <= b < limit for b in bounds):
            return typecode
    return None


def _scaled(values: FloatArray) -> tuple[int, list[int]] | None:
    """``(k, ints)`` with ``ints[i] / 10**k`` bit for bit ``values[i]``, smallest ``k``; or None."""
    if not values:
        return 0, []
    raw = values.tobytes()
    sample = values[:_SAMPLE]
    for scale in range(_MAX_SCALE + 1):
        # 10**scale is exact as a float up to 10**22: the same product as with the int.
        factor = float(10**scale).__mul__
        try:
            guess = list(map(round, map(factor, sample)))
            if _unscale(scale, guess, len(guess)).tobytes() != sample.tobytes():
                continue
            ints = list(map(round, map(factor, values)))
        except (OverflowError, ValueError, struct.error):  # inf or NaN: the model refuses them
            return None
        if max(ints) >= _EXACT or min(ints) <= -_EXACT:
            return None  # larger scales only make larger integers
        if _unscale(scale, ints, len(ints)).tobytes() == raw:
            return scale, ints
    return None


def _nearly_scaled(values: FloatArray) -> tuple[int, list[int], list[int]] | None:
    """``(k, ints, residuals)``: ``bits(values[i]) == bits(ints[i] / 10**k) + residuals[i]``.

    The smallest ``k`` whose residuals stay within :data:`_MAX_RESIDUAL`; None
    when there is none (full-precision values, ``-0.0``, values past 2**53 units).
    """
    sample = values[:_SAMPLE]
    for scale in range(_MAX_SCALE + 1):
        found = _residuals(scale, sample)
        if found is not None and len(sample) < len(values):
            found = _residuals(scale, values)
        if found is not None:
            return scale, *found
    return None


def _residuals(scale: int, values: FloatArray) -> tuple[list[int], list[int]] | None:
    factor = float(10**scale).__mul__
    try:
        ints = list(map(round, map(factor, values)))
    except (OverflowError, ValueError):  # inf or NaN
        return None
    if max(ints) >= _EXACT or min(ints) <= -_EXACT:
        return None
    residuals = list(map(sub, _bits(values), _bits(_unscale(scale, ints, len(ints)))))
    if max(residuals) > _MAX_RESIDUAL or min(residuals) < -_MAX_RESIDUAL:
        return None
    return ints, residuals


def _compressed_size(data: bytes) -> int:
    return len(zlib.compress(data, 1))


def _bits(values: FloatArray) -> IntArray:
    """The same 8 bytes of each value, read as an integer."""
    bits: IntArray = array("q")
    bits.frombytes(values.tobytes())
    return bits


def _unscale(scale: int, ints: Iterable[int], count: int) -> FloatArray:
    """The ``count`` floats ``n / 10**scale``: exactly rounded, since ``|n| < 2**53``."""
    if scale == 0:
        return cast("FloatArray", _packed_array("d", count, ints))
    divide: Callable[[int], float] = float(10**scale).__rtruediv__
    return cast("FloatArray", _packed_array("d", count, map(divide, ints)))


def _packed_array(typecode: str, count: int, numbers: Iterable[float]) -> IntArray | FloatArray:
    """An array of exactly ``count`` numbers (struct packs a third faster than ``array(list)``)."""
    column: IntArray | FloatArray = array(typecode)
    column.frombytes(struct.pack(f"={count}{typecode}", *numbers))
    return column


def _shuffle(column: IntArray) -> bytes:
    data = _little_endian(column)
    width = column.itemsize
    if width == 1:
        return data
    return b"".join(data[i::width] for i in range(width))


def _unshuffle(data: bytes, width: int) -> bytes:
    if width == 1:
        return data
    out = bytearray(len(data))
    n = len(data) // width
    for i in range(width):
        out[i::width] = data[i * n : (i + 1) * n]
    return bytes(out)


def _decode_v2(
    data: bytes,
    typecodes: Sequence[str],
    count: int,
    wanted: Collection[int] | None,
    *,
    nearly: bool,
) -> list[IntArray | FloatArray]:
    columns: list[IntArray | FloatArray] = []
    offset = 0
    for index, typecode in enumerate(typecodes):
        if wanted is None or index in wanted:
            column, offset = _decode_column(data, offset, typecode, count, nearly=nearly)
        else:
            offset = _skip_column(data, offset, typecode, count, nearly=nearly)
            column = placeholder(typecode, count)
        columns.append(column)
    if offset != len(data):
        raise ValueError("block is longer than its header says")
    return columns


def _decode_column(
    data: bytes, offset: int, typecode: str, count: int, *, nearly: bool
) -> tuple[IntArray | FloatArray, int]:
    scale, mode, code = _DESCRIPTOR.unpack_from(data, offset)
    if scale == _RAW_FLOAT:
        if typecode != "d" or mode != _PLAIN or code != b"q":
            raise ValueError("raw bits in a column that cannot hold them")
        end = offset + _DESCRIPTOR.size + 8 * count
        raw = data[offset + _DESCRIPTOR.size : end]
        return _from_little_endian("d", _unshuffle(raw, 8)), _checked(end, data)
    if nearly and scale & _NEARLY and typecode == "d":
        return _decode_nearly(data, offset, count)
    return _decode_ints(data, offset, typecode, count)


def _skip_column(data: bytes, offset: int, typecode: str, count: int, *, nearly: bool) -> int:
    """Where the column at ``offset`` ends, with the checks :func:`_decode_column` makes."""
    scale, mode, code = _DESCRIPTOR.unpack_from(data, offset)
    if scale == _RAW_FLOAT:
        if typecode != "d" or mode != _PLAIN or code != b"q":
            raise ValueError("raw bits in a column that cannot hold them")
        return _checked(offset + _DESCRIPTOR.size + 8 * count, data)
    if nearly and scale & _NEARLY and typecode == "d":
        offset = _skip_ints(data, offset, "d", count, nearly_bit=_NEARLY)
        return _skip_ints(data, offset, "q", count)
    return _skip_ints(data, offset, typecode, count)


def _skip_ints(data: bytes, offset: int, typecode: str, count: int, nearly_bit: int = 0) -> int:
    scale, mode, code = _DESCRIPTOR.unpack_from(data, offset)
    scale ^= nearly_bit
    offset += _DESCRIPTOR.size
    width = array(_TYPECODES[code]).itemsize
    if scale > _MAX_SCALE or (scale and typecode != "d"):
        raise ValueError(f"bad scale {scale}")
    if mode == _REGULAR:
        return _checked(offset + 16, data)
    if mode == _DELTA:
        return _checked(offset + 8 + width * (count - 1 if count else 0), data)
    if mode == _PLAIN:
        return _checked(offset + width * count, data)
    raise ValueError(f"bad column mode {mode}")


def _decode_nearly(data: bytes, offset: int, count: int) -> tuple[FloatArray, int]:
    """A nearly scaled column: the scaled floats' bits plus the residuals after them."""
    approx, offset = _decode_ints(data, offset, "d", count, nearly_bit=_NEARLY)
    residuals, offset = _decode_ints(data, offset, "q", count)
    exact = _packed_array("q", count, map(add, _bits(cast("FloatArray", approx)), residuals))
    values: FloatArray = array("d")
    values.frombytes(exact.tobytes())
    return values, offset


def _decode_ints(
    data: bytes, offset: int, typecode: str, count: int, nearly_bit: int = 0
) -> tuple[IntArray | FloatArray, int]:
    scale, mode, code = _DESCRIPTOR.unpack_from(data, offset)
    scale ^= nearly_bit
    offset += _DESCRIPTOR.size
    narrow = _TYPECODES[code]
    if scale > _MAX_SCALE or (scale and typecode != "d"):
        raise ValueError(f"bad scale {scale}")
    ints: Iterable[int]
    if mode == _REGULAR:
        first, step = _INT64.unpack_from(data, offset)[0], _INT64.unpack_from(data, offset + 8)[0]
        offset += 16
        ints = range(first, first + step * count, step) if step else [first] * count
    elif mode == _DELTA:
        first = _INT64.unpack_from(data, offset)[0]
        offset += 8
        deltas, offset = _packed(data, offset, narrow, count - 1 if count else 0)
        ints = accumulate(deltas, initial=first) if count else ()
    elif mode == _PLAIN:
        ints, offset = _packed(data, offset, narrow, count)
    else:
        raise ValueError(f"bad column mode {mode}")
    if typecode == "q":
        return _packed_array("q", count, ints), offset
    return _unscale(scale, ints, count), offset


def _packed(data: bytes, offset: int, typecode: str, count: int) -> tuple[IntArray, int]:
    width = array(typecode).itemsize
    end = _checked(offset + width * count, data)
    column = _from_little_endian(typecode, _unshuffle(data[offset:end], width))
    return cast("IntArray", column), end


def _checked(end: int, data: bytes) -> int:
    if end > len(data):
        raise ValueError("block is shorter than its header says")
    return end
