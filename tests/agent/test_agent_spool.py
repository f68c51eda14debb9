"""The on-disk spool: order, durability across reopen, the byte bound, dead letters."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lunasentri_core.agent import spool as spool_module
from lunasentri_core.agent.spool import Spool

BIG = 10**9


def sample(n: int, pad: int = 0) -> bytes:
    return json.dumps({"n": n, "pad": "x" * pad}).encode()


def numbers(batch: list[spool_module.SpooledSample]) -> list[int]:
    return [json.loads(s.data)["n"] for s in batch]


def test_fifo_and_remove(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", max_bytes=BIG)
    for n in range(5):
        spool.append(sample(n))
    assert len(spool) == 5
    batch = spool.peek(3)
    assert numbers(batch) == [0, 1, 2]
    spool.remove(s.seq for s in batch)
    assert numbers(spool.peek(10)) == [3, 4]
    assert spool.size_bytes == 2 * spool.block  # two small files, a block each


def test_survives_reopen_and_ignores_half_written_files(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool.open(directory, max_bytes=BIG)
    for n in range(3):
        first.append(sample(n))
    first.remove([first.peek(1)[0].seq])
    (directory / "queue" / ".00000000000000099.tmp").write_bytes(b'{"torn')
    (directory / "queue" / "notes.txt").write_text("not a sample")

    again = Spool.open(directory, max_bytes=BIG)
    assert numbers(again.peek(10)) == [1, 2]
    assert not list((directory / "queue").glob("*.tmp"))
    again.append(sample(3))
    assert numbers(again.peek(10)) == [1, 2, 3]


def test_order_holds_when_the_clock_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.open(tmp_path, max_bytes=BIG)
    spool.append(sample(0))
    monkeypatch.setattr(spool_module.time, "time_ns", lambda: 1_000)
    spool.append(sample(1))
    reopened = Spool.open(tmp_path, max_bytes=BIG)
    reopened.append(sample(2))
    assert numbers(reopened.peek(10)) == [0, 1, 2]


def test_bound_drops_oldest_first_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Spool.open(tmp_path / "probe", max_bytes=BIG)
    spool = Spool.open(tmp_path / "spool", max_bytes=probe.block * 3)
    dropped = [spool.append(sample(n, pad=100)) for n in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert spool.dropped == 2
    assert numbers(spool.peek(10)) == [2, 3, 4]
    assert len(list(spool.queue_dir.glob("*.json"))) == 3
    # Logged once, not at every drop.
    assert caplog.text.count("spool is full") == 1
    assert "1 so far" in caplog.text


def test_the_bound_counts_whole_blocks(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=BIG)
    spool.append(sample(0))
    spool.append(sample(1, pad=spool.block))
    assert spool.size_bytes == spool.block * 3


def test_bound_applies_at_reopen_with_a_smaller_limit(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=BIG)
    for n in range(4):
        spool.append(sample(n))
    smaller = Spool.open(tmp_path, max_bytes=spool.block * 2)
    assert numbers(smaller.peek(10)) == [2, 3]
    assert smaller.dropped == 2


def test_the_newest_sample_stays_even_if_larger_than_the_bound(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=10)
    spool.append(sample(0, pad=50))
    spool.append(sample(1, pad=50))
    assert numbers(spool.peek(10)) == [1]


def test_files_are_private(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    spool = Spool.open(tmp_path / "spool", max_bytes=BIG)
    spool.append(sample(0))
    (path,) = (tmp_path / "spool" / "queue").glob("*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


def test_dead_letter_moves_the_batch_with_its_reason(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=BIG)
    for n in range(3):
        spool.append(sample(n))
    (spool.queue_dir / f"{spool.peek(3)[2].seq:017d}.json").write_bytes(b"not json")
    batch = spool.peek(3)[1:]
    path = spool.dead_letter(batch, "HTTP 422: bad value (at samples[0])")
    assert numbers(spool.peek(10)) == [0]
    assert spool.dead_lettered == 2
    record = json.loads(path.read_text())
    assert record["reason"] == "HTTP 422: bad value (at samples[0])"
    assert record["samples"] == [{"n": 1, "pad": ""}, "not json"]


def test_dead_letters_are_bounded(tmp_path: Path) -> None:
    one = len(sample(0, pad=300))
    spool = Spool.open(tmp_path, max_bytes=one * 20)  # dead letters get 1/10: about 2
    for n in range(6):
        spool.append(sample(n, pad=300))
    for item in spool.peek(6):
        spool.dead_letter([item], "bad")
    kept = sorted(spool.dead_dir.glob("*.json"))
    assert 1 <= len(kept) < 6
    assert json.loads(kept[-1].read_text())["samples"][0]["n"] == 5


def test_peek_skips_files_removed_behind_its_back(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=BIG)
    for n in range(3):
        spool.append(sample(n))
    first = spool.peek(1)[0]
    (spool.queue_dir / f"{first.seq:017d}.json").unlink()
    assert numbers(spool.peek(10)) == [1, 2]
    assert len(spool) == 2
    spool.remove([first.seq, 12345])  # unknown or gone: harmless
    assert len(spool) == 2
