"""Unit tests of connectors.eventlog: layout, round trip, dedup, atomicity, reader defences."""

from __future__ import annotations

import errno
import io
import os
import resource
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import fsspec
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from connectors.eventlog import (
    EventLogReader,
    EventLogWriter,
    envelope_schema,
)
from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import EventLogError, EventLogMissing
from engine.ports import EventLogSink, EventLogSource

PAYLOAD_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Tx",
    "namespace": "acme",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


def env(
    offset: int, partition: int = 0, key: bytes | None = b"c1", amount: float = 1.5
) -> Envelope:
    return Envelope(
        partition=partition,
        offset=offset,
        key=key,
        event_time_ms=1_700_000_000_000 + offset,
        processed_at_ms=1_700_000_000_500 + offset,
        payload={
            "customer_id": "c1",
            "amount": amount,
            "ts": 1_700_000_000_000 + offset,
            "note": None if offset % 2 else "even",
        },
    )


def log_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- envelope_schema


def test_envelope_schema_sanitises_name_and_strips_logical_types() -> None:
    schema = envelope_schema("card-tx.v2", PAYLOAD_SCHEMA)

    assert (schema["namespace"], schema["name"]) == ("skewless.envelope", "card_tx_v2")
    assert [f["name"] for f in schema["fields"]] == [
        "partition",
        "offset",
        "key",
        "event_time",
        "processed_at",
        "payload",
    ]
    payload = schema["fields"][-1]["type"]
    assert payload["name"] == "Tx" and payload["namespace"] == "acme"
    assert payload["fields"][2]["type"] == {"type": "long"}
    # the caller's schema is not modified
    assert PAYLOAD_SCHEMA["fields"][2]["type"]["logicalType"] == "timestamp-millis"


def test_envelope_schema_accepts_fastavro_parsed_schema() -> None:
    parsed = fastavro.parse_schema(PAYLOAD_SCHEMA)

    schema = envelope_schema("tx", parsed)

    text = repr(schema)
    assert "__fastavro_parsed" not in text and "__named_schemas" not in text
    assert "logicalType" not in text
    fastavro.parse_schema(schema)  # valid Avro


def test_envelope_schema_avoids_clash_with_payload_names() -> None:
    payload = {"type": "record", "name": "orders", "fields": [{"name": "x", "type": "long"}]}

    schema = envelope_schema("orders", payload)

    assert schema["name"] == "orders_envelope"
    buf = io.BytesIO()
    fastavro.writer(
        buf,
        fastavro.parse_schema(schema),
        [
            {
                "partition": 0,
                "offset": 1,
                "key": None,
                "event_time": 1,
                "processed_at": 2,
                "payload": {"x": 3},
            }
        ],
    )
    buf.seek(0)
    assert [r["payload"] for r in fastavro.reader(buf)] == [{"x": 3}]


def test_envelope_schema_rejects_non_record_payload() -> None:
    with pytest.raises(EventLogError, match="must be an Avro record"):
        envelope_schema("tx", {"type": "string"})


# ---------------------------------------------------------------- round trip and layout


def test_round_trip_keeps_keys_and_returns_timestamps_as_int(tmp_path: Path) -> None:
    records = [env(0, key=None), env(1, key=b"\x00\xffbin"), env(2, key=b"")]
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)

    writer.append(records)
    back = list(EventLogReader(str(tmp_path)).read("tx", 0))

    assert back == records
    assert all(type(e) is Envelope for e in back)
    assert [e.key for e in back] == [None, b"\x00\xffbin", b""]
    assert all(type(e.payload["ts"]) is int for e in back)
    assert all(type(e.event_time_ms) is int for e in back)


def test_layout_is_zero_padded_offsets_per_partition_folder(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)

    paths = writer.append([env(12, partition=3), env(7, partition=0), env(5, partition=3)])

    assert paths == [
        f"{tmp_path}/tx/partition=0/{7:020d}-{7:020d}.avro",
        f"{tmp_path}/tx/partition=3/{5:020d}-{12:020d}.avro",
    ]
    assert all(os.path.isfile(p) for p in paths)
    assert log_files(tmp_path / "tx") == ["partition=0", "partition=3"]
    with open(paths[1], "rb") as fo:
        meta = fastavro.reader(fo).metadata
    assert meta["skewless.source"] == "tx"
    assert meta["skewless.records"] == "2"


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_both_codecs_round_trip(tmp_path: Path, codec: Any) -> None:
    records = [env(i) for i in range(50)]
    EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA, codec=codec).append(records)

    assert list(EventLogReader(str(tmp_path)).read("tx", 0)) == records


