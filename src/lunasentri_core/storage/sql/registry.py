"""Series ids of a whole write batch, found or created in a constant number of statements.

A fleet's batch holds samples of hundreds of machines. Resolving their series
machine by machine cost several round trips each on PostgreSQL (10.9 s for
one sample from each of 500 new machines); here every machine's keys travel
together, whatever their number:

1. one ``SELECT`` joining ``series`` with the wanted keys;
2. for the keys not found, one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``;
3. one upsert of ``machine_series`` adding what each machine got (the series
   limit is checked there, row by row, under PostgreSQL's row lock);
4. one more ``SELECT`` for keys another process inserted meanwhile (its
   insert won the conflict: after it commits, ours did nothing).

The keys go as one JSON text parameter, taken apart by ``json_array_elements``
(PostgreSQL) or ``json_each`` (SQLite): the SQL is the same for every batch
(compiled once, no parameter limit).

Rows are inserted sorted by ``(machine_id, metric, labels)`` and counted sorted
by ``machine_id``: writers creating overlapping series wait for each other in
one order and never deadlock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from lunasentri_core.errors import SeriesLimitError, StorageError
from lunasentri_core.model import Labels
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.head import SeriesIds
from lunasentri_core.storage.sql.schema import labels_to_json, machine_series, series

Key = tuple[str, str, str]
"""``(machine_id, metric, labels as stored)``: a row of ``series`` without its id."""


class SeriesRegistry:
    """The statements that find and create series, compiled for one database."""

    def __init__(self, db: Database) -> None:
        dialect = db.engine.dialect
        quote = dialect.identifier_preparer
        table, counts = quote.format_table(series), quote.format_table(machine_series)
        if db.is_postgres:
            if dialect.paramstyle not in ("format", "pyformat"):
                raise StorageError(f"unsupported PostgreSQL parameter style {dialect.paramstyle}")
            rows, limit = "json_array_elements(%s::json) AS j(e)", "%s"

            def item(i: int) -> str:
                return f"e->>{i}"
        else:
            rows, limit = "json_each(?)", "?"

            def item(i: int) -> str:
                return f"json_extract(value, '$[{i}]')"

        keys = (
            f"(SELECT {item(0)} AS machine_id, {item(1)} AS metric, {item(2)} AS labels"
            f" FROM {rows}) AS w"
        )
        added = f"(SELECT {item(0)} AS machine_id, {item(1)} AS series FROM {rows}) AS w"
        if db.is_postgres:
            added = added.replace(f"{item(1)} AS", f"({item(1)})::integer AS")
        # CROSS JOIN: SQLite then walks the wanted keys and probes the unique
        # index, never the other way round.
        self._find = (
            f"SELECT s.id, s.machine_id, s.metric, s.labels FROM {keys} CROSS JOIN {table} AS s"
            " WHERE s.machine_id = w.machine_id AND s.metric = w.metric AND s.labels = w.labels"
        )
        # ORDER BY (and WHERE true, which SQLite's parser needs before ON CONFLICT).
        self._create = (
            f"INSERT INTO {table} (machine_id, metric, labels)"
            f" SELECT w.machine_id, w.metric, w.labels FROM {keys} WHERE true"
            " ORDER BY w.machine_id, w.metric, w.labels"
            " ON CONFLICT DO NOTHING RETURNING id, machine_id, metric, labels"
        )
        count = (
            f"INSERT INTO {counts} AS m (machine_id, series)"
            f" SELECT w.machine_id, w.series FROM {added} WHERE true ORDER BY w.machine_id"
            " ON CONFLICT (machine_id) DO UPDATE SET series = m.series + excluded.series"
        )
        self._count = f"{count} RETURNING machine_id"
        self._count_limited = (
            f"{count} WHERE m.series + excluded.series <= {limit} RETURNING machine_id"
        )

    def resolve(
        self,
        conn: Connection,
        wanted: Mapping[str, Iterable[tuple[str, Labels]]],
        max_series: int | None,
    ) -> dict[str, SeriesIds]:
        """Ids of ``wanted`` series by machine, creating the missing ones.

        ``max_series``: :class:`SeriesLimitError` (the caller rolls back) when
        a machine would have more series; a write then stores nothing.
        """
        labels_of: dict[str, Labels] = {}
        text_of: dict[Labels, str] = {}
        keys: list[Key] = []
        for machine_id, machine_keys in wanted.items():
            for metric, labels in machine_keys:
                text = text_of.get(labels)
                if text is None:
                    text = text_of[labels] = labels_to_json(labels)
                    labels_of[text] = labels
                keys.append((machine_id, metric, text))
        keys.sort()
        found = self._select(conn, keys)
        missing = [key for key in keys if key not in found]
        if missing:
            found.update(self._insert(conn, missing, max_series))
        out: dict[str, SeriesIds] = {machine_id: {} for machine_id in wanted}
        for (machine_id, metric, text), sid in found.items():
            out[machine_id][metric, labels_of[text]] = sid
        return out

    def _insert(self, conn: Connection, keys: list[Key], max_series: int | None) -> dict[Key, int]:
        if max_series is not None:
            adding = Counter(machine_id for machine_id, _, _ in keys)
            for machine_id in sorted(adding):
                if adding[machine_id] > max_series:
                    raise SeriesLimitError(machine_id, max_series, adding[machine_id])
        created = self._rows(conn.exec_driver_sql(self._create, self._params(keys)))
        if created:
            self._add_counts(conn, Counter(machine_id for machine_id, _, _ in created), max_series)
        if len(created) < len(keys):
            # Created meanwhile by another process (its insert won the conflict).
            created.update(self._select(conn, [key for key in keys if key not in created]))
        return created

    def _select(self, conn: Connection, keys: Sequence[Key]) -> dict[Key, int]:
        if not keys:
            return {}
        return self._rows(conn.exec_driver_sql(self._find, self._params(keys)))

    def _add_counts(
        self, conn: Connection, added: Mapping[str, int], max_series: int | None
    ) -> None:
        """Add each machine's new series to its count, or refuse past ``max_series``."""
        machines = sorted(added)
        rows = [(machine_id, added[machine_id]) for machine_id in machines]
        params: tuple[Any, ...] = self._params(rows)
        sql = self._count
        if max_series is not None:
            sql, params = self._count_limited, (*params, max_series)
        counted = set(conn.exec_driver_sql(sql, params).scalars())
        refused = [machine_id for machine_id in machines if machine_id not in counted]
        if refused:
            assert max_series is not None
            raise SeriesLimitError(refused[0], max_series, added[refused[0]])

    @staticmethod
    def _params(rows: Sequence[tuple[Any, ...]]) -> tuple[str]:
        # One JSON text: psycopg escapes the strings of a text array one regex
        # call each, which took longer than the statements themselves.
        return (json.dumps(rows, ensure_ascii=False, separators=(",", ":")),)

    @staticmethod
    def _rows(result: Any) -> dict[Key, int]:
        # The driver's own tuples: tens of thousands of rows for a new fleet.
        rows = result.cursor.fetchall() if result.cursor is not None else []
        result.close()
        return {(machine_id, metric, text): sid for sid, machine_id, metric, text in rows}
