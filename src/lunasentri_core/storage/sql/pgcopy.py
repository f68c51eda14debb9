"""Rows into PostgreSQL through ``COPY ... FROM STDIN (FORMAT BINARY)`` (psycopg 3).

``COPY`` skips what an ``INSERT`` costs per row on both sides: no statement to
parse and plan, no array parameter to build and take apart, and, in binary
format, the packed blobs of ``samples_head`` travel as they are instead of as
hex text. It runs on the transaction's own driver connection, so it commits or
rolls back with the rest of the write.

It takes one more round trip than an ``INSERT`` (the server answers the
``COPY`` before the data goes), which is why small batches keep their
``INSERT``: see :data:`COPY_MIN_ROWS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect

COPY_MIN_ROWS: Final = 16
"""Batches with fewer rows keep the ``INSERT``.

Measured on loopback (PostgreSQL 15, psycopg 3.3, 400-byte blobs, a loaded
2-core machine), per row including the commit: 1 row 270 us by ``COPY`` and
350 us by ``INSERT ... unnest``, 4 rows 76 / 149 us, 16 rows 26 / 66 us,
1,000 rows 13 / 65 us. ``COPY`` never lost on loopback; the threshold is for
a database across a network, where its extra round trip (about a millisecond
on a LAN) is only won back from about 16 rows on.
"""

DRIVER: Final = "psycopg"
"""The driver whose connections can ``COPY`` (psycopg 3's ``Cursor.copy``)."""


def can_copy(dialect: Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == DRIVER


class CopyInsert:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)`` of ready row tuples.

    ``types`` are the PostgreSQL type names of ``columns``: binary ``COPY``
    needs each value in exactly the column's type, so psycopg is told them
    instead of guessing from the Python values.
    """

    def __init__(
        self, dialect: Dialect, table: sa.Table, columns: Sequence[str], types: Sequence[str]
    ) -> None:
        if len(columns) != len(types):
            raise ValueError("one type per column")
        quote = dialect.identifier_preparer
        names = ", ".join(quote.quote(table.c[column].name) for column in columns)
        self.sql: Final = f"COPY {quote.format_table(table)} ({names}) FROM STDIN (FORMAT BINARY)"
        self.types: Final = tuple(types)
        self.min_rows = COPY_MIN_ROWS

    def wanted(self, rows: int) -> bool:
        """Whether ``rows`` rows go faster through ``COPY`` than through ``INSERT``."""
        return rows >= self.min_rows

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Copy ``rows`` inside ``conn``'s transaction.

        A failure raises the SQLAlchemy exception an ``INSERT`` would have, so
        the caller's error handling (and the rollback) are the same.
        """
        import psycopg  # only PostgreSQL installs have it

        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection), "COPY needs a psycopg 3 connection"
        try:
            with driver.cursor() as cursor, cursor.copy(self.sql) as copy:
                copy.set_types(self.types)
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as error:
            if driver.broken:
                # The pool must not hand out a connection that lost its server.
                conn.invalidate(error)
            raise exc.DBAPIError.instance(
                self.sql,
                None,
                error,
                psycopg.Error,
                connection_invalidated=driver.broken,
                dialect=conn.dialect,
            ) from error