def test_unknown_codec_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="codec must be"):
        EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA, codec="snappy")  # type: ignore[arg-type]


def test_memory_url_round_trip() -> None:
    root = f"memory://eventlog-test-{uuid.uuid4().hex}"
    writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA)

    paths = writer.append([env(0), env(1, partition=1)])
    reader = EventLogReader(root)

    assert paths == [
        f"{root}/tx/partition=0/{0:020d}-{0:020d}.avro",
        f"{root}/tx/partition=1/{1:020d}-{1:020d}.avro",
    ]
    assert reader.sources() == ["tx"]
    assert reader.partitions("tx") == [0, 1]
    assert list(reader.read_all("tx")) == [env(0), env(1, partition=1)]
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_file_url_returns_paths_in_the_callers_spelling(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/log/"
    paths = EventLogWriter(root, "tx", PAYLOAD_SCHEMA).append([env(4)])

    assert paths == [f"file://{tmp_path}/log/tx/partition=0/{4:020d}-{4:020d}.avro"]
    assert (tmp_path / "log" / "tx" / "partition=0" / f"{4:020d}-{4:020d}.avro").is_file()
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == [4]


# ---------------------------------------------------------------- dedup and order


def test_new_writer_drops_offsets_already_held(tmp_path: Path) -> None:
    first = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    first.append([env(i) for i in range(10)])

    second = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    assert second.last_offset(0) == 9
    assert second.last_offset(1) is None
    paths = second.append([env(i, amount=99.0) for i in range(5, 15)])

    assert paths == [f"{tmp_path}/tx/partition=0/{10:020d}-{14:020d}.avro"]
    assert second.last_offset(0) == 14
    back = list(EventLogReader(str(tmp_path)).read("tx", 0))
    assert [e.offset for e in back] == list(range(15))
    assert [e.payload["amount"] for e in back[5:10]] == [1.5] * 5  # originals kept


def test_all_duplicates_write_nothing(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    writer.append([env(0), env(1)])

    assert writer.append([env(1), env(0)]) == []
    assert writer.append([]) == []
    assert log_files(tmp_path / "tx" / "partition=0") == [f"{0:020d}-{1:020d}.avro"]


def test_duplicate_offsets_within_one_call_are_written_once(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)

    writer.append([env(3), env(1), env(3, amount=7.0), env(2), env(1)])

    back = list(EventLogReader(str(tmp_path)).read("tx", 0))
    assert [e.offset for e in back] == [1, 2, 3]
    assert back[2].payload["amount"] == 1.5  # first occurrence kept
    assert EventLogReader(str(tmp_path)).count("tx") == 3


def test_offsets_come_back_in_order_across_many_files(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    # chosen to cross digit boundaries: unpadded names would sort 10 < 100 < 9
    for batch in ([9], [10, 11], list(range(12, 100)), [100, 1000], [10_000_000_000]):
        writer.append([env(o) for o in reversed(batch)])

    offsets = [e.offset for e in EventLogReader(str(tmp_path)).read("tx", 0)]

    assert offsets == [9, *range(10, 100), 100, 1000, 10_000_000_000]
    assert len(log_files(tmp_path / "tx" / "partition=0")) == 5


def test_read_all_goes_partition_by_partition(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    writer.append([env(o, partition=p) for p in (2, 0, 10) for o in (5, 1)])

    got = [(e.partition, e.offset) for e in EventLogReader(str(tmp_path)).read_all("tx")]

    assert got == [(0, 1), (0, 5), (2, 1), (2, 5), (10, 1), (10, 5)]


def test_reader_never_yields_an_offset_twice_when_files_overlap(tmp_path: Path) -> None:
    stale = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    stale.append([env(i) for i in range(5)])  # caches high-water mark 4
    EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA).append([env(i) for i in range(5, 10)])
    stale.append([env(i, amount=2.0) for i in range(3, 13)])  # writes 5..12 over 5..9

    assert len(log_files(tmp_path / "tx" / "partition=0")) == 3
    back = list(EventLogReader(str(tmp_path)).read("tx", 0))

    assert [e.offset for e in back] == list(range(13))
    # 5..9 lies inside 5..12: the wider file is read, the other skipped (as a compaction's
    # leftovers are), so what comes back does not depend on which file was written first
    assert [e.payload["amount"] for e in back[5:]] == [2.0] * 8


# ---------------------------------------------------------------- temp files


def test_reader_ignores_temp_files_writer_leaves_them_compaction_removes_stale_ones(
    tmp_path: Path,
) -> None:
    """A temp file may be another writer's in-flight file (a zombie's, issue 11): the next
    writer leaves it; compaction removes it once it is older than STALE_TEMP_S."""
    import os

    from connectors.eventlog_compaction import STALE_TEMP_S, EventLogCompactor

    EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA).append([env(0), env(1)])
    folder = tmp_path / "tx" / "partition=0"
    (folder / ".tmp-deadbeef.avro").write_bytes(b"half a file")
    reader = EventLogReader(str(tmp_path))
    real_size = (folder / f"{0:020d}-{1:020d}.avro").stat().st_size

    assert [e.offset for e in reader.read("tx", 0)] == [0, 1]
    assert reader.count("tx") == 2
    assert reader.size_bytes("tx") == real_size

    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    assert writer.last_offset(0) == 1
    assert log_files(folder) == [".tmp-deadbeef.avro", f"{0:020d}-{1:020d}.avro"]
    compactor = EventLogCompactor(str(tmp_path))
    assert compactor.compact("tx", 0).temps_removed == 0  # fresh: maybe in flight
    assert ".tmp-deadbeef.avro" in log_files(folder)
    old = (folder / ".tmp-deadbeef.avro").stat().st_mtime - STALE_TEMP_S - 60
    os.utime(folder / ".tmp-deadbeef.avro", (old, old))
    assert compactor.compact("tx", 0).temps_removed == 1
    assert [n for n in log_files(folder) if n != ".compact.lock"] == [f"{0:020d}-{1:020d}.avro"]


# ---------------------------------------------------------------- errors


def test_missing_source_says_where_it_looked_and_what_writes_the_log(tmp_path: Path) -> None:
    EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA).append([env(0)])
    reader = EventLogReader(str(tmp_path))

    with pytest.raises(EventLogMissing) as info:
        reader.read("orders", 0)  # raises at the call, before iteration
    message = str(info.value)
    assert str(tmp_path / "orders") in message
    assert "skewless import" in message and "stream workers" in message
    assert isinstance(info.value, EventLogError) and isinstance(info.value, OSError)
    for call in (reader.partitions, reader.read_all, reader.count, reader.size_bytes):
        with pytest.raises(EventLogMissing):
            call("orders")


def test_empty_or_absent_log(tmp_path: Path) -> None:
    reader = EventLogReader(str(tmp_path / "nothing-here"))

    assert reader.sources() == []
    with pytest.raises(EventLogMissing):
        reader.partitions("tx")

    EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA).append([env(0)])
    assert list(EventLogReader(str(tmp_path)).read("tx", 7)) == []


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "..", "a\\b"])
def test_source_names_that_cannot_be_folders_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(EventLogError, match="cannot name a folder"):
        EventLogWriter(str(tmp_path), name, PAYLOAD_SCHEMA)
    with pytest.raises(EventLogError, match="cannot name a folder"):
        EventLogReader(str(tmp_path)).read(name, 0)


