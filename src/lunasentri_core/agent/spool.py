"""The agent's on-disk queue of samples not yet acknowledged by the server.

Layout of the spool directory::

    queue/<seq>.json    one collected sample each (its JSON), oldest = smallest seq
    queue/.<seq>.tmp    a sample being written (removed at the next open)
    dead/<seq>.json     batches the server refused as invalid, kept for inspection

One file per sample keeps every operation atomic without a log format to recover:
a sample is written to a temporary file, fsynced and renamed into ``queue/`` (and
the directory fsynced), so after a crash a sample is either wholly there or not
at all. Sending reads the oldest files and unlinks them only after the server
acknowledged them; a crash in between sends them again, which is harmless because
the server stores a (series, timestamp) point once. Unlinks are not fsynced for
the same reason.

Sequence numbers are microseconds since the epoch, bumped past the newest queued
sample, so the order survives restarts. The in-memory index (seq and size per
queued file) is rebuilt from one directory scan at open, which also bounds the
spool: samples beyond ``max_bytes`` are dropped oldest first, counted and logged.
Sizes are counted in file-system blocks, what the files really take on disk (a
sample of 700 bytes occupies a 4 KiB block).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from lunasentri_core.filelock import try_lock

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
DROP_LOG_PERIOD = 60.0
DEAD_LETTER_SHARE = 10
"""Dead letters may take up to 1/DEAD_LETTER_SHARE of ``max_bytes``; older ones go."""


class SpooledSample(NamedTuple):
    seq: int
    data: bytes
    """The sample's JSON as collected."""


