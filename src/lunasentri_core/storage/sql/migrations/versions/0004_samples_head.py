"""The head holds whole samples: ``samples_head`` (a row per sample) replaces ``points_head``.

Points not compacted yet are carried over, a machine's points of one
timestamp becoming one sample. Points of series deleted meanwhile (which
compaction would drop) are left behind.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FLOAT = sa.Float(precision=53)
_ROWS = 1_000
"""Rows per INSERT while copying."""

# The packed form as of this revision (little-endian int64 ids, float64 values),
# written out here so that this migration does not change when the code does.
_SWAP = sys.byteorder == "big"


def _pack(typecode: str, values: Sequence[Any]) -> bytes:
    column = array(typecode, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _unpack(typecode: str, blob: bytes) -> array[Any]:
    column = array(typecode)
    column.frombytes(blob)
    if _SWAP:
        column.byteswap()
    return column


def upgrade() -> None:
    samples_head = op.create_table(
        "samples_head",
        sa.Column("seq", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("machine_id", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("series_ids", sa.LargeBinary, nullable=False),
        sa.Column("series_values", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_samples_head"),
    )
    op.create_index("ix_samples_head_machine_id_ts", "samples_head", ["machine_id", "ts"])
    op.create_index("ix_samples_head_ts", "samples_head", ["ts"])
    assert samples_head is not None
    points = op.get_bind().execute(
        sa.text(
            "SELECT s.machine_id, p.ts, p.series_id, p.value FROM points_head p "
            "JOIN series s ON s.id = p.series_id ORDER BY s.machine_id, p.ts, p.series_id"
        )
    )
    for rows in _batched(_samples(points)):
        op.bulk_insert(samples_head, rows)
    op.drop_table("points_head")


def _samples(points: Any) -> Iterator[dict[str, Any]]:
    for (machine_id, ts), group in groupby(points, key=itemgetter(0, 1)):
        rows = list(group)
        yield {
            "machine_id": machine_id,
            "ts": ts,
            "series_ids": _pack("q", [row[2] for row in rows]),
            "series_values": _pack("d", [row[3] for row in rows]),
        }


def _batched(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def downgrade() -> None:
    points_head = op.create_table(
        "points_head",
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("series_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("value", _FLOAT, nullable=False),
        sa.PrimaryKeyConstraint("ts", "series_id", name="pk_points_head"),
        sqlite_with_rowid=False,
    )
    assert points_head is not None
    samples = op.get_bind().execute(
        sa.text("SELECT ts, series_ids, series_values FROM samples_head ORDER BY seq")
    )
    seen: set[tuple[int, int]] = set()
    batch: list[dict[str, Any]] = []
    for ts, sids_blob, values_blob in samples:
        for sid, value in zip(_unpack("q", sids_blob), _unpack("d", values_blob), strict=True):
            if (ts, sid) not in seen:  # the first value written wins, as in the head
                seen.add((ts, sid))
                batch.append({"ts": ts, "series_id": sid, "value": value})
        if len(batch) >= _ROWS:
            op.bulk_insert(points_head, batch)
            batch = []
    if batch:
        op.bulk_insert(points_head, batch)
    op.drop_table("samples_head")