def test_negative_offset_is_rejected_without_writing(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)

    with pytest.raises(EventLogError, match="offset must be"):
        writer.append([env(-1)])
    assert not (tmp_path / "tx").exists()


def test_history_is_written_below_the_stream_and_read_back_first(tmp_path: Path) -> None:
    """Imported history (negative offsets) and live offsets share a partition folder."""
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    writer.append([env(0), env(1)])
    writer.append_history([env(HISTORY_BASE), env(HISTORY_BASE + 1)])
    names = log_files(tmp_path / "tx" / "partition=0")
    assert "-01000000000000000000--00999999999999999999.avro" in names
    with pytest.raises(EventLogError, match="history offsets must be"):
        writer.append_history([env(HISTORY_BASE + 1)])  # already held
    with pytest.raises(EventLogError, match="history offsets must be"):
        writer.append_history([env(5)])  # not history
    again = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)  # re-learns from file names
    assert again.last_history_offset(0) == HISTORY_BASE + 1
    assert again.last_offset(0) == 1
    assert again.append([env(1)]) == []  # the live high-water mark is unaffected by history
    back = [e.offset for e in EventLogReader(str(tmp_path)).read("tx", 0)]
    assert back == [HISTORY_BASE, HISTORY_BASE + 1, 0, 1]