class Spool:
    """A durable FIFO of encoded samples, bounded by bytes. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.queue_dir = directory / "queue"
        self.dead_dir = directory / "dead"
        self.max_bytes = max_bytes
        self.block = 4096
        """File-system block size: the disk space a small file takes."""
        self.dropped = 0
        """Samples dropped to respect ``max_bytes`` since this spool was opened."""
        self.dead_lettered = 0
        self._index: collections.deque[tuple[int, int]] = collections.deque()
        self._bytes = 0
        self._last_seq = 0
        self._lock = threading.Lock()
        self._drop_logged_at = -math.inf

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: Path, max_bytes: int) -> Spool:
        spool = cls(directory, max_bytes)
        spool._load()
        return spool

    def _load(self) -> None:
        for path in (self.directory, self.queue_dir, self.dead_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if hasattr(os, "statvfs"):
            self.block = os.statvfs(self.queue_dir).f_bsize or self.block
        found: list[tuple[int, int]] = []
        with os.scandir(self.queue_dir) as entries:
            for entry in entries:
                if entry.name.endswith(_TMP_SUFFIX):
                    # Half-written when the agent stopped: never renamed, so never queued.
                    Path(entry.path).unlink(missing_ok=True)
                    continue
                seq = _seq_of(entry.name)
                if seq is not None:
                    found.append((seq, self._on_disk(entry.stat().st_size)))
        found.sort()
        self._index.extend(found)
        self._bytes = sum(size for _, size in found)
        self._last_seq = found[-1][0] if found else 0
        self._enforce_bound()
        if found:
            log.info("spool %s holds %d samples from a previous run", self.queue_dir, len(self))

    # ------------------------------------------------------------ queue

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size_bytes(self) -> int:
        """Disk space the queued samples take (whole blocks)."""
        return self._bytes

    def append(self, data: bytes) -> int:
        """Store one sample durably; returns how many old samples the bound dropped."""
        with self._lock:
            seq = max(self._last_seq + 1, time.time_ns() // 1000)
            self._last_seq = seq
            final = self.queue_dir / f"{seq:017d}{_SUFFIX}"
            write_durably(self.queue_dir / f".{seq:017d}{_TMP_SUFFIX}", final, data)
            size = self._on_disk(len(data))
            self._index.append((seq, size))
            self._bytes += size
            return self._enforce_bound()

    def peek(self, limit: int) -> list[SpooledSample]:
        """The oldest ``limit`` samples, still queued until :meth:`remove`."""
        with self._lock:
            wanted = [seq for seq, _ in itertools.islice(self._index, limit)]
        batch: list[SpooledSample] = []
        for seq in wanted:
            try:
                batch.append(SpooledSample(seq, self._path(seq).read_bytes()))
            except FileNotFoundError:
                # Dropped by the bound (or removed by hand) since the index was read.
                self._forget([seq])
        return batch

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget samples the server acknowledged."""
        seqs = list(seqs)
        for seq in seqs:
            self._path(seq).unlink(missing_ok=True)
        self._forget(seqs)

    def dead_letter(self, batch: Sequence[SpooledSample], reason: str) -> Path:
        """Move a batch the server refused as invalid out of the queue, with the reason."""
        record = {
            "reason": reason,
            "dead_lettered_at": time.time(),
            "samples": [_readable(sample.data) for sample in batch],
        }
        target = self.dead_dir / f"{batch[0].seq:017d}{_SUFFIX}"
        data = json.dumps(record, indent=1).encode()
        write_durably(self.dead_dir / f".{batch[0].seq:017d}{_TMP_SUFFIX}", target, data)
        self.remove(sample.seq for sample in batch)
        self.dead_lettered += len(batch)
        log.error(
            "server refused %d sample(s) as invalid (%s); moved to %s", len(batch), reason, target
        )
        self._prune_dead_letters()
        return target

    # ------------------------------------------------------------ internals

    def _on_disk(self, size: int) -> int:
        return max(1, -(-size // self.block)) * self.block

    def _path(self, seq: int) -> Path:
        return self.queue_dir / f"{seq:017d}{_SUFFIX}"

    def _forget(self, seqs: Iterable[int]) -> None:
        gone = set(seqs)
        with self._lock:
            # Acknowledged batches are the oldest samples: pop them off the front.
            while self._index and self._index[0][0] in gone:
                seq, size = self._index.popleft()
                gone.discard(seq)
                self._bytes -= size
            if gone:
                kept = [(seq, size) for seq, size in self._index if seq not in gone]
                self._bytes -= sum(size for seq, size in self._index if seq in gone)
                self._index = collections.deque(kept)

    def _enforce_bound(self) -> int:
        dropped = 0
        # The newest sample always stays, even if it alone is larger than the bound.
        while self._bytes > self.max_bytes and len(self._index) > 1:
            seq, size = self._index.popleft()
            self._path(seq).unlink(missing_ok=True)
            self._bytes -= size
            dropped += 1
        if dropped:
            self.dropped += dropped
            now = time.monotonic()
            # A full spool drops a sample at every interval: say so once a minute.
            if now - self._drop_logged_at >= DROP_LOG_PERIOD:
                self._drop_logged_at = now
                log.warning(
                    "spool is full (%d bytes max): dropped the oldest sample(s), %d so far",
                    self.max_bytes,
                    self.dropped,
                )
        return dropped

    def _prune_dead_letters(self) -> None:
        files = sorted(p for p in self.dead_dir.iterdir() if p.name.endswith(_SUFFIX))
        sizes = {p: self._on_disk(p.stat().st_size) for p in files}
        total, budget = sum(sizes.values()), self.max_bytes // DEAD_LETTER_SHARE
        for path in files[:-1]:
            if total <= budget:
                break
            path.unlink(missing_ok=True)
            total -= sizes[path]


class SpoolBusy(Exception):
    """Another process holds the spool directory's lock."""


def lock_directory(directory: Path) -> int:
    """Take the spool directory for this process (released when it exits).

    Two agents sharing one spool would send each other's samples and could
    overwrite a sample taken in the same microsecond; the second one refuses
    to start instead.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    if not try_lock(fd):
        os.close(fd)
        raise SpoolBusy(f"another agent is using the spool directory {directory}")
    return fd


def _seq_of(name: str) -> int | None:
    if not name.endswith(_SUFFIX) or name.startswith("."):
        return None
    stem = name[: -len(_SUFFIX)]
    return int(stem) if stem.isdigit() else None


def _readable(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def write_durably(tmp: Path, final: Path, data: bytes) -> None:
    """Replace ``final`` with ``data`` atomically and durably (owner-only permissions)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; directories cannot be opened this way on Windows,
    # where NTFS journals the rename itself.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
