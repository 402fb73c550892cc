"""Rolling event-log files (issue 11 part 3): appends are synced blocks of one open file per
partition, rolled at a size or an age; readers see every synced block and nothing torn, and
records a fenced owner appended past the next epoch's start are ignored by every reader
(Python, the native file path, compaction, the next writer)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import connectors.eventlog as eventlog
from connectors.eventlog import (
    EventLogReader,
    EventLogWriter,
    file_name,
    marker_name,
    open_file_name,
    read_listing,
)
from connectors.eventlog_compaction import EventLogCompactor
from engine import _native
from engine.log_files import read_partition, scan_blocks, whole_blocks
from tests.unit.connectors.test_eventlog import PAYLOAD_SCHEMA, env

BIG = 1 << 30  # roll_bytes never reached


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def batch(first: int, last: int, processed_at: int = 7, amount: float = 1.5) -> list:  # type: ignore[type-arg]
    return [
        replace(env(o, amount=amount), processed_at_ms=processed_at) for o in range(first, last + 1)
    ]


def offsets(root: str, partition: int = 0) -> list[int]:
    return [e.offset for e in EventLogReader(root).read("tx", partition)]


def native_offsets(root: str, partition: int = 0) -> list[int]:
    """What the native file path (``read_partition``, ``read_container``) takes."""
    taken: list[int] = []

    def take(data: bytes, high: int, last: int) -> int:
        arrays, _ = _native.read_container(data, ["offset"])
        for o in np.asarray(arrays["offset"], dtype=np.int64).tolist():
            if high < o <= last:
                taken.append(o)
                high = o
        return high

    read_partition(EventLogReader(root), "tx", partition, take)
    return taken


def test_appends_go_to_one_open_file_and_every_synced_block_is_read(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    for first in range(0, 50, 10):
        written = writer.append(batch(first, first + 9))
        # each append is durable at return: a fresh reader sees it
        assert offsets(root) == list(range(first + 10))
    assert [w.rsplit("/", 1)[1] for w in written] == [open_file_name(0)]
    assert names(tmp_path / "tx" / "partition=0") == [open_file_name(0)]
    assert native_offsets(root) == list(range(50))
    assert EventLogReader(root).count("tx") == 50
    assert writer.last_offset(0) == 49
    writer.close()
    assert names(tmp_path / "tx" / "partition=0") == [file_name(0, 49)]
    assert offsets(root) == list(range(50)) == native_offsets(root)
    assert EventLogReader(root).count("tx") == 50


def test_the_columnar_append_rolls_too(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    for first in (100, 104):
        offs = np.arange(first, first + 4, dtype=np.int64)
        writer.append_batch_columns(
            np.full(4, 3, dtype=np.int64), offs, [b"c1"] * 4, offs + 1, offs + 2,
            {"customer_id": ["c1"] * 4, "amount": [1.0] * 4, "ts": (offs + 1).tolist(),
             "note": [None] * 4},
        )  # fmt: skip
    assert names(tmp_path / "tx" / "partition=3") == [open_file_name(100)]
    assert offsets(root, 3) == list(range(100, 108)) == native_offsets(root, 3)


def test_a_torn_tail_is_never_read(tmp_path: Path) -> None:
    """A writer that died mid-append leaves part of a block: readers stop before it."""
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    writer.append(batch(0, 9))
    writer.append(batch(10, 19))
    path = tmp_path / "tx" / "partition=0" / open_file_name(0)
    whole = path.read_bytes()
    blocks = scan_blocks(whole)
    assert blocks.end == len(whole) and blocks.records == 20
    # the bytes of a third block, cut at every length: never read, never an error
    other = EventLogWriter(str(tmp_path / "other"), "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    other.append(batch(0, 0))
    other.append(batch(20, 29))
    third = (tmp_path / "other" / "tx" / "partition=0" / open_file_name(0)).read_bytes()
    third = third[scan_blocks(third).last_block :]
    assert len(third) > 20
    for cut in (1, 2, len(third) // 2, len(third) - 17, len(third) - 1):
        path.write_bytes(whole + third[:cut])  # its sync marker differs too: never whole
        assert whole_blocks(path.read_bytes()) == whole
        assert offsets(root) == list(range(20)) == native_offsets(root)
        assert EventLogReader(root).count("tx") == 20


def test_rolls_at_the_size_and_at_the_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    now = [1000.0]
    monkeypatch.setattr(eventlog.time, "monotonic", lambda: now[0])
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG, roll_seconds=300)
    writer.append(batch(0, 9))
    now[0] += 299
    writer.append(batch(10, 19))
    assert names(folder) == [open_file_name(0)]
    now[0] += 1  # 300 s after the first block: the next append rolls first
    writer.append(batch(20, 29))
    assert names(folder) == [file_name(0, 19), open_file_name(20)]

    size = (folder / open_file_name(20)).stat().st_size
    small = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=size + 60, roll_seconds=300)
    small.append(batch(30, 39))  # the other writer's open file is adopted: rolled
    assert names(folder) == [file_name(0, 19), file_name(20, 29), open_file_name(30)]
    small.append(batch(40, 49))  # past roll_bytes: rolled right after the append
    assert names(folder) == [file_name(0, 19), file_name(20, 29), file_name(30, 49)]
    small.append(batch(50, 50))
    assert names(folder)[-1] == open_file_name(50)
    assert offsets(root) == list(range(51)) == native_offsets(root)


def test_a_restarted_writer_rolls_the_crashed_ones_file_and_goes_on(tmp_path: Path) -> None:
    """No owner epochs: the next writer rolls the open file (its torn tail stays unread
    behind the name's last offset) and appends to a new one; nothing lost or twice."""
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    crashed = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    crashed.append(batch(0, 9, processed_at=1))
    crashed.append(batch(10, 19, processed_at=1))
    with open(folder / open_file_name(0), "ab") as out:
        out.write(b"\x14\x80\x01garbage of a block being written")
    restarted = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    assert restarted.last_offset(0) == 19
    assert names(folder) == [file_name(0, 19)]
    assert restarted.append(batch(15, 29, processed_at=2))  # redelivered from 15: 20.. kept
    assert names(folder) == [file_name(0, 19), open_file_name(20)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(30)) == native_offsets(root)
    assert [e.processed_at_ms for e in read] == [1] * 20 + [2] * 10
    done = EventLogCompactor(root).compact("tx", 0, small_records=100)
    assert done.files_after == 2  # the open file is never merged while it grows
    assert offsets(root) == list(range(30))


def test_a_failed_append_is_cut_back_and_the_retry_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    writer.append(batch(0, 9, processed_at=1))
    real_fsync = eventlog.os.fsync
    failures = [OSError(5, "Input/output error")]

    def fsync(fd: int) -> None:  # the append's fsync fails once; the cut's succeeds
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(eventlog.os, "fsync", fsync)
    path = tmp_path / "tx" / "partition=0" / open_file_name(0)
    size = path.stat().st_size
    with pytest.raises(eventlog.EventLogError, match="cannot append"):
        writer.append(batch(10, 19, processed_at=2))
    assert path.stat().st_size == size  # the block was cut off again
    assert offsets(root) == list(range(10))
    writer.append(batch(10, 19, processed_at=3))  # the retry appends to the same file
    assert names(tmp_path / "tx" / "partition=0") == [open_file_name(0)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(20))
    assert [e.processed_at_ms for e in read] == [1] * 10 + [3] * 10


def test_a_failed_append_that_cannot_be_cut_back_is_rolled_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    writer.append(batch(0, 9, processed_at=1))
    real_fsync = eventlog.os.fsync
    failures = [OSError(5, "Input/output error")] * 2

    def fsync(fd: int) -> None:  # the append's and the cut's fsync fail
        if failures:
            raise failures.pop()
        real_fsync(fd)

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(eventlog.os, "fsync", fsync)
    monkeypatch.setattr(eventlog.os, "ftruncate", no_truncate)
    with pytest.raises(eventlog.EventLogError, match="cannot append"):
        writer.append(batch(10, 19, processed_at=2))
    # the failed block is still in the file, whole; the file's name stops readers before it
    assert names(folder) == [file_name(0, 9)]
    assert scan_blocks((folder / file_name(0, 9)).read_bytes()).records == 20
    assert offsets(root) == list(range(10)) == native_offsets(root)
    assert EventLogReader(root).count("tx") == 10
    writer.append(batch(10, 19, processed_at=3))
    assert names(folder) == [file_name(0, 9), open_file_name(10)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(20)) == native_offsets(root)
    assert [e.processed_at_ms for e in read] == [1] * 10 + [3] * 10
    writer.close()
    done = EventLogCompactor(root).compact("tx", 0, small_records=100)
    assert (done.files_after, done.records_merged) == (1, 20)  # the failed block left behind
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.processed_at_ms for e in read] == [1] * 10 + [3] * 10