def test_invalid_partition_fails_the_call_before_anything_is_written(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)

    with pytest.raises(EventLogError, match="partition must be"):
        writer.append([env(0, partition=0), env(0, partition=2**31)])
    assert not (tmp_path / "tx" / "partition=0").exists()


def test_payload_not_matching_schema_raises_and_writes_nothing(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    writer.append([env(0)])
    bad = Envelope(
        partition=0, offset=1, key=None, event_time_ms=1, processed_at_ms=2, payload={"x": 1}
    )

    with pytest.raises(EventLogError, match="does not match the envelope schema") as info:
        writer.append([bad])

    assert info.value.__cause__ is not None
    assert writer.last_offset(0) == 0
    assert log_files(tmp_path / "tx" / "partition=0") == [f"{0:020d}-{0:020d}.avro"]


def test_file_that_is_not_an_event_log_file_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "tx" / "partition=0"
    folder.mkdir(parents=True)
    path = folder / f"{0:020d}-{0:020d}.avro"
    with open(path, "wb") as fo:
        fastavro.writer(fo, {"type": "record", "name": "R", "fields": []}, [{}])

    with pytest.raises(EventLogError, match="envelope version") as info:
        list(EventLogReader(str(tmp_path)).read("tx", 0))
    assert str(path) in str(info.value)


def test_truncated_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (path,) = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA, codec="null").append(
        [env(i) for i in range(100)]
    )
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 40])

    with pytest.raises(EventLogError, match="cannot read event-log file") as info:
        list(EventLogReader(str(tmp_path)).read("tx", 0))
    assert path in str(info.value)


# ---------------------------------------------------------------- atomicity


class FlakyMemoryFileSystem(MemoryFileSystem):
    """An in-memory filesystem that runs out of space or fails renames on demand."""

    protocol = "flakymem"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    write_budget: ClassVar[int | None] = None  # bytes a file may take before ENOSPC
    fail_rename: ClassVar[bool] = False
    fail_after_rename: ClassVar[bool] = False  # the rename lands, then an error is raised

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        return str(super()._strip_protocol(text.removeprefix(f"{cls.protocol}://")))

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and self.write_budget is not None:
            handle = _FullDiskFile(self, self._strip_protocol(path), self.write_budget)
            handle.commit()  # like MemoryFileSystem: the file exists from open on
            return handle
        return super()._open(path, mode, *args, **kwargs)

    def mv(self, path1: str, path2: str, *args: Any, **kwargs: Any) -> None:
        if self.fail_rename:
            raise OSError(errno.EIO, "rename failed", path2)
        super().mv(path1, path2, *args, **kwargs)
        if self.fail_after_rename:
            raise OSError(errno.EIO, "connection reset after rename", path2)


class _FullDiskFile(MemoryFile):  # type: ignore[misc]  # fsspec is untyped
    def __init__(self, fs: MemoryFileSystem, path: str, budget: int) -> None:
        super().__init__(fs, path)
        self._budget = budget

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(super().write(data))


@pytest.fixture
def flaky_root() -> Iterator[str]:
    fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
    FlakyMemoryFileSystem.store.clear()
    FlakyMemoryFileSystem.write_budget = None
    FlakyMemoryFileSystem.fail_rename = False
    FlakyMemoryFileSystem.fail_after_rename = False
    yield "flakymem://log"
    FlakyMemoryFileSystem.write_budget = None
    FlakyMemoryFileSystem.fail_rename = False
    FlakyMemoryFileSystem.fail_after_rename = False
    FlakyMemoryFileSystem.store.clear()


def stored_names(prefix: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[-1] for k in FlakyMemoryFileSystem.store if k.startswith(prefix))


def test_disk_full_mid_write_leaves_no_file_and_retry_succeeds(flaky_root: str) -> None:
    writer = EventLogWriter(flaky_root, "tx", PAYLOAD_SCHEMA, codec="null")
    writer.append([env(0)])
    batch = [env(i) for i in range(1, 2000)]
    FlakyMemoryFileSystem.write_budget = 20_000

    with pytest.raises(EventLogError) as info:
        writer.append(batch)

    final = f"{flaky_root}/tx/partition=0/{1:020d}-{1999:020d}.avro"
    assert final in str(info.value) and "free space" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert stored_names("/log/tx/partition=0/") == [f"{0:020d}-{0:020d}.avro"]
    assert writer.last_offset(0) == 0

    FlakyMemoryFileSystem.write_budget = None
    assert writer.append(batch) == [final]
    assert writer.last_offset(0) == 1999
    assert [e.offset for e in EventLogReader(flaky_root).read("tx", 0)] == list(range(2000))


