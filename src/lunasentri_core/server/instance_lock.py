"""One server per SQLite database unless the user says otherwise.

SQLite lets several processes write one file, and servers sharing one follow
each other's changes, but a second ``lunasentri serve`` started by mistake on
the same data directory would share it silently: its writes wait on the first
server's lock, and two demos fight over one machine's key. So ``serve`` holds a
lock file beside the database while it runs: exclusive by default, so a second
server is refused with a message naming the first; shared with ``[server]
shared_database = true``, which every server on the file must set.

Storage other than a SQLite file (PostgreSQL, an in-memory database) is made
for several processes, or for one: nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from lunasentri_core.config import Settings
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.filelock import try_lock

LOCK_SUFFIX = ".server-lock"


class DatabaseInUse(LunaSentriError):
    """Another server holds the database's lock."""


def sqlite_database(url: str) -> Path | None:
    """The file of a ``sqlite:`` URL; ``None`` for other storage or an in-memory database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


@contextlib.contextmanager
def server_lock(settings: Settings) -> Iterator[None]:
    """Hold the database's server lock (if it is a SQLite file) while the block runs."""
    database = sqlite_database(settings.storage_url)
    if database is None:
        yield
        return
    path = database.with_name(database.name + LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        shared = settings.server.shared_database
        if not try_lock(fd, shared=shared):
            raise DatabaseInUse(_refusal(database, _holder(fd), shared))
        os.ftruncate(fd, 0)  # a pid left by an earlier exclusive server is stale now
        if not shared:
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return f"another server (process {text})" if text.isdigit() else "other servers"


def _refusal(database: Path, holder: str, shared: bool) -> str:
    if shared:
        return (
            f"{database} is held alone by {holder}; stop it, or set [server] "
            "shared_database = true on every server sharing it"
        )
    return (
        f"{database} is in use by {holder}; stop it, give this server another data "
        "directory (--data-dir), or set [server] shared_database = true on every server "
        "sharing it"
    )
