"""The latest values: each series' newest point, kept by every write.

Two forms, one per kind of database:

* SQLite: ``series_latest``, a row per series, upserted newer-wins (a row
  costs no round trip and little work there).
* PostgreSQL: ``latest_values``, a row per machine and part (:data:`PART_IDS`
  consecutive series ids) holding its series ids (in increasing order), their
  timestamps and values as arrays, and the oldest and newest of those
  timestamps. Updating 1,000 rows of ``series_latest`` was the largest part of
  a batch's cost on the server (about 3.3 ms of its 6-7 for 20 machines of 50
  series); 20-odd rows of arrays take a fraction of that.

A write upserts one row per machine and part (:class:`MachineUpsert`), locking
the rows in (machine id, part) order. When the row holds the same series and
every new point is newer than its newest (``oldest > newest``: an agent's next
samples), the new arrays replace the stored ones; otherwise the two are merged
series by series, the newer point winning (on equal timestamps the stored
one, as with ``series_latest``). ``ON CONFLICT DO UPDATE`` computes either from
the row as last committed, after locking it: two writers of one machine take
turns and neither loses the other's newer points.

Readers see both forms as rows ``(machine_id, series_id, ts, value)``
(:func:`rows`); a deleted machine's rows go with its series, and a row left by a
writer that raced the deletion is dropped or stripped of the dead ids by
maintenance (:func:`clean_orphans`), as ``series_latest``'s rows are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.expression import ColumnElement, FromClause, Select

from lunasentri_core.storage.sql import pgarrays
from lunasentri_core.storage.sql.head import Columns, Latest
from lunasentri_core.storage.sql.schema import latest_values, series, series_latest

PART_IDS: Final = 256
"""Series ids per row of ``latest_values``: a row holds a machine's series of one
range ``[k * PART_IDS, (k + 1) * PART_IDS)``.

A write rewrites each row it touches whole, so a row's size bounds the cost of
a write of a few series: a machine of 10,000 series in one row took 10.5 ms to
write 10 of them (1.3 ms for a machine of 50). A machine's series are mostly
created together, with consecutive ids: an agent's 25-50 series take one row,
or two across a boundary. 256 series (6 KB of arrays) also keep a row whole in
its page (``toast_tuple_target``, migration 0013)."""


def flat(latest: Latest) -> Columns:
    """Every machine's latest points as one set of columns (SQLite's rows: a
    machine's series are its own, so no id comes twice)."""
    if len(latest) == 1:
        return latest[0][1]
    sids: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    for _, (m_sids, m_stamps, m_values) in latest:
        sids += m_sids
        stamps += m_stamps
        values += m_values
    return sids, stamps, values