def test_failed_rename_leaves_no_file_and_retry_succeeds(flaky_root: str) -> None:
    writer = EventLogWriter(flaky_root, "tx", PAYLOAD_SCHEMA)
    FlakyMemoryFileSystem.fail_rename = True

    with pytest.raises(EventLogError, match="rename failed"):
        writer.append([env(0), env(1)])

    assert stored_names("/log/tx/") == []
    assert writer.last_offset(0) is None

    FlakyMemoryFileSystem.fail_rename = False
    assert len(writer.append([env(0), env(1)])) == 1
    assert EventLogReader(flaky_root).count("tx") == 2


def test_error_after_the_rename_landed_does_not_duplicate_on_retry(flaky_root: str) -> None:
    writer = EventLogWriter(flaky_root, "tx", PAYLOAD_SCHEMA)
    writer.append([env(0)])
    FlakyMemoryFileSystem.fail_after_rename = True

    with pytest.raises(EventLogError, match="connection reset"):
        writer.append([env(1), env(2)])

    FlakyMemoryFileSystem.fail_after_rename = False
    assert writer.last_offset(0) == 2  # re-learned from storage, not the stale cache
    assert writer.append([env(1), env(2), env(3)]) == [
        f"{flaky_root}/tx/partition=0/{3:020d}-{3:020d}.avro"
    ]
    assert stored_names("/log/tx/partition=0/") == [
        f"{0:020d}-{0:020d}.avro",
        f"{1:020d}-{2:020d}.avro",
        f"{3:020d}-{3:020d}.avro",
    ]


def test_failure_in_one_partition_keeps_the_others(flaky_root: str) -> None:
    writer = EventLogWriter(flaky_root, "tx", PAYLOAD_SCHEMA, codec="null")
    batch = [env(0, partition=0), *[env(i, partition=1) for i in range(2000)]]
    FlakyMemoryFileSystem.write_budget = 20_000

    with pytest.raises(EventLogError, match="partition=1"):
        writer.append(batch)
    assert writer.last_offset(0) == 0
    assert writer.last_offset(1) is None

    FlakyMemoryFileSystem.write_budget = None
    paths = writer.append(batch)
    assert [p.rsplit("/", 2)[1] for p in paths] == ["partition=1"]
    assert EventLogReader(flaky_root).count("tx") == 2001


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX RLIMIT_FSIZE")
def test_local_file_too_large_leaves_no_file_and_retry_succeeds(tmp_path: Path) -> None:
    # A real write error on a local disk, even as root: the file-size limit (EFBIG).
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA, codec="null")
    writer.append([env(0)])
    batch = [env(i) for i in range(1, 3000)]
    folder = tmp_path / "tx" / "partition=0"
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, old_limit[1]))
    try:
        with pytest.raises(EventLogError) as info:
            writer.append(batch)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)

    assert str(folder / f"{1:020d}-{2999:020d}.avro") in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EFBIG
    assert log_files(folder) == [f"{0:020d}-{0:020d}.avro"]
    assert writer.last_offset(0) == 0

    writer.append(batch)
    assert [e.offset for e in EventLogReader(str(tmp_path)).read("tx", 0)] == list(range(3000))


# ---------------------------------------------------------------- roles


def test_writer_and_reader_satisfy_the_role_protocols(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    reader = EventLogReader(str(tmp_path))

    assert isinstance(writer, EventLogSink)
    assert isinstance(reader, EventLogSource)
    assert not isinstance(reader, EventLogSink)


def test_count_and_size_bytes(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", PAYLOAD_SCHEMA)
    writer.append([env(i, partition=i % 3) for i in range(30)])
    writer.append([env(i, partition=i % 3) for i in range(30, 45)])
    files = [p for p in (tmp_path / "tx").rglob("*.avro")]

    reader = EventLogReader(str(tmp_path))

    assert reader.count("tx") == 45
    assert len(files) == 6
    assert reader.size_bytes("tx") == sum(p.stat().st_size for p in files)
