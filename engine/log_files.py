"""Reading an event log's files as bytes for the native core, with the reader's relisting rule.

A log whose files the core can decode itself (``EventLogReader``) implements ``LogFiles``.
``read_partition`` hands each file of a partition, in offset order, to a callback that
decodes it natively and returns the highest offset taken; a file compacted away after the
listing makes the partition be listed again, and reading goes on after that offset — the
rule ``EventLogReader.read`` follows, so the backfill and rebuild-online see each logged
record exactly once. Each file comes with the listing's upper offset limit (records above
it are skipped) and is cut to its whole Avro blocks (``scan_blocks``): a rolling file's
block being appended, or one a crash cut short, is never decoded (docs/event-log.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from engine.errors import EventLogError

_RELISTS = 20
BEFORE_ALL = -(1 << 63)  # below every offset
_INT64_MAX = (1 << 63) - 1  # an open file's limit when no later owner epoch bounds it
_AVRO_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16


@dataclass(frozen=True, slots=True)
class Blocks:
    """The readable part of an Avro container file (``scan_blocks``)."""

    header_end: int  # bytes of the header (magic, metadata, sync marker); 0: header torn
    end: int  # bytes of the header and of every whole block after it
    last_block: int  # where the last whole block starts (``header_end`` when there is none)
    records: int  # records in the whole blocks
    sync: bytes  # the header's sync marker


def _long(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The zigzag varint ``long`` at ``pos`` and the position after it (IndexError if cut)."""
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    return (value >> 1) ^ -(value & 1), pos


def header_end(data: bytes | memoryview) -> int:
    """Bytes of an Avro container file's header (magic, metadata map, sync marker), or 0
    when ``data`` ends before the header does. ValueError when it is not a container."""
    if bytes(data[:4]) != _AVRO_MAGIC[: len(data[:4])]:
        raise ValueError("not an Avro container file (bad magic)")
    try:
        pos = 4
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = _long(data, pos)  # the block's byte size
            for _ in range(2 * count):  # key, value
                size, pos = _long(data, pos)
                pos += size
        pos += _SYNC_SIZE
    except IndexError:
        return 0
    return pos if pos <= len(data) else 0


def scan_blocks(data: bytes | memoryview) -> Blocks:
    """The header and the whole blocks at the start of an Avro container file.

    A block is whole when its count, size, data and the header's 16-byte sync marker are
    all there; the scan stops at the first block that is not (a torn tail: a writer that
    crashed mid-append, or one still appending). Only block headers are read, no record is
    decoded. ValueError when ``data`` is not an Avro container file."""
    head = header_end(data)
    if head == 0:
        return Blocks(0, 0, 0, 0, b"")
    sync = bytes(data[head - _SYNC_SIZE : head])
    end = last = head
    records = 0
    n = len(data)
    while end < n:
        try:
            count, pos = _long(data, end)
            size, pos = _long(data, pos)
        except IndexError:
            break
        stop = pos + size + _SYNC_SIZE
        if count < 0 or size < 0 or stop > n or bytes(data[stop - _SYNC_SIZE : stop]) != sync:
            break
        last = end
        records += count
        end = stop
    return Blocks(head, end, last, records, sync)


def whole_blocks(data: bytes) -> bytes:
    """``data`` without a torn tail: its header and whole blocks (itself when all whole)."""
    end = scan_blocks(data).end
    return data if end == len(data) else data[:end]


@runtime_checkable
class LogFiles(Protocol):
    """An event log whose files the core can decode itself (``EventLogReader``)."""

    def files(self, source: str, partition: int) -> list[tuple[int, int, str]]:
        """Live files of a partition as (first offset, last offset to take, path), by offset."""
        ...

    def read_file(self, path: str) -> bytes:
        """A file's bytes; FileNotFoundError when it was compacted away since listing."""
        ...


def read_partition(
    log: LogFiles, source: str, partition: int, take: Callable[[bytes, int, int], int]
) -> None:
    """Call ``take(file bytes, highest offset taken so far, file's last offset)`` per file
    of the partition, in offset order; ``take`` returns the new highest offset. Records at
    or below the one it was given, and above the file's last offset (the listing's upper
    limit: a rolling file a fenced owner kept appending to, docs/event-log.md), must be
    skipped. The bytes end at the file's last whole block (an open file's torn tail is cut
    off). A ValueError from ``take`` becomes an EventLogError naming the file."""
    high = BEFORE_ALL
    for _ in range(_RELISTS):
        try:
            for _, last, path in log.files(source, partition):
                if last <= high:
                    continue  # wholly covered by files already read
                try:
                    data = whole_blocks(log.read_file(path))
                    high = take(data, high, min(last, _INT64_MAX))
                except ValueError as exc:
                    raise EventLogError(f"cannot read event-log file {path}: {exc}") from exc
            return
        except FileNotFoundError:
            continue  # compacted away since the listing: list again, go on after `high`
    raise EventLogError(
        f"event log for source {source!r} partition {partition}: files kept vanishing "
        f"while being read ({_RELISTS} listings); is something deleting them?"
    )


def blocks_with_sync(data: bytes, sync: bytes) -> bytes:
    """The blocks of the Avro container file ``data``, its header dropped and each block
    ending with ``sync`` instead of its own marker: what appends them to another container
    file of the same schema and codec whose header holds ``sync``."""
    head = header_end(data)
    if head == 0:
        raise ValueError("not a whole Avro container file (its header is cut)")
    if data[head - _SYNC_SIZE : head] == sync:
        return data[head:]
    out = bytearray()
    pos = head
    while pos < len(data):
        _, at = _long(data, pos)
        size, at = _long(data, at)
        out += data[pos : at + size]
        out += sync
        pos = at + size + _SYNC_SIZE
    return bytes(out)


def scan_file(raw: BinaryIO) -> Blocks:
    """``scan_blocks`` of a file open for reading at its start, reading only the header and
    each block's count, size and sync marker (seeking past the block data)."""
    head = b""
    want = 1 << 16
    while True:
        head += raw.read(want - len(head))
        end = header_end(head)
        if end or len(head) < want:
            break
        want *= 4
    if not end:
        return Blocks(0, 0, 0, 0, b"")
    sync = head[end - _SYNC_SIZE : end]
    records = 0
    pos = last = end
    while True:
        raw.seek(pos)
        frame = raw.read(20)  # two varints
        try:
            count, at = _long(frame, 0)
            size, at = _long(frame, at)
        except IndexError:
            break
        stop = pos + at + size + _SYNC_SIZE
        if count < 0 or size < 0:
            break
        raw.seek(stop - _SYNC_SIZE)
        if raw.read(_SYNC_SIZE) != sync:
            break
        records += count
        last = pos
        pos = stop
    return Blocks(end, pos, last, records, sync)
