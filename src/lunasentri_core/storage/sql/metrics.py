"""Series and points in SQL: a write-optimised head, packed chunks, rollups.

Layout (docs/storage.md explains the why):

* ``samples_head`` receives every write, one row per sample holding its series
  ids and values packed (:mod:`.head`); a retried point is stored again and
  the first value written wins wherever the head is read.
* :meth:`SqlMetricStore.maintain` moves the head into ``metric_chunks``: one row
  per series per hour holding the raw points as a packed blob, the minute
  rollups as a packed blob and the hour rollup as columns. Existing points win
  over head points with the same timestamp.
* Retention clears a chunk's raw blob, minute blob or hour columns as each
  resolution expires, and deletes the row when nothing is left.
* The latest values keep each series' newest point, updated by every write:
  ``series_latest`` (a row per series) on SQLite, ``latest_values`` (a row per
  machine and range of series ids) on PostgreSQL (:mod:`.latest`).

Reads union the chunks with the head (a chunk's point wins on equal timestamps).
"""

from __future__ import annotations

import copy
import threading
from collections import ChainMap, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import repeat
from operator import add, itemgetter
from typing import Any, Final, TypeAlias

import attrs
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from lunasentri_core.errors import NotFoundError, StorageUnavailable
from lunasentri_core.model import (
    Aggregation,
    HistoryColumns,
    HistoryQuery,
    Labels,
    MachineSamples,
    Resolution,
    RetentionPolicy,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    reading_columns,
)
from lunasentri_core.storage.protocols import MaintenanceReport
from lunasentri_core.storage.sql import blocks, latest, pgread, rewrite, vacuum
from lunasentri_core.storage.sql.database import (
    LOCK_MAINTAIN,
    BulkInsert,
    Database,
    Statement,
    describe_error,
)
from lunasentri_core.storage.sql.head import (
    HeadRow,
    Latest,
    SeriesIds,
    build_rows,
    series_columns,
    series_points,
)
from lunasentri_core.storage.sql.notices import LIVE_CLASS, WATCHED_DRIVER_SQL
from lunasentri_core.storage.sql.partitions import (
    NativePartitions,
    Partitioning,
    list_partitions,
)
from lunasentri_core.storage.sql.pgcopy import CopyInsert, can_copy
from lunasentri_core.storage.sql.pgwrite import FinishWrite, begin_and_read, can_pipeline
from lunasentri_core.storage.sql.points import (
    CHUNK_MS,
    HOUR_MS,
    MINUTE_MS,
    FloatArray,
    IntArray,
    Rollups,
    Stats,
    bucket_stats,
    chunk_minutes,
    clip,
    downsample_points,
    downsample_rollups,
    float_array,
    floor_to,
    int_array,
    merge_points,
    stats_of,
)
from lunasentri_core.storage.sql.registry import SeriesRegistry
from lunasentri_core.storage.sql.row_order import (
    PAGE_BYTES,
    PG_PAGE_BYTES,
    ROW_OVERHEAD,
    page_order,
    pg_row_bytes,
)
from lunasentri_core.storage.sql.schema import (
    EPOCH,
    labels_from_json,
    machine_series,
    machines,
    metric_chunks,
    samples_head,
    series,
    series_latest,
    storage_meta,
)
from lunasentri_core.storage.sql.seen import touch, touch_statement

_MS: Final = timedelta(milliseconds=1)
_IN_LIMIT: Final = 500
"""Ids per ``IN (...)`` list: far below every driver's parameter limit."""

COMPACT_MACHINES: Final = 64
"""Machines whose head samples are compacted per transaction, at least..."""
COMPACT_PARTS: Final = 16
"""...and at most this many transactions per chunk-window (each scans the window)."""
OPEN_CHUNK_EVERY_MS: Final = 5 * 60_000
"""The current hour's chunks are rewritten at most this often (ended hours at every
pass). Each pass rewrites a series' whole chunk so far, whatever it adds: at every
30 s pass, a fleet of agents reporting every few seconds spent more server time on
these rewrites than on taking its requests. Reads join the head to the chunks, so
what waits in the head reads the same."""

SERIES_EPOCH: Final = "series_epoch"
"""Bumped whenever series are deleted, so other processes drop their cached ids."""
CLEANED_EPOCH: Final = "cleaned_epoch"

_WIDTH = {Resolution.MINUTE: MINUTE_MS, Resolution.HOUR: HOUR_MS}
_HORIZON_KEYS = {
    Resolution.RAW: "horizon_raw",
    Resolution.MINUTE: "horizon_minute",
    Resolution.HOUR: "horizon_hour",
}


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch, rounded down."""
    return (value - EPOCH) // _MS


def ceil_ms(value: datetime) -> int:
    return -((EPOCH - value) // _MS)


def from_ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


class _StoredKeys:
    """Series keys of rows read back, decoded and validated once per distinct
    (metric, labels): a fleet's machines share their shapes, and rebuilding and
    re-checking the same labels for every row was most of a latest read's time."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, str], SeriesKey] = {}

    def key(self, machine_id: str, metric: str, labels_text: str) -> SeriesKey:
        shape = self._shapes.get((metric, labels_text))
        if shape is None:
            shape = SeriesKey(machine_id, metric, labels_from_json(labels_text))
            self._shapes[metric, labels_text] = shape
        if shape.machine_id == machine_id:
            return shape
        # The metric and labels were checked for this shape just above: only the
        # machine differs, so the converters and validators need not run again.
        key = object.__new__(SeriesKey)
        object.__setattr__(key, "machine_id", machine_id)
        object.__setattr__(key, "metric", shape.metric)
        object.__setattr__(key, "labels", shape.labels)
        return key


class _Times(dict[int, datetime]):
    """Timestamps of rows read back, each made once (samples share theirs)."""

    def __missing__(self, ms: int) -> datetime:
        value = self[ms] = from_ms(ms)
        return value


def _chunked(items: Sequence[Any], size: int = _IN_LIMIT) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@attrs.frozen
class Horizons:
    """Per resolution, the chunk start below which that data has been expired."""

    raw: int | None = None
    minute: int | None = None
    hour: int | None = None

    def get(self, resolution: Resolution) -> int | None:
        # Called three times per series per compaction pass: no dict built per call.
        if resolution is Resolution.RAW:
            return self.raw
        if resolution is Resolution.MINUTE:
            return self.minute
        return self.hour

    def covers(self, resolution: Resolution, start: int) -> bool:
        horizon = self.get(resolution)
        return horizon is None or start >= horizon

    def expired(self, resolution: Resolution, chunk_start: int) -> bool:
        horizon = self.get(resolution)
        return horizon is not None and chunk_start < horizon


def choose_resolution(start: int, step: int, horizons: Horizons) -> Resolution:
    """Which data answers a query starting at ``start`` (ms) with ``step`` (ms).

    A rollup whose buckets line up with the steps gives the same answer as the
    raw points, cheaper, so it wins. Otherwise raw points answer while they are
    kept; past the raw retention the finest rollup still kept answers, each
    bucket counted in the step that contains its start.
    """
    for resolution in (Resolution.HOUR, Resolution.MINUTE):
        width = _WIDTH[resolution]
        if step % width == 0 and start % width == 0 and horizons.covers(resolution, start):
            return resolution
    if horizons.covers(Resolution.RAW, start):
        return Resolution.RAW
    for resolution in (Resolution.MINUTE, Resolution.HOUR):
        if horizons.covers(resolution, start):
            return resolution
    return Resolution.HOUR


def _add(a: MaintenanceReport, b: MaintenanceReport) -> MaintenanceReport:
    return MaintenanceReport(
        compacted_points=a.compacted_points + b.compacted_points,
        rollup_rows=a.rollup_rows + b.rollup_rows,
        expired_rows=a.expired_rows + b.expired_rows,
        freed_pages=a.freed_pages + b.freed_pages,
    )