def test_a_zombies_appends_past_the_next_epochs_start_are_ignored_by_every_reader(
    tmp_path: Path,
) -> None:
    """The zombie's open file straddles the handover: its records at or past the new
    owner's start are ignored by the Python reader, the native path, count, the next
    writer and compaction, which keeps only what lies below."""
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    zombie = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    zombie.begin_epoch(0, 1, start=0)
    zombie.append(batch(0, 9, processed_at=111))  # committed
    zombie.append(batch(10, 19, processed_at=111))  # logged, never committed

    owner = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    owner.begin_epoch(0, 2, start=10)  # the new owner starts at the committed offset
    assert owner.last_offset(0) == 9
    owner.append(batch(10, 24, processed_at=222))
    zombie.append(batch(20, 29, processed_at=111, amount=-1.0))  # the zombie wakes, appends
    assert names(folder) == [
        open_file_name(0, 1),
        open_file_name(10, 2),
        marker_name(1, 0),
        marker_name(2, 10),
    ]
    listing = read_listing(str(folder), names(folder))
    assert [(first, last) for first, last, _ in listing.live] == [(0, 9), (10, 10**20 - 1)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(25)) == native_offsets(root)
    assert [e.processed_at_ms for e in read] == [111] * 10 + [222] * 15
    assert EventLogReader(root).count("tx") == 25

    zombie.close()  # the zombie rolls its file: the name says 29, the listing still 9
    assert file_name(0, 29, 1) in names(folder)
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == list(range(25))
    assert native_offsets(root) == list(range(25))
    assert EventLogReader(root).count("tx") == 25

    done = EventLogCompactor(root).compact("tx", 0, small_records=100)
    assert done.files_after == 2  # epoch 2's open file grows: left alone
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(25))
    assert [e.processed_at_ms for e in read] == [111] * 10 + [222] * 15
    assert all(e.payload["amount"] == 1.5 for e in read)