def parts(sids: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """The runs of increasing ``sids`` sharing a part: ``(part, start, stop)``."""
    start = 0
    while start < len(sids):
        part = sids[start] // PART_IDS
        stop = bisect_left(sids, (part + 1) * PART_IDS, start)
        yield part, start, stop
        start = stop


_FAST: Final = "(excluded.oldest > l.newest AND l.series_ids = excluded.series_ids)"
"""The stored row is replaced whole: the same series, every new point newer."""


_MERGE: Final = (
    " (series_ids, series_ts, series_values, oldest, newest) = (SELECT"
    f" CASE WHEN {_FAST} THEN excluded.series_ids ELSE m.s END,"
    f" CASE WHEN {_FAST} THEN excluded.series_ts ELSE m.t END,"
    f" CASE WHEN {_FAST} THEN excluded.series_values ELSE m.v END,"
    f" CASE WHEN {_FAST} THEN excluded.oldest ELSE m.lo END,"
    f" CASE WHEN {_FAST} THEN excluded.newest ELSE m.hi END"
    # The arrays in the order of a sorted subquery, which PostgreSQL keeps for an
    # aggregate over it (an ORDER BY in each array_agg sorted three times: the
    # merge took 4.9 instead of 2.9 ms for 20 machines). Were the ids ever out of
    # order, the next write would merge instead of replacing: slower, not wrong.
    " FROM (SELECT array_agg(j.sid) AS s, array_agg(j.t) AS t, array_agg(j.v) AS v,"
    " min(j.t) AS lo, max(j.t) AS hi FROM ("
    " SELECT coalesce(n.sid, o.sid) AS sid,"
    " CASE WHEN o.sid IS NULL OR n.t > o.t THEN n.t ELSE o.t END AS t,"
    " CASE WHEN o.sid IS NULL OR n.t > o.t THEN n.v ELSE o.v END AS v"
    " FROM unnest(l.series_ids, l.series_ts, l.series_values) AS o(sid, t, v)"
    f" FULL JOIN unnest(excluded.series_ids, excluded.series_ts, excluded.series_values)"
    " AS n(sid, t, v) ON o.sid = n.sid"
    # Never executed when the row is replaced whole (a one-time filter).
    f" WHERE NOT {_FAST} ORDER BY 1) AS j) AS m)"
)
"""The ``SET`` of a machine's upsert: the arrays replaced, or merged newest-wins."""


class MachineUpsert:
    """PostgreSQL: the latest points of a batch's machines, a row per machine and
    part, in one statement.

    Parameters: the rows' machine ids and parts, the slice of the flat arrays
    each row's points take (1-based bounds), their oldest and newest timestamps,
    then the flat series ids, timestamps and values (:meth:`parameters`).
    """

    def __init__(self, dialect: Dialect) -> None:
        table = dialect.identifier_preparer.format_table(latest_values)
        self.sql: Final = (
            f"INSERT INTO {table} AS l"
            " (machine_id, part, series_ids, series_ts, series_values, oldest, newest)"
            " SELECT r.machine_id, r.part, a.s[r.lo:r.hi], a.t[r.lo:r.hi], a.v[r.lo:r.hi],"
            " r.oldest, r.newest"
            " FROM unnest(%s::text[], %s::integer[], %s::integer[], %s::integer[],"
            " %s::bigint[], %s::bigint[])"
            " WITH ORDINALITY AS r(machine_id, part, lo, hi, oldest, newest, n),"
            " (SELECT %s::integer[] AS s, %s::bigint[] AS t, %s::double precision[] AS v) AS a"
            " ORDER BY r.n"
            f" ON CONFLICT (machine_id, part) DO UPDATE SET {_MERGE}"
        )

    @staticmethod
    def parameters(latest: Latest, *, packed: bool) -> tuple[Any, ...]:
        """The statement's parameters; ``packed``: the number arrays in binary
        format (psycopg 3, :mod:`.pgarrays`), else as lists."""
        ids: list[str] = []
        numbers: list[int] = []
        los: list[int] = []
        his: list[int] = []
        oldest: list[int] = []
        newest: list[int] = []
        sids: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        for machine_id, (m_sids, m_stamps, m_values) in latest:
            sids += m_sids
            stamps += m_stamps
            values += m_values
            offset = len(sids) - len(m_sids)
            for part, start, stop in parts(m_sids):
                ids.append(machine_id)
                numbers.append(part)
                los.append(offset + start + 1)
                his.append(offset + stop)
                oldest.append(min(m_stamps[start:stop]))
                newest.append(max(m_stamps[start:stop]))
        columns: tuple[tuple[type[pgarrays.PackedArray], Sequence[Any]], ...] = (
            (pgarrays.Int4Array, numbers),
            (pgarrays.Int4Array, los),
            (pgarrays.Int4Array, his),
            (pgarrays.Int8Array, oldest),
            (pgarrays.Int8Array, newest),
            (pgarrays.Int4Array, sids),
            (pgarrays.Int8Array, stamps),
            (pgarrays.Float8Array, values),
        )
        if not packed:
            return (ids, *(list(column) for _, column in columns))
        return (ids, *(pgarrays.pack(kind, column) or list(column) for kind, column in columns))

    def run(self, conn: Connection, latest: Latest) -> None:
        """On its own, inside the caller's transaction (any PostgreSQL driver)."""
        if not latest:
            return
        packed = conn.dialect.driver == "psycopg"
        if packed:
            pgarrays.ensure_registered(conn.connection.driver_connection)
        conn.exec_driver_sql(self.sql, self.parameters(latest, packed=packed))


def rows(postgres: bool, machines: Sequence[ColumnElement[Any]] = ()) -> FromClause:
    """The latest values as rows ``(machine_id, series_id, ts, value)`` (SQLite's
    ``series_latest`` has no ``machine_id``: there the column is ``NULL``).

    Join them to ``series`` with :func:`on`. On PostgreSQL only the rows of
    ``machines`` (parameters: their ids) are unnested, each once: left to the
    planner, the unnesting of a machine's row was redone for each of its series
    (a materialized CTE keeps it from that).
    """
    if not postgres:
        v = series_latest.c
        return sa.select(
            sa.cast(sa.null(), sa.Text).label("machine_id"), v.series_id, v.ts, v.value
        ).subquery("v")
    lv = latest_values.c
    unnested = (
        sa.func.unnest(lv.series_ids, lv.series_ts, lv.series_values)
        .table_valued("series_id", "ts", "value")
        .render_derived(name="u")
    )
    # A function in FROM sees the tables before it (an implicit LATERAL).
    query = sa.select(lv.machine_id, unnested.c.series_id, unnested.c.ts, unnested.c.value)
    query = query.select_from(latest_values.join(unnested, sa.true()))
    if machines:
        query = query.where(lv.machine_id.in_(machines))
    return query.cte("v").prefix_with("MATERIALIZED")


def on(values: FromClause) -> ColumnElement[bool]:
    """The join of :func:`rows` to ``series``: by series id alone (a machine's row
    holds only its own series' ids, and ids are never reused). With the machine
    as well, PostgreSQL paired every series of a machine with every one of its
    values before picking the one with the same id."""
    return values.c.series_id == series.c.id


def delete_machine(conn: Connection, machine_id: str) -> None:
    """A machine's rows of ``latest_values`` (its ``series_latest`` rows go by series id)."""
    conn.execute(sa.delete(latest_values).where(latest_values.c.machine_id == machine_id))


def clean_orphans(conn: Connection) -> None:
    """Drop the latest values of series that no longer exist (deleted while
    another process was writing them)."""
    live = sa.select(series.c.id)
    conn.execute(sa.delete(series_latest).where(series_latest.c.series_id.not_in(live)))
    if conn.dialect.name != "postgresql":
        return
    table = conn.dialect.identifier_preparer.format_table(latest_values)
    kind = conn.dialect.identifier_preparer.format_table(series)
    lives = (
        f"EXISTS (SELECT 1 FROM unnest(l.series_ids) AS u(sid) JOIN {kind} AS s ON s.id = u.sid)"
    )
    conn.exec_driver_sql(f"DELETE FROM {table} AS l WHERE NOT {lives}")
    # Rows with some dead ids keep their live ones (a row whose ids all died in the
    # meantime stays for the next pass: the arrays must not become NULL).
    conn.exec_driver_sql(
        f"UPDATE {table} AS l SET (series_ids, series_ts, series_values, oldest, newest) ="
        " (SELECT array_agg(u.sid ORDER BY u.sid), array_agg(u.t ORDER BY u.sid),"
        " array_agg(u.v ORDER BY u.sid), min(u.t), max(u.t)"
        " FROM unnest(l.series_ids, l.series_ts, l.series_values) AS u(sid, t, v)"
        f" JOIN {kind} AS s ON s.id = u.sid)"
        f" WHERE {lives} AND EXISTS (SELECT 1 FROM unnest(l.series_ids) AS u(sid)"
        f" WHERE NOT EXISTS (SELECT 1 FROM {kind} AS s WHERE s.id = u.sid))"
    )


def series_rows(postgres: bool) -> Select[Any]:
    """Every latest value as a row ``(series_id, ts, value)``, in either form
    (:mod:`.copy` moves them between the two)."""
    v = series_latest.c
    plain = sa.select(v.series_id, v.ts, v.value)
    if not postgres:
        return plain
    unnested = rows(True)
    return (
        sa.union_all(plain, sa.select(unnested.c.series_id, unnested.c.ts, unnested.c.value))
        .subquery("all_latest")
        .select()
    )


def count(conn: Connection) -> int:
    """How many latest values there are (one per series), in either form."""
    found = sa.select(sa.func.count()).select_from(series_latest)
    total = int(conn.execute(found).scalar_one())
    if conn.dialect.name == "postgresql":
        per_row = sa.func.cardinality(latest_values.c.series_ids)
        total += int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.sum(per_row), 0))).scalar_one()
        )
    return total


def gather(conn: Connection) -> None:
    """PostgreSQL: move rows of ``series_latest`` into the machines' rows of
    ``latest_values`` (newer points win), as migration 0013 does; rows of series
    that no longer exist are dropped."""
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer
    table, old = quote.format_table(latest_values), quote.format_table(series_latest)
    conn.exec_driver_sql(
        f"INSERT INTO {table} AS l"
        " (machine_id, part, series_ids, series_ts, series_values, oldest, newest)"
        f" SELECT s.machine_id, l.series_id / {PART_IDS},"
        " array_agg(l.series_id ORDER BY l.series_id),"
        " array_agg(l.ts ORDER BY l.series_id), array_agg(l.value ORDER BY l.series_id),"
        " min(l.ts), max(l.ts)"
        f" FROM {old} AS l JOIN {quote.format_table(series)} AS s ON s.id = l.series_id"
        " GROUP BY 1, 2 ORDER BY 1, 2"
        f" ON CONFLICT (machine_id, part) DO UPDATE SET {_MERGE}"
    )
    conn.exec_driver_sql(f"DELETE FROM {old}")
