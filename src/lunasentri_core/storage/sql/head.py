"""The head: samples written and not compacted yet, one row per sample.

A row of ``samples_head`` holds one sample of one machine: its timestamp, its
series ids and their values as two packed arrays (little-endian int64 and
float64). Storing a sample instead of each of its points is what makes a write
cheap: SQLite's cost is per row (a B-tree insert and a record to encode), and a
sample holds tens of points. Reading a series back out of the head unpacks its
machine's rows in the range; compaction turns them into per-series chunks.

Rows are never updated. A point written twice (an agent retrying a request)
is stored twice; everything that reads the head takes the earliest row's value
(lowest ``seq``), so the first value written wins, as it does in chunks.
"""

from __future__ import annotations

import struct
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from itertools import islice, repeat
from operator import lt
from typing import Final

from lunasentri_core.errors import StorageError
from lunasentri_core.model import Labels, MachineSamples, reading_columns
from lunasentri_core.storage.sql.points import FloatArray, IntArray, float_array, int_array
from lunasentri_core.storage.sql.schema import EPOCH

_MS: Final = timedelta(milliseconds=1)
_BIG_ENDIAN: Final = sys.byteorder == "big"

SeriesIds = dict[tuple[str, Labels], int]
"""One machine's series ids by ``(metric, labels)``."""

Columns = tuple[list[int], list[int], list[float]]
Latest = list[tuple[str, Columns]]
"""Each machine's newest point per series, by machine id (:func:`latest_points` each)."""
HeadRow = tuple[str, int, bytes, bytes]
"""``(machine_id, ts, series_ids, series_values)``: a row of ``samples_head`` to insert."""


# --------------------------------------------------------------------------- packing


def _pack(column: IntArray | FloatArray) -> bytes:
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def pack_series_ids(sids: Sequence[int]) -> bytes:
    return _pack(int_array(sids))


_FLOATS: dict[int, struct.Struct] = {}
"""Little-endian float64 packers by count: half the time of an ``array`` and its bytes."""
_FLOATS_KEPT: Final = 256


def pack_values(values: Sequence[float]) -> bytes:
    packer = _FLOATS.get(len(values))
    if packer is None:
        packer = struct.Struct(f"<{len(values)}d")
        if len(_FLOATS) < _FLOATS_KEPT:
            _FLOATS[len(values)] = packer
    return packer.pack(*values)


def unpack_sample(sids_blob: bytes, values_blob: bytes) -> tuple[IntArray, FloatArray]:
    """A head row's series ids and values; :class:`StorageError` when they do not pair up."""
    sids, values = int_array(), float_array()
    try:
        sids.frombytes(sids_blob)
        values.frombytes(values_blob)
    except ValueError as exc:
        raise StorageError(f"a stored sample in the head is corrupt ({exc})") from exc
    if len(sids) != len(values):
        raise StorageError(
            f"a stored sample in the head is corrupt ({len(sids)} series, {len(values)} values)"
        )
    if _BIG_ENDIAN:
        sids.byteswap()
        values.byteswap()
    return sids, values


# --------------------------------------------------------------------------- writing


def build_rows(
    batch: Sequence[MachineSamples], ids: Mapping[str, Mapping[tuple[str, Labels], int]]
) -> tuple[list[HeadRow], Latest, int] | None:
    """The head rows of a batch, each machine's newest point per series, and the
    number of points.

    ``None`` when a series is not in ``ids``. This is the hot path of ingest: one
    dict lookup per reading; everything else works on whole samples in C.
    """
    by_machine: dict[str, list[tuple[int, list[int], Sequence[float]]]] = {}
    rows: list[HeadRow] = []
    points = 0
    for ms in batch:
        samples = by_machine.setdefault(ms.machine_id, [])
        known = ids.get(ms.machine_id)
        # A machine's samples usually repeat their series, often with the very
        # same keys (decoded bodies share them): look up and pack ids once.
        last_keys: object = None
        sids: list[int] = []
        packed = b""
        for sample in ms.samples:
            readings = sample.readings
            if not readings:
                continue
            if known is None:
                return None
            keys, values = reading_columns(readings)
            # Samples built by hand have keys of their own, usually equal to the
            # previous sample's: comparing them costs a fraction of looking them up.
            if keys is not last_keys and keys != last_keys:
                try:
                    found = [known[key] for key in keys]
                except KeyError:
                    return None
                if found != sids:
                    sids, packed = found, pack_series_ids(found)
            last_keys = keys
            ts = (sample.timestamp - EPOCH) // _MS
            samples.append((ts, sids, values))
            rows.append((ms.machine_id, ts, packed, pack_values(values)))
            points += len(sids)
    latest = [
        (machine_id, latest_points(samples))
        for machine_id, samples in sorted(by_machine.items())
        if samples
    ]
    return rows, latest, points