def test_a_fenced_owners_open_file_is_merged_up_to_the_next_start(tmp_path: Path) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    zombie = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    zombie.begin_epoch(0, 1, start=0)
    for first in range(0, 30, 10):
        zombie.append(batch(first, first + 9, processed_at=1))
    owner = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    owner.begin_epoch(0, 2, start=20)
    owner.append(batch(20, 25, processed_at=2))
    done = EventLogCompactor(root).compact("tx", 0, small_records=100)
    # the zombie's file, cut at 20 by epoch 2, is rewritten without its tail, even alone
    assert done.records_merged == 20
    assert [n for n in names(folder) if n.endswith(".avro")] == [
        file_name(0, 19, 1),
        open_file_name(20, 2),
    ]
    EventLogWriter(root, "tx", PAYLOAD_SCHEMA).begin_epoch(0, 3, start=26)
    EventLogCompactor(root).compact("tx", 0, small_records=100)
    assert [n for n in names(folder) if n.endswith(".avro")] == [file_name(0, 25, 2)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(26))
    assert [e.processed_at_ms for e in read] == [1] * 20 + [2] * 6


def test_a_new_epoch_rolls_the_writers_own_open_file(tmp_path: Path) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    writer.begin_epoch(0, 1, start=0)
    writer.append(batch(0, 4))
    writer.begin_epoch(0, 2, start=5)
    writer.append(batch(5, 9))
    assert [n for n in names(folder) if n.endswith(".avro")] == [
        file_name(0, 4, 1),
        open_file_name(5, 2),
    ]
    assert offsets(root) == list(range(10)) == native_offsets(root)


def test_rolling_off_writes_one_file_per_append(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=0)
    writer.append(batch(0, 4))
    writer.append(batch(5, 9))
    assert names(tmp_path / "tx" / "partition=0") == [file_name(0, 4), file_name(5, 9)]


def test_the_limit_holds_across_an_offset_gap_at_the_handover(tmp_path: Path) -> None:
    """Kafka offsets may skip (transaction markers): the zombie's last committed offset is
    7, the next owner starts at 10, and the zombie's late block 10..15 follows 7 directly."""
    root = str(tmp_path)
    zombie = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    zombie.begin_epoch(0, 1, start=0)
    zombie.append(batch(0, 7, processed_at=111))
    owner = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    owner.begin_epoch(0, 2, start=10)
    zombie.append(batch(10, 15, processed_at=111, amount=-1.0))
    owner.append(batch(10, 14, processed_at=222))
    want = [*range(8), *range(10, 15)]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == want == native_offsets(root)
    assert [e.processed_at_ms for e in read] == [111] * 8 + [222] * 5
    assert EventLogReader(root).count("tx") == 13
    zombie.close()
    EventLogWriter(root, "tx", PAYLOAD_SCHEMA).begin_epoch(0, 3, start=15)
    EventLogCompactor(root).compact("tx", 0, small_records=100)  # merges both, up to 14
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == want
    assert [e.processed_at_ms for e in read] == [111] * 8 + [222] * 5
    assert all(e.payload["amount"] == 1.5 for e in read)


def columns_append(writer: EventLogWriter, parts: list[int], first: int, n: int) -> list[str]:
    """Append offsets ``first..first + n - 1`` to each partition of ``parts`` as one
    columnar batch (the worker's path: ``append_batch_columns``)."""
    offs = np.tile(np.arange(first, first + n, dtype=np.int64), len(parts))
    where = np.repeat(np.asarray(parts, dtype=np.int64), n)
    return writer.append_batch_columns(
        where, offs, [b"c%d" % o for o in offs.tolist()], offs + 1, offs + 2,
        {"customer_id": [f"c{o}" for o in offs.tolist()], "amount": (offs * 0.5).tolist(),
         "ts": (offs + 1).tolist(), "note": [None] * len(offs)},
    )  # fmt: skip