class SqlMetricStore:
    """:class:`~lunasentri_core.storage.MetricStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database, retention: RetentionPolicy) -> None:
        self._db = db
        self.retention = retention
        self._ids: dict[str, SeriesIds] = {}
        self._ids_epoch: int | None = None
        self._ids_lock = threading.Lock()
        self._maintain_lock = threading.Lock()
        self._open_compacted_at: int | None = None
        """When the current hour's chunks were last rewritten (ms, ``now`` of maintain)."""
        self.compress_open = db.is_postgres
        """Whether the current hour's chunks are compressed at each rewrite too.

        SQLite gives a rewritten row's old pages back at once (auto-vacuum), so
        the open hour stays uncompressed there, cheaper to rewrite. PostgreSQL
        keeps an updated row's old version in the table's file: the plain
        blocks (16 bytes a point, TOASTed past 2 KB) left the current day's
        partition 2-6 times its live data through the hour; compressed, the
        rewrite's old versions are a sixth to a tenth of that, for about 0.5 ms of CPU per
        series and rewrite (at most 12 an hour)."""
        self.partitions: Partitioning | None = NativePartitions(db) if db.is_postgres else None
        """How ``metric_chunks`` is split by time on PostgreSQL (a backend may replace it)."""
        self.rewrite_bloated = db.is_postgres
        """Whether a pass ends by rewriting the small tables it left mostly free space
        (PostgreSQL, :mod:`~.sql.rewrite`)."""
        self._touched: list[tuple[int, int]] = []
        """``chunk_start`` ranges the current pass wrote or expired rows in."""
        self._registry = SeriesRegistry(db)
        self.write_transactions = 2 if db.is_postgres else 1
        """Write transactions the ingest writer may keep in flight at once: PostgreSQL
        builds and sends one while it commits the other; SQLite has one writer."""
        self._latest_statements: dict[tuple[int, bool], Statement] = {}
        """By (machines, by metric): at most 2 x 500, compiled once each (a dict
        read and write are atomic: two threads at worst compile one twice)."""
        self._head_and_blobs: dict[tuple[Resolution, int], Statement] = {}
        """By (raw or minute, series): :func:`_select_head_and_blobs`, as above."""
        self._machine_latest: dict[tuple[bool, int | None], Statement] = {}
        """By (owner checked, metrics): :func:`_select_machine_latest`, as above."""
        # Compiling takes longer than opening a store (the bulk inserts have
        # hundreds of placeholders): once per kind of database, then copied.
        key = (db.engine.dialect.name, db.engine.dialect.driver, db.engine.dialect.paramstyle)
        with _PREPARED_LOCK:
            if key not in _PREPARED:
                _PREPARED[key] = _prepare(db)
            self._sql = copy.copy(_PREPARED[key])

    # ------------------------------------------------------------------ writing

    writes_last_seen: Final = True
    """:meth:`write` takes ``seen`` (the ingest writer looks for this)."""

    def write(
        self,
        batch: Sequence[MachineSamples],
        *,
        seen: Sequence[tuple[str, datetime]] = (),
        max_series: int | None = None,
    ) -> int:
        """:meth:`MetricStore.write`; ``seen`` also advances those machines' ``last_seen``
        (as :meth:`SqlStateStore.touch_machines`) in the same transaction.

        ``max_series``: a batch that would give a machine more series raises
        :class:`SeriesLimitError` and stores nothing (:attr:`Capability.SERIES_LIMIT`).
        """
        if not any(sample.readings for ms in batch for sample in ms.samples):
            if seen:
                with self._db.write() as conn:
                    touch(conn, self._sql.touch, seen)
            return 0
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                return self._write(batch, seen, max_series)
            except _DroppedConnection:
                # Nothing was written; the pool has let go of the server's dropped connections.
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
            except StorageUnavailable as error:
                if attempt == DEADLOCK_ATTEMPTS or not _deadlocked(error):
                    raise
        raise AssertionError("unreachable")

    def _write(
        self,
        batch: Sequence[MachineSamples],
        seen: Sequence[tuple[str, datetime]],
        max_series: int | None,
    ) -> int:
        """One try of :meth:`write`. A pooled connection the server dropped (the pool
        does not ping one in use: see the timescale plugin's ``liveness``) fails the
        first statement, before anything was written, as :class:`_DroppedConnection`."""
        notices = self._db.notices
        finish = self._sql.finish
        watched: list[set[str]] = []
        """Filled when the commit's round trip looked up the watched machines."""

        def announce(conn: Connection) -> None:
            if watched:
                notices.watched_samples(conn, batch, watched[0])
            else:
                notices.samples(conn, batch)

        with self._db.write(
            then=announce if notices.enabled else None,
            own_begin=finish is not None,
        ) as conn:
            try:
                self._check_epoch(conn)
            except exc.DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                raise _DroppedConnection(describe_error(self._db.label, error)) from error
            ids = self._ids
            built = build_rows(batch, ids)
            fresh: dict[str, SeriesIds] = {}
            if built is None:
                fresh = self._resolve_series(conn, batch, max_series)
                # The cached ids stay as they are until the commit: look in both.
                both = {m: ChainMap(new, ids[m]) if m in ids else new for m, new in fresh.items()}
                built = build_rows(batch, {**ids, **both})
                assert built is not None, "every series was just resolved"
            rows, newest, points = built  # by machine id, then series id: one lock order
            self._insert_head(conn, rows)
            if finish is not None:
                # One statement, the COMMIT and the watched machines' look-up that
                # must follow it, in one round trip (:mod:`.pgwrite`).
                sending = notices.sample_machines(batch) if notices.enabled else []
                look_up = (WATCHED_DRIVER_SQL, (LIVE_CLASS, sending)) if sending else None
                found = finish.run(conn, newest, seen, after=look_up).after
                if found is not None:
                    watched.append(set(found))
            else:
                self._sql.upsert_latest.run(conn, newest)
                if seen:
                    touch(conn, self._sql.touch, seen)
        if fresh:
            # Only now: ids of series created by a rolled-back batch are invalid.
            with self._ids_lock:
                for machine_id, new in fresh.items():
                    self._ids.setdefault(machine_id, {}).update(new)
        return points

    def _insert_head(self, conn: Connection, rows: list[HeadRow]) -> None:
        copy_head = self._sql.copy_head
        if copy_head is not None and copy_head.wanted(len(rows)):
            copy_head.run(conn, rows)
        else:
            self._sql.insert_head.run(conn, list(zip(*rows, strict=True)))

    def _check_epoch(self, conn: Connection) -> None:
        select = self._sql.select_epoch
        if self._sql.finish is not None:
            # The transaction's BEGIN with it, in one round trip (own_begin).
            epoch = begin_and_read(conn, select.sql, (SERIES_EPOCH,)) or 0
        else:
            epoch = select.one(conn, (SERIES_EPOCH,)).scalar() or 0
        if epoch != self._ids_epoch:
            with self._ids_lock:
                self._ids = {}
                self._ids_epoch = epoch

    def _resolve_series(
        self, conn: Connection, batch: Sequence[MachineSamples], max_series: int | None
    ) -> dict[str, SeriesIds]:
        """Ids of the series in ``batch`` not cached yet, creating the missing ones.

        Costs what the batch's uncached series cost, never what the machines'
        other series do, in a few statements for all machines at once
        (:mod:`.registry`).
        """
        return self._registry.resolve(conn, self._uncached(batch), max_series)

    def _uncached(self, batch: Sequence[MachineSamples]) -> dict[str, set[tuple[str, Labels]]]:
        wanted: dict[str, set[tuple[str, Labels]]] = defaultdict(set)
        for ms in batch:
            known = self._ids.get(ms.machine_id, {})
            last_keys: object = None
            for sample in ms.samples:
                keys = reading_columns(sample.readings)[0]
                if keys is not last_keys:  # decoded samples share their keys
                    wanted[ms.machine_id].update(key for key in keys if key not in known)
                    last_keys = keys
        return {machine_id: keys for machine_id, keys in wanted.items() if keys}

    # ------------------------------------------------------------------ reading

    def latest(self, machine_ids: Sequence[str], metric: str | None = None) -> list[SeriesValue]:
        """One statement per 500 machines, its rows read as plain driver tuples: a
        page of the machine list reads its thousands of values in one go."""
        out: list[SeriesValue] = []
        if not machine_ids:
            return out
        keys, times = _StoredKeys(), _Times()
        with self._db.read() as conn:
            for part in _chunked(sorted(set(machine_ids))):
                stmt = self._latest_statement(len(part), metric is not None)
                given = {f"m{i}": machine_id for i, machine_id in enumerate(part)}
                given["metric"] = metric
                result = stmt.one(conn, tuple(given[name] for name in stmt.names))
                # The driver's own tuples: no column here needs a result processor,
                # and wrapping 5,000 rows as Row objects cost a third of the read.
                rows = result.cursor.fetchall() if result.cursor is not None else []
                result.close()
                for machine_id, name, labels, ts, value in rows:
                    out.append(SeriesValue(keys.key(machine_id, name, labels), times[ts], value))
        return out

    def machine_latest(
        self, machine_id: str, owner_id: str | None, metrics: Sequence[str] | None = None
    ) -> list[SeriesValue]:
        """:meth:`latest` of one machine (of ``metrics``, else all), which must exist
        and be ``owner_id``'s when one is given (as
        :meth:`SqlStateStore.check_machine`), else :class:`NotFoundError`.

        One statement (the values through the machine's row): a snapshot of its
        own, so no transaction is begun for it, and a ``/latest`` request is one
        round trip to PostgreSQL (with psycopg 3) where the check, the values and
        ``BEGIN`` and ``COMMIT`` were four.
        """
        key = (owner_id is not None, None if metrics is None else len(metrics))
        stmt = self._machine_latest.get(key)
        if stmt is None:
            stmt = self._machine_latest[key] = _select_machine_latest(self._db, *key)
        given = {"m": machine_id, "o": owner_id}
        given.update((f"n{i}", name) for i, name in enumerate(metrics or ()))
        with self._db.read(own_begin=True) as conn:
            rows = stmt.one(conn, tuple(given[name] for name in stmt.names)).fetchall()
        if not rows:
            raise NotFoundError(f"machine {machine_id!r} not found")
        keys, times = _StoredKeys(), _Times()
        return [
            SeriesValue(keys.key(machine_id, name, labels), times[ts], value)
            for name, labels, ts, value in rows
            if ts is not None  # the machine's row alone: no such values (an outer join)
        ]

    def _head_and_blobs_statement(self, resolution: Resolution, count: int) -> Statement:
        found = self._head_and_blobs.get((resolution, count))
        if found is None:
            found = self._head_and_blobs[resolution, count] = _select_head_and_blobs(
                self._db, resolution, count
            )
        return found

    def _latest_statement(self, machines: int, by_metric: bool) -> Statement:
        found = self._latest_statements.get((machines, by_metric))
        if found is None:
            found = self._latest_statements[machines, by_metric] = self._compile_latest(
                machines, by_metric
            )
        return found

    def _compile_latest(self, machines: int, by_metric: bool) -> Statement:
        postgres = self._db.is_postgres
        wanted: list[sa.BindParameter[Any]] = [sa.bindparam(f"m{i}") for i in range(machines)]
        values = latest.rows(postgres, wanted)
        query = (
            sa.select(
                series.c.machine_id,
                series.c.metric,
                series.c.labels,
                values.c.ts,
                values.c.value,
            )
            .join(values, latest.on(values))
            .where(series.c.machine_id.in_(wanted))
            .order_by(series.c.machine_id, series.c.metric, series.c.labels)
        )
        if by_metric:
            query = query.where(series.c.metric == sa.bindparam("metric"))
        return self._db.statement(query)

    def list_series(self, machine_id: str) -> list[SeriesKey]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(series.c.metric, series.c.labels)
                .where(series.c.machine_id == machine_id)
                .order_by(series.c.metric, series.c.labels)
            ).all()
        return [SeriesKey(machine_id, metric, labels_from_json(labels)) for metric, labels in rows]

    def history(self, query: HistoryQuery) -> list[SeriesHistory]:
        return [found.to_history() for found in self.history_columns(query)]

    def history_columns(self, query: HistoryQuery) -> list[HistoryColumns]:
        """:meth:`history` as columns (what the HTTP API serializes), with no
        object built per step: blocks decode into arrays and the steps are
        aggregated in bulk (:func:`~.points.downsample_points`)."""
        with self.history_reader(last=True) as read:
            return read(query)

    history_reader_checks: Final = True
    """:meth:`history_reader` takes ``check`` and ``last`` (the query service looks for this)."""

    @contextmanager
    def history_reader(
        self, *, check: bool = False, owner_id: str | None = None, last: bool = False
    ) -> Iterator[Callable[[HistoryQuery], list[HistoryColumns]]]:
        """:meth:`history_columns` for several queries in one read transaction.

        What they share is read once: the head rows of each (machine, range)
        asked for (a machine page's charts ask for a dozen metrics over one
        range, derived percentages for two more each).

        ``check``: each query's machine must exist, and be ``owner_id``'s when
        one is given (:meth:`SqlStateStore.check_machine`), else
        :class:`NotFoundError`; checked by the statement that matches the
        query's series, not by one of its own (each is a round trip to PostgreSQL).

        ``last``: the caller asks one query and no more. On PostgreSQL (psycopg 3)
        the transaction's ``BEGIN`` goes with the first statement, and with
        ``last`` its ``COMMIT`` with the last where the reader knows it (a query
        answered from raw points): a one-series read is two round trips
        (:mod:`.pgread`).
        """
        with self._db.read(own_begin=True) as conn:
            yield _HistoryReader(self, conn, check=check, owner_id=owner_id, last=last).columns

    def _match_series(
        self,
        conn: Connection,
        query: HistoryQuery,
        check: bool = False,
        owner_id: str | None = None,
        pipelined: bool = False,
    ) -> tuple[list[tuple[int, SeriesKey]], Horizons | None] | None:
        """The query's series and the retention horizons, read in one statement
        (the horizons ``None`` when no series matched). With ``check``: ``None`` when
        the machine does not exist (or is not ``owner_id``'s). ``pipelined``: on an
        ``own_begin`` read not begun yet, the statement opens the transaction.

        The horizons come with every match rather than from a statement of their
        own or a cache: they are then always those of the read's snapshot, even
        just after another process's maintenance moved them.
        """
        stmt = self._sql.select_series[(owner_id is not None) if check else None]
        given = {"m": query.machine_id, "n": query.metric, "o": owner_id}
        params = tuple(given[name] for name in stmt.names)
        if pipelined and pgread.must_begin(conn):
            rows = pgread.begin_and_fetch(conn, stmt.sql, params)
        else:
            rows = stmt.one(conn, params).fetchall()
        if not rows:
            return None if check else ([], None)
        raw, minute, hour = rows[0][2:]
        out = []
        for sid, text, *_ in rows:
            if sid is None:
                break  # the machine, without series of this metric (an outer join)
            labels = _labels_of(text)
            if query.selects(labels):
                out.append((sid, SeriesKey(query.machine_id, query.metric, labels)))
        return out, Horizons(raw=raw, minute=minute, hour=hour)

    def _horizons(self, conn: Connection) -> Horizons:
        rows = dict(self._sql.select_horizons.one(conn).fetchall())
        return Horizons(
            raw=rows.get(_HORIZON_KEYS[Resolution.RAW]),
            minute=rows.get(_HORIZON_KEYS[Resolution.MINUTE]),
            hour=rows.get(_HORIZON_KEYS[Resolution.HOUR]),
        )

    def _raw_points(
        self,
        conn: Connection,
        sid: int,
        start: int,
        end: int,
        head: tuple[IntArray, FloatArray] | None,
        blobs: Iterable[bytes] | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """``blobs``: the series' raw blobs in the range, in order, when read already."""
        ts, values = int_array(), float_array()
        if blobs is None:
            lo = floor_to(start, CHUNK_MS)
            blobs = [blob for (blob,) in self._sql.select_raw.one(conn, (sid, lo, end))]
        for blob in blobs:
            chunk_ts, chunk_values = blocks.read_raw(blob)
            ts += chunk_ts
            values += chunk_values
        ts, values = clip(ts, values, start, end)
        if head is not None:
            ts, values, _ = merge_points(ts, values, *head)
        return ts, values

    def _rollups(
        self,
        conn: Connection,
        sid: int,
        resolution: Resolution,
        start: int,
        end: int,
        head: tuple[IntArray, FloatArray] | None,
        aggregation: Aggregation,
        horizons: Horizons,
        chunk_points: Callable[[int, int], tuple[IntArray, FloatArray] | None],
        blobs: Iterable[Blobs] | None = None,
    ) -> Rollups:
        """The rollups of ``[start, end)``; only the columns ``aggregation``
        reads hold their stored values. ``blobs``: the series' minute blobs in
        the range, in order, when read already (:data:`Blobs`).

        ``horizons``: where the rollups lack a bucket to redo in a chunk whose
        raw points and rollups are both kept, the chunk has no point in it,
        and its raw points are not read for it. ``chunk_points(sid, chunk_start)``
        gives a chunk's raw points: none for a new chunk, ``None`` when they
        expired (:meth:`_HistoryReader._chunk_points`).
        """
        width = _WIDTH[resolution]
        lo, hi = floor_to(start, CHUNK_MS), end
        rollups = Rollups.empty()
        if resolution is Resolution.MINUTE:
            wanted = _MINUTE_WANTED[aggregation]
            if blobs is None:
                blobs = [(m, r) for m, r in self._sql.select_minutes.one(conn, (sid, lo, hi))]
            for minutes, raw in blobs:
                if minutes is not None:
                    rollups.extend(Rollups(*blocks.read_minutes(minutes, wanted)))
                elif raw is not None:
                    rollups.extend(Rollups(*blocks.minutes_of_raw(raw)))
        else:
            rows = self._sql.select_hours.one(conn, (sid, lo, hi)).all()
            rollups = Rollups(
                int_array(r[0] for r in rows),
                int_array(r[1] for r in rows),
                *(float_array(r[i] for r in rows) for i in range(2, 6)),
            )
        # Buckets the stored rollups cannot answer exactly: those holding points
        # not compacted yet, and the one cut by the end of the range.
        redo = set() if head is None else {floor_to(t, width) for t in head[0]}
        if end % width and floor_to(end, width) >= start:
            redo.add(floor_to(end, width))
        if not redo:
            return rollups
        # Usually the recent end of the range: only the buckets from the first
        # one redone on are turned into a dict and back.
        head_part, stats = rollups.split(min(redo))
        for chunk_start in sorted({floor_to(b, CHUNK_MS) for b in redo}):
            buckets = sorted(b for b in redo if floor_to(b, CHUNK_MS) == chunk_start)
            # The points that matter: those of the buckets redone.
            first, last = max(buckets[0], start), min(buckets[-1] + width, end)
            if (
                not horizons.expired(Resolution.RAW, chunk_start)
                and not horizons.expired(resolution, chunk_start)
                and not any(b in stats for b in buckets)
            ):
                # The chunk's rollups (kept, as its raw points are) have none of
                # these buckets: none of its points lies in them.
                ts, values = int_array(), float_array()
            else:
                found = chunk_points(sid, chunk_start)
                if found is None:
                    continue  # raw points expired: the stored rollup is the best answer
                ts, values = clip(*found, first, last)
            if head is not None:
                head_ts, head_values = clip(head[0], head[1], first, last)
                ts, values, _ = merge_points(ts, values, head_ts, head_values)
            for bucket in buckets:
                fresh = bucket_stats(
                    ts, values, width, max(bucket, start), min(bucket + width, end)
                )
                if bucket in fresh:
                    stats[bucket] = fresh[bucket]
                else:
                    stats.pop(bucket, None)
        head_part.extend(Rollups.from_stats(stats))
        return head_part

    # ------------------------------------------------------------------ deleting

    def delete_machine(self, machine_id: str) -> int:
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            return self.delete_machine_series(conn, machine_id)

    def delete_machine_series(self, conn: Connection, machine_id: str) -> int:
        """Delete a machine's series inside the caller's write transaction."""
        self.forget(machine_id)
        sids = list(
            conn.execute(sa.select(series.c.id).where(series.c.machine_id == machine_id)).scalars()
        )
        for part in _chunked(sids):
            conn.execute(sa.delete(metric_chunks).where(metric_chunks.c.series_id.in_(part)))
            conn.execute(sa.delete(series_latest).where(series_latest.c.series_id.in_(part)))
            conn.execute(sa.delete(series).where(series.c.id.in_(part)))
        latest.delete_machine(conn, machine_id)
        conn.execute(sa.delete(machine_series).where(machine_series.c.machine_id == machine_id))
        conn.execute(sa.delete(samples_head).where(samples_head.c.machine_id == machine_id))
        vacuum.give_back(conn)
        if sids:
            conn.execute(
                sa.update(storage_meta)
                .where(storage_meta.c.key == SERIES_EPOCH)
                .values(value=storage_meta.c.value + 1)
            )
        return len(sids)

    def forget(self, machine_id: str) -> None:
        """Drop a machine's cached series ids."""
        with self._ids_lock:
            self._ids = {k: v for k, v in self._ids.items() if k != machine_id}

    # ------------------------------------------------------------------ maintenance

    def maintain(self, now: datetime) -> MaintenanceReport:
        now_ms = to_ms(now)
        with self._maintain_lock:
            if self.partitions is not None:
                # First: the chunks compacted below then go to their own partition.
                self.partitions.prepare(now_ms, self._full_horizon(now_ms))
            self._touched = []
            report = _add(self._compact(now_ms), self._expire(now_ms))
            # What the transactions above could not give back (more than their
            # share, or freed elsewhere: deleted machines, purges), in steps;
            # on PostgreSQL, the head's space after moving much out of it, and
            # the tables this pass left mostly free space.
            freed = vacuum.reclaim(self._db) + vacuum.vacuum_head(self._db, report.compacted_points)
            if self.rewrite_bloated:
                freed += rewrite.rewrite_bloated(self._db, self._rewrite_candidates())
            # After the rewrite, which leaves the indexes of what it rewrote compact.
            if self.partitions is not None:
                self.partitions.settle(now_ms)
            return _add(report, MaintenanceReport(freed_pages=freed))

    def _rewrite_candidates(self) -> list[str]:
        """The latest values and the partitions of ``metric_chunks`` this pass changed."""
        tables = ["latest_values"]
        native = isinstance(self.partitions, NativePartitions) and self.partitions.active()
        if native and self._touched:
            with self._db.read() as conn:
                tables += [
                    p.name
                    for p in list_partitions(conn)
                    if any(lo < p.hi and p.lo < hi for lo, hi in self._touched)
                ]
        return tables

    def _retention(self) -> dict[Resolution, timedelta | None]:
        return {
            Resolution.RAW: self.retention.raw,
            Resolution.MINUTE: self.retention.minute,
            Resolution.HOUR: self.retention.hour,
        }

    def _full_horizon(self, now_ms: int) -> int | None:
        """The chunk start below which every resolution has expired; ``None`` while
        one is kept forever."""
        kept = self._retention().values()
        if any(keep is None for keep in kept):
            return None
        return min(_horizon(now_ms, keep) for keep in kept if keep is not None)

    def _compact(self, now_ms: int) -> MaintenanceReport:
        """Move head samples older than ``now`` into chunks.

        One transaction per chunk-window and group of machines
        (:data:`COMPACT_MACHINES`, more when there are many machines): each
        holds the write lock for a fraction of the pass, so ingest commits in
        between instead of waiting for all of it.
        """
        report = MaintenanceReport()
        h = samples_head.c
        while True:
            with self._db.read() as conn:
                first = conn.execute(sa.select(sa.func.min(h.ts)).where(h.ts < now_ms)).scalar()
                if first is None:
                    return report
                lo = floor_to(first, CHUNK_MS)
                hi = min(lo + CHUNK_MS, now_ms)
                machine_ids = list(
                    conn.execute(
                        sa.select(h.machine_id).where(h.ts >= lo, h.ts < hi).distinct()
                    ).scalars()
                )
            # A chunk whose hour has ended is compressed; the current one is
            # rewritten every OPEN_CHUNK_EVERY_MS, and stays uncompressed until
            # then unless ``compress_open`` (PostgreSQL).
            closed = lo + CHUNK_MS <= now_ms
            if not closed:
                last = self._open_compacted_at
                if last is not None and 0 <= now_ms - last < OPEN_CHUNK_EVERY_MS:
                    return report
                self._open_compacted_at = now_ms
            width = min(_IN_LIMIT, max(COMPACT_MACHINES, -(-len(machine_ids) // COMPACT_PARTS)))
            for part in _chunked(sorted(machine_ids), width):
                with self._db.write(lock=LOCK_MAINTAIN) as conn:
                    # Delete what is read in one statement: a sample written
                    # meanwhile stays in the head for the next pass.
                    rows = conn.execute(
                        sa.delete(samples_head)
                        .where(h.ts >= lo, h.ts < hi, h.machine_id.in_(part))
                        .returning(h.seq, h.ts, h.series_ids, h.series_values)
                    ).all()
                    if rows:
                        # RETURNING's order is unspecified; the first value
                        # written of a point wins, so sort into write order.
                        head = series_points(row[1:] for row in sorted(rows, key=itemgetter(0)))
                        compacted = self._compact_chunk(
                            conn, lo, head, self._horizons(conn), closed
                        )
                        freed = vacuum.give_back(conn)
                        report = _add(report, attrs.evolve(compacted, freed_pages=freed))

    def _compact_chunk(
        self,
        conn: Connection,
        chunk_start: int,
        head: dict[int, tuple[IntArray, FloatArray]],
        horizons: Horizons,
        closed: bool,
    ) -> MaintenanceReport:
        sids = sorted(head)
        live: set[int] = set()
        existing: dict[int, tuple[bytes | None, bytes | None]] = {}
        c = metric_chunks.c
        for part in _chunked(sids):
            live.update(conn.execute(sa.select(series.c.id).where(series.c.id.in_(part))).scalars())
            for sid, raw, minutes in conn.execute(
                sa.select(c.series_id, c.raw, c.minutes).where(
                    c.chunk_start == chunk_start, c.series_id.in_(part)
                )
            ):
                existing[sid] = (raw, minutes)
        upserts = []
        compacted = rollup_rows = dropped = 0
        for sid in sids:
            new_ts, new_values = head[sid]
            row = existing.get(sid)
            if sid not in live or (row is not None and row[0] is None):
                # The series was deleted while its points were in flight, or the
                # chunk's raw points expired and there is nothing to merge with.
                dropped += len(new_ts)
                continue
            raw, minutes = row if row is not None else (None, None)
            old_ts, old_values = blocks.decode_raw(raw) if raw else (int_array(), float_array())
            ts, values, added = merge_points(old_ts, old_values, new_ts, new_values)
            if not added:
                continue
            chunk_row, written = _chunk_row(
                sid,
                chunk_start,
                ts,
                values,
                added,
                minutes,
                horizons,
                compress=closed or self.compress_open,
            )
            if chunk_row is None:
                dropped += len(added)
                continue
            compacted += len(added)
            upserts.append(chunk_row)
            rollup_rows += written
        self._write_chunks(conn, chunk_start, upserts, existing.keys() if closed else None)
        if upserts:
            self._touched.append((chunk_start, chunk_start + CHUNK_MS))
        return MaintenanceReport(
            compacted_points=compacted, rollup_rows=rollup_rows, expired_rows=dropped
        )

    def _write_chunks(
        self,
        conn: Connection,
        chunk_start: int,
        rows: list[tuple[Any, ...]],
        rewritten: Iterable[int] | None,
    ) -> None:
        """Upsert chunk rows; those of an ended hour anew, in page order.

        ``rewritten`` (an ended hour): the series whose row exists. Their rows
        are deleted and every row inserted in :func:`~.row_order.page_order`,
        so that they fill the table's pages (an update would keep each row
        where the open hour's first pass put it); ``None`` updates in place.
        """
        if rewritten is not None and rows:
            if self._db.is_postgres:
                sizes, page = [_pg_row_bytes(row) for row in rows], PG_PAGE_BYTES
            else:
                sizes, page = [_row_bytes(row) for row in rows], PAGE_BYTES
            rows = [rows[i] for i in page_order(sizes, page)]
            c = metric_chunks.c
            for part in _chunked(sorted(set(rewritten) & {row[0] for row in rows})):
                conn.execute(
                    sa.delete(metric_chunks).where(
                        c.chunk_start == chunk_start, c.series_id.in_(part)
                    )
                )
        self._sql.upsert_chunk.many(conn, rows)

    def store_chunks(
        self,
        conn: Connection,
        chunk_start: int,
        chunks: Mapping[int, tuple[IntArray, FloatArray]],
    ) -> int:
        """Write the chunks of one ended hour (series id -> points) as compaction does.

        For bulk loads and benchmarks: the chunks must not be stored yet, and
        their points (sorted, unique) lie inside the hour. Returns the rollup
        rows written.
        """
        horizons = self._horizons(conn)
        rows = []
        written = 0
        for sid, (ts, values) in chunks.items():
            row, count = _chunk_row(sid, chunk_start, ts, values, ts, None, horizons)
            if row is not None:
                rows.append(row)
                written += count
        self._write_chunks(conn, chunk_start, rows, ())
        return written

    def store_chunk(
        self, conn: Connection, sid: int, chunk_start: int, ts: IntArray, values: FloatArray
    ) -> int:
        """Write one chunk exactly as compaction leaves it (bulk loads, benchmarks).

        ``ts`` (sorted, unique) must lie inside the chunk; returns the rollup rows written.
        """
        row, written = _chunk_row(sid, chunk_start, ts, values, ts, None, self._horizons(conn))
        if row is not None:
            self._sql.upsert_chunk.many(conn, [row])
        return written

    def _expire(self, now_ms: int) -> MaintenanceReport:
        """Clear what each resolution no longer keeps, moving its horizon.

        Chunks keep no minute blob while their raw points are kept (:func:`_chunk_row`):
        those whose raw points go get it first, in two phases. The first, in
        transactions of :data:`MATERIALIZE_ROWS` rows that ingest and compaction
        commit between, stores most of them; the second, in the transaction that
        clears the raw points and moves the horizon, those a late point rewrote
        meanwhile. A crash between them loses nothing: the horizon has not moved,
        and the next pass finds the minute blobs already there.
        """
        materialized = self._materialize_minutes(now_ms)
        report = self._expire_now(now_ms)
        return _add(report, MaintenanceReport(rollup_rows=materialized))

    def _minutes_due(self, now_ms: int, horizons: Horizons) -> tuple[int | None, int] | None:
        """The chunk starts ``[lo, hi)`` (``lo`` ``None``: from the first) whose raw
        points expire at ``now_ms`` and whose minute rollups are still kept, so
        must be stored first; ``None`` when there are none."""
        keep_raw, keep_minute = self.retention.raw, self.retention.minute
        if keep_raw is None:
            return None
        hi, lo = _horizon(now_ms, keep_raw), horizons.raw
        if lo is not None and hi <= lo:
            return None
        if keep_minute is not None:
            minute = _horizon(now_ms, keep_minute)
            if horizons.minute is not None:
                minute = max(minute, horizons.minute)
            lo = minute if lo is None else max(lo, minute)
        if lo is not None and lo >= hi:
            return None
        return lo, hi

    def _materialize_minutes(self, now_ms: int) -> int:
        """Phase one of :meth:`_expire`: the minute rollups written (buckets)."""
        with self._db.read() as conn:
            due = self._minutes_due(now_ms, self._horizons(conn))
        written = 0
        while due is not None:
            with self._db.write(lock=LOCK_MAINTAIN) as conn:
                rows, buckets = _store_minutes(conn, *due, limit=MATERIALIZE_ROWS)
            written += buckets
            if rows:
                self._touched.append((due[0] or 0, due[1]))
            if rows < MATERIALIZE_ROWS:
                break
        return written

    def _expire_now(self, now_ms: int) -> MaintenanceReport:
        """Phase two of :meth:`_expire`, and the expiry of every resolution."""
        retention = self._retention()
        clear = {
            Resolution.RAW: {"raw": None},
            Resolution.MINUTE: {"minutes": None},
            Resolution.HOUR: dict.fromkeys(
                ("hour_count", "hour_sum", "hour_min", "hour_max", "hour_last")
            ),
        }
        marker = {
            Resolution.RAW: metric_chunks.c.raw,
            Resolution.MINUTE: metric_chunks.c.minutes,
            Resolution.HOUR: metric_chunks.c.hour_count,
        }
        expired = 0
        full = self._full_horizon(now_ms)
        if full is not None and self.partitions is not None:
            # Whole partitions go at once; the UPDATEs below then skip their rows.
            expired += self.partitions.drop_before(full)
        c = metric_chunks.c
        with self._db.write(lock=LOCK_MAINTAIN) as conn:
            horizons = self._horizons(conn)
            due = self._minutes_due(now_ms, horizons)
            if due is not None:
                _store_minutes(conn, *due)
            new_horizons = {}
            for resolution, keep in retention.items():
                if keep is None:
                    continue
                horizon = _horizon(now_ms, keep)
                previous = horizons.get(resolution)
                if previous is not None and horizon <= previous:
                    new_horizons[resolution] = previous
                    continue
                where = [c.chunk_start < horizon, marker[resolution].is_not(None)]
                if previous is not None:
                    where.append(c.chunk_start >= previous)
                cleared = conn.execute(
                    sa.update(metric_chunks).where(*where).values(clear[resolution])
                ).rowcount
                if cleared:
                    self._touched.append((previous if previous is not None else 0, horizon))
                expired += cleared
                self._set_meta(conn, _HORIZON_KEYS[resolution], horizon)
                new_horizons[resolution] = horizon
            if len(new_horizons) == len(retention):
                # Every resolution expires: rows with nothing left can go.
                emptied = min(new_horizons.values())
                deleted = conn.execute(
                    sa.delete(metric_chunks).where(
                        c.chunk_start < emptied,
                        c.raw.is_(None),
                        c.minutes.is_(None),
                        c.hour_count.is_(None),
                    )
                ).rowcount
                if deleted:
                    self._touched.append((0, emptied))
                expired += deleted
            self._clean_orphans(conn)
            freed = vacuum.give_back(conn)
        return MaintenanceReport(expired_rows=expired, freed_pages=freed)

    def _clean_orphans(self, conn: Connection) -> None:
        """Drop rows of series deleted while another process was writing them."""
        meta = dict(conn.execute(sa.select(storage_meta.c.key, storage_meta.c.value)).all())
        epoch = meta.get(SERIES_EPOCH, 0)
        if meta.get(CLEANED_EPOCH) == epoch:
            return
        latest.clean_orphans(conn)
        live = sa.select(series.c.id)
        conn.execute(sa.delete(metric_chunks).where(metric_chunks.c.series_id.not_in(live)))
        self._set_meta(conn, CLEANED_EPOCH, epoch)

    def _set_meta(self, conn: Connection, key: str, value: int) -> None:
        stmt = self._db.insert(storage_meta).values(key=key, value=value)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[storage_meta.c.key], set_={"value": stmt.excluded.value}
            )
        )


DEADLOCK_ATTEMPTS: Final = 3
"""Tries of a write that PostgreSQL chose as a deadlock's victim (rolled back whole),
or that found its pooled connection dropped by the server."""


class _DroppedConnection(StorageUnavailable):
    """The write's first statement found its connection dropped: nothing was written."""


def _deadlocked(error: BaseException) -> bool:
    """Whether ``error`` comes from PostgreSQL breaking a deadlock (SQLSTATE 40P01)."""
    cause = error.__cause__
    orig = getattr(cause, "orig", None)
    return getattr(orig, "sqlstate", None) == "40P01"


_MINUTE_WANTED: Final = {
    Aggregation.AVG: frozenset((blocks.BUCKET, blocks.COUNT, blocks.SUM)),
    Aggregation.MIN: frozenset((blocks.BUCKET, blocks.MIN)),
    Aggregation.MAX: frozenset((blocks.BUCKET, blocks.MAX)),
    Aggregation.LAST: frozenset((blocks.BUCKET, blocks.LAST)),
}
"""The minute-rollup columns each aggregation reads (:func:`~.points.downsample_rollups`)."""


def _step_stamps(ks: IntArray, start: int, step: int) -> IntArray:
    """Step starts in microseconds, ``(start + k * step) * 1000`` for each step ``k``,
    in C: a ``range`` when every step from the first to the last has data (the
    usual case), else ``map`` over the steps. A list first: ``array`` takes one
    at once, an iterator an item at a time."""
    if ks[-1] - ks[0] == len(ks) - 1:
        first, width = (start + ks[0] * step) * 1000, step * 1000
        return int_array(list(range(first, first + len(ks) * width, width)))
    return int_array(list(map(add, repeat(start * 1000), map((step * 1000).__mul__, ks))))


class _HistoryReader:
    """History queries answered in one read transaction (:meth:`SqlMetricStore.history_reader`)."""

    def __init__(
        self,
        store: SqlMetricStore,
        conn: Connection,
        *,
        check: bool,
        owner_id: str | None,
        last: bool = False,
    ) -> None:
        self._store = store
        self._conn = conn
        self._check = check
        self._owner_id = owner_id
        self._pipelined = can_pipeline(conn.dialect)
        # Not inside a shared read (snapshot()): its transaction is not the reader's to end.
        self._last = last and self._pipelined and pgread.must_begin(conn)
        """Commit with the statement known to be the read's last (:mod:`.pgread`)."""
        self._ended = False
        self._head: dict[tuple[str, int, int], dict[int, tuple[IntArray, FloatArray]]] = {}
        self._sids: Sequence[int] = ()
        """The series of the query being answered."""
        self._chunks: dict[int, dict[int, bytes | None]] = {}
        """Raw blobs by chunk start and series id, of the series asked for so far."""

    def columns(self, query: HistoryQuery) -> list[HistoryColumns]:
        store, conn = self._store, self._conn
        start, end = ceil_ms(query.start), ceil_ms(query.end)
        step = max(1, query.step // _MS)
        if self._ended:
            raise RuntimeError("a history_reader(last=True) answers one query")
        found = store._match_series(conn, query, self._check, self._owner_id, self._pipelined)
        if found is None:
            raise NotFoundError(f"machine {query.machine_id!r} not found")
        matched, horizons = found
        if not matched or horizons is None or end <= start:
            return []
        resolution = choose_resolution(start, step, horizons)
        sids = [sid for sid, _ in matched]
        self._sids = sids
        blobs: dict[int, list[Blobs]] | None = None
        if resolution is not Resolution.HOUR and (query.machine_id, start, end) not in self._head:
            # Raw points need no statement after this one: the read can end with it.
            last = self._last and resolution is Resolution.RAW
            head, blobs = self._head_and_blobs(
                query.machine_id, sids, resolution, start, end, last=last
            )
        else:
            head = self._head_points(query.machine_id, sids, start, end)
        results = []
        for sid, key in matched:
            mine = None if blobs is None else blobs.get(sid, [])
            if resolution is Resolution.RAW:
                raws = None if mine is None else [raw for raw, _ in mine if raw is not None]
                ts, values = store._raw_points(conn, sid, start, end, head.get(sid), raws)
                ks, steps = downsample_points(ts, values, start, end, step, query.aggregation)
            else:
                rollups = store._rollups(
                    conn,
                    sid,
                    resolution,
                    start,
                    end,
                    head.get(sid),
                    query.aggregation,
                    horizons,
                    self._chunk_points,
                    mine,
                )
                ks, steps = downsample_rollups(
                    rollups, start, end, step, query.aggregation, _WIDTH[resolution]
                )
            if ks:  # a series without points in the range is left out
                stamps = _step_stamps(ks, start, step)
                results.append(HistoryColumns(key, resolution, stamps, steps))
        return results

    def _chunk_points(self, sid: int, chunk_start: int) -> tuple[IntArray, FloatArray] | None:
        """A chunk's raw points (none for a new chunk, ``None`` when they expired),
        the raw blobs of the query's series read in one statement per chunk (each
        series redoes the same recent buckets)."""
        blobs = self._chunks.setdefault(chunk_start, {})
        if sid not in blobs:
            wanted = sorted({sid, *(s for s in self._sids if s not in blobs)})
            c = metric_chunks.c
            for part in _chunked(wanted):
                blobs.update(dict.fromkeys(part, b""))  # no row: a chunk not written yet
                rows = self._conn.execute(
                    sa.select(c.series_id, c.raw).where(
                        c.chunk_start == chunk_start, c.series_id.in_(part)
                    )
                )
                blobs.update((found, raw) for found, raw in rows)
        blob = blobs[sid]
        if blob is None:
            return None  # expired
        if not blob:
            return int_array(), float_array()
        return blocks.decode_raw(blob)

    def _head_and_blobs(
        self,
        machine_id: str,
        sids: Sequence[int],
        resolution: Resolution,
        start: int,
        end: int,
        *,
        last: bool = False,
    ) -> tuple[dict[int, tuple[IntArray, FloatArray]], dict[int, list[Blobs]] | None]:
        """:meth:`_head_points`, and the raw or minute blobs of ``sids`` in the
        range (by series, in order) read with them in one statement: a round trip
        fewer on PostgreSQL (:data:`Blobs`). ``None`` blobs: too many series for one statement,
        the store reads them series by series. ``last``: no statement follows,
        the transaction commits with this one (PostgreSQL with psycopg 3)."""
        if len(sids) > _HEAD_AND_BLOBS_SERIES:
            return self._head_points(machine_id, sids, start, end), None
        stmt = self._store._head_and_blobs_statement(resolution, len(sids))
        given: dict[str, Any] = {f"s{i}": sid for i, sid in enumerate(sids)}
        given.update(m=machine_id, lo=start, hi=end, clo=floor_to(start, CHUNK_MS), chi=end)
        params = tuple(given[n] for n in stmt.names)
        rows: Iterable[tuple[Any, ...]]
        if last:
            rows = pgread.fetch_and_commit(self._conn, stmt.sql, params)
            self._ended = True
        else:
            rows = stmt.one(self._conn, params)
        head_rows: list[tuple[Any, ...]] = []
        blobs: dict[int, list[Blobs]] = {}
        for part, a, b, x, y in rows:
            if part == 0:  # a head row: seq, ts, series ids, values
                head_rows.append((b, x, y))
            else:  # a chunk: series id, chunk start, blob, raw blob instead of minutes
                blobs.setdefault(a, []).append((x, y))
        made = self._head[machine_id, start, end] = series_columns(head_rows)
        return {sid: made[sid] for sid in sids if sid in made}, blobs

    def _head_points(
        self, machine_id: str, sids: Sequence[int], start: int, end: int
    ) -> dict[int, tuple[IntArray, FloatArray]]:
        """Points of the machine's series ``sids`` not compacted yet: the head rows
        of a (machine, range) are read once, and every series' points made from
        them at once (:func:`~.head.series_columns`: a slice each)."""
        key = (machine_id, start, end)
        made = self._head.get(key)
        if made is None:
            rows = [tuple(row) for row in self._store._sql.select_head.one(self._conn, key)]
            made = self._head[key] = series_columns(rows)
        return {sid: made[sid] for sid in sids if sid in made}


_labels_of: Final = lru_cache(maxsize=16384)(labels_from_json)
"""A series' labels from their stored text, each text parsed once (every history
read of a metric parses its series' labels; they never change for a text)."""


def _horizon(now_ms: int, keep: timedelta) -> int:
    """The first chunk start still kept when data is kept for ``keep``."""
    return floor_to(now_ms - keep // _MS, CHUNK_MS)


def _row_bytes(row: tuple[Any, ...]) -> int:
    """About what a chunk row takes in a SQLite table page: its blobs and the rest."""
    return len(row[2] or b"") + len(row[3] or b"") + ROW_OVERHEAD


def _pg_row_bytes(row: tuple[Any, ...]) -> int:
    """What a chunk row takes in a PostgreSQL heap page."""
    raw, minutes = row[2], row[3]
    return pg_row_bytes(
        None if raw is None else len(raw),
        None if minutes is None else len(minutes),
        row[4] is not None,
    )


def _chunk_row(
    sid: int,
    chunk_start: int,
    ts: IntArray,
    values: FloatArray,
    added: IntArray,
    minutes: bytes | None,
    horizons: Horizons,
    *,
    compress: bool = True,
) -> tuple[tuple[Any, ...] | None, int]:
    """The ``metric_chunks`` row of a chunk now holding ``ts``/``values``.

    While the chunk's raw points are kept it has no minute blob: readers
    derive its minute rollups from the raw one (:func:`~.blocks.minutes_of_raw`),
    and :meth:`SqlMetricStore._expire` stores them before the raw points go.
    Past that, only the minute buckets around the ``added`` points are
    recomputed; the others come from the chunk's existing ``minutes`` blob.
    Resolutions already expired for this chunk stay empty, so a late point
    still reaches the rollups that are kept; ``None`` when every resolution
    has expired. ``compress``: zlib the blobs (not while the chunk's hour is
    still open).
    """
    written = 0
    raw_blob = None
    raw_kept = not horizons.expired(Resolution.RAW, chunk_start)
    if raw_kept:
        raw_blob = blocks.encode_raw(ts, values, compress=compress)
    minute_blob = None
    if not raw_kept and not horizons.expired(Resolution.MINUTE, chunk_start):
        if minutes:
            lo = floor_to(added[0], MINUTE_MS)
            hi = floor_to(added[-1], MINUTE_MS) + MINUTE_MS
            fresh = bucket_stats(ts, values, MINUTE_MS, lo, hi)
            # Usually the last bucket or two change: only those become a dict.
            rollups, stats = Rollups(*blocks.decode_minutes(minutes)).split(lo)
            stats.update(fresh)
            rollups.extend(Rollups.from_stats(stats))
            written += len(fresh)
        else:
            rollups = chunk_minutes(ts, values, chunk_start)
            written += len(rollups)
        minute_blob = blocks.encode(rollups.columns(), compress=compress)
    hour: Stats | tuple[None, ...] = (None,) * 5
    if not horizons.expired(Resolution.HOUR, chunk_start):
        hour = stats_of(values)
        written += 1
    if raw_blob is None and minute_blob is None and not written:
        return None, 0
    return (sid, chunk_start, raw_blob, minute_blob, *hour), written


MATERIALIZE_ROWS: Final = 500
"""Chunk rows given their minute blob per transaction before their raw points expire."""


def _store_minutes(
    conn: Connection, lo: int | None, hi: int, *, limit: int | None = None
) -> tuple[int, int]:
    """Give the chunk rows in ``[lo, hi)`` that have raw points and no minute blob
    the minute blob compaction would have written (at most ``limit`` rows, the
    raw points kept). Returns the rows and the minute buckets written."""
    c = metric_chunks.c
    where = [c.chunk_start < hi, c.raw.is_not(None), c.minutes.is_(None)]
    if lo is not None:
        where.append(c.chunk_start >= lo)
    query = sa.select(c.series_id, c.chunk_start, c.raw).where(*where)
    if limit is not None:
        query = query.limit(limit)
    updates, buckets = [], 0
    for sid, chunk_start, raw in conn.execute(query).all():
        rollups = chunk_minutes(*blocks.decode_raw(raw), chunk_start)
        buckets += len(rollups)
        updates.append({"sid": sid, "cs": chunk_start, "m": blocks.encode(rollups.columns())})
    if updates:
        conn.execute(
            sa.update(metric_chunks)
            .where(c.series_id == sa.bindparam("sid"), c.chunk_start == sa.bindparam("cs"))
            .values(minutes=sa.bindparam("m")),
            updates,
        )
    return len(updates), buckets


class _SeriesRows:
    """SQLite: the latest values as rows of ``series_latest``, upserted newer-wins."""

    def __init__(self, upsert: BulkInsert) -> None:
        self.upsert = upsert

    def run(self, conn: Connection, values: Latest) -> None:
        if values:
            self.upsert.run(conn, latest.flat(values))


class _Statements:
    """The compiled statements of one kind of database (attributes set by ``_prepare``)."""

    insert_head: BulkInsert
    copy_head: CopyInsert | None
    """Large batches of head rows on PostgreSQL with psycopg 3 (``None`` elsewhere)."""
    upsert_latest: _SeriesRows | latest.MachineUpsert
    """The latest values of a write (:mod:`.latest`): ``.run(conn, latest)``."""
    select_epoch: Statement
    upsert_chunk: Statement
    select_raw: Statement
    select_minutes: Statement
    select_hours: Statement
    select_head: Statement
    select_series: dict[bool | None, Statement]
    """A history query's series and the horizons, by machine check (:func:`_select_series`)."""
    select_horizons: Statement
    touch: Statement
    finish: FinishWrite | None
    """PostgreSQL with psycopg 3: the latest values, ``last_seen`` and the ``COMMIT``
    in one round trip, and the epoch read with the ``BEGIN`` (``None`` elsewhere)."""


_PREPARED: dict[tuple[str, str, str], _Statements] = {}
_PREPARED_LOCK = threading.Lock()


Blobs: TypeAlias = tuple[bytes | None, bytes | None]
"""A chunk row's blob as a read selects it: ``(raw, None)`` at raw resolution; at
minute resolution ``(minutes, None)``, or ``(None, raw)`` while the chunk keeps
its raw points and so no minute blob (:func:`_minute_blobs`)."""

_HEAD_AND_BLOBS_SERIES: Final = 64
"""Series whose blobs are read with the head in one statement, at most (a chart's)."""


def _select_head_and_blobs(db: Database, resolution: Resolution, count: int) -> Statement:
    """A machine's head rows in ``[lo, hi)`` (``m``) and the raw or minute blobs of
    ``count`` series (``s0``...) in ``[clo, chi)``, in one statement: rows of
    ``(0, seq, ts, series ids, values)`` in write order, then ``(1, series id,
    chunk start, blob, NULL)`` by series and time (what the select_head and
    select_raw / select_minutes statements read). At minute resolution a chunk
    without a minute blob comes as ``(1, series id, chunk start, NULL, raw)``
    (:func:`_minute_blobs`)."""
    h, c = samples_head.c, metric_chunks.c
    blob, other = c.raw, sa.cast(sa.null(), sa.LargeBinary)
    present = c.raw.is_not(None)
    if resolution is not Resolution.RAW:
        blob, other, present = _minute_blobs()
    head = sa.select(
        sa.literal_column("0").label("part"),
        h.seq.label("a"),
        h.ts.label("b"),
        h.series_ids.label("x"),
        h.series_values.label("y"),
    ).where(
        h.machine_id == sa.bindparam("m"), h.ts >= sa.bindparam("lo"), h.ts < sa.bindparam("hi")
    )
    chunks = sa.select(
        sa.literal_column("1"),
        c.series_id,
        c.chunk_start,
        blob,
        other,
    ).where(
        c.series_id.in_([sa.bindparam(f"s{i}") for i in range(count)]),
        c.chunk_start >= sa.bindparam("clo"),
        c.chunk_start < sa.bindparam("chi"),
        present,
    )
    query = sa.union_all(head, chunks).order_by(
        sa.literal_column("part"), sa.literal_column("a"), sa.literal_column("b")
    )
    return db.statement(query)


def _minute_blobs() -> tuple[Any, Any, Any]:
    """What a minute read selects of a chunk row: its minute blob, its raw blob
    when it has no minute blob (raw points kept: :func:`_chunk_row`), and the
    condition that it has either."""
    c = metric_chunks.c
    return (
        c.minutes,
        sa.case((c.minutes.is_(None), c.raw)),
        sa.or_(c.minutes.is_not(None), c.raw.is_not(None)),
    )


def _select_series(db: Database, check: bool | None) -> Statement:
    """The series of a machine's metric (``m``, ``n``), each row with the retention
    horizons (raw, minute, hour: subqueries run once per statement).

    ``check`` ``None``: the series alone (the metric store knows no machines).
    Else through the machine's row, of owner ``o`` when ``check`` is ``True``: no
    row at all when there is no such machine, one with a null id when it has no
    such series.
    """
    horizon_of = [
        sa.select(storage_meta.c.value)
        .where(storage_meta.c.key == sa.literal_column(f"'{_HORIZON_KEYS[r]}'"))
        .scalar_subquery()
        for r in (Resolution.RAW, Resolution.MINUTE, Resolution.HOUR)
    ]
    s, m = series.c, machines.c
    query = sa.select(s.id, s.labels, *horizon_of).order_by(s.labels)
    if check is None:
        query = query.where(s.machine_id == sa.bindparam("m"), s.metric == sa.bindparam("n"))
    else:
        wanted = sa.and_(s.machine_id == m.id, s.metric == sa.bindparam("n"))
        query = query.select_from(machines.outerjoin(series, wanted))
        query = query.where(m.id == sa.bindparam("m"))
        if check:
            query = query.where(m.owner_id == sa.bindparam("o"))
    stmt = db.statement(query)
    assert set(stmt.names) == ({"m", "n", "o"} if check else {"m", "n"})
    return stmt


def _select_machine_latest(db: Database, check: bool, metrics: int | None) -> Statement:
    """The latest values of a machine's series (``m``; of the metrics ``n0``... when
    ``metrics`` is not ``None``) through the machine's row, of owner ``o`` with
    ``check``: no row at all when there is no such machine, one of nulls when it
    has no such values."""
    postgres = db.is_postgres
    values = latest.rows(postgres, [sa.bindparam("m")])
    s, m, v = series.c, machines.c, values.c
    wanted = s.machine_id == m.id
    if metrics == 0:
        wanted = sa.and_(wanted, sa.false())  # the check alone
    elif metrics is not None:
        wanted = sa.and_(wanted, s.metric.in_([sa.bindparam(f"n{i}") for i in range(metrics)]))
    joined = series.join(values, latest.on(values))
    query = (
        sa.select(s.metric, s.labels, v.ts, v.value)
        .select_from(machines.outerjoin(joined, wanted))
        .where(m.id == sa.bindparam("m"))
        .order_by(s.metric, s.labels)
    )
    if check:
        query = query.where(m.owner_id == sa.bindparam("o"))
    return db.statement(query)


def _prepare(db: Database) -> _Statements:
    """Compile every statement the store runs on this kind of database."""
    sql = _Statements()
    sql.insert_head = db.bulk_insert(
        samples_head, ("machine_id", "ts", "series_ids", "series_values"), lambda ins: ins
    )
    sql.copy_head = None
    if can_copy(db.engine.dialect):
        sql.copy_head = CopyInsert(
            db.engine.dialect,
            samples_head,
            ("machine_id", "ts", "series_ids", "series_values"),
            ("text", "int8", "bytea", "bytea"),
        )

    def newer_wins(ins: Any) -> Any:
        return ins.on_conflict_do_update(
            index_elements=[series_latest.c.series_id],
            set_={"ts": ins.excluded.ts, "value": ins.excluded.value},
            where=ins.excluded.ts > series_latest.c.ts,
        )

    if db.is_postgres:
        sql.upsert_latest = latest.MachineUpsert(db.engine.dialect)
    else:
        upsert = db.bulk_insert(series_latest, ("series_id", "ts", "value"), newer_wins)
        sql.upsert_latest = _SeriesRows(upsert)
    sql.select_epoch = db.statement(
        sa.select(storage_meta.c.value).where(storage_meta.c.key == sa.bindparam("key"))
    )
    chunk = db.insert(metric_chunks)
    sql.upsert_chunk = db.statement(
        chunk.on_conflict_do_update(
            index_elements=[metric_chunks.c.series_id, metric_chunks.c.chunk_start],
            set_={
                name: chunk.excluded[name]
                for name in (
                    "raw",
                    "minutes",
                    "hour_count",
                    "hour_sum",
                    "hour_min",
                    "hour_max",
                    "hour_last",
                )
            },
        )
    )
    c = metric_chunks.c
    in_range = (
        c.series_id == sa.bindparam("sid"),
        c.chunk_start >= sa.bindparam("lo"),
        c.chunk_start < sa.bindparam("hi"),
    )
    sql.select_raw = db.statement(
        sa.select(c.raw).where(*in_range, c.raw.is_not(None)).order_by(c.chunk_start)
    )
    minutes, raw_instead, present = _minute_blobs()
    sql.select_minutes = db.statement(
        sa.select(minutes, raw_instead).where(*in_range, present).order_by(c.chunk_start)
    )
    sql.select_hours = db.statement(
        sa.select(c.chunk_start, c.hour_count, c.hour_sum, c.hour_min, c.hour_max, c.hour_last)
        .where(*in_range, c.hour_count.is_not(None))
        .order_by(c.chunk_start)
    )
    for stmt in (sql.select_raw, sql.select_minutes, sql.select_hours):
        assert stmt.names == ("sid", "lo", "hi")
    h = samples_head.c
    sql.select_head = db.statement(
        sa.select(h.ts, h.series_ids, h.series_values)
        .where(
            h.machine_id == sa.bindparam("m"),
            h.ts >= sa.bindparam("lo"),
            h.ts < sa.bindparam("hi"),
        )
        .order_by(h.seq)
    )
    assert sql.select_head.names == ("m", "lo", "hi")
    sql.select_series = {check: _select_series(db, check) for check in (None, False, True)}
    sql.select_horizons = db.statement(
        sa.select(storage_meta.c.key, storage_meta.c.value).where(
            storage_meta.c.key.in_([sa.literal_column(f"'{k}'") for k in _HORIZON_KEYS.values()])
        )
    )
    sql.touch = touch_statement(db)
    sql.finish = FinishWrite(db.engine.dialect) if can_pipeline(db.engine.dialect) else None
    return sql
