"""Unit tests of connectors.eventlog_compaction: same records, fewer files, no loss mid-way."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from connectors.eventlog import EventLogReader, EventLogWriter
from connectors.eventlog_compaction import EventLogCompactor
from engine.errors import EventLogError
from tests.unit.connectors.test_eventlog import PAYLOAD_SCHEMA, env, log_files


def records(root: Path, partition: int = 0) -> list[tuple[Any, ...]]:
    return [
        (e.partition, e.offset, e.key, e.event_time_ms, e.processed_at_ms, e.payload)
        for e in EventLogReader(str(root)).read("tx", partition)
    ]


def write_batches(root: Path, sizes: list[int], partition: int = 0, start: int = 0) -> int:
    """One append (one file) per size, offsets ascending with gaps; returns the next offset."""
    writer = EventLogWriter(str(root), "tx", PAYLOAD_SCHEMA)
    offset = start
    for size in sizes:
        writer.append([env(offset + 2 * i, partition=partition) for i in range(size)])
        offset += 2 * size + 1
    return offset


def test_runs_of_small_files_merge_into_one_file_with_the_same_records(tmp_path: Path) -> None:
    write_batches(tmp_path, [3] * 40)
    before = records(tmp_path)
    folder = tmp_path / "tx" / "partition=0"

    done = EventLogCompactor(str(tmp_path)).compact("tx", 0)

    assert (done.files_before, done.files_after, done.records_merged) == (40, 1, 120)
    assert records(tmp_path) == before
    [name] = [n for n in log_files(folder) if n.endswith(".avro")]
    assert name == f"{0:020d}-{before[-1][1]:020d}.avro"
    assert EventLogReader(str(tmp_path)).count("tx") == 120


def test_large_files_stay_and_split_runs_and_runs_stop_at_the_target(tmp_path: Path) -> None:
    write_batches(tmp_path, [2, 2, 50, 2, 2, 2, 2, 2, 2, 1])
    before = records(tmp_path)

    done = EventLogCompactor(str(tmp_path)).compact("tx", 0, small_records=10, target_records=6)

    # [2,2] | 50 stays | [2,2,2] | [2,2,2] | 1 (a run of one is left alone)
    assert (done.files_before, done.files_after, done.records_merged) == (10, 5, 16)
    assert records(tmp_path) == before
    again = EventLogCompactor(str(tmp_path)).compact("tx", 0, small_records=10, target_records=6)
    assert (again.files_before, again.files_after, again.records_merged) == (5, 5, 0)


def test_the_live_writer_goes_on_appending_after_a_compaction(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    for o in range(10):
        writer.append([env(o)])
    EventLogCompactor(str(tmp_path)).compact("tx", 0)
    writer.append([env(o) for o in range(5, 15)])  # a replay overlapping what is held
    fresh = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    assert fresh.last_offset(0) == 14

    assert [r[1] for r in records(tmp_path)] == list(range(15))


def test_a_reader_that_listed_before_the_compaction_reads_every_record_once(
    tmp_path: Path,
) -> None:
    write_batches(tmp_path, [2] * 30)
    expected = records(tmp_path)
    reading = EventLogReader(str(tmp_path)).read("tx", 0)
    head = [next(reading) for _ in range(7)]  # inside the 4th file, its inputs listed

    EventLogCompactor(str(tmp_path)).compact("tx", 0)
    rest = list(reading)

    got = [(e.partition, e.offset, e.key, e.event_time_ms, e.processed_at_ms, e.payload)
           for e in head + rest]  # fmt: skip
    assert got == expected


def test_an_interrupted_compaction_leaves_nothing_counted_twice_and_is_cleaned_up(
    tmp_path: Path,
) -> None:
    write_batches(tmp_path, [2] * 10)
    expected = records(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    inputs = {n: (folder / n).read_bytes() for n in log_files(folder)}
    EventLogCompactor(str(tmp_path)).compact("tx", 0)
    for name, data in inputs.items():  # as if it stopped after the rename, before deleting
        (folder / name).write_bytes(data)
    (folder / ".compact-leftover.avro").write_bytes(b"partial")

    assert records(tmp_path) == expected
    assert EventLogReader(str(tmp_path)).count("tx") == 20
    done = EventLogCompactor(str(tmp_path)).compact("tx", 0)
    assert (done.leftovers_removed, done.files_after) == (10, 1)
    assert [n for n in log_files(folder) if not n.startswith(".compact.lock")] == [
        f"{0:020d}-{expected[-1][1]:020d}.avro"
    ]


def test_files_of_different_schemas_are_not_merged(tmp_path: Path) -> None:
    write_batches(tmp_path, [2, 2])
    newer = dict(PAYLOAD_SCHEMA, fields=[*PAYLOAD_SCHEMA["fields"],
                 {"name": "channel", "type": "string", "default": "web"}])  # fmt: skip
    writer = EventLogWriter(str(tmp_path), "tx", newer)
    for o in (100, 200, 300):
        e = env(o)
        writer.append([type(e)(partition=0, offset=o, key=e.key, event_time_ms=e.event_time_ms,
                               processed_at_ms=e.processed_at_ms,
                               payload={**e.payload, "channel": "app"})])  # fmt: skip
    before = records(tmp_path)

    done = EventLogCompactor(str(tmp_path)).compact("tx", 0)

    assert (done.files_before, done.files_after) == (5, 2)
    assert records(tmp_path) == before


def test_randomised_batches_over_partitions_keep_every_record(tmp_path: Path) -> None:
    rng = random.Random(7)
    expected = {}
    for p in range(3):
        write_batches(tmp_path, [rng.randint(1, 30) for _ in range(rng.randint(1, 25))], p)
        expected[p] = records(tmp_path, p)
    compactor = EventLogCompactor(str(tmp_path))
    for p in range(3):
        compactor.compact("tx", p, small_records=rng.randint(1, 40), target_records=200)
        assert records(tmp_path, p) == expected[p]


def test_bad_limits_and_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    write_batches(tmp_path, [2, 2])
    compactor = EventLogCompactor(str(tmp_path))
    with pytest.raises(EventLogError, match="must be at least 1, got 0 and 5"):
        compactor.compact("tx", 0, small_records=0, target_records=5)
    folder = tmp_path / "tx" / "partition=0"
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(b"not avro")
    with pytest.raises(EventLogError, match=victim.name):
        compactor.compact("tx", 0)


def test_memory_urls_compact_too() -> None:
    root = "memory://compact-test"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    for o in range(5):
        writer.append([env(o)])
    done = EventLogCompactor(root).compact("tx", 0)
    assert (done.files_before, done.files_after) == (5, 1)
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == list(range(5))


def test_a_missing_partition_compacts_to_nothing(tmp_path: Path) -> None:
    write_batches(tmp_path, [1])
    shutil.rmtree(tmp_path / "tx" / "partition=0")
    done = EventLogCompactor(str(tmp_path)).compact("tx", 0)
    assert (done.files_before, done.files_after) == (0, 0)