def fail_fsync_once(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The next native append writes every chunk, then reports the fsync of the file whose
    name contains ``failing`` failed (EIO): a disk that took the bytes, then failed."""
    real = eventlog._append_blocks

    def append_blocks(*args: Any, **kwargs: Any) -> list[tuple[int, Any]]:
        monkeypatch.setattr(eventlog, "_append_blocks", real)
        done = real(*args, **kwargs)
        assert all(size > 0 and failed is None for size, failed in done)
        return [
            (0, ("fsync", 5, "Input/output error")) if failing in job[0] else got
            for job, got in zip(args[5], done, strict=True)
        ]

    monkeypatch.setattr(eventlog, "_append_blocks", append_blocks)


def test_the_one_call_append_writes_the_bytes_the_per_partition_append_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native one-call append (every partition's blocks written and fsynced at once)
    leaves each open file byte for byte as the per-partition ``_append_rolled`` path, up
    to the random sync marker each file's header picks."""
    roots = [str(tmp_path / "native"), str(tmp_path / "python")]
    calls: list[int] = []
    real = eventlog._append_blocks

    def append_blocks(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[5]))
        return real(*args, **kwargs)

    monkeypatch.setattr(eventlog, "_append_blocks", append_blocks)
    native = EventLogWriter(roots[0], "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    python = EventLogWriter(roots[1], "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    monkeypatch.setattr(python, "_appendable", lambda partition: False)
    for first in range(0, 60, 12):
        for writer in (native, python):
            columns_append(writer, [0, 2, 5], first, 12)
    assert calls == [3] * 4  # the first append of each file commits it whole, in Python
    for p in (0, 2, 5):
        a, b = ((Path(r) / "tx" / f"partition={p}" / open_file_name(0)).read_bytes() for r in roots)
        sync_a, sync_b = scan_blocks(a).sync, scan_blocks(b).sync
        assert sync_a != sync_b and len(a) == len(b)
        assert a.replace(sync_a, sync_b) == b
        assert offsets(roots[0], p) == list(range(60)) == native_offsets(roots[0], p)


def test_a_failed_one_call_append_is_cut_back_and_the_others_stand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    columns_append(writer, [0, 1], 0, 10)
    path = tmp_path / "tx" / "partition=1" / open_file_name(0)
    size = path.stat().st_size
    fail_fsync_once(monkeypatch, "partition=1/")
    with pytest.raises(eventlog.EventLogError, match=r"cannot append.*Input/output error"):
        columns_append(writer, [0, 1], 10, 10)
    assert path.stat().st_size == size  # the block was cut off again
    assert offsets(root, 1) == list(range(10))
    assert offsets(root, 0) == list(range(20))  # the other partition's append stands
    assert (writer.last_offset(0), writer.last_offset(1)) == (19, 9)
    columns_append(writer, [0, 1], 10, 10)  # the retry lands once, in the same file
    assert names(tmp_path / "tx" / "partition=1") == [open_file_name(0)]
    for p in (0, 1):
        assert offsets(root, p) == list(range(20)) == native_offsets(root, p)


def test_a_failed_one_call_append_that_cannot_be_cut_back_is_rolled_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    columns_append(writer, [0], 0, 10)
    fail_fsync_once(monkeypatch, "partition=0/")

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(eventlog.os, "ftruncate", no_truncate)
    with pytest.raises(eventlog.EventLogError, match="cannot append"):
        columns_append(writer, [0], 10, 10)
    assert names(folder) == [file_name(0, 9)]  # rolled: readers stop before the failed block
    assert scan_blocks((folder / file_name(0, 9)).read_bytes()).records == 20
    assert offsets(root) == list(range(10)) == native_offsets(root)
    columns_append(writer, [0], 10, 10)
    assert names(folder) == [file_name(0, 9), open_file_name(10)]
    assert offsets(root) == list(range(20)) == native_offsets(root)


def test_a_one_call_append_to_a_vanished_file_fails_then_starts_a_new_file(
    tmp_path: Path,
) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=BIG)
    columns_append(writer, [0], 0, 10)
    (folder / open_file_name(0)).unlink()
    with pytest.raises(eventlog.EventLogError, match="No such file or directory"):
        columns_append(writer, [0], 10, 10)
    columns_append(writer, [0], 10, 10)
    assert names(folder) == [open_file_name(10)]
    assert offsets(root) == list(range(10, 20)) == native_offsets(root)
