"""Helpers shared by the SQL storage tests (a plain module: conftest.py is not importable)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core.model import RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage

NO_RETENTION = RetentionPolicy(raw=None, minute=None, hour=None)

OpenStorage = Callable[..., SqlStorage]
"""``open_storage(retention=NO_RETENTION, **kwargs)``: one more migrated store on the database."""

_SENT = re.compile(r'F\t\d+\t(?:Parse\t "[^"]*" "(?P<parse>.*)" \d+|Query\t "(?P<query>.*)")', re.S)
_MESSAGE = re.compile(r"\n(?=[FB]\t)")
"""Where a traced message starts (a statement's text may hold line breaks)."""


@contextmanager
def round_trips(engine: Engine) -> Iterator[list[list[str]]]:
    """PostgreSQL with psycopg 3: every round trip to the server made by ``engine``'s
    connections inside the block, as the statements sent in it (one-line SQL;
    a statement psycopg has prepared before is sent without its text).

    From libpq's trace: a round trip is each time the client sends after the
    server has answered, as that is when the client waited. A pipeline is one;
    ``COPY ... FROM STDIN`` is two (the statement, then its data once the server
    asked for it: the second trip sends no statement).
    """
    from psycopg import pq

    trace = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (read at the end)

    def start(dbapi_conn: Any, *_: Any) -> None:
        pgconn = dbapi_conn.pgconn
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def stop(dbapi_conn: Any, *_: Any) -> None:
        if dbapi_conn is not None:  # None: the pool dropped it
            dbapi_conn.pgconn.untrace()

    trips: list[list[str]] = []
    sa.event.listen(engine, "checkout", start)
    sa.event.listen(engine, "checkin", stop)
    try:
        yield trips
    finally:
        sa.event.remove(engine, "checkout", start)
        sa.event.remove(engine, "checkin", stop)
        with trace:
            trace.seek(0)
            trips.extend(_trips(trace.read()))


def _trips(text: str) -> list[list[str]]:
    trips: list[list[str]] = []
    answered = True  # before the first message: the client starts a round trip
    for line in _MESSAGE.split(text):
        if line.startswith("B\t"):
            answered = True
            continue
        if not line.startswith("F\t"):
            continue
        if answered:
            trips.append([])
            answered = False
        found = _SENT.match(line)
        if found is not None:
            trips[-1].append(" ".join((found["parse"] or found["query"]).split()))
    return trips