def latest_points(samples: list[tuple[int, list[int], Sequence[float]]]) -> Columns:
    """Per series, the newest point as ``(series_id, ts, value)`` columns, by series id.

    On equal timestamps the first one in the batch wins. Sorted: concurrent
    writers on PostgreSQL then lock the rows they share in one order and wait
    for each other instead of deadlocking (sorting the ids here costs a tenth
    of sorting the finished rows).
    """
    newest: dict[int, int] = {}
    value: dict[int, float] = {}
    # Later updates overwrite earlier ones, so visit from least to most
    # preferred: oldest first and, among equal timestamps, last written first.
    order = sorted(_run_heads(samples), key=lambda i: (samples[i][0], -i))
    for i in order:
        ts, sids, values = samples[i]
        newest.update(zip(reversed(sids), repeat(ts), strict=False))
        value.update(zip(reversed(sids), reversed(values), strict=True))
    sids = sorted(newest)
    return sids, [newest[sid] for sid in sids], [value[sid] for sid in sids]


def _run_heads(samples: list[tuple[int, list[int], Sequence[float]]]) -> list[int]:
    """Of each run of consecutive samples with the same series, the one preferred.

    A machine's samples usually have the same series in the same order, and
    then only the newest of them (the first among equal timestamps) can hold a
    series' newest point: one list comparison per sample instead of two
    dictionary updates per point.
    """
    heads: list[int] = []
    previous: list[int] | None = None
    for i, (ts, sids, _) in enumerate(samples):
        if sids != previous:
            heads.append(i)
            previous = sids
        elif ts > samples[heads[-1]][0]:
            heads[-1] = i
    return heads


# --------------------------------------------------------------------------- reading


def series_points(
    rows: Iterable[tuple[int, bytes, bytes]], wanted: Iterable[int] | None = None
) -> dict[int, tuple[IntArray, FloatArray]]:
    """Each series' points in head rows ``(ts, series_ids, series_values)`` given in write order.

    Only the series in ``wanted`` (all when ``None``). Columns come out sorted
    by time with one point per timestamp: the first row's.
    """
    want = None if wanted is None else set(wanted)
    found: dict[int, list[tuple[int, float]]] = defaultdict(list)
    # Rows of one machine share their packed ids: find the wanted positions
    # once per layout.
    layouts: dict[bytes, list[tuple[int, int]]] = {}
    for ts, sids_blob, values_blob in rows:
        sids, values = unpack_sample(sids_blob, values_blob)
        layout = layouts.get(sids_blob)
        if layout is None:
            layout = layouts[sids_blob] = [
                (i, sid) for i, sid in enumerate(sids) if want is None or sid in want
            ]
        for i, sid in layout:
            found[sid].append((ts, values[i]))
    return {sid: first_points(points) for sid, points in found.items()}


def series_columns(
    rows: Sequence[tuple[int, bytes, bytes]], wanted: Iterable[int] | None = None
) -> dict[int, tuple[IntArray, FloatArray]]:
    """:func:`series_points` of the series ``wanted`` (all when ``None``), in bulk
    where the rows allow.

    The rows of one layout (packed ids) form a matrix: their values joined are
    read as one array, and a series' column is every ``width``-th value from
    its position, a slice in C. That is the answer for a series found in one
    layout whose rows come in increasing time (an agent's samples as it sends
    them); any other series (in several layouts, or a point stored twice) and
    any damaged row go through :func:`series_points`.
    """
    want = None if wanted is None else set(wanted)
    groups: dict[bytes, tuple[list[int], list[bytes]]] = {}
    for ts, sids_blob, values_blob in rows:
        group = groups.get(sids_blob)
        if group is None:
            group = groups[sids_blob] = ([], [])
        group[0].append(ts)
        group[1].append(values_blob)
    found: dict[int, tuple[IntArray, FloatArray]] = {}
    slow: set[int] = set()
    for sids_blob, (stamps, blobs) in groups.items():
        sids = int_array()
        width = len(sids_blob) // sids.itemsize
        if len(sids_blob) % sids.itemsize or any(len(b) != width * 8 for b in blobs):
            return series_points(rows, want)  # which says what is damaged
        sids.frombytes(sids_blob)
        if _BIG_ENDIAN:
            sids.byteswap()
        mine = [(i, sid) for i, sid in enumerate(sids) if want is None or sid in want]
        if not mine:
            continue
        ordered = all(map(lt, stamps, islice(stamps, 1, None)))
        values = float_array()
        values.frombytes(b"".join(blobs))
        if _BIG_ENDIAN:
            values.byteswap()
        times = int_array(stamps)
        for i, sid in mine:
            if not ordered or sid in found or sid in slow:
                slow.add(sid)
                found.pop(sid, None)
            else:
                found[sid] = (times[:], values[i::width])
    if slow:
        found.update(series_points(rows, slow))
    return found


def first_points(points: list[tuple[int, float]]) -> tuple[IntArray, FloatArray]:
    """Columns sorted by time from ``(ts, value)`` pairs; of equal timestamps the first wins."""
    unique = dict(reversed(points))  # later entries overwrite: reversed, the first stays
    keys = sorted(unique)
    return int_array(keys), float_array(unique[k] for k in keys)
