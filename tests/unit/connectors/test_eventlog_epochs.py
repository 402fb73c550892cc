"""Owner epochs in the event log (issue 11): what a fenced owner wrote past the handover is
ignored by readers, by the next owner's writer and by the native file path, and compaction
deletes it; files the current owner may still be fenced within are never merged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from connectors.eventlog import EventLogReader, EventLogWriter, marker_name, read_listing
from connectors.eventlog_compaction import EventLogCompactor
from engine.log_files import read_partition
from tests.unit.connectors.test_eventlog import PAYLOAD_SCHEMA, env


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def batch(first: int, last: int, processed_at: int) -> list:  # type: ignore[type-arg]
    return [replace(env(o), processed_at_ms=processed_at) for o in range(first, last + 1)]


def test_a_zombies_files_past_the_handover_are_ignored_and_compacted_away(
    tmp_path: Path,
) -> None:
    root = str(tmp_path)
    folder = tmp_path / "tx" / "partition=0"
    zombie = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    zombie.begin_epoch(0, 1, start=0)
    zombie.append(batch(0, 9, processed_at=111))  # committed
    zombie.append(batch(10, 19, processed_at=111))  # logged, never committed

    owner = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    assert owner.last_offset(0) == 19
    assert owner.max_epoch(0) == 1
    owner.begin_epoch(0, 2, start=10)  # the new owner starts at the committed offset
    assert owner.last_offset(0) == 9  # the zombie's 10..19 no longer count
    owner.append(batch(10, 24, processed_at=222))  # logged again, with its own processed_at
    zombie.append(batch(20, 29, processed_at=111))  # the zombie wakes and appends late

    assert names(folder) == [
        f"{0:020d}-{9:020d}.e1.avro",
        f"{10:020d}-{19:020d}.e1.avro",
        f"{10:020d}-{24:020d}.e2.avro",
        f"{20:020d}-{29:020d}.e1.avro",
        marker_name(1, 0),
        marker_name(2, 10),
    ]
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(25))  # each offset once, nothing past 24
    assert {e.processed_at_ms for e in read if e.offset < 10} == {111}
    assert {e.processed_at_ms for e in read if e.offset >= 10} == {222}  # one copy per offset
    assert [path.rsplit("/", 1)[1] for _, _, path in EventLogReader(root).files("tx", 0)] == [
        f"{0:020d}-{9:020d}.e1.avro",
        f"{10:020d}-{24:020d}.e2.avro",
    ]

    seen: list[str] = []
    read_partition(EventLogReader(root), "tx", 0, lambda data, high, last: seen.append("f") or high)
    assert len(seen) == 2  # the native path reads the live files only

    done = EventLogCompactor(root).compact("tx", 0)
    assert done.fenced_removed == 2
    assert names(folder) == [
        f"{0:020d}-{9:020d}.e1.avro",
        f"{10:020d}-{24:020d}.e2.avro",
        marker_name(1, 0),
        marker_name(2, 10),
    ]
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == list(range(25))


def test_an_epoch_that_logged_nothing_still_fences_and_the_next_one_continues(
    tmp_path: Path,
) -> None:
    """Owner 2 dies after its marker; owner 3 starts at the same committed offset."""
    root = str(tmp_path)
    first = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    first.begin_epoch(0, 1, start=0)
    first.append(batch(0, 4, processed_at=1))
    first.append(batch(5, 9, processed_at=1))  # not committed
    EventLogWriter(root, "tx", PAYLOAD_SCHEMA).begin_epoch(0, 2, start=5)
    third = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    third.begin_epoch(0, 3, start=5)
    assert third.last_offset(0) == 4
    third.append(batch(5, 12, processed_at=3))
    read = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in read] == list(range(13))
    assert [e.processed_at_ms for e in read] == [1] * 5 + [3] * 8


def test_compaction_merges_only_what_no_later_epoch_can_fence(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    writer.begin_epoch(0, 1, start=0)
    for o in range(0, 6, 2):
        writer.append(batch(o, o + 1, processed_at=1))
    owner = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    owner.begin_epoch(0, 2, start=6)
    for o in range(6, 12, 2):
        owner.append(batch(o, o + 1, processed_at=2))
    done = EventLogCompactor(root).compact("tx", 0, small_records=100)
    folder = tmp_path / "tx" / "partition=0"
    # epoch 1's files below 6 merge; epoch 2's may still be cut by epoch 3's start: kept
    assert [n for n in names(folder) if n.endswith(".avro")] == [
        f"{0:020d}-{5:020d}.e1.avro",
        f"{6:020d}-{7:020d}.e2.avro",
        f"{8:020d}-{9:020d}.e2.avro",
        f"{10:020d}-{11:020d}.e2.avro",
    ]
    assert done.records_merged == 6
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == list(range(12))


def test_the_columnar_append_carries_the_epoch_too(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)
    writer.begin_epoch(3, 7, start=100)
    offsets = np.arange(100, 104, dtype=np.int64)
    written = writer.append_batch_columns(
        np.full(4, 3, dtype=np.int64),
        offsets,
        [b"c1"] * 4,
        offsets + 1_700_000_000_000,
        offsets + 1_700_000_000_500,
        {"customer_id": ["c1"] * 4, "amount": [1.0] * 4, "ts": (offsets + 1).tolist(),
         "note": [None] * 4},
    )  # fmt: skip
    assert [w.rsplit("/", 1)[1] for w in written] == [f"{100:020d}-{103:020d}.e7.avro"]


def test_listing_rule_ignores_unrelated_names() -> None:
    listing = read_listing("f", ["junk", ".tmp-x.avro", marker_name(4, 50), "_epoch-x-from-1"])
    assert listing.live == [] and listing.fenced == [] and listing.max_epoch == 4
    assert listing.sealed_below == 50
