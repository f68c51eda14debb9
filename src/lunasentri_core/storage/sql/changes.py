"""The change counter that processes sharing a database watch.

Each process keeps alert rules and machines in memory (see
:meth:`~lunasentri_core.storage.StateStore.config_epoch`). Every transaction
that changes a rule, a machine's fields or a user's existence adds one to
``config_epoch`` in ``storage_meta``; a process that reads a different value
than last time reloads what it holds.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lunasentri_core.storage.protocols import ChangeKind
from lunasentri_core.storage.sql.database import Database
from lunasentri_core.storage.sql.schema import storage_meta

CONFIG_EPOCH: Final = "config_epoch"


def bump_config_epoch(db: Database, conn: Connection, *, notice: bool = True) -> None:
    """Count a change, inside the transaction that makes it, and tell the other processes
    (unless ``notice`` is false: the caller sends a notice of its own kind)."""
    stmt = db.insert(storage_meta).values(key=CONFIG_EPOCH, value=1)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[storage_meta.c.key], set_={"value": storage_meta.c.value + 1}
        )
    )
    if notice:
        db.notices.send(conn, ChangeKind.CONFIG)


def read_config_epoch(conn: Connection) -> int:
    value = conn.execute(
        sa.select(storage_meta.c.value).where(storage_meta.c.key == CONFIG_EPOCH)
    ).scalar()
    return int(value or 0)
